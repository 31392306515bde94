#!/usr/bin/env bash
# Alternating rounds: base (HEAD 82622b8) against the last-layer cut, int8 and bf16,
# then llama.cpp's pp512 (build without AMX) and the kernel bench's peak table.
set -u
# REPO: the checkout; BIN_DIR: the step benches of both commits (`cargo bench --bench step
# --no-run` at 82622b8 and at 5a08c55, copied as step-base and step-skip) and the kernel
# bench (`cargo bench --bench kernels --no-run`, copied as kernels).
: "${REPO:?}" "${BIN_DIR:?}"
export INFLIGHT_BENCH_MODEL=$REPO/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  for bin in base skip; do
    for acts in int8 bf16; do
      echo "=== round $r $bin $acts $(date +%T)"
      INFLIGHT_ACTIVATIONS=$acts $BIN_DIR/step-$bin --bench --warm-up-time 1 --measurement-time 3 --noplot 'prefill_(128|256|512)$' 2>&1 | grep -E "^step/|time:"
    done
  done
  echo "=== round $r llama-bench $(date +%T)"
  $REPO/target/peers/llamacpp/build-noamx/bin/llama-bench -m $INFLIGHT_BENCH_MODEL -p 512 -n 0 -t 2 -r 3 2>&1 | grep pp512
  echo "=== round $r peak $(date +%T)"
  $BIN_DIR/kernels --bench nomatch 2>&1 | grep -A12 "peak multiply-add"
done
