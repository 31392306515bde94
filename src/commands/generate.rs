//! `inflight generate`: offline generation through the same engine core the
//! server uses. Many prompts (`--prompts-file`) run together through the batched
//! step path and print in input order.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{log_loaded, max_step, model_config, prepare_tokenizer, scheduler_config, shared_tokenizer};
use crate::cli::GenerateArgs;
use inflight::backend::cpu::KvFit;
use inflight::engine::core::EngineCore;
use inflight::engine::request::{output_budget, EventKind, GenerationRequest, SchedClass, SeqId};
use inflight::engine::sampling::SamplingParams;
use inflight::runtime::{self, BackendConfig, LoadedModel};
use inflight::tokenizer::{ChatMessage, Tokenizer};

struct Output {
    prompt_ids: Vec<u32>,
    token_ids: Vec<u32>,
    text: String,
    finish_reason: Option<&'static str>,
}

fn prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    if let Some(p) = &args.prompt {
        return Ok(vec![p.clone()]);
    }
    let path = args.prompts_file.as_ref().context("--prompt or --prompts-file is required")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if !jsonl {
            lines.push(line.to_string());
            continue;
        }
        // JSONL: a JSON string, or an object with a "prompt" string (prompts with newlines).
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        match v.as_str().or_else(|| v.get("prompt").and_then(|p| p.as_str())) {
            Some(p) => lines.push(p.to_string()),
            None => bail!("{}:{}: expected a JSON string or {{\"prompt\": ...}}", path.display(), i + 1),
        }
    }
    if lines.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(lines)
}

fn encode(tok: &Tokenizer, args: &GenerateArgs, prompt: &str) -> Result<Vec<u32>> {
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage { role: "system".into(), content: s.clone() });
        }
        messages.push(ChatMessage { role: "user".into(), content: prompt.to_string() });
        tok.apply_chat_template(&messages, true)?
    } else {
        prompt.to_string()
    };
    Ok(tok.encode(&text, tok.add_bos_token())?)
}

/// Loads the model with the prompts tokenized. On the CPU without
/// `--kv-cache-gib`, the KV pool holds these prompts and their outputs and no more.
fn load(args: &GenerateArgs, prompts: &[String]) -> Result<(LoadedModel, Vec<Vec<u32>>)> {
    let (spec, resolved, mut config) = model_config(&args.model, &args.scheduler)?;
    let start = Instant::now();
    if let BackendConfig::Cpu(cpu) = &mut config {
        if cpu.kv_fit == KvFit::Sequences {
            let (w, cfg, mut tok) = runtime::open(&resolved).context("loading the model")?;
            prepare_tokenizer(&mut tok, &args.model)?;
            let ids = prompts.iter().map(|p| encode(&tok, args, p)).collect::<Result<Vec<_>>>()?;
            cpu.kv_fit = KvFit::Lengths(ids.iter().map(|p| p.len() + args.max_tokens).collect());
            let loaded = runtime::load_cpu_opened(&w, cfg, tok, cpu).context("loading the model")?;
            log_loaded(&spec, &loaded, start);
            return Ok((loaded, ids));
        }
    }
    let mut loaded = runtime::load(&resolved, &config).context("loading the model")?;
    prepare_tokenizer(shared_tokenizer(&mut loaded)?, &args.model)?;
    log_loaded(&spec, &loaded, start);
    let ids = prompts.iter().map(|p| encode(&loaded.tokenizer, args, p)).collect::<Result<Vec<_>>>()?;
    Ok((loaded, ids))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompts = prompts(&args)?;
    let (loaded, prompt_ids) = load(&args, &prompts)?;
    let max_context = loaded.backend.info().max_context;
    let tokenizer = loaded.tokenizer.clone();
    let sampling = sampling_params(&args)?;
    let mut core = EngineCore::new(loaded.backend, tokenizer.clone(), scheduler_config(&args.scheduler))?
        .with_max_step(max_step(&args.scheduler));

    let mut outputs = Vec::with_capacity(prompts.len());
    let mut index_of = HashMap::new();
    for (i, ids) in prompt_ids.into_iter().enumerate() {
        // --max-tokens is a default for every prompt: cut it to the room left.
        let room =
            output_budget(ids.len(), None, max_context).with_context(|| format!("prompt {}", i + 1))?;
        let req = GenerationRequest {
            arrived: Instant::now(),
            prompt_ids: ids.clone(),
            max_new_tokens: args.max_tokens.min(room),
            sampling: sampling.clone(),
            stop: Vec::new(),
            ignore_eos: args.ignore_eos,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            class: SchedClass::default(),
            prompt_logprobs: None,
        };
        let id = core.add(req).map_err(|e| anyhow::anyhow!("prompt {}: {e}", i + 1))?;
        index_of.insert(id, i);
        outputs.push(Output {
            prompt_ids: ids,
            token_ids: Vec::new(),
            text: String::new(),
            finish_reason: None,
        });
    }

    // A single prompt streams to stdout as it is produced.
    let stream = prompts.len() == 1 && !args.json;
    let start = Instant::now();
    let first_token = drive(&mut core, &index_of, &mut outputs, stream)?;
    let elapsed = start.elapsed().as_secs_f64();
    print_outputs(&outputs, args.json, stream)?;
    let generated: usize = outputs.iter().map(|o| o.token_ids.len()).sum();
    let prompt_tokens: usize = outputs.iter().map(|o| o.prompt_ids.len()).sum();
    eprintln!(
        "{} prompt(s): {prompt_tokens} prompt tokens, {generated} generated in {elapsed:.2} s ({:.1} tok/s generated; first token after {:.3} s)",
        outputs.len(),
        generated as f64 / elapsed.max(1e-9),
        first_token.map(|d| d.as_secs_f64()).unwrap_or(0.0),
    );
    Ok(())
}

fn sampling_params(args: &GenerateArgs) -> Result<SamplingParams> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    sampling.validate()?;
    Ok(sampling)
}

/// Steps the engine until every prompt is done, collecting each prompt's output
/// (and writing it to stdout as it comes when `stream`). Returns the time to the
/// first generated token.
fn drive(
    core: &mut EngineCore,
    index_of: &HashMap<SeqId, usize>,
    outputs: &mut [Output],
    stream: bool,
) -> Result<Option<Duration>> {
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut first_token = None;
    while core.has_work() {
        for ev in core.step() {
            let Some(&i) = index_of.get(&ev.id) else { continue };
            let out = &mut outputs[i];
            let piece = match ev.kind {
                EventKind::Token(t) => {
                    first_token.get_or_insert_with(|| start.elapsed());
                    out.token_ids.push(t.token);
                    t.text
                }
                EventKind::Finished { reason, text, .. } => {
                    out.finish_reason = Some(reason.as_str());
                    text
                }
                EventKind::Failed(msg) => bail!("prompt {}: {msg}", i + 1),
            };
            if stream {
                write!(stdout, "{piece}")?;
                stdout.flush()?;
            }
            out.text.push_str(&piece);
        }
    }
    if stream {
        writeln!(stdout)?;
    }
    Ok(first_token)
}

/// Every output as a JSON line (`json`), or its text when it was not streamed.
fn print_outputs(outputs: &[Output], json: bool, streamed: bool) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    for out in outputs {
        if json {
            let obj = json!({
                "prompt_token_ids": out.prompt_ids,
                "token_ids": out.token_ids,
                "text": out.text,
                "finish_reason": out.finish_reason,
            });
            writeln!(stdout, "{obj}")?;
        } else if !streamed {
            writeln!(stdout, "{}\n", out.text)?;
        }
    }
    Ok(())
}
