#!/usr/bin/env bash
# Time from `inflight serve` start to a listener that answers `/health` (503 while
# the model loads) and to `/health` 200 (ready), over several cold starts; and the
# time `inflight generate` takes to its first token. Issue 19's bar: ready within
# 2 s, the 503 within 0.5 s, with the default model.
#
#   benches/startup/run.sh [OUT_DIR]      (RUNS=7; BIN=target/release/inflight)
#
# Each run starts a fresh server process on a free loopback port and polls
# `/health` every 5 ms; times are from just before the process is spawned. Writes
# runs.jsonl (one object per run) and summary.md (medians, min, max) to OUT_DIR.
# Extra serve flags go in SERVE_FLAGS. Needs a release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT="${1:-benches/results/$(date +%F)-startup}"
RUNS="${RUNS:-7}"
BIN="${BIN:-target/release/inflight}"
MODEL="${MODEL:-models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}"
SERVE_FLAGS="${SERVE_FLAGS:-}"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$OUT"

python3 - "$BIN" "$MODEL" "$RUNS" "$OUT" "$SERVE_FLAGS" <<'PY'
import http.client, json, os, platform, shlex, socket, statistics, subprocess, sys, time

bin_, model, runs, out, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], shlex.split(sys.argv[5])

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def health(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/health")
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except OSError:
        return None, None

def serve_once():
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([bin_, "serve", "--host", "127.0.0.1", "--port", str(port), "--model", model,
                          "--log", "warn", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_503 = ready = None
    body_503 = None
    try:
        while time.perf_counter() - t0 < 120:
            status, body = health(port)
            now = time.perf_counter() - t0
            if status == 503 and first_503 is None:
                first_503, body_503 = now, body.decode(errors="replace")
            if status == 200:
                ready = now
                break
            if p.poll() is not None:
                raise SystemExit(f"server exited with {p.returncode}")
            time.sleep(0.005)
    finally:
        p.terminate()
        p.wait()
    return {"first_503_s": first_503, "ready_s": ready, "body_503": body_503}

def generate_once():
    t0 = time.perf_counter()
    p = subprocess.Popen([bin_, "generate", "--model", model, "--prompt", "Hello", "--max-tokens", "8",
                          "--log", "warn"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = None
    while p.stdout.read(1):
        if first is None:
            first = time.perf_counter() - t0
    p.wait()
    return {"generate_first_byte_s": first, "generate_total_s": time.perf_counter() - t0}

records = []
with open(os.path.join(out, "runs.jsonl"), "w") as f:
    for i in range(runs):
        # Alternate the two kinds of start so drift on a shared machine hits both alike.
        r = {"run": i, **serve_once(), **generate_once()}
        records.append(r)
        f.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)

def row(name, key):
    xs = [r[key] for r in records if r[key] is not None]
    if not xs:
        return f"| {name} | – | – | – | 0 |"
    return f"| {name} | {statistics.median(xs):.3f} | {min(xs):.3f} | {max(xs):.3f} | {len(xs)} |"

host = platform.node()
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    cpu = platform.processor()
summary = "\n".join([
    f"# Start-up times ({time.strftime('%Y-%m-%d')})", "",
    f"Host: {host}, {cpu}, {os.cpu_count()} CPUs. Binary: `{bin_}`. Model: `{model}`.",
    f"Serve flags: `{' '.join(flags) or '(defaults)'}`. {runs} runs, seconds from spawn.", "",
    "| measure | median | min | max | runs |", "|---|---|---|---|---|",
    row("serve: first `/health` 503", "first_503_s"),
    row("serve: first `/health` 200 (ready)", "ready_s"),
    row("generate --prompt Hello: first output byte", "generate_first_byte_s"),
    row("generate --prompt Hello --max-tokens 8: exit", "generate_total_s"),
    "", f"503 body: `{next((r['body_503'] for r in records if r['body_503']), '')}`", "",
])
open(os.path.join(out, "summary.md"), "w").write(summary)
print(summary)
PY
