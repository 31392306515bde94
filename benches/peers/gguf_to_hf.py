"""Turns a GGUF model into a Hugging Face folder that vLLM can serve: the same
weights (dequantized), config and tokenizer.

transformers reads GGUF files (`gguf_file=`) but refuses to save a model while
the GGUF quantizer is attached, so the weights are copied into a fresh model made
from the same config, and that one is saved.

usage: python gguf_to_hf.py MODEL.gguf OUT_DIR
"""

import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(gguf_path, out_dir):
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may legitimately be absent from one side; anything else is a
    # conversion error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        sys.exit(f"weights do not match: missing {missing}, unexpected {unexpected}")
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
