//! `inflight bench report`: several results files side by side in markdown — the
//! runs, then one small table per metric with a row per load level and a column
//! per run. Costs appear only in the columns of runs that carry their own price:
//! a run is never costed at another machine's price.

use std::fmt::Write;

use super::cost::Cost;
use super::results::{BenchResults, LevelResult};
use super::stats::{Distribution, LevelSummary};
use super::table::{opt, usd};

/// Run names for column headers, made unique when two runs share a label.
pub fn run_names(runs: &[BenchResults]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        let mut name = r.label.replace('|', "/");
        if names.contains(&name) {
            name = format!("{name} #{}", i + 1);
        }
        names.push(name);
    }
    names
}

/// Every load level that appears in any run, in first-seen order.
fn level_names(runs: &[BenchResults]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in runs.iter().flat_map(|r| &r.levels) {
        if !out.contains(&l.summary.load) {
            out.push(l.summary.load.clone());
        }
    }
    out
}

fn find<'a>(run: &'a BenchResults, load: &str) -> Option<&'a LevelResult> {
    run.levels.iter().find(|l| l.summary.load == load)
}

/// A markdown table; `numbers` right-aligns every column but the first.
fn md_table(header: &[String], rows: &[Vec<String>], numbers: bool) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    let align = |i: usize| if i == 0 || !numbers { "---|" } else { "---:|" };
    let _ = writeln!(out, "|{}", (0..header.len()).map(align).collect::<String>());
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

fn workload(r: &BenchResults) -> String {
    let w = &r.workload;
    let mut s = match (&w.synthetic, &w.dataset) {
        (_, Some(path)) => format!("dataset {path}"),
        (Some(sp), None) => {
            let mut s = format!("{} in / {} out tok", sp.input_tokens, sp.output_tokens);
            if sp.input_range_ratio > 0.0 || sp.output_range_ratio > 0.0 {
                s.push_str(&format!(
                    " (±{:.0} % / ±{:.0} %)",
                    sp.input_range_ratio * 100.0,
                    sp.output_range_ratio * 100.0
                ));
            }
            if sp.shared_prefix_tokens > 0 {
                s.push_str(&format!(", {} shared", sp.shared_prefix_tokens));
            }
            s
        }
        (None, None) => "-".into(),
    };
    if w.ignore_eos {
        s.push_str(", ignore_eos");
    }
    s
}

