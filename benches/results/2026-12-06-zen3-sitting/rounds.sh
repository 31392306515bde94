#!/usr/bin/env bash
# Issue 19's kernel bars in one sitting on this host: ROUNDS alternating rounds of the
# engine step bench (int8, the default activations), llama.cpp's llama-bench (pp512,
# tg128) and the kernel bench's peak table.
#   cargo bench --bench step --no-run; cargo bench --bench kernels --no-run
#   STEP=target/release/deps/step-<hash> KERNELS=target/release/deps/kernels-<hash> \
#     benches/results/2026-12-06-zen3-sitting/rounds.sh > rounds.txt
set -u
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
: "${STEP:?}" "${KERNELS:?}"
# Criterion writes its history under ./target: keep it in the (ignored) build folder.
cd "$REPO"
export INFLIGHT_BENCH_MODEL=$REPO/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in $(seq "${ROUNDS:-3}"); do
  echo "=== round $r step $(date +%T)"
  "$STEP" --bench --warm-up-time 1 --measurement-time 4 --noplot \
    'prefill_(128|256|512|512_at_7k)$|decode_batch_(1|16)$' 2>&1 | grep -E "^step/[a-z0-9_]+ +time:|^step/[a-z0-9_]+$|^ +time:"
  echo "=== round $r llama-bench $(date +%T)"
  "$REPO"/target/peers/llamacpp/build/bin/llama-bench -m "$INFLIGHT_BENCH_MODEL" -p 512 -n 128 -t 2 -r 3 2>&1 | grep -E "pp512|tg128"
  echo "=== round $r peak $(date +%T)"
  "$KERNELS" --bench nomatch 2>&1 | grep -A5 "peak multiply-add"
done
