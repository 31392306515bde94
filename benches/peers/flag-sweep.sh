#!/usr/bin/env bash
# How one scheduler flag trades time to first token against inter-token latency
# and throughput: one inflight server per value, the same closed-loop workload
# against each, in alternating rounds, one report per concurrency level.
#
#   benches/peers/flag-sweep.sh                          # --max-batch-tokens 128 … 2048
#   FLAG=--max-step-ms VALUES="0 50 100" RATES="1 2" DURATION=90 ROUNDS=3 \
#       benches/peers/flag-sweep.sh                      # open loop, Poisson arrivals
#
# Settings (environment): FLAG (--max-batch-tokens), VALUES (128 256 512 1024 2048),
# CONCURRENCY (16; a space-separated list runs each level closed-loop), or RATES
# (requests/s; a list runs each level open-loop for DURATION seconds, 60), ROUNDS (1),
# NUM_REQUESTS (32), WARMUP (2), INPUT_TOKENS (256), OUTPUT_TOKENS (128),
# EXTRA_FLAGS (more serve flags for every server), INFLIGHT_BIN, OUT.
#
# Each level of a round gets prompts of its own (its own seed): the levels share a
# server, and repeating a level's prompts would let the next one hit the prefix cache.
#
# Closed loops of equal requests move in lockstep (all prefill, then all decode), so
# they hide what a prefill does to other streams' inter-token latency; open-loop
# arrivals do not.

source "$(dirname "$0")/common.sh"

FLAG=${FLAG:---max-batch-tokens}
VALUES=${VALUES:-128 256 512 1024 2048}
CONCURRENCY=${CONCURRENCY:-16}
DURATION=${DURATION:-60}
if [[ -n ${RATES:-} ]]; then
    levels=(); for r in $RATES; do levels+=("r$r"); done
else
    levels=(); for c in $CONCURRENCY; do levels+=("c$c"); done
fi
ROUNDS=${ROUNDS:-1}
NUM_REQUESTS=${NUM_REQUESTS:-32}
WARMUP=${WARMUP:-2}
INPUT_TOKENS=${INPUT_TOKENS:-256}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-128}
if [[ -z ${INFLIGHT_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --quiet)
    INFLIGHT_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/inflight
fi
name=${FLAG#--}
out=${OUT:-$PEERS_DIR/$name-sweep/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"

server_pid=
cleanup() { [[ -n $server_pid ]] && stop_server "$server_pid"; server_pid=; }
trap cleanup EXIT

for round in $(seq 1 "$ROUNDS"); do
    for value in $VALUES; do
        port=$(free_port)
        run="$name-$value-r$round"
        log "round $round, $FLAG $value: starting inflight on 127.0.0.1:$port"
        # shellcheck disable=SC2086 # EXTRA_FLAGS is a list of flags
        "$INFLIGHT_BIN" serve --host 127.0.0.1 --port "$port" --model "$MODEL_GGUF" --served-model-name "$SERVED_NAME" \
            --threads "$THREADS" "$FLAG" "$value" ${EXTRA_FLAGS:-} --log warn > "$out/$run.log" 2>&1 &
        server_pid=$!
        wait_ready "http://127.0.0.1:$port" "$server_pid" 300 || { cleanup; continue; }
        for i in "${!levels[@]}"; do
            level=${levels[$i]}
            if [[ $level == r* ]]; then
                # Enough requests for the duration (the client prepares them all first).
                n=$(python3 -c "import math; print(math.ceil(${level#r} * $DURATION * 1.5) + 10)")
                load=(--request-rate "${level#r}" --duration "$DURATION" --num-requests "$n")
            else
                load=(--concurrency "${level#c}" --num-requests "$NUM_REQUESTS")
            fi
            "$INFLIGHT_BIN" bench --url "http://127.0.0.1:$port" --model "$SERVED_NAME" "${load[@]}" \
                --warmup "$WARMUP" --input-tokens "$INPUT_TOKENS" --seed "$((100 * round + i))" \
                --output-tokens "$OUTPUT_TOKENS" --tokenizer "$MODEL_GGUF" --label="$name $value (round $round)" \
                --output "$out/$run-$level.json" > "$out/$run-$level.txt"
        done
        cleanup
    done
done
for level in "${levels[@]}"; do
    results=("$out"/*-"$level".json)
    [[ -e ${results[0]} ]] || { log "no results at $level"; continue; }
    "$INFLIGHT_BIN" bench report "${results[@]}" --markdown "$out/report-$level.md" --plot "$out/report-$level.svg" > /dev/null
    log "report: $out/report-$level.md"
done
python3 "$(dirname "$0")/sweep_summary.py" "$out" > "$out/summary.md"
log "summary: $out/summary.md"

