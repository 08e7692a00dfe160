"""Benchmark of `taft dapt` training against the Hugging Face Trainer, side by side in one run.

Data: the default synthetic dataset's unlabeled utterances (`taft prep`). Models: made by
`taft init` from scratch (tokenizer trained on the same utterances), so both sides start from
the same model directory: the demo's tiny RoBERTa (hidden 64, 2 layers), a small one
(hidden 256, 4 layers) and one of distilcamembert's shape (6 layers, hidden 768, 12 heads,
FFN 3072). Both train STEPS optimizer steps (AdamW, linear schedule, 15 %
masking, grad clipping 1.0) with the same batch, block size and threads, no evaluation and
no checkpoints. Each side runs ROUNDS processes (alternating); the table shows the median
training steps/s (taft: its summary's steps_per_second; peer: Trainer's
train_steps_per_second), the median whole-process wall time, the peak RSS (wait4), and each
side's model FLOP utilisation (see `mfu`).
On a GPU (`--device cuda --precision fp16|bf16`): both sides train on CUDA with autocast
in that type (the Trainer's `fp16`/`bf16`), and the peak is the GEMM peak in that type; a
larger `--batch`/`--block` keeps the GPU busy. `TAFT_BIN` names a built binary (no cargo
build: a machine without Rust).
`--warmup W` counts steps/s over the steps after the first W on both sides (`steady_rate`).
Usage: .venv/bin/python bench/dapt.py [--rounds 3] [--steps 60] [--threads 2] [--models 0,1,2]
       [--device cpu|cuda] [--precision fp32|fp16|bf16] [--batch N] [--block N] [--warmup W]
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
TAFT = os.environ.get("TAFT_BIN") or os.path.join(ROOT, "target", "release", "taft")


def build():
    """Builds taft's release binary, unless `TAFT_BIN` names one."""
    if not os.environ.get("TAFT_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

MODELS = [
    # name, init scratch settings, block, batch
    ("tiny RoBERTa 2x64, vocab 2000", "{vocab_size: 2000, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_length: 512}", 128, 16),
    ("small RoBERTa 4x256, vocab 8000", "{vocab_size: 8000, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 1024, max_length: 512}", 256, 8),
    ("distilcamembert shape 6x768, vocab 8000", "{vocab_size: 8000, hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, intermediate_size: 3072, max_length: 512}", 256, 8),
]


def gemm_peak(threads, device="cpu", precision="fp32"):
    """This machine's GEMM peak through libtorch, GFLOP/s: the best of 5 timings of 10
    products of two square matrices (after a warm-up product). On the CPU: fp32, 2048 x 2048,
    `threads` threads; on CUDA: 8192 x 8192 in `precision` (fp32 without TF32)."""
    n = 2048 if device == "cpu" else 8192
    dtype = {"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16"}[precision]
    sync = "torch.cuda.synchronize()" if device != "cpu" else "pass"
    code = (f"import time, torch\ntorch.set_num_threads({threads})\ntorch.backends.cuda.matmul.allow_tf32 = False\n"
            f"n = {n}\na, b = (torch.randn(n, n, device='{device}').to({dtype}) for _ in range(2))\n"
            f"a @ b\n{sync}\nbest = 0.0\nfor _ in range(5):\n    t = time.perf_counter()\n    for _ in range(10):\n"
            f"        a @ b\n    {sync}\n    best = max(best, 10 * 2 * n ** 3 / (time.perf_counter() - t))\nprint(best / 1e9)\n")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def layer_params(hidden, layers, ffn):
    """Matmul parameters of `layers` transformer layers: q, k, v and output projections, the
    feed-forward's two (biases, norms and embeddings do no matmul work)."""
    return layers * (4 * hidden * hidden + 2 * hidden * ffn)


def encoder_params(model_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    return layer_params(c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"])


def mean_tokens(model_dir, texts, cap):
    """Mean token count of `texts` (with the special tokens) under the model's tokenizer, each
    cut at `cap`: the real tokens an item carries into a batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    lengths = [min(len(e.ids), cap) for e in tok.encode_batch(texts)]
    return sum(lengths) / len(lengths)


def prep_rows(prep):
    import pyarrow.parquet as pq

    return pq.read_table(os.path.join(prep, "conversations.parquet")).to_pylist()


def mfu(flops_per_step, steps_per_second, peak_gflops):
    """Model FLOP utilisation: the model's matmul FLOPs per step (2 per parameter and token
    forward, 4 more backward where the parameter trains; padding not counted) times steps/s,
    over the GEMM peak."""
    return flops_per_step * steps_per_second / (peak_gflops * 1e9)



def measure(cmd, parse):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}")
    return parse(out), wall, usage.ru_maxrss / 1024


def steady_rate(out, warmup):
    """Steps/s of a taft training run over its steps after the first `warmup`, from the
    times its metrics.jsonl records for every step (`train.log_every=1`): a GPU's first steps
    carry one-time work (the CUDA context, cuBLAS handles, kernels loaded on first use, the
    caching allocator growing) that a short run would otherwise count."""
    times = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("kind", "train") == "train":
                times[record["step"]] = record["time"]
    last = max(times)
    return (last - warmup) / (times[last] - times[warmup])


def taft(*args):
    subprocess.run([TAFT, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compare(step, rounds, taft_sets, peer_cmd, models=None, flops=None, device="cpu", warmup=0):
    """Builds taft, makes the data and each of MODELS (`taft prep`, `taft init`), then runs
    `taft STEP` (with `taft_sets(i)`, the no-evaluation, no-checkpoint settings) and the
    peer (`peer_cmd(i, model, prep)`) ROUNDS times each, alternately. Returns one row per
    model: medians of taft's steps/s and wall s, its peak RSS, then the same for the peer,
    then `flops(i, model, prep)` (the model FLOPs of one step) when given, then the medians
    of the share of computed tokens that are padding (taft's summary `train_padding`, the
    peer's `padding`; NaN where a side does not report it). `models`: the
    indexes into MODELS to run (default all); `device`: taft's `train.device`; `warmup`: steps/s
    counted after that many steps on both sides (`steady_rate`; the peer is given it)."""
    build()
    work = tempfile.mkdtemp(prefix=f"taft-bench-{step}-")
    rows = []
    try:
        prep = os.path.join(work, "prep")
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42}")
        for i, (_, scratch, _, _) in enumerate(MODELS):
            if models is not None and i not in models:
                continue
            model = os.path.join(work, f"init{i}")
            taft("init", "-i", prep, "-o", model, "--set", f"scratch={scratch}")
            ours, peer = [], []
            for r in range(rounds):
                out = os.path.join(work, f"{step}{i}-{r}")
                cmd = [TAFT, "--log-format", "json", step, "-i", prep, "-i", model, "-o", out,
                       "--set", "train.lr=1e-3", "--set", "train.eval_each_epoch=false",
                       "--set", "train.checkpoint_every=0", "--set", f"train.device={device}"]
                for setting in taft_sets(i) + (["train.log_every=1"] if warmup else []):
                    cmd += ["--set", setting]

                def summary(_, out=out):
                    s = json.load(open(os.path.join(out, "_MANIFEST.json")))["summary"]
                    return {**s, "steps_per_second": steady_rate(out, warmup)} if warmup else s
                ours.append(measure(cmd, summary))
                peer.append(measure(peer_cmd(i, model, prep), lambda o: json.loads(o.strip().splitlines()[-1])))
            med = lambda runs, k: statistics.median(run[k] for run in runs)
            steps = lambda runs: statistics.median(run[0]["steps_per_second"] for run in runs)
            padding = lambda runs, key: statistics.median(run[0].get(key, float("nan")) for run in runs)
            rows.append((steps(ours), med(ours, 1), max(r[2] for r in ours), steps(peer), med(peer, 1), max(r[2] for r in peer),
                         flops(i, model, prep) if flops else None, padding(ours, "train_padding"), padding(peer, "padding")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def machine(device="cpu"):
    """The host, its cores, and on CUDA the GPU's name."""
    host = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"
    if device == "cpu":
        return host
    gpu = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(0))"],
                         capture_output=True, text=True).stdout.strip()
    return f"{host}, {gpu}"


def versions():
    out = subprocess.run([sys.executable, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                         capture_output=True, text=True).stdout.split()
    return f"torch {out[0]}, transformers {out[1]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="0,1,2", help="indexes into MODELS")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="a further `--set` for taft dapt (e.g. blocks_per_pass=4); repeatable")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--batch", type=int, help="instead of the model's batch")
    ap.add_argument("--block", type=int, help="instead of the model's block size")
    ap.add_argument("--warmup", type=int, default=0, help="steps/s counted after this many steps, on both sides")
    args = ap.parse_args()
    if args.precision != "fp32" and args.device == "cpu":
        sys.exit("--precision fp16 and bf16 need --device cuda")
    chosen = [int(i) for i in args.models.split(",")]
    block = lambda i: args.block or MODELS[i][2]
    batch = lambda i: args.batch or MODELS[i][3]
    taft_sets = lambda i: [f"block_size={block(i)}", f"train.batch_size={batch(i)}", f"train.max_steps={args.steps}",
                           "train.epochs=1000", f"train.threads={args.threads}", f"train.precision={args.precision}",
                           *args.sets]
    peer_cmd = lambda i, model, prep: [sys.executable, os.path.join(HERE, "dapt_peer.py"), model, prep, str(block(i)),
                                       str(batch(i)), str(args.steps), str(args.threads), args.device, args.precision,
                                       str(args.warmup)]
    # Every token of a block trains every encoder parameter (the masked-LM head is left out). The
    # same count on both sides: taft's last layer computes its queries, output projection and
    # feed-forward block at the chosen positions alone, so its MFU counts work it skips.
    flops = lambda i, model, prep: 6 * encoder_params(model) * block(i) * batch(i)
    rows = compare("dapt", args.rounds, taft_sets, peer_cmd, chosen, flops, args.device, args.warmup)
    peak = gemm_peak(args.threads, args.device, args.precision)
    print(f"machine: {machine(args.device)}; threads {args.threads}; {args.steps} steps, steps/s over the last "
          f"{args.steps - args.warmup}; {args.device} "
          f"{args.precision}; taft sets {args.sets}; {versions()}; median of {args.rounds} processes; "
          f"{args.precision} GEMM peak through libtorch {peak:.1f} GFLOP/s\n")
    print("| model | block x batch | taft steps/s | taft wall s | taft peak RSS MiB | taft MFU | Trainer steps/s "
          "| Trainer wall s | Trainer peak RSS MiB | Trainer MFU | steps/s ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, (s, w, m, sp, wp, mp, f, *_) in zip(chosen, rows):
        print(f"| {MODELS[i][0]} | {block(i)} x {batch(i)} | {s:.2f} | {w:.1f} | {m:.0f} | {mfu(f, s, peak):.1%} | {sp:.2f} | {wp:.1f} "
              f"| {mp:.0f} | {mfu(f, sp, peak):.1%} | {s / sp:.2f}x |")


if __name__ == "__main__":
    main()
