"""The Python peer of `taft prep`: the per-example path of a Python pipeline.

Reads JSON lines one record at a time (json.loads), checks the same fields and ranges,
drops padding utterances, and writes the same Parquet layout with pyarrow (zstd).
Usage: prep_peer.py INPUT.jsonl OUTPUT.parquet
"""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = {"train", "val", "test", "unlabeled"}


def check_int(value, hi, field):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise ValueError(f"field `{field}`: {value!r} is not an integer in 0..={hi}")
    return value


def convert(record):
    split = record["split"]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    labeled = split != "unlabeled"
    status = record.get("status")
    satisfaction = record.get("satisfaction")
    if labeled or status is not None:
        check_int(status, 4, "status")
    if labeled or satisfaction is not None:
        check_int(satisfaction, 6, "satisfaction")
    texts, authors, labels = record["texts"], record["authors"], record["labels"]
    if not (len(texts) == len(authors) == len(labels)):
        raise ValueError("texts/authors/labels lengths differ")
    utterances = []
    for text, author, label in zip(texts, authors, labels):
        if not isinstance(text, str):
            raise ValueError("text is not a string")
        check_int(author, 3, "authors")
        check_int(label, 11, "labels")
        if text != "<pad>" and author != 0:
            utterances.append({"text": text, "speaker": author, "label": label})
    if not utterances:
        raise ValueError("empty conversation")
    return {"id": record["id"], "split": split, "status": status,
            "satisfaction": satisfaction, "utterances": utterances}


def main(src, dst):
    rows, seen = [], set()
    with open(src, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = convert(json.loads(line))
            if row["id"] in seen:
                raise ValueError(f"duplicate id {row['id']}")
            seen.add(row["id"])
            rows.append(row)
    utt = pa.struct([("text", pa.string()), ("speaker", pa.int32()), ("label", pa.int32())])
    schema = pa.schema([("id", pa.int64()), ("split", pa.string()), ("status", pa.int32()),
                        ("satisfaction", pa.int32()), ("utterances", pa.list_(utt))])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, dst, compression="zstd", row_group_size=4096)
    print(len(rows))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
