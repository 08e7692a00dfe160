"""Benchmark of `taft role` (speaker-role pretraining, adaptive variant) against a plain
PyTorch + transformers training loop (bench/role_peer.py), side by side in one run.

Same data (the default synthetic set's unlabeled customer and operator utterances, 50
tokens), the same model directories as bench/dapt.py (made by `taft init`), batch 128 (the
paper's), AdamW lr 1e-3 with a linear schedule, SPEC §4's weighted loss, the same adaptive
layer, 2 threads; STEPS optimizer steps, no evaluation, no checkpoints. Steps/s is each
side's training-loop figure (taft tokenizes once before the loop; the peer per batch, as a
data loader would); wall time is the whole process; peak RSS from wait4.
Usage: .venv/bin/python bench/role.py [--rounds 3] [--steps 30] [--threads 2]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dapt import HERE, MODELS, ROOT, TAFT, measure, taft  # noqa: E402

ADAPTIVE = {0: (4, 256), 1: (4, 1024)}  # heads, ffn per model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="taft-bench-role-")
    rows = []
    try:
        prep = os.path.join(work, "prep")
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42}")
        for i, (name, scratch, _, _) in enumerate(MODELS):
            model = os.path.join(work, f"init{i}")
            taft("init", "-i", prep, "-o", model, "--set", f"scratch={scratch}")
            heads, ffn = ADAPTIVE[i]
            ours, peer = [], []
            for r in range(args.rounds):
                out = os.path.join(work, f"role{i}-{r}")
                cmd = [TAFT, "--log-format", "json", "role", "-i", prep, "-i", model, "-o", out,
                       "--set", f"train.batch_size={args.batch}", "--set", f"train.max_steps={args.steps}",
                       "--set", "train.epochs=100", "--set", "train.lr=1e-3", "--set", "train.best=null",
                       "--set", "train.eval_each_epoch=false", "--set", "train.checkpoint_every=0",
                       "--set", f"train.threads={args.threads}", "--set", "train.device=cpu",
                       "--set", f"adaptive={{heads: {heads}, ffn: {ffn}}}"]
                ours.append(measure(cmd, lambda _: json.load(open(os.path.join(out, "_MANIFEST.json")))["summary"]["steps_per_second"]))
                peer_cmd = [sys.executable, os.path.join(HERE, "role_peer.py"), model, prep, str(args.batch),
                            str(args.steps), str(args.threads), str(heads), str(ffn)]
                peer.append(measure(peer_cmd, lambda o: json.loads(o.strip().splitlines()[-1])["steps_per_second"]))
            med = lambda runs, k: statistics.median(run[k] for run in runs)
            rows.append((name, med(ours, 0), med(ours, 1), max(r[2] for r in ours),
                         med(peer, 0), med(peer, 1), max(r[2] for r in peer)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    versions = subprocess.run([sys.executable, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                              capture_output=True, text=True).stdout.split()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; threads {args.threads}; "
          f"batch {args.batch} x 50 tokens; {args.steps} steps; torch {versions[0]}, transformers {versions[1]}; "
          f"median of {args.rounds} processes\n")
    print("| model | taft steps/s | taft wall s | taft peak RSS MiB | PyTorch loop steps/s | PyTorch wall s "
          "| PyTorch peak RSS MiB | steps/s ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s, w, m, sp, wp, mp in rows:
        print(f"| {name} | {s:.2f} | {w:.1f} | {m:.0f} | {sp:.2f} | {wp:.1f} | {mp:.0f} | {s / sp:.2f}x |")


if __name__ == "__main__":
    main()
