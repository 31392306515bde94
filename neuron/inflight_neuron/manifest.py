"""The graphs' tensors and the artifact manifest (v1, specified in
`neuron/README.md`, read by `src/backend/neuron/manifest.rs`).

One writer for both targets: the tensors are listed once, in the order the graph
functions take and return them (`graphs.py`), under descriptive names; the
emulator keeps those names, while an inf2 NEFF names its tensors by position
(`input0…`, `output0…`), so `positional_names` renames them there.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import weight_names, weight_shape

FORMAT = "inflight-neuron-artifacts"
VERSION = 1
# The degrees Inf2 runs; the Rust reader accepts these.
TP_DEGREES = (1, 2, 4, 8, 12, 24)


@dataclass(frozen=True)
class Buckets:
    prefill: tuple  # prefill sequence lengths
    decode: tuple  # decode batch sizes
    prefill_batch: int
    kv_slots: int
    max_context: int


@dataclass(frozen=True)
class GraphShape:
    kind: str  # "prefill" or "decode"
    batch: int
    seq_len: int

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.batch}x{self.seq_len}"


def graph_shapes(b: Buckets) -> list:
    return [GraphShape("prefill", b.prefill_batch, n) for n in b.prefill] + [
        GraphShape("decode", n, 1) for n in b.decode
    ]


def check_buckets(config: dict, b: Buckets) -> None:
    """The rules the Rust reader enforces, said before any work is done."""
    if not b.prefill or not b.decode:
        raise ValueError("at least one prefill and one decode bucket are needed")
    if min((*b.prefill, *b.decode, b.prefill_batch, b.kv_slots, b.max_context)) < 1:
        raise ValueError("bucket sizes, slots and max context must be at least 1")
    if len(set(b.prefill)) != len(b.prefill) or len(set(b.decode)) != len(b.decode):
        raise ValueError("a bucket is listed twice")
    if max(b.prefill) > b.max_context:
        raise ValueError(f"prefill bucket {max(b.prefill)} exceeds max context {b.max_context}")
    if max(b.decode) > b.kv_slots:
        raise ValueError(f"decode batch {max(b.decode)} exceeds the {b.kv_slots} KV slots")
    if b.max_context > config["max_position_embeddings"]:
        raise ValueError(f"max context {b.max_context} beyond the model's {config['max_position_embeddings']}")


def _tensor(name, dtype, shape, role, **extra):
    return {"name": name, "dtype": dtype, "shape": list(shape), "role": role, **extra}


def graph_tensors(config: dict, shape: GraphShape, b: Buckets, dtype: str, tp: int = 1):
    """(inputs, outputs) of one graph, in the graph function's argument and result
    order: ids, positions, slot ids, each layer's K then V state, the weights
    (sorted by name); logits, then each state again as its aliased output."""
    kv_heads = config["num_key_value_heads"] // tp
    state = [b.kv_slots, kv_heads, b.max_context, config["head_dim"]]
    rows = [shape.batch, shape.seq_len]
    inputs = [
        _tensor("token_ids", "int32", rows, "token_ids"),
        _tensor("positions", "int32", rows, "positions"),
        _tensor("slot_ids", "int32", [shape.batch], "slot_ids"),
    ]
    outputs = [_tensor("logits", "float32", [shape.batch, config["vocab_size"]], "logits")]
    for layer in range(config["num_hidden_layers"]):
        for which in ("k", "v"):
            name = f"kv.{layer}.{which}"
            inputs.append(_tensor(name, dtype, state, "kv_state"))
            outputs.append(_tensor(f"{name}.out", dtype, state, "kv_state", aliases=name))
    for w in weight_names(config):
        inputs.append(_tensor(w, dtype, weight_shape(config, w), "weight", weight=w))
    return inputs, outputs


def positional_names(inputs: list, outputs: list):
    """The same tensors named as a NEFF compiled from a traced function names them:
    `input{i}` by argument position, `output{j}` by result position (NxD's
    convention; see NEURON.md). Aliases follow the rename."""
    renamed = {t["name"]: f"input{i}" for i, t in enumerate(inputs)}
    new_inputs = [{**t, "name": renamed[t["name"]]} for t in inputs]
    new_outputs = []
    for j, t in enumerate(outputs):
        t = {**t, "name": f"output{j}"}
        if "aliases" in t:
            t["aliases"] = renamed[t["aliases"]]
        new_outputs.append(t)
    return new_inputs, new_outputs


def graph_entry(shape: GraphShape, inputs: list, outputs: list) -> dict:
    return {
        "name": shape.name,
        "kind": shape.kind,
        "neff": f"{shape.name}.neff",
        "batch": shape.batch,
        "seq_len": shape.seq_len,
        "inputs": inputs,
        "outputs": outputs,
    }


def manifest(b: Buckets, graphs: list, tp: int = 1) -> dict:
    if tp not in TP_DEGREES:
        raise ValueError(f"tensor parallel {tp} is not a degree Inf2 runs {TP_DEGREES}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": "config.json",
        "tokenizer": "tokenizer.json",
        "weights": "model.safetensors",
        "tensor_parallel": tp,
        "max_context": b.max_context,
        "kv_slots": b.kv_slots,
        "graphs": graphs,
    }


def write(out: Path, m: dict) -> None:
    (Path(out) / "manifest.json").write_text(json.dumps(m, indent=2))
