"""The demo workflow end to end: wall time and peak RSS of each step, each a process of its own.

Runs `taft run workflows/demo.yaml` (release build) from scratch ROUNDS times into fresh store
roots, reads each step's `started` and `committed` JSON log events (their timestamps and the
step process's own peak RSS, `peak_rss_mib`), checks that every round gives byte-identical
outputs, then times an up-to-date rerun. Prints a Markdown table of medians.
Usage: .venv/bin/python bench/demo.py [--rounds 3] [--taft target/release/taft]
"""
import argparse
import datetime
import hashlib
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
STEPS = ["prep", "init", "dapt", "role"]


def stamp(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(taft, store):
    start = time.perf_counter()
    proc = subprocess.run([taft, "--log-format", "json", "run", "workflows/demo.yaml", "--store", store],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"demo failed ({proc.returncode}): {proc.stderr[-2000:]}")
    steps = {}
    for line in proc.stderr.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        out = event.get("span", {}).get("out", "")
        step = os.path.basename(out)
        if event.get("message") == "started":
            steps.setdefault(step, {})["start"] = stamp(event["timestamp"])
        elif event.get("message") == "committed":
            steps.setdefault(step, {}).update(end=stamp(event["timestamp"]), rss=event["peak_rss_mib"])
    return wall, {s: (v["end"] - v["start"], v["rss"]) for s, v in steps.items()}


def digests(store):
    out = {}
    for step in STEPS:
        for name in sorted(os.listdir(os.path.join(store, step))):
            if name.endswith((".safetensors", ".parquet", "tokenizer.json")):
                with open(os.path.join(store, step, name), "rb") as f:
                    out[f"{step}/{name}"] = hashlib.sha256(f.read()).hexdigest()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--taft", default=os.path.join(ROOT, "target", "release", "taft"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="taft-bench-demo-")
    try:
        walls, per_step, first = [], {s: [] for s in STEPS}, None
        for r in range(args.rounds):
            store = os.path.join(work, f"round{r}")
            wall, steps = run(args.taft, store)
            walls.append(wall)
            for s in STEPS:
                per_step[s].append(steps[s])
            d = digests(store)
            if first is None:
                first = d
            elif d != first:
                sys.exit(f"round {r} differs from round 0: {sorted(k for k in d if d[k] != first.get(k))}")
        again, _ = run(args.taft, os.path.join(work, "round0"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"median of {args.rounds} rounds; every round byte-identical ({len(first)} files)\n")
    print("| step | seconds | peak RSS MiB |")
    print("|---|---|---|")
    for s in STEPS:
        print(f"| {s} | {statistics.median(t for t, _ in per_step[s]):.1f} "
              f"| {max(m for _, m in per_step[s])} |")
    print(f"| workflow (dapt and role in parallel) | {statistics.median(walls):.1f} | |")
    print(f"| rerun, every step up to date | {again:.2f} | |")


if __name__ == "__main__":
    main()
