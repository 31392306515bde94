#!/usr/bin/env bash
set -uo pipefail
cd /work/main
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
for r in 1 2 3; do
  order="f32 bf16"; [ $((r % 2)) = 0 ] && order="bf16 f32"
  for a in $order; do
    echo "== served r$r $a $(date +%T)"
    PEERS=inflight ROUNDS=1 CONCURRENCY=1,4,16 INFLIGHT_BIN=/tmp/ab/inflight-$a benches/peers/compare.sh > "$OUT/served-$a-r$r.log" 2>&1
    rep=$(ls -td target/peers/results/*/ | head -1)
    cp "$rep/report.md" "$OUT/served-$a-r$r.md" 2>/dev/null || echo "no report in $rep"
  done
done
echo "== long prompt $(date +%T)"
BINS="/tmp/ab/inflight-f32 /tmp/ab/inflight-bf16" ROUNDS=2 benches/peers/long-prompt.sh > "$OUT/long-prompt.log" 2>&1
tail -4 "$OUT/long-prompt.log"
