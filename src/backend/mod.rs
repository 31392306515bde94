//! The `Backend` trait: the one seam between the engine (which decides what runs)
//! and the hardware (which computes it).
//!
//! A backend describes itself with data ([`BackendInfo`]) and does one thing:
//! [`Backend::step`] runs the new tokens of several sequences through the model in
//! one pass and returns last-position logits for the sequences that asked for them.
//! The engine owns KV block *accounting*; the backend owns the memory those block
//! ids point at.

pub mod cpu;

use thiserror::Error;

pub use crate::model::kv_cache::KvDtype;

/// Index of one KV block in a backend's pool.
pub type BlockId = u32;

#[derive(Debug, Clone)]
/// What every backend is sized by: its KV pool and the limits of one step.
pub struct BackendConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory for the KV pool; the block count follows from it.
    pub kv_cache_bytes: usize,
    /// How cached K/V values are stored.
    pub kv_dtype: KvDtype,
    pub max_batch_tokens: usize,
    pub max_batch_seqs: usize,
    /// Longest sequence served; at most the model's own context length.
    pub max_context: Option<usize>,
    /// Host compute threads (default: one per core).
    pub threads: Option<usize>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 2 << 30,
            kv_dtype: KvDtype::default(),
            max_batch_tokens: 2048,
            max_batch_seqs: 256,
            max_context: None,
            threads: None,
        }
    }
}

/// What a backend can do. The scheduler adapts to these numbers; it never asks
/// which backend it is talking to.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Human-readable device name, e.g. `cpu (avx512vnni, 2 threads)`.
    pub device: String,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Most tokens one step may carry (prefill chunks plus decode tokens).
    pub max_batch_tokens: usize,
    /// Most sequences one step may carry.
    pub max_batch_seqs: usize,
    /// Longest sequence (prompt plus generated tokens) the model supports.
    pub max_context: usize,
    /// Logits per row returned by `step`.
    pub vocab_size: usize,
    /// Whether full KV blocks may be shared between sequences (prefix caching).
    pub supports_prefix_caching: bool,
}

/// One sequence's share of a step.
#[derive(Debug, Clone)]
pub struct SeqStep {
    /// The new tokens to run: a prefill chunk, or one decode token.
    pub tokens: Vec<u32>,
    /// Position of `tokens[0]` in the sequence; tokens before it are already in KV.
    pub start_pos: usize,
    /// The sequence's KV blocks in order; must cover `start_pos + tokens.len()`.
    pub block_table: Vec<BlockId>,
    /// Whether to return logits for the last token (false for non-final prefill
    /// chunks, which saves the output projection).
    pub want_logits: bool,
}

/// All work of one engine step.
#[derive(Debug, Clone, Default)]
pub struct StepBatch {
    pub seqs: Vec<SeqStep>,
}

impl StepBatch {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

/// Last-position logits: one row of `vocab_size` floats for every sequence of the
/// batch that set `want_logits`, in batch order.
#[derive(Debug, Clone)]
pub struct Logits {
    pub vocab_size: usize,
    /// `rows[i]` is the row index into `data` for batch entry `i`, if it has one.
    pub rows: Vec<Option<usize>>,
    pub data: Vec<f32>,
}

impl Logits {
    /// The logits row of batch entry `i`, if it asked for one.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let r = (*self.rows.get(i)?)?;
        self.data.get(r * self.vocab_size..(r + 1) * self.vocab_size)
    }
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("invalid step: {0}")]
    InvalidStep(String),
    #[error("model error: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Unavailable(String),
    #[error("neuron runtime call {op} failed with status {status} ({message})")]
    Nrt { op: &'static str, status: u32, message: String },
}

pub trait Backend: Send {
    fn info(&self) -> &BackendInfo;
    fn step(&mut self, batch: &StepBatch) -> Result<Logits, BackendError>;
}

/// Checks the parts of a step every backend relies on, so each backend reports
/// a caller's mistake the same way instead of indexing out of bounds.
pub fn validate_step(info: &BackendInfo, batch: &StepBatch) -> Result<(), BackendError> {
    if batch.seqs.is_empty() {
        return Err(BackendError::InvalidStep("empty batch".into()));
    }
    if batch.seqs.len() > info.max_batch_seqs {
        return Err(BackendError::InvalidStep(format!(
            "{} sequences exceed the backend's limit of {}",
            batch.seqs.len(),
            info.max_batch_seqs
        )));
    }
    if batch.num_tokens() > info.max_batch_tokens {
        return Err(BackendError::InvalidStep(format!(
            "{} tokens exceed the backend's limit of {} per step",
            batch.num_tokens(),
            info.max_batch_tokens
        )));
    }
    for (i, s) in batch.seqs.iter().enumerate() {
        if s.tokens.is_empty() {
            return Err(BackendError::InvalidStep(format!("sequence {i} has no tokens")));
        }
        let end = s.start_pos + s.tokens.len();
        if end > info.max_context {
            return Err(BackendError::InvalidStep(format!(
                "sequence {i} reaches position {end}, beyond the context of {}",
                info.max_context
            )));
        }
        if s.block_table.len() * info.block_size < end {
            return Err(BackendError::InvalidStep(format!(
                "sequence {i} needs {} blocks for {end} tokens but has {}",
                end.div_ceil(info.block_size),
                s.block_table.len()
            )));
        }
        if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= info.num_blocks) {
            return Err(BackendError::InvalidStep(format!(
                "sequence {i} names block {b}, but the pool has {}",
                info.num_blocks
            )));
        }
        if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(BackendError::InvalidStep(format!(
                "sequence {i} has token id {t} outside the vocabulary of {}",
                info.vocab_size
            )));
        }
    }
    Ok(())
}
