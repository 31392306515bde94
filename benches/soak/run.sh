#!/usr/bin/env bash
# The soak of issue 17: open-loop Poisson load at 2x the server's measured
# capacity for 30 minutes, two provisioned tenants and an on-demand flood, on the
# default model. Checks that the server never crashes, that its RSS stays bounded
# (sampled every 10 s, plotted), that every admitted request completed or failed
# with a documented status, and that none ran past --request-timeout.
#
#   benches/soak/run.sh [OUT_DIR]            (DURATION=1800 by default)
#
# Settings (environment): DURATION, CAPACITY_RPS (skip the capacity phase),
# REQUEST_TIMEOUT (120), MAX_QUEUE_WAIT (30), INPUT_TOKENS (256), OUTPUT_TOKENS (64),
# BIN, MODEL, PORT. Needs a release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT="${1:-benches/results/$(date +%F)-soak}"
DURATION="${DURATION:-1800}"
BIN="${BIN:-target/release/inflight}"
MODEL="${MODEL:-models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}"
INPUT_TOKENS="${INPUT_TOKENS:-256}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-64}"
REQUEST_TIMEOUT="${REQUEST_TIMEOUT:-120}"
MAX_QUEUE_WAIT="${MAX_QUEUE_WAIT:-30}"
PORT="${PORT:-18441}"
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

server_pid=""
sampler_pid=""
cleanup() {
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

start_server() { # log-name extra serve flags...
    local name="$1"
    shift
    "$BIN" serve --model "$MODEL" --served-model-name m --port "$PORT" --log warn "$@" > "$OUT/server-$name.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 120); do
        curl -sf "$URL/health" > /dev/null && return 0
        sleep 0.5
    done
    echo "server did not become ready; see $OUT/server-$name.log" >&2
    exit 1
}

bench() { # name key extra-flags...
    local name="$1" key="$2"
    shift 2
    "$BIN" bench --url "$URL" --model m --api-key "$key" --tokenizer "$MODEL" \
        --input-tokens "$INPUT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --warmup 0 \
        --timeout "$((REQUEST_TIMEOUT + 60))" --label "$name" -o "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
}

if [ -z "${CAPACITY_RPS:-}" ]; then
    start_server capacity --api-key k
    bench capacity k --concurrency 32 --duration 120 --num-requests 5000
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
    CAPACITY_RPS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['levels'][0]['summary']['request_throughput'])" "$OUT/capacity.json")
fi
rate() { python3 -c "print(round($1 * $CAPACITY_RPS, 3))"; }
# Requests for an open-loop rate over DURATION, with room for Poisson's spread.
count() { python3 -c "import math; print(math.ceil($1 * $DURATION * 1.5) + 50)"; }
rate_p=$(rate 0.2)
rate_flood=$(rate 1.6)
# Each provisioned tenant reserves its offered load.
in_tpm=$(python3 -c "print(int($rate_p * 60 * $INPUT_TOKENS) + 1)")
out_tpm=$(python3 -c "print(int($rate_p * 60 * $OUTPUT_TOKENS) + 1)")
cat > "$OUT/tenants.toml" <<TOML
[[tenants]]
name = "p1"
api_key = "key-p1"
tier = "provisioned"
input_tokens_per_minute = $in_tpm
output_tokens_per_minute = $out_tpm

[[tenants]]
name = "p2"
api_key = "key-p2"
tier = "provisioned"
input_tokens_per_minute = $in_tpm
output_tokens_per_minute = $out_tpm

[[tenants]]
name = "flood"
api_key = "key-flood"
tier = "on-demand"
TOML
echo "capacity $CAPACITY_RPS req/s; p1, p2 at $rate_p req/s each; flood at $rate_flood req/s; $DURATION s" | tee "$OUT/setup.txt"

start_server soak --tenants "$OUT/tenants.toml" --request-timeout "$REQUEST_TIMEOUT" --max-queue-wait "$MAX_QUEUE_WAIT"
# RSS and the server's own gauges every 10 s.
(
    echo "t_s,rss_kib,running,waiting"
    t0=$(date +%s)
    while kill -0 "$server_pid" 2>/dev/null; do
        rss=$(ps -o rss= -p "$server_pid" | tr -d ' ')
        gauges=$(curl -s --max-time 5 "$URL/metrics" | awk '/^inflight_requests_running /{r=$2} /^inflight_requests_waiting /{w=$2} END{print r+0 "," w+0}')
        echo "$(( $(date +%s) - t0 )),$rss,$gauges"
        sleep 10
    done
) > "$OUT/rss.csv" &
sampler_pid=$!

bench flood key-flood --request-rate "$rate_flood" --duration "$DURATION" --num-requests "$(count "$rate_flood")" --seed 3 &
flood=$!
bench p1 key-p1 --request-rate "$rate_p" --duration "$DURATION" --num-requests "$(count "$rate_p")" --seed 1 &
p1=$!
bench p2 key-p2 --request-rate "$rate_p" --duration "$DURATION" --num-requests "$(count "$rate_p")" --seed 2
wait "$p1" "$flood"

alive=yes
kill -0 "$server_pid" 2>/dev/null || alive=no
curl -s "$URL/metrics" > "$OUT/metrics-end.txt" || true
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=""
echo "server alive at the end: $alive; exit status after SIGTERM: $status" | tee -a "$OUT/setup.txt"

python3 benches/soak/summary.py "$OUT" "$REQUEST_TIMEOUT" | tee "$OUT/summary.md"
