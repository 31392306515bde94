//! Turns a resolved model into a running backend plus its tokenizer: one loader
//! per backend, each reading the model source it understands (GGUF or safetensors
//! weights for the CPU; a folder of compiled artifacts for Neuron).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use candle_core::Device;

use crate::backend::cpu::{CpuBackend, CpuConfig, Llama};
use crate::backend::cuda::{self, CudaBackend, CudaConfig, TensorLlama};
use crate::backend::neuron::library::NrtApi;
use crate::backend::neuron::NeuronBackend;
use crate::backend::{Backend, BackendError, StepLimits};
use crate::hub::ResolvedModel;
use crate::model::{LlamaConfig, ModelError, WeightSource};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Which backend to load, with its own configuration.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    Cpu(CpuConfig),
    Cuda(CudaConfig),
    Neuron(NeuronConfig),
}

/// How the Neuron backend is set up.
#[derive(Debug, Clone, Default)]
pub struct NeuronConfig {
    pub limits: StepLimits,
    /// libnrt to load; `None` searches the usual places (`backend::neuron::library`).
    pub runtime_lib: Option<PathBuf>,
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

/// Opens the weights, config and tokenizer of a GGUF file or safetensors folder.
pub fn open(resolved: &ResolvedModel) -> Result<(WeightSource, LlamaConfig, Tokenizer), LoadError> {
    let (w, cfg, tok) = match resolved {
        ResolvedModel::Gguf(path) => {
            let w = WeightSource::open_gguf(path)?;
            let content = w.gguf_content().ok_or_else(|| ModelError::Load {
                path: path.clone(),
                message: "not a GGUF source".into(),
            })?;
            let cfg = LlamaConfig::from_gguf(content, path)?;
            let tok = Tokenizer::from_gguf(content)?;
            (w, cfg, tok)
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
            (w, cfg, tok)
        }
        ResolvedModel::Compiled(dir) => {
            return Err(ModelError::Load {
                path: dir.clone(),
                message: "holds compiled artifacts (manifest.json), which only a backend running compiled \
                          graphs loads; give a GGUF file or a safetensors folder"
                    .into(),
            }
            .into())
        }
    };
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
    Ok((w, cfg, tok))
}

/// Loads the model onto the configured backend.
pub fn load(resolved: &ResolvedModel, config: &BackendConfig) -> Result<LoadedModel, LoadError> {
    match config {
        BackendConfig::Cpu(cpu) => load_cpu(resolved, cpu),
        BackendConfig::Cuda(cuda) => load_cuda(resolved, cuda),
        BackendConfig::Neuron(neuron) => load_neuron(resolved, neuron),
    }
}

/// Loads libnrt first (so a machine without it fails here, naming every path
/// tried), then the compiled artifacts in the model folder onto it.
fn load_neuron(resolved: &ResolvedModel, config: &NeuronConfig) -> Result<LoadedModel, LoadError> {
    let api = NrtApi::open(config.runtime_lib.as_deref())?;
    let ResolvedModel::Compiled(dir) = resolved else {
        return Err(BackendError::Unavailable(format!(
            "the Neuron backend runs compiled artifacts: give --model a folder with a manifest.json (neuron/README.md), \
             not {}",
            resolved.path().display()
        ))
        .into());
    };
    let backend = NeuronBackend::load(dir, api, &config.limits)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    Ok(LoadedModel { tokenizer: Arc::new(tokenizer), backend: Box::new(backend) })
}

fn load_cpu(resolved: &ResolvedModel, config: &CpuConfig) -> Result<LoadedModel, LoadError> {
    let (w, cfg, tok) = open(resolved)?;
    load_cpu_opened(&w, cfg, tok, config)
}

/// Loads the CPU backend from a model already [`open`]ed: for a caller that needs
/// the tokenizer first (`generate` sizes the KV pool to its tokenized prompts).
pub fn load_cpu_opened(
    w: &WeightSource,
    cfg: LlamaConfig,
    tok: Tokenizer,
    config: &CpuConfig,
) -> Result<LoadedModel, LoadError> {
    let model = Llama::load(w, cfg)?;
    let backend = CpuBackend::new(model, config)?;
    Ok(LoadedModel { tokenizer: Arc::new(tok), backend: Box::new(backend) })
}

/// Opens the GPU first (so a machine without one fails before reading weights),
/// then loads the model onto it.
fn load_cuda(resolved: &ResolvedModel, config: &CudaConfig) -> Result<LoadedModel, LoadError> {
    let device = cuda::device::open(config.ordinal)?;
    load_on_device(resolved, device, config)
}

/// Loads the CUDA backend's forward pass on any candle device: a GPU, or the CPU
/// for the backend's twin in tests.
pub fn load_on_device(
    resolved: &ResolvedModel,
    device: Device,
    config: &CudaConfig,
) -> Result<LoadedModel, LoadError> {
    let (w, cfg, tok) = open(resolved)?;
    let max_context = config.limits.max_context.unwrap_or(cfg.max_position).min(cfg.max_position);
    let model = TensorLlama::load(&w, cfg, &device, CudaBackend::dtype_for(&device), max_context)?;
    device.synchronize().map_err(|e| LoadError::Model(e.into()))?;
    let backend = CudaBackend::new(model, device, config)?;
    Ok(LoadedModel { tokenizer: Arc::new(tok), backend: Box::new(backend) })
}

/// A short display name for a model path (its file or folder name).
pub fn display_name(path: &Path) -> String {
    path.file_stem().or(path.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}
