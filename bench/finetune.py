"""Benchmark of `taft finetune` (step 2: taft, noadapt, tapt) against a plain PyTorch +
transformers loop doing the same work (bench/finetune_peer.py), side by side in one run.

Data: the default synthetic dataset, learnable (`taft prep`). Models: made by `taft init`
from scratch, so both sides start from the same encoder: the demo's tiny RoBERTa (hidden 64,
2 layers) and one of distilcamembert's shape (6 layers, hidden 768, 12 heads, FFN 3072;
random weights). taft's parents (`role`, adaptive and direct) are made with one step each.
Both sides train STEPS optimizer steps of the status and 3-way satisfaction tasks (one
imbalanced batch of each per step, max length 512, no evaluation, no checkpoints) with the
same batch and threads; both pad each batch to its longest (`--peer-padding max_length`: the
peer pads every conversation to 512 as the original does). taft runs taft and noadapt twice: the original's way
(`encoder_cache: false`) and with the frozen-encoder cache. Steps/s is each side's
training-loop figure; wall time is the whole process (taft's includes building the cache
and scoring the test split; the peer's does not score anything); peak RSS from wait4. Model
FLOP utilisation as bench/dapt.py's `mfu`, per step: the frozen encoder's forward (2 FLOPs
per parameter and token) unless the cache holds it, and 6 per parameter and token for what
trains (the whole encoder for tapt, the adaptive layer for taft); the tokens are the training
conversations' mean real length (at most 512) times the batch, for both tasks; the pooler and
heads are left out, so noadapt with the cache counts nothing. Each side's MFU counts the work
it does: the peer's adaptive layer (`nn.TransformerEncoderLayer`) runs on every token, taft's
computes its output at the first token alone (keys and values of every token; the query,
output projection and feed-forward layers for one token per conversation: the same logits),
and so does taft's last encoder layer where no adaptive layer follows it (tapt, noadapt).
On a GPU (`--device cuda --precision fp16|bf16`, `TAFT_BIN` for a built binary): both sides
train on CUDA with autocast in that type (the peer with `torch.autocast` and, in fp16, a
`GradScaler`), the peak is the GEMM peak in that type; `--batch N` instead of the model's.
`--warmup W` counts steps/s over the steps after the first W on both sides (a GPU's first
steps carry its one-time start-up; dapt.py's `steady_rate`).
Usage: .venv/bin/python bench/finetune.py [--rounds 3] [--models 0,1] [--peer-padding batch|max_length]
       [--runs taft,taft+cache,noadapt,noadapt+cache,tapt] [--device cpu|cuda] [--precision fp32|fp16|bf16]
       [--batch N] [--steps N] [--warmup W]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dapt import (HERE, TAFT, build, encoder_params, gemm_peak, layer_params, machine, measure, mfu, prep_rows,
                  steady_rate, taft, versions)  # noqa: E402

MODELS = [
    # name, init scratch settings, adaptive (heads, ffn), batch, steps
    ("tiny RoBERTa 2x64", "{vocab_size: 2000, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_length: 512}", (4, 256), 32, 30),
    ("distilcamembert shape 6x768", "{vocab_size: 8000, hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, intermediate_size: 3072, max_length: 512}", (12, 2048), 4, 6),
]
RUNS = [("taft", False), ("taft", True), ("noadapt", False), ("noadapt", True), ("tapt", False)]


def mean_conversation_tokens(model_dir, conversations, cap):
    """Mean token count of conversations as taft and the peer encode them (the utterances
    joined by the separator token, the special tokens around), each cut at `cap`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    specials = len(tok.encode("").ids)
    pieces = iter(tok.encode_batch([u for c in conversations for u in c], add_special_tokens=False))
    lengths = [min(sum(len(next(pieces).ids) for _ in c) + len(c) - 1 + specials, cap) for c in conversations]
    return sum(lengths) / len(lengths)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="0,1")
    ap.add_argument("--peer-padding", default="batch", choices=["batch", "max_length"])
    ap.add_argument("--runs", default="taft,taft+cache,noadapt,noadapt+cache,tapt",
                    help="which of taft's runs (a +cache run needs its run without the cache, the peer's row)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--batch", type=int, help="instead of the model's batch")
    ap.add_argument("--steps", type=int, help="instead of the model's steps")
    ap.add_argument("--warmup", type=int, default=0, help="steps/s counted after this many steps, on both sides")
    args = ap.parse_args()
    if args.precision != "fp32" and args.device == "cpu":
        sys.exit("--precision fp16 and bf16 need --device cuda")
    names = {f"{m}+cache" if c else m: (m, c) for m, c in RUNS}
    chosen = args.runs.split(",")
    if any(r not in names or (r.endswith("+cache") and r[:-len("+cache")] not in chosen) for r in chosen):
        sys.exit(f"--runs: each of {', '.join(names)}; a +cache run with its run without the cache")
    runs = [run for name, run in names.items() if name in chosen]
    build()
    work = tempfile.mkdtemp(prefix="taft-bench-finetune-")
    table = []
    try:
        prep = os.path.join(work, "prep")
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42, learnable: true}")
        for i in (int(x) for x in args.models.split(",")):
            name, scratch, (heads, ffn), batch, steps = MODELS[i]
            batch, steps = args.batch or batch, args.steps or steps
            init = os.path.join(work, f"init{i}")
            taft("init", "-i", prep, "-o", init, "--set", f"scratch={scratch}")
            convs = [[u["text"] for u in r["utterances"]] for r in prep_rows(prep) if r["split"] == "train"]
            tokens = 2 * batch * mean_conversation_tokens(init, convs, 512)
            hidden = json.load(open(os.path.join(init, "config.json")))["hidden_size"]
            enc, adapt = encoder_params(init), layer_params(hidden, 1, ffn)
            peer_flops = {("tapt", False): 6 * enc * tokens, ("taft", False): (2 * enc + 6 * adapt) * tokens,
                          ("noadapt", False): 2 * enc * tokens}
            # taft's adaptive layer: keys and values over every token, the rest for the first.
            first_token = 6 * (2 * hidden * hidden * tokens + (adapt - 2 * hidden * hidden) * 2 * batch)
            # Without an adaptive layer taft's last encoder layer does the same (tapt, noadapt).
            c = json.load(open(os.path.join(init, "config.json")))
            last = layer_params(hidden, 1, c["intermediate_size"])
            enc_first = (enc - last + 2 * hidden * hidden) * tokens + (last - 2 * hidden * hidden) * 2 * batch
            flops = {("tapt", False): 6 * enc_first, ("taft", False): 2 * enc * tokens + first_token,
                     ("taft", True): first_token, ("noadapt", False): 2 * enc_first, ("noadapt", True): 0}
            parents = {}
            for variant in ("adaptive", "direct"):
                parents[variant] = os.path.join(work, f"role{i}-{variant}")
                taft("role", "-i", prep, "-i", init, "-o", parents[variant], "--set", f"variant={variant}",
                     "--set", f"adaptive={{heads: {heads}, ffn: {ffn}}}", "--set", "train.max_steps=1",
                     "--set", "train.batch_size=8", "--set", "train.eval_each_epoch=false", "--set", "train.best=null",
                     "--set", f"train.threads={args.threads}")
            for method, cache in runs:
                ours, peer = [], []
                for r in range(args.rounds):
                    out = os.path.join(work, f"{method}{i}-{cache}-{r}")
                    parent = parents["adaptive" if method == "taft" else "direct"]
                    cmd = [TAFT, "--log-format", "json", "finetune", "-i", prep, "-i", parent, "-o", out]
                    for s in [f"method={method}", f"encoder_cache={str(cache).lower()}", f"train.batch_size={batch}",
                              f"train.max_steps={steps}", "train.epochs=100", "train.best=null",
                              "train.eval_each_epoch=false", "train.checkpoint_every=0", f"train.device={args.device}",
                              f"train.precision={args.precision}", f"train.threads={args.threads}",
                              *(["train.log_every=1"] if args.warmup else [])]:
                        cmd += ["--set", s]
                    summary = lambda _, out=out: json.load(open(os.path.join(out, "_MANIFEST.json")))["summary"]
                    rate = lambda o, out=out: (steady_rate(out, args.warmup) if args.warmup
                                               else summary(o)["steps_per_second"])
                    ours.append(measure(cmd, rate))
                    shutil.rmtree(out, ignore_errors=True)
                    if not cache:
                        peer.append(measure([sys.executable, os.path.join(HERE, "finetune_peer.py"), method, init, prep,
                                             str(batch), str(steps), str(args.threads), "512", str(heads), str(ffn),
                                             args.peer_padding, args.device, args.precision, str(args.warmup)],
                                            lambda o: json.loads(o.strip().splitlines()[-1])["steps_per_second"]))
                med = lambda runs, k: statistics.median(run[k] for run in runs)
                row = (name, batch, steps, method, cache, flops[(method, cache)], med(ours, 0), med(ours, 1),
                       max(r[2] for r in ours))
                table.append(row + ((med(peer, 0), med(peer, 1), max(r[2] for r in peer), peer_flops[(method, cache)])
                                    if peer else (None, None, None, None)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = gemm_peak(args.threads, args.device, args.precision)
    print(f"machine: {machine(args.device)}; threads {args.threads}; {args.device} {args.precision}; "
          f"{versions()}; median of {args.rounds} processes; "
          f"{f'steps/s after {args.warmup} steps' if args.warmup else 'steps/s over the whole loop'}; "
          f"peer padding: {args.peer_padding}; "
          f"{args.precision} GEMM peak through libtorch {peak:.1f} GFLOP/s\n")
    print("| model | batch x steps | method | encoder cache | taft steps/s | taft wall s | taft peak RSS MiB | taft MFU "
          "| PyTorch steps/s | PyTorch wall s | PyTorch peak RSS MiB | PyTorch MFU | steps/s ratio | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    peers = {}
    for name, batch, steps, method, cache, f, s, w, m, sp, wp, mp, fp in table:
        if sp is not None:
            peers[(name, method)] = (sp, wp, mp, fp)
        sp, wp, mp, fp = peers[(name, method)]
        print(f"| {name} | {batch} x {steps} | {method} | {'yes' if cache else 'no'} | {s:.2f} | {w:.1f} | {m:.0f} "
              f"| {mfu(f, s, peak):.1%} | {sp:.2f} | {wp:.1f} | {mp:.0f} | {mfu(fp, sp, peak):.1%} | {s / sp:.2f}x "
              f"| {wp / w:.2f}x |")


if __name__ == "__main__":
    main()
