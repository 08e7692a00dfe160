"""Reference outputs of torch.nn.TransformerEncoderLayer for the adaptive-layer parity test.

  adaptive_ref.py WEIGHTS.safetensors INPUTS.safetensors HEADS FFN OUT.safetensors

WEIGHTS holds the layer's parameters under `adaptive.`; INPUTS holds x [B, T, D] and mask
[B, T] (1 token, 0 padding). Writes `masked` (src_key_padding_mask from the mask) and
`unmasked` (no mask, the original's behaviour).
"""
import sys

import torch
from safetensors.torch import load_file, save_file

weights_path, inputs_path, heads, ffn, out = sys.argv[1:6]
weights = {k.removeprefix("adaptive."): v for k, v in load_file(weights_path).items() if k.startswith("adaptive.")}
inputs = load_file(inputs_path)
d_model = inputs["x"].shape[-1]
layer = torch.nn.TransformerEncoderLayer(d_model, int(heads), int(ffn), dropout=0.1, activation="relu",
                                         layer_norm_eps=1e-5, batch_first=True, norm_first=False)
layer.load_state_dict(weights, strict=True)
layer.eval()
with torch.no_grad():
    masked = layer(inputs["x"], src_key_padding_mask=inputs["mask"] == 0)
    unmasked = layer(inputs["x"])
save_file({"masked": masked.contiguous(), "unmasked": unmasked.contiguous()}, out)
