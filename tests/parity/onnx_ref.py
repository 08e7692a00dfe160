"""Reference for `taft export`: the exported file passes the ONNX checker (full check), loads
in Python onnxruntime, and gives class probabilities for texts tokenized by the Python
`tokenizers` library from the export's tokenizer.json.

usage: onnx_ref.py EXPORT_DIR TEXTS_JSON OUT_JSON [--model model.onnx]
TEXTS_JSON is a JSON list of texts (conversation items as taft builds them); OUT_JSON gets
{"outputs": [...graph output names...], "probs": {task: [[p...] per text]} (batches of 8,
padded), "probs_single": {...} (one text at a time; padded to max_length for an unmasked
adaptive layer), "padding_max_diff": largest difference between the two, "opset": N,
"ops": {"domain:op": count} (the default domain written "ai.onnx")}.
"""

import argparse
import collections
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("texts")
    ap.add_argument("out")
    ap.add_argument("--model", default="model.onnx")
    args = ap.parse_args()

    path = os.path.join(args.export, args.model)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

    taft = json.load(open(os.path.join(args.export, "taft.json")))
    max_length = taft["max_length"]
    tok = Tokenizer.from_file(os.path.join(args.export, "tokenizer.json"))
    # Text that spells a special token is text, as taft reads it.
    tok.encode_special_tokens = True
    tok.enable_truncation(max_length)
    vocab = tok.get_vocab()
    pad_token = "<pad>" if "<pad>" in vocab else "[PAD]"
    tok.enable_padding(pad_id=vocab[pad_token], pad_token=pad_token)
    # An unmasked adaptive layer (the original's quirk) reads its padding: the model is
    # meant to see every text padded to max_length, as it was trained.
    fixed = (taft.get("adaptive") or {}).get("mask_padding") is False
    tok_single = Tokenizer.from_file(os.path.join(args.export, "tokenizer.json"))
    tok_single.encode_special_tokens = True
    tok_single.enable_truncation(max_length)
    tok_single.enable_padding(pad_id=vocab[pad_token], pad_token=pad_token, length=max_length if fixed else None)
    texts = json.load(open(args.texts))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    assert inputs == ["input_ids", "attention_mask"], inputs
    for i in sess.get_inputs():
        assert i.type == "tensor(int64)", i
    outputs = [o.name for o in sess.get_outputs()]
    tasks = [name[len("probs_"):] for name in outputs if name.startswith("probs_")]

    probs = {t: [] for t in tasks}
    single_probs = {t: [] for t in tasks}
    pad_diff = 0.0
    # One text at a time and in batches of 8 (padding): both must agree.
    for start in range(0, len(texts), 8):
        batch = texts[start:start + 8]
        enc = tok.encode_batch(batch)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        got = dict(zip(outputs, sess.run(None, {"input_ids": ids, "attention_mask": mask})))
        for t in tasks:
            probs[t].extend(got["probs_" + t].tolist())
            # probs are the softmax of the logits
            logits = got["logits_" + t]
            soft = np.exp(logits - logits.max(-1, keepdims=True))
            soft /= soft.sum(-1, keepdims=True)
            assert np.abs(soft - got["probs_" + t]).max() < 1e-5
        for k, text in enumerate(batch):
            e = tok_single.encode(text)
            single = dict(zip(outputs, sess.run(None, {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
            })))
            for t in tasks:
                single_probs[t].append(single["probs_" + t][0].tolist())
                diff = np.abs(single["probs_" + t][0] - got["probs_" + t][k]).max()
                pad_diff = max(pad_diff, float(diff))

    json.dump({"outputs": outputs, "probs": probs, "probs_single": single_probs, "opset": opset,
               "ir_version": model.ir_version, "padding_max_diff": pad_diff,
               "ops": collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node)},
              open(args.out, "w"))


if __name__ == "__main__":
    main()
