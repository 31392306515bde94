"""Real NEFFs for Inferentia2: each bucket's graph (`graphs.LlamaGraph`) traced
with torch-neuronx and compiled by neuronx-cc, with the weights and KV states as
inputs of the NEFF (shared by every bucket, written to the device once) and each
KV state aliased to its output.

NOT RUN HERE: the Neuron SDK's Python packages come only from AWS's repository
(`requirements-inf2.txt`), so this module has never been executed. What is
unverified, and how a mismatch would show:
- that `torch_neuronx.trace` accepts example inputs (not module parameters) as
  `input_output_aliases` keys. If it does not, make the KV states buffers of the
  module instead; the input order then changes and so must `graph_tensors`.
- that the NEFF names its tensors `input{i}` in example-input order and
  `output{j}` in result order (what torch-neuronx's metaneff writer does in the
  source we read, and NxD's convention; NEURON.md). The Rust backend checks every
  name, size and dtype against the manifest when it loads a NEFF and refuses a
  mismatch, so a wrong guess fails at load, not silently.
- that the NEFF lands at `<compiler_workdir>/graph.neff`.
- numerics of the bf16 graph on the device, and compile time and memory for the
  largest buckets.
"""

from pathlib import Path

# neuronx-cc flags for a decoder graph: what NEURON.md's "Compiling" section names.
COMPILER_ARGS = ["--target", "inf2", "--model-type", "transformer", "--auto-cast", "none", "-O2"]


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def write_weights(out: Path, weights: dict, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file

    t = torch_dtype(dtype)
    save_file({n: torch.from_numpy(w).to(t).contiguous() for n, w in sorted(weights.items())}, str(out / "model.safetensors"))


def example_inputs(entry: dict):
    """Zeros of every input's dtype and shape, in the manifest's order."""
    import torch

    dtypes = {"int32": torch.int32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return tuple(torch.zeros(t["shape"], dtype=dtypes[t["dtype"]]) for t in entry["inputs"])


def compile_graph(config: dict, weight_names: list, entry: dict, out: Path, workdir: Path) -> None:
    """Traces and compiles one graph into `out/<entry.neff>`. `entry` lists the
    tensors under their descriptive names (before `positional_names`)."""
    import shutil

    import torch_neuronx

    from .graphs import LlamaGraph

    inputs = example_inputs(entry)
    index = {t["name"]: i for i, t in enumerate(entry["inputs"])}
    aliases = {
        inputs[index[t["aliases"]]]: j for j, t in enumerate(entry["outputs"]) if t.get("aliases") is not None
    }
    graph_dir = workdir / entry["name"]
    torch_neuronx.trace(
        LlamaGraph(config, weight_names).eval(),
        inputs,
        compiler_workdir=str(graph_dir),
        compiler_args=COMPILER_ARGS,
        # The weights are example inputs here, not module parameters, so nothing
        # would be inlined anyway; the flag keeps it so if the module changes.
        inline_weights_to_neff=False,
        input_output_aliases=aliases,
    )
    neff = graph_dir / "graph.neff"
    if not neff.is_file():
        raise FileNotFoundError(f"torch_neuronx.trace left no {neff}; look in {graph_dir}")
    shutil.copyfile(neff, out / entry["neff"])
