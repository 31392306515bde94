#!/usr/bin/env bash
# Accuracy of each activation precision (`--activations int8|int16|f32`, with each KV cache
# dtype, `--kv-cache-dtype f16|f32|fp8`) against the default model's weights dequantized to f32: first-position logits
# of the reference prompts (`../shared/reference/`, whose `transformers_f32` entries are
# transformers' float32 logits on those weights; llama.cpp's from the same file beside
# them), and the answer to "What is the capital of France?" (chat template, greedy).
#
#   benches/accuracy/run.sh [OUT_DIR]      (needs `cargo build --release`)
#   ACTS="int8 f32" KVS=fp8 benches/accuracy/run.sh DIR     (a subset of the runs)
#   ATTNS="f32 bf16" ACTS=int8 KVS=f16 benches/accuracy/run.sh DIR
#                                  (`--attention-precision` too; default: auto only)
# Deeper in a context: benches/accuracy/long_context.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT="${1:-benches/results/$(date +%F)-activations}"
BIN="${BIN:-target/release/inflight}"
MODEL="${MODEL:-models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}"
REF="${INFLIGHT_REFERENCE_DIR:-../shared/reference}/smollm2-135m-q4_1.json"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$OUT"
# The logits (1.2 MB a run) stay out of the results folder.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 -c '
import json, sys
ref = json.load(open(sys.argv[1]))
print(json.dumps({"sequences": [{"prompt": p["prompt_ids"]} for p in ref["prompts"]]}))
' "$REF" > "$WORK/input.json"

for acts in ${ACTS:-int8 int16 f32}; do
    for kv in ${KVS:-f16 f32 fp8}; do
        for attn in ${ATTNS:-auto}; do
            run="$acts-kv-$kv"
            [ "$attn" = auto ] || run="$run-attention-$attn"
            INFLIGHT_LOG=warn "$BIN" score --model "$MODEL" --input "$WORK/input.json" --greedy 1 \
                --activations "$acts" --kv-cache-dtype "$kv" --attention-precision "$attn" --output "$WORK/$run"
            INFLIGHT_LOG=warn "$BIN" generate --model "$MODEL" --chat --max-tokens 16 \
                --activations "$acts" --kv-cache-dtype "$kv" --attention-precision "$attn" \
                --prompt "What is the capital of France?" > "$WORK/$run.france.txt"
        done
    done
done
python3 benches/accuracy/compare.py "$REF" "$WORK" | tee "$OUT/summary.md"
