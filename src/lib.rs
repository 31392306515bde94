//! inflight: a local LLM inference server with continuous batching and CPU, CUDA
//! and AWS Neuron backends.
//!
//! Dependencies point one way: `api → engine → backend → model → kernels`.
//! See `ARCHITECTURE.md` for the map and the invariants.

pub mod api;
pub mod backend;
pub mod bench;
pub mod engine;
pub mod fastexp;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod tokenizer;

#[doc(hidden)]
pub mod testing;
