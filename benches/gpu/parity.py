"""Teacher-forced parity of inflight backends against transformers on the GPU.

Each `--score NAME=PREFIX` is the output of `inflight score` (PREFIX.json holds
the sequences, PREFIX.f32 the logits `[sequences, steps, vocab]`; row i is the
prediction after the prompt and i continuation tokens). The same sequences run
through transformers in fp32 (the reference) and in bf16 (PyTorch's own bf16
error, the yardstick for a bf16 backend's tolerance).

A bf16 backend passes when its largest |logit difference| from the fp32
reference is within 1.5x transformers-bf16's own (plus 0.05), and its top-1
agrees with the reference wherever the reference's top-1/top-2 margin is at
least 0.1. Prints one JSON object.
"""

import argparse
import json
from pathlib import Path

import numpy as np

MARGIN = 0.1


def load_scores(prefix):
    meta = json.loads(Path(prefix + ".json").read_text())
    logits = np.fromfile(prefix + ".f32", dtype="<f4").reshape(meta["shape"])
    return meta, logits


def reference(model_dir, sequences, steps, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).cuda().eval()
    rows = []
    with torch.no_grad():
        for s in sequences:
            ids = torch.tensor([s["prompt"] + s["continuation"]], device="cuda")
            start = len(s["prompt"]) - 1
            logits = model(ids).logits[0, start:start + steps].float().cpu().numpy()
            rows.append(logits)
    del model
    torch.cuda.empty_cache()
    return np.stack(rows)


def compare(got, ref):
    diff = np.abs(got - ref)
    top2 = np.sort(ref, axis=-1)[..., -2:]
    margin = top2[..., 1] - top2[..., 0]
    same = got.argmax(-1) == ref.argmax(-1)
    clear = margin >= MARGIN
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "top1_agree": float(same.mean()),
        "top1_agree_where_margin_ge_0.1": float(same[clear].mean()) if clear.any() else None,
        "positions_margin_ge_0.1": int(clear.sum()),
        "positions": int(same.size),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--score", action="append", required=True, help="NAME=PREFIX of `inflight score` output")
    ap.add_argument("--check", default="cuda", help="the bf16 backend to judge")
    args = ap.parse_args()

    scores = dict(s.split("=", 1) for s in args.score)
    metas = {name: load_scores(prefix) for name, prefix in scores.items()}
    meta = next(iter(metas.values()))[0]
    sequences, steps = meta["sequences"], meta["shape"][1]
    ref = reference(args.model, sequences, steps, "float32")
    bf16 = reference(args.model, sequences, steps, "bfloat16")
    result = {"model": args.model, "steps": steps, "sequences": len(sequences),
              "logit_std": float(ref.std()), "transformers_bf16": compare(bf16, ref)}
    for name, (m, logits) in metas.items():
        result[name] = compare(logits, ref)
        result[name]["device"] = m["device"]
    if "cpu" in metas and args.check in metas:
        result[f"{args.check}_vs_cpu"] = compare(metas[args.check][1], metas["cpu"][1])
    if args.check in result:
        c, y = result[args.check], result["transformers_bf16"]
        tolerance = 1.5 * y["max_abs"] + 0.05
        agree = c["top1_agree_where_margin_ge_0.1"]
        result["tolerance_max_abs"] = tolerance
        result["pass"] = c["max_abs"] <= tolerance and (agree is None or agree == 1.0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
