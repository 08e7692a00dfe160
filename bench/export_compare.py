"""Two taft binaries' exports of the same TAFT model, side by side on Python onnxruntime: the
ms per batch of each file and the largest difference between their outputs. For measuring a
change to the ONNX graph (e.g. the adaptive layer computed at the first token alone, against
a binary built before it).

The model is made by the second binary from scratch with random weights: `prep` (synthetic),
`init`, `role` with `variant: adaptive` (1 step), `finetune` with `method: taft` (1 step);
the adaptive layer has FFN 2048 and 4 heads (tiny) or 12 (6x768). Each binary exports it
(`graph: fused`). Inputs: random ids, the first row full length, the others shorter and
padded. Medians of 3 rounds of 20 runs (5 for the largest inputs), the two files
alternating; 2 intra-op threads, spinning off.
Usage: .venv/bin/python bench/export_compare.py BEFORE_BIN AFTER_BIN [tiny|big]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

SCRATCH = {
    "tiny": "{vocab_size: 2000, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_length: 512}",
    "big": "{vocab_size: 8000, hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, intermediate_size: 3072, max_length: 512}",
}
SHAPES = [(1, 128), (32, 128), (8, 512)]


def main():
    before, after = sys.argv[1], sys.argv[2]
    size = sys.argv[3] if len(sys.argv) > 3 else "tiny"
    work = tempfile.mkdtemp(prefix="taft-bench-export-")
    try:
        compare(before, after, size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(before, after, size, work):
    p = lambda k: os.path.join(work, k)

    def taft(binary, *args):
        subprocess.run([binary, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    taft(after, "prep", "-o", p("prep"), "--set", "synthetic={seed: 42, train: 64, val: 64, test: 200, unlabeled: 400, learnable: true}")
    taft(after, "init", "-i", p("prep"), "-o", p("init"), "--set", f"scratch={SCRATCH[size]}")
    heads = ["--set", "adaptive={heads: 4}"] if size == "tiny" else []
    taft(after, "role", "-i", p("prep"), "-i", p("init"), "-o", p("role"), "--set", "variant=adaptive",
         "--set", "train.max_steps=1", "--set", "train.epochs=1", *heads)
    taft(after, "finetune", "-i", p("prep"), "-i", p("role"), "-o", p("model"), "--set", "method=taft",
         "--set", "train.max_steps=1", "--set", "train.batch_size=4", "--set", "train.eval_each_epoch=false",
         "--set", "train.best=null")
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 2, 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    for name, binary in (("before", before), ("after", after)):
        taft(binary, "export", "-i", p("model"), "-o", p(f"export-{name}"), "--set", "threads=2")
        sessions[name] = ort.InferenceSession(p(f"export-{name}/model.onnx"), o, providers=["CPUExecutionProvider"])
    method = json.load(open(p("export-after/taft.json"))).get("method")
    print(f"model {size}, method {method}, onnxruntime {ort.__version__}\n")
    print("| model | batch x tokens | before ms | after ms | speed-up | largest output difference |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for batch, seq in SHAPES:
        ids = rng.integers(5, 1900, (batch, seq)).astype(np.int64)
        ids[:, 0] = 0
        mask = np.ones_like(ids)
        for r in range(1, batch):
            n = max(2, seq - 13 * r)
            mask[r, n:], ids[r, n:] = 0, 1
        feed = {"input_ids": ids, "attention_mask": mask}
        outs = {n: s.run(None, feed) for n, s in sessions.items()}
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outs["before"], outs["after"]))
        reps = 20 if batch * seq <= 4096 else 5
        times = {n: [] for n in sessions}
        for _ in range(3):
            for n, s in sessions.items():
                t = time.perf_counter()
                for _ in range(reps):
                    s.run(None, feed)
                times[n].append((time.perf_counter() - t) / reps * 1000)
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        print(f"| {size} | {batch} x {seq} | {b:.2f} | {a:.2f} | {b / a:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
