"""The Python peer of the DAPT benchmark: Hugging Face `Trainer` with
`DataCollatorForLanguageModeling` (15 % masking, 80/10/10) on the same model directory, the
same unlabeled utterances (tokenized with special tokens, concatenated, cut into blocks),
batch, block size, learning rate, schedule and threads as `taft dapt`.

  dapt_peer.py MODEL_DIR PREP_DIR BLOCK BATCH STEPS THREADS [DEVICE [PRECISION [WARMUP]]]

DEVICE `cpu` (default) or `cuda`; PRECISION `fp32` (default), `fp16` or `bf16` (CUDA autocast);
WARMUP (default 0): steps/s over the steps after the first WARMUP, timed at the ends of
those steps (the GPU synchronized).

Prints one JSON line: steps_per_second (Trainer's own train_steps_per_second, or over the
steps after WARMUP), seconds.
"""
import json
import os
import sys
import tempfile
import time

import pyarrow.parquet as pq
import torch
from transformers import (AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast, Trainer,
                          TrainerCallback, TrainingArguments)

model_dir, prep_dir = sys.argv[1:3]
block, batch, steps, threads = (int(x) for x in sys.argv[3:7])
device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
precision = sys.argv[8] if len(sys.argv) > 8 else "fp32"
warmup = int(sys.argv[9]) if len(sys.argv) > 9 else 0
torch.set_num_threads(threads)

tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), bos_token="<s>",
                                    eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                    cls_token="<s>", sep_token="</s>")
table = pq.read_table(os.path.join(prep_dir, "conversations.parquet"), columns=["split", "utterances"]).to_pylist()
texts = [u["text"] for row in table if row["split"] == "unlabeled" for u in row["utterances"]]
ids = [i for row in tokenizer(texts)["input_ids"] for i in row]
blocks = [{"input_ids": ids[i:i + block]} for i in range(0, len(ids) - block + 1, block)]

model = AutoModelForMaskedLM.from_pretrained(model_dir)
collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)


class Clock(TrainerCallback):
    """The time at the end of step WARMUP and of the last step, the GPU's work done."""

    marks = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (warmup, steps):
            if device != "cpu":
                torch.cuda.synchronize()
            self.marks[state.global_step] = time.perf_counter()


with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-3,
                             weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                             logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=device == "cpu",
                             fp16=precision == "fp16", bf16=precision == "bf16",
                             dataloader_num_workers=0, seed=42, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator,
                      callbacks=[Clock()])
    metrics = trainer.train().metrics
rate = metrics["train_steps_per_second"]
if warmup:
    rate = (steps - warmup) / (Clock.marks[steps] - Clock.marks[warmup])
print(json.dumps({"steps_per_second": rate, "seconds": metrics["train_runtime"]}))
