"""Builds inflight's Neuron artifact folders (manifest v1, `neuron/README.md`).

Modules: `checkpoint` (a llama checkpoint as HF config + f32 weights), `manifest`
(the graphs' tensors and the manifest), `emulator` (stand-in NEFFs for the libnrt
emulator), `graphs` (the prefill and decode graphs in plain PyTorch), `inf2`
(tracing and compiling them with the Neuron SDK). Only `graphs` and `inf2` need
torch, and they import it themselves.
"""
