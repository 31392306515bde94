//! Stamps every request with the instant it reached the server, before its body
//! is read, parsed or tokenized, so the latencies the engine reports (TTFT, E2E)
//! are measured from arrival, as their metric help texts and clients define them.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// When a request arrived; in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

impl Arrival {
    /// The stamp of a request, or now for one that bypassed the middleware.
    pub fn of(stamp: Option<axum::Extension<Arrival>>) -> Instant {
        stamp.map_or_else(Instant::now, |axum::Extension(Arrival(at))| at)
    }
}

pub async fn stamp(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrival(Instant::now()));
    next.run(req).await
}
