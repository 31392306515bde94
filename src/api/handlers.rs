//! The OpenAI endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//! and SageMaker's `/invocations`, which takes either body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::engine::request::{EventKind, TokenOutput, Usage};
use crate::tokenizer::Tokenizer;

use super::arrival::Arrival;
use super::error::ApiError;
use super::ratelimit::{self, OutputMeter};
use super::run::{self, ChoiceResult};
use super::state::{AppState, Ready};
use super::tenants::{InFlightGuard, Tenant};
use super::types::*;
use super::validate::{self, Endpoint, Limits, Prompt, TenantTokenCap, ValidatedRequest};

/// Reads a JSON body: malformed JSON (or not UTF-8, or nested too deep) is 400, a
/// well-formed body with wrong types or missing fields is 422, too large is 413.
pub fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    parse_json(&bytes)
}

/// A JSON body's bytes as `T`: malformed JSON is 400, the wrong shape 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::unprocessable(format!("invalid request: {e}")),
        _ => ApiError::bad_request(format!("malformed JSON body: {e}")),
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage_out(u: &Usage) -> UsageOut {
    UsageOut {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
    }
}

fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.token_str(id).unwrap_or_default()
}

fn chat_logprob(tok: &Tokenizer, t: &TokenOutput) -> ChatTokenLogprob {
    let token = token_text(tok, t.token);
    ChatTokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob: t.logprob,
        top_logprobs: t
            .top_logprobs
            .iter()
            .map(|&(id, lp)| {
                let token = token_text(tok, id);
                TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob: lp }
            })
            .collect(),
    }
}

fn completion_logprobs(tok: &Tokenizer, tokens: &[TokenOutput], offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    push_logprobs(&mut lp, tok, tokens, offset);
    lp
}

/// Appends `tokens` (their text starting at byte `offset` of the choice's text).
fn push_logprobs(lp: &mut CompletionLogprobs, tok: &Tokenizer, tokens: &[TokenOutput], mut offset: usize) {
    for t in tokens {
        let s = token_text(tok, t.token);
        lp.text_offset.push(offset);
        offset += s.len();
        lp.tokens.push(s);
        lp.token_logprobs.push(Some(t.logprob));
        lp.top_logprobs.push(Some(
            t.top_logprobs.iter().map(|&(id, v)| (token_text(tok, id), serde_json::json!(v))).collect(),
        ));
    }
}

/// `echo` with `logprobs`: the prompt's tokens (the first with `null`s, nothing
/// predicts it), then the output's, whose text follows the prompt's.
fn echoed_logprobs(
    tok: &Tokenizer,
    prompt: &Prompt,
    scored: &[TokenOutput],
    output: &[TokenOutput],
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    if let Some(&first) = prompt.ids.first() {
        let s = token_text(tok, first);
        lp.text_offset.push(0);
        lp.tokens.push(s.clone());
        lp.token_logprobs.push(None);
        lp.top_logprobs.push(None);
        push_logprobs(&mut lp, tok, scored, s.len());
    }
    push_logprobs(&mut lp, tok, output, prompt.text.len());
    lp
}

/// Validation tokenizes, which is CPU work: keep it off the async workers.
async fn validated(
    ready: &Arc<Ready>,
    served: &str,
    tenant: &Arc<Tenant>,
    endpoint: Endpoint,
    body: serde_json::Value,
) -> Result<ValidatedRequest, ApiError> {
    let ready = ready.clone();
    let served = served.to_string();
    let tenant = tenant.clone();
    tokio::task::spawn_blocking(move || {
        let limits = Limits {
            tokenizer: &ready.tokenizer,
            served_model: &served,
            max_context: ready.max_context,
            prompt_logprobs: ready.prompt_logprobs,
            tenant_cap: tenant
                .max_tokens_per_request
                .map(|max_tokens| TenantTokenCap { tenant: &tenant.name, max_tokens }),
        };
        validate::body(endpoint, body, &limits)
    })
    .await
    .map_err(|e| ApiError::internal(format!("validation task failed: {e}")))?
}

/// Takes one of the tenant's concurrent-request slots, or refuses with 429.
fn admit(state: &AppState, tenant: &Tenant) -> Result<InFlightGuard, ApiError> {
    tenant.in_flight.try_acquire(tenant.max_concurrent_requests).ok_or_else(|| {
        state.metrics.observe_tenant_throttled(&tenant.name);
        ApiError::tenant_at_concurrency_limit(&tenant.name, tenant.max_concurrent_requests.unwrap_or(0))
    })
}

