#!/usr/bin/env bash
# Served A/B at 2,000 in / 256 out, concurrency 4, base (9cd4702) against this change,
# alternating rounds; binaries as in served-rounds.sh.
set -uo pipefail
cd /work/main
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
for r in 1 2; do
  order="base new"; [ $((r % 2)) = 0 ] && order="new base"
  for b in $order; do
    echo "== served-long r$r $b $(date +%T)"
    INPUT_TOKENS=2000 OUTPUT_TOKENS=256 NUM_REQUESTS=12 PEERS=inflight ROUNDS=1 CONCURRENCY=4 \
      INFLIGHT_BIN=/tmp/ab/inflight-$b benches/peers/compare.sh > "$OUT/served-long-$b-r$r.log" 2>&1
    rep=$(ls -td target/peers/results/*/ | head -1)
    cp "$rep/report.md" "$OUT/served-long-$b-r$r.md" 2>/dev/null || echo "no report in $rep"
  done
done
