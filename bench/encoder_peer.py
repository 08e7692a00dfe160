"""Encoder forward throughput of Hugging Face transformers (PyTorch eager), the peer of
bench/encoder.rs. Prints one JSON line: the median seconds per batch and tokens/s.

Usage: encoder_peer.py MODEL_DIR BATCH SEQ REPEAT THREADS
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModel

model_dir, batch, seq, repeat, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModel.from_pretrained(model_dir).eval()
ids = torch.randint(5, model.config.vocab_size, (batch, seq))
mask = torch.ones(batch, seq, dtype=torch.int64)
times = []
with torch.no_grad():
    for i in range(repeat + 2):
        start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out.sum().item()
        if i >= 2:
            times.append(time.perf_counter() - start)
median = statistics.median(times)
print(json.dumps({"median_s": median, "tokens_per_s": batch * seq / median}))
