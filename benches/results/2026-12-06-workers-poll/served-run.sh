#!/usr/bin/env bash
# Served: inflight with workers polling during steps (default) vs INFLIGHT_WORKERS_POLL=0,
# and vLLM CPU, alternating; 256/128, concurrency 1, 4, 16.
cd /work/main
out=/work/bench-out/poll
run() { # name env...
  local name=$1; shift
  env "$@" PEERS=${PEER:-inflight} CONCURRENCY=1,4,16 INFLIGHT_BIN=/work/ab/inflight-poll benches/peers/compare.sh > $out/$name.log 2>&1
  d=$(ls -td target/peers/results/*/ | head -1)
  cp $d/${PEER:-inflight}-r1.json $out/$name.json
}
for r in 1 2 3; do
  if (( r % 2 )); then
    run poll-r$r INFLIGHT_WORKERS_POLL=1; run nopoll-r$r INFLIGHT_WORKERS_POLL=0
    (( r < 3 )) && PEER=vllm run vllm-r$r X=1
  else
    PEER=vllm run vllm-r$r X=1
    run nopoll-r$r INFLIGHT_WORKERS_POLL=0; run poll-r$r INFLIGHT_WORKERS_POLL=1
  fi
done
echo done > $out/DONE
