//! Tenants' token rates over HTTP: admitting a request against its tenant's
//! buckets (the class it is scheduled as, or a 429), charging the output it
//! produces, and OpenAI's `x-ratelimit-*` response headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::engine::request::{Priority, SchedClass};
use crate::metrics::Metrics;

use super::error::ApiError;
use super::tenants::ledger::Ledger;
use super::tenants::reservation::{self, Admission};
use super::tenants::Tenant;

/// A request admitted against its tenant's buckets: the class to schedule it as,
/// and where its output tokens are charged.
pub struct Grant {
    pub class: SchedClass,
    pub meter: OutputMeter,
}

/// Charges output tokens to the tenant's output bucket, for requests whose
/// prompt was taken from the input bucket; a no-op for the others (a
/// provisioned tenant's fallback requests, tenants without rates).
#[derive(Clone)]
pub struct OutputMeter {
    ledger: Arc<Ledger>,
    drew: bool,
}

impl OutputMeter {
    pub fn charge(&self, tokens: usize) {
        if self.drew {
            self.ledger.charge_output(tokens as u64, Instant::now());
        }
    }
}

/// Admits a request of `prompt_tokens` (all choices) for `tenant`: its class, or
/// 429 over an on-demand cap with `Retry-After` = whole seconds until the
/// bucket holds the prompt, or 400 when no wait would do.
pub fn admit(metrics: &Metrics, tenant: &Tenant, prompt_tokens: u64) -> Result<Grant, ApiError> {
    let now = Instant::now();
    let decision =
        tenant.ledger.with_buckets(|b| reservation::decide(tenant.tier, b.as_mut(), prompt_tokens, now));
    match decision {
        Admission::Granted { priority, drew } => {
            if drew {
                tenant.ledger.note_drawn(prompt_tokens, now);
            }
            metrics.observe_tenant_admitted(&tenant.name, priority_label(priority));
            Ok(Grant {
                class: reservation::class_of(tenant, priority),
                meter: OutputMeter { ledger: tenant.ledger.clone(), drew },
            })
        }
        Admission::OverCap { retry_after } => {
            metrics.observe_tenant_throttled(&tenant.name);
            Err(ApiError::tenant_over_token_rate(&tenant.name, reservation::retry_after_secs(retry_after)))
        }
        Admission::BeyondCap { per_minute } => {
            Err(ApiError::prompt_beyond_token_rate(&tenant.name, prompt_tokens, per_minute))
        }
    }
}

fn priority_label(p: Priority) -> &'static str {
    match p {
        Priority::Reserved => "reserved",
        Priority::Standard => "standard",
    }
}

/// Adds OpenAI's rate-limit headers for `tenant` to a response: tokens (input
/// plus output per minute, what is left in both buckets, and the time until both
/// are full) when it has rates; requests when it has `max_concurrent_requests`,
/// which here is a count of concurrent requests, not a per-minute one.
pub fn add_headers(headers: &mut HeaderMap, tenant: &Tenant) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    if let Some(levels) = tenant.ledger.levels(Instant::now()) {
        let limit = levels.rates.input_tokens_per_minute + levels.rates.output_tokens_per_minute;
        let remaining = (levels.input.max(0.0) + levels.output.max(0.0)).floor() as u64;
        put("x-ratelimit-limit-tokens", limit.to_string());
        put("x-ratelimit-remaining-tokens", remaining.to_string());
        put("x-ratelimit-reset-tokens", openai_duration(levels.until_full));
    }
    if let Some(max) = tenant.max_concurrent_requests {
        put("x-ratelimit-limit-requests", max.to_string());
        put("x-ratelimit-remaining-requests", max.saturating_sub(tenant.in_flight.current()).to_string());
    }
}

/// A duration as OpenAI's rate-limit headers write it: `6m0s`, `1.5s`, `20ms`,
/// `1h2m3s`. Under a second: whole milliseconds (at least `0ms`... `999ms`);
/// otherwise hours and minutes when present, then seconds with up to three
/// decimals, trailing zeros dropped.
pub fn openai_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, frac) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&secs.to_string());
    if frac > 0 {
        let decimals = format!("{frac:03}");
        out.push('.');
        out.push_str(decimals.trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(openai_duration(Duration::ZERO), "0ms");
        assert_eq!(openai_duration(ms(20)), "20ms");
        assert_eq!(openai_duration(ms(999)), "999ms");
        assert_eq!(openai_duration(ms(1000)), "1s");
        assert_eq!(openai_duration(ms(1500)), "1.5s");
        assert_eq!(openai_duration(ms(1234)), "1.234s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(ms(61_050)), "1m1.05s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(openai_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(openai_duration(Duration::from_micros(1_999_999)), "1.999s", "truncated to ms");
    }
}
