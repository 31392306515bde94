"""Writes a Hugging Face tokenizer folder (tokenizer.json) from a GGUF model's
byte-level BPE vocabulary, without PyTorch, for tools such as aiperf that count
tokens with a Hugging Face tokenizer.

It covers GPT-2-style byte-level BPE (SmolLM2, Llama 3, Qwen); the `smollm`
pre-tokenizer splits digits one by one, as llama.cpp does for that model.

usage: python gguf_tokenizer.py MODEL.gguf OUT_DIR
"""

import json
import os
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def strings(reader, key):
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def scalar(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.parts[field.data[0]][0]


def main(gguf_path, out_dir):
    reader = GGUFReader(gguf_path)
    if bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() != "gpt2":
        sys.exit("only byte-level BPE (tokenizer.ggml.model = gpt2) is supported")
    tokens = strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings(reader, "tokenizer.ggml.merges")]
    pre = reader.fields.get("tokenizer.ggml.pre")
    pre = bytes(pre.parts[-1]).decode() if pre else ""
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = reader.fields.get("tokenizer.ggml.token_type")
    specials = [tokens[i] for i, k in enumerate(types.data) if types.parts[k][0] == 3] if types else []
    tok.add_special_tokens(specials)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, key in [("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")]:
        idx = scalar(reader, key)
        if idx is not None:
            config[name] = tokens[int(idx)]
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    print(f"wrote {out_dir} ({len(tokens)} tokens, {len(merges)} merges, pre-tokenizer {pre or 'default'})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
