"""Encode once, train many: the taft step-2 fan-out (status and pc × SEEDS) with each step
building its own frozen-encoder cache (`encoder_cache: true`), against one `taft encode`
whose output every step reads. Same binary, same threads, same data in one run.

Sets up (once, not timed) a learnable synthetic prep output, a scratch encoder of the given
shape and its adaptive role model; then, ROUNDS times, runs the fan-out both ways into fresh
outputs, each step a process of its own, and reports medians: wall time of the whole
fan-out, the encoder passes made, the cache-building seconds inside the steps, and each
step's peak RSS. Reports the largest difference in test macro F1 between the two ways.
Usage: .venv/bin/python bench/encode.py [--taft target/release/taft] [--rounds 3]
       [--conversations 600] [--hidden 256] [--layers 4] [--max-length 256] [--seeds 2]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(taft, args, threads):
    """Runs one step; returns (wall seconds, the step's peak RSS MiB as it logs it, its JSON log events)."""
    start = time.perf_counter()
    proc = subprocess.Popen([taft, "--log-format", "json", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TAFT_THREADS": str(threads)})
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"taft {' '.join(args)} failed ({proc.returncode}): {err[-3000:]}")
    events = []
    for line in err.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    rss = max((e.get("peak_rss_mib") or 0) for e in events if e.get("message") == "committed")
    return wall, rss, events


def summary(out):
    with open(os.path.join(out, "_MANIFEST.json")) as f:
        return json.load(f)["summary"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--taft", default="target/release/taft")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=600, help="labeled conversations (train:val:test 4:1:1)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="taft-encode-bench-")
    p = lambda name: os.path.join(work, name)
    n = a.conversations
    train, held = n * 4 // 6, n // 6
    run(a.taft, ["prep", "-o", p("prep"), "--set",
                 f"synthetic={{seed: 5, train: {train}, val: {held}, test: {held}, unlabeled: 300, learnable: true, "
                 f"min_utterances: 20, max_utterances: 40}}"], a.threads)
    heads = max(1, a.hidden // 64)
    run(a.taft, ["init", "-i", p("prep"), "-o", p("init"), "--set",
                 f"scratch={{vocab_size: 2000, hidden_size: {a.hidden}, num_hidden_layers: {a.layers}, "
                 f"num_attention_heads: {heads}, intermediate_size: {4 * a.hidden}, max_length: 512}}"], a.threads)
    run(a.taft, ["role", "-i", p("prep"), "-i", p("init"), "-o", p("role"), "--set", "train.epochs=1",
                 "--set", "train.lr=1e-4", "--set", f"adaptive={{heads: {heads}, ffn: {2 * a.hidden}}}"], a.threads)
    cut = ["--set", f"max_length={a.max_length}", "--set", "truncation=head_tail"]
    fit = cut + ["--set", "method=taft", "--set", "train.epochs=1", "--set", "train.lr=1e-3",
                 "--set", "dropout=0.1"]
    steps = [(status, seed) for status in ["status", "pc"] for seed in range(1, a.seeds + 1)]
    rows = {"built": [], "encode": []}
    scores = {}
    for r in range(a.rounds):
        for way in ["built", "encode"]:
            started = time.perf_counter()
            inputs = ["-i", p("prep"), "-i", p("role")]
            rss, passes, cache_s, encode_s = [], 0, 0.0, 0.0
            if way == "encode":
                out = p(f"enc-{r}")
                wall, peak, _ = run(a.taft, ["encode", *inputs, "-o", out, *cut], a.threads)
                rss.append(peak)
                passes += summary(out)["states"]["conversations"]
                encode_s = wall
                inputs += ["-i", out]
            for status, seed in steps:
                out = p(f"{way}-{status}-{seed}-{r}")
                extra = ["--set", "encoder_cache=true"] if way == "built" else []
                _, peak, events = run(a.taft, ["finetune", *inputs, "-o", out, *fit, *extra,
                                               "--set", f"status={status}", "--set", f"train.seed={seed}"], a.threads)
                rss.append(peak)
                s = summary(out)
                passes += s["encoder_forwards"]
                cache_s += sum(e.get("seconds", 0) for e in events if e.get("message") == "frozen-encoder cache built")
                f1 = [t["f1_macro"] for t in s["test"].values()]
                scores.setdefault((status, seed, r), []).append(f1)
            rows[way].append((time.perf_counter() - started, passes, cache_s, encode_s, max(rss)))
    diff = max(abs(x - y) for a_, b_ in scores.values() for x, y in zip(a_, b_))
    med = lambda way, i: statistics.median(x[i] for x in rows[way])
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {a.threads} threads; "
          f"{n} labeled conversations, encoder {a.layers}x{a.hidden}, max_length {a.max_length}, "
          f"{len(steps)} taft steps (status, pc x {a.seeds} seeds), 1 epoch each; medians of {a.rounds} rounds")
    print()
    print("| way | wall s | encoder passes | cache building in the steps s | encode step s | peak RSS MiB (largest step) |")
    print("|---|---|---|---|---|---|")
    for way, label in [("built", "each step builds its cache"), ("encode", "one `taft encode`, read by every step")]:
        print(f"| {label} | {med(way, 0):.1f} | {med(way, 1):.0f} | {med(way, 2):.1f} | {med(way, 3):.1f} | {med(way, 4):.0f} |")
    print()
    print(f"speed-up of the fan-out: {med('built', 0) / med('encode', 0):.2f}x; largest difference in a test macro F1 between the two ways: {diff:.4f}")


if __name__ == "__main__":
    main()
