#!/bin/bash
# Served, 256 in / 128 out, 32 requests a level: inflight (default flags: int8
# activations) and vLLM CPU with --dtype float32 (this CPU has no AVX-512 BF16), one
# compare.sh call per round, three rounds (compare.sh alternates nothing within a call,
# so the rounds alternate the order of the two servers).
OUT=$(realpath "${1:?usage: served-run.sh OUT_DIR}"); mkdir -p "$OUT"
cd "$(dirname "$0")/../../.."
for r in 1 2 3; do
  if (( r % 2 )); then peers="inflight vllm"; else peers="vllm inflight"; fi
  VLLM_ARGS="--dtype float32" INFLIGHT_BIN=${INFLIGHT_BIN:-target/release/inflight} PEERS="$peers" \
    CONCURRENCY=1,4,16 benches/peers/compare.sh > "$OUT"/served-r$r.log 2>&1
  cp -r "$(ls -td target/peers/results/*/ | head -1)" "$OUT"/served-r$r
done
echo done
