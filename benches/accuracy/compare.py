"""Compares `inflight score` first-position logits (written by run.sh) and llama.cpp's
with transformers' float32 logits on the dequantized weights.

Two errors per prompt, over transformers' top-5 tokens: the mean absolute logit error,
and the mean absolute error of the gaps between the top token's logit and the other
four (what decides sampling; insensitive to a shift of all logits). llama.cpp's file
holds only its own top 5, so its errors are over the tokens both top-5 lists hold.
"""

import json
import pathlib
import struct
import sys


def errors(ref_top5, logit_of):
    """Mean |logit error| and mean |gap error| over the reference's top 5 (tokens
    `logit_of` knows)."""
    top_id, top_logit = ref_top5[0]["id"], ref_top5[0]["logit"]
    abs_err, gap_err = [], []
    for t in ref_top5:
        ours = logit_of(t["id"])
        if ours is None:
            continue
        abs_err.append(abs(ours - t["logit"]))
        ours_top = logit_of(top_id)
        if t["id"] != top_id and ours_top is not None:
            gap_err.append(abs((ours_top - ours) - (top_logit - t["logit"])))
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    return mean(abs_err), mean(gap_err)


def main():
    ref = json.load(open(sys.argv[1]))
    out = pathlib.Path(sys.argv[2])
    prompts = ref["prompts"]
    rows = []
    for meta in sorted(out.glob("*-kv-*.json")):
        run = meta.stem
        shape = json.load(open(meta))["shape"]
        vocab = shape[2]
        raw = (out / f"{run}.f32").read_bytes()
        logits = [struct.unpack_from(f"<{vocab}f", raw, 4 * vocab * i) for i in range(shape[0])]
        per = [errors(p["transformers_f32"]["top5_first"], lambda i, l=l: l[i]) for p, l in zip(prompts, logits)]
        agree = sum(
            max(range(vocab), key=l.__getitem__) == p["transformers_f32"]["top5_first"][0]["id"]
            for p, l in zip(prompts, logits)
        )
        france = (out / f"{run}.france.txt").read_text().strip().replace("\n", " ")
        rows.append((f"inflight {run}", per, agree, france))
    llama = []
    for p in prompts:
        theirs = {t["id"]: t["logit"] for t in p["llamacpp"]["top5_first"]}
        llama.append(errors(p["transformers_f32"]["top5_first"], theirs.get))
    agree = sum(p["llamacpp"]["top5_first"][0]["id"] == p["transformers_f32"]["top5_first"][0]["id"] for p in prompts)
    rows.append(("llama.cpp (reference file)", llama, agree, "(not in the reference file)"))

    print(f"First-position logits of the {len(prompts)} reference prompts against transformers' f32 on the")
    print("dequantized weights (top-5 tokens; gap = top-1 logit minus the token's).\n")
    print("| run | mean abs logit error | mean abs gap error | max abs gap error | top-1 agrees | France answer |")
    print("|---|---|---|---|---|---|")
    for name, per, agree, france in rows:
        absm = sum(a for a, _ in per) / len(per)
        gaps = [g for _, g in per]
        print(f"| {name} | {absm:.4f} | {sum(gaps) / len(gaps):.4f} | {max(gaps):.4f} | {agree}/{len(prompts)} | {france[:60]} |")


if __name__ == "__main__":
    main()
