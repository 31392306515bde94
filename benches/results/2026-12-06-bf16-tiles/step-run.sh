#!/bin/bash
M=models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do for a in int8 bf16; do
  echo "== round $r $a"
  INFLIGHT_ACTIVATIONS=$a INFLIGHT_BENCH_MODEL=$M "${STEP_BIN:?path of target/release/deps/step-<hash>}" --bench --warm-up-time 1 --measurement-time 3 --noplot 'prefill_(128|256|512)$|decode_batch_(1|16)$' 2>&1 | grep -E "^step/\S+\s+time:"
done; done
echo done
