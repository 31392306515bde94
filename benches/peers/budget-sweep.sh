#!/usr/bin/env bash
# How the scheduler's per-step token budget (--max-batch-tokens, which is also the
# prefill chunk size) trades time to first token against throughput: one inflight
# server per budget, the same closed-loop workload against each, one report.
#
#   benches/peers/budget-sweep.sh                     # budgets 128 256 512 1024 2048
#
# Settings (environment): BUDGETS, CONCURRENCY (16), NUM_REQUESTS (32), WARMUP (2),
# INPUT_TOKENS (256), OUTPUT_TOKENS (128), INFLIGHT_BIN.

source "$(dirname "$0")/common.sh"

BUDGETS=${BUDGETS:-128 256 512 1024 2048}
CONCURRENCY=${CONCURRENCY:-16}
NUM_REQUESTS=${NUM_REQUESTS:-32}
WARMUP=${WARMUP:-2}
INPUT_TOKENS=${INPUT_TOKENS:-256}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-128}
if [[ -z ${INFLIGHT_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --quiet)
    INFLIGHT_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/inflight
fi
out=$PEERS_DIR/budget-sweep/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"

server_pid=
cleanup() { [[ -n $server_pid ]] && stop_server "$server_pid"; server_pid=; }
trap cleanup EXIT

results=()
for budget in $BUDGETS; do
    port=$(free_port)
    log "budget $budget: starting inflight on 127.0.0.1:$port"
    "$INFLIGHT_BIN" serve --host 127.0.0.1 --port "$port" --model "$MODEL_GGUF" --served-model-name "$SERVED_NAME" \
        --threads "$THREADS" --max-batch-tokens "$budget" --log warn > "$out/budget-$budget.log" 2>&1 &
    server_pid=$!
    wait_ready "http://127.0.0.1:$port" "$server_pid" 300 || { cleanup; continue; }
    "$INFLIGHT_BIN" bench --url "http://127.0.0.1:$port" --model "$SERVED_NAME" --concurrency "$CONCURRENCY" \
        --num-requests "$NUM_REQUESTS" --warmup "$WARMUP" --input-tokens "$INPUT_TOKENS" \
        --output-tokens "$OUTPUT_TOKENS" --tokenizer "$MODEL_GGUF" --label "budget $budget" \
        --output "$out/budget-$budget.json" > "$out/budget-$budget.txt"
    results+=("$out/budget-$budget.json")
    cleanup
done
(( ${#results[@]} > 0 )) || { log "no results"; exit 1; }
"$INFLIGHT_BIN" bench report "${results[@]}" --markdown "$out/report.md" --plot "$out/report.svg" > /dev/null
log "report: $out/report.md"
