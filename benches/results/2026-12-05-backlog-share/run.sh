#!/usr/bin/env bash
# old (c1567b4: auto = 2x decode cost) vs new (backlog share), alternating.
cd /work/main
out=/work/bench-out/backlog
for r in 1 2 3; do
  if (( r % 2 )); then order="c1567b4 backlog"; else order="backlog c1567b4"; fi
  for b in $order; do
    PEERS=inflight CONCURRENCY=4,16 INFLIGHT_BIN=/work/ab/inflight-$b benches/peers/compare.sh > $out/closed-$b-r$r.log 2>&1
    d=$(ls -td target/peers/results/*/ | head -1)
    cp $d/inflight-r1.json $out/closed-$b-r$r.json
  done
done
for r in 1 2; do
  if (( r % 2 )); then order="c1567b4 backlog"; else order="backlog c1567b4"; fi
  for b in $order; do
    FLAG=--max-step-ms VALUES="auto" RATES="2" DURATION=60 ROUNDS=1 INFLIGHT_BIN=/work/ab/inflight-$b OUT=$out/poisson-$b-r$r benches/peers/flag-sweep.sh > $out/poisson-$b-r$r.log 2>&1
  done
done
echo done > $out/DONE
