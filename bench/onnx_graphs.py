"""Benchmark of the ONNX files `taft export` writes (`graph: fused` and `graph: portable`)
against the same weights exported by `torch.onnx.export` and optimized by
`onnxruntime.transformers.optimizer` (the best a Python user gets), all run by Python
onnxruntime with the same session options and threads, side by side in one run.

Models: made by taft from scratch with random weights (`init`, one step of plain `finetune`
on the status and 3-way satisfaction tasks): the demo's tiny RoBERTa (2x64) and
distilcamembert's shape (6x768, 12 heads, FFN 3072). The Python file is the same model as
transformers builds it (`AutoModel` with its pooler, the classifier heads as `nn.Linear`, a
softmax per head), exported with the TorchScript exporter (opset 17, dynamic batch and
sequence) and optimized for `bert` with the model's heads and hidden size. Before timing,
every file's probabilities are checked against taft's fused file (1e-4).

Inputs: random token ids with the classification token first and the separator last, the
first row full length and the others shorter (padded), for each shape in SHAPES. Every
figure is the median over ROUNDS rounds of REPEATS runs each after a warm-up run (files
alternate within a round, each round starting from the next file; thread spinning off, so
one file's idle threads do not slow the next), in ms per batch.
Usage: .venv/bin/python bench/onnx_graphs.py [--rounds 5] [--repeats 3] [--threads 2] [--models 0,1]
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dapt import ROOT, taft, versions  # noqa: E402
from serve import MODELS  # noqa: E402

SHAPES = [(1, 128), (32, 128), (8, 512)]


def torch_file(model_dir, path):
    """The model as transformers builds it, exported by torch.onnx.export (TorchScript)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    encoder = AutoModel.from_pretrained(model_dir, config=config, add_pooling_layer=True).eval()
    heads = load_file(os.path.join(model_dir, "heads.safetensors"))
    tasks = list(json.load(open(os.path.join(model_dir, "taft.json")))["heads"])

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.heads = torch.nn.ModuleList()
            for t in tasks:
                layer = torch.nn.Linear(config.hidden_size, heads[f"classifiers.{t}.weight"].shape[0])
                layer.weight.data = heads[f"classifiers.{t}.weight"]
                layer.bias.data = heads[f"classifiers.{t}.bias"]
                self.heads.append(layer)

        def forward(self, input_ids, attention_mask):
            pooled = self.encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return tuple(torch.softmax(h(pooled), -1) for h in self.heads)

    model = Classifier().eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    names = [f"probs_{t}" for t in tasks]
    axes = {n: {0: "batch"} for n in names}
    axes.update({"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}})
    with torch.no_grad():
        torch.onnx.export(model, (ids, ids), path, input_names=["input_ids", "attention_mask"], output_names=names,
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return config


def optimized(path, config, out):
    from onnxruntime.transformers import optimizer

    m = optimizer.optimize_model(path, model_type="bert", num_heads=config.num_attention_heads,
                                 hidden_size=config.hidden_size)
    m.save_model_to_file(out)
    return m.get_fused_operator_statistics()


def session(path, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Each session has its own thread pool: threads spinning after one file's run would slow
    # the next file's.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def batch(rng, vocab, cls, sep, pad, n, seq):
    ids = np.full((n, seq), pad, dtype=np.int64)
    mask = np.zeros((n, seq), dtype=np.int64)
    for r in range(n):
        length = seq if r == 0 else int(rng.integers(seq // 4, seq + 1))
        ids[r, :length] = rng.integers(10, vocab, length)
        ids[r, 0], ids[r, length - 1] = cls, sep
        mask[r, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def probs(sess, feed):
    names = [o.name for o in sess.get_outputs() if o.name.startswith("probs_")]
    return dict(zip(names, sess.run(names, feed)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="0,1")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="taft-bench-onnx-")
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    import onnxruntime as ort

    print(f"# ONNX graphs — {platform.machine()}, {os.cpu_count()} cores, {versions()}, onnxruntime {ort.__version__}, "
          f"threads {args.threads}, median of {args.rounds} rounds x {args.repeats} runs\n")
    prep = os.path.join(work, "prep")
    taft("prep", "-o", prep, "--set", "synthetic={seed: 42, train: 64, val: 16, test: 16, unlabeled: 0, learnable: true}")
    rng = np.random.default_rng(7)
    for i in (int(x) for x in args.models.split(",")):
        name, scratch = MODELS[i][0], MODELS[i][1]
        init, model = os.path.join(work, f"init{i}"), os.path.join(work, f"model{i}")
        taft("init", "-i", prep, "-o", init, "--set", f"scratch={scratch}")
        taft("finetune", "-i", prep, "-i", init, "-o", model, "--set", "method=finetune", "--set", "train.max_steps=1",
             "--set", "train.batch_size=4", "--set", "train.eval_each_epoch=false", "--set", "train.best=null",
             "--set", f"train.threads={args.threads}")
        files = {}
        for graph in ("fused", "portable"):
            out = os.path.join(work, f"export{i}-{graph}")
            taft("export", "-i", model, "-o", out, "--set", f"graph={graph}", "--set", f"threads={args.threads}")
            files[f"taft {graph}"] = os.path.join(out, "model.onnx")
        raw = os.path.join(work, f"torch{i}.onnx")
        config = torch_file(model, raw)
        files["torch.onnx.export"] = raw
        files["torch.onnx.export + ORT optimizer"] = os.path.join(work, f"torch{i}-opt.onnx")
        fused_ops = optimized(raw, config, files["torch.onnx.export + ORT optimizer"])
        tok = json.load(open(os.path.join(os.path.dirname(files["taft fused"]), "tokenizer.json")))
        vocab = {t["content"]: t["id"] for t in tok["added_tokens"]}
        cls, sep, pad = (vocab.get(a, vocab.get(b)) for a, b in (("<s>", "[CLS]"), ("</s>", "[SEP]"), ("<pad>", "[PAD]")))
        sessions = {k: session(v, args.threads) for k, v in files.items()}
        feeds = {s: batch(rng, min(config.vocab_size, 2000), cls, sep, pad, *s) for s in SHAPES}
        for shape, feed in feeds.items():
            ref = probs(sessions["taft fused"], feed)
            for k, sess in sessions.items():
                got = probs(sess, feed)
                worst = max(float(np.abs(got[n] - ref[n]).max()) for n in ref)
                if worst > 1e-4:
                    sys.exit(f"{name}: {k} differs from taft fused by {worst} on {shape}")
        times = {(k, s): [] for k in sessions for s in SHAPES}
        keys = list(sessions)
        for r in range(args.rounds):
            for s, feed in feeds.items():
                # The files take turns going first.
                for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                    sess = sessions[k]
                    sess.run(None, feed)  # warm
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        sess.run(None, feed)
                        times[(k, s)].append((time.perf_counter() - t0) * 1000)
        print(f"## {name}\n")
        print(f"ORT optimizer's fusions: {json.dumps({k: v for k, v in fused_ops.items() if v})}\n")
        print("| file | " + " | ".join(f"ms at {b}x{q}" for b, q in SHAPES) + " | bytes |")
        print("|---|" + "---|" * (len(SHAPES) + 1))
        med = {key: statistics.median(v) for key, v in times.items()}
        for k in sessions:
            print(f"| {k} | " + " | ".join(f"{med[(k, s)]:.2f}" for s in SHAPES) + f" | {os.path.getsize(files[k]):,} |")
        base = "torch.onnx.export + ORT optimizer"
        for k in ("taft fused", "taft portable"):
            ratios = ", ".join(f"{b}x{q}: {med[(base, (b, q))] / med[(k, (b, q))]:.2f}x" for b, q in SHAPES)
            print(f"\n{k} speed over the optimizer's file: {ratios}")
        print()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
