#!/usr/bin/env bash
# Five more alternating rounds, int8 only: base against the last-layer cut.
set -u
# REPO: the checkout; BIN_DIR: the step benches of both commits (`cargo bench --bench step
# --no-run` at 82622b8 and at 5a08c55, copied as step-base and step-skip) and the kernel
# bench (`cargo bench --bench kernels --no-run`, copied as kernels).
: "${REPO:?}" "${BIN_DIR:?}"
export INFLIGHT_BENCH_MODEL=$REPO/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3 4 5; do
  for bin in base skip; do
    echo "=== round $r $bin int8 $(date +%T)"
    INFLIGHT_ACTIVATIONS=int8 $BIN_DIR/step-$bin --bench --warm-up-time 1 --measurement-time 4 --noplot 'prefill_(256|512)$' 2>&1 | grep -E "^step/"
  done
done
