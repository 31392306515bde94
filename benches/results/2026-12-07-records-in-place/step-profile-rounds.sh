#!/usr/bin/env bash
# The batch-16 decode step 320 positions deep with its section profile, base (951b640)
# against this change, four alternating rounds. Binaries as in step-rounds.sh.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3 4; do
  for b in base new; do
    INFLIGHT_BENCH_DECODE_DEPTH=320 INFLIGHT_PROFILE_STEP=step/decode_batch_16 /tmp/ab/step-$b --bench \
      --warm-up-time 1 --measurement-time 3 --noplot 'decode_batch_16$' > "$OUT/prof16-$b-r$r.txt" 2>&1
    echo "$b r$r $(grep -E '^step/decode_batch_16 +time' "$OUT/prof16-$b-r$r.txt")"
    grep -E 'matmul|lm_head' "$OUT/prof16-$b-r$r.txt" | awk -F'|' '{s+=$3} END {print "  matmul sections: " s " ms"}'
  done
done
