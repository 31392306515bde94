"""A llama checkpoint as the artifact folder stores it: a Hugging Face `config`
(dict) and f32 weights by Hugging Face name, in Hugging Face's layout.

Two sources: a Hugging Face folder (`config.json` and `*.safetensors`) or a GGUF
file. A GGUF's matrices are dequantized with the `gguf` package and its Q/K rows
un-permuted from llama.cpp's interleaved RoPE order back to the halves order the
config implies, as `neuron/emulator/src/artifacts.rs` does.
"""

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CheckpointError(Exception):
    """A checkpoint this pipeline cannot compile; the message says why."""


@dataclass
class Checkpoint:
    config: dict
    weights: dict  # Hugging Face name -> np.float32 array
    source: Path


# Per layer, the Hugging Face names the graphs take; the GGUF names they come from.
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def weight_names(config: dict) -> list:
    """Every weight the graphs take, sorted (the order graphs and manifest use)."""
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for layer in range(config["num_hidden_layers"]):
        names += [f"model.layers.{layer}.{part}" for part in LAYER_TENSORS]
    return sorted(names)


def weight_shape(config: dict, name: str) -> list:
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    part = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
    return {
        "model.embed_tokens.weight": [v, h],
        "lm_head.weight": [v, h],
        "model.norm.weight": [h],
        "input_layernorm.weight": [h],
        "post_attention_layernorm.weight": [h],
        "self_attn.q_proj.weight": [q, h],
        "self_attn.k_proj.weight": [kv, h],
        "self_attn.v_proj.weight": [kv, h],
        "self_attn.o_proj.weight": [h, q],
        "mlp.gate_proj.weight": [f, h],
        "mlp.up_proj.weight": [f, h],
        "mlp.down_proj.weight": [h, f],
    }[part]


def f32_value(x) -> float:
    """A float rounded to f32, as inflight's Rust reader holds it (and its Rust
    writer prints it), so both writers' configs are equal."""
    return float(np.float32(x))


def normalized_config(hf: dict) -> dict:
    """The config keys inflight reads (`LlamaConfig::from_hf_json`), with the same
    defaults; refuses what the graphs do not implement."""
    arch_ok = hf.get("model_type") == "llama" or "LlamaForCausalLM" in hf.get("architectures", [])
    if not arch_ok:
        raise CheckpointError(f"not a llama model (model_type {hf.get('model_type')!r})")
    scaling = hf.get("rope_scaling")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        raise CheckpointError(f"rope_scaling {scaling} is not implemented by the Neuron graphs")
    heads = hf["num_attention_heads"]
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "vocab_size": hf["vocab_size"],
        "rms_norm_eps": f32_value(hf.get("rms_norm_eps", 1e-5)),
        "rope_theta": f32_value(hf.get("rope_theta", 10000.0)),
        "max_position_embeddings": hf.get("max_position_embeddings", 4096),
        # lm_head is always stored as its own tensor, so the graphs need not know.
        "tie_word_embeddings": False,
    }
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise CheckpointError("attention heads are not a multiple of KV heads")
    return cfg


def load(path: Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        return _load_hf_dir(path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path)
    raise CheckpointError(f"{path}: neither a Hugging Face folder nor a .gguf file")


def read_config(path: Path) -> dict:
    """Only the config (no weights), e.g. to plan graphs without loading a model."""
    path = Path(path)
    if path.is_dir():
        return normalized_config(json.loads((path / "config.json").read_text()))
    from gguf import GGUFReader

    return _gguf_config(GGUFReader(str(path)))


# --- Hugging Face folders -------------------------------------------------------

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def _read_safetensors(path: Path) -> dict:
    """All tensors of a safetensors file as f32. Read by hand because numpy has no
    bfloat16 (the usual dtype of HF checkpoints): BF16 is widened bitwise."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}, not a float type")
        start, end = info["data_offsets"]
        a = np.frombuffer(raw[base + start : base + end], dtype=dtype)
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float32).reshape(info["shape"])
    return out


def _load_hf_dir(path: Path) -> Checkpoint:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: no config.json")
    hf = json.loads(cfg_path.read_text())
    cfg = normalized_config(hf)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors")
    found = {}
    for f in files:
        found.update(_read_safetensors(f))
    if "lm_head.weight" not in found:
        if not hf.get("tie_word_embeddings", True):
            raise CheckpointError(f"{path}: no lm_head.weight and embeddings are not tied")
        found["lm_head.weight"] = found.get("model.embed_tokens.weight")
    weights = {}
    for name in weight_names(cfg):
        if found.get(name) is None:
            raise CheckpointError(f"{path}: missing weight {name}")
        if list(found[name].shape) != weight_shape(cfg, name):
            raise CheckpointError(f"{path}: {name} has shape {list(found[name].shape)}")
        weights[name] = np.ascontiguousarray(found[name])
    return Checkpoint(cfg, weights, path)


# --- GGUF files ---------------------------------------------------------------


def _field(reader, key, default=None):
    f = reader.get_field(key)
    return default if f is None else f.contents()


def _gguf_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"GGUF architecture {arch!r} is not llama")
    if _field(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise CheckpointError("RoPE scaling is not implemented by the Neuron graphs")
    hidden = _field(reader, "llama.embedding_length")
    heads = _field(reader, "llama.attention.head_count")
    head_dim = _field(reader, "llama.attention.key_length") or _field(reader, "llama.rope.dimension_count")
    vocab = _field(reader, "llama.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    return normalized_config(
        {
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": _field(reader, "llama.feed_forward_length"),
            "num_hidden_layers": _field(reader, "llama.block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": _field(reader, "llama.attention.head_count_kv", heads),
            "head_dim": head_dim or hidden // heads,
            "vocab_size": vocab,
            "rms_norm_eps": _field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": _field(reader, "llama.rope.freq_base", 10000.0),
            "max_position_embeddings": _field(reader, "llama.context_length", 4096),
        }
    )


def unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each Q/K head's rows as interleaved pairs (row 2i, 2i+1 a
    rotation pair); Hugging Face as halves (rows i and i + d/2). Undo it."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, d // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _load_gguf(path: Path) -> Checkpoint:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    cfg = _gguf_config(reader)
    tensors = {t.name: t for t in reader.tensors}

    def dense(name):
        t = tensors.get(name)
        if t is None:
            raise CheckpointError(f"{path}: missing tensor {name}")
        shape = [int(x) for x in reversed(t.shape)]  # GGUF lists dims innermost first
        return np.ascontiguousarray(dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape))

    weights = {
        "model.embed_tokens.weight": dense("token_embd.weight"),
        "model.norm.weight": dense("output_norm.weight"),
    }
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"] if head == "token_embd.weight" else dense(head)
    for layer in range(cfg["num_hidden_layers"]):
        for hf_part, gguf_part in LAYER_TENSORS.items():
            w = dense(f"blk.{layer}.{gguf_part}")
            if hf_part == "self_attn.q_proj.weight":
                w = unpermute_rope_rows(w, cfg["num_attention_heads"])
            elif hf_part == "self_attn.k_proj.weight":
                w = unpermute_rope_rows(w, cfg["num_key_value_heads"])
            weights[f"model.layers.{layer}.{hf_part}"] = np.ascontiguousarray(w)
    for name, w in weights.items():
        if list(w.shape) != weight_shape(cfg, name):
            raise CheckpointError(f"{path}: {name} has shape {list(w.shape)}, config implies {weight_shape(cfg, name)}")
    return Checkpoint(cfg, weights, path)
