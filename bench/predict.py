"""Benchmark of `taft predict` (batch prediction on ONNX Runtime) against Python onnxruntime
on the same ONNX file (bench/predict_peer.py: the conversations sorted by length, batches of
32 padded to their longest), side by side in one run with the same threads.

Models: as bench/serve.py makes them (`serve.make_export`): the demo's tiny RoBERTa (2x64) and
distilcamembert's shape (6x768), random weights. Data: a synthetic prep output with CONVERSATIONS
test conversations per model (every conversation of it is predicted). Each round runs, in
turn:
- taft predict as it comes (the model set up at load: `instances` and `join_tokens` measured);
- taft predict with `instances=1` and `join_tokens=1048576`: one session on every thread and
  runs cut by the 15 % padding rule alone (what `taft predict` did before it measured them);
- the Python peer.
Reported: items/s over the scoring (model loading excluded on every side), the process's wall
time and peak RSS (ru_maxrss), and the share of status labels equal to taft's. Medians of
ROUNDS rounds.
Usage: .venv/bin/python bench/predict.py [--rounds 3] [--threads 2] [--models 0,1]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dapt import HERE, build, measure, taft, TAFT, versions  # noqa: E402
from serve import MODELS, make_export  # noqa: E402

# Test conversations predicted per model (the tiny one is fast: more of them, for a run of seconds).
CONVERSATIONS = [8000, 400]


def labels(path, task="status"):
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=["id", f"{task}_pred"]).to_pydict()
    return {str(i): int(p) for i, p in zip(t["id"], t[f"{task}_pred"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="0,1")
    args = ap.parse_args()
    build()
    work = tempfile.mkdtemp(prefix="taft-bench-predict-")
    print(f"# taft predict vs Python onnxruntime — {platform.machine()}, {os.cpu_count()} cores, {versions()}, "
          f"threads {args.threads}, median of {args.rounds} rounds\n")
    print("| model | conversations | run | items/s | wall s | peak RSS MiB | status labels = taft |")
    print("|---|---|---|---|---|---|---|")
    try:
        prep = os.path.join(work, "prep")
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42, train: 64, val: 64, test: 200, unlabeled: 400, learnable: true}")
        for i in (int(x) for x in args.models.split(",")):
            name = MODELS[i][0]
            _, export = make_export(work, prep, i, args.threads)
            data = os.path.join(work, f"data{i}")
            taft("prep", "-o", data, "--set",
                 f"synthetic={{seed: 7, train: 0, val: 0, test: {CONVERSATIONS[i]}, unlabeled: 0, learnable: true}}")
            runs = {
                "taft predict": ["--set", f"threads={args.threads}"],
                "taft predict, one session, 15 % padding rule alone": [
                    "--set", f"threads={args.threads}", "--set", "instances=1", "--set", "join_tokens=1048576"],
                "Python onnxruntime": None,
            }
            results = {r: {"rate": [], "wall": [], "rss": [], "labels": None, "summary": None} for r in runs}
            for _ in range(args.rounds):
                for run, sets in runs.items():
                    out = os.path.join(work, "out")
                    shutil.rmtree(out, ignore_errors=True)
                    if sets is None:
                        os.makedirs(out)
                        cmd = [sys.executable, os.path.join(HERE, "predict_peer.py"), export, data,
                               os.path.join(out, "predictions.parquet"), "--threads", str(args.threads)]
                        got, wall, rss = measure(cmd, lambda o: json.loads(o.strip().splitlines()[-1]))
                        rate = got["items"] / got["seconds"]
                    else:
                        cmd = [TAFT, "predict", "-i", export, "-i", data, "-o", out, *sets]
                        _, wall, rss = measure(cmd, lambda o: None)
                        summary = json.load(open(os.path.join(out, "_MANIFEST.json")))["summary"]
                        rate = summary["items_per_second"]
                        results[run]["summary"] = summary
                    r = results[run]
                    r["rate"].append(rate)
                    r["wall"].append(wall)
                    r["rss"].append(rss)
                    r["labels"] = labels(os.path.join(out, "predictions.parquet"))
                    print(f"# {name} {run}: {rate:.1f} items/s, {wall:.1f} s, {rss:.0f} MiB", file=sys.stderr, flush=True)
            ref = results["taft predict"]["labels"]
            for run, r in results.items():
                same = sum(r["labels"].get(k) == v for k, v in ref.items()) / len(ref)
                print(f"| {name} | {CONVERSATIONS[i]} | {run} | {statistics.median(r['rate']):.1f} | "
                      f"{statistics.median(r['wall']):.1f} | {statistics.median(r['rss']):.0f} | {same:.3f} |", flush=True)
            s = results["taft predict"]["summary"]
            t, p = (statistics.median(results[k]["rate"]) for k in ("taft predict", "Python onnxruntime"))
            b = statistics.median(results["taft predict, one session, 15 % padding rule alone"]["rate"])
            print(f"\n{name}: taft predict chose instances {s['instances']}, join_tokens {s['join_tokens']}; "
                  f"{t / p:.2f}x Python onnxruntime, {t / b:.2f}x one session with the padding rule alone\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
