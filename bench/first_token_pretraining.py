"""Pretrains a model directory by masked LM plus a contrastive objective on the first token,
so that its first-token state summarises a conversation: the kind of encoder TAFT noAdapt
(a pooler and classifiers over that frozen state) needs, and the demo's masked-LM stand-in
is not (bench/RESULTS.md, "noadapt and the first-token state").

Each batch holds 16 unlabeled conversations of at least 100 tokens, each as two views of
equal length (so length tells nothing). `--views halves`: a 48-token window from each half,
which share only what runs through the whole conversation (the status words);
`--views tail`: a 40-token window of the body followed by the last 24 tokens, which share the
end (the satisfaction words, and the end's other words). The loss is masked LM (15 %,
80/10/10) on every view plus InfoNCE between the two views' normalized first-token states
(in-batch negatives, temperature 0.05, both directions).

    .venv/bin/python bench/first_token_pretraining.py runs/demo/init runs/demo/prep /tmp/ctr
    taft init -i runs/demo/prep -o /tmp/ctr-init --set pretrained=/tmp/ctr
"""

import argparse
import random
import shutil

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModelForMaskedLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a taft model directory (init or dapt output)")
    ap.add_argument("prep", help="a taft prep output")
    ap.add_argument("out", help="the model directory to write")
    ap.add_argument("--views", choices=["halves", "tail", "both"], default="halves")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tok = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    model = AutoModelForMaskedLM.from_pretrained(args.model)
    cls, sep, pad, mask_id = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<mask>"))
    convs = []
    for r in pq.read_table(f"{args.prep}/conversations.parquet").to_pylist():
        if r["split"] == "unlabeled":
            ids = [i for u in r["utterances"] for i in tok.encode(u["text"], add_special_tokens=False).ids]
            if len(ids) >= 100:
                convs.append(ids)

    def views(c, kind):
        if kind == "halves":
            cut = len(c) // 2
            a, b = random.randint(0, cut - 48), random.randint(cut, len(c) - 48)
            return [cls] + c[a:a + 48] + [sep], [cls] + c[b:b + 48] + [sep]
        body, tail = c[:-24], c[-24:]
        a, b = random.randint(0, len(body) - 40), random.randint(0, len(body) - 40)
        return ([cls] + body[a:a + 40] + [sep] + tail + [sep],
                [cls] + body[b:b + 40] + [sep] + tail + [sep])

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * (len(convs) // 16)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    model.train()
    vocab = model.config.vocab_size
    for epoch in range(args.epochs):
        order = list(range(len(convs)))
        random.shuffle(order)
        sums = [0.0, 0.0, 0.0, 0]
        for start in range(0, len(order) - 15, 16):
            kind = args.views if args.views != "both" else ("halves", "tail")[start // 16 % 2]
            pairs = [views(convs[i], kind) for i in order[start:start + 16]]
            x = torch.tensor([a for a, _ in pairs] + [b for _, b in pairs])
            special = (x == cls) | (x == sep)
            chosen = (torch.rand(x.shape) < 0.15) & ~special
            labels = x.masked_fill(~chosen, -100)
            r = torch.rand(x.shape)
            x = x.masked_fill(chosen & (r < 0.8), mask_id)
            swap = chosen & (r >= 0.8) & (r < 0.9)
            x[swap] = torch.randint(5, vocab, (int(swap.sum()),))
            out = model(input_ids=x, labels=labels, output_hidden_states=True)
            z = F.normalize(out.hidden_states[-1][:, 0], dim=-1)
            n = len(pairs)
            sim = z[:n] @ z[n:].T / 0.05
            target = torch.arange(n)
            nce = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
            loss = out.loss + nce
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            sums[0] += out.loss.item()
            sums[1] += nce.item()
            sums[2] += (sim.argmax(1) == target).float().mean().item()
            sums[3] += 1
        k = sums[3]
        print(f"epoch {epoch}: masked LM {sums[0] / k:.3f}, InfoNCE {sums[1] / k:.3f}, "
              f"view retrieval {sums[2] / k:.3f}", flush=True)
    shutil.copytree(args.model, args.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_MANIFEST.json", "*.jsonl", "tensorboard"))
    model.save_pretrained(args.out, safe_serialization=True)


if __name__ == "__main__":
    main()
