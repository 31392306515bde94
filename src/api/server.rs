//! The HTTP server: routes, authentication (the tenant of each `/v1/*` request),
//! health and metrics endpoints, and graceful shutdown (stop accepting with 503, let in-flight requests finish up
//! to a deadline, then return).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::arrival;
use super::error::ApiError;
use super::handlers;
use super::openapi;
use super::ratelimit;
use super::state::AppState;
use super::tenants::{Authenticated, Tenant, Tier};
use super::usage;

/// Finds the tenant whose key the request presents (401 if a key is required and
/// none matches) and serves the request as that tenant.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match state.tenants.current().authenticate(presented) {
        Authenticated::Tenant(t) => serve_as(&state, t, req, next).await,
        Authenticated::Refused => ApiError::unauthorized().into_response(),
    }
}

/// `/invocations` with `--invocations-without-key`: SageMaker authenticates in
/// front of it and cannot pass a key on, so it is served as the anonymous tenant.
async fn anonymous(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tenant = state.tenants.current().anonymous();
    serve_as(&state, tenant, req, next).await
}

/// SageMaker's route: keys apply to it too unless the operator says the platform
/// in front of it does the authenticating (`--invocations-without-key`).
async fn invocations_auth(state: State<AppState>, req: Request, next: Next) -> Response {
    if state.config.invocations_without_key {
        anonymous(state, req, next).await
    } else {
        authenticate(state, req, next).await
    }
}

/// Puts `tenant` in the request's extensions for the handlers, runs the request
/// in a span naming it, counts the response per tenant, and adds the tenant's
/// rate-limit headers. A stream's headers go out with its head, so they show the
/// buckets after admission and before its output is charged.
async fn serve_as(state: &AppState, tenant: Arc<Tenant>, mut req: Request, next: Next) -> Response {
    let span = tracing::info_span!("tenant", tenant = %tenant.name);
    req.extensions_mut().insert(tenant.clone());
    let mut resp = next.run(req).instrument(span).await;
    let status = resp.status().as_u16();
    state.metrics.observe_tenant_response(&tenant.name, status);
    tenant.ledger.note_response(status);
    ratelimit::add_headers(resp.headers_mut(), &tenant);
    resp
}

async fn health(State(state): State<AppState>) -> Response {
    match state.ready() {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let now = std::time::Instant::now();
    for t in state.tenants.current().tenants() {
        if let Tier::Provisioned { input_tokens_per_minute, output_tokens_per_minute } = t.tier {
            let reserved = (input_tokens_per_minute + output_tokens_per_minute) as f64;
            state
                .metrics
                .set_tenant_reservation_usage(&t.name, t.ledger.drawn_last_minute(now) as f64 / reserved);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// Counts every response by route pattern and status, so refusals (401, 413, 429,
/// 503) are visible in `/metrics`. Unrouted paths share one label value, which
/// keeps the label's cardinality bounded whatever clients send.
async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    state
        .metrics
        .observe_response(route.as_ref().map_or("unmatched", MatchedPath::as_str), resp.status().as_str());
    resp
}

async fn fallback(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

/// A known route with the wrong method gets OpenAI's error body too, not axum's
/// empty 405.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/v1/usage", get(usage::usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let invocations_auth = middleware::from_fn_with_state(state.clone(), invocations_auth);
    Router::new()
        .merge(v1)
        .route("/invocations", post(handlers::invocations).route_layer(invocations_auth))
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), count_responses))
        .layer(middleware::from_fn(arrival::stamp))
        .with_state(state)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until `signal` resolves, then drains: new requests get 503 while the
/// ones in flight finish, for at most `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let flag = state.shutting_down.clone();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let send_buffer = state.config.socket_send_buffer;
    let app = router(state);
    let listener = listener.tap_io(move |tcp| {
        if let Some(bytes) = send_buffer {
            // A fixed send buffer bounds what a client that stops reading holds in
            // the kernel; failing leaves the kernel's default, which still works.
            if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(bytes) {
                tracing::warn!(error = %e, bytes, "cannot set the connection's send buffer");
            }
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        signal.await;
        tracing::info!("shutdown requested: refusing new requests, draining in-flight ones");
        flag.store(true, Ordering::SeqCst);
        let _ = drain_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    // Once draining starts, give in-flight requests `drain_timeout` to finish.
    let deadline = async {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r.map_err(std::io::Error::other)?,
        _ = deadline => {
            tracing::warn!(seconds = drain_timeout.as_secs_f64(), "drain deadline passed; stopping with requests in flight");
            Ok(())
        }
    }
}
