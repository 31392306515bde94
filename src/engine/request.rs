//! What the engine accepts and what it reports back. A `GenerationRequest` is
//! already validated (parse, don't validate): the engine trusts its fields.

use super::sampling::SamplingParams;

/// Engine-wide id of one sequence (one choice of one HTTP request).
pub use crate::backend::SeqId;

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings; the matched text is not returned.
    pub stop: Vec<String>,
    /// Keep generating through EOS / end-of-turn tokens (benchmarks rely on it).
    pub ignore_eos: bool,
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
    },
    /// The sequence could not be completed; the message is safe to show a client.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct SeqEvent {
    pub id: SeqId,
    pub kind: EventKind,
}
