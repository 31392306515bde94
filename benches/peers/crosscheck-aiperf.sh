#!/usr/bin/env bash
# Cross-checks `inflight bench`'s metric definitions against NVIDIA's aiperf
# (PyPI): both measure one running server with the same workload, alternating,
# ROUNDS times each, and the medians of TTFT p50, TPOT p50 and output tokens/s are
# printed side by side.
#
#   benches/peers/crosscheck-aiperf.sh http://127.0.0.1:8123 smollm2
#
# Settings (environment): ROUNDS (2), CONCURRENCY (2), NUM_REQUESTS (12),
# INPUT_TOKENS (32), OUTPUT_TOKENS (16), AIPERF_VERSION (0.13.0), INFLIGHT_BIN,
# CLIENT_CPUS (a `taskset -c` list both clients are pinned to). aiperf spends most
# of a core of its own: on a small machine start the server on other cores
# (`taskset -c 0 inflight serve --threads 1 …`, CLIENT_CPUS=1), or its load slows
# the server it measures and the two tools see different servers.
# The server must serve MODEL_GGUF's model (for exact prompt lengths).

source "$(dirname "$0")/common.sh"

url=${1:?usage: crosscheck-aiperf.sh URL MODEL_NAME}
name=${2:?usage: crosscheck-aiperf.sh URL MODEL_NAME}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-2}
NUM_REQUESTS=${NUM_REQUESTS:-12}
INPUT_TOKENS=${INPUT_TOKENS:-32}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-16}
AIPERF_VERSION=${AIPERF_VERSION:-0.13.0}
venv=$PEERS_DIR/aiperf-venv
tok=$PEERS_DIR/smollm2-tokenizer

if [[ ! -x $venv/bin/aiperf ]]; then
    log "installing aiperf==$AIPERF_VERSION into $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "aiperf==$AIPERF_VERSION" gguf
fi
[[ -f $tok/tokenizer.json ]] || "$venv/bin/python" "$PEERS_SRC/gguf_tokenizer.py" "$MODEL_GGUF" "$tok"
if [[ -z ${INFLIGHT_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --quiet)
    INFLIGHT_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/inflight
fi

pin=()
[[ -n ${CLIENT_CPUS:-} ]] && pin=(taskset -c "$CLIENT_CPUS")

out=$PEERS_DIR/crosscheck/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
ours=() theirs=()
for round in $(seq "$ROUNDS"); do
    log "round $round: inflight bench"
    "${pin[@]}" "$INFLIGHT_BIN" bench --url "$url" --model "$name" --concurrency "$CONCURRENCY" \
        --num-requests "$NUM_REQUESTS" --warmup 2 --input-tokens "$INPUT_TOKENS" \
        --output-tokens "$OUTPUT_TOKENS" --tokenizer "$MODEL_GGUF" --seed "$round" \
        --output "$out/inflight-r$round.json" > "$out/inflight-r$round.txt"
    ours+=("$out/inflight-r$round.json")
    log "round $round: aiperf"
    "${pin[@]}" "$venv/bin/aiperf" profile --model "$name" --url "$url" --endpoint-type completions --streaming \
        --tokenizer "$tok" --isl "$INPUT_TOKENS" --isl-stddev 0 --osl "$OUTPUT_TOKENS" --osl-stddev 0 \
        --extra-inputs ignore_eos:true --extra-inputs temperature:0 --use-server-token-count \
        --concurrency "$CONCURRENCY" --request-count "$NUM_REQUESTS" --warmup-request-count 2 \
        --random-seed "$round" --ui-type none --artifact-dir "$out/aiperf-r$round" > "$out/aiperf-r$round.txt" 2>&1
    theirs+=("$out/aiperf-r$round")
done
"$PYTHON" "$PEERS_SRC/crosscheck_summary.py" "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${theirs[*]}")" \
    | tee "$out/summary.txt"
