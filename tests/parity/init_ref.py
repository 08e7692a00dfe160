"""Statistics of freshly initialised tensors made by torch itself, for the init test.

  init_ref.py SPEC.json OUT.json

SPEC: {"reps": R, "hidden": H, "classes": K, "heads": A, "ffn": F, "encoders": {"roberta":
config.json fields, "bert": ...}}. Over R seeds, pools the values of each tensor of
  - `classifiers.status.*`: nn.Linear(H, K), and `pooler.dense.*`: nn.Linear(H, H) (a fresh
    pooler),
  - `adaptive.*`: nn.TransformerEncoderLayer(H, A, F, batch_first=True),
  - `<family>/…`: transformers' RobertaModel / BertModel made from the config (a scratch
    encoder, `_init_weights`),
and writes per name the value count, mean, standard deviation, largest magnitude, and for
embeddings with a padding index the largest magnitude of that row.
"""
import json
import sys

import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

spec = json.load(open(sys.argv[1]))
H, K = spec["hidden"], spec["classes"]
pooled = {}


def add(name, tensor, pad_row=None):
    entry = pooled.setdefault(name, {"values": [], "pad_row": 0.0})
    entry["values"].append(tensor.detach().reshape(-1).double())
    if pad_row is not None:
        entry["pad_row"] = max(entry["pad_row"], tensor[pad_row].abs().max().item())


for rep in range(spec["reps"]):
    torch.manual_seed(rep)
    for name, p in torch.nn.Linear(H, K).named_parameters():
        add(f"classifiers.status.{name}", p)
    for name, p in torch.nn.Linear(H, H).named_parameters():
        add(f"pooler.dense.{name}", p)
    layer = torch.nn.TransformerEncoderLayer(H, spec["heads"], spec["ffn"], batch_first=True)
    for name, p in layer.named_parameters():
        add(f"adaptive.{name}", p)
    for family, fields in spec["encoders"].items():
        config = (RobertaConfig if family == "roberta" else BertConfig)(**fields)
        model = (RobertaModel if family == "roberta" else BertModel)(config)
        pad = config.pad_token_id
        for name, p in model.named_parameters():
            padded = name == "embeddings.word_embeddings.weight" or (
                family == "roberta" and name == "embeddings.position_embeddings.weight")
            add(f"{family}/{name}", p, pad if padded else None)

out = {}
for name, entry in pooled.items():
    v = torch.cat(entry["values"])
    out[name] = {"n": v.numel(), "mean": v.mean().item(), "std": v.std(unbiased=False).item(),
                 "absmax": v.abs().max().item(), "pad_row": entry["pad_row"]}
json.dump(out, open(sys.argv[2], "w"))
