"""Summarises a benches/tenants/run.sh folder: A's TTFT p99 against its baseline,
A's served tokens against its reservation, 429s per tenant, lost requests."""

import json
import sys
from pathlib import Path


def summary(folder: Path, name: str) -> dict:
    """A run's summary: from `inflight bench`'s own JSON, or from `summaries.json`
    once the per-request files have been folded into it (they are large)."""
    full = folder / f"{name}.json"
    if full.exists():
        return json.loads(full.read_text())["levels"][0]["summary"]
    return json.loads((folder / "summaries.json").read_text())[name]["summary"]


def p99(s: dict, field: str = "ttft_ms") -> float | None:
    dist = s.get(field)
    if not dist:
        return None
    return next((p["value"] for p in dist["percentiles"] if p["p"] == 99.0), None)


def refused(s: dict) -> int:
    return s["errors"].get("http_429", 0)


def lost(s: dict) -> int:
    return sum(n for kind, n in s["errors"].items() if kind != "http_429")


def fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:,.0f}{unit}"


def main() -> int:
    folder, input_tpm, output_tpm, duration = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    alone = summary(folder, "a-alone")
    rows = []
    for phase in ("tenants", "fifo"):
        if not any((folder / f).exists() for f in (f"a-{phase}.json", "summaries.json")):
            continue
        if (folder / "summaries.json").exists() and f"a-{phase}" not in json.loads((folder / "summaries.json").read_text()):
            continue
        a, b = summary(folder, f"a-{phase}"), summary(folder, f"b-{phase}")
        a_p99, base = p99(a), p99(alone)
        ratio = a_p99 / base if a_p99 and base else None
        minutes = duration / 60
        reserved = (input_tpm + output_tpm) * minutes
        served = a["input_tokens"] + a["output_tokens"]
        offered = a["requests"]
        rows.append(
            f"| {phase} | {fmt(a_p99, ' ms')} | {'n/a' if ratio is None else f'{ratio:.2f}x'} | "
            f"{a['completed']}/{offered} | {served:,} ({100 * served / reserved:.0f}% of reserved {reserved:,.0f}) | "
            f"{refused(a)} | {lost(a)} | {b['completed']}/{b['requests']} | {refused(b)} | {lost(b)} |"
        )
    print(f"A alone: TTFT p99 {fmt(p99(alone), ' ms')}, {alone['completed']}/{alone['requests']} completed\n")
    print("| phase | A TTFT p99 | vs alone | A completed | A tokens served | A 429s | A lost | B completed | B 429s | B lost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
