#!/usr/bin/env bash
# Time to first token of one long prompt alone, for two or more inflight binaries
# in alternating rounds (a before/after A/B on a shared machine).
#
#   BINS="/tmp/inflight-before /tmp/inflight-after" ROUNDS=3 benches/peers/long-prompt.sh
#
# Each round starts each binary's server in turn (default flags: 512-token prefill
# chunks, f16 KV cache), sends NUM_REQUESTS prompts of exactly INPUT_TOKENS tokens one
# after another (unique words, so no prefix-cache hits), stops it, and prints the
# TTFTs; the last lines give each binary's median over all rounds. Settings
# (environment): BINS, ROUNDS (3), INPUT_TOKENS (7500), OUTPUT_TOKENS (2),
# NUM_REQUESTS (2), THREADS, MODEL_GGUF, SERVE_ARGS (extra `serve` flags).

source "$(dirname "$0")/common.sh"

read -ra bins <<< "${BINS:?BINS: the inflight binaries to compare}"
ROUNDS=${ROUNDS:-3}
INPUT_TOKENS=${INPUT_TOKENS:-7500}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-2}
NUM_REQUESTS=${NUM_REQUESTS:-2}
out=$PEERS_DIR/results/long-prompt-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"

server_pid=
cleanup() { [[ -n $server_pid ]] && stop_server "$server_pid"; server_pid=; }
trap cleanup EXIT

for round in $(seq "$ROUNDS"); do
    order=("${bins[@]}")
    if (( round % 2 == 0 )); then order=($(printf '%s\n' "${order[@]}" | tac)); fi
    for bin in "${order[@]}"; do
        port=$(free_port)
        name=$(basename "$bin")
        # shellcheck disable=SC2086
        "$bin" serve --host 127.0.0.1 --port "$port" --model "$MODEL_GGUF" \
            --served-model-name "$SERVED_NAME" --threads "$THREADS" --log warn ${SERVE_ARGS:-} \
            > "$out/$name-r$round.log" 2>&1 &
        server_pid=$!
        wait_ready "http://127.0.0.1:$port" "$server_pid" 300
        "$bin" bench --url "http://127.0.0.1:$port" --model "$SERVED_NAME" --concurrency 1 \
            --num-requests "$NUM_REQUESTS" --warmup 0 --input-tokens "$INPUT_TOKENS" \
            --output-tokens "$OUTPUT_TOKENS" --tokenizer "$MODEL_GGUF" --label "$name r$round" \
            --output "$out/$name-r$round.json" > "$out/$name-r$round.txt"
        cleanup
        ttfts=$("$PYTHON" - "$out/$name-r$round.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join("%.2f" % r["ttft_s"] for lvl in d["levels"] for r in lvl["records"] if r.get("ttft_s")))
PY
)
        log "round $round $name: TTFT s: $ttfts"
        echo "$name $ttfts" >> "$out/ttft.txt"
    done
done
"$PYTHON" - "$out/ttft.txt" <<'PY'
import statistics, sys
by = {}
for line in open(sys.argv[1]):
    name, *xs = line.split()
    by.setdefault(name, []).extend(float(x) for x in xs)
for name, xs in by.items():
    print(f"{name}: median TTFT {statistics.median(xs):.2f} s over {len(xs)} requests ({' '.join(f'{x:.2f}' for x in xs)})")
PY
log "results: $out"
