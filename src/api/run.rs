//! Drives validated requests through the engine: submits every (prompt, choice)
//! sequence, then either collects the results (one JSON response) or turns the
//! events into OpenAI stream chunks. Dropping what this returns aborts the
//! sequences, which is how a client disconnect frees its KV blocks.

use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};

use crate::engine::request::{EventKind, FinishReason, SchedClass, TokenOutput, Usage};
use crate::engine::service::{EngineHandle, SeqStream};

use super::error::ApiError;
use super::validate::ValidatedRequest;

/// One choice, complete.
#[derive(Debug, Clone, Default)]
pub struct ChoiceResult {
    pub text: String,
    pub tokens: Vec<TokenOutput>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
    /// The prompt's tokens after the first with their logprobs (`echo` with `logprobs`).
    pub prompt_logprobs: Option<Vec<TokenOutput>>,
}

/// An event of one choice, tagged with the choice index.
#[derive(Debug, Clone)]
pub struct ChoiceEvent {
    pub index: usize,
    pub kind: EventKind,
}

/// Admissions of one request in flight at once. Nobody reads a sequence's events
/// until all its siblings are admitted, and each admission waits up to an engine
/// step: one at a time, the first of a 256-sequence request would be ~255 tokens
/// ahead, near its bounded buffer (`engine::service::DEFAULT_STREAM_BUFFER`).
const ADMISSIONS_IN_FLIGHT: usize = 16;

/// Submits every sequence of the request as `class`, in order. If one is refused, the
/// ones already admitted are dropped (and so aborted) and the refusal is returned.
pub async fn submit(
    engine: &EngineHandle,
    req: &ValidatedRequest,
    arrived: Instant,
    class: SchedClass,
) -> Result<Vec<SeqStream>, ApiError> {
    let mut admitted = stream::iter(req.generation_requests(arrived, class))
        .map(|g| engine.submit(g))
        .buffered(ADMISSIONS_IN_FLIGHT);
    let mut streams = Vec::new();
    while let Some(s) = admitted.next().await {
        streams.push(s?);
    }
    Ok(streams)
}

fn events_of(s: SeqStream, index: usize) -> BoxStream<'static, ChoiceEvent> {
    stream::unfold(s, |mut s| async move { s.next().await.map(|kind| (kind, s)) })
        .map(move |kind| ChoiceEvent { index, kind })
        .boxed()
}

/// All choices' events interleaved in the order they happen.
pub fn merged(streams: Vec<SeqStream>) -> BoxStream<'static, ChoiceEvent> {
    stream::select_all(streams.into_iter().enumerate().map(|(i, s)| events_of(s, i))).boxed()
}

/// Waits for every choice to finish, within `timeout`.
pub async fn collect(streams: Vec<SeqStream>, timeout: Duration) -> Result<Vec<ChoiceResult>, ApiError> {
    let n = streams.len();
    let mut results = vec![ChoiceResult::default(); n];
    let mut events = merged(streams);
    let work = async {
        while let Some(ev) = events.next().await {
            let r = &mut results[ev.index];
            match ev.kind {
                EventKind::Token(t) => {
                    r.text.push_str(&t.text);
                    r.tokens.push(t);
                }
                EventKind::Finished { reason, text, usage, prompt_logprobs } => {
                    r.text.push_str(&text);
                    r.finish_reason = Some(reason);
                    r.usage = Some(usage);
                    r.prompt_logprobs = prompt_logprobs;
                }
                EventKind::Failed(msg) => return Err(ApiError::internal(msg)),
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ApiError::timeout())??;
    if results.iter().any(|r| r.finish_reason.is_none()) {
        return Err(ApiError::internal("the engine stopped before the request finished"));
    }
    Ok(results)
}

/// Usage of a whole request: the prompt counted once per prompt (not per choice),
/// completions summed over all choices.
pub fn total_usage(results: &[ChoiceResult], n: usize) -> Usage {
    let mut u = Usage { prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0 };
    for (i, r) in results.iter().enumerate() {
        if let Some(x) = &r.usage {
            if i % n.max(1) == 0 {
                u.prompt_tokens += x.prompt_tokens;
                u.cached_tokens += x.cached_tokens;
            }
            u.completion_tokens += x.completion_tokens;
        }
    }
    u
}