/// The response with `slot` held until its body has been sent or dropped: a
/// stream keeps its tenant's slot until it ends or the client hangs up.
fn holding_until_sent(resp: Response, slot: InFlightGuard) -> Response {
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

async fn serve(
    state: AppState,
    tenant: Arc<Tenant>,
    endpoint: Endpoint,
    body: serde_json::Value,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let slot = admit(&state, &tenant)?;
    let req = validated(&ready, &state.config.served_model, &tenant, endpoint, body).await?;
    let grant = ratelimit::admit(&state.metrics, &tenant, req.prompt_tokens_all_choices())?;
    let id = match endpoint {
        Endpoint::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        Endpoint::Completion => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    let span = tracing::info_span!("request", request_id = %id, tenant = %tenant.name, prompts = req.prompts.len(), n = req.n, stream = req.stream, priority = ?grant.class.priority);
    async move {
        tracing::debug!(prompt_tokens = req.prompts.iter().map(|p| p.ids.len()).sum::<usize>(), "admitting");
        let streams = run::submit(&ready.engine, &req, arrived, grant.class).await?;
        let resp = if req.stream {
            stream_response(state, ready, req, streams, id, endpoint, Billing { tenant, meter: grant.meter })
        } else {
            let results = run::collect(streams, state.config.request_timeout).await?;
            let usage = run::total_usage(&results, req.n);
            grant.meter.charge(usage.completion_tokens);
            served(&state, &tenant, &usage);
            match endpoint {
                Endpoint::Chat => Json(chat_response(&ready, &req, &results, id)).into_response(),
                Endpoint::Completion => Json(completion_response(&ready, &req, &results, id)).into_response(),
            }
        };
        Ok(holding_until_sent(resp, slot))
    }
    .instrument(span)
    .await
}

/// Counts a finished request's usage for its tenant: metrics and `/v1/usage`.
fn served(state: &AppState, tenant: &Tenant, usage: &Usage) {
    state.metrics.observe_tenant_tokens(&tenant.name, usage.prompt_tokens, usage.completion_tokens);
    tenant.ledger.note_served(usage.prompt_tokens as u64, usage.completion_tokens as u64);
}

fn chat_response(
    ready: &Ready,
    req: &ValidatedRequest,
    results: &[ChoiceResult],
    id: String,
) -> ChatCompletion {
    ChatCompletion {
        id,
        object: "chat.completion",
        created: now_secs(),
        model: req.model.clone(),
        choices: results
            .iter()
            .enumerate()
            .map(|(i, r)| ChatChoice {
                index: i,
                message: ChatMessageOut { role: "assistant", content: r.text.clone() },
                logprobs: req.logprobs.map(|_| ChatLogprobs {
                    content: r.tokens.iter().map(|t| chat_logprob(&ready.tokenizer, t)).collect(),
                }),
                finish_reason: r.finish_reason.map(|f| f.as_str()),
            })
            .collect(),
        usage: usage_out(&run::total_usage(results, req.n)),
    }
}

fn completion_response(
    ready: &Ready,
    req: &ValidatedRequest,
    results: &[ChoiceResult],
    id: String,
) -> Completion {
    Completion {
        id,
        object: "text_completion",
        created: now_secs(),
        model: req.model.clone(),
        choices: results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let prompt = &req.prompts[i / req.n];
                let prefix = if req.echo { prompt.text.clone() } else { String::new() };
                let logprobs = match (&req.logprobs, &r.prompt_logprobs) {
                    (None, _) => None,
                    (Some(_), Some(scored)) => {
                        Some(echoed_logprobs(&ready.tokenizer, prompt, scored, &r.tokens))
                    }
                    (Some(_), None) => Some(completion_logprobs(&ready.tokenizer, &r.tokens, prefix.len())),
                };
                CompletionChoice {
                    index: i,
                    logprobs,
                    text: prefix + &r.text,
                    finish_reason: r.finish_reason.map(|f| f.as_str()),
                }
            })
            .collect(),
        usage: Some(usage_out(&run::total_usage(results, req.n))),
    }
}

/// Builds the stream-chunk JSON for one event of one choice, if it says anything.
fn chunk_for(
    endpoint: Endpoint,
    ready: &Ready,
    req: &ValidatedRequest,
    head: (&str, u64),
    index: usize,
    kind: &EventKind,
) -> Option<serde_json::Value> {
    let (text, token, finish) = match kind {
        EventKind::Token(t) => (t.text.clone(), Some(t), None),
        EventKind::Finished { reason, text, .. } => (text.clone(), None, Some(reason.as_str())),
        EventKind::Failed(_) => return None,
    };
    let has_logprobs = req.logprobs.is_some() && token.is_some();
    if text.is_empty() && finish.is_none() && !has_logprobs {
        return None;
    }
    let value = match endpoint {
        Endpoint::Chat => serde_json::to_value(ChatCompletionChunk {
            id: head.0.to_string(),
            object: "chat.completion.chunk",
            created: head.1,
            model: req.model.clone(),
            choices: vec![ChatChunkChoice {
                index,
                delta: ChatDelta {
                    role: None,
                    content: (!text.is_empty() || finish.is_none()).then_some(text),
                },
                logprobs: token
                    .filter(|_| has_logprobs)
                    .map(|t| ChatLogprobs { content: vec![chat_logprob(&ready.tokenizer, t)] }),
                finish_reason: finish,
            }],
            usage: None,
        }),
        Endpoint::Completion => serde_json::to_value(Completion {
            id: head.0.to_string(),
            object: "text_completion",
            created: head.1,
            model: req.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs: token
                    .filter(|_| has_logprobs)
                    .map(|t| completion_logprobs(&ready.tokenizer, std::slice::from_ref(t), 0)),
                finish_reason: finish,
            }],
            usage: None,
        }),
    };
    value.ok()
}

