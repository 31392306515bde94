//! From one load level's records to its summary: latency distributions (mean and
//! percentiles), throughputs, goodput against the SLOs, errors by kind, and the
//! token-count cross-checks. Definitions are in `super::METRIC_DEFINITIONS`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cost::Cost;
use super::record::RequestRecord;

/// The `p`-th percentile (0–100) of ascending `sorted` values, interpolating
/// linearly between the closest ranks as numpy's default (`method="linear"`) does.
/// `None` for no values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0) * last as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(last);
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    pub p: f64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub percentiles: Vec<Percentile>,
}

impl Distribution {
    /// Mean, population standard deviation, extremes and the given percentiles;
    /// `None` for no values. Non-finite values are dropped.
    pub fn of(values: &[f64], ps: &[f64]) -> Option<Distribution> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Some(Distribution {
            count: v.len(),
            mean,
            std: var.sqrt(),
            min: v[0],
            max: v[v.len() - 1],
            percentiles: ps
                .iter()
                .filter_map(|&p| percentile(&v, p).map(|value| Percentile { p, value }))
                .collect(),
        })
    }

    /// The stored percentile `p`, if it was computed.
    pub fn p(&self, p: f64) -> Option<f64> {
        self.percentiles.iter().find(|x| (x.p - p).abs() < 1e-9).map(|x| x.value)
    }
}

/// Service-level objectives; a request is "good" when it succeeded and met every
/// one that is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    /// A level meets the SLOs when at least this share (percent) of its requests
    /// were good.
    pub attainment_pct: f64,
}

impl Slo {
    pub fn any(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2e_ms.is_some()
    }

    /// A request with a single output token has no TPOT and passes that SLO, as in
    /// vLLM's goodput.
    pub fn good(&self, r: &RequestRecord) -> bool {
        let within = |limit: Option<f64>, value_s: Option<f64>| match (limit, value_s) {
            (None, _) => true,
            (Some(l), Some(v)) => v * 1e3 <= l,
            (Some(_), None) => false,
        };
        r.ok()
            && within(self.ttft_ms, r.ttft_s)
            && (self.tpot_ms.is_none() || within(self.tpot_ms, r.tpot_s().or(Some(0.0))))
            && within(self.e2e_ms, Some(r.e2e_s))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// The load level, as `driver::LoadLevel::label` names it.
    pub load: String,
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, usize>,
    /// First request sent to last request finished.
    pub duration_s: f64,
    /// Totals over successful requests.
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub cached_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub tokens_per_minute: f64,
    pub ttft_ms: Option<Distribution>,
    pub tpot_ms: Option<Distribution>,
    pub itl_ms: Option<Distribution>,
    pub e2e_ms: Option<Distribution>,
    /// Good requests per second; only when an SLO is set.
    pub goodput: Option<f64>,
    /// Good requests as a share of all sent (failures count against it).
    pub slo_attainment_pct: f64,
    pub meets_slo: bool,
    /// Successful requests whose stream carried no `usage`.
    pub usage_missing: usize,
    /// Successful requests whose `usage.completion_tokens` differs from the chunks.
    pub usage_mismatch: usize,
    /// Successful requests that produced fewer tokens than `max_tokens` (the server
    /// ignored `ignore_eos`, or hit its context limit).
    pub short_outputs: usize,
    /// Dollars per token, when the run has a price.
    pub cost: Option<Cost>,
}

/// Summarises one level. `ps` are the percentiles to compute (0–100).
pub fn summarize(
    load: &str,
    records: &[RequestRecord],
    duration_s: f64,
    ps: &[f64],
    slo: &Slo,
) -> LevelSummary {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let mut errors = BTreeMap::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        *errors.entry(e.kind.to_string()).or_insert(0) += 1;
    }
    let input_tokens: usize = ok.iter().filter_map(|r| r.input_tokens()).sum();
    let output_tokens: usize = ok.iter().map(|r| r.output_tokens()).sum();
    let per_s = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
    let ms = |s: f64| s * 1e3;
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).map(ms).collect();
    let tpot: Vec<f64> = ok.iter().filter_map(|r| r.tpot_s()).map(ms).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).map(ms).collect();
    let e2e: Vec<f64> = ok.iter().map(|r| ms(r.e2e_s)).collect();
    let good = records.iter().filter(|r| slo.good(r)).count();
    let attainment = if records.is_empty() { 0.0 } else { 100.0 * good as f64 / records.len() as f64 };
    let total_throughput = per_s((input_tokens + output_tokens) as f64);
    LevelSummary {
        load: load.to_string(),
        requests: records.len(),
        completed: ok.len(),
        failed: records.len() - ok.len(),
        errors,
        duration_s,
        input_tokens,
        output_tokens,
        cached_tokens: ok.iter().filter_map(|r| r.cached_tokens).sum(),
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(output_tokens as f64),
        total_token_throughput: total_throughput,
        tokens_per_minute: total_throughput * 60.0,
        ttft_ms: Distribution::of(&ttft, ps),
        tpot_ms: Distribution::of(&tpot, ps),
        itl_ms: Distribution::of(&itl, ps),
        e2e_ms: Distribution::of(&e2e, ps),
        goodput: slo.any().then(|| per_s(good as f64)),
        slo_attainment_pct: attainment,
        meets_slo: !records.is_empty() && attainment >= slo.attainment_pct,
        usage_missing: ok.iter().filter(|r| r.completion_tokens.is_none()).count(),
        usage_mismatch: ok.iter().filter(|r| r.usage_mismatch()).count(),
        short_outputs: ok.iter().filter(|r| r.output_tokens() < r.max_tokens).count(),
        cost: None,
    }
}

