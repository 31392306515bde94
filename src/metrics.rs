//! Every Prometheus metric the server exports, defined in one place: names,
//! help texts, labels and buckets. Base units (seconds), `_total` for counters.
//! TTFT buckets span 10 ms to 60 s so P50/P90/P99 are readable across that range.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 45.0, 60.0,
];
const PREDICTION_ERROR_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.0, 5.0,
];
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// What one engine step did, in the terms the metrics count. The engine fills it;
/// this module knows nothing of the engine's types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepFigures {
    pub num_seqs: usize,
    pub num_tokens: usize,
    pub prefill_tokens: usize,
    pub preempted: usize,
    /// What the step-time model (`engine::step_cost`) predicted for this step.
    pub predicted: Option<Duration>,
}

pub struct Metrics {
    registry: Registry,
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue_time: Histogram,
    prediction_error: HistogramVec,
    step_duration: Histogram,
    batch_size: HistogramVec,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    cached_tokens: IntCounter,
    requests: IntCounterVec,
    preemptions: IntCounter,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    http_responses: IntCounterVec,
    tenant_requests: IntCounterVec,
    tenant_tokens: IntCounterVec,
    tenant_throttled: IntCounterVec,
    tenant_admitted: IntCounterVec,
    tenant_reservation_usage: GaugeVec,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid histogram")
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::new(),
            ttft: histogram(
                "inflight_time_to_first_token_seconds",
                "Time from request arrival to its first generated token.",
                LATENCY_BUCKETS,
            ),
            itl: histogram(
                "inflight_inter_token_latency_seconds",
                "Time between two consecutive generated tokens of one sequence.",
                TOKEN_LATENCY_BUCKETS,
            ),
            tpot: histogram(
                "inflight_time_per_output_token_seconds",
                "(E2E latency - TTFT) / (output tokens - 1), per finished sequence.",
                TOKEN_LATENCY_BUCKETS,
            ),
            e2e: histogram(
                "inflight_e2e_request_latency_seconds",
                "Time from request arrival to its last token.",
                LATENCY_BUCKETS,
            ),
            queue_time: histogram(
                "inflight_request_queue_time_seconds",
                "Time a sequence waited before its first step.",
                LATENCY_BUCKETS,
            ),
            prediction_error: HistogramVec::new(
                HistogramOpts::new(
                    "inflight_prediction_error_seconds",
                    "How far the engine's own predictions missed: a request's queue wait \
                     (what = queue_wait) and a step's duration (what = step_time); direction = \
                     under when the prediction was too short.",
                )
                .buckets(PREDICTION_ERROR_BUCKETS.to_vec()),
                &["what", "direction"],
            )
            .expect("valid metric"),
            step_duration: histogram(
                "inflight_step_duration_seconds",
                "Wall time of one engine step (one backend call plus sampling).",
                TOKEN_LATENCY_BUCKETS,
            ),
            batch_size: HistogramVec::new(
                HistogramOpts::new("inflight_batch_size", "Tokens and sequences per engine step.")
                    .buckets(BATCH_BUCKETS.to_vec()),
                &["unit"],
            )
            .expect("valid histogram"),
            prompt_tokens: IntCounter::new("inflight_prompt_tokens_total", "Prompt tokens prefilled.")
                .expect("valid counter"),
            generation_tokens: IntCounter::new("inflight_generation_tokens_total", "Tokens generated.")
                .expect("valid counter"),
            cached_tokens: IntCounter::new(
                "inflight_prefix_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache instead of computed.",
            )
            .expect("valid counter"),
            requests: IntCounterVec::new(
                Opts::new("inflight_requests_total", "Finished sequences by finish reason."),
                &["finish_reason"],
            )
            .expect("valid counter"),
            preemptions: IntCounter::new(
                "inflight_preemptions_total",
                "Sequences preempted (KV blocks freed, recomputed later) when KV ran out or reserved work needed the room.",
            )
            .expect("valid counter"),
            running: IntGauge::new("inflight_requests_running", "Sequences holding KV blocks.")
                .expect("valid gauge"),
            waiting: IntGauge::new("inflight_requests_waiting", "Sequences waiting to be scheduled.")
                .expect("valid gauge"),
            kv_usage: Gauge::new("inflight_kv_cache_usage_ratio", "Fraction of KV blocks in use.")
                .expect("valid gauge"),
            http_responses: IntCounterVec::new(
                Opts::new(
                    "inflight_http_responses_total",
                    "HTTP responses by route and status code (429 and 503 are load shed).",
                ),
                &["route", "code"],
            )
            .expect("valid counter"),
            tenant_requests: IntCounterVec::new(
                Opts::new(
                    "inflight_tenant_requests_total",
                    "Responses to tenants by status code (`anonymous`: auth off, or /invocations).",
                ),
                &["tenant", "code"],
            )
            .expect("valid counter"),
            tenant_tokens: IntCounterVec::new(
                Opts::new(
                    "inflight_tenant_tokens_total",
                    "Tokens of finished requests by tenant, from their usage (kind: prompt or completion).",
                ),
                &["tenant", "kind"],
            )
            .expect("valid counter"),
            tenant_throttled: IntCounterVec::new(
                Opts::new(
                    "inflight_tenant_throttled_total",
                    "Requests refused with 429 because the tenant was at one of its limits.",
                ),
                &["tenant"],
            )
            .expect("valid counter"),
            tenant_admitted: IntCounterVec::new(
                Opts::new(
                    "inflight_tenant_admitted_total",
                    "Requests admitted to the engine by tenant and priority (reserved: within a provisioned rate; standard: everything else, a provisioned tenant's overflow included).",
                ),
                &["tenant", "priority"],
            )
            .expect("valid counter"),
            tenant_reservation_usage: GaugeVec::new(
                Opts::new(
                    "inflight_tenant_reservation_usage_ratio",
                    "Provisioned tenants: tokens drawn from the reservation (prompt at admission, output as produced) in the last minute, over the reserved input plus output tokens per minute.",
                ),
                &["tenant"],
            )
            .expect("valid gauge"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.tpot.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.queue_time.clone()),
            Box::new(m.prediction_error.clone()),
            Box::new(m.step_duration.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generation_tokens.clone()),
            Box::new(m.cached_tokens.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.running.clone()),
            Box::new(m.waiting.clone()),
            Box::new(m.kv_usage.clone()),
            Box::new(m.http_responses.clone()),
            Box::new(m.tenant_requests.clone()),
            Box::new(m.tenant_tokens.clone()),
            Box::new(m.tenant_throttled.clone()),
            Box::new(m.tenant_admitted.clone()),
            Box::new(m.tenant_reservation_usage.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    pub fn observe_step(&self, stats: &StepFigures, took: Duration) {
        if stats.num_seqs == 0 {
            return;
        }
        self.step_duration.observe(took.as_secs_f64());
        if let Some(p) = stats.predicted {
            self.observe_prediction("step_time", p, took);
        }
        self.batch_size.with_label_values(&["tokens"]).observe(stats.num_tokens as f64);
        self.batch_size.with_label_values(&["sequences"]).observe(stats.num_seqs as f64);
        self.prompt_tokens.inc_by(stats.prefill_tokens as u64);
        self.preemptions.inc_by(stats.preempted as u64);
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
        self.generation_tokens.inc();
    }

    pub fn observe_itl(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
        self.generation_tokens.inc();
    }

    pub fn observe_queue_time(&self, d: Duration) {
        self.queue_time.observe(d.as_secs_f64());
    }

    /// How far a prediction of `what` missed what happened.
    pub fn observe_prediction(&self, what: &str, predicted: Duration, actual: Duration) {
        let (direction, error) =
            if predicted < actual { ("under", actual - predicted) } else { ("over", predicted - actual) };
        self.prediction_error.with_label_values(&[what, direction]).observe(error.as_secs_f64());
    }

    /// A sequence that finished with `reason` after `completion_tokens` tokens, of
    /// whose prompt `cached_tokens` came from the prefix cache.
    pub fn observe_finished(
        &self,
        reason: &str,
        completion_tokens: usize,
        cached_tokens: usize,
        e2e: Duration,
        since_first: Option<Duration>,
    ) {
        self.requests.with_label_values(&[reason]).inc();
        self.e2e.observe(e2e.as_secs_f64());
        self.cached_tokens.inc_by(cached_tokens as u64);
        if let Some(d) = since_first {
            if completion_tokens > 1 {
                self.tpot.observe(d.as_secs_f64() / (completion_tokens - 1) as f64);
            }
        }
    }

    pub fn observe_failed(&self) {
        self.requests.with_label_values(&["error"]).inc();
    }

    pub fn observe_cancelled(&self) {
        self.requests.with_label_values(&["cancelled"]).inc();
    }

    /// A sequence cancelled because its client stopped reading its stream.
    pub fn observe_stalled(&self) {
        self.requests.with_label_values(&["stalled"]).inc();
    }

    pub fn set_queue(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.running.set(running as i64);
        self.waiting.set(waiting as i64);
        self.kv_usage.set(kv_usage);
    }

    /// A response sent on `route` (a route pattern of the router, so the label's
    /// values are bounded) with status `code`.
    pub fn observe_response(&self, route: &str, code: &str) {
        self.http_responses.with_label_values(&[route, code]).inc();
    }

    /// A `/v1` response to `tenant` (a name from the tenants file, so the label's
    /// values are bounded by it) with status `code`.
    pub fn observe_tenant_response(&self, tenant: &str, code: u16) {
        self.tenant_requests.with_label_values(&[tenant, code.to_string().as_str()]).inc();
    }

    /// The usage of one finished request of `tenant`.
    pub fn observe_tenant_tokens(&self, tenant: &str, prompt_tokens: usize, completion_tokens: usize) {
        self.tenant_tokens.with_label_values(&[tenant, "prompt"]).inc_by(prompt_tokens as u64);
        self.tenant_tokens.with_label_values(&[tenant, "completion"]).inc_by(completion_tokens as u64);
    }

    pub fn observe_tenant_throttled(&self, tenant: &str) {
        self.tenant_throttled.with_label_values(&[tenant]).inc();
    }

    /// A request of `tenant` admitted at `priority` (`reserved` or `standard`).
    pub fn observe_tenant_admitted(&self, tenant: &str, priority: &str) {
        self.tenant_admitted.with_label_values(&[tenant, priority]).inc();
    }

    /// How much of `tenant`'s reservation the last minute used (see the help).
    pub fn set_tenant_reservation_usage(&self, tenant: &str, ratio: f64) {
        self.tenant_reservation_usage.with_label_values(&[tenant]).set(ratio);
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
