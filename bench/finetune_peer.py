"""The Python peer of the step-2 benchmark: a plain PyTorch training loop (what the original's
Lightning module runs) over transformers' encoder for one method of SPEC §5, on the same model
directory, conversations, batch, learning rates and threads as `taft finetune`:

- the status and 3-way satisfaction tasks, each drawn by an imbalanced sampler
  (`WeightedRandomSampler`, weight 1 / count of the label), one batch of each per optimizer
  step, each its own encoder pass, SPEC §4's weighted losses mixed 0.8 / 0.2;
- conversations encoded as taft encodes them (the utterances joined by the separator token,
  the same token ids), cut at MAX_LENGTH (512) and padded to the longest of
  their batch (PADDING `batch`, as taft does) or to MAX_LENGTH (`max_length`, as the original);
- taft: the encoder frozen but in training mode (its dropout active), an
  `nn.TransformerEncoderLayer` adaptive layer at lr 1e-3; noadapt: the encoder frozen, no
  adaptive layer; tapt: everything trains.

  finetune_peer.py METHOD MODEL_DIR PREP_DIR BATCH STEPS THREADS MAX_LENGTH ADAPTIVE_HEADS ADAPTIVE_FFN [PADDING
                   [DEVICE [PRECISION [WARMUP]]]]

DEVICE `cpu` (default) or `cuda`; PRECISION `fp32` (default), `fp16` (autocast and a GradScaler)
or `bf16` (autocast); WARMUP (default 0): the loop is timed from the end of that many steps.

Prints one JSON line: steps_per_second (the training loop after WARMUP steps), seconds.
"""
import json
import os
import sys
import time

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import WeightedRandomSampler
from transformers import AutoModel, PreTrainedTokenizerFast

method, model_dir, prep_dir = sys.argv[1:4]
batch, steps, threads, max_length, heads, ffn = (int(x) for x in sys.argv[4:10])
padding = {"batch": "longest", "max_length": "max_length"}[sys.argv[10] if len(sys.argv) > 10 else "batch"]
device = sys.argv[11] if len(sys.argv) > 11 else "cpu"
precision = sys.argv[12] if len(sys.argv) > 12 else "fp32"
warmup = int(sys.argv[13]) if len(sys.argv) > 13 else 0
amp = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
torch.set_num_threads(threads)
torch.manual_seed(42)

tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), bos_token="<s>",
                                    eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                    cls_token="<s>", sep_token="</s>")
rows = pq.read_table(os.path.join(prep_dir, "conversations.parquet"),
                     columns=["split", "status", "satisfaction", "utterances"]).to_pylist()
train = [r for r in rows if r["split"] == "train"]
text = lambda r: [u["text"] for u in r["utterances"]]
around = tokenizer.backend_tokenizer.encode("").ids  # the special tokens around a text


def encode(conversations):
    """Token ids and masks of conversations encoded as taft encodes them: each utterance
    without special tokens, the separator token between, the head kept up to max_length,
    the special tokens around; padded to the longest (or to max_length)."""
    pieces = tokenizer.backend_tokenizer.encode_batch([u for c in conversations for u in c], add_special_tokens=False)
    rows, k = [], 0
    for c in conversations:
        content = []
        for j, e in enumerate(pieces[k:k + len(c)]):
            content += ([tokenizer.sep_token_id] if j else []) + e.ids
        k += len(c)
        rows.append(around[:1] + content[:max_length - len(around)] + around[1:])
    width = max_length if padding == "max_length" else max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask
status = [(text(r), r["status"] - 1) for r in train if r["status"]]  # aborted conversations left out
satis = [(text(r), (r["satisfaction"] > 3) - (r["satisfaction"] < 3) + 1) for r in train]


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(model_dir, add_pooling_layer=False)
        h = self.encoder.config.hidden_size
        self.adaptive = torch.nn.TransformerEncoderLayer(h, heads, ffn, 0.1, batch_first=True) if method == "taft" else None
        self.pooler = torch.nn.Linear(h, h)
        self.dropout = torch.nn.Dropout(0.5)
        self.status = torch.nn.Linear(h, 4)
        self.satisfaction = torch.nn.Linear(h, 3)

    def forward(self, ids, mask, head):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.adaptive is not None:
            h = self.adaptive(h, src_key_padding_mask=mask == 0)
        return head(self.dropout(torch.tanh(self.pooler(h[:, 0]))))


def sampler(items):
    labels = torch.tensor([y for _, y in items])
    counts = torch.bincount(labels).float()
    return iter(list(WeightedRandomSampler(1.0 / counts[labels], len(items) * (steps // 10 + 2))))


def weighted_loss(logits, labels, n):
    counts = torch.bincount(labels, minlength=n).float()
    weights = torch.where(counts > 0, 1 - counts / len(labels), torch.zeros_like(counts))
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, n).float(), weight=weights)


model = Model().to(device)
model.train()
if method in ("taft", "noadapt"):
    for p in model.encoder.parameters():
        p.requires_grad_(False)
params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n or "norm" in n
groups = [
    {"params": [p for n, p in params if n.startswith("adaptive.")], "lr": 1e-3, "weight_decay": 1e-5},
    {"params": [p for n, p in params if not n.startswith("adaptive.") and not no_decay(n)], "weight_decay": 0.01},
    {"params": [p for n, p in params if not n.startswith("adaptive.") and no_decay(n)], "weight_decay": 0.0},
]
opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=5e-5)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
draws = [sampler(status), sampler(satis)]
start = time.perf_counter()
for step in range(steps):
    if step == warmup > 0:
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
    losses = []
    for (items, head, n, w), draw in zip([(status, model.status, 4, 0.8), (satis, model.satisfaction, 3, 0.2)], draws):
        chunk = [items[next(draw)] for _ in range(batch)]
        ids, mask = (t.to(device) for t in encode([t for t, _ in chunk]))
        labels = torch.tensor([y for _, y in chunk], device=device)
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            logits = model(ids, mask, head)
        losses.append(w * weighted_loss(logits.float(), labels, n))
    loss = sum(losses)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
if device != "cpu":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(json.dumps({"steps_per_second": (steps - warmup) / seconds, "seconds": seconds}))
