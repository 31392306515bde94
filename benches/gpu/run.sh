#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one command: random-weight
# checkpoints (SmolLM2-135M and Llama-3.1-8B shapes), teacher-forced parity
# against transformers (and the CPU backend), 16 concurrent streams against the
# same prompts alone, `inflight bench` at concurrency 1/16/64, and the PyTorch
# anchor. Every stage is bounded by what is left of BUDGET_S.
#
#   benches/gpu/run.sh            # everything below, in this order, until BUDGET_S runs out
#   benches/gpu/run.sh inflight   # checkpoints, parity, consistency, inflight bench
#   benches/gpu/run.sh anchor     # the PyTorch anchor: compiled (static cache), then eager
#
# Needs: the binary built with `--features cuda` (INFLIGHT_BIN; else
# $WORK/inflight, unpacked from .gpu/inflight.xz when missing), SmolLM2's tokenizer files (TOKENIZER_DIR, or
# .gpu/tokenizer: `inflight models export-tokenizer smollm2-135m-instruct-q4_1
# --out .gpu/tokenizer`), python3 with torch and transformers. Results go to
# $OUT (default /tmp/inflight-gpu-out): log.txt, summary.jsonl, bench-*.json.
# Knobs: BUDGET_S (seconds for the whole run, default 560), LEVELS (bench
# concurrencies, default 1,16,64), BENCH_LEVEL_S (seconds per level, default 10),
# PARITY_8B=0 (skip the 8B shape's parity).
set -u
mode=${1:-all}
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/inflight-gpu-out}
WORK=${WORK:-/tmp/inflight-gpu}
TOK=${TOKENIZER_DIR:-.gpu/tokenizer}
BIN=${INFLIGHT_BIN:-$WORK/inflight}
mkdir -p "$OUT" "$WORK"
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
log=$OUT/log.txt
summary=$OUT/summary.jsonl
cu13=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:${cu13}:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1 INFLIGHT_LOG=${INFLIGHT_LOG:-warn}

