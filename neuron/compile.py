#!/usr/bin/env python3
"""Compiles a llama checkpoint into an inflight Neuron artifact folder (manifest
v1, `neuron/README.md`):

    python neuron/compile.py MODEL OUT --prefill 128,512 --decode 1,4,8 --slots 8 \\
        --max-context 1024 [--prefill-batch 1] [--tp 1] [--target inf2|emulator] \\
        [--dtype bf16|f32] [--inflight PATH] [--manifest-only]

MODEL is a Hugging Face llama folder (config.json, *.safetensors, tokenizer.json)
or a GGUF file (dequantized to f32; its tokenizer exported by the inflight
binary, found by --inflight, $INFLIGHT_BIN, PATH or this checkout's target/).

--target emulator writes the libnrt emulator's stand-in NEFFs (f32; needs only
numpy, safetensors and gguf: `requirements.txt`). --target inf2 (the default)
traces and compiles each bucket's graph with the Neuron SDK
(`requirements-inf2.txt`, from AWS's repository; never run on our machines).
--manifest-only writes config, tokenizer and manifest without weights or NEFFs
(no torch needed), to check what a target would write.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inflight_neuron import checkpoint as ck  # noqa: E402
from inflight_neuron import emulator, model_files  # noqa: E402
from inflight_neuron import manifest as mf  # noqa: E402

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "f32": "float32", "float32": "float32"}


def number_list(text: str) -> tuple:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}") from None
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(prog="compile.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="Hugging Face llama folder or GGUF file")
    p.add_argument("out", type=Path, help="artifact folder to write")
    p.add_argument("--prefill", type=number_list, required=True, help="prefill lengths, e.g. 128,512")
    p.add_argument("--decode", type=number_list, required=True, help="decode batch sizes, e.g. 1,4,8")
    p.add_argument("--prefill-batch", type=int, default=1, help="sequences per prefill execution")
    p.add_argument("--slots", type=int, required=True, help="KV slots (sequences in flight)")
    p.add_argument("--max-context", type=int, required=True, help="tokens one KV slot holds")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel degree (only 1 is implemented)")
    p.add_argument("--target", choices=("inf2", "emulator"), default="inf2")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights and KV state (inf2: bf16, emulator: f32)")
    p.add_argument("--inflight", help="inflight binary, to export a GGUF's tokenizer")
    p.add_argument("--manifest-only", action="store_true", help="no weights or NEFFs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype or ("f32" if args.target == "emulator" else "bf16")]
    if args.target == "emulator" and dtype != "float32":
        return fail("the emulator's stand-in graphs run in f32: use --dtype f32 with --target emulator")
    if args.tp != 1:
        # The graphs and the Rust backend run one NeuronCore (no nrt_load_collectives yet).
        return fail(f"--tp {args.tp}: tensor parallel > 1 is not implemented (graphs or backend); use --tp 1")
    buckets = mf.Buckets(
        prefill=args.prefill,
        decode=args.decode,
        prefill_batch=args.prefill_batch,
        kv_slots=args.slots,
        max_context=args.max_context,
    )
    try:
        config = ck.read_config(args.model) if args.manifest_only else None
        model = None if args.manifest_only else ck.load(args.model)
        config = config or model.config
        mf.check_buckets(config, buckets)
    except (ck.CheckpointError, ValueError, FileNotFoundError, KeyError) as e:
        return fail(str(e))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_files.write_config(out, config)
    try:
        model_files.write_tokenizer(args.model, out, args.inflight)
    except (FileNotFoundError, RuntimeError) as e:
        return fail(str(e))

    graphs = []
    workdir = None
    if args.target == "inf2" and not args.manifest_only:
        from inflight_neuron import inf2

        inf2.write_weights(out, model.weights, dtype)
        workdir = tempfile.TemporaryDirectory(prefix="inflight-neuron-")
    elif not args.manifest_only:
        model_files.write_weights_f32(out, model.weights)

    for shape in mf.graph_shapes(buckets):
        inputs, outputs = mf.graph_tensors(config, shape, buckets, dtype, args.tp)
        entry = mf.graph_entry(shape, inputs, outputs)
        if args.target == "emulator":
            if not args.manifest_only:
                neff = emulator.stand_in_neff(entry, config, buckets.kv_slots, buckets.max_context)
                (out / entry["neff"]).write_text(json.dumps(neff))
            graphs.append(entry)
        else:
            if not args.manifest_only:
                print(f"compiling {entry['name']} ...", file=sys.stderr)
                inf2.compile_graph(config, ck.weight_names(config), entry, out, Path(workdir.name))
            graphs.append(mf.graph_entry(shape, *mf.positional_names(inputs, outputs)))
    mf.write(out, mf.manifest(buckets, graphs, args.tp))
    print(out)
    return 0


def fail(message: str) -> int:
    print(f"compile.py: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
