#!/bin/bash
# Served, 256 in / 128 out, 32 requests a level: inflight int8 (the default) and vLLM CPU
# in one compare.sh call, then inflight with --activations bf16; three rounds.
OUT=$(realpath "${1:?usage: served-run.sh OUT_DIR}"); mkdir -p "$OUT"
cd "$(dirname "$0")/../../.."
for r in 1 2 3; do
  INFLIGHT_ACTIVATIONS=int8 INFLIGHT_BIN=target/release/inflight PEERS="inflight vllm" CONCURRENCY=1,4,16 benches/peers/compare.sh > "$OUT"/served-int8-vllm-r$r.log 2>&1
  cp -r "$(ls -td target/peers/results/*/ | head -1)" "$OUT"/served-int8-vllm-r$r
  INFLIGHT_ACTIVATIONS=bf16 INFLIGHT_BIN=target/release/inflight PEERS=inflight CONCURRENCY=1,4,16 benches/peers/compare.sh > "$OUT"/served-bf16-r$r.log 2>&1
  cp -r "$(ls -td target/peers/results/*/ | head -1)" "$OUT"/served-bf16-r$r
done
echo done
