#!/usr/bin/env bash
# Decode steps at 320 and 1,024 cached positions, and prefill 512, base (9cd4702)
# against this change, three alternating rounds in one sitting.
# Binaries: `cargo bench --bench step --no-run` at each commit, copied to /tmp/ab.
set -uo pipefail
cd /work/main
OUT=${OUT:?OUT: where the rounds go}; mkdir -p "$OUT"
export INFLIGHT_BENCH_MODEL=$PWD/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  order="base new"; [ $((r % 2)) = 0 ] && order="new base"
  for b in $order; do
    for depth in 320 1024; do
      echo "== step r$r $b depth $depth $(date +%T)"
      INFLIGHT_BENCH_DECODE_DEPTH=$depth INFLIGHT_PROFILE_STEP=step/decode_batch_16 /tmp/ab/step-$b --bench \
        --warm-up-time 1 --measurement-time 4 --noplot 'decode_batch_(1|16)$' > "$OUT/step-$b-d$depth-r$r.txt" 2>&1
      grep -E "^step/decode_batch_[0-9]+ +time:|attention over" "$OUT/step-$b-d$depth-r$r.txt"
    done
    echo "== step r$r $b prefill $(date +%T)"
    /tmp/ab/step-$b --bench --warm-up-time 1 --measurement-time 4 --noplot 'prefill_512$' > "$OUT/step-$b-prefill-r$r.txt" 2>&1
    grep -E "^step/prefill_512 +time:" "$OUT/step-$b-prefill-r$r.txt"
  done
done
