"""The Python peer of the speaker-role benchmark: a plain PyTorch training loop (what the
original's Lightning module runs) over transformers' encoder, an `nn.TransformerEncoderLayer`
adaptive layer, the pooler and a 2-class classifier, with SPEC §4's per-batch weighted
binary cross-entropy, on the same model directory, utterances (customer and operator
utterances of the unlabeled split, 50 tokens), batch, learning rate and threads as
`taft role`.

  role_peer.py MODEL_DIR PREP_DIR BATCH STEPS THREADS ADAPTIVE_HEADS ADAPTIVE_FFN [whole]

With `whole` (STEPS is then ignored): the original's whole run instead — one epoch over 75 %
of the utterances, every batch padded to 50 tokens as the original pads, then the loss and
accuracy on the other 25 % (validation) and on the test split's utterances, in file order.
Prints one JSON line: steps_per_second (the training loop), seconds (training and evaluation).
"""
import json
import os
import sys
import time

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import AutoModel, PreTrainedTokenizerFast

model_dir, prep_dir = sys.argv[1:3]
batch, steps, threads, heads, ffn = (int(x) for x in sys.argv[3:8])
torch.set_num_threads(threads)
torch.manual_seed(42)

tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), bos_token="<s>",
                                    eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                    cls_token="<s>", sep_token="</s>")
rows = pq.read_table(os.path.join(prep_dir, "conversations.parquet"), columns=["split", "utterances"]).to_pylist()
whole = len(sys.argv) > 8 and sys.argv[8] == "whole"
role = lambda split: [(u["text"], u["speaker"] - 2) for r in rows if r["split"] == split for u in r["utterances"]
                      if u["speaker"] >= 2]
items = role("unlabeled")
if whole:
    cut = int(len(items) * 0.75)
    items, val, test = items[:cut], items[cut:], role("test")
    steps = (len(items) + batch - 1) // batch
padding = "max_length" if whole else True


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(model_dir, add_pooling_layer=False)
        h = self.encoder.config.hidden_size
        self.adaptive = torch.nn.TransformerEncoderLayer(h, heads, ffn, 0.1, batch_first=True)
        self.pooler = torch.nn.Linear(h, h)
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(h, 2)

    def forward(self, ids, mask):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        h = self.adaptive(h, src_key_padding_mask=mask == 0)
        return self.classifier(self.dropout(torch.tanh(self.pooler(h[:, 0]))))


model = Model()
model.train()
decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n or "norm" in n)]
rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n or "norm" in n]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-3)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
order = torch.randperm(len(items)).tolist()
start = time.perf_counter()
real = computed = 0
for step in range(steps):
    chunk = [items[order[(step * batch + i) % len(items)]] for i in range(batch)] if not whole else \
        [items[j] for j in order[step * batch:(step + 1) * batch]]
    enc = tokenizer([t for t, _ in chunk], truncation=True, max_length=50, padding=padding, return_tensors="pt")
    labels = torch.tensor([y for _, y in chunk])
    real, computed = real + int(enc["attention_mask"].sum()), computed + enc["attention_mask"].numel()
    counts = torch.bincount(labels, minlength=2).float()
    weights = torch.where(counts > 0, 1 - counts / len(labels), torch.zeros_like(counts))
    logits = model(enc["input_ids"], enc["attention_mask"])
    loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 2).float(), weight=weights)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
train_seconds = time.perf_counter() - start
if whole:
    model.eval()
    with torch.no_grad():
        for split in (val, test):
            correct = 0
            for i in range(0, len(split), batch):
                chunk = split[i:i + batch]
                enc = tokenizer([t for t, _ in chunk], truncation=True, max_length=50, padding=padding,
                                return_tensors="pt")
                logits = model(enc["input_ids"], enc["attention_mask"])
                labels = torch.tensor([y for _, y in chunk])
                F.cross_entropy(logits, labels)
                correct += (logits.argmax(-1) == labels).sum().item()
seconds = time.perf_counter() - start
print(json.dumps({"steps_per_second": steps / train_seconds, "seconds": seconds, "padding": 1 - real / computed}))