/// Whom a streamed response's tokens are counted to, and the meter that charges
/// its output to the tenant's buckets.
struct Billing {
    tenant: Arc<Tenant>,
    meter: OutputMeter,
}

fn stream_response(
    state: AppState,
    ready: Arc<Ready>,
    req: ValidatedRequest,
    streams: Vec<crate::engine::service::SeqStream>,
    id: String,
    endpoint: Endpoint,
    billing: Billing,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let timeout = state.config.request_timeout;
    let span = tracing::Span::current();
    // The producer owns the sequences: when the client goes away the channel
    // closes, the producer returns, and dropping the streams aborts them.
    tokio::spawn(
        async move {
            let head = (id.as_str(), now_secs());
            if endpoint == Endpoint::Chat
                && send_role_chunks(&tx, head, &req.model, streams.len()).await.is_err()
            {
                return;
            }
            if endpoint == Endpoint::Completion
                && req.echo
                && send_echo_chunks(&tx, head, &req).await.is_err()
            {
                return;
            }
            let chunk = |index, kind: &EventKind| chunk_for(endpoint, &ready, &req, head, index, kind);
            let Ok(usage) = forward_events(&tx, streams, timeout, chunk, &billing.meter).await else {
                return;
            };
            let results: Vec<ChoiceResult> =
                usage.iter().map(|u| ChoiceResult { usage: u.clone(), ..Default::default() }).collect();
            served(&state, &billing.tenant, &run::total_usage(&results, req.n));
            if req.include_usage && send_json(&tx, &usage_chunk(endpoint, &req, head, usage)).await.is_err() {
                return;
            }
            let _ = tx.send(Event::default().data("[DONE]")).await;
        }
        .instrument(span),
    );
    Sse::new(ReceiverStream::new(rx).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A chat stream opens every choice with a chunk that names the assistant role and
/// carries no text yet, as OpenAI's streams do.
async fn send_role_chunks(
    tx: &mpsc::Sender<Event>,
    head: (&str, u64),
    model: &str,
    choices: usize,
) -> Result<(), ()> {
    for index in 0..choices {
        let first = ChatCompletionChunk {
            id: head.0.to_string(),
            object: "chat.completion.chunk",
            created: head.1,
            model: model.to_string(),
            choices: vec![ChatChunkChoice {
                index,
                delta: ChatDelta { role: Some("assistant"), content: Some(String::new()) },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        send_json(tx, &first).await?;
    }
    Ok(())
}

/// A streamed completion with `echo` opens every choice with its prompt's text, as
/// the non-streamed response puts it before the output (and as vLLM streams it).
/// Choices are ordered by prompt, then by choice (`generation_requests`).
async fn send_echo_chunks(
    tx: &mpsc::Sender<Event>,
    head: (&str, u64),
    req: &ValidatedRequest,
) -> Result<(), ()> {
    for (p, prompt) in req.prompts.iter().enumerate() {
        for j in 0..req.n {
            let first = Completion {
                id: head.0.to_string(),
                object: "text_completion",
                created: head.1,
                model: req.model.clone(),
                choices: vec![CompletionChoice {
                    index: p * req.n + j,
                    text: prompt.text.clone(),
                    logprobs: None,
                    finish_reason: None,
                }],
                usage: None,
            };
            send_json(tx, &first).await?;
        }
    }
    Ok(())
}

/// Sends a chunk for every event of every choice until all have finished, and
/// returns each choice's usage. `Err` means the stream is over already: the client
/// went away, or an engine failure or the request timeout was sent as an error
/// body.
///
/// Output is charged to `meter` per choice: when a choice finishes, its usage's
/// completion tokens; when the stream ends early, the tokens it had produced.
async fn forward_events(
    tx: &mpsc::Sender<Event>,
    streams: Vec<crate::engine::service::SeqStream>,
    timeout: std::time::Duration,
    chunk: impl Fn(usize, &EventKind) -> Option<serde_json::Value>,
    meter: &OutputMeter,
) -> Result<Vec<Option<Usage>>, ()> {
    let mut usage = vec![None; streams.len()];
    let mut produced = vec![0usize; streams.len()];
    let charge_unfinished = |usage: &[Option<Usage>], produced: &[usize]| {
        let open = usage.iter().zip(produced).filter(|(u, _)| u.is_none()).map(|(_, n)| n).sum();
        meter.charge(open);
    };
    let mut events = run::merged(streams);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = &mut deadline => {
                charge_unfinished(&usage, &produced);
                // The other choices are aborted now, not once a slow client has
                // read the error.
                drop(events);
                let _ = send_json(tx, &ApiError::timeout().body()).await;
                return Err(());
            }
        };
        let Some(ev) = ev else { break };
        match &ev.kind {
            EventKind::Failed(msg) => {
                charge_unfinished(&usage, &produced);
                drop(events);
                let _ = send_json(tx, &ApiError::internal(msg.clone()).body()).await;
                return Err(());
            }
            EventKind::Finished { usage: u, .. } => {
                meter.charge(u.completion_tokens);
                usage[ev.index] = Some(u.clone());
            }
            EventKind::Token(_) => produced[ev.index] += 1,
        }
        if let Some(chunk) = chunk(ev.index, &ev.kind) {
            if send_json(tx, &chunk).await.is_err() {
                charge_unfinished(&usage, &produced);
                return Err(());
            }
        }
    }
    Ok(usage)
}

/// The last chunk when `stream_options.include_usage` asks for it: no choices, and
/// the usage of the whole request.
fn usage_chunk(
    endpoint: Endpoint,
    req: &ValidatedRequest,
    head: (&str, u64),
    usage: Vec<Option<Usage>>,
) -> serde_json::Value {
    let results: Vec<ChoiceResult> =
        usage.into_iter().map(|u| ChoiceResult { usage: u, ..Default::default() }).collect();
    let u = usage_out(&run::total_usage(&results, req.n));
    serde_json::json!({
        "id": head.0, "object": if endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": head.1, "model": req.model, "choices": [], "usage": u,
    })
}

async fn send_json<T: serde::Serialize>(tx: &mpsc::Sender<Event>, v: &T) -> Result<(), ()> {
    let data = serde_json::to_string(v).map_err(|_| ())?;
    tx.send(Event::default().data(data)).await.map_err(|_| ())
}

/// The tenant `server` put in the request (every route to a handler here has
/// one); anonymous should a route ever lack it.
fn tenant_of(state: &AppState, found: Option<Extension<Arc<Tenant>>>) -> Arc<Tenant> {
    found.map_or_else(|| state.tenants.current().anonymous(), |Extension(t)| t)
}

pub async fn chat_completions(
    State(state): State<AppState>,
    tenant: Option<Extension<Arc<Tenant>>>,
    arrival: Option<Extension<Arrival>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let tenant = tenant_of(&state, tenant);
    let result = async {
        let value: serde_json::Value = parse_body(body, state.config.max_request_bytes)?;
        serve(state.clone(), tenant, Endpoint::Chat, value, Arrival::of(arrival)).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(
    State(state): State<AppState>,
    tenant: Option<Extension<Arc<Tenant>>>,
    arrival: Option<Extension<Arrival>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let tenant = tenant_of(&state, tenant);
    let result = async {
        let value: serde_json::Value = parse_body(body, state.config.max_request_bytes)?;
        serve(state.clone(), tenant, Endpoint::Completion, value, Arrival::of(arrival)).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// SageMaker's `POST /invocations`: a chat body (has `messages`) or a completions
/// body (has `prompt`); streams when `"stream": true`.
pub async fn invocations(
    State(state): State<AppState>,
    tenant: Option<Extension<Arc<Tenant>>>,
    arrival: Option<Extension<Arrival>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let tenant = tenant_of(&state, tenant);
    let result = async {
        let value: serde_json::Value = parse_body(body, state.config.max_request_bytes)?;
        let endpoint = if value.get("messages").is_some() {
            Endpoint::Chat
        } else if value.get("prompt").is_some() {
            Endpoint::Completion
        } else {
            return Err(ApiError::unprocessable(
                "the body needs `messages` (chat) or `prompt` (completions)",
            ));
        };
        serve(state.clone(), tenant, endpoint, value, Arrival::of(arrival)).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn models(State(state): State<AppState>) -> Response {
    let max_model_len = state.ready.get().map(|r| r.max_context).unwrap_or(0);
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.config.served_model.clone(),
            object: "model",
            created: state.started,
            owned_by: "inflight",
            max_model_len,
        }],
    })
    .into_response()
}
