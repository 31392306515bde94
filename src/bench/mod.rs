//! `inflight bench`: a client-side serving benchmark for any OpenAI-compatible
//! endpoint (inflight, vLLM, llama.cpp's server, …), measuring every request as
//! the client sees it.
//!
//! How a run flows through the files (`sweep` strings them together):
//! `workload` (what each request sends) → `driver` (when it is sent: closed-loop
//! concurrency, or open-loop arrivals from `arrivals`) → `client` (one streamed
//! request, timed chunk by chunk, into a `record::RequestRecord`) → `stats` (a load
//! level's records into a `LevelSummary`, goodput included) → `cost` (prices file →
//! dollars per token) → `results` (the JSON file: summaries plus every raw record)
//! → `table` (stdout), `report` (markdown across runs) and `plot` (SVG).
//! `endpoint` (completions or chat) is a leaf that `workload`, `client` and
//! `results` share, so the workload never depends on the client.
//!
//! Invariant: this module is only a client. It speaks OpenAI HTTP and knows nothing
//! of the engine, so its numbers mean the same against any server.

pub mod arrivals;
pub mod client;
pub mod cost;
pub mod driver;
pub mod endpoint;
pub mod plot;
pub mod record;
pub mod report;
pub mod results;
pub mod stats;
pub mod sweep;
pub mod table;
mod words;
pub mod workload;

use std::path::PathBuf;

/// What `inflight bench --help` and the README say the numbers mean.
pub const METRIC_DEFINITIONS: &str = "\
Metrics (vLLM `bench serve` definitions, measured at the client):
  TTFT    time from sending the request to the first streamed chunk that carries
          generated text (role-only or empty chunks do not count)
  ITL     every gap between consecutive text-carrying chunks, pooled over requests
  TPOT    per request: (E2E - TTFT) / (output tokens - 1); requests with one output
          token have none
  E2E     time from sending the request to the end of its stream
  Output tokens are the server's `usage.completion_tokens` (requested with
  `stream_options.include_usage`), cross-checked against the chunks received; a
  mismatch is reported. Input tokens are `usage.prompt_tokens`.
  Throughputs divide by the level's duration (first request sent to last one done):
  requests/s, output tokens/s, total (input + output) tokens/s; TPM = total tokens
  per minute (as OpenAI rate limits count them).
  Goodput: requests/s that succeeded and met every SLO given (--slo-*-ms). A level
  meets the SLOs when at least --slo-attainment % of its requests did.
  Percentiles: linear interpolation between closest ranks (numpy's default):
  p-th percentile of n sorted values = v[k] + (v[k+1] - v[k]) * f, where
  k + f = (p / 100) * (n - 1).
  Cost (with --instance-type or --price-per-hour): $ per 1M tokens = hourly price /
  (tokens/s * 3600) * 1e6; $ per 1,000 requests = hourly price / (requests/s * 3600)
  * 1000; only for the hardware the run measured.";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}, line {line}: {message}")]
    Dataset { path: PathBuf, line: usize, message: String },
    #[error("prices file {origin}: {message}")]
    Prices { origin: String, message: String },
    #[error("unknown instance type `{name}`; the prices file lists: {known}")]
    UnknownInstance { name: String, known: String },
    #[error("results file {path}: {source}")]
    Results { path: PathBuf, source: serde_json::Error },
    #[error("building the HTTP client: {0}")]
    Http(String),
    #[error("drawing the plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

impl BenchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io { path: path.into(), source }
    }
}
