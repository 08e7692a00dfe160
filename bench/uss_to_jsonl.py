"""Converts the MultiWOZ part of the User Satisfaction Simulation corpus (Sun et al., SIGIR 2021,
github.com/sunnweiwei/user-satisfaction-simulation, dataset/MWOZ.txt) into taft's JSON lines,
for the real-data benchmark (bench/RESULTS.md, "Real conversations").

    python bench/uss_to_jsonl.py MWOZ.txt OUT.jsonl

Each dialogue is a conversation between a user (author 2, the customer) and the system
(author 3, the operator), with these conversation-level labels:

- status (4 classes): the dialogue's first domain, read off the first user action
  (Restaurant, Hotel, Train, Attraction → 1, 2, 3, 4; so `pc` groups Train + Attraction
  against Restaurant + Hotel). Dialogues that open in another domain (Taxi, Hospital,
  Police) or with no domain go to the unlabeled split.
- satisfaction: the annotators' mean OVERALL rating (1–5), rounded half up, as taft's
  satisfaction index 0–6 with 3 neutral (rating r → index r): satis3 is negative below 3,
  neutral at 3, positive above.

Splits by a hash of the dialogue's position: 40 % unlabeled, 36 % train, 12 % validation,
12 % test (labeled dialogues only; the unlabeled split feeds the pretraining steps).
"""

import hashlib
import json
import math
import sys

DOMAINS = {"restaurant": 1, "hotel": 2, "train": 3, "attraction": 4}


def dialogues(path):
    with open(path, encoding="utf-8") as f:
        block = []
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if block:
                    yield block
                block = []
                continue
            block.append(line.split("\t"))
        if block:
            yield block


def split_of(index):
    h = int(hashlib.sha256(f"mwoz-{index}".encode()).hexdigest(), 16) % 100
    if h < 40:
        return "unlabeled"
    if h < 76:
        return "train"
    if h < 88:
        return "val"
    return "test"


def main(src, dst):
    counts = {}
    with open(dst, "w", encoding="utf-8") as out:
        for i, block in enumerate(dialogues(src)):
            texts, authors, domain, overall = [], [], None, None
            for fields in block:
                role, text = fields[0], fields[1] if len(fields) > 1 else ""
                action = fields[2] if len(fields) > 2 else ""
                if role == "USER" and text == "OVERALL":
                    scores = [int(s) for s in fields[3].split(",") if s.strip()]
                    overall = sum(scores) / len(scores)
                    continue
                if not text.strip():
                    continue
                if role == "USER" and domain is None and "-" in action:
                    domain = action.split("-")[0].lower()
                texts.append(text)
                authors.append(2 if role == "USER" else 3)
            if not texts:
                continue
            status = DOMAINS.get(domain)
            split = split_of(i)
            if status is None or overall is None:
                split = "unlabeled"
            record = {
                "id": f"mwoz-{i:04d}",
                "split": split,
                "status": status if split != "unlabeled" else None,
                "satisfaction": int(math.floor(overall + 0.5)) if split != "unlabeled" else None,
                "texts": texts,
                "authors": authors,
                # per-utterance emotion labels: none in this corpus (0), unused by the method
                "labels": [0] * len(texts),
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[split] = counts.get(split, 0) + 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
