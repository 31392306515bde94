#!/bin/bash
# Times a build of the inflight lib alone under profile variants, the dependencies
# already built (run after `cargo test --no-run` in a fresh clone; prints seconds).
cd "$(git rev-parse --show-toplevel)"
run() {
  label=$1; shift
  rm -rf target/debug/incremental/inflight-*
  start=$(date +%s.%N)
  env "$@" cargo build --lib -p inflight >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$label $(echo "$end - $start" | bc)"
}
run "A debug=1 incr=0" CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=1
run "B line-tables incr=0" CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
run "C debug=0 incr=0" CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0
run "D debug=1 incr=1" CARGO_INCREMENTAL=1 CARGO_PROFILE_DEV_DEBUG=1
