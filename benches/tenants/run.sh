#!/usr/bin/env bash
# The tenant bars of issue 17, measured: tenant A provisioned at 30% of the server's
# measured capacity, tenant B on-demand flooding at 5x capacity, on the default model.
#
#   benches/tenants/run.sh [OUT_DIR]        (DURATION=600 for the issue's 10 minutes)
#
# Phases, each DURATION seconds of open-loop Poisson load from `inflight bench`:
#   capacity  closed loop at concurrency 32, no tenants: requests/s the server sustains
#   alone     A by itself at 30% of that rate (its TTFT baseline)
#   tenants   A at 30% and B at 5x capacity at once, with the tenants file
#   fifo      the same two loads with one shared key and no tenants (today's FIFO)
# then prints A's TTFT p99 against its baseline, A's served tokens against its
# reservation, the 429s each tenant got, and any request lost (an error other than
# 429). Needs a release build (`cargo build --release`). PHASES="tenants" reruns only
# the named phases into an existing OUT_DIR (the capacity phase's result is reused).
# SERVE_FLAGS adds serve flags to every phase's server (e.g. "--max-step-ms 60").
#
# PEER=vllm runs the same workload on vLLM CPU (benches/peers/setup-vllm.sh first)
# with `--scheduling-policy priority`: no tenants there, so A's requests carry
# `"priority": 0` and B's `"priority": 1` (lower is served first), and the rates are
# fractions of vLLM's own measured capacity. Its fifo phase is vLLM's default
# first-come-first-served policy without priorities.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT="${1:-benches/results/$(date +%F)-tenants}"
DURATION="${DURATION:-120}"
BIN="${BIN:-target/release/inflight}"
MODEL="${MODEL:-models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}"
INPUT_TOKENS="${INPUT_TOKENS:-256}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-64}"
PORT="${PORT:-18431}"
URL="http://127.0.0.1:$PORT"
PHASES="${PHASES:-capacity alone tenants fifo}"
PEER="${PEER:-inflight}"
PEERS_DIR="${INFLIGHT_PEERS_DIR:-target/peers}"
want() { [[ " $PHASES " == *" $1 "* ]]; }
# Requests for an open-loop rate over DURATION, with room for Poisson's spread.
count() { python3 -c "import math; print(math.ceil($1 * $DURATION * 1.5) + 50)"; }
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    server_pid=""
}
trap stop_server EXIT

start_server() { # extra serve flags...
    stop_server
    if [ "$PEER" = vllm ]; then
        # inflight's flags do not apply; only whether priorities are on does.
        local policy=()
        [[ " $* " != *" --tenants "* ]] || policy=(--scheduling-policy priority)
        VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND="0-$(($(nproc) - 1))" \
            "$PEERS_DIR/vllm-venv/bin/python" -m vllm.entrypoints.openai.api_server \
            --model "$PEERS_DIR/smollm2-hf" --served-model-name m --host 127.0.0.1 --port "$PORT" \
            --max-model-len 4096 "${policy[@]}" > "$OUT/server-$phase.log" 2>&1 &
    else
        # shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
        "$BIN" serve --model "$MODEL" --served-model-name m --port "$PORT" --log warn "$@" ${SERVE_FLAGS:-} \
            > "$OUT/server-$phase.log" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 1 1800); do
        curl -sf "$URL/health" > /dev/null && return 0
        sleep 0.5
    done
    echo "server did not become ready; see $OUT/server-$phase.log" >&2
    exit 1
}

bench() { # name key extra-flags...
    local name="$1" key="$2"
    shift 2
    if [ "$PEER" = vllm ] && [ "$name" != capacity ] && [ "$phase" != fifo ]; then
        set -- "$@" --extra-body "{\"priority\": $([ "$key" = key-a ] && echo 0 || echo 1)}"
    fi
    "$BIN" bench --url "$URL" --model m --api-key "$key" --tokenizer "$MODEL" \
        --input-tokens "$INPUT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --warmup 0 \
        --label "$name" -o "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
}

phase=capacity
if want capacity; then
    start_server --api-key shared-key
    bench capacity shared-key --concurrency 32 --duration "$DURATION" --num-requests 20000
fi
capacity_rps=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['levels'][0]['summary']['request_throughput'])" "$OUT/capacity.json")
rate_a=$(python3 -c "print(round(0.3 * $capacity_rps, 3))")
rate_b=$(python3 -c "print(round(5 * $capacity_rps, 3))")
# A's reservation is exactly its offered load (the bar: served >= 95% of it).
input_tpm=$(python3 -c "print(int($rate_a * 60 * $INPUT_TOKENS ) + 1)")
output_tpm=$(python3 -c "print(int($rate_a * 60 * $OUTPUT_TOKENS ) + 1)")
cat > "$OUT/tenants.toml" <<TOML
[[tenants]]
name = "a"
api_key = "key-a"
tier = "provisioned"
input_tokens_per_minute = $input_tpm
output_tokens_per_minute = $output_tpm

[[tenants]]
name = "b"
api_key = "key-b"
tier = "on-demand"
TOML
echo "capacity ${capacity_rps} req/s; A at ${rate_a} req/s (reserved ${input_tpm} in / ${output_tpm} out tokens per minute); B at ${rate_b} req/s"

phase=alone
if want alone; then
    start_server --tenants "$OUT/tenants.toml"
    bench a-alone key-a --request-rate "$rate_a" --duration "$DURATION" --num-requests "$(count "$rate_a")" --seed 1
    curl -s "$URL/metrics" > "$OUT/metrics-alone.txt"
fi

phase=tenants
if want tenants; then
    start_server --tenants "$OUT/tenants.toml"
    bench b-tenants key-b --request-rate "$rate_b" --duration "$DURATION" --num-requests "$(count "$rate_b")" --seed 2 &
    b_pid=$!
    bench a-tenants key-a --request-rate "$rate_a" --duration "$DURATION" --num-requests "$(count "$rate_a")" --seed 1
    wait "$b_pid"
    curl -s "$URL/metrics" > "$OUT/metrics-tenants.txt"
fi

phase=fifo
if want fifo; then
    start_server --api-key shared-key
    bench b-fifo shared-key --request-rate "$rate_b" --duration "$DURATION" --num-requests "$(count "$rate_b")" --seed 2 &
    b_pid=$!
    bench a-fifo shared-key --request-rate "$rate_a" --duration "$DURATION" --num-requests "$(count "$rate_a")" --seed 1
    wait "$b_pid"
fi
stop_server

if [ -f "$OUT/a-alone.json" ] || [ -f "$OUT/summaries.json" ]; then
    python3 benches/tenants/summary.py "$OUT" "$input_tpm" "$output_tpm" "$DURATION" | tee "$OUT/summary.md"
fi
