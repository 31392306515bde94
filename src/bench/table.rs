//! The human-readable stdout view of one run: a block per load level (throughput,
//! goodput, cost, latency distributions, errors with a sample message, token-count
//! warnings) and a closing table across levels.

use std::fmt::Write;

use super::results::{BenchResults, LevelResult};
use super::stats::{Distribution, LevelSummary};

/// Dollars with three significant digits below $1 (costs per token are small).
pub fn usd(x: f64) -> String {
    if x >= 1.0 {
        format!("${x:.2}")
    } else if x > 0.0 {
        let digits = (2 - x.log10().floor() as i32).max(2) as usize;
        format!("${x:.digits$}")
    } else {
        "$0".into()
    }
}

pub fn opt(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Left-aligned first column, the rest right-aligned, two spaces apart.
pub fn columns(rows: &[Vec<String>]) -> String {
    let ncol = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncol)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dist_row(name: &str, d: Option<&Distribution>, ps: &[f64]) -> Vec<String> {
    let mut row = vec![name.to_string(), opt(d.map(|d| d.mean), 1)];
    row.extend(ps.iter().map(|&p| opt(d.and_then(|d| d.p(p)), 1)));
    row
}

fn pct_name(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("p{p:.0}")
    } else {
        format!("p{p}")
    }
}

/// The block for one level.
pub fn level_block(run: &BenchResults, level: &LevelResult) -> String {
    let s: &LevelSummary = &level.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "── {} ── {} requests: {} ok, {} failed, {:.2} s",
        s.load, s.requests, s.completed, s.failed, s.duration_s
    );
    let _ = writeln!(
        out,
        "  throughput  {:.2} req/s · {:.1} output tok/s · {:.1} total tok/s · {:.0} TPM",
        s.request_throughput, s.output_throughput, s.total_token_throughput, s.tokens_per_minute
    );
    let _ = writeln!(
        out,
        "  tokens      {} in ({} cached) · {} out",
        s.input_tokens, s.cached_tokens, s.output_tokens
    );
    if let Some(g) = s.goodput {
        let _ = writeln!(
            out,
            "  goodput     {g:.2} req/s · {:.1} % of requests within SLO ({} {:.0} %)",
            s.slo_attainment_pct,
            if s.meets_slo { "meets" } else { "misses" },
            run.slo.attainment_pct
        );
    }
    if let (Some(c), Some(price)) = (&s.cost, &run.price) {
        let _ = writeln!(
            out,
            "  cost        {} /1M output tok · {} /1M total tok · {} /1k requests  ({} at ${}/h)",
            c.usd_per_1m_output_tokens.map_or("-".into(), usd),
            c.usd_per_1m_total_tokens.map_or("-".into(), usd),
            c.usd_per_1k_requests.map_or("-".into(), usd),
            price.instance_type.as_deref().unwrap_or("priced"),
            price.usd_per_hour
        );
    }
    if s.completed > 0 {
        let mut header = vec![String::new(), "mean".to_string()];
        header.extend(run.percentiles.iter().map(|&p| pct_name(p)));
        let rows = vec![
            header,
            dist_row("TTFT ms", s.ttft_ms.as_ref(), &run.percentiles),
            dist_row("TPOT ms", s.tpot_ms.as_ref(), &run.percentiles),
            dist_row("ITL ms", s.itl_ms.as_ref(), &run.percentiles),
            dist_row("E2E ms", s.e2e_ms.as_ref(), &run.percentiles),
        ];
        for line in columns(&rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for (kind, n) in &s.errors {
        let sample = level
            .records
            .iter()
            .filter_map(|r| r.error.as_ref())
            .find(|e| e.kind.to_string() == *kind)
            .map(|e| e.message.as_str())
            .unwrap_or("");
        let _ = writeln!(out, "  error       {kind} ×{n}: {sample}");
    }
    if s.usage_missing > 0 {
        let _ = writeln!(
            out,
            "  warning     {} responses carried no usage; output tokens counted from chunks",
            s.usage_missing
        );
    }
    if s.usage_mismatch > 0 {
        let _ = writeln!(
            out,
            "  warning     {} responses' usage.completion_tokens differ from the text chunks received",
            s.usage_mismatch
        );
    }
    if s.short_outputs > 0 {
        let _ = writeln!(
            out,
            "  warning     {} responses stopped before max_tokens (ignore_eos not honoured?)",
            s.short_outputs
        );
    }
    out
}

/// The closing table across levels, plus the best level's cost.
pub fn summary_table(run: &BenchResults) -> String {
    let priced = run.price.is_some();
    let mut header: Vec<String> =
        ["load", "ok/sent", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "E2E p50"]
            .map(String::from)
            .to_vec();
    if run.slo.any() {
        header.push("goodput".into());
    }
    if priced {
        header.push("$/1M out".into());
    }
    let mut rows = vec![header];
    for l in &run.levels {
        let s = &l.summary;
        let p = |d: &Option<Distribution>, q: f64| opt(d.as_ref().and_then(|d| d.p(q)), 1);
        let mut row = vec![
            s.load.clone(),
            format!("{}/{}", s.completed, s.requests),
            format!("{:.2}", s.request_throughput),
            format!("{:.1}", s.output_throughput),
            p(&s.ttft_ms, 50.0),
            p(&s.ttft_ms, 99.0),
            p(&s.tpot_ms, 50.0),
            p(&s.tpot_ms, 99.0),
            p(&s.e2e_ms, 50.0),
        ];
        if run.slo.any() {
            row.push(opt(s.goodput, 2));
        }
        if priced {
            row.push(s.cost.as_ref().and_then(|c| c.usd_per_1m_output_tokens).map_or("-".into(), usd));
        }
        rows.push(row);
    }
    let mut out = String::from("latencies in ms\n");
    out.push_str(&columns(&rows));
    for skipped in &run.skipped_levels {
        let _ = writeln!(out, "{skipped}: not run (every request of an earlier level failed)");
    }
    match run.best() {
        Some(best) => {
            let _ = write!(
                out,
                "best level meeting the SLOs: {} ({:.1} output tok/s",
                best.summary.load, best.summary.output_throughput
            );
            if let (Some(c), Some(price)) = (&best.summary.cost, &run.price) {
                let what =
                    price.instance_type.clone().unwrap_or_else(|| format!("${}/h", price.usd_per_hour));
                let _ = write!(
                    out,
                    ", {} per 1M output tokens on {what}",
                    c.usd_per_1m_output_tokens.map_or("-".into(), usd)
                );
            }
            out.push_str(")\n");
        }
        None if !run.levels.is_empty() => out.push_str("no level met the SLOs\n"),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_keep_three_significant_digits() {
        assert_eq!(usd(0.497_222), "$0.497");
        assert_eq!(usd(0.012_345), "$0.0123");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(usd(0.0), "$0");
    }

    #[test]
    fn columns_align() {
        let rows = vec![vec!["a".into(), "1".into()], vec!["long".into(), "100".into()]];
        assert_eq!(columns(&rows), "a       1\nlong  100\n");
    }
}
