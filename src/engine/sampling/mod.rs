//! Token sampling: turns one sequence's next-token logits into a token id and its
//! log-probabilities.
//!
//! The pipeline runs in the order vLLM and llama.cpp use: penalties (repetition over
//! prompt + output, presence / frequency over output) → greedy argmax when the
//! temperature is (near) zero → temperature → top-k → top-p → min-p → draw.
//! Reported logprobs are the log-softmax of the penalised logits, before temperature
//! and truncation, which is what vLLM reports by default.
//!
//! Invariants: nothing here panics on any logits (NaN counts as -inf, +inf as the
//! largest finite value); a `Sampler` with a seed draws the same tokens for the same
//! logits on every run of the same build.

mod logprobs;
mod params;
mod penalties;
mod sampler;
mod truncate;

pub use logprobs::token_logprobs;
pub use params::SamplingParams;
pub use sampler::{Sampled, Sampler};

/// The first index of the largest value: a greedy token without penalties, as the
/// offline tools (`inflight score`) and the tests pick one.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// What can go wrong with sampling parameters or logits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A request parameter is out of range; `param` is its OpenAI field name.
    #[error("invalid `{param}`: {message}")]
    InvalidParam { param: &'static str, message: String },
    /// Every logit was NaN or -inf (or there were none), so no token can be chosen.
    #[error("no finite logit to sample from")]
    NoFiniteLogits,
}

impl SamplingError {
    /// The request field to blame, for the API's `param` in a 400 response.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            SamplingError::InvalidParam { param, .. } => Some(param),
            SamplingError::NoFiniteLogits => None,
        }
    }
}
