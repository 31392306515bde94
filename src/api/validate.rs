//! Parse, don't validate: turns an OpenAI request body into a `ValidatedRequest`,
//! with every parameter range-checked and every prompt tokenized and measured
//! against the context. The engine accepts nothing else.

use std::time::Instant;

use crate::engine::request::{output_budget, ContextError, GenerationRequest, SchedClass};
use crate::engine::sampling::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};

use super::error::ApiError;
use super::types::{ChatCompletionRequest, CommonParams, CompletionRequest, MessageContent, PromptInput};

/// Which body a request carries: a chat or a text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// Most choices (`n`) one request may ask for, and most sequences (prompts × n).
pub const MAX_N: usize = 64;
pub const MAX_SEQUENCES_PER_REQUEST: usize = 256;

/// What the server knows that validation needs.
pub struct Limits<'a> {
    pub tokenizer: &'a Tokenizer,
    pub served_model: &'a str,
    pub max_context: usize,
    /// Whether the backend can score prompts (`echo` with `logprobs`).
    pub prompt_logprobs: bool,
    /// The calling tenant's `max_tokens_per_request`, if it has one.
    pub tenant_cap: Option<TenantTokenCap<'a>>,
}

/// A tenant's most output tokens per request: asking for more is a 400 naming
/// the limit; asking for nothing gets at most this.
pub struct TenantTokenCap<'a> {
    pub tenant: &'a str,
    pub max_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The prompt as text, for `echo`.
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub model: String,
    pub prompts: Vec<Prompt>,
    pub n: usize,
    pub max_new_tokens: Vec<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub stream: bool,
    pub include_usage: bool,
    /// Some(k): report the chosen token's logprob and the top k alternatives.
    pub logprobs: Option<usize>,
    /// Return the prompt before the output; with `logprobs`, the prompt tokens'
    /// logprobs too (computed in the prefill).
    pub echo: bool,
}

impl ValidatedRequest {
    /// Prompt tokens of every choice: what the request asks of an input bucket.
    pub fn prompt_tokens_all_choices(&self) -> u64 {
        self.prompts.iter().map(|p| p.ids.len() as u64).sum::<u64>() * self.n as u64
    }

    /// The engine requests, one per (prompt, choice), in choice-index order, for a
    /// request that reached the server at `arrived`, scheduled as `class`.
    pub fn generation_requests(&self, arrived: Instant, class: SchedClass) -> Vec<GenerationRequest> {
        let mut out = Vec::with_capacity(self.prompts.len() * self.n);
        for (p, prompt) in self.prompts.iter().enumerate() {
            for j in 0..self.n {
                let mut sampling = self.sampling.clone();
                // Each choice gets its own stream of randomness, reproducibly.
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(j as u64));
                out.push(GenerationRequest {
                    arrived,
                    prompt_ids: prompt.ids.clone(),
                    max_new_tokens: self.max_new_tokens[p],
                    sampling,
                    stop: self.stop.clone(),
                    ignore_eos: self.ignore_eos,
                    min_tokens: self.min_tokens,
                    stop_token_ids: self.stop_token_ids.clone(),
                    class,
                    prompt_logprobs: if self.echo { self.logprobs } else { None },
                });
            }
        }
        out
    }
}

fn check_model(common: &CommonParams, limits: &Limits) -> Result<String, ApiError> {
    match &common.model {
        Some(m) if m != limits.served_model => Err(ApiError::model_not_found(m)),
        _ => Ok(limits.served_model.to_string()),
    }
}

/// `logit_bias`'s entries as `(id, bias)` by id: each key a token id of the
/// vocabulary (`vocab`: one past the largest), written in decimal.
fn logit_bias(common: &CommonParams, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = &common.logit_bias else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(map.len());
    for (key, &bias) in map {
        let id = key.parse::<u32>().ok().filter(|&id| (id as usize) < vocab).ok_or_else(|| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias keys must be token ids of the vocabulary (0..{vocab}), got {key:?}"),
            )
        })?;
        out.push((id, bias as f32));
    }
    // "7" and "07" name one token.
    out.sort_unstable_by_key(|&(id, _)| id);
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::invalid("logit_bias", format!("token id {} is listed twice", w[0].0)));
    }
    Ok(out)
}

