//! The device-neutral part of a model, which every backend shares: its
//! configuration (from GGUF metadata or `config.json`), its weights by name with
//! shapes checked (read onto whichever device a backend names), and the RoPE
//! tables. Forward passes are per backend (`backend::cpu`, …).

pub mod config;
pub mod rope;
pub mod weights;

use std::path::PathBuf;
use thiserror::Error;

pub use config::LlamaConfig;
pub use weights::{MatrixWeight, WeightSource};

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
