#!/usr/bin/env bash
# Decode steps of 1 and 16 sequences 320 deep with the batch-16 section profile: the
# next job's prefetches in one burst a group ("new", 161121b) against spread over the
# score loop's steps ("asks"), four alternating rounds. Binaries: `cargo bench --bench
# step --no-run` at each, copied to /tmp/ab/step-new and /tmp/ab/step-asks.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3 4; do
  order="new asks"; [ $((r % 2)) = 0 ] && order="asks new"
  for b in $order; do
    INFLIGHT_BENCH_DECODE_DEPTH=320 INFLIGHT_PROFILE_STEP=step/decode_batch_16 /tmp/ab/step-$b --bench \
      --warm-up-time 1 --measurement-time 3 --noplot 'decode_batch_(1|16)$' > "$OUT/$b-r$r.txt" 2>&1
    echo "$b r$r $(grep -E '^step/decode_batch_[0-9]+ +time' "$OUT/$b-r$r.txt" | tr -s ' ' | tr '\n' ' ')"
    grep 'attention over' "$OUT/$b-r$r.txt"
  done
done