/// `response_format` text only, and none of vLLM's `guided_*` / `structured_outputs`:
/// each asks for constrained decoding, which this server does not have; refusing
/// says so where ignoring would return text the client then fails to parse.
fn check_no_constrained_decoding(common: &CommonParams) -> Result<(), ApiError> {
    let guided = [
        ("guided_json", &common.guided_json),
        ("guided_regex", &common.guided_regex),
        ("guided_choice", &common.guided_choice),
        ("guided_grammar", &common.guided_grammar),
        ("structured_outputs", &common.structured_outputs),
    ];
    if let Some((param, _)) = guided.iter().find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null())) {
        return Err(ApiError::invalid(
            param,
            format!("{param} is not supported: this server has no constrained decoding"),
        ));
    }
    let Some(format) = &common.response_format else { return Ok(()) };
    match format.get("type").and_then(|t| t.as_str()) {
        Some("text") => Ok(()),
        Some(kind) => Err(ApiError::invalid(
            "response_format",
            format!("response_format `{kind}` is not supported: this server has no constrained decoding; only `text` is"),
        )),
        None => Err(ApiError::invalid("response_format", "response_format must be an object with a `type`")),
    }
}

/// `ids` as token ids, each of the vocabulary (`vocab`: one past the largest), or a
/// 400 naming `param` and the first id outside it.
fn token_ids(param: &str, ids: &[i64], vocab: usize) -> Result<Vec<u32>, ApiError> {
    if let Some(bad) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
        return Err(ApiError::invalid(
            param,
            format!("token id {bad} is outside the vocabulary (0..{vocab})"),
        ));
    }
    Ok(ids.iter().map(|&id| id as u32).collect())
}

fn sampling_params(
    common: &CommonParams,
    logprobs: Option<usize>,
    vocab: usize,
) -> Result<SamplingParams, ApiError> {
    let top_k = match common.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid("top_k", format!("top_k must be -1 (off) or positive, got {k}")))
        }
    };
    // Any integer is a valid seed; negative ones wrap, as with Python's hash seeds.
    let seed = common.seed.map(|s| s as u64);
    let params = SamplingParams {
        temperature: common.temperature.unwrap_or(1.0),
        top_k,
        top_p: common.top_p.unwrap_or(1.0),
        min_p: common.min_p.unwrap_or(0.0),
        repetition_penalty: common.repetition_penalty.unwrap_or(1.0),
        presence_penalty: common.presence_penalty.unwrap_or(0.0),
        frequency_penalty: common.frequency_penalty.unwrap_or(0.0),
        seed,
        logprobs,
        logit_bias: logit_bias(common, vocab)?,
    };
    params.validate().map_err(|e| ApiError::invalid(e.param().unwrap_or("sampling"), e.to_string()))?;
    Ok(params)
}

fn positive(param: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x >= 1 => Ok(Some(x as usize)),
        Some(x) => Err(ApiError::invalid(param, format!("`{param}` must be at least 1, got {x}"))),
    }
}

/// The output budget of one prompt (`engine::request::output_budget`), with
/// OpenAI's wording when it does not fit.
fn budget(
    prompt_len: usize,
    requested: Option<usize>,
    max_context: usize,
    what: &str,
) -> Result<usize, ApiError> {
    output_budget(prompt_len, requested, max_context).map_err(|e| match e {
        ContextError::EmptyPrompt => ApiError::invalid(what, "the prompt is empty"),
        ContextError::NoRoomForOutput { prompt, max_context } => ApiError::context_length(format!(
            "This model's maximum context length is {max_context} tokens. However, your {what} resulted in {prompt} tokens, which leaves no room for output."
        )),
        ContextError::TooLong { prompt, requested, max_context } => ApiError::context_length(format!(
            "This model's maximum context length is {max_context} tokens. However, you requested {} tokens ({prompt} in the {what}, {requested} in the completion). Please reduce the length of the {what} or completion.",
            prompt + requested
        )),
    })
}

