//! Turns a resolved model into a running backend plus its tokenizer: reads the
//! weights, builds the tokenizer from the same files, and picks the backend.

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BackendConfig, BackendError};
use crate::hub::ResolvedModel;
use crate::model::{Llama, LlamaConfig, ModelError, WeightSource};
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    Cuda,
    Neuron,
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub choice: BackendChoice,
    pub config: BackendConfig,
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

pub struct LoadedModel {
    pub tokenizer: Arc<Tokenizer>,
    pub backend: Box<dyn Backend>,
}

/// Opens the weights and tokenizer of a model (GGUF file or safetensors folder).
pub fn open(resolved: &ResolvedModel) -> Result<(WeightSource, LlamaConfig, Tokenizer), LoadError> {
    match resolved {
        ResolvedModel::Gguf(path) => {
            let w = WeightSource::open_gguf(path)?;
            let content = w.gguf_content().ok_or_else(|| ModelError::Load {
                path: path.clone(),
                message: "not a GGUF source".into(),
            })?;
            let cfg = LlamaConfig::from_gguf(content, path)?;
            let tok = Tokenizer::from_gguf(content)?;
            Ok((w, cfg, tok))
        }
        ResolvedModel::HfDir(dir) => {
            let cfg_path = dir.join("config.json");
            let json = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Load {
                path: cfg_path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let cfg = LlamaConfig::from_hf_json(&json, &cfg_path)?;
            let w = WeightSource::open_safetensors(dir)?;
            let tok = Tokenizer::from_hf_dir(dir)?;
            Ok((w, cfg, tok))
        }
    }
}

/// Loads the model onto the chosen backend.
pub fn load(resolved: &ResolvedModel, opts: &BackendOptions) -> Result<LoadedModel, LoadError> {
    let (w, cfg, tok) = open(resolved)?;
    if tok.vocab_size() > cfg.vocab_size {
        return Err(ModelError::Load {
            path: w.path().into(),
            message: format!(
                "tokenizer has {} tokens but the model only {} embeddings",
                tok.vocab_size(),
                cfg.vocab_size
            ),
        }
        .into());
    }
    let backend: Box<dyn Backend> = match opts.choice {
        BackendChoice::Cpu => {
            let model = Llama::load(&w, cfg)?;
            Box::new(CpuBackend::new(model, &opts.config)?)
        }
        BackendChoice::Cuda => {
            return Err(BackendError::Unavailable(
                "the CUDA backend is not available in this build (build with `--features cuda` on a machine with nvcc)".into(),
            )
            .into())
        }
        BackendChoice::Neuron => {
            return Err(BackendError::Unavailable(
                "the Neuron backend is not implemented yet in this build".into(),
            )
            .into())
        }
    };
    Ok(LoadedModel { tokenizer: Arc::new(tok), backend })
}

/// A short display name for a model path (its file or folder name).
pub fn display_name(path: &Path) -> String {
    path.file_stem().or(path.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}
