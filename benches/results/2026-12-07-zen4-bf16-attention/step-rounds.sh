#!/usr/bin/env bash
# bf16 against f32 prompt tiles, one sitting: step bench + llama-bench pp512 rounds, served A/B, long prompt.
set -uo pipefail
cd /work/main
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
STEP=target/release/deps/step-1df0541ca818bca5
LB=target/peers/llamacpp/build/bin/llama-bench
for r in 1 2 3; do
  order="f32 bf16"; [ $((r % 2)) = 0 ] && order="bf16 f32"
  for a in $order; do
    echo "== step r$r $a $(date +%T)"
    INFLIGHT_ATTENTION_PRECISION=$a INFLIGHT_PROFILE_STEP=step/prefill_512 $STEP --bench --warm-up-time 1 --measurement-time 4 --noplot 'prefill_(128|256|512|512_at_7k)$' > "$OUT/step-$a-r$r.txt" 2>&1
    grep -E "^step/prefill_[0-9a-z_]+ +time:" -A0 "$OUT/step-$a-r$r.txt"
  done
  echo "== llama-bench r$r $(date +%T)"
  $LB -m "$INFLIGHT_BENCH_MODEL" -t 2 -p 512 -n 0 -r 3 -o json > "$OUT/llamabench-r$r.json" 2> "$OUT/llamabench-r$r.log"
  python3 -c "import json;print([t['avg_ts'] for t in json.load(open('$OUT/llamabench-r$r.json'))])"
done
