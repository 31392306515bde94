//! The HTTP API: OpenAI-compatible routes, SageMaker routes, health and metrics.
//! This is the only layer that knows JSON; it validates requests into the engine's
//! types and turns engine events back into responses and stream chunks.

pub mod arrival;
pub mod error;
pub mod handlers;
pub mod openapi;
pub mod ratelimit;
pub mod run;
pub mod server;
pub mod state;
pub mod tenants;
pub mod types;
pub mod usage;
pub mod validate;

pub use state::{AppState, Ready, ServerConfig};
