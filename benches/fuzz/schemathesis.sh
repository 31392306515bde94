#!/usr/bin/env bash
# A longer property-based run of the served /openapi.json by schemathesis than
# the test suite's (`openapi::schemathesis_finds_no_server_errors_…`): every
# operation, MAX_EXAMPLES cases each (default 100), against `inflight serve`
# with the real default model on loopback. Writes the log and a JUnit report to
# benches/results/<date>-fuzz/; exits non-zero on any failed check.
#
#   benches/fuzz/schemathesis.sh [MAX_EXAMPLES]
set -euo pipefail

examples=${1:-100}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
model=${INFLIGHT_TEST_MODEL:-models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
out=benches/results/$(date -u +%Y-%m-%d)-fuzz
mkdir -p "$out"

venv=target/openapi-venv
reqs=tests/python/openapi-requirements.txt
if ! cmp -s "$reqs" "$venv/.requirements"; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/.requirements"
fi

cargo build --release --bin inflight
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/tenants.toml" <<'EOF'
[[tenants]]
name = "schemathesis"
api_key = "sk-schemathesis"
tier = "on-demand"
max_tokens_per_request = 2
EOF
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A 64-token context and 2 output tokens a request on /v1/* keep every case cheap.
target/release/inflight serve --host 127.0.0.1 --port "$port" --model "$model" \
    --served-model-name test-model --kv-cache-gib 0.5 --max-context 64 \
    --tenants "$work/tenants.toml" --log warn 2>"$out/schemathesis-server.log" &
server=$!
for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.5
done

set +e
NO_COLOR=1 "$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --header 'Authorization: Bearer sk-schemathesis' \
    --max-examples "$examples" --seed 17 --workers 1 --request-timeout 120 \
    --suppress-health-check too_slow \
    --report junit --report-dir "$work" >"$out/schemathesis.log" 2>&1
rc=$?
set -e
cp "$work"/junit.xml "$out/schemathesis-junit.xml" 2>/dev/null || true
if grep -q panicked "$out/schemathesis-server.log"; then
    echo "the server panicked; see $out/schemathesis-server.log"
    rc=1
fi
tail -n 30 "$out/schemathesis.log"
exit $rc
