"""Shared fixtures: the default model (dequantized from its GGUF by our own
loader) as torch weights, and transformers' LlamaForCausalLM on the same weights."""

import json
import os
import sys
from pathlib import Path

import pytest

NEURON_DIR = Path(__file__).resolve().parents[1]
REPO = NEURON_DIR.parent
sys.path.insert(0, str(NEURON_DIR))

DEFAULT_GGUF = REPO / "models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE = Path(os.environ.get("INFLIGHT_REFERENCE_DIR", REPO.parent / "shared/reference")) / "smollm2-135m-q4_1.json"


@pytest.fixture(scope="session")
def checkpoint():
    from inflight_neuron import checkpoint

    if not DEFAULT_GGUF.is_file():
        pytest.fail(f"the default model is not at {DEFAULT_GGUF} (inflight models pull smollm2-135m-instruct-q4_1)")
    return checkpoint.load(DEFAULT_GGUF)


@pytest.fixture(scope="session")
def torch_weights(checkpoint):
    import torch

    return {name: torch.from_numpy(w) for name, w in checkpoint.weights.items()}


@pytest.fixture(scope="session")
def hf_model(checkpoint, torch_weights):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**checkpoint.config, attn_implementation="eager")).eval()
    missing, unexpected = model.load_state_dict(torch_weights, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    torch.set_grad_enabled(False)
    return model


@pytest.fixture(scope="session")
def reference():
    return json.loads(REFERENCE.read_text())
