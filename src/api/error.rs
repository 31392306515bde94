//! The one place where failures become HTTP: every error a handler can meet is an
//! `ApiError`, rendered as OpenAI's body `{"error": {"message", "type", "param",
//! "code"}}` with the matching status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::service::SubmitError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// A parameter has a value we cannot serve (400).
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// The body is JSON but a field has the wrong type or is missing (422).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message)
    }

    pub fn context_length(message: impl Into<String>) -> Self {
        Self { code: Some("context_length_exceeded"), ..Self::invalid("messages", message) }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist."),
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Missing or invalid API key: send `Authorization: Bearer <key>`.",
            )
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("Request body is larger than the limit of {limit} bytes."),
        )
    }

    pub fn overloaded(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            code: Some("rate_limit_exceeded"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "The server is at capacity; retry after the time in Retry-After.",
            )
        }
    }

    /// The tenant already has `limit` requests in flight (429, retry in a second).
    pub fn tenant_at_concurrency_limit(tenant: &str, limit: usize) -> Self {
        Self {
            message: format!(
                "Tenant `{tenant}` already has its limit of {limit} concurrent requests in flight; retry after the time in Retry-After."
            ),
            ..Self::overloaded(1)
        }
    }

    /// An on-demand tenant is over its token cap: retry once its bucket holds the
    /// prompt, in `retry_after` whole seconds.
    pub fn tenant_over_token_rate(tenant: &str, retry_after: u64) -> Self {
        Self {
            message: format!(
                "Tenant `{tenant}` is over its tokens-per-minute limit; retry after the time in Retry-After."
            ),
            ..Self::overloaded(retry_after)
        }
    }

    /// The prompt (all choices) is more tokens than the tenant's cap allows in a
    /// minute, so no wait would admit it (400).
    pub fn prompt_beyond_token_rate(tenant: &str, prompt_tokens: u64, per_minute: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            ..Self::invalid(
                "prompt",
                format!(
                    "The prompt is {prompt_tokens} tokens (all choices), more than tenant `{tenant}`'s limit of {per_minute} input tokens per minute."
                ),
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "The request did not finish within the server's request timeout.",
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("No route for `{path}`."))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("`{path}` does not take {method} requests."),
        )
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { drain } => ApiError::overloaded(whole_seconds(drain.unwrap_or_default())),
            SubmitError::WaitTooLong { predicted, limit } => ApiError {
                message: format!(
                    "The predicted queue wait of {:.1} s exceeds the server's limit of {:.1} s; retry after the time in Retry-After.",
                    predicted.as_secs_f64(),
                    limit.as_secs_f64()
                ),
                ..ApiError::overloaded(whole_seconds(predicted.saturating_sub(limit)))
            },
            SubmitError::Rejected(msg) => ApiError::bad_request(msg),
            SubmitError::ShuttingDown => ApiError::unavailable("The server is shutting down."),
        }
    }
}

/// A Retry-After value: whole seconds, rounded up, at least one.
fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
