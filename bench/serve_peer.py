"""The Python peers of `taft serve`: a minimal HTTP server (http.server, one thread per
connection, one model run at a time as taft's batcher does, no batching across requests) answering POST /v1/predict {"texts": [...]} with
class probabilities per task; it also takes {"conversations": [{"texts": [utterances]}]} and
encodes each conversation as taft does (each utterance without special tokens, the separator
token between them, the tokenizer's special tokens around, the head kept up to max_length),
so that both sides run the same token ids. On either
  --backend torch: transformers + PyTorch eager on the finetune output's weights
                   (`model.safetensors` encoder and pooler, `heads.safetensors` classifiers);
  --backend ort:   Python onnxruntime on the export's ONNX file.
Usage: serve_peer.py --backend torch|ort --model DIR --port P --threads T [--onnx model.onnx]
Prints "listening" once ready.
"""
import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from tokenizers import Tokenizer


def torch_backend(model_dir, threads):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    torch.set_num_threads(threads)
    config = AutoConfig.from_pretrained(model_dir)
    encoder = AutoModel.from_pretrained(model_dir, config=config, add_pooling_layer=True).eval()
    heads = load_file(os.path.join(model_dir, "heads.safetensors"))
    taft = json.load(open(os.path.join(model_dir, "taft.json")))
    tasks = list(taft["heads"])
    linear = {}
    for t in tasks:
        layer = torch.nn.Linear(config.hidden_size, len(taft["heads"][t]))
        layer.weight.data = heads[f"classifiers.{t}.weight"]
        layer.bias.data = heads[f"classifiers.{t}.bias"]
        linear[t] = layer.eval()
    lock = threading.Lock()

    def run(ids, mask):
        with torch.inference_mode(), lock:
            pooled = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
            return {t: torch.softmax(linear[t](pooled), -1).numpy() for t in tasks}

    return run, taft


def ort_backend(export_dir, onnx_file, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(export_dir, onnx_file), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    taft = json.load(open(os.path.join(export_dir, "taft.json")))
    lock = threading.Lock()

    def run(ids, mask):
        with lock:
            out = dict(zip(names, sess.run(None, {"input_ids": ids, "attention_mask": mask})))
        return {n[len("probs_"):]: v for n, v in out.items() if n.startswith("probs_")}

    return run, taft


def conversation_encoder(model_dir, max_length):
    """encode(conversations) -> (ids, mask): each conversation (a list of utterances) encoded
    as taft encodes it, padded to the longest."""
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    vocab = tok.get_vocab()
    pad_id = vocab["<pad>" if "<pad>" in vocab else "[PAD]"]
    sep_id = vocab["</s>" if "</s>" in vocab else "[SEP]"]
    around = tok.encode("").ids  # the special tokens the post-processor puts around a text
    front, back = around[:1], around[1:]
    budget = max_length - len(around)

    def encode(conversations):
        """Token ids and attention masks of conversations, padded to the longest."""
        pieces = tok.encode_batch([u for c in conversations for u in c], add_special_tokens=False)
        rows, k = [], 0
        for c in conversations:
            content = []
            for j, e in enumerate(pieces[k:k + len(c)]):
                content += ([sep_id] if j else []) + e.ids
            k += len(c)
            rows.append(front + content[:budget] + back)
        width = max(len(r) for r in rows)
        ids = np.array([r + [pad_id] * (width - len(r)) for r in rows], dtype=np.int64)
        mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
        return ids, mask

    return encode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["torch", "ort"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--onnx", default="model.onnx")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.backend == "torch":
        run, taft = torch_backend(args.model, args.threads)
    else:
        run, taft = ort_backend(args.model, args.onnx, args.threads)
    encode = conversation_encoder(args.model, taft["max_length"])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as uvicorn and other production servers set it: the headers and the
        # body go out in two writes, and Nagle's algorithm would hold the body until the
        # client's delayed ACK of the headers (tens of milliseconds per request).
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if "conversations" in body:
                ids, mask = encode([c["texts"] for c in body["conversations"]])
            else:
                ids, mask = encode([[t] for t in body["texts"]])
            probs = run(ids, mask)
            out = [{t: {"label": int(p[i].argmax()), "probabilities": p[i].tolist()} for t, p in probs.items()}
                   for i in range(len(ids))]
            data = json.dumps({"predictions": out}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
