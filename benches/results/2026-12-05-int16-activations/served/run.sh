#!/bin/bash
cd /work/main
for r in 1 2; do for a in int8 int16; do
  echo "== round $r activations $a"
  INFLIGHT_ACTIVATIONS=$a PEERS=inflight ROUNDS=1 INFLIGHT_BIN=target/release/inflight OUT=/work/bench-out/s18/served-$a-r$r benches/peers/compare.sh 2>&1 | tail -8
done; done
