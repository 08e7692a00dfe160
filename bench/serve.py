"""Benchmark of `taft serve` (the serving build, without libtorch) against (a) transformers +
PyTorch eager and (b) Python onnxruntime on the same ONNX file, each behind a minimal Python
HTTP server (bench/serve_peer.py), side by side in one run with the same threads.

Models: made by taft from scratch with random weights (`init`, one step of plain `finetune`
on the status and 3-way satisfaction tasks, `export` with `quantize: int8`): the demo's tiny
RoBERTa (2x64) and distilcamembert's shape (6x768, 12 heads, FFN 3072). Inputs: whole
conversations of the synthetic test split, sent as `{"conversations": [{"texts": [...]}]}`;
every server encodes them the same way (the utterances joined by the separator token, at most
512 tokens), so every server runs the same token ids.
- Throughput: CLIENTS connections each send requests of 32 conversations; items/s over all.
- Latency: CLIENTS connections each send requests of 1 conversation; p50 and p99 of the
  request latency as the client sees it (each server saturated: a request waits for the
  others' runs). Then one connection sends the same requests one after the other: the latency
  of a request alone (p50 and p99 at 1 client). Each latency figure is over CLIENTS x the
  model's latency requests per client (MODELS; with 4 clients 800 at the tiny size and 400 at
  distilcamembert's shape, so a p99 is the 8th or 4th slowest answer, not the slowest).
Each server runs fp32 and int8 (the peers: torch eager is fp32 only; onnxruntime loads
model.int8.onnx). Every figure is the median of ROUNDS rounds (servers alternate within a
round); peak RSS is the server process's VmHWM after its rounds.
Usage: .venv/bin/python bench/serve.py [--rounds 3] [--threads 2] [--models 0,1] [--clients 4]
       [--servers taft:fp32,onnxruntime:fp32] (default: all five; the ratios need taft fp32)
       [--taft-set join_tokens=0] (settings of taft serve, repeatable)
"""
import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dapt import HERE, ROOT, TAFT, taft, versions  # noqa: E402

