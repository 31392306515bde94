//! What every handler shares: the server's settings, its metrics, the live tenant
//! table, and — once the model has loaded — the engine and tokenizer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::error::ApiError;
use super::tenants::{SharedTenants, TenantTable};
use crate::engine::service::EngineHandle;
use crate::metrics::Metrics;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients use in `model`; requests naming another model get 404.
    pub served_model: String,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    /// Serve `/invocations` as the anonymous tenant even when keys are required
    /// (SageMaker authenticates in front of it); otherwise it takes a key as `/v1` does.
    pub invocations_without_key: bool,
    /// SO_SNDBUF of each accepted connection; `None` leaves the kernel's autotuning.
    pub socket_send_buffer: Option<usize>,
}

/// Present once the model is loaded; until then `/health` and `/ping` say 503.
pub struct Ready {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub max_context: usize,
    /// Whether the backend can score prompts (`BackendInfo::prompt_logprobs`).
    pub prompt_logprobs: bool,
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    /// Who may call `/v1/*`; replaced whole on SIGHUP.
    pub tenants: SharedTenants,
    pub ready: Arc<OnceLock<Arc<Ready>>>,
    pub shutting_down: Arc<AtomicBool>,
    pub started: u64,
}

impl AppState {
    pub fn new(config: ServerConfig, metrics: Arc<Metrics>, tenants: TenantTable) -> Self {
        Self {
            config: Arc::new(config),
            metrics,
            tenants: SharedTenants::new(tenants),
            ready: Arc::new(OnceLock::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// The engine, if the server takes work now: 503 while loading or draining.
    pub fn ready(&self) -> Result<Arc<Ready>, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("The server is shutting down."));
        }
        self.ready.get().cloned().ok_or_else(|| ApiError::unavailable("The model is still loading."))
    }
}
