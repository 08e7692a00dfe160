"""The Python peer of `taft predict`: Python onnxruntime on an export's ONNX file over every
conversation of a prep output, as a careful Python user writes batch prediction: the
conversations encoded as taft encodes them (serve_peer.conversation_encoder, the same token
ids), sorted by length, run in batches of BATCH items padded to their longest, the labels
and probabilities written to Parquet.
Usage: predict_peer.py EXPORT_DIR PREP_DIR OUT_PARQUET [--threads 2] [--batch 32]
Prints one JSON line: items, and seconds spent scoring (loading excluded, as in taft's
`items_per_second`).
"""
import argparse
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from serve_peer import conversation_encoder, ort_backend


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("prep")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    run, taft = ort_backend(args.export, "model.onnx", args.threads)
    encode = conversation_encoder(args.export, taft["max_length"])
    started = time.perf_counter()
    rows = pq.read_table(os.path.join(args.prep, "conversations.parquet"), columns=["id", "utterances"]).to_pylist()
    conversations = [[u["text"] for u in r["utterances"]] for r in rows]
    lengths = encode(conversations)[1].sum(axis=1)
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    labels, probs = {}, {}
    for start in range(0, len(order), args.batch):
        chunk = order[start:start + args.batch]
        ids, mask = encode([conversations[i] for i in chunk])
        for task, p in run(ids, mask).items():
            for k, i in enumerate(chunk):
                labels.setdefault(task, [0] * len(rows))[i] = int(p[k].argmax())
                probs.setdefault(task, [None] * len(rows))[i] = p[k].tolist()
    columns = {"id": [str(r["id"]) for r in rows]}
    for task in labels:
        columns[f"{task}_pred"] = labels[task]
        columns[f"{task}_probs"] = probs[task]
    pq.write_table(pa.table(columns), args.out)
    print(json.dumps({"items": len(rows), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
