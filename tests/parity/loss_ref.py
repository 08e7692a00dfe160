"""Reference losses and gradients from torch.nn.functional, for the SPEC §4 loss parity test.

  loss_ref.py INPUTS.safetensors OUT.safetensors

INPUTS: logits_<name> [batch, classes] and labels_<name> [batch] for each case. For each
case, the per-batch class weights w_c = 1 - count_c / n (0 for absent classes) weigh
F.cross_entropy (more than 2 classes) or F.binary_cross_entropy_with_logits on one-hot
targets (2 classes); OUT gets loss_<name>, grad_<name> (d loss / d logits) and
val_<name> (unweighted cross-entropy).
"""
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

inputs = load_file(sys.argv[1])
out = {}
for key in inputs:
    if not key.startswith("logits_"):
        continue
    name = key[len("logits_"):]
    logits = inputs[key].clone().requires_grad_(True)
    labels = inputs[f"labels_{name}"]
    classes = logits.shape[1]
    counts = torch.bincount(labels, minlength=classes).float()
    weights = torch.where(counts > 0, 1 - counts / len(labels), torch.zeros_like(counts))
    if classes == 2:
        loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 2).float(), weight=weights)
    else:
        loss = F.cross_entropy(logits, labels, weight=weights)
    loss.backward()
    out[f"loss_{name}"] = loss.detach().reshape(1)
    out[f"grad_{name}"] = logits.grad.contiguous()
    out[f"val_{name}"] = F.cross_entropy(logits.detach(), labels).reshape(1)
save_file(out, sys.argv[2])
