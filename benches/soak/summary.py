"""Summarises a benches/soak/run.sh folder: per tenant, what was offered, served,
refused (429) and failed (by kind); the longest request against the server's
--request-timeout; RSS over the run (and a plot of it, if matplotlib is there).

    python3 benches/soak/summary.py OUT_DIR REQUEST_TIMEOUT_S
"""

import csv
import json
import sys
from pathlib import Path

# What the API documents for a request it admitted but could not finish, or
# refused: anything else a client sees (a reset connection, a client-side
# timeout) is a lost request.
DOCUMENTED = {"http_429", "http_503", "http_500", "http_408", "http_504"}


def level(folder: Path, name: str) -> dict:
    """A run's level: from `inflight bench`'s own JSON, or from `summaries.json` once
    the per-request files have been folded into it (they are large)."""
    full = folder / f"{name}.json"
    if full.exists():
        lvl = json.loads(full.read_text())["levels"][0]
        return {"summary": lvl["summary"], "timeouts": server_timeouts(lvl["records"])}
    return json.loads((folder / "summaries.json").read_text())[name]


def server_timeouts(records: list[dict]) -> int:
    """Streams the server ended at its --request-timeout: an error event in the
    stream (the client sees `stream_error`), a documented outcome."""
    return sum(
        1
        for r in records
        if (r.get("error") or {}).get("kind") == "stream_error"
        and "request timeout" in (r["error"].get("message") or "")
    )


def fold(folder: Path) -> None:
    """Keeps each run's summary and its count of server timeouts in summaries.json,
    so the large per-request files need not be kept."""
    out = {}
    for name in ("capacity", "p1", "p2", "flood"):
        if (folder / f"{name}.json").exists():
            out[name] = level(folder, name)
    if out:
        (folder / "summaries.json").write_text(json.dumps(out, indent=1))


def pct(s: dict, field: str, p: float) -> float | None:
    dist = s.get(field)
    if not dist:
        return None
    return next((q["value"] for q in dist["percentiles"] if q["p"] == p), None)


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def rss_rows(folder: Path) -> list[dict]:
    with (folder / "rss.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["rss_kib"]]


def plot(folder: Path, rows: list[dict]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: matplotlib is not installed)"
    t = [int(r["t_s"]) / 60 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [int(r["rss_kib"]) / 1024 for r in rows], label="RSS (MiB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, [float(r["waiting"]) for r in rows], color="tab:orange", alpha=0.5, label="waiting")
    ax2.set_ylabel("requests waiting")
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "rss.svg")
    return "![RSS over the soak](rss.svg)"


def main() -> int:
    folder, timeout_s = Path(sys.argv[1]), float(sys.argv[2])
    ok = True
    print("| tenant | offered | completed | 429 | failed, documented | lost | TTFT p50 ms | TTFT p99 ms | E2E max s |")
    print("|---|---|---|---|---|---|---|---|---|")
    fold(folder)
    for name in ("p1", "p2", "flood"):
        run = level(folder, name)
        s = run["summary"]
        errors = dict(s["errors"])
        refused = errors.get("http_429", 0)
        documented = {k: n for k, n in errors.items() if k in DOCUMENTED and k != "http_429"}
        if run["timeouts"]:
            documented["request_timeout"] = run["timeouts"]
            errors["stream_error"] = errors.get("stream_error", 0) - run["timeouts"]
        lost = {k: n for k, n in errors.items() if k not in DOCUMENTED and n > 0}
        e2e_max = (s.get("e2e_ms") or {}).get("max", 0) / 1e3
        print(
            f"| {name} | {s['requests']} | {s['completed']} | {refused} | "
            f"{sum(documented.values())} {documented or ''} | {sum(lost.values())} {lost or ''} | "
            f"{fmt(pct(s, 'ttft_ms', 50))} | {fmt(pct(s, 'ttft_ms', 99))} | {e2e_max:.1f} |"
        )
        if lost or e2e_max > timeout_s + 5:
            ok = False
        if name != "flood" and refused:
            ok = False
    rows = rss_rows(folder)
    # The first minute loads the model and fills the pool: judge growth after it.
    steady = [r for r in rows if int(r["t_s"]) >= 60] or rows
    third = max(1, len(steady) // 3)
    first = max(int(r["rss_kib"]) for r in steady[:third]) / 1024
    last = max(int(r["rss_kib"]) for r in steady[-third:]) / 1024
    peak = max(int(r["rss_kib"]) for r in rows) / 1024
    growth = last / first if first else float("nan")
    print(
        f"\nRSS: {len(rows)} samples; peak {peak:,.0f} MiB; max of the first third after the first minute "
        f"{first:,.0f} MiB, of the last third {last:,.0f} MiB ({growth:.2f}x)."
    )
    if growth > 1.10:
        ok = False
    print(plot(folder, rows))
    setup = (folder / "setup.txt").read_text()
    if "alive at the end: yes" not in setup or "SIGTERM: 0" not in setup:
        ok = False
    print("\n" + setup.strip())
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (no lost request, no provisioned 429, nothing past the "
          f"timeout, RSS growth <= 1.10x, alive and a clean exit)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
