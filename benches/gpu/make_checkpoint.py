"""Writes a llama checkpoint with random bf16 weights in Hugging Face's layout
(safetensors + config.json) beside SmolLM2's tokenizer files, on the GPU.

Shapes: `smollm2` (SmolLM2-135M) and `llama8b` (Llama-3.1-8B's layers with
SmolLM2's 49,152-token vocabulary). The spread is chosen so logits are peaked
(std about 4 over the vocabulary, so top-1/top-2 margins are mostly well above
bf16 noise) instead of the near-uniform output of the default init: embeddings
and the output head have std 4/sqrt(hidden); every projection 1/sqrt(fan_in).

    python3 make_checkpoint.py --shape llama8b --tokenizer TOKDIR --out DIR
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB = 49152
SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                    tie_word_embeddings=True),
    "llama8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                    tie_word_embeddings=False),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    shape = SHAPES[args.shape]
    h, f = shape["hidden_size"], shape["intermediate_size"]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    d = h // heads
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=VOCAB,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, hidden_act="silu",
                  bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", **shape)

    gen = torch.Generator(device="cuda").manual_seed(args.seed)

    def randn(*dims, std):
        t = torch.randn(*dims, generator=gen, device="cuda", dtype=torch.float32) * std
        return t.to(torch.bfloat16).cpu()

    def norm():
        return (1.0 + 0.05 * torch.randn(h, generator=gen, device="cuda")).to(torch.bfloat16).cpu()

    head_std = 4.0 / math.sqrt(h)
    tensors = {"model.embed_tokens.weight": randn(VOCAB, h, std=head_std), "model.norm.weight": norm()}
    if not shape["tie_word_embeddings"]:
        tensors["lm_head.weight"] = randn(VOCAB, h, std=head_std)
    for layer in range(shape["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        tensors[f"{p}.input_layernorm.weight"] = norm()
        tensors[f"{p}.post_attention_layernorm.weight"] = norm()
        tensors[f"{p}.self_attn.q_proj.weight"] = randn(heads * d, h, std=1 / math.sqrt(h))
        tensors[f"{p}.self_attn.k_proj.weight"] = randn(kv_heads * d, h, std=1 / math.sqrt(h))
        tensors[f"{p}.self_attn.v_proj.weight"] = randn(kv_heads * d, h, std=1 / math.sqrt(h))
        tensors[f"{p}.self_attn.o_proj.weight"] = randn(h, heads * d, std=1 / math.sqrt(heads * d))
        tensors[f"{p}.mlp.gate_proj.weight"] = randn(f, h, std=1 / math.sqrt(h))
        tensors[f"{p}.mlp.up_proj.weight"] = randn(f, h, std=1 / math.sqrt(h))
        tensors[f"{p}.mlp.down_proj.weight"] = randn(h, f, std=1 / math.sqrt(f))

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    (args.out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.tokenizer / name, args.out / name)
    params = sum(t.numel() for t in tensors.values())
    print(json.dumps({"shape": args.shape, "params": params, "out": str(args.out)}))


if __name__ == "__main__":
    main()
