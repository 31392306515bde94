#!/usr/bin/env bash
# Decode steps of 1, 8, 16 and 32 sequences 320 positions deep, and prefill 256 and
# 512, base (951b640) against this change, three alternating rounds in one sitting.
# Binaries: `cargo bench --bench step --no-run` at each commit, copied to /tmp/ab.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  order="base new"; [ $((r % 2)) = 0 ] && order="new base"
  for b in $order; do
    echo "== step r$r $b $(date +%T)"
    INFLIGHT_BENCH_DECODE_DEPTH=320 /tmp/ab/step-$b --bench --warm-up-time 1 --measurement-time 4 --noplot \
      'decode_batch_(1|8|16|32)$|prefill_(256|512)$' > "$OUT/step-$b-r$r.txt" 2>&1
    grep -E "^step/[a-z_0-9]+ +time:" "$OUT/step-$b-r$r.txt"
  done
done
