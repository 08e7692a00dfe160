"""Reference parameters after torch.optim.AdamW steps, for the optimizer parity test.

  adamw_ref.py INPUTS.safetensors OUT.safetensors

INPUTS: a, b (initial parameters), grad_a_<k>, grad_b_<k> (gradients of step k), factors
(learning-rate factor per step). Group 1 = a (lr 1e-2, weight decay 0.1), group 2 = b
(lr 5e-3, no weight decay); betas (0.9, 0.999), eps 1e-8. Writes a and b after all steps.
"""
import sys

import torch
from safetensors.torch import load_file, save_file

inputs = load_file(sys.argv[1])
a = torch.nn.Parameter(inputs["a"].clone())
b = torch.nn.Parameter(inputs["b"].clone())
opt = torch.optim.AdamW([{"params": [a], "lr": 1e-2, "weight_decay": 0.1},
                         {"params": [b], "lr": 5e-3, "weight_decay": 0.0}], betas=(0.9, 0.999), eps=1e-8)
base = [g["lr"] for g in opt.param_groups]
for k, factor in enumerate(inputs["factors"].tolist()):
    for group, lr in zip(opt.param_groups, base):
        group["lr"] = lr * factor
    a.grad = inputs[f"grad_a_{k}"].clone()
    b.grad = inputs[f"grad_b_{k}"].clone()
    opt.step()
save_file({"a": a.detach().contiguous(), "b": b.detach().contiguous()}, sys.argv[2])
