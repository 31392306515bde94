//! What the engine accepts and what it reports back. A `GenerationRequest` is
//! already validated (parse, don't validate): the engine trusts its fields.

use std::time::Instant;

use thiserror::Error;

use super::sampling::SamplingParams;

/// Engine-wide id of one sequence (one choice of one HTTP request).
pub use crate::backend::SeqId;

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// When the request reached the server (the HTTP layer's first look at it),
    /// so TTFT, E2E and queue time include tokenizing and the wait to be admitted.
    pub arrived: Instant,
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings; the matched text is not returned.
    pub stop: Vec<String>,
    /// Keep generating through EOS / end-of-turn tokens (benchmarks rely on it).
    pub ignore_eos: bool,
    /// Output tokens before which neither a stop token (it cannot be sampled) nor a
    /// stop string (its text is not matched) ends the sequence; at most
    /// `max_new_tokens`.
    pub min_tokens: usize,
    /// Token ids that end the sequence besides the model's stop tokens (whatever
    /// `ignore_eos` says); like those, their text is not returned.
    pub stop_token_ids: Vec<u32>,
    /// How the scheduler queues it (reserved or standard, whose fair share).
    pub class: SchedClass,
    /// Some(k): report every prompt token's logprob (after the first) with the k
    /// most likely alternatives, computed in the prefill (`echo` with `logprobs`).
    pub prompt_logprobs: Option<usize>,
}

/// How the scheduler treats a request: which queue it waits in and whose fair
/// share it draws on. The HTTP layer decides (from tenants and their reserved
/// rates); the engine knows no tenants, only these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedClass {
    pub priority: Priority,
    /// Standard work is shared among these keys (one per tenant) in proportion
    /// to `weight`, so one key's burst cannot starve another's request.
    pub share_key: u32,
    /// At least 1.
    pub weight: u32,
}

impl Default for SchedClass {
    fn default() -> Self {
        Self { priority: Priority::Standard, share_key: 0, weight: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Within a reserved rate: admitted before standard work, and may preempt it.
    Reserved,
    #[default]
    Standard,
}

/// Why a prompt cannot be served within the context.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens, which leaves no room for output in a context of {max_context}")]
    NoRoomForOutput { prompt: usize, max_context: usize },
    #[error("{prompt} prompt tokens plus {requested} output tokens exceed the context of {max_context}")]
    TooLong { prompt: usize, requested: usize, max_context: usize },
}

/// How many tokens a prompt of `prompt_len` may generate within `max_context`:
/// `requested` when prompt plus it fit, all the room left when `None`. The one
/// place that holds prompt plus output to the context; the HTTP API and the
/// `generate` command both ask it.
pub fn output_budget(
    prompt_len: usize,
    requested: Option<usize>,
    max_context: usize,
) -> Result<usize, ContextError> {
    if prompt_len == 0 {
        return Err(ContextError::EmptyPrompt);
    }
    if prompt_len >= max_context {
        return Err(ContextError::NoRoomForOutput { prompt: prompt_len, max_context });
    }
    match requested {
        None => Ok(max_context - prompt_len),
        Some(m) if m <= max_context - prompt_len => Ok(m),
        Some(m) => Err(ContextError::TooLong { prompt: prompt_len, requested: m, max_context }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, end-of-turn token or stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generated token as the client sees it.
#[derive(Debug, Clone)]
pub struct TokenOutput {
    pub token: u32,
    /// Text that became final with this token (may be empty: held back by an
    /// unfinished UTF-8 sequence or a possible stop string).
    pub text: String,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Token(TokenOutput),
    /// The last event of a sequence. `text` is whatever was still held back.
    Finished {
        reason: FinishReason,
        text: String,
        usage: Usage,
        /// What the request's `prompt_logprobs` asked for: one entry per prompt
        /// token after the first (the first has no context to be predicted from),
        /// its `text` empty.
        prompt_logprobs: Option<Vec<TokenOutput>>,
    },
    /// The sequence could not be completed; the message is safe to show a client.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct SeqEvent {
    pub id: SeqId,
    pub kind: EventKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_budget_holds_prompt_plus_output_to_the_context() {
        assert_eq!(output_budget(10, None, 64), Ok(54));
        assert_eq!(output_budget(10, Some(54), 64), Ok(54));
        assert_eq!(
            output_budget(10, Some(55), 64),
            Err(ContextError::TooLong { prompt: 10, requested: 55, max_context: 64 })
        );
        assert_eq!(
            output_budget(64, None, 64),
            Err(ContextError::NoRoomForOutput { prompt: 64, max_context: 64 })
        );
        assert_eq!(output_budget(0, Some(1), 64), Err(ContextError::EmptyPrompt));
        assert!(output_budget(1, Some(usize::MAX), 64).is_err(), "no overflow");
    }
}
