#!/bin/bash
# One sequence decoding deep: c=1, 2,000-token prompts, 256 output tokens; base vs final, alternating.
cd /work/main
for r in 1 2 3; do
  for b in base final; do
    PEERS=inflight ROUNDS=1 CONCURRENCY=1 NUM_REQUESTS=8 WARMUP=1 INPUT_TOKENS=2000 OUTPUT_TOKENS=256 \
      INFLIGHT_BIN=/work/ab/inflight-$b benches/peers/compare.sh > /work/bench-out/served-long-$b-r$r.txt 2>&1
  done
done
echo finished
