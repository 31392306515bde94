#!/bin/bash
# Alternating rounds: decode b1/b16 at three depths, base vs final.
export INFLIGHT_BENCH_MODEL=/work/main/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  for depth in 128 1024 2048; do
    for b in prompt final; do
      INFLIGHT_BENCH_DECODE_DEPTH=$depth /work/ab/step-$b --bench --warm-up-time 1 --measurement-time 3 --noplot 'decode_batch_1$|decode_batch_16$' 2>&1 \
        | grep -E "^step/decode_batch_(1|16) +time" | sed "s/^/round=$r depth=$depth bin=$b /"
    done
  done
done
