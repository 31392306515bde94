//! A sweep: the warmup, then each load level in turn with its own fresh prompts,
//! each summarised and costed as soon as it ends. A level in which every request
//! failed ends the sweep (the server is down or refuses the model; heavier load
//! will not help), and the remaining levels are listed as skipped.

use std::time::Duration;

use super::client::Client;
use super::cost::{self, PriceUsed};
use super::driver::{self, LoadLevel, Progress};
use super::results::LevelResult;
use super::stats::{self, Slo};
use super::workload::Workload;
use super::BenchError;

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub levels: Vec<LoadLevel>,
    /// Requests per level.
    pub num_requests: usize,
    /// No request of a level is sent after this long into it.
    pub duration: Option<Duration>,
    /// Requests sent before the first level and not counted.
    pub warmup: usize,
    pub seed: u64,
    /// Percentiles to compute (0–100).
    pub percentiles: Vec<f64>,
    pub slo: Slo,
    pub price: Option<PriceUsed>,
}

/// Told what the sweep is doing, for a progress display.
pub trait Observer: Progress {
    fn warmup_started(&self, requests: usize);
    fn level_started(&self, label: &str, requests: usize);
    fn level_finished(&self, result: &LevelResult);
}

pub struct Sweep {
    pub levels: Vec<LevelResult>,
    pub skipped: Vec<String>,
    pub warmup_failed: usize,
}

pub async fn run(
    client: &Client,
    workload: &Workload<'_>,
    cfg: &SweepConfig,
    observer: &dyn Observer,
) -> Result<Sweep, BenchError> {
    if cfg.levels.is_empty() || cfg.num_requests == 0 {
        return Err(BenchError::Config("a sweep needs at least one load level and one request".into()));
    }
    let mut warmup_failed = 0;
    if cfg.warmup > 0 {
        observer.warmup_started(cfg.warmup);
        let concurrency = match cfg.levels[0] {
            LoadLevel::Concurrency { concurrency } => concurrency.min(cfg.warmup),
            LoadLevel::Rate { .. } => 1,
        };
        let items = workload.items(0, cfg.warmup);
        let level = LoadLevel::Concurrency { concurrency };
        let run = driver::run_level(client, &level, &items, None, cfg.seed, observer).await?;
        warmup_failed = run.records.iter().filter(|r| !r.ok()).count();
    }
    let mut levels = Vec::new();
    let mut skipped = Vec::new();
    for (k, level) in cfg.levels.iter().enumerate() {
        let label = level.label();
        if levels.last().is_some_and(|l: &LevelResult| l.summary.completed == 0) {
            skipped.push(label);
            continue;
        }
        let items = workload.items(k as u64 + 1, cfg.num_requests);
        observer.level_started(&label, items.len());
        let seed = cfg.seed.wrapping_add(k as u64 + 1);
        let run = driver::run_level(client, level, &items, cfg.duration, seed, observer).await?;
        let mut summary = stats::summarize(&label, &run.records, run.duration_s, &cfg.percentiles, &cfg.slo);
        summary.cost = cfg.price.as_ref().map(|p| {
            cost::cost(
                p.usd_per_hour,
                summary.output_throughput,
                summary.total_token_throughput,
                summary.request_throughput,
            )
        });
        let result = LevelResult { level: level.clone(), summary, records: run.records };
        observer.level_finished(&result);
        levels.push(result);
    }
    Ok(Sweep { levels, skipped, warmup_failed })
}
