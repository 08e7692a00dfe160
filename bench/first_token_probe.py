"""How much a frozen encoder's first-token state says about each task: the most that
TAFT noAdapt (a pooler and classifiers over that state, the encoder frozen) can learn.

Fits scikit-learn's logistic regression on the standardized first-token states (or the
mean over tokens, `--pool mean`) of the train split and scores the test split, for the
status task and satis3. Conversations are read as taft reads them: utterances joined by the
separator token, cut to `--max-length` keeping a quarter of the text tokens from the head
and the rest from the tail (`truncation: head_tail`).

`--head pooler` trains what noAdapt trains instead, on the states as they are (not
standardized): a fresh pooler (tanh) and classifier with dropout 0.1, AdamW at lr 3e-3,
batch 16, 20 epochs (the demo's noadapt settings); it shows whether that head can reach what
the probe finds.

    .venv/bin/python bench/first_token_probe.py runs/demo/role-direct runs/demo/prep
"""

import argparse

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, f1_score
from sklearn.preprocessing import StandardScaler
from tokenizers import Tokenizer
from transformers import AutoModel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a taft model directory (init, dapt or role output)")
    ap.add_argument("prep", help="a taft prep output")
    ap.add_argument("--pool", choices=["first", "mean"], default="first")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--head", choices=["logistic", "pooler"], default="logistic")
    args = ap.parse_args()
    tok = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    model = AutoModel.from_pretrained(args.model, add_pooling_layer=False).eval()
    rows = pq.read_table(f"{args.prep}/conversations.parquet").to_pylist()
    cls, sep, pad = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    if cls is None:
        cls, sep, pad = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    budget = args.max_length - 2

    def ids(utterances):
        content = []
        for i, u in enumerate(utterances):
            if i:
                content.append(sep)
            content += tok.encode(u["text"], add_special_tokens=False).ids
        if len(content) > budget:
            head = budget // 4
            content = content[:head] + content[len(content) - (budget - head):]
        return [cls] + content + [sep]

    def states(split):
        out = []
        for i in range(0, len(split), 32):
            batch = [ids(r["utterances"]) for r in split[i:i + 32]]
            width = max(map(len, batch))
            x = torch.tensor([b + [pad] * (width - len(b)) for b in batch])
            mask = (torch.arange(width)[None] < torch.tensor([len(b) for b in batch])[:, None]).long()
            with torch.no_grad():
                h = model(input_ids=x, attention_mask=mask).last_hidden_state
            if args.pool == "first":
                out.append(h[:, 0].numpy())
            else:
                out.append(((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
        return np.concatenate(out)

    def satis3(s):
        return 0 if s <= 2 else 1 if s == 3 else 2

    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    x_train, x_test = states(train), states(test)
    scale = StandardScaler().fit(x_train)
    print(f"{args.model} ({args.pool} token): std over conversations {x_train.std(0).mean():.4f}")
    for task in ("status", "satis3"):
        def labelled(split, x):
            keep = [i for i, r in enumerate(split) if r["status"] != 0 or task != "status"]
            y = [r["status"] if task == "status" else satis3(r["satisfaction"]) for r in split]
            return x[keep], np.array(y)[keep]
        xa, ya = labelled(train, x_train)
        xb, yb = labelled(test, x_test)
        if args.head == "logistic":
            clf = LogisticRegression(max_iter=5000).fit(scale.transform(xa), ya)
            p = clf.predict(scale.transform(xb))
        else:
            p = pooler_head(xa, ya, xb)
        print(f"  {task}: macro F1 {f1_score(yb, p, average='macro'):.3f}, kappa {cohen_kappa_score(yb, p):.3f}")


def pooler_head(xa, ya, xb):
    """noAdapt's head trained on fixed states: tanh pooler, dropout 0.1, classifier."""
    torch.manual_seed(0)
    classes = np.unique(ya)
    y = torch.tensor(np.searchsorted(classes, ya))
    x = torch.tensor(xa)
    hidden = x.shape[1]
    pool, classify = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, len(classes))
    opt = torch.optim.AdamW([*pool.parameters(), *classify.parameters()], lr=3e-3, weight_decay=0.01)
    for _ in range(20):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 16):
            b = order[i:i + 16]
            logits = classify(torch.nn.functional.dropout(torch.tanh(pool(x[b])), 0.1))
            loss = torch.nn.functional.cross_entropy(logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return classes[classify(torch.tanh(pool(torch.tensor(xb)))).argmax(1).numpy()]


if __name__ == "__main__":
    main()
