"""The prefill and decode graphs (`inflight_neuron/graphs.py`) on the CPU against
transformers' LlamaForCausalLM in f32 on the same weights, and greedy decoding
through them against the reference tokens. Run by `neuron/test-graphs.sh`."""

import torch

from inflight_neuron import checkpoint as ck
from inflight_neuron import manifest as mf
from inflight_neuron.graphs import LlamaGraph

# Both sides compute in f32 from the same weights; what is left is summation
# order (matmul blocking, softmax over a padded context): measured 4.5e-5 on
# the default model (printed with -s), whose logits span tens of units.
LOGIT_ATOL = 5e-4
# Greedy tokens must agree wherever transformers' own top-1/top-2 margin is
# above this (below it, f32 summation order can legitimately flip the argmax).
NEAR_TIE = 1e-3


def empty_states(config, slots, max_context):
    shape = (slots, config["num_key_value_heads"], max_context, config["head_dim"])
    return [torch.zeros(shape) for _ in range(2 * config["num_hidden_layers"])]


def run(graph, weights, ids, positions, slots, states):
    args = [torch.tensor(ids, dtype=torch.int32), torch.tensor(positions, dtype=torch.int32)]
    args.append(torch.tensor(slots, dtype=torch.int32))
    out = graph(*args, *states, *(weights[n] for n in graph.weight_names))
    return out[0], list(out[1:])


def padded(tokens, start, seq_len, left=False):
    pad = seq_len - len(tokens)
    ids, pos = list(tokens), list(range(start, start + len(tokens)))
    if left:
        return [0] * pad + ids, [-1] * pad + pos
    return ids + [0] * pad, pos + [-1] * pad


def hf_last_logits(hf_model, tokens):
    return hf_model(torch.tensor([tokens])).logits[0, -1]


def test_prefill_then_decode_match_transformers(checkpoint, torch_weights, hf_model, reference):
    cfg = checkpoint.config
    graph = LlamaGraph(cfg, ck.weight_names(cfg))
    slots, max_context, seq_len = 4, 96, 64
    prompts = [reference["prompts"][1]["prompt_ids"], reference["prompts"][3]["prompt_ids"]]  # 13, 42 tokens
    where = [3, 1]  # non-adjacent slots, out of order
    rows = [padded(prompts[0], 0, seq_len), padded(prompts[1], 0, seq_len, left=True)]
    states = empty_states(cfg, slots, max_context)
    logits, states = run(graph, torch_weights, [r[0] for r in rows], [r[1] for r in rows], where, states)
    worst = 0.0
    seqs = [list(p) for p in prompts]
    for i, seq in enumerate(seqs):
        diff = (logits[i] - hf_last_logits(hf_model, seq)).abs().max().item()
        worst = max(worst, diff)
        assert diff < LOGIT_ATOL, f"prefill row {i}: max |Δlogit| {diff}"
    # Untouched slots stay zero; the prompts' cells hold K/V.
    assert all(s[[0, 2]].abs().max() == 0 for s in states)
    assert states[0][3, :, : len(prompts[0])].abs().max() > 0

    # Decode in a batch of 4: the two sequences in rows 2 and 0, rows 1 and 3 unused.
    for step in range(4):
        for seq, lg in zip(seqs, logits[: 2] if step == 0 else [logits[2], logits[0]]):
            seq.append(int(lg.argmax()))
        ids = [[seqs[1][-1]], [0], [seqs[0][-1]], [0]]
        pos = [[len(seqs[1]) - 1], [-1], [len(seqs[0]) - 1], [-1]]
        logits, states = run(graph, torch_weights, ids, pos, [where[1], -1, where[0], -1], states)
        assert logits[[1, 3]].abs().max() == 0, "unused rows return zeros"
        for row, seq in [(2, seqs[0]), (0, seqs[1])]:
            diff = (logits[row] - hf_last_logits(hf_model, seq)).abs().max().item()
            worst = max(worst, diff)
            assert diff < LOGIT_ATOL, f"decode step {step} row {row}: max |Δlogit| {diff}"
    print(f"\nprefill+decode vs transformers f32: max |Δlogit| = {worst:.2e} (tolerance {LOGIT_ATOL})")


def test_greedy_tokens_on_the_reference_prompts(checkpoint, torch_weights, reference):
    """All reference prompts prefilled one by one into their own slots, then
    decoded together, 32 tokens each: transformers' f32 greedy tokens."""
    cfg = checkpoint.config
    graph = LlamaGraph(cfg, ck.weight_names(cfg))
    prompts = reference["prompts"]
    steps = len(prompts[0]["transformers_f32"]["greedy_ids"])
    longest = max(len(p["prompt_ids"]) for p in prompts)
    max_context = longest + steps
    states = empty_states(cfg, len(prompts), max_context)
    seqs, next_tokens = [], []
    for slot, p in enumerate(prompts):
        bucket = 1 << (len(p["prompt_ids"]) - 1).bit_length()
        ids, pos = padded(p["prompt_ids"], 0, bucket)
        logits, states = run(graph, torch_weights, [ids], [pos], [slot], states)
        seqs.append(list(p["prompt_ids"]))
        next_tokens.append(int(logits[0].argmax()))
    generated = [[] for _ in prompts]
    for _ in range(steps):
        for g, seq, t in zip(generated, seqs, next_tokens):
            g.append(t)
            seq.append(t)
        ids = [[s[-1]] for s in seqs]
        pos = [[len(s) - 1] for s in seqs]
        logits, states = run(graph, torch_weights, ids, pos, list(range(len(prompts))), states)
        next_tokens = [int(x) for x in logits.argmax(dim=-1)]
    exact_total = 0
    for p, got in zip(prompts, generated):
        ref = p["transformers_f32"]
        margins = ref["top1_top2_margin"]
        exact = next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(margins))
        exact_total += exact
        assert got[:exact] == ref["greedy_ids"][:exact], f"prompt {p['id']}"
        print(f"\n{p['id']}: {sum(a == b for a, b in zip(got, ref['greedy_ids']))}/{steps} equal, first {exact} required")
    assert exact_total > 0


def test_inf2_manifest_names_tensors_by_position_and_keeps_everything_else(checkpoint):
    """The inf2 manifest is the emulator's with NEFF-style names: same shapes,
    roles, dtypes and weights; aliases follow the rename."""
    cfg = checkpoint.config
    b = mf.Buckets(prefill=(128,), decode=(1, 4), prefill_batch=1, kv_slots=4, max_context=256)
    for shape in mf.graph_shapes(b):
        inputs, outputs = mf.graph_tensors(cfg, shape, b, "bfloat16")
        pin, pout = mf.positional_names(inputs, outputs)
        assert [t["name"] for t in pin] == [f"input{i}" for i in range(len(inputs))]
        assert [t["name"] for t in pout] == [f"output{i}" for i in range(len(outputs))]
        strip = lambda ts: [{k: v for k, v in t.items() if k not in ("name", "aliases")} for t in ts]  # noqa: E731
        assert strip(pin) == strip(inputs) and strip(pout) == strip(outputs)
        by_new = {new["name"]: old["name"] for new, old in zip(pin, inputs)}
        for new, old in zip(pout, outputs):
            assert ("aliases" in new) == ("aliases" in old)
            if "aliases" in new:
                assert by_new[new["aliases"]] == old["aliases"]
