#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 300) and writes a summary
# (executions, coverage, corpus, crashes) to benches/results/<date>-fuzz/.
#
#   benches/fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seed
# corpora are made here from the real default model (its chat template, the first
# 64 KiB of its GGUF header) plus a few hand-picked inputs; corpora and crash
# artifacts live under target/fuzz/ and are kept between runs. A crashing input
# stops that target's run and is listed in the summary: copy it into a unit test
# before fixing it. chat_template runs in libFuzzer's fork mode with -ignore_ooms:
# memory is bounded by the server's template workers, not in process, so an
# out-of-memory input is counted (and kept as oom-*) but does not stop the run.
set -euo pipefail

secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_json chat_template gguf_header)

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
model=${INFLIGHT_TEST_MODEL:-models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || { echo "no model at $model (set INFLIGHT_TEST_MODEL)" >&2; exit 1; }
export INFLIGHT_TEST_MODEL=$root/$model
[ "${model:0:1}" = / ] && export INFLIGHT_TEST_MODEL=$model
work=target/fuzz
out=benches/results/$(date -u +%Y-%m-%d)-fuzz
mkdir -p "$out"

seed() { # seed TARGET NAME  (content on stdin)
    mkdir -p "$work/corpus/$1"
    cat >"$work/corpus/$1/seed-$2"
}

# request_json: the first byte picks the endpoint (even: chat, odd: completions)
# and bit 1 a tenant with a per-request cap.
printf '\0{"messages":[{"role":"user","content":"Hello"}],"max_tokens":8}' | seed request_json chat
printf '\2{"model":"test-model","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"n":2,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"seed":-3,"stop":["\\n","."],"logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true}}' | seed request_json chat-full
printf '\1{"prompt":"Once upon a time","max_tokens":16,"echo":true}' | seed request_json completion
printf '\1{"prompt":["a","b c"],"logprobs":2,"stop":"x","presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1}' | seed request_json completion-list
printf '\3{"prompt":[[1,2,3],[49151]],"max_completion_tokens":4,"ignore_eos":true}' | seed request_json completion-ids

# chat_template: the real model's template, and templates that try to run for ever,
# recurse, or print without end (a NUL separates the template from the message).
python3 - "$model" "$work/corpus/chat_template/seed-model" <<'EOF'
import struct, sys
head = open(sys.argv[1], "rb").read(8 << 20)
key = b"tokenizer.chat_template"
at = head.find(key) + len(key)
kind, n = struct.unpack("<IQ", head[at:at + 12])
assert kind == 8, "the chat template is a GGUF string"
import os
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
open(sys.argv[2], "wb").write(head[at + 12:at + 12 + n] + b"\0Tell me a story.")
EOF
printf '{%% for i in range(100000) %%}{%% for j in range(100000) %%}{{ i }}{%% endfor %%}{%% endfor %%}' | seed chat_template loops
printf '{%% macro f(n) %%}{{ f(n + 1) }}{%% endmacro %%}{{ f(0) }}' | seed chat_template recursion
printf '{%% for m in messages %%}{{ (m.content ~ "x") * 1000000 }}{%% endfor %%}\0abc' | seed chat_template output
printf '{%% set ns = namespace(s="ab") %%}{%% for i in range(30) %%}{%% set ns.s = ns.s ~ ns.s %%}{%% endfor %%}{{ ns.s|length }}' | seed chat_template doubling
printf '{{ messages[0].content.strip().split(" ")|join("-")|upper }}{{ raise_exception("no") if messages|length > 5 }}\0 a b ' | seed chat_template methods

# gguf_header: the real header's first 64 KiB (metadata as far as the vocabulary)
# and a complete minimal llama GGUF with a tokenizer.
head -c 65536 "$model" | seed gguf_header model-head
python3 - "$work/corpus/gguf_header/seed-tiny" <<'EOF'
import struct, sys
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
def kv(key, kind, payload): return s(key) + struct.pack("<I", kind) + payload
U32, STR, ARR, F32, BOOL = 4, 8, 9, 6, 7
def strs(xs): return struct.pack("<IQ", STR, len(xs)) + b"".join(s(x) for x in xs)
kvs = [
    kv("general.architecture", STR, s("llama")),
    kv("llama.embedding_length", U32, struct.pack("<I", 64)),
    kv("llama.feed_forward_length", U32, struct.pack("<I", 128)),
    kv("llama.block_count", U32, struct.pack("<I", 2)),
    kv("llama.attention.head_count", U32, struct.pack("<I", 4)),
    kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5)),
    kv("tokenizer.ggml.model", STR, s("gpt2")),
    kv("tokenizer.ggml.pre", STR, s("smollm")),
    kv("tokenizer.ggml.tokens", ARR, strs(["<s>", "a", "b", "ab", "\u0120", "\u0120ab"])),
    kv("tokenizer.ggml.merges", ARR, strs(["a b", "\u0120 ab"])),
    kv("tokenizer.ggml.token_type", ARR, struct.pack("<IQ", 5, 1) + struct.pack("<i", 3)),
    kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 0)),
    kv("tokenizer.ggml.add_bos_token", BOOL, b"\0"),
    kv("tokenizer.chat_template", STR, s("{% for m in messages %}{{ m.content }}{% endfor %}")),
]
tensor = s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 64, 6) + struct.pack("<IQ", 0, 0)
data = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs)) + b"".join(kvs) + tensor
data += b"\0" * (-len(data) % 32) + b"\0" * (64 * 6 * 4)
open(sys.argv[1], "wb").write(data)
EOF

{
    echo "# Fuzzing, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "\`benches/fuzz/run.sh $secs\` on $(nproc) cores ($(uname -m)), $(cargo +nightly --version)."
    echo
    echo "| target | seconds | executions | exec/s | coverage (cov) | features (ft) | corpus | peak RSS MiB | crashes | out of memory |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
} >"$out/summary.md"

stamp=$work/.run-start
touch "$stamp"
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    log=$out/$t.log
    echo "== $t: $secs s"
    extra=()
    [ "$t" != chat_template ] || extra=(-fork=1 -ignore_ooms=1)
    set +e
    cargo +nightly fuzz run --fuzz-dir benches/fuzz -O "$t" "$work/corpus/$t" -- "${extra[@]}" \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -max_len=131072 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" >"$log.full" 2>&1
    rc=$?
    set -e
    # The full log holds every new-coverage line; keep its head and tail.
    { head -n 40 "$log.full"; echo "[...]"; tail -n 40 "$log.full"; } >"$log"
    rm -f "$log.full"
    stat() { grep -o "stat::$1: *[0-9]*" "$log" | grep -o '[0-9]*$' | tail -n 1 || true; }
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' <<<"$last" | cut -d' ' -f2 || true)
    crashes=$(find "$work/artifacts/$t" -type f -newer "$stamp" ! -name 'oom-*' | wc -l)
    ooms=$(find "$work/artifacts/$t" -type f -newer "$stamp" -name 'oom-*' | wc -l)
    echo "| $t | $secs | $(stat number_of_executed_units) | $(stat average_exec_per_sec) | $cov | $ft | $corp | $(stat peak_rss_mb) | $crashes (exit $rc) | $ooms |" >>"$out/summary.md"
    if [ "$crashes" -gt 0 ] || [ $rc -ne 0 ]; then
        status=1
        find "$work/artifacts/$t" -type f -newer "$stamp" ! -name 'oom-*' -printf '  - %p\n' >>"$out/crashes.txt"
    fi
done
cat "$out/summary.md"
[ ! -f "$out/crashes.txt" ] || { echo "crashing inputs:"; cat "$out/crashes.txt"; }
exit $status
