#!/usr/bin/env bash
# Served A/B at 256 in / 128 out, concurrency 4 and 16: the next job's prefetches in
# one burst a group ("new", 161121b) against spread over the score loop's steps
# ("asks"), four alternating rounds in one sitting. Binaries: `cargo build --release`
# at each, copied to /tmp/ab/inflight-new and /tmp/ab/inflight-asks.
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
for r in 1 2 3 4; do
  order="new asks"; [ $((r % 2)) = 0 ] && order="asks new"
  for b in $order; do
    echo "== served r$r $b $(date +%T)"
    PEERS=inflight ROUNDS=1 CONCURRENCY=4,16 INFLIGHT_BIN=/tmp/ab/inflight-$b benches/peers/compare.sh > "$OUT/served-$b-r$r.log" 2>&1
    rep=$(ls -td target/peers/results/*/ | head -1)
    cp "$rep/report.md" "$OUT/served-$b-r$r.md" 2>/dev/null || echo "no report in $rep"
    cp "$rep"/inflight-r1.json "$OUT/served-$b-r$r.json" 2>/dev/null
  done
done
