"""The PyTorch anchor: transformers `generate`, bf16, random prompts of 256
tokens, exactly 128 new tokens, greedy. `--mode eager` uses the dynamic cache;
`--mode static` the static cache, with which transformers compiles the decode
step (`torch.compile`); the first call per batch size includes compilation and
is reported apart. Prints one JSON line per batch size.
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["eager", "static"], required=True)
    ap.add_argument("--batch", type=int, action="append", required=True)
    ap.add_argument("--input-tokens", type=int, default=256)
    ap.add_argument("--output-tokens", type=int, default=128)
    args = ap.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).cuda().eval()
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    extra = {"cache_implementation": "static"} if args.mode == "static" else {}
    for b in args.batch:
        ids = torch.randint(3, vocab, (b, args.input_tokens), generator=gen, device="cuda")
        kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=args.output_tokens,
                      min_new_tokens=args.output_tokens, do_sample=False, pad_token_id=0, **extra)
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(ids, **kwargs)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        new = out.shape[1] - args.input_tokens
        print(json.dumps({"model": args.model, "mode": args.mode, "batch": b, "new_tokens": new,
                          "first_call_s": round(times[0], 2), "seconds": round(times[1], 3),
                          "output_tok_s": round(b * new / times[1], 1)}), flush=True)


if __name__ == "__main__":
    main()