SERVE_BIN = os.path.join(ROOT, "target", "taft-serve-release")
MODELS = [
    # name, init scratch settings, throughput requests per client, latency requests per client
    ("tiny RoBERTa 2x64", "{vocab_size: 2000, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_length: 512}", 40, 200),
    ("distilcamembert shape 6x768", "{vocab_size: 8000, hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, intermediate_size: 3072, max_length: 512}", 2, 100),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("POST", "/v1/predict", body=json.dumps({"texts": ["bonjour"]}), headers={"content-type": "application/json"})
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("server never answered")


def start(kind, model_dir, export_dir, variant, threads, taft_sets=()):
    port = free_port()
    if kind == "taft":
        cmd = [SERVE_BIN, "--log-format", "json", "serve", "--input", export_dir, "--port", str(port),
               "--set", f"threads={threads}", "--set", f"model={variant}",
               "--set", "max_batch_size=32", "--set", "request_timeout_ms=600000"]
        for kv in taft_sets:
            cmd += ["--set", kv]
        env = dict(os.environ, TAFT_LOG="warn")
    else:
        backend = "torch" if kind == "torch eager" else "ort"
        onnx = "model.int8.onnx" if variant == "int8" else "model.onnx"
        cmd = [sys.executable, os.path.join(HERE, "serve_peer.py"), "--backend", backend, "--model",
               model_dir if backend == "torch" else export_dir, "--onnx", onnx, "--port", str(port), "--threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_ready(port, proc)
    return proc, port


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port, texts, per_request, requests, clients):
    """CLIENTS threads, each with its own keep-alive connection, each sending REQUESTS
    requests of PER_REQUEST conversations (TEXTS: tuples of utterances). Returns (items/s,
    latencies in seconds, labels by conversation)."""
    latencies, labels, errors = [], {}, []
    lock = threading.Lock()

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for r in range(requests):
            start = (c * requests + r) * per_request
            batch = [texts[(start + k) % len(texts)] for k in range(per_request)]
            body = json.dumps({"conversations": [{"texts": list(t)} for t in batch]})
            t0 = time.perf_counter()
            conn.request("POST", "/v1/predict", body=body, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            dt = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(resp.status)
                continue
            preds = json.loads(data)["predictions"]
            with lock:
                latencies.append(dt)
                for text, p in zip(batch, preds):
                    labels[text] = p["status"]["label"]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit(f"{len(errors)} requests failed: {errors[:5]}")
    return clients * requests * per_request / wall, latencies, labels


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def make_export(work, prep, i, threads):
    """MODELS[i] made by taft under WORK from the prep output PREP: `init` from scratch, one
    step of plain `finetune`, `export` with `quantize: int8`. Returns (finetune output, export
    output)."""
    init, model, export = (os.path.join(work, f"{k}{i}") for k in ("init", "model", "export"))
    taft("init", "-i", prep, "-o", init, "--set", f"scratch={MODELS[i][1]}")
    taft("finetune", "-i", prep, "-i", init, "-o", model, "--set", "method=finetune", "--set", "train.max_steps=1",
         "--set", "train.batch_size=4", "--set", "train.eval_each_epoch=false", "--set", "train.best=null",
         "--set", f"train.threads={threads}")
    # Random weights: near-tie predictions, so int8 agreement is reported, not required.
    taft("export", "-i", model, "-i", prep, "-o", export, "--set", "quantize=int8", "--set", "min_agreement=0",
         "--set", f"threads={threads}")
    return model, export


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="0,1")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--servers", default=None, help="comma-separated kind:variant, kind one of taft, onnxruntime, torch")
    ap.add_argument("--taft-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of taft serve (repeatable), e.g. join_tokens=0")
    args = ap.parse_args()
    kinds = {"taft": "taft", "onnxruntime": "onnxruntime (Python)", "torch": "torch eager"}
    chosen = None
    if args.servers:
        chosen = []
        for item in args.servers.split(","):
            kind, _, variant = item.partition(":")
            if kind not in kinds or variant not in ("fp32", "int8") or (kind == "torch" and variant != "fp32"):
                sys.exit(f"--servers: unknown server `{item}` (taft:fp32|int8, onnxruntime:fp32|int8, torch:fp32)")
            chosen.append((kinds[kind], variant))
        if ("taft", "fp32") not in chosen:
            sys.exit("--servers: taft:fp32 is the reference of the last column and the ratios")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--no-default-features", "--features", "serve"], cwd=ROOT, check=True)
    shutil.copy(TAFT, SERVE_BIN)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="taft-bench-serve-")
    print(f"# taft serve vs Python peers — {platform.machine()}, {os.cpu_count()} cores, {versions()}, "
          f"threads {args.threads}, {args.clients} clients, median of {args.rounds} rounds\n")
    print("| model | server | variant | items/s at 32 per request | p50 ms at 1 | p99 ms at 1 | p50 ms at 1, 1 client | "
          "p99 ms at 1, 1 client | peak RSS MiB | status labels = taft fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        prep = os.path.join(work, "prep")
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42, train: 64, val: 64, test: 200, unlabeled: 400, learnable: true}")
        import pyarrow.parquet as pq
        rows = pq.read_table(os.path.join(prep, "conversations.parquet")).to_pylist()
        for i in (int(x) for x in args.models.split(",")):
            name, _, thr_requests, lat_requests = MODELS[i]
            model, export = make_export(work, prep, i, args.threads)
            texts = [tuple(u["text"] for u in r["utterances"]) for r in rows if r["split"] == "test"]
            servers = [("taft", "fp32"), ("onnxruntime (Python)", "fp32"), ("torch eager", "fp32"),
                       ("taft", "int8"), ("onnxruntime (Python)", "int8")]
            if chosen:
                servers = [s for s in servers if s in chosen]
            results = {s: {"thr": [], "p50": [], "p99": [], "a50": [], "a99": [], "rss": 0.0, "labels": None}
                       for s in servers}
            for _ in range(args.rounds):
                for s in servers:
                    proc, port = start(s[0], model, export, s[1], args.threads, args.taft_set)
                    try:
                        thr, _, labels = load(port, texts, 32, thr_requests, args.clients)
                        _, lat, _ = load(port, texts, 1, lat_requests, args.clients)
                        _, alone, _ = load(port, texts, 1, lat_requests * args.clients, 1)
                        results[s]["rss"] = max(results[s]["rss"], peak_rss_mib(proc.pid))
                    finally:
                        proc.terminate()
                        proc.wait()
                    results[s]["thr"].append(thr)
                    results[s]["p50"].append(quantile(lat, 0.5) * 1000)
                    results[s]["p99"].append(quantile(lat, 0.99) * 1000)
                    results[s]["a50"].append(quantile(alone, 0.5) * 1000)
                    results[s]["a99"].append(quantile(alone, 0.99) * 1000)
                    results[s]["labels"] = labels
                    print(f"# {name} {s[0]} {s[1]}: {thr:.2f} items/s, p50 {quantile(lat, 0.5) * 1000:.1f} ms, "
                          f"p99 {quantile(lat, 0.99) * 1000:.1f} ms; 1 client: p50 {quantile(alone, 0.5) * 1000:.1f} ms, "
                          f"p99 {quantile(alone, 0.99) * 1000:.1f} ms", file=sys.stderr, flush=True)
            ref = results[("taft", "fp32")]["labels"]
            for s in servers:
                r = results[s]
                same = sum(r["labels"].get(t) == l for t, l in ref.items()) / len(ref)
                print(f"| {name} | {s[0]} | {s[1]} | {statistics.median(r['thr']):.1f} | {statistics.median(r['p50']):.1f} | "
                      f"{statistics.median(r['p99']):.1f} | {statistics.median(r['a50']):.1f} | {statistics.median(r['a99']):.1f} | "
                      f"{r['rss']:.0f} | {same:.3f} |", flush=True)
            t = results[("taft", "fp32")]
            for peer in (("torch eager", "fp32"), ("onnxruntime (Python)", "fp32")):
                if peer not in results:
                    continue
                p = results[peer]
                print(f"\n{name}: taft fp32 / {peer[0]}: throughput {statistics.median(t['thr']) / statistics.median(p['thr']):.2f}x, "
                      f"p99 {statistics.median(t['p99']):.1f} vs {statistics.median(p['p99']):.1f} ms, "
                      f"at 1 client {statistics.median(t['a99']):.1f} vs {statistics.median(p['a99']):.1f} ms, "
                      f"RSS {t['rss'] / p['rss']:.2f}", flush=True)
            if ("taft", "int8") not in results or ("onnxruntime (Python)", "int8") not in results:
                continue
            ti, pi = results[("taft", "int8")], results[("onnxruntime (Python)", "int8")]
            print(f"{name}: taft int8 / onnxruntime (Python) int8: throughput {statistics.median(ti['thr']) / statistics.median(pi['thr']):.2f}x\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
