"""Accuracy deep in a context: 16 teacher-forced positions after each of four long
prompts (600 to 2,000 tokens, the reference prompts' tokens cycled), every run's logits
against the same model with f32 activations, an f32 KV cache and f32 attention.

    python3 benches/accuracy/long_context.py OUT_DIR      (needs `cargo build --release`)

The first-position figures of `run.sh` cannot show what rounds inside attention: a few
dozen positions give it little to add up. Prints a markdown table.
"""

import array
import json
import os
import subprocess
import sys

BIN = os.environ.get("BIN", "target/release/inflight")
MODEL = os.environ.get("MODEL", "models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
REF = os.path.join(os.environ.get("INFLIGHT_REFERENCE_DIR", "../shared/reference"), "smollm2-135m-q4_1.json")
RUNS = [
    ("int8 activations, f16 KV, f32 attention", ["--attention-precision", "f32"]),
    ("int8 activations, f16 KV, bf16 attention", ["--attention-precision", "bf16"]),
    ("f32 activations, f16 KV, f32 attention", ["--activations", "f32", "--attention-precision", "f32"]),
    ("f32 activations, f16 KV, bf16 attention", ["--activations", "f32", "--attention-precision", "bf16"]),
]


def score(out, name, inp, *flags):
    """Runs `inflight score`; returns its metadata and logits as one flat array."""
    cmd = [BIN, "score", "--max-batch-tokens", "4096", "--model", MODEL, "--input", inp]
    subprocess.run(cmd + ["--output", f"{out}/{name}", *flags], check=True, env=dict(os.environ, INFLIGHT_LOG="warn"))
    meta = json.load(open(f"{out}/{name}.json"))
    logits = array.array("f")
    logits.frombytes(open(f"{out}/{name}.f32", "rb").read())
    return meta, logits


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    ref = json.load(open(REF))
    ids = [t for p in ref["prompts"] for t in p["prompt_ids"]]
    seqs = [{"prompt": (ids * 100)[s : s + n]} for s, n in [(0, 1100), (37, 1500), (101, 2000), (5, 600)]]
    json.dump({"sequences": seqs}, open(f"{out}/prompts.json", "w"))
    meta, base = score(out, "reference", f"{out}/prompts.json", "--greedy", "16", "--activations", "f32",
                       "--kv-cache-dtype", "f32", "--attention-precision", "f32")
    vocab = meta["shape"][-1]
    # Every run is teacher-forced on the reference run's greedy continuations.
    inp = {"sequences": [{"prompt": s["prompt"], "continuation": s["continuation"]} for s in meta["sequences"]]}
    json.dump(inp, open(f"{out}/input.json", "w"))
    rows = len(base) // vocab
    top = [max(range(r * vocab, (r + 1) * vocab), key=base.__getitem__) for r in range(rows)]
    top5 = [sorted(range(r * vocab, (r + 1) * vocab), key=base.__getitem__)[-5:] for r in range(rows)]
    print(f"{rows} positions ({len(seqs)} prompts of 600-2,000 tokens, 16 teacher-forced tokens each) against")
    print("f32 activations, f32 KV cache and f32 attention.\n")
    print("| run | mean abs logit error, all tokens | mean abs logit error, reference top 5 | top token agrees |")
    print("|---|---|---|---|")
    for i, (name, flags) in enumerate(RUNS):
        _, got = score(out, f"run{i}", f"{out}/input.json", *flags)
        every = sum(abs(a - b) for a, b in zip(got, base)) / len(base)
        near = sum(abs(got[j] - base[j]) for t in top5 for j in t) / (5 * rows)
        agree = sum(max(range(r * vocab, (r + 1) * vocab), key=got.__getitem__) == top[r] for r in range(rows))
        print(f"| {name} | {every:.4f} | {near:.4f} | {agree}/{rows} |")
        os.remove(f"{out}/run{i}.f32")
    os.remove(f"{out}/reference.f32")


if __name__ == "__main__":
    main()
