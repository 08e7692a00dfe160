"""Reference masked-LM logits from transformers, for the MLM head parity test.

  mlm_ref.py bert|roberta MODEL_DIR OUT.safetensors [HIDDEN_ACT]

Creates a small random BertForMaskedLM or RobertaForMaskedLM, saves it to MODEL_DIR, and
writes input_ids, attention_mask and logits for a padded random batch to OUT.
"""
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

family, model_dir, out = sys.argv[1:4]
act = sys.argv[4] if len(sys.argv) > 4 else "gelu"
torch.manual_seed(0)
common = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_act=act)
if family == "bert":
    model = BertForMaskedLM(BertConfig(**common, max_position_embeddings=64))
    pad = 0
else:
    model = RobertaForMaskedLM(RobertaConfig(**common, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1))
    pad = 1
model.save_pretrained(model_dir)
ids = torch.randint(5, 120, (3, 10))
mask = torch.ones(3, 10, dtype=torch.int64)
mask[1, 7:] = 0
mask[2, 4:] = 0
ids[mask == 0] = pad
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=mask).logits
save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()}, out)