type Metric = (&'static str, fn(&LevelSummary) -> Option<f64>, usize);

fn dist(d: &Option<Distribution>, p: f64) -> Option<f64> {
    d.as_ref().and_then(|d| d.p(p))
}

const METRICS: &[Metric] = &[
    ("Output tokens/s", |s| Some(s.output_throughput), 1),
    ("Requests/s", |s| Some(s.request_throughput), 2),
    ("Total tokens/s", |s| Some(s.total_token_throughput), 1),
    ("TTFT p50 (ms)", |s| dist(&s.ttft_ms, 50.0), 1),
    ("TTFT p99 (ms)", |s| dist(&s.ttft_ms, 99.0), 1),
    ("TPOT p50 (ms)", |s| dist(&s.tpot_ms, 50.0), 1),
    ("TPOT p99 (ms)", |s| dist(&s.tpot_ms, 99.0), 1),
    ("ITL p99 (ms)", |s| dist(&s.itl_ms, 99.0), 1),
    ("E2E p50 (ms)", |s| dist(&s.e2e_ms, 50.0), 1),
];

type CostField = (&'static str, fn(&Cost) -> Option<f64>);

const COSTS: &[CostField] = &[
    ("$ per 1M output tokens", |c| c.usd_per_1m_output_tokens),
    ("$ per 1M total tokens", |c| c.usd_per_1m_total_tokens),
    ("$ per 1,000 requests", |c| c.usd_per_1k_requests),
];

pub fn markdown(runs: &[BenchResults]) -> String {
    let names = run_names(runs);
    let levels = level_names(runs);
    let mut out = String::from("# inflight bench report\n\n## Runs\n\n");
    let header: Vec<String> = ["run", "url", "model", "endpoint", "hardware", "workload", "started", "price"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .zip(&names)
        .map(|(r, name)| {
            vec![
                name.clone(),
                r.target.url.clone(),
                r.target.model.clone(),
                format!("{:?}", r.target.endpoint).to_lowercase(),
                r.hardware.clone().unwrap_or_else(|| "-".into()),
                workload(r),
                r.started_at.clone(),
                r.price.as_ref().map_or("-".into(), |p| match &p.instance_type {
                    Some(t) => {
                        format!("{t} ${}/h ({})", p.usd_per_hour, p.date.as_deref().unwrap_or("undated"))
                    }
                    None => format!("${}/h ({})", p.usd_per_hour, p.source),
                }),
            ]
        })
        .collect();
    out.push_str(&md_table(&header, &rows, false));
    let mut header = vec!["load".to_string()];
    header.extend(names.iter().cloned());
    let table = |value: &dyn Fn(&LevelResult) -> String| -> String {
        let rows: Vec<Vec<String>> = levels
            .iter()
            .map(|load| {
                let mut row = vec![load.clone()];
                row.extend(runs.iter().map(|r| find(r, load).map_or("-".into(), value)));
                row
            })
            .collect();
        md_table(&header, &rows, true)
    };
    for (title, get, decimals) in METRICS {
        let _ = writeln!(out, "\n## {title}\n");
        out.push_str(&table(&|l| opt(get(&l.summary), *decimals)));
    }
    let _ = writeln!(out, "\n## Requests ok / sent\n");
    out.push_str(&table(&|l| format!("{}/{}", l.summary.completed, l.summary.requests)));
    if runs.iter().any(|r| r.slo.any()) {
        let _ = writeln!(out, "\n## Goodput (requests/s within SLO)\n");
        out.push_str(&table(&|l| opt(l.summary.goodput, 2)));
    }
    if runs.iter().any(|r| r.price.is_some()) {
        for (title, get) in COSTS {
            let _ = writeln!(out, "\n## {title} (each run at its own hardware's price)\n");
            out.push_str(&table(&|l| l.summary.cost.as_ref().and_then(get).map_or("-".into(), usd)));
        }
    }
    let _ = writeln!(out, "\n## Best level meeting the SLOs\n");
    let header: Vec<String> =
        ["run", "level", "output tok/s", "$ per 1M output tokens"].map(String::from).to_vec();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .zip(&names)
        .map(|(r, name)| match r.best() {
            Some(b) => vec![
                name.clone(),
                b.summary.load.clone(),
                format!("{:.1}", b.summary.output_throughput),
                b.summary.cost.as_ref().and_then(|c| c.usd_per_1m_output_tokens).map_or("-".into(), usd),
            ],
            None => vec![name.clone(), "none".into(), "-".into(), "-".into()],
        })
        .collect();
    out.push_str(&md_table(&header, &rows, true));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::testing::sample;

    #[test]
    fn runs_sit_side_by_side_and_costs_stay_with_their_hardware() {
        let a = sample("inflight", Some(0.179));
        let mut b = sample("vllm", None);
        b.levels.truncate(1);
        let md = markdown(&[a.clone(), b]);
        assert!(md.contains("| load | inflight | vllm |"), "{md}");
        // c=4 exists only in the first run: the second shows a dash.
        let out_tps = md.split("## Output tokens/s").nth(1).unwrap();
        let c4 = out_tps.lines().find(|l| l.starts_with("| c=4 |")).unwrap();
        assert!(c4.ends_with("| - |"), "{c4}");
        let cost = md.split("## $ per 1M output tokens").nth(1).unwrap();
        let c1 = cost.lines().find(|l| l.starts_with("| c=1 |")).unwrap();
        assert!(c1.contains('$') && c1.ends_with("| - |"), "the unpriced run gets no cost: {c1}");
        let same = markdown(&[a.clone(), a]);
        assert!(same.contains("| load | inflight | inflight #2 |"), "duplicate labels are told apart");
    }
}
