//! The results file: what was run (target, workload, load, SLOs, price), each load
//! level's summary, and every raw per-request record, as JSON. `bench report`
//! reads these files back, so the format carries a schema version.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cost::PriceUsed;
use super::driver::LoadLevel;
use super::endpoint::Endpoint;
use super::record::RequestRecord;
use super::stats::{LevelSummary, Slo};
use super::workload::SyntheticSpec;
use super::BenchError;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResults {
    pub schema_version: u32,
    /// The program and version that wrote the file.
    pub tool: String,
    /// The run's name in reports and plots.
    pub label: String,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub target: TargetInfo,
    /// What the server ran on, as the user described it.
    pub hardware: Option<String>,
    /// The price the run is costed at: the hardware it measured, never another.
    pub price: Option<PriceUsed>,
    pub workload: WorkloadInfo,
    pub load: LoadInfo,
    pub slo: Slo,
    /// The percentiles shown (50 and 99 are always computed too, for reports).
    pub percentiles: Vec<f64>,
    pub levels: Vec<LevelResult>,
    /// The level with the highest output throughput that met the SLOs.
    pub best_level: Option<String>,
    /// Levels not run because an earlier one failed completely.
    pub skipped_levels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub synthetic: Option<SyntheticSpec>,
    pub dataset: Option<String>,
    /// The tokenizer that made synthetic lengths exact, if any.
    pub tokenizer: Option<String>,
    pub ignore_eos: bool,
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadInfo {
    pub num_requests: usize,
    pub duration_s: Option<f64>,
    pub warmup: usize,
    pub timeout_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    pub level: LoadLevel,
    pub summary: LevelSummary,
    pub records: Vec<RequestRecord>,
}

impl BenchResults {
    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|source| BenchError::Results { path: path.to_path_buf(), source })?;
        std::fs::write(path, text + "\n").map_err(|e| BenchError::io(path, e))
    }

    pub fn read(path: &Path) -> Result<BenchResults, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        let results: BenchResults = serde_json::from_str(&text)
            .map_err(|source| BenchError::Results { path: path.to_path_buf(), source })?;
        if results.schema_version != SCHEMA_VERSION {
            return Err(BenchError::Config(format!(
                "{} has results schema {}; this inflight reads {SCHEMA_VERSION}",
                path.display(),
                results.schema_version
            )));
        }
        Ok(results)
    }

    pub fn best(&self) -> Option<&LevelResult> {
        let best = self.best_level.as_deref()?;
        self.levels.iter().find(|l| l.summary.load == best)
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29 12:34:56 UTC = 1709210096.
        assert_eq!(utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096)), "2024-02-29T12:34:56Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_798_761_599)), "2026-12-31T23:59:59Z");
    }
}

/// A small results value for the tests of the modules that render results.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::bench::cost;
    use crate::bench::stats;

    fn record(index: usize, ttft: f64, tpot: f64, tokens: usize) -> RequestRecord {
        RequestRecord {
            index,
            start_s: index as f64 * 0.1,
            ttft_s: Some(ttft),
            e2e_s: ttft + tpot * (tokens - 1) as f64,
            itl_s: vec![tpot; tokens - 1],
            chunks: tokens,
            max_tokens: tokens,
            expected_input_tokens: Some(16),
            prompt_tokens: Some(16),
            completion_tokens: Some(tokens),
            cached_tokens: Some(0),
            finish_reason: Some("length".into()),
            error: None,
        }
    }

    /// Two levels, c=1 and c=4; the higher one is faster but slower per request.
    pub fn sample(label: &str, usd_per_hour: Option<f64>) -> BenchResults {
        let slo = Slo { ttft_ms: Some(1_000.0), attainment_pct: 90.0, ..Default::default() };
        let ps = [50.0, 90.0, 99.0];
        let levels = [(1, 0.1, 0.02, 4.0), (4, 0.4, 0.05, 2.0)]
            .into_iter()
            .map(|(c, ttft, tpot, duration)| {
                let records: Vec<_> = (0..8).map(|i| record(i, ttft + i as f64 * 0.01, tpot, 8)).collect();
                let mut summary = stats::summarize(&format!("c={c}"), &records, duration, &ps, &slo);
                summary.cost = usd_per_hour.map(|p| {
                    cost::cost(
                        p,
                        summary.output_throughput,
                        summary.total_token_throughput,
                        summary.request_throughput,
                    )
                });
                LevelResult { level: LoadLevel::Concurrency { concurrency: c }, summary, records }
            })
            .collect::<Vec<_>>();
        let best = stats::best_level(&levels.iter().map(|l| l.summary.clone()).collect::<Vec<_>>());
        BenchResults {
            schema_version: SCHEMA_VERSION,
            tool: "inflight test".into(),
            label: label.into(),
            started_at: utc_timestamp(UNIX_EPOCH),
            target: TargetInfo {
                url: "http://127.0.0.1:1".into(),
                model: "m".into(),
                endpoint: Endpoint::Completions,
            },
            hardware: Some("test box".into()),
            price: usd_per_hour.map(PriceUsed::manual),
            workload: WorkloadInfo {
                synthetic: None,
                dataset: Some("w.jsonl".into()),
                tokenizer: None,
                ignore_eos: true,
                temperature: Some(0.0),
            },
            load: LoadInfo { num_requests: 8, duration_s: None, warmup: 0, timeout_s: 60.0 },
            slo,
            percentiles: ps.to_vec(),
            best_level: best.map(|i| levels[i].summary.load.clone()),
            levels,
            skipped_levels: Vec::new(),
        }
    }

    #[test]
    fn results_round_trip_through_a_file() {
        let r = sample("x", Some(0.5));
        assert_eq!(r.best().map(|l| l.summary.load.as_str()), Some("c=4"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        r.write(&path).unwrap();
        let back = BenchResults::read(&path).unwrap();
        assert_eq!((back.label.as_str(), back.levels.len(), back.levels[1].records.len()), ("x", 2, 8));
        assert_eq!(back.best_level, r.best_level);
        assert_eq!(back.levels[1].level, r.levels[1].level);
        let (a, b) = (&back.levels[0].summary, &r.levels[0].summary);
        assert!((a.output_throughput - b.output_throughput).abs() < 1e-9);
        assert_eq!(a.ttft_ms.as_ref().map(|d| d.percentiles.len()), Some(3));
        let mut old = serde_json::to_value(&r).unwrap();
        old["schema_version"] = 99.into();
        std::fs::write(&path, old.to_string()).unwrap();
        assert!(BenchResults::read(&path).unwrap_err().to_string().contains("schema"));
    }
}
