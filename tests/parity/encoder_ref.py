"""Reference hidden states from Hugging Face transformers, for the encoder parity tests.

  encoder_ref.py minilm    MODEL_DIR SENTENCES.json OUT.safetensors
  encoder_ref.py camembert MODEL_DIR SENTENCES.json OUT.safetensors
      (MODEL_DIR holds a tokenizer.json; a random CamemBERT is created and saved there)
  encoder_ref.py load      MODEL_DIR INPUTS.safetensors OUT.safetensors
      (loads a model directory written by taft; fails on missing keys)

Writes input_ids, attention_mask and last_hidden_state (float32) to OUT.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, CamembertConfig, CamembertModel, PreTrainedTokenizerFast

torch.manual_seed(0)
mode, model_dir, src, out = sys.argv[1:5]

if mode == "load":
    model, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"], f"missing keys: {info['missing_keys']}"
    assert not info["mismatched_keys"], f"mismatched keys: {info['mismatched_keys']}"
    batch = load_file(src)
else:
    sentences = json.load(open(src, encoding="utf-8"))
    if mode == "minilm":
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir)
    elif mode == "camembert":
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json", bos_token="<s>",
                                            eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                            mask_token="<mask>", cls_token="<s>", sep_token="</s>")
        config = CamembertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=130,
                                 pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
        model = CamembertModel(config)
        model.save_pretrained(model_dir)
    else:
        sys.exit(f"unknown mode {mode}")
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"].to(torch.int64), "attention_mask": enc["attention_mask"].to(torch.int64)}

model.eval()
with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
save_file({**batch, "hidden": hidden.float().contiguous()}, out)
