"""Stand-in NEFFs for the libnrt emulator (`neuron/emulator`): JSON naming the
graph, its tensors and a `llama` program that the emulator runs on the bound
weights and KV state (`neuron/emulator/src/llama.rs`). The same format
`neuron/emulator/src/artifacts.rs` writes."""

NEFF_FORMAT = "inflight-nrt-emulator-neff"


def _as_neff_tensor(t: dict, usage: str) -> dict:
    # The NEFF knows names, dtypes, shapes and aliases; roles are the manifest's.
    out = {k: v for k, v in t.items() if k not in ("role", "weight")}
    out["usage"] = usage
    return out


def stand_in_neff(entry: dict, config: dict, kv_slots: int, max_context: int) -> dict:
    inputs, outputs = entry["inputs"], entry["outputs"]
    by_role = lambda role: [t for t in inputs + outputs if t["role"] == role]  # noqa: E731
    states = [t["name"] for t in inputs if t["role"] == "kv_state"]
    bind = {
        "token_ids": by_role("token_ids")[0]["name"],
        "positions": by_role("positions")[0]["name"],
        "slot_ids": by_role("slot_ids")[0]["name"],
        "logits": by_role("logits")[0]["name"],
        # Per layer [K, V], in the order graph_tensors lists them.
        "kv": [states[i : i + 2] for i in range(0, len(states), 2)],
        "weights": {t["weight"]: t["name"] for t in by_role("weight")},
    }
    return {
        "format": NEFF_FORMAT,
        "version": 1,
        "graph": entry["name"],
        "tensors": [_as_neff_tensor(t, "input") for t in inputs]
        + [_as_neff_tensor(t, "output") for t in outputs],
        "program": {
            "llama": {
                "kind": entry["kind"],
                "batch": entry["batch"],
                "seq_len": entry["seq_len"],
                "slots": kv_slots,
                "max_context": max_context,
                "config": config,
                "bind": bind,
            }
        },
    }
