#!/usr/bin/env bash
# The Neuron graphs (neuron/inflight_neuron/graphs.py) on the CPU against
# transformers' LlamaForCausalLM on the default model, and greedy decoding through
# them against the reference tokens (neuron/tests/). Not in CI: torch and
# transformers are large. Makes its own venv under target/neuron-graphs-venv
# (reinstalled when neuron/requirements-graphs.txt changes); extra arguments go
# to pytest (e.g. -k prefill).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/target/neuron-graphs-venv"
reqs="$repo/neuron/requirements-graphs.txt"
if ! cmp -s "$reqs" "$venv/.requirements" 2>/dev/null; then
    python3 -m venv "$venv"
    # From PyPI: torch there brings its CUDA libraries (~7 GB, unused here).
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/.requirements"
fi
cd "$repo/neuron"
exec "$venv/bin/python" -m pytest -q -s tests "$@"
