#!/usr/bin/env bash
# Offline checks of the deployment files: lints the Dockerfiles (hadolint), the
# CloudFormation templates (cfn-lint), the systemd unit (systemd-analyze verify) and
# the CloudWatch agent config. Needs no network, no Docker daemon, no AWS account.
#
#   python3 -m venv .venv-infra && .venv-infra/bin/pip install -r deploy/requirements-check.txt
#   PATH=$PWD/.venv-infra/bin:$PATH deploy/check-infra.sh
#
# Every check runs even after one fails, so one run reports everything; the exit
# status is non-zero when any failed or a required tool is missing. systemd-analyze
# is optional (not every machine has systemd); when absent that check is reported as
# skipped, not passed.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }
pass() { echo "ok:   $*"; }

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        fail "$1 not found on PATH (pip install -r deploy/requirements-check.txt)"
        return 1
    fi
}

# Dockerfiles. A .hadolint.yaml beside them, if one is ever needed, is honoured.
if need hadolint; then
    config=()
    [ -f deploy/docker/.hadolint.yaml ] && config=(--config deploy/docker/.hadolint.yaml)
    for f in deploy/docker/*.Dockerfile; do
        if hadolint "${config[@]}" "$f"; then pass "hadolint $f"; else fail "hadolint $f"; fi
    done
fi

# CloudFormation: errors and warnings both fail (cfn-lint exits non-zero on either).
if need cfn-lint; then
    for f in deploy/ec2/*.yaml deploy/multi-region/*.yaml; do
        if cfn-lint "$f"; then pass "cfn-lint $f"; else fail "cfn-lint $f"; fi
    done
fi

# The CloudWatch agent config is JSON, and the scaling policy's metric must be both
# exported by the server and selected by the agent, or the group never scales.
agent=deploy/ec2/cloudwatch-agent.json
if python3 -m json.tool "$agent" >/dev/null; then pass "json $agent"; else fail "json $agent"; fi
metric=inflight_requests_waiting
if grep -q "\"$metric\"" src/metrics.rs && grep -q "\^$metric\\$" "$agent" \
    && grep -q "MetricName: $metric" deploy/ec2/inf2-asg.yaml; then
    pass "$metric: exported (src/metrics.rs), scraped ($agent), scaled on (inf2-asg.yaml)"
else
    fail "$metric is not in all of src/metrics.rs, $agent and deploy/ec2/inf2-asg.yaml"
fi

# The unit's stop timeout must outlast the server's drain, or systemd SIGKILLs
# requests that were allowed to finish.
unit=deploy/systemd/inflight.service
drain=$(sed -n 's/^Environment=INFLIGHT_SHUTDOWN_TIMEOUT=\([0-9]*\)$/\1/p' "$unit")
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
if [ -n "$drain" ] && [ -n "$stop" ] && [ "$stop" -gt "$drain" ]; then
    pass "$unit: TimeoutStopSec=$stop > INFLIGHT_SHUTDOWN_TIMEOUT=$drain"
else
    fail "$unit: TimeoutStopSec (${stop:-unset}) must exceed INFLIGHT_SHUTDOWN_TIMEOUT (${drain:-unset})"
fi

# systemd unit. verify insists that ExecStart's binary exists; where inflight is not
# installed, a copy whose ExecStart names an existing executable is verified instead
# (everything else unchanged). Any message at all counts as a failure: verify reports
# unknown keys and bad values as warnings with exit status 0.
if command -v systemd-analyze >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit" | head -n 1)
    if [ -x "$exec_path" ]; then
        cp "$unit" "$tmp/inflight.service"
    else
        stand_in=$(type -P true)
        sed "s#^ExecStart=$exec_path#ExecStart=$stand_in#" "$unit" > "$tmp/inflight.service"
        echo "note: $exec_path is not installed here; verifying with ExecStart=$stand_in"
    fi
    out=$(systemd-analyze verify "$tmp/inflight.service" 2>&1)
    status=$?
    if [ "$status" -eq 0 ] && [ -z "$out" ]; then
        pass "systemd-analyze verify $unit"
    else
        echo "$out" >&2
        fail "systemd-analyze verify $unit"
    fi
else
    echo "skip: systemd-analyze not found; $unit not verified"
fi

if [ "$failed" -ne 0 ]; then
    echo "deploy/check-infra.sh: FAILED" >&2
    exit 1
fi
echo "deploy/check-infra.sh: all checks passed"