/// The level with the highest output throughput among those that meet the SLOs
/// (the cheapest per token on the same hardware).
pub fn best_level(levels: &[LevelSummary]) -> Option<usize> {
    levels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.meets_slo && l.completed > 0)
        .max_by(|a, b| a.1.output_throughput.total_cmp(&b.1.output_throughput))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::record::{ErrorKind, RequestError};

    fn rec(ttft: f64, e2e: f64, tokens: usize) -> RequestRecord {
        RequestRecord {
            ttft_s: Some(ttft),
            e2e_s: e2e,
            chunks: tokens,
            completion_tokens: Some(tokens),
            prompt_tokens: Some(10),
            max_tokens: tokens,
            itl_s: vec![(e2e - ttft) / (tokens.max(2) - 1) as f64; tokens.saturating_sub(1)],
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [0, 50, 90, 99, 100]) = 1, 2.5, 3.7, 3.97, 4
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 90.0).unwrap() - 3.7).abs() < 1e-12);
        assert!((percentile(&v, 99.0).unwrap() - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // numpy.percentile(range(1, 11), 95) = 9.55
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((percentile(&ten, 95.0).unwrap() - 9.55).abs() < 1e-12);
    }

    #[test]
    fn distribution_sorts_and_orders_its_percentiles() {
        let values = [9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 100.0];
        let d = Distribution::of(&values, &[50.0, 90.0, 99.0]).unwrap();
        assert_eq!(d.count, 10);
        assert_eq!(d.mean, 14.5);
        assert_eq!((d.min, d.max), (1.0, 100.0));
        let (p50, p90, p99) = (d.p(50.0).unwrap(), d.p(90.0).unwrap(), d.p(99.0).unwrap());
        assert_eq!(p50, 5.5);
        assert!(p50 <= p90 && p90 <= p99 && p99 <= d.max, "{p50} {p90} {p99}");
        assert!((p90 - 18.1).abs() < 1e-9, "numpy gives 18.1, got {p90}");
        assert!(Distribution::of(&[f64::NAN], &[50.0]).is_none());
    }

    #[test]
    fn summary_counts_tokens_throughput_and_errors() {
        let mut failed = rec(0.0, 0.2, 0);
        failed.error = Some(RequestError { kind: ErrorKind::HttpStatus(503), message: "busy".into() });
        failed.ttft_s = None;
        let records = vec![rec(0.1, 1.1, 11), rec(0.3, 2.3, 11), failed];
        let slo = Slo { attainment_pct: 100.0, ..Default::default() };
        let s = summarize("c=2", &records, 2.0, &[50.0, 99.0], &slo);
        assert_eq!((s.requests, s.completed, s.failed), (3, 2, 1));
        assert_eq!(s.errors.get("http_503"), Some(&1));
        assert_eq!((s.input_tokens, s.output_tokens), (20, 22));
        assert_eq!(s.request_throughput, 1.0);
        assert_eq!(s.output_throughput, 11.0);
        assert_eq!(s.total_token_throughput, 21.0);
        assert_eq!(s.tokens_per_minute, 1260.0);
        let tpot = s.tpot_ms.unwrap();
        assert!((tpot.mean - 150.0).abs() < 1e-9, "TPOTs 100 ms and 200 ms: {}", tpot.mean);
        assert_eq!(s.itl_ms.unwrap().count, 20);
        assert_eq!(s.ttft_ms.unwrap().p(50.0), Some(200.0));
        assert_eq!(s.goodput, None, "no SLO, no goodput");
        assert!(!s.meets_slo, "a failure keeps attainment below 100 %");
        assert!((s.slo_attainment_pct - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn an_slo_nothing_meets_gives_zero_goodput() {
        let records: Vec<_> = (0..5).map(|i| rec(0.1 + i as f64 * 0.01, 1.0, 8)).collect();
        let slo = Slo { ttft_ms: Some(0.001), attainment_pct: 90.0, ..Default::default() };
        let s = summarize("c=1", &records, 5.0, &[50.0], &slo);
        assert_eq!(s.goodput, Some(0.0));
        assert_eq!(s.slo_attainment_pct, 0.0);
        assert!(!s.meets_slo);
        assert_eq!(best_level(&[s]), None);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        // TTFTs 100..500 ms, TPOTs 900/7 ≈ 128.6 ms down to 500/7 ≈ 71.4 ms.
        let records: Vec<_> = (1..=5).map(|i| rec(i as f64 * 0.1, 1.0, 8)).collect();
        let slo =
            Slo { ttft_ms: Some(350.0), tpot_ms: Some(120.0), attainment_pct: 40.0, ..Default::default() };
        let s = summarize("c=1", &records, 2.0, &[50.0], &slo);
        // TTFT ≤ 350: requests 1–3; TPOT ≤ 120 ms: requests 2–5; both: 2 and 3.
        assert_eq!(s.goodput, Some(1.0));
        assert_eq!(s.slo_attainment_pct, 40.0);
        assert!(s.meets_slo);
    }

    #[test]
    fn best_level_is_the_fastest_that_meets_the_slo() {
        let records: Vec<_> = (0..4).map(|_| rec(0.1, 1.0, 8)).collect();
        let slo = Slo { attainment_pct: 90.0, ..Default::default() };
        let mut a = summarize("c=1", &records, 4.0, &[50.0], &slo);
        let mut b = summarize("c=4", &records, 1.0, &[50.0], &slo);
        let c = summarize("c=16", &records, 0.5, &[50.0], &slo);
        assert_eq!(best_level(&[a.clone(), b.clone(), c.clone()]), Some(2));
        b.meets_slo = true;
        let mut c2 = c;
        c2.meets_slo = false;
        assert_eq!(best_level(&[a.clone(), b, c2]), Some(1));
        a.meets_slo = false;
        assert_eq!(best_level(&[a]), None);
    }
}
