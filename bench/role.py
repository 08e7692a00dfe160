"""Benchmark of `taft role` (speaker-role pretraining, adaptive variant) against a plain
PyTorch + transformers training loop (bench/role_peer.py), side by side in one run.

Same data (the default synthetic set's unlabeled customer and operator utterances, 50
tokens), the same model directories as bench/dapt.py (made by `taft init`), batch 128 (the
paper's), AdamW lr 1e-3 with a linear schedule, SPEC §4's weighted loss, the same adaptive
layer, 2 threads; STEPS optimizer steps, no evaluation, no checkpoints. Steps/s is each
side's training-loop figure (taft tokenizes once before the loop; the peer per batch, as a
data loader would); wall time is the whole process; peak RSS from wait4; model FLOP
utilisation as bench/dapt.py's `mfu` (every encoder and adaptive-layer parameter trains; the
tokens are the utterances' mean real length times the batch).
With `--whole`: the whole run instead, evaluation included — taft with length grouping
(`train.group_by_length`) and its length-sorted evaluation, one epoch then validation and
test; the peer as the original runs it (every batch padded to 50 tokens, evaluation in file
order). The figure to compare is then the wall time.
With `--group` (steps mode): taft with `train.group_by_length` against the peer's batches
padded to their longest, the same random utterances in both; the padding columns give the
share of computed tokens that are padding on each side.
With `--taft-set KEY=VALUE` (repeatable): a setting of taft role, e.g. pass_memory_mib=0 (every
batch in one forward pass).
Usage: .venv/bin/python bench/role.py [--rounds 3] [--steps 30] [--threads 2] [--whole | --group]
       [--taft-set KEY=VALUE]
"""
import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dapt import HERE, MODELS, compare, encoder_params, gemm_peak, layer_params, mean_tokens, mfu, prep_rows, versions  # noqa: E402

ADAPTIVE = {0: (4, 256), 1: (4, 1024), 2: (12, 2048)}  # heads, ffn per model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--whole", action="store_true")
    ap.add_argument("--group", action="store_true", help="taft groups its batches by length (steps mode)")
    ap.add_argument("--models", default="0,1", help="indexes into MODELS")
    ap.add_argument("--taft-set", action="append", default=[], metavar="KEY=VALUE", help="a setting of taft role (repeatable)")
    args = ap.parse_args()
    chosen = [int(i) for i in args.models.split(",")]
    MODELS[:] = [MODELS[i] for i in chosen]
    heads_ffn = [ADAPTIVE[i] for i in chosen]
    adaptive = lambda i: f"adaptive={{heads: {heads_ffn[i][0]}, ffn: {heads_ffn[i][1]}}}"
    if args.whole:
        taft_sets = lambda i: [f"train.batch_size={args.batch}", "train.epochs=1", "train.eval_each_epoch=true",
                               "train.group_by_length=true", f"train.threads={args.threads}", adaptive(i)] + args.taft_set
    else:
        taft_sets = lambda i: [f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "train.epochs=100",
                               "train.best=null", f"train.threads={args.threads}", adaptive(i)] + \
            (["train.group_by_length=true"] if args.group else []) + args.taft_set
    peer_cmd = lambda i, model, prep: [sys.executable, os.path.join(HERE, "role_peer.py"), model, prep, str(args.batch),
                                       str(args.steps), str(args.threads), str(heads_ffn[i][0]), str(heads_ffn[i][1])] + \
        (["whole"] if args.whole else [])

    def flops(i, model, prep):
        texts = [u["text"] for r in prep_rows(prep) if r["split"] == "unlabeled" for u in r["utterances"] if u["speaker"] >= 2]
        hidden = json.load(open(os.path.join(model, "config.json")))["hidden_size"]
        params = encoder_params(model) + layer_params(hidden, 1, heads_ffn[i][1])
        return 6 * params * args.batch * mean_tokens(model, texts, 50)

    rows = compare("role", args.rounds, taft_sets, peer_cmd, flops=None if args.whole else flops)
    peak = gemm_peak(args.threads)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; threads {args.threads}; "
          f"batch {args.batch} x 50 tokens; {'one epoch + evaluation' if args.whole else f'{args.steps} steps'}; "
          f"taft {'with' if args.group or args.whole else 'without'} length grouping{''.join('; ' + kv for kv in args.taft_set)}; "
          f"{versions()}; median of {args.rounds} processes; fp32 GEMM peak through libtorch {peak:.1f} GFLOP/s\n")
    print("| model | taft steps/s | taft wall s | taft peak RSS MiB | taft MFU | PyTorch loop steps/s | PyTorch wall s "
          "| PyTorch peak RSS MiB | PyTorch MFU | taft padding | PyTorch padding | steps/s ratio | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, _, _, _), (s, w, m, sp, wp, mp, f, pad, pad_peer) in zip(MODELS, rows):
        u, up = (f"{mfu(f, s, peak):.1%}", f"{mfu(f, sp, peak):.1%}") if f else ("", "")
        print(f"| {name} | {s:.2f} | {w:.1f} | {m:.0f} | {u} | {sp:.2f} | {wp:.1f} | {mp:.0f} | {up} | {pad:.0%} "
              f"| {pad_peer:.0%} | {s / sp:.2f}x "
              f"| {wp / w:.2f}x |")


if __name__ == "__main__":
    main()
