//! `GET /v1/usage`: the calling tenant's own account — tokens served since start,
//! responses by status, and its buckets now. A tenant sees only itself: the
//! tenant is the one its key authenticated as, never a parameter.

use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::ratelimit::openai_duration;
use super::tenants::{Tenant, Tier};

#[derive(Serialize)]
struct UsageReport {
    object: &'static str,
    tenant: String,
    tier: &'static str,
    /// Tokens of finished requests (streams included), since the server started.
    tokens: TokenCounts,
    /// Responses to this tenant by HTTP status, since start (this one excluded).
    responses: std::collections::BTreeMap<String, u64>,
    /// `null` for a tenant without rates.
    rate_limits: Option<RateLimits>,
    concurrency: Concurrency,
}

#[derive(Serialize)]
struct TokenCounts {
    prompt: u64,
    completion: u64,
}

#[derive(Serialize)]
struct RateLimits {
    input_tokens_per_minute: u64,
    output_tokens_per_minute: u64,
    /// Whole tokens in each bucket now; negative while an output overshoot is repaid.
    input_tokens_available: i64,
    output_tokens_available: i64,
    /// Until both buckets are full, as in `x-ratelimit-reset-tokens`.
    reset_tokens: String,
}

#[derive(Serialize)]
struct Concurrency {
    max_concurrent_requests: Option<usize>,
    in_flight: usize,
}

pub async fn usage(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    Json(report(&tenant)).into_response()
}

fn report(tenant: &Tenant) -> UsageReport {
    let snap = tenant.ledger.snapshot(Instant::now());
    UsageReport {
        object: "usage",
        tenant: tenant.name.clone(),
        tier: match tenant.tier {
            Tier::Provisioned { .. } => "provisioned",
            Tier::OnDemand => "on-demand",
        },
        tokens: TokenCounts { prompt: snap.prompt_tokens, completion: snap.completion_tokens },
        responses: snap.responses_by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        rate_limits: snap.buckets.map(|b| RateLimits {
            input_tokens_per_minute: b.rates.input_tokens_per_minute,
            output_tokens_per_minute: b.rates.output_tokens_per_minute,
            input_tokens_available: b.input.floor() as i64,
            output_tokens_available: b.output.floor() as i64,
            reset_tokens: openai_duration(b.until_full),
        }),
        concurrency: Concurrency {
            max_concurrent_requests: tenant.max_concurrent_requests,
            // /v1/usage itself takes no slot, so this counts only generation requests.
            in_flight: tenant.in_flight.current(),
        },
    }
}
