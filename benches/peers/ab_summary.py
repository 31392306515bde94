#!/usr/bin/env python3
"""Medians over rounds of an ab.sh output folder, one column per build, and each
build's ratio to the first build named.

    python3 benches/peers/ab_summary.py OUT_DIR base new > OUT_DIR/summary.md
    python3 benches/peers/ab_summary.py target/peers/results/RUN inflight vllm   # compare.sh's

Step rounds (step-LABEL-rN.txt): criterion's middle estimate per bench, and the
section profile's ms per pass where INFLIGHT_PROFILE_STEP asked for one. Served
rounds (served-LABEL-rN*.json, or compare.sh's PEER-rN.json: `inflight bench`
results with one load level or several): output tok/s and the TTFT, TPOT and ITL percentiles per level.
"""
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
TIME = re.compile(r"^(\S+)?\s+time:\s+\[[\d.]+ \S+ ([\d.]+) (\S+) [\d.]+ \S+\]")
PROFILE = re.compile(r"^(\S+): [\d.]+ ms per step \(wall\)")
SECTION = re.compile(r"^\| ([^|*]+?) \| ([\d.]+) \| \d+% \|$")


def step_figures(text):
    """{figure name: ms} from one step bench run."""
    figures, bench, profiled = {}, None, None
    for line in text.splitlines():
        if line.startswith("Benchmarking "):
            bench = line.split()[1].rstrip(":")
        m = TIME.match(line)
        if m and "change:" not in line:
            name = m.group(1) or bench
            # A criterion "change:" block repeats "time:" with percentages; those
            # lines have no unit and do not match.
            figures.setdefault(name, float(m.group(2)) * UNITS[m.group(3)])
        m = PROFILE.match(line)
        if m:
            profiled = m.group(1)
        m = SECTION.match(line)
        if m and profiled:
            figures[f"{profiled} · {m.group(1)}"] = float(m.group(2))
    return figures


def pct(dist, p):
    for q in dist.get("percentiles", []):
        if abs(q["p"] - p) < 1e-9:
            return q["value"]
    return float("nan")


def served_figures(path):
    """{figure name: value} for every load level in one `inflight bench` results file."""
    figures = {}
    for level in json.loads(path.read_text())["levels"]:
        s = level["summary"]
        for name, value in [
            ("output tok/s", s["output_throughput"]),
            ("TTFT p50 ms", pct(s["ttft_ms"], 50)),
            ("TTFT p99 ms", pct(s["ttft_ms"], 99)),
            ("TPOT p50 ms", pct(s["tpot_ms"], 50)),
            ("ITL p50 ms", pct(s["itl_ms"], 50)),
            ("ITL p99 ms", pct(s["itl_ms"], 99)),
            ("failed", s["failed"]),
        ]:
            figures[f"{s['load']} {name}"] = value
    return figures


def collect(folder, labels):
    """{row name: {label: [value per round]}}, rows in first-seen order."""
    rows = defaultdict(lambda: defaultdict(list))
    for label in labels:
        for f in sorted(folder.glob(f"step-{label}-r*.txt")):
            for name, value in step_figures(f.read_text()).items():
                rows[name][label].append(value)
        # ab.sh's served rounds, or compare.sh's (PEER-rN.json).
        served = [*folder.glob(f"served-{label}-r*.json"), *folder.glob(f"{label}-r*.json")]
        for f in sorted(served):
            for name, value in served_figures(f).items():
                rows[name][label].append(value)
    return rows


def fmt(x):
    if x != x:
        return "–"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def main(folder, labels):
    rows = collect(Path(folder), labels)
    if not rows:
        sys.exit(f"no step-*.txt or served-*.json rounds for {', '.join(labels)} in {folder}")
    head = ["figure"] + [f"{l} (median)" for l in labels] + [f"{l} / {labels[0]}" for l in labels[1:]]
    print("| " + " | ".join(head) + " | rounds |")
    print("|---" * (len(head) + 1) + "|")
    for name, by_label in sorted(rows.items(), key=lambda kv: level_key(kv[0])):
        med = [statistics.median(by_label[l]) if by_label[l] else float("nan") for l in labels]
        ratios = [m / med[0] if med[0] else float("nan") for m in med[1:]]
        ratios = ["–" if r != r else f"{r:.3f}" for r in ratios]
        rounds = "; ".join(f"{l}: " + " ".join(fmt(v) for v in by_label[l]) for l in labels)
        print("| " + " | ".join([name] + [fmt(m) for m in med] + ratios) + f" | {rounds} |")


def level_key(name):
    """Served rows by concurrency level (numerically), step rows as they sort."""
    m = re.match(r"[cr]=?([\d.]+) ", name)
    return (float(m.group(1)), name) if m else (-1.0, name)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
