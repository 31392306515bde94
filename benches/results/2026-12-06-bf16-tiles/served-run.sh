#!/bin/bash
# Served A/B: int8 (default) vs --activations bf16 (INFLIGHT_ACTIVATIONS), one binary, alternating rounds.
OUT=$(realpath "${1:?usage: served-run.sh OUT_DIR}"); mkdir -p "$OUT"
cd "$(dirname "$0")/../../.."
for r in 1 2 3; do
  for acts in int8 bf16; do
    INFLIGHT_ACTIVATIONS=$acts INFLIGHT_BIN=target/release/inflight PEERS=inflight CONCURRENCY=1,4,16 benches/peers/compare.sh > "$OUT"/served-$acts-r$r.log 2>&1
    d=$(ls -td target/peers/results/*/ | head -1)
    cp -r "$d" "$OUT"/served-$acts-r$r
  done
done
echo done
