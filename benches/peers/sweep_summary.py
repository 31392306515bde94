#!/usr/bin/env python3
"""Medians over rounds of a flag-sweep.sh output folder: one row per value and
load level (cN: N concurrent, closed loop; rR: R requests/s, open loop) with TTFT p50/p99, ITL p50/p99 (ms), output tokens/s and failures.

    python3 benches/peers/sweep_summary.py OUT_DIR > OUT_DIR/summary.md
"""
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def pct(dist, p):
    if not dist:
        return float("nan")
    for q in dist["percentiles"]:
        if abs(q["p"] - p) < 1e-9:
            return q["value"]
    return float("nan")


def main(folder):
    rows = defaultdict(list)
    for f in sorted(Path(folder).glob("*-r*-*.json")):
        m = re.match(r"(.+)-([^-]+)-r(\d+)-([cr][\d.]+)\.json$", f.name)
        if not m:
            continue
        flag, value, conc = m.group(1), m.group(2), m.group(4)
        s = json.loads(f.read_text())["levels"][0]["summary"]
        rows[(flag, value, conc)].append(
            (pct(s["ttft_ms"], 50), pct(s["ttft_ms"], 99), pct(s["itl_ms"], 50), pct(s["itl_ms"], 99),
             s["output_throughput"], s["failed"]))
    print("| flag | value | load | rounds | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | output tok/s | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    # Numeric values in order, then named ones (`auto`).
    def order(kv):
        value = kv[0][1]
        return (kv[0][2], not value.isdigit(), int(value) if value.isdigit() else 0, value)

    for (flag, value, conc), runs in sorted(rows.items(), key=order):
        med = [statistics.median(col) for col in zip(*runs)]
        print(f"| {flag} | {value} | {conc} | {len(runs)} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} | {med[4]:.1f} | {sum(r[5] for r in runs)} |")


if __name__ == "__main__":
    main(sys.argv[1])
