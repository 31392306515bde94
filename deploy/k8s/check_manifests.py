#!/usr/bin/env python3
"""Checks what kubernetes-validate cannot, on a rendered overlay:

- the ServiceMonitor (a CRD, unknown to kubernetes-validate, which only warns)
  against a hand-written JSON schema of the fields used here, taken from the
  prometheus-operator ServiceMonitor CRD (monitoring.coreos.com/v1): it rejects
  unknown fields, so a new field needs adding below;
- prometheus-adapter/rules.yaml against the adapter's config format
  (kubernetes-sigs/prometheus-adapter docs/config.md);
- the wiring between objects: the HPA's metrics are served by an adapter rule, the
  ServiceMonitor selects the Service and names one of its ports, the Service and
  PDB select the pods, and the shutdown timings nest (preStop + --shutdown-timeout
  < terminationGracePeriodSeconds < liveness failure window).

    kubectl kustomize deploy/k8s/overlays/cpu | python deploy/k8s/check_manifests.py - deploy/k8s/prometheus-adapter/rules.yaml
"""

from __future__ import annotations

import re
import sys
from typing import Any

import jsonschema
import yaml

# Prometheus duration, as in the CRD's pattern for interval/scrapeTimeout.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}

SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}

ADAPTER_RULES = {
    "type": "object",
    "required": ["rules"],
    "properties": {
        "rules": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["seriesQuery", "resources", "metricsQuery"],
                "properties": {
                    "seriesQuery": {"type": "string"},
                    "seriesFilters": {"type": "array"},
                    "resources": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "template": {"type": "string"},
                            "overrides": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["resource"],
                                    "properties": {"group": {"type": "string"}, "resource": {"type": "string"}},
                                },
                            },
                        },
                    },
                    "name": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matches": {"type": "string"}, "as": {"type": "string"}},
                    },
                    "metricsQuery": {"type": "string", "pattern": r"<<\.Series>>"},
                },
            },
        }
    },
}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def adapter_metric_names(rules: dict[str, Any]) -> list[tuple[re.Pattern[str], dict[str, str]]]:
    # A rule serves the names its `name.matches` regex (default: the whole series
    # name) rewrites to; approximate with the seriesQuery's __name__ regex, renamed.
    out = []
    for rule in rules["rules"]:
        m = re.search(r'__name__=~"([^"]+)"', rule["seriesQuery"])
        series = m.group(1) if m else re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        out.append((re.compile(series), rule.get("name", {})))
    return out


def served_by_adapter(metric: str, rules: dict[str, Any]) -> bool:
    for series, name in adapter_metric_names(rules):
        if not series.fullmatch(metric):
            continue
        matches, as_ = name.get("matches", "^(.*)$"), name.get("as", "${1}")
        m = re.search(matches, metric)
        if m and re.sub(r"\$\{(\d+)\}", lambda g: m.group(int(g.group(1))), as_) == metric:
            return True
    return False


def check(docs: list[dict[str, Any]], rules: dict[str, Any]) -> list[str]:
    errors: list[str] = []

    def expect(cond: bool, message: str) -> None:
        if not cond:
            errors.append(message)

    for doc in by_kind(docs, "ServiceMonitor"):
        errors += [f"ServiceMonitor: {e.json_path}: {e.message}"
                   for e in jsonschema.Draft202012Validator(SERVICE_MONITOR).iter_errors(doc)]
    errors += [f"adapter rules: {e.json_path}: {e.message}"
               for e in jsonschema.Draft202012Validator(ADAPTER_RULES).iter_errors(rules)]
    if errors:
        return errors

    deploy, svc, pdb, hpa, sm = (one(docs, k) for k in
                                 ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                  "ServiceMonitor"))
    pod_labels = deploy["spec"]["template"]["metadata"].get("labels", {})
    expect(selects(svc["spec"]["selector"], pod_labels), "Service selector does not match the pod labels")
    expect(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selector does not match the pods")
    expect(selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"].get("labels", {})),
           "ServiceMonitor selector does not match the Service's labels")
    port_names = {p.get("name") for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        expect(ep.get("port") in port_names, f"ServiceMonitor port {ep.get('port')!r} is not a Service port name")
        if "interval" in ep and "scrapeTimeout" in ep:
            expect(seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"]), "scrapeTimeout exceeds interval")
    expect(hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"], "HPA targets another Deployment")
    for metric in hpa["spec"]["metrics"]:
        expect(metric["type"] == "Pods", f"HPA metric type {metric['type']} (the adapter serves Pods metrics)")
        name = metric.get("pods", {}).get("metric", {}).get("name", "")
        expect(served_by_adapter(name, rules), f"HPA metric {name!r} is served by no adapter rule")

    spec = deploy["spec"]["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"] == "inflight"]
    args = container.get("args", [])
    shutdown = float(args[args.index("--shutdown-timeout") + 1]) if "--shutdown-timeout" in args else 30.0
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    expect(pre_stop + shutdown < grace,
           f"preStop {pre_stop} s + --shutdown-timeout {shutdown} s must end before the grace period ({grace} s)")
    live = container.get("livenessProbe", {})
    if live.get("httpGet", {}).get("path") == "/health":
        window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
        expect(window > grace, f"liveness on /health (503 while draining) fails after {window} s, "
               f"within the {grace} s grace period")
    expect("--host" in args and args[args.index("--host") + 1] == "0.0.0.0",
           "serve must bind 0.0.0.0 (its default is 127.0.0.1)")
    return errors


def load(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else open(path).read()
    return [d for d in yaml.safe_load_all(text) if d]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    errors = check(load(argv[0]), load(argv[1])[0])
    for e in errors:
        print(f"ERROR {e}")
    if not errors:
        print("OK ServiceMonitor, adapter rules and object wiring")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
