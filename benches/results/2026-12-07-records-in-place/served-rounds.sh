#!/usr/bin/env bash
# Served A/B at 256 in / 128 out, concurrency 1, 4 and 16, base (951b640) against this change, alternating
# rounds in one sitting. Binaries: `cargo build --release` at each commit, copied to
# /tmp/ab/inflight-base and /tmp/ab/inflight-new.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
for r in 1 2 3 4; do
  order="base new"; [ $((r % 2)) = 0 ] && order="new base"
  for b in $order; do
    echo "== served r$r $b $(date +%T)"
    PEERS=inflight ROUNDS=1 CONCURRENCY=1,4,16 INFLIGHT_BIN=/tmp/ab/inflight-$b benches/peers/compare.sh > "$OUT/served-$b-r$r.log" 2>&1
    rep=$(ls -td target/peers/results/*/ | head -1)
    cp "$rep/report.md" "$OUT/served-$b-r$r.md" 2>/dev/null || echo "no report in $rep"
  done
done