# GET a URL (curl may be missing on the GPU image; python3 is not).
get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null; }
served_name() { get "http://127.0.0.1:$1/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])'; }
left() { echo $(( deadline - $(date +%s) )); }
say() { echo "[$(date +%T) $(left)s left] $*" | tee -a "$log"; }
# stage NAME CMD...: runs CMD within the time left, its output appended to the log.
stage() {
    local name=$1; shift
    local t; t=$(left)
    if [ "$t" -lt 15 ]; then say "SKIP $name: out of time"; return 99; fi
    say "BEGIN $name"
    timeout "$t" "$@" >> "$log" 2>&1
    local rc=$?
    say "END $name rc=$rc"
    return $rc
}
# json NAME CMD...: like stage, and the command's last stdout line goes to summary.jsonl.
json() {
    local name=$1; shift
    local t; t=$(left)
    if [ "$t" -lt 15 ]; then say "SKIP $name: out of time"; return 99; fi
    say "BEGIN $name"
    timeout "$t" "$@" > "$WORK/$name.out" 2>> "$log"
    local rc=$?
    cat "$WORK/$name.out" >> "$log"
    grep '^{' "$WORK/$name.out" | sed "s/^/{\"stage\": \"$name\", \"result\": /; s/\$/}/" >> "$summary"
    say "END $name rc=$rc: $(tail -c 600 "$WORK/$name.out")"
    return $rc
}

server_pid=
serve() { # serve MODEL_DIR PORT
    INFLIGHT_LOG=warn,inflight::backend::cuda=debug \
        "$BIN" serve --backend cuda --model "$1" --port "$2" --max-batch-tokens 4096 --max-running 64 \
        >> "$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 600); do
        get "http://127.0.0.1:$2/health" > /dev/null && return 0
        kill -0 $server_pid 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
stop() { [ -n "$server_pid" ] && kill $server_pid 2>/dev/null && wait $server_pid 2>/dev/null; server_pid=; }
trap stop EXIT

bench() { # bench NAME MODEL_DIR PORT
    local name=$1 dir=$2 port=$3 served
    served=$(served_name "$port")
    stage "bench-$name" "$BIN" bench --url "http://127.0.0.1:$port" --model "$served" \
        --concurrency "${LEVELS:-1,16,64}" --input-tokens 256 --output-tokens 128 --num-requests 2000 \
        --duration "${BENCH_LEVEL_S:-10}" --warmup 4 --tokenizer "$dir/tokenizer.json" \
        --hardware "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" \
        --label "inflight cuda $name" --output "$OUT/bench-$name.json"
    # Mean engine step time and batch size over the whole run, from the server.
    get "http://127.0.0.1:$port/metrics" | grep -E '^inflight_(step_duration_seconds|batch_size)_(sum|count)' \
        | tee -a "$log"
}

if [ "$mode" = inflight ] || [ "$mode" = all ]; then
    if [ ! -x "$BIN" ]; then
        python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
            .gpu/inflight.xz "$BIN" && chmod +x "$BIN"
    fi
    say "$(nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader)"
    "$BIN" --version >> "$log" 2>&1 || { say "the binary does not start"; ldd "$BIN" | tee -a "$log"; exit 1; }
    stage ckpt-smollm2 python3 "$here/make_checkpoint.py" --shape smollm2 --tokenizer "$TOK" --out "$WORK/smollm2"
    # The 8B checkpoint is written while the small model's checks run.
    python3 "$here/make_checkpoint.py" --shape llama8b --tokenizer "$TOK" --out "$WORK/llama8b" \
        > "$WORK/ckpt-8b.out" 2>&1 &
    ckpt8b=$!

    stage score-smollm2-cpu "$BIN" score --backend cpu --model "$WORK/smollm2" --input "$here/prompts.json" \
        --greedy 32 --output "$WORK/smollm2-cpu"
    if ! stage score-smollm2-cuda "$BIN" score --backend cuda --model "$WORK/smollm2" \
        --input "$WORK/smollm2-cpu.json" --output "$WORK/smollm2-cuda"; then
        say "the CUDA backend failed its first step; stopping here"; kill $ckpt8b; exit 1
    fi
    json parity-smollm2 python3 "$here/parity.py" --model "$WORK/smollm2" \
        --score cpu="$WORK/smollm2-cpu" --score cuda="$WORK/smollm2-cuda"
    wait $ckpt8b; cat "$WORK/ckpt-8b.out" >> "$log"

    if serve "$WORK/smollm2" 8301; then
        json consistency-smollm2 python3 "$here/consistency.py" --url http://127.0.0.1:8301 \
            --model "$(served_name 8301)"
        bench smollm2 "$WORK/smollm2" 8301
    else
        say "server (smollm2) did not become healthy"
    fi
    stop

    [ "${PARITY_8B:-1}" = 1 ] && stage score-llama8b-cuda "$BIN" score --backend cuda --model "$WORK/llama8b" --input "$here/prompts.json" \
        --greedy 32 --output "$WORK/llama8b-cuda"
    [ "${PARITY_8B:-1}" = 1 ] && json parity-llama8b python3 "$here/parity.py" --model "$WORK/llama8b" \
        --score cuda="$WORK/llama8b-cuda"
    if serve "$WORK/llama8b" 8302; then
        bench llama8b "$WORK/llama8b" 8302
    else
        say "server (llama8b) did not become healthy"
    fi
    stop
fi

if [ "$mode" = anchor ] || [ "$mode" = all ]; then
    for shape in smollm2 llama8b; do
        [ -f "$WORK/$shape/model.safetensors" ] || stage "ckpt-$shape" python3 "$here/make_checkpoint.py" \
            --shape "$shape" --tokenizer "$TOK" --out "$WORK/$shape"
    done
    # The compiled anchor first (it is the one to beat), most telling rows first.
    for spec in llama8b:1 llama8b:64 smollm2:64 smollm2:1 llama8b:16 smollm2:16; do
        json "anchor-static-${spec%%:*}-b${spec##*:}" python3 "$here/anchor.py" --model "$WORK/${spec%%:*}" \
            --mode static --batch "${spec##*:}"
    done
    json anchor-eager-llama8b python3 "$here/anchor.py" --model "$WORK/llama8b" --mode eager --batch 1 --batch 64
fi
say "done"
