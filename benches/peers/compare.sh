#!/usr/bin/env bash
# Runs one workload against inflight and its peers, one server at a time on
# this machine, in alternating rounds, and writes a side-by-side report.
#
#   benches/peers/compare.sh                      # inflight, vLLM CPU, llama.cpp
#   PEERS="inflight vllm" ROUNDS=2 benches/peers/compare.sh
#   SMOKE=1 benches/peers/compare.sh              # a short run to check the setup
#
# Settings (environment): PEERS, ROUNDS, CONCURRENCY, NUM_REQUESTS, WARMUP,
# INPUT_TOKENS, OUTPUT_TOKENS, THREADS, PRICE_PER_HOUR or INSTANCE_TYPE, HARDWARE,
# INFLIGHT_BIN, INFLIGHT_PEERS_DIR, MODEL_GGUF, VLLM_ARGS (e.g. `--dtype float32` on CPUs
# without AVX-512 BF16, where vLLM's bf16 default is emulated), LLAMACPP_ARGS. Run setup-vllm.sh and
# setup-llamacpp.sh first for the peers you name. Every server listens on
# 127.0.0.1 only and is stopped before the next one starts.

source "$(dirname "$0")/common.sh"

PEERS=${PEERS:-inflight vllm llamacpp}
ROUNDS=${ROUNDS:-1}
if [[ -n ${SMOKE:-} ]]; then
    CONCURRENCY=${CONCURRENCY:-1,2}; NUM_REQUESTS=${NUM_REQUESTS:-4}
    INPUT_TOKENS=${INPUT_TOKENS:-64}; OUTPUT_TOKENS=${OUTPUT_TOKENS:-16}
fi
CONCURRENCY=${CONCURRENCY:-1,4,16}
NUM_REQUESTS=${NUM_REQUESTS:-32}
WARMUP=${WARMUP:-2}
INPUT_TOKENS=${INPUT_TOKENS:-256}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-128}
# This machine is not an EC2 instance: by default its figures are priced at the
# c7i.xlarge-class CPU rate and labelled as this machine's.
if [[ -z ${INSTANCE_TYPE:-} ]]; then
    PRICE_PER_HOUR=${PRICE_PER_HOUR:-0.179}
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)
HARDWARE=${HARDWARE:-"this machine ($(nproc) cores, ${cpu:-unknown CPU}); priced at ${INSTANCE_TYPE:-\$$PRICE_PER_HOUR/h, c7i.xlarge-class CPU pricing}; not an Inf2 measurement"}

if [[ -z ${INFLIGHT_BIN:-} ]]; then
    log "building inflight (release)"
    (cd "$REPO" && cargo build --release --quiet)
    INFLIGHT_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/inflight
fi
out=$PEERS_DIR/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"

server_pid=
cleanup() { [[ -n $server_pid ]] && stop_server "$server_pid"; server_pid=; }
trap cleanup EXIT

# start PEER PORT: starts the server in the background and waits until it is
# ready; sets server_pid, and extra to the flags `inflight bench` needs for it.
start() {
    local peer=$1 port=$2
    extra=
    case $peer in
    inflight)
        "$INFLIGHT_BIN" serve --host 127.0.0.1 --port "$port" --model "$MODEL_GGUF" \
            --served-model-name "$SERVED_NAME" --threads "$THREADS" --log warn \
            > "$out/$peer.log" 2>&1 &
        server_pid=$!; wait_ready "http://127.0.0.1:$port" "$server_pid" 300 ;;
    vllm)
        [[ -x $VLLM_VENV/bin/python ]] || { log "run setup-vllm.sh first"; return 1; }
        VLLM_CPU_OMP_THREADS_BIND=0-$((THREADS - 1)) VLLM_CPU_KVCACHE_SPACE=${VLLM_KV_GIB:-2} \
            "$VLLM_VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$VLLM_MODEL_DIR" \
            --served-model-name "$SERVED_NAME" --host 127.0.0.1 --port "$port" --max-model-len 4096 \
            ${VLLM_ARGS:-} > "$out/$peer.log" 2>&1 &
        server_pid=$!; wait_ready "http://127.0.0.1:$port" "$server_pid" 900 ;;
    llamacpp)
        [[ -x $LLAMA_SERVER ]] || { log "run setup-llamacpp.sh first"; return 1; }
        # 16 slots share the context: 4,096 tokens each.
        "$LLAMA_SERVER" -m "$MODEL_GGUF" --host 127.0.0.1 --port "$port" -t "$THREADS" \
            -np 16 -c 65536 --alias "$SERVED_NAME" ${LLAMACPP_ARGS:-} > "$out/$peer.log" 2>&1 &
        server_pid=$!; wait_ready "http://127.0.0.1:$port" "$server_pid" 300
        # llama-server closes the connection after each streamed response.
        extra=--no-keep-alive ;;
    *) log "unknown peer $peer (inflight, vllm, llamacpp)"; return 1 ;;
    esac
}

price_flags=()
if [[ -n ${INSTANCE_TYPE:-} ]]; then price_flags=(--instance-type "$INSTANCE_TYPE"); else price_flags=(--price-per-hour "$PRICE_PER_HOUR"); fi

results=()
for round in $(seq "$ROUNDS"); do
    order=($PEERS)
    # Alternate the order between rounds so drift on a shared machine does not
    # favour whoever runs first.
    if (( round % 2 == 0 )); then order=($(printf '%s\n' "${order[@]}" | tac)); fi
    for peer in "${order[@]}"; do
        port=$(free_port)
        log "round $round: starting $peer on 127.0.0.1:$port"
        start "$peer" "$port" || { cleanup; log "skipping $peer"; continue; }
        label=$peer; (( ROUNDS > 1 )) && label="$peer r$round"
        file=$out/${peer}-r$round.json
        # shellcheck disable=SC2086
        "$INFLIGHT_BIN" bench --url "http://127.0.0.1:$port" --model "$SERVED_NAME" \
            --concurrency "$CONCURRENCY" --num-requests "$NUM_REQUESTS" --warmup "$WARMUP" \
            --input-tokens "$INPUT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --tokenizer "$MODEL_GGUF" \
            --label "$label" --hardware "$HARDWARE" "${price_flags[@]}" --output "$file" $extra \
            | tee "$out/${peer}-r$round.txt" || log "$peer: the bench reported failures"
        [[ -f $file ]] && results+=("$file")
        cleanup
    done
done
(( ${#results[@]} > 0 )) || { log "no results"; exit 1; }
"$INFLIGHT_BIN" bench report "${results[@]}" --markdown "$out/report.md" --plot "$out/report.svg" > /dev/null
log "report: $out/report.md, plot: $out/report.svg"
