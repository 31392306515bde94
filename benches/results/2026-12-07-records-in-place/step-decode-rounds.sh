#!/usr/bin/env bash
# Decode steps of 1 and 16 sequences 320 positions deep, base (951b640) against this
# change, six alternating rounds (after step-rounds.sh, whose three rounds the host's
# noise left unclear for batch 16). Binaries as in step-rounds.sh.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3 4 5 6; do
  order="base new"; [ $((r % 2)) = 0 ] && order="new base"
  for b in $order; do
    INFLIGHT_BENCH_DECODE_DEPTH=320 /tmp/ab/step-$b --bench --warm-up-time 1 --measurement-time 3 --noplot \
      'decode_batch_(1|16)$' > "$OUT/decode-$b-r$r.txt" 2>&1
    echo "$b r$r $(grep -E '^step/decode_batch_[0-9]+ +time' "$OUT/decode-$b-r$r.txt" | tr -s ' ' | tr '\n' ' ')"
  done
done
