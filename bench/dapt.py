"""Benchmark of `taft dapt` training against the Hugging Face Trainer, side by side in one run.

Data: the default synthetic dataset's unlabeled utterances (`taft prep`). Models: made by
`taft init` from scratch (tokenizer trained on the same utterances), so both sides start from
the same model directory: the demo's tiny RoBERTa (hidden 64, 2 layers) and a small one
(hidden 256, 4 layers). Both train STEPS optimizer steps (AdamW, linear schedule, 15 %
masking, grad clipping 1.0) with the same batch, block size and threads, no evaluation and
no checkpoints. Each side runs ROUNDS processes (alternating); the table shows the median
training steps/s (taft: its summary's steps_per_second; peer: Trainer's
train_steps_per_second), the median whole-process wall time, and the peak RSS (wait4).
Usage: .venv/bin/python bench/dapt.py [--rounds 3] [--steps 60] [--threads 2]
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
TAFT = os.path.join(ROOT, "target", "release", "taft")

MODELS = [
    # name, init scratch settings, block, batch
    ("tiny RoBERTa 2x64, vocab 2000", "{vocab_size: 2000, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_length: 512}", 128, 16),
    ("small RoBERTa 4x256, vocab 8000", "{vocab_size: 8000, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 1024, max_length: 512}", 256, 8),
]


def measure(cmd, parse):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}")
    return parse(out), wall, usage.ru_maxrss / 1024


def taft(*args):
    subprocess.run([TAFT, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compare(step, rounds, taft_sets, peer_cmd):
    """Builds taft, makes the data and each of MODELS (`taft prep`, `taft init`), then runs
    `taft STEP` (with `taft_sets(i)`, the no-evaluation, no-checkpoint settings) and the
    peer (`peer_cmd(i, model, prep)`) ROUNDS times each, alternately. Returns one row per
    model: medians of taft's steps/s and wall s, its peak RSS, then the same for the peer."""
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix=f"taft-bench-{step}-")
    rows = []
    try:
        prep = os.path.join(work, "prep")
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42}")
        for i, (_, scratch, _, _) in enumerate(MODELS):
            model = os.path.join(work, f"init{i}")
            taft("init", "-i", prep, "-o", model, "--set", f"scratch={scratch}")
            ours, peer = [], []
            for r in range(rounds):
                out = os.path.join(work, f"{step}{i}-{r}")
                cmd = [TAFT, "--log-format", "json", step, "-i", prep, "-i", model, "-o", out,
                       "--set", "train.lr=1e-3", "--set", "train.eval_each_epoch=false",
                       "--set", "train.checkpoint_every=0", "--set", "train.device=cpu"]
                for setting in taft_sets(i):
                    cmd += ["--set", setting]
                summary = lambda _, out=out: json.load(open(os.path.join(out, "_MANIFEST.json")))["summary"]
                ours.append(measure(cmd, lambda o: summary(o)["steps_per_second"]))
                peer.append(measure(peer_cmd(i, model, prep), lambda o: json.loads(o.strip().splitlines()[-1])["steps_per_second"]))
            med = lambda runs, k: statistics.median(run[k] for run in runs)
            rows.append((med(ours, 0), med(ours, 1), max(r[2] for r in ours), med(peer, 0), med(peer, 1), max(r[2] for r in peer)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def versions():
    out = subprocess.run([sys.executable, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                         capture_output=True, text=True).stdout.split()
    return f"torch {out[0]}, transformers {out[1]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    taft_sets = lambda i: [f"block_size={MODELS[i][2]}", f"train.batch_size={MODELS[i][3]}",
                           f"train.max_steps={args.steps}", f"train.threads={args.threads}"]
    peer_cmd = lambda i, model, prep: [sys.executable, os.path.join(HERE, "dapt_peer.py"), model, prep, str(MODELS[i][2]),
                                       str(MODELS[i][3]), str(args.steps), str(args.threads)]
    rows = compare("dapt", args.rounds, taft_sets, peer_cmd)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; threads {args.threads}; "
          f"{args.steps} steps; {versions()}; median of {args.rounds} processes\n")
    print("| model | block x batch | taft steps/s | taft wall s | taft peak RSS MiB | Trainer steps/s "
          "| Trainer wall s | Trainer peak RSS MiB | steps/s ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, _, block, batch), (s, w, m, sp, wp, mp) in zip(MODELS, rows):
        print(f"| {name} | {block} x {batch} | {s:.2f} | {w:.1f} | {m:.0f} | {sp:.2f} | {wp:.1f} | {mp:.0f} | {s / sp:.2f}x |")


if __name__ == "__main__":
    main()
