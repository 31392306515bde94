#!/usr/bin/env bash
# Eight rows a micro-kernel call against six: decode batch 8 and 16 (320 deep) and
# prefill 512, three alternating rounds. Binaries: `cargo bench --bench step --no-run`
# with `gemm_panel::MR` = 6 (0f5f113, "mr6") and 8 (an experiment build, "mr8", not kept), copied to /tmp/ab as step-mr6/step-mr8.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  order="mr6 mr8"; [ $((r % 2)) = 0 ] && order="mr8 mr6"
  for b in $order; do
    INFLIGHT_BENCH_DECODE_DEPTH=320 /tmp/ab/step-$b --bench --warm-up-time 1 --measurement-time 3 --noplot \
      'decode_batch_(8|16)$|prefill_512$' > "$OUT/micro-rows-$b-r$r.txt" 2>&1
    echo "$b r$r $(grep -E '^step/[a-z_0-9]+ +time' "$OUT/micro-rows-$b-r$r.txt" | tr -s ' ' | tr '\n' ' ')"
  done
done