fn common_fields(
    common: &CommonParams,
    prompts: Vec<Prompt>,
    limits: &Limits,
    logprobs: Option<usize>,
    echo: bool,
    what: &str,
) -> Result<ValidatedRequest, ApiError> {
    let model = check_model(common, limits)?;
    let n = positive("n", common.n)?.unwrap_or(1);
    if n > MAX_N {
        return Err(ApiError::invalid("n", format!("n must be at most {MAX_N}, got {n}")));
    }
    if prompts.len() * n > MAX_SEQUENCES_PER_REQUEST {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{} prompts × n = {n} exceeds {MAX_SEQUENCES_PER_REQUEST} sequences per request",
                prompts.len()
            ),
        ));
    }
    let (param, max_tokens) = match (common.max_completion_tokens, common.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", positive("max_completion_tokens", Some(v))?),
        // With `echo`, 0 asks for the prompt alone (scoring it, as evaluation
        // harnesses do); vLLM takes it too.
        (None, Some(0)) if echo => ("max_tokens", Some(0)),
        (None, v) => ("max_tokens", positive("max_tokens", v)?),
    };
    if let (Some(cap), Some(asked)) = (&limits.tenant_cap, max_tokens) {
        if asked > cap.max_tokens {
            return Err(ApiError::invalid(
                param,
                format!(
                    "{param} is {asked}, above tenant `{}`'s limit of {} tokens per request.",
                    cap.tenant, cap.max_tokens
                ),
            ));
        }
    }
    check_no_constrained_decoding(common)?;
    let sampling = sampling_params(common, logprobs, limits.tokenizer.vocab_size())?;
    let max_new_tokens = prompts
        .iter()
        .map(|p| {
            let room = budget(p.ids.len(), max_tokens, limits.max_context, what)?;
            Ok(limits.tenant_cap.as_ref().map_or(room, |cap| room.min(cap.max_tokens)))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let min_tokens = match common.min_tokens {
        None => 0,
        Some(m) if m < 0 => {
            return Err(ApiError::invalid("min_tokens", format!("min_tokens must be at least 0, got {m}")))
        }
        Some(m) => m as usize,
    };
    if let Some(&most) = max_new_tokens.iter().filter(|&&most| most < min_tokens).min() {
        return Err(ApiError::invalid(
            "min_tokens",
            format!("min_tokens is {min_tokens}, above the {most} output tokens this request may generate"),
        ));
    }
    let stop: Vec<String> = common.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::invalid("stop", "at most 16 stop sequences"));
    }
    Ok(ValidatedRequest {
        model,
        prompts,
        n,
        max_new_tokens,
        sampling,
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        ignore_eos: common.ignore_eos,
        min_tokens,
        stop_token_ids: token_ids(
            "stop_token_ids",
            common.stop_token_ids.as_deref().unwrap_or_default(),
            limits.tokenizer.vocab_size(),
        )?,
        stream: common.stream,
        include_usage: common.stream_options.as_ref().is_some_and(|o| o.include_usage),
        logprobs,
        echo,
    })
}

