//! The `Backend` trait: the one seam between the engine (which decides what runs)
//! and the hardware (which computes it).
//!
//! A backend describes itself with data ([`BackendInfo`]) and does one thing:
//! [`Backend::step`] runs the new tokens of several sequences through the model in
//! one pass and returns last-position logits for the sequences that asked for them.
//! The engine owns KV block *accounting*; the backend owns the memory those block
//! ids point at.

pub mod cpu;
pub mod cuda;
pub mod neuron;
mod step;

use thiserror::Error;

pub use step::{BlockId, Logits, PackedStep, SeqId, SeqStep, StepBatch};

/// The step limits a user asks for (flags); a backend may grant less and says what
/// in its [`BackendInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLimits {
    pub max_batch_tokens: usize,
    pub max_batch_seqs: usize,
    /// Longest sequence served; at most the model's own context length.
    pub max_context: Option<usize>,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self { max_batch_tokens: 2048, max_batch_seqs: 256, max_context: None }
    }
}

/// What a backend can do. The scheduler adapts to these numbers; it never asks
/// which backend it is talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Human-readable device name, e.g. `cpu (avx512vnni, 2 threads)`.
    pub device: String,
    /// Tokens per KV block. A backend that keeps one contiguous KV slot per sequence
    /// says so with one block of `max_context` tokens per slot.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Longest sequence (prompt plus generated tokens) the backend serves.
    pub max_context: usize,
    /// Logits per row returned by `step`.
    pub vocab_size: usize,
    /// What one step may hold.
    pub step: StepShapes,
    /// Whether full KV blocks may be shared between sequences (prefix caching).
    pub prefix_caching: bool,
    /// Whether `step` returns every row's logits for a chunk that asks for them
    /// (`SeqStep::all_logits`), as prompt logprobs need.
    pub prompt_logprobs: bool,
}

/// The shapes of step a backend can run: dynamic ones (CPU: any mix of chunks) or
/// the static buckets of compiled graphs (Neuron).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepShapes {
    /// Most tokens one step may carry; a prefill chunk counts at its padded length.
    pub max_tokens: usize,
    /// Most sequences one step may carry.
    pub max_seqs: usize,
    pub prefill: Prefill,
    /// Most sequences prefilling in one step.
    pub max_prefill_seqs: usize,
    /// Sequence counts a decode step is padded to, ascending; empty means any count
    /// up to `max_seqs`. The scheduler never exceeds the largest; the backend pads.
    pub decode_batch_sizes: Vec<usize>,
    /// Whether prefill and decode rows may share a step. When they may not, the
    /// scheduler alternates prefill-only and decode-only steps.
    pub mixed_prefill_decode: bool,
}

impl StepShapes {
    /// Any mix of chunks and decodes, as a backend with dynamic shapes runs.
    pub fn dynamic(max_tokens: usize, max_seqs: usize) -> Self {
        Self {
            max_tokens,
            max_seqs,
            prefill: Prefill::Chunked,
            max_prefill_seqs: max_seqs,
            decode_batch_sizes: Vec::new(),
            mixed_prefill_decode: true,
        }
    }

    /// Most sequences a decode step may carry.
    pub fn max_decode_seqs(&self) -> usize {
        self.decode_batch_sizes.last().map_or(self.max_seqs, |&b| b.min(self.max_seqs))
    }
}

/// How a sequence's prompt may be cut into prefill chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefill {
    /// Chunks of any length starting at any position (chunked prefill), so a long
    /// prompt shares steps with running decodes.
    Chunked,
    /// The sequence's whole remainder in one chunk, which the backend pads to the
    /// smallest of these lengths (ascending) that holds it. A sequence longer than
    /// the largest cannot be prefilled.
    Buckets(Vec<usize>),
}

impl Prefill {
    /// The length a chunk of `n` tokens occupies in a step: itself, or its bucket
    /// (`None` when no bucket holds it).
    pub fn padded_len(&self, n: usize) -> Option<usize> {
        match self {
            Prefill::Chunked => Some(n),
            Prefill::Buckets(lengths) => lengths.iter().copied().find(|&l| l >= n),
        }
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
    /// Runs every sequence's new tokens through the model and returns last-position
    /// logits for those that asked. The batch must fit `info()` ([`validate_step`]).
    fn step(&mut self, batch: &StepBatch) -> Result<Logits, BackendError>;
}

/// Checks the parts of a step every backend relies on, so each backend reports
/// a caller's mistake the same way instead of indexing out of bounds or running a
/// shape it has no graph for.
pub fn validate_step(info: &BackendInfo, batch: &StepBatch) -> Result<(), BackendError> {
    let bad = |m: String| Err(BackendError::InvalidStep(m));
    let shapes = &info.step;
    if batch.seqs.is_empty() {
        return bad("empty batch".into());
    }
    if batch.seqs.len() > shapes.max_seqs {
        return bad(format!(
            "{} sequences exceed the backend's limit of {}",
            batch.seqs.len(),
            shapes.max_seqs
        ));
    }
    let decodes = batch.seqs.iter().filter(|s| s.is_decode()).count();
    let prefills = batch.seqs.len() - decodes;
    if decodes > shapes.max_decode_seqs() {
        return bad(format!(
            "{decodes} decodes exceed the largest decode batch of {}",
            shapes.max_decode_seqs()
        ));
    }
    if prefills > shapes.max_prefill_seqs {
        return bad(format!("{prefills} prefills exceed the limit of {} per step", shapes.max_prefill_seqs));
    }
    if decodes > 0 && prefills > 0 && !shapes.mixed_prefill_decode {
        return bad("prefill and decode rows in one step, which this backend runs apart".into());
    }
    let mut tokens = 0;
    for (i, s) in batch.seqs.iter().enumerate() {
        if s.tokens.is_empty() {
            return bad(format!("sequence {i} has no tokens"));
        }
        tokens += if s.is_decode() {
            1
        } else {
            shapes.prefill.padded_len(s.tokens.len()).ok_or_else(|| {
                BackendError::InvalidStep(format!(
                    "sequence {i}'s prefill of {} tokens is longer than every prefill bucket",
                    s.tokens.len()
                ))
            })?
        };
        let end = s.end();
        if end > info.max_context {
            return bad(format!(
                "sequence {i} reaches position {end}, beyond the context of {}",
                info.max_context
            ));
        }
        if s.block_table.len() * info.block_size < end {
            return bad(format!(
                "sequence {i} needs {} blocks for {end} tokens but has {}",
                end.div_ceil(info.block_size),
                s.block_table.len()
            ));
        }
        if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= info.num_blocks) {
            return bad(format!("sequence {i} names block {b}, but the pool has {}", info.num_blocks));
        }
        if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
            return bad(format!(
                "sequence {i} has token id {t} outside the vocabulary of {}",
                info.vocab_size
            ));
        }
    }
    if tokens > shapes.max_tokens {
        return bad(format!("{tokens} tokens exceed the backend's limit of {} per step", shapes.max_tokens));
    }
    Ok(())
}
