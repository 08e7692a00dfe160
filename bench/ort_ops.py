"""ONNX Runtime's operators on this machine, through Python onnxruntime with the serving
benchmark's session options (2 intra-op threads by default, 1 inter-op).

  ort_ops.py profile EXPORT_DIR [--tokens 162] [--file model.onnx]
      ONNX Runtime's own profile of one item of TOKENS random token ids through an export's
      file: the share of kernel time per operator type, and ms per run.
  ort_ops.py layernorm
      LayerNorm(x + skip + bias) written three ways, timed alone at the shapes a served
      model meets (batch x tokens x hidden): com.microsoft SkipLayerNormalization; Add +
      standard LayerNormalization; Add + InstanceNormalization over rows (the tensor as
      [rows, 1, hidden], scale 1, bias 0, then LayerNorm's weight and bias: taft's fused
      graph). Best of 5 rounds of 200 runs each, with the largest difference from a float64
      reference.
Usage: .venv/bin/python bench/ort_ops.py profile|layernorm [--threads 2] ...
"""
import argparse
import collections
import json
import os
import shutil
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def options(threads, profile_prefix=None):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    if profile_prefix:
        o.enable_profiling = True
        o.profile_file_prefix = profile_prefix
    o.log_severity_level = 3
    return o


def profile(args):
    path = os.path.join(args.export, args.file)
    scratch = tempfile.mkdtemp(prefix="taft-ort-profile-")
    try:
        profile_in(args, path, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def profile_in(args, path, scratch):
    sess = ort.InferenceSession(path, options(args.threads, os.path.join(scratch, "profile")),
                                providers=["CPUExecutionProvider"])
    vocab = len(json.load(open(os.path.join(args.export, "tokenizer.json")))["model"]["vocab"])
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, (1, args.tokens)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for _ in range(5):
        sess.run(None, feed)
    n = 30
    t = time.perf_counter()
    for _ in range(n):
        sess.run(None, feed)
    ms = (time.perf_counter() - t) / n * 1000
    events = json.load(open(sess.end_profiling()))
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    print(f"# {path}: 1 x {args.tokens} tokens, {args.threads} threads: {ms:.2f} ms per run\n")
    print("| operator | share of kernel time | ms per run |")
    print("|---|---|---|")
    for op, us in by_op.most_common():
        if us / total >= 0.005:
            print(f"| {op} | {us / total * 100:.1f}% | {us / (n + 5) / 1000:.2f} |")


def layernorm(args):
    print(f"# LayerNorm(x + skip + bias) on ONNX Runtime {ort.__version__}, {args.threads} threads\n")
    print("| batch x tokens x hidden | SkipLayerNormalization us | Add + LayerNormalization us | "
          "Add + InstanceNormalization over rows us | speed-up | largest difference (Skip / Instance) |")
    print("|---|---|---|---|---|---|")
    for b, s, d in [(1, 128, 64), (32, 128, 64), (1, 162, 768), (32, 128, 768), (1, 1, 768)]:
        rng = np.random.default_rng(0)
        gamma, beta, bias = (rng.standard_normal(d).astype(np.float32) for _ in range(3))
        inits = [nh.from_array(gamma, "g"), nh.from_array(beta, "b"), nh.from_array(bias, "bias"),
                 nh.from_array(np.ones(1, np.float32), "one"), nh.from_array(np.zeros(1, np.float32), "zero"),
                 nh.from_array(np.array([-1, 1, d], np.int64), "rows")]

        def model(nodes):
            g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, T.FLOAT, ["B", "S", d]) for n in ("x", "r")],
                             [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
            m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
            m.ir_version = 8
            return m.SerializeToString()

        graphs = [
            model([h.make_node("SkipLayerNormalization", ["x", "r", "g", "b", "bias"], ["y"], domain="com.microsoft",
                               epsilon=1e-5)]),
            model([h.make_node("Add", ["x", "bias"], ["s0"]), h.make_node("Add", ["s0", "r"], ["s"]),
                   h.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]),
            model([h.make_node("Add", ["x", "bias"], ["s0"]), h.make_node("Add", ["s0", "r"], ["s"]),
                   h.make_node("Reshape", ["s", "rows"], ["s2"]),
                   h.make_node("InstanceNormalization", ["s2", "one", "zero"], ["n"], epsilon=1e-5),
                   h.make_node("Mul", ["n", "g"], ["m"]), h.make_node("Add", ["m", "b"], ["m2"]),
                   h.make_node("Shape", ["x"], ["shape"]), h.make_node("Reshape", ["m2", "shape"], ["y"])]),
        ]
        x = rng.standard_normal((b, s, d)).astype(np.float32)
        r = rng.standard_normal((b, s, d)).astype(np.float32)
        z = x.astype(np.float64) + bias + r
        mu = z.mean(-1, keepdims=True)
        ref = (z - mu) / np.sqrt(((z - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * gamma + beta
        times, diffs = [], []
        for g in graphs:
            sess = ort.InferenceSession(g, options(args.threads), providers=["CPUExecutionProvider"])
            feed = {"x": x, "r": r}
            diffs.append(float(np.abs(sess.run(None, feed)[0] - ref).max()))
            for _ in range(20):
                sess.run(None, feed)
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(200):
                    sess.run(None, feed)
                best = min(best, (time.perf_counter() - t) / 200)
            times.append(best * 1e6)
        print(f"| {b} x {s} x {d} | {times[0]:.1f} | {times[1]:.1f} | {times[2]:.1f} | {times[0] / times[2]:.2f}x | "
              f"{diffs[0]:.1e} / {diffs[2]:.1e} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["profile", "layernorm"])
    ap.add_argument("export", nargs="?")
    ap.add_argument("--tokens", type=int, default=162)
    ap.add_argument("--file", default="model.onnx")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.what == "profile":
        if not args.export:
            ap.error("profile needs EXPORT_DIR")
        profile(args)
    else:
        layernorm(args)


if __name__ == "__main__":
    main()
