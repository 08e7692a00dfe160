"""Reads back what `taft dapt` wrote, with the reference libraries.

  dapt_ref.py MODEL_DIR OUT.safetensors

- TensorBoard: every scalar of `tensorboard/` (read by the tensorboard package's event
  reader) must equal the matching value of `metrics.jsonl` (as float32), and every numeric
  value of metrics.jsonl must be there.
- transformers: `AutoModelForMaskedLM.from_pretrained(MODEL_DIR)` must load with no missing
  or mismatched tensors; OUT receives its logits for a fixed batch, for the caller to
  compare with taft's own.
"""
import glob
import json
import os
import struct
import sys

import torch
from safetensors.torch import save_file
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from transformers import AutoModelForMaskedLM

model_dir, out = sys.argv[1:3]

expected = {}
for line in open(os.path.join(model_dir, "metrics.jsonl")):
    record = json.loads(line)
    for key, value in record.items():
        if key in ("kind", "step", "time"):
            continue
        expected[(f"{record['kind']}/{key}", record["step"])] = value
files = glob.glob(os.path.join(model_dir, "tensorboard", "*tfevents*"))
assert len(files) == 1, files
seen = {}
for event in EventFileLoader(files[0]).Load():
    for value in event.summary.value:
        # The loader upgrades simple_value scalars to tensors.
        v = value.tensor.float_val[0] if value.HasField("tensor") else value.simple_value
        seen[(value.tag, event.step)] = v
assert seen.keys() == expected.keys(), (sorted(seen)[:5], sorted(expected)[:5])
worst = 0.0
for key, value in expected.items():
    f32 = struct.unpack("f", struct.pack("f", value))[0]
    assert seen[key] == f32, (key, seen[key], value)
print(f"tensorboard: {len(seen)} scalars equal metrics.jsonl")

model, info = AutoModelForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
assert not info["missing_keys"], info["missing_keys"]
assert not info["mismatched_keys"], info["mismatched_keys"]
print("transformers:", type(model).__name__, "unexpected:", info["unexpected_keys"])
torch.manual_seed(0)
vocab = model.config.vocab_size
ids = torch.randint(5, vocab, (2, 12))
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
save_file({"input_ids": ids, "logits": logits.contiguous()}, out)