fn message_text(content: &Option<MessageContent>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(s)) => Ok(s.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("content parts of type `{kind}` are not supported by this text model"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// A JSON body for `endpoint`, read into its request type (the wrong shape is 422)
/// and validated: the whole way from the wire to what the engine accepts.
pub fn body(
    endpoint: Endpoint,
    body: serde_json::Value,
    limits: &Limits,
) -> Result<ValidatedRequest, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::unprocessable(format!("invalid request: {e}"));
    match endpoint {
        Endpoint::Chat => chat(&serde_json::from_value(body).map_err(invalid)?, limits),
        Endpoint::Completion => completion(&serde_json::from_value(body).map_err(invalid)?, limits),
    }
}

pub fn chat(req: &ChatCompletionRequest, limits: &Limits) -> Result<ValidatedRequest, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must hold at least one message"));
    }
    let messages = req
        .messages
        .iter()
        .map(|m| Ok(ChatMessage { role: m.role.clone(), content: message_text(&m.content)? }))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = limits
        .tokenizer
        .apply_chat_template(&messages, true)
        .map_err(|e| ApiError::invalid("messages", format!("cannot apply the chat template: {e}")))?;
    let ids = limits
        .tokenizer
        .encode(&text, limits.tokenizer.add_bos_token())
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let logprobs = if req.logprobs {
        let k = req.top_logprobs.unwrap_or(0);
        if !(0..=20).contains(&k) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and 20, got {k}"),
            ));
        }
        Some(k as usize)
    } else if req.top_logprobs.is_some_and(|k| k > 0) {
        return Err(ApiError::invalid("top_logprobs", "top_logprobs needs `logprobs: true`"));
    } else {
        None
    };
    check_tool_choice(req.tool_choice.as_ref())?;
    common_fields(&req.common, vec![Prompt { ids, text }], limits, logprobs, false, "messages")
}

/// `tool_choice`: `tools` are ignored, so only the choices under which a text answer
/// is a valid one pass; `"required"` or a named function would be silently broken.
fn check_tool_choice(choice: Option<&serde_json::Value>) -> Result<(), ApiError> {
    match choice {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(c) if c == "auto" || c == "none" => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "tool_choice",
            "tool calling is not supported: tool_choice must be \"auto\" or \"none\"",
        )),
    }
}

pub fn completion(req: &CompletionRequest, limits: &Limits) -> Result<ValidatedRequest, ApiError> {
    let tok = limits.tokenizer;
    let from_text = |s: &str| -> Result<Prompt, ApiError> {
        let ids =
            tok.encode(s, tok.add_bos_token()).map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        Ok(Prompt { ids, text: s.to_string() })
    };
    let from_ids = |ids: &[i64]| -> Result<Prompt, ApiError> {
        let ids = token_ids("prompt", ids, tok.vocab_size())?;
        let text = tok.decode(&ids, false).unwrap_or_default();
        Ok(Prompt { ids, text })
    };
    let prompts = match &req.prompt {
        PromptInput::Text(s) => vec![from_text(s)?],
        PromptInput::Texts(v) => v.iter().map(|s| from_text(s)).collect::<Result<_, _>>()?,
        PromptInput::Tokens(ids) => vec![from_ids(ids)?],
        PromptInput::TokenLists(v) => v.iter().map(|ids| from_ids(ids)).collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must hold at least one prompt"));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and 20, got {k}")))
        }
    };
    if req.suffix.as_ref().is_some_and(|s| !s.is_null() && s != "") {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    let n = req.common.n.unwrap_or(1);
    match req.best_of {
        Some(b) if b < n => {
            return Err(ApiError::invalid("best_of", format!("best_of must be at least n ({n}), got {b}")))
        }
        Some(b) if b > n => {
            return Err(ApiError::invalid(
                "best_of",
                format!(
                    "best_of above n is not supported (every candidate is returned): got {b} with n = {n}"
                ),
            ))
        }
        _ => {}
    }
    if req.echo && logprobs.is_some() && !limits.prompt_logprobs {
        // Refused here: a step that asked the backend for them would fail, and with
        // it every other request sharing that step.
        return Err(ApiError::invalid(
            "logprobs",
            "prompt logprobs (`echo` with `logprobs`) are not supported by this backend: it returns the last position's logits only",
        ));
    }
    if req.echo && logprobs.is_some() && req.common.stream {
        return Err(ApiError::invalid(
            "echo",
            "`echo` together with `logprobs` (prompt logprobs) is not supported on a streamed response",
        ));
    }
    common_fields(&req.common, prompts, limits, logprobs, req.echo, "prompt")
}
