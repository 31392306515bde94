//! inflight: a local LLM inference server with continuous batching behind one
//! `Backend` trait (CPU today; CUDA and AWS Neuron planned).
//!
//! Dependencies point one way: `api → engine → backend → model`. `ARCHITECTURE.md`
//! has the map, the full layer table and the invariants; `tests/layers.rs` checks
//! the layers.

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
