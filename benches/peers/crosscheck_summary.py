"""Puts `inflight bench` and aiperf results for the same workload side by side:
TTFT p50, TPOT p50 (aiperf's "inter token latency" is the same per-request
(E2E - TTFT) / (output tokens - 1)), output tokens/s, and E2E p50.

usage: python crosscheck_summary.py INFLIGHT.json[,...] AIPERF_DIR[,...]
(comma-separated lists: one entry per run; medians are compared)
"""

import json
import os
import statistics
import sys


def ours(path):
    with open(path) as f:
        level = json.load(f)["levels"][0]["summary"]

    def p50(name):
        return next(x["value"] for x in level[name]["percentiles"] if x["p"] == 50.0)

    return {
        "TTFT p50 (ms)": p50("ttft_ms"),
        "TPOT p50 (ms)": p50("tpot_ms"),
        "E2E p50 (ms)": p50("e2e_ms"),
        "output tok/s": level["output_throughput"],
        "duration (s)": level["duration_s"],
    }


def theirs(folder):
    with open(os.path.join(folder, "profile_export_aiperf.json")) as f:
        d = json.load(f)
    return {
        "TTFT p50 (ms)": d["time_to_first_token"]["p50"],
        "TPOT p50 (ms)": d["inter_token_latency"]["p50"],
        "E2E p50 (ms)": d["request_latency"]["p50"],
        "output tok/s": d["output_token_throughput"]["avg"],
        "duration (s)": d["benchmark_duration"]["avg"],
    }


def main(ours_arg, theirs_arg):
    a = [ours(p) for p in ours_arg.split(",")]
    b = [theirs(p) for p in theirs_arg.split(",")]
    print(f"{'metric':<16}{'inflight bench':>24}{'aiperf':>24}{'difference':>12}")
    for key in a[0]:
        xa = [r[key] for r in a]
        xb = [r[key] for r in b]
        ma, mb = statistics.median(xa), statistics.median(xb)
        runs = lambda xs: "/".join(f"{x:.1f}" if x < 100 else f"{x:.0f}" for x in xs)
        print(f"{key:<16}{runs(xa):>24}{runs(xb):>24}{(mb - ma) / ma * 100:>+11.1f}%")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
