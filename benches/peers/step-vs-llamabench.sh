#!/usr/bin/env bash
# The kernels issue's bars in one sitting: inflight's engine step (`cargo bench
# --bench step`), llama.cpp's `llama-bench` (prefill, one-sequence decode) and its
# `llama-batched-bench` (decode of 1 and 16 sequences, 128-token prompts) on the same
# GGUF and thread count, alternating, ROUNDS times; prints every round and the medians.
#
#   benches/peers/step-vs-llamabench.sh            # ROUNDS=5
#
# Settings (environment): ROUNDS (5), THREADS (all cores), LLAMABENCH_ARGS (extra
# llama-bench flags, e.g. `--repack 0` where its AMX path faults; see benches/README.md).
# Needs benches/peers/setup-llamacpp.sh first.

source "$(dirname "$0")/common.sh"

ROUNDS=${ROUNDS:-5}
[[ -x $LLAMA_BENCH ]] || { log "run setup-llamacpp.sh first"; exit 1; }
out=$PEERS_DIR/step-vs-llamabench/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
criterion=${CARGO_TARGET_DIR:-$REPO/target}/criterion/step

(cd "$REPO" && cargo bench --bench step --no-run --quiet)
for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS: cargo bench --bench step"
    (cd "$REPO" && INFLIGHT_THREADS=$THREADS INFLIGHT_BENCH_MODEL=$MODEL_GGUF cargo bench --bench step --quiet) \
        > "$out/step-r$round.txt" 2>&1
    "$PYTHON" - "$criterion" > "$out/step-r$round.json" <<'EOF'
import json, os, sys
root = sys.argv[1]
res = {}
for name in sorted(os.listdir(root)):
    est = os.path.join(root, name, "new", "estimates.json")
    if not os.path.exists(est):
        continue
    ns = json.load(open(est))["median"]["point_estimate"]
    n = json.load(open(os.path.join(root, name, "new", "benchmark.json")))["throughput"]["Elements"]
    res[name] = n / (ns / 1e9)
print(json.dumps(res))
EOF
    log "round $round/$ROUNDS: llama-bench"
    # shellcheck disable=SC2086
    "$LLAMA_BENCH" -m "$MODEL_GGUF" -t "$THREADS" -p 128,512 -n 128 -r 3 -o json ${LLAMABENCH_ARGS:-} \
        > "$out/llamabench-r$round.json" 2> "$out/llamabench-r$round.log"
    if [[ -x $LLAMA_BATCHED_BENCH ]]; then
        log "round $round/$ROUNDS: llama-batched-bench"
        # 128-token prompts, then 32 decode steps of 1 and of 16 sequences: contexts of
        # 128-160 positions, near the step bench's 128.
        "$LLAMA_BATCHED_BENCH" -m "$MODEL_GGUF" -t "$THREADS" -c 4096 -b 2048 -ub 512 \
            -npp 128 -ntg 32 -npl 1,16 --output-format jsonl \
            > "$out/batched-r$round.jsonl" 2> "$out/batched-r$round.log"
    fi
done

"$PYTHON" - "$out" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ours = [json.load(open(f"{out}/step-r{r}.json")) for r in range(1, rounds + 1)]
peer = []
for r in range(1, rounds + 1):
    fig = {}
    for t in json.load(open(f"{out}/llamabench-r{r}.json")):
        key = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
        fig[key] = t["avg_ts"]
    peer.append(fig)
med = lambda xs: statistics.median(xs)
print(f"{rounds} rounds, tokens/s (median; every round in brackets)\n")
print("| figure | inflight | llama.cpp | ratio |")
print("|---|---:|---:|---:|")
pairs = [("prefill_128", "pp128"), ("prefill_512", "pp512"), ("decode_batch_1", "tg128")]
for ours_key, peer_key in pairs:
    a = [o[ours_key] for o in ours]
    b = [p[peer_key] for p in peer]
    print(f"| {ours_key} vs {peer_key} | {med(a):.0f} {[round(x) for x in a]} | "
          f"{med(b):.0f} {[round(x) for x in b]} | {med(a) / med(b):.2f}x |")
for key in ("decode_batch_8", "decode_batch_16", "decode_batch_32"):
    a = [o[key] for o in ours if key in o]
    if a:
        ratio = med(a) / med([o["decode_batch_1"] for o in ours])
        print(f"| {key} | {med(a):.0f} {[round(x) for x in a]} | | {ratio:.2f}x our batch 1 |")

# llama-batched-bench: aggregate decode tokens/s (speed_tg) at 1 and 16 sequences.
batched = {}
for r in range(1, rounds + 1):
    try:
        lines = open(f"{out}/batched-r{r}.jsonl").read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        if line.startswith("{"):
            t = json.loads(line)
            batched.setdefault(t["pl"], []).append(t["speed_tg"])
if 1 in batched and 16 in batched:
    ours16 = med([o["decode_batch_16"] for o in ours])
    ours1 = med([o["decode_batch_1"] for o in ours])
    b1, b16 = med(batched[1]), med(batched[16])
    print("\nDecode, aggregate tokens/s: batch 16 against batch 1 (llama-batched-bench, "
          "128-token prompts, 32 steps)\n")
    print("| | batch 1 | batch 16 | batch 16 / batch 1 |")
    print("|---|---:|---:|---:|")
    print(f"| inflight (step bench) | {ours1:.0f} | {ours16:.0f} | {ours16 / ours1:.2f}x |")
    print(f"| llama.cpp | {b1:.0f} {[round(x) for x in batched[1]]} | "
          f"{b16:.0f} {[round(x) for x in batched[16]]} | {b16 / b1:.2f}x |")
EOF
log "raw results: $out"
