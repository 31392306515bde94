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

/// The prompts a level needs: `num_requests`, but no more than an open-loop level
/// can send within `duration` (the mean count plus half again, fifty, and five
/// standard deviations of a gamma renewal count, beyond any count it will draw),
/// since every prompt is made before the level starts and a generous
/// `--num-requests` would otherwise cost minutes and GiBs.
fn requests_for(level: &LoadLevel, cfg: &SweepConfig) -> usize {
    match (level, cfg.duration) {
        (LoadLevel::Rate { rate: Some(rate), burstiness, .. }, Some(d)) if *burstiness > 0.0 => {
            let mean = rate * d.as_secs_f64();
            let cap = 1.5 * mean + 50.0 + 5.0 * (mean / burstiness).sqrt();
            if cap.is_finite() {
                cfg.num_requests.min(cap.ceil() as usize)
            } else {
                cfg.num_requests
            }
        }
        _ => cfg.num_requests,
    }
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
        let items = workload.items(k as u64 + 1, requests_for(level, cfg));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(num_requests: usize, duration_s: Option<u64>) -> SweepConfig {
        SweepConfig {
            levels: Vec::new(),
            num_requests,
            duration: duration_s.map(Duration::from_secs),
            warmup: 0,
            seed: 0,
            percentiles: Vec::new(),
            slo: Slo::default(),
            price: None,
        }
    }

    #[test]
    fn an_open_loop_level_with_a_duration_makes_only_the_prompts_it_can_send() {
        let poisson = LoadLevel::Rate { rate: Some(10.0), burstiness: 1.0, max_concurrency: None };
        // 10/s for 60 s: 600 expected; 1.5 × 600 + 50 + 5 √600 ≈ 1073.
        assert_eq!(requests_for(&poisson, &cfg(1_000_000, Some(60))), 1073);
        assert_eq!(requests_for(&poisson, &cfg(100, Some(60))), 100, "never more than asked");
        assert_eq!(requests_for(&poisson, &cfg(1_000_000, None)), 1_000_000, "no duration, no cap");
        let burst = LoadLevel::Rate { rate: None, burstiness: 1.0, max_concurrency: None };
        assert_eq!(requests_for(&burst, &cfg(5000, Some(60))), 5000, "all at once: no cap");
        let closed = LoadLevel::Concurrency { concurrency: 4 };
        assert_eq!(requests_for(&closed, &cfg(5000, Some(60))), 5000);
    }
}
