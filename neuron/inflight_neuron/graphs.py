"""The prefill and decode graphs of a llama model in plain PyTorch, taking exactly
the manifest's tensors (`manifest.graph_tensors`) in its order:

    token_ids, positions   [batch, seq_len] int32; padding at position -1
    slot_ids               [batch] int32; -1 for an unused row
    kv.{l}.k, kv.{l}.v     [slots, kv_heads, max_context, head_dim] per layer
    weights                by Hugging Face name, sorted
  -> logits                [batch, vocab] f32 at each row's last real position
                           (zeros for unused rows)
     kv.{l}.k/v.out        the states with this step's K and V written

Prefill and decode are the same function at different static shapes: a row's
tokens sit at consecutive positions in its slot; every query sees its slot's
keys up to its own position. Nothing depends on the data's values in Python, so
it traces to one static graph per bucket (`inf2.py`).
"""

import torch


def rms_norm(x, weight, eps):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def rope_tables(positions, head_dim, theta):
    """cos and sin [batch, seq_len, head_dim] in f32, in the halves layout
    (dimension i pairs with i + head_dim/2), as Hugging Face's llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x [batch, heads, seq_len, head_dim]; cos/sin [batch, seq_len, head_dim]."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def write_state(state, new, at, slot_onehot, written):
    """The state with this step's K or V written, as a dense masked update.

    new [batch, kv_heads, seq_len, head_dim]; at [batch, seq_len, max_context]
    one-hot of where each token goes (all zero for padding); slot_onehot
    [batch, slots]; written [slots, max_context]. One-hot contractions copy values
    exactly (each target cell receives one token, every other term is 0 × value).
    Why not a scatter: padding must write nowhere, and torch on the CPU rejects the
    out-of-range indices XLA would drop; a dense update needs no such index.
    """
    per_row = torch.einsum("bst,bhsd->bhtd", at, new)
    per_slot = torch.einsum("bn,bhtd->nhtd", slot_onehot, per_row)
    return torch.where(written[:, None, :, None], per_slot, state)


def llama_step(config: dict, token_ids, positions, slot_ids, states: list, weights: dict):
    """One execution of a prefill or decode graph; returns (logits, new_states)."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim, eps = config["head_dim"], config["rms_norm_eps"]
    batch, seq_len = token_ids.shape
    slots, state_heads, max_context, _ = states[0].shape
    if state_heads != kv_heads:
        raise ValueError("tensor parallel shards of the KV state are not implemented")
    embed = weights["model.embed_tokens.weight"]
    dtype = embed.dtype

    real = positions >= 0  # [B, S]
    used_row = slot_ids >= 0  # [B]
    pos = positions.clamp(min=0).long()
    context = torch.arange(max_context)
    at = ((pos[..., None] == context) & (real & used_row[:, None])[..., None]).to(dtype)  # [B, S, T]
    slot_onehot = (slot_ids.long()[:, None] == torch.arange(slots)).to(dtype)  # [B, slots]
    written = torch.einsum("bn,bt->nt", slot_onehot, at.amax(dim=1)) > 0  # [slots, T]
    visible = (context <= pos[..., None]) & real[..., None]  # [B, S, T]
    row_slot = slot_ids.clamp(min=0).long()
    cos, sin = rope_tables(pos, head_dim, config["rope_theta"])

    x = embed[token_ids.clamp(min=0).long()]  # [B, S, hidden]
    new_states = []
    for layer in range(config["num_hidden_layers"]):
        w = lambda part: weights[f"model.layers.{layer}.{part}"]  # noqa: E731
        h = rms_norm(x, w("input_layernorm.weight"), eps)
        q = (h @ w("self_attn.q_proj.weight").T).view(batch, seq_len, heads, head_dim).transpose(1, 2)
        k = (h @ w("self_attn.k_proj.weight").T).view(batch, seq_len, kv_heads, head_dim).transpose(1, 2)
        v = (h @ w("self_attn.v_proj.weight").T).view(batch, seq_len, kv_heads, head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_state = write_state(states[2 * layer], k, at, slot_onehot, written)
        v_state = write_state(states[2 * layer + 1], v, at, slot_onehot, written)
        new_states += [k_state, v_state]

        # Each row reads its own slot; query heads share KV heads in groups.
        keys = k_state.index_select(0, row_slot).repeat_interleave(heads // kv_heads, dim=1)
        values = v_state.index_select(0, row_slot).repeat_interleave(heads // kv_heads, dim=1)
        scores = (q @ keys.transpose(-1, -2)).float() * head_dim**-0.5  # [B, H, S, T]
        scores = scores.masked_fill(~visible[:, None], torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(dtype)
        attn = (probs @ values).transpose(1, 2).reshape(batch, seq_len, heads * head_dim)
        x = x + attn @ w("self_attn.o_proj.weight").T

        h = rms_norm(x, w("post_attention_layernorm.weight"), eps)
        gate = torch.nn.functional.silu(h @ w("mlp.gate_proj.weight").T)
        x = x + (gate * (h @ w("mlp.up_proj.weight").T)) @ w("mlp.down_proj.weight").T

    # A row's last real token is the one at its highest position.
    last = positions.argmax(dim=-1)
    x_last = x[torch.arange(batch), last]
    x_last = rms_norm(x_last, weights["model.norm.weight"], eps)
    logits = (x_last @ weights["lm_head.weight"].T).float()
    has_tokens = used_row & real.any(dim=-1)
    logits = torch.where(has_tokens[:, None], logits, torch.zeros_like(logits))
    return logits, new_states


class LlamaGraph(torch.nn.Module):
    """`llama_step` over the flat tensor list of the manifest (what tracing sees):
    forward(token_ids, positions, slot_ids, *states, *weights) ->
    (logits, *new_states)."""

    def __init__(self, config: dict, weight_names: list):
        super().__init__()
        self.config = config
        self.weight_names = list(weight_names)
        self.n_states = 2 * config["num_hidden_layers"]

    def forward(self, token_ids, positions, slot_ids, *rest):
        states = list(rest[: self.n_states])
        weights = dict(zip(self.weight_names, rest[self.n_states :]))
        logits, new_states = llama_step(self.config, token_ids, positions, slot_ids, states, weights)
        return (logits, *new_states)
