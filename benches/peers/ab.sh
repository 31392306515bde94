#!/usr/bin/env bash
# A/B of two or more builds of inflight on this machine: each build runs the same
# measurement in alternating rounds (the order turns each round, so a host that
# drifts over the sitting weighs on every build alike), and ab_summary.py writes
# the medians and each build's ratio to the first.
#
#   benches/peers/ab.sh step base=/tmp/ab/step-base new=/tmp/ab/step-new
#   ROUNDS=4 CONCURRENCY="1 4 16" benches/peers/ab.sh served base=/tmp/ab/inflight-base new=target/release/inflight
#
# Modes:
#   step    LABEL=BIN is a step bench binary (`cargo bench --bench step --no-run`, the
#           `target/release/deps/step-*` it prints). Settings: FILTER (criterion's
#           filter, 'decode_batch_(1|16)$'), WARM_UP (1 s), MEASURE (3 s). The bench's
#           own settings (INFLIGHT_BENCH_DECODE_DEPTH, INFLIGHT_PROFILE_STEP,
#           INFLIGHT_KV_CACHE_DTYPE, ...) pass through the environment.
#   served  LABEL=BIN is an `inflight` binary. One server a build and round, then each
#           closed-loop level of CONCURRENCY ("1 4 16") with NUM_REQUESTS (32), WARMUP
#           (2), INPUT_TOKENS (256), OUTPUT_TOKENS (128), EXTRA_FLAGS (more serve flags).
#           A level's prompts are the same for every build in a round (one seed), and
#           new in each round.
#
# Copy each build's binary out of target/ first (cp target/release/inflight
# /tmp/ab/inflight-base): the next build overwrites it. ROUNDS (4); OUT (a new folder
# under target/peers/ab/). Run nothing else on the machine meanwhile.

source "$(dirname "$0")/common.sh"

usage() { log "usage: ab.sh step|served LABEL=BIN LABEL=BIN..."; exit 2; }
(( $# >= 3 )) || usage
MODE=$1; shift
[[ $MODE == step || $MODE == served ]] || usage
labels=(); bins=()
for arg in "$@"; do
    [[ $arg == *=* ]] || usage
    label=${arg%%=*}; bin=${arg#*=}
    [[ $label =~ ^[A-Za-z0-9_.]+$ ]] || { log "label '$label': letters, digits, _ and . only"; exit 2; }
    [[ -x $bin ]] || { log "$bin: not an executable"; exit 2; }
    labels+=("$label"); bins+=("$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")")
done

ROUNDS=${ROUNDS:-4}
out=${OUT:-$PEERS_DIR/ab/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
{
    echo "mode: $MODE; rounds: $ROUNDS; started $(date -u +%FT%TZ)"
    for i in "${!labels[@]}"; do echo "${labels[$i]}: ${bins[$i]}"; done
    env | grep -E '^(INFLIGHT_|FILTER=|WARM_UP=|MEASURE=|CONCURRENCY=|NUM_REQUESTS=|WARMUP=|INPUT_TOKENS=|OUTPUT_TOKENS=|EXTRA_FLAGS=|THREADS=)' | sort
} > "$out/settings.txt"

server_pid=
cleanup() { [[ -n $server_pid ]] && stop_server "$server_pid"; server_pid=; }
trap cleanup EXIT

# run_step LABEL BIN ROUND
run_step() {
    local file=$out/step-$1-r$3.txt
    (cd "$REPO" && INFLIGHT_BENCH_MODEL=${INFLIGHT_BENCH_MODEL:-$MODEL_GGUF} "$2" --bench \
        --warm-up-time "${WARM_UP:-1}" --measurement-time "${MEASURE:-3}" --noplot \
        "${FILTER:-decode_batch_(1|16)\$}") > "$file" 2>&1 || log "$1 round $3: the step bench failed ($file)"
}

# run_served LABEL BIN ROUND
run_served() {
    local port level seed=0
    port=$(free_port)
    # shellcheck disable=SC2086 # EXTRA_FLAGS is a list of flags
    "$2" serve --host 127.0.0.1 --port "$port" --model "$MODEL_GGUF" --served-model-name "$SERVED_NAME" \
        --threads "$THREADS" ${EXTRA_FLAGS:-} --log warn > "$out/served-$1-r$3.log" 2>&1 &
    server_pid=$!
    wait_ready "http://127.0.0.1:$port" "$server_pid" 300 || { cleanup; return 0; }
    for level in ${CONCURRENCY:-1 4 16}; do
        seed=$((seed + 1))
        "$2" bench --url "http://127.0.0.1:$port" --model "$SERVED_NAME" --concurrency "$level" \
            --num-requests "${NUM_REQUESTS:-32}" --warmup "${WARMUP:-2}" --seed "$((100 * $3 + seed))" \
            --input-tokens "${INPUT_TOKENS:-256}" --output-tokens "${OUTPUT_TOKENS:-128}" \
            --tokenizer "$MODEL_GGUF" --label "$1 r$3" --output "$out/served-$1-r$3-c$level.json" \
            > "$out/served-$1-r$3-c$level.txt" 2>&1 || log "$1 round $3 c=$level: the bench reported failures"
    done
    cleanup
}

n=${#labels[@]}
for round in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        i=$(( (k + round - 1) % n ))
        log "round $round/$ROUNDS: ${labels[$i]}"
        "run_$MODE" "${labels[$i]}" "${bins[$i]}" "$round"
    done
done
python3 "$PEERS_SRC/ab_summary.py" "$out" "${labels[@]}" | tee "$out/summary.md"
log "summary: $out/summary.md"
