//! Model code: configuration, weight loading (GGUF and safetensors) and the
//! llama-family forward pass over a step batch, with a paged KV cache.

pub mod attention;
pub mod config;
mod elementwise;
pub mod fastexp;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod profile;
pub mod rope;
pub mod weights;

use std::path::PathBuf;
use thiserror::Error;

pub use config::LlamaConfig;
pub use kv_cache::PagedKvCache;
pub use llama::{Llama, SeqInput};
pub use weights::WeightSource;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: unsupported architecture `{arch}` (supported: llama)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    BadShape { path: PathBuf, name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("{path}: missing or invalid metadata `{key}`")]
    Metadata { path: PathBuf, key: String },
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
}
