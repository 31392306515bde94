//! The synchronous heart of the engine: one `step()` asks the scheduler for work,
//! runs it on the backend once, samples, detokenizes, checks stop conditions and
//! reports per-sequence events. No channels here: the offline
//! `generate` command drives it in a loop, the server drives it from its engine
//! thread (`engine::service`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use thiserror::Error;

use super::request::{
    EventKind, FinishReason, GenerationRequest, Priority, SeqEvent, SeqId, TokenOutput, Usage,
};
use super::sampling::{token_logprobs, Sampled, Sampler, SamplingError};
use super::scheduler::{AddError, Scheduler, SchedulerConfig, SchedulerError, StepTarget, StepTimeLimit};
use super::step_cost::{StepCostModel, StepShape};
use super::stop::{StopMatcher, StopOutcome};
use super::throughput::Throughput;
use crate::backend::{Backend, Logits};
use crate::metrics::StepFigures;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Below this many rows a step samples on the engine thread: a parallel draw's
/// hand-off costs about as much as one row's sampling.
const PARALLEL_SAMPLING_MIN_ROWS: usize = 4;

/// Per-sequence state the scheduler does not need: how to sample, how to turn
/// tokens into text, and when to stop.
struct Active {
    req: GenerationRequest,
    sampler: Sampler,
    output: Vec<u32>,
    detok: IncrementalDecoder,
    stop: StopMatcher,
    /// The tokens that end this sequence: the model's stop tokens (unless
    /// `ignore_eos`) and the request's `stop_token_ids`. None may be sampled before
    /// `min_tokens`.
    ends: Vec<u32>,
    cached_tokens: usize,
    /// Prompt tokens' logprobs so far, when the request asked for them: entry `k`
    /// is prompt token `k + 1`'s.
    prompt_logprobs: Vec<TokenOutput>,
}

/// What one step did: its figures for the metrics, and who ran.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    pub figures: StepFigures,
    /// Every sequence that ran in this step.
    pub scheduled: Vec<SeqId>,
}

/// Why the engine would not take a request.
#[derive(Debug, Error, PartialEq)]
pub enum AdmitError {
    #[error(transparent)]
    Scheduler(#[from] AddError),
    #[error("the predicted queue wait of {:.1} s exceeds the limit of {:.1} s", predicted.as_secs_f64(), limit.as_secs_f64())]
    WaitTooLong { predicted: Duration, limit: Duration },
}

pub struct EngineCore {
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    active: HashMap<SeqId, Active>,
    next_id: SeqId,
    last_stats: StepStats,
    throughput: Throughput,
    /// Standard requests predicted to wait longer than this are refused.
    max_queue_wait: Option<Duration>,
    /// The time a step carrying decode rows should stay within.
    max_step: Option<StepTarget>,
    step_cost: StepCostModel,
}

impl EngineCore {
    pub fn new(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        cfg: SchedulerConfig,
    ) -> Result<Self, SchedulerError> {
        let info = backend.info();
        let scheduler = Scheduler::new(cfg.fit_to(info), info.num_blocks)?;
        Ok(Self {
            backend,
            scheduler,
            tokenizer,
            active: HashMap::new(),
            next_id: 0,
            last_stats: StepStats::default(),
            throughput: Throughput::default(),
            max_queue_wait: None,
            max_step: None,
            step_cost: StepCostModel::default(),
        })
    }

    /// Refuses standard requests predicted to wait longer than `limit` to start
    /// (reserved ones are never refused for it); `None` admits all that fit.
    pub fn with_max_queue_wait(mut self, limit: Option<Duration>) -> Self {
        self.max_queue_wait = limit;
        self
    }

    /// Bounds the prefill a step carries while sequences decode, so that step
    /// stays near `limit` (see `engine::scheduler`); `None` fills the token budget.
    pub fn with_max_step(mut self, limit: Option<StepTarget>) -> Self {
        self.max_step = limit;
        self
    }

    /// The fitted step-time model (`engine::step_cost`).
    pub fn step_cost(&self) -> &StepCostModel {
        &self.step_cost
    }

    /// How long a request added now should wait before its first step: the
    /// tokens queued ahead of it over the measured throughput (see
    /// `engine::throughput`). `None` until a step has been measured.
    pub fn predicted_wait(&self) -> Option<Duration> {
        self.throughput.time_for(self.scheduler.queued_tokens())
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn backend_info(&self) -> &crate::backend::BackendInfo {
        self.backend.info()
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn last_stats(&self) -> &StepStats {
        &self.last_stats
    }

    /// Admits a request; its events carry the returned id.
    pub fn add(&mut self, req: GenerationRequest) -> Result<SeqId, AdmitError> {
        if req.class.priority == Priority::Standard {
            self.check_queue_wait()?;
        }
        let id = self.next_id;
        self.scheduler.add(id, req.prompt_ids.clone(), req.max_new_tokens, req.class)?;
        if req.prompt_logprobs.is_some() {
            self.scheduler.want_prompt_logits(id);
        }
        self.next_id += 1;
        let model_ends: &[u32] = if req.ignore_eos { &[] } else { self.tokenizer.stop_token_ids() };
        let active = Active {
            sampler: Sampler::new(&req.sampling),
            stop: StopMatcher::new(req.stop.clone()),
            ends: model_ends.iter().chain(&req.stop_token_ids).copied().collect(),
            detok: IncrementalDecoder::with_context(&req.prompt_ids),
            output: Vec::new(),
            cached_tokens: 0,
            prompt_logprobs: Vec::new(),
            req,
        };
        self.active.insert(id, active);
        Ok(id)
    }

    fn check_queue_wait(&self) -> Result<(), AdmitError> {
        match (self.max_queue_wait, self.predicted_wait()) {
            (Some(limit), Some(predicted)) if predicted > limit => {
                Err(AdmitError::WaitTooLong { predicted, limit })
            }
            _ => Ok(()),
        }
    }

    /// Drops a sequence wherever it is; its KV blocks return to the pool.
    pub fn abort(&mut self, id: SeqId) {
        if self.active.remove(&id).is_some() {
            self.scheduler.abort(id);
        }
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    pub fn num_active(&self) -> usize {
        self.active.len()
    }

    /// Runs one engine step and returns what happened to each sequence in it.
    pub fn step(&mut self) -> Vec<SeqEvent> {
        let started = Instant::now();
        let (events, shape) = self.run_step();
        let took = started.elapsed();
        self.throughput.observe(self.last_stats.figures.num_tokens, took);
        self.step_cost.observe(&shape, took);
        events
    }

    fn run_step(&mut self) -> (Vec<SeqEvent>, StepShape) {
        let limit =
            self.max_step.zip(self.step_cost.cost()).map(|(target, cost)| StepTimeLimit { target, cost });
        let plan = self.scheduler.schedule_within(limit);
        let mut shape = StepShape::default();
        for s in &plan.batch.seqs {
            shape.add(s.tokens.len(), s.start_pos, s.is_decode());
        }
        let predicted = self.step_cost.predict(&shape);
        let mut figures = StepFigures {
            preempted: plan.preempted.len(),
            num_seqs: plan.batch.seqs.len(),
            num_tokens: plan.num_tokens(),
            predicted,
            ..Default::default()
        };
        let result = (!plan.batch.seqs.is_empty()).then(|| self.backend.step(&plan.batch));
        // What the rest of the step needs once the plan's borrow of the scheduler ends.
        let ran: Vec<(SeqId, usize, bool)> =
            plan.batch.seqs.iter().map(|s| (s.id, s.tokens.len(), s.is_decode())).collect();
        let starts: Vec<usize> = plan.batch.seqs.iter().map(|s| s.start_pos).collect();
        let (cannot_continue, prefix_hits) = (plan.cannot_continue, plan.prefix_hits);

        let mut events = Vec::new();
        for id in cannot_continue {
            events.extend(self.finish_now(id, FinishReason::Length));
        }
        for (id, cached) in prefix_hits {
            if let Some(a) = self.active.get_mut(&id) {
                a.cached_tokens = a.cached_tokens.max(cached);
            }
        }
        figures.prefill_tokens = ran.iter().filter(|r| !r.2).map(|r| r.1).sum();
        self.last_stats = StepStats { figures, scheduled: ran.iter().map(|r| r.0).collect() };
        let logits = match result {
            None => return (events, shape),
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                // A failed step fails the sequences in it, not the engine.
                tracing::error!(error = %e, "backend step failed");
                for &(id, ..) in &ran {
                    self.abort(id);
                    events.push(SeqEvent { id, kind: EventKind::Failed(format!("inference failed: {e}")) });
                }
                return (events, shape);
            }
        };
        for (i, &(id, ..)) in ran.iter().enumerate() {
            if let Some(rows) = logits.all_rows(i) {
                self.collect_prompt_logprobs(id, starts[i], rows, logits.vocab_size);
            }
        }
        let mut sampled = self.sample_rows(&ran, &logits);
        for (i, &(id, ..)) in ran.iter().enumerate() {
            let Some(a) = self.active.get(&id) else {
                continue;
            };
            let prompt_only = a.req.max_new_tokens == 0;
            let Some(result) = sampled.remove(&id) else {
                self.update_scheduler(id, None);
                // `max_tokens: 0` (echo, scoring a prompt): done once the prompt is.
                if prompt_only && logits.row(i).is_some() {
                    events.extend(self.finish_now(id, FinishReason::Length));
                }
                continue;
            };
            let sampled = match result {
                Ok(x) => x,
                Err(e) => {
                    events.push(SeqEvent { id, kind: EventKind::Failed(format!("sampling failed: {e}")) });
                    self.abort(id);
                    continue;
                }
            };
            self.update_scheduler(id, Some(sampled.token));
            events.extend(self.on_token(id, sampled));
        }
        (events, shape)
    }

    /// Samples every sequence of the step that has a logits row. Each draw reads a
    /// whole vocabulary row, so a large batch spreads them over the cores: the rows
    /// are independent and each sampler is its own sequence's.
    fn sample_rows(
        &mut self,
        ran: &[(SeqId, usize, bool)],
        logits: &Logits,
    ) -> HashMap<SeqId, Result<Sampled, SamplingError>> {
        let rows: HashMap<SeqId, usize> = ran.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
        let mut jobs: Vec<(SeqId, &mut Active, &[f32])> = self
            .active
            .iter_mut()
            .filter(|(_, a)| a.req.max_new_tokens > 0)
            .filter_map(|(&id, a)| Some((id, a, logits.row(*rows.get(&id)?)?)))
            .collect();
        let draw = |(id, a, row): &mut (SeqId, &mut Active, &[f32])| {
            // Before `min_tokens`, a token that would end the sequence may not be chosen.
            let banned: &[u32] = if a.output.len() < a.req.min_tokens { &a.ends } else { &[] };
            (*id, a.sampler.sample_banning(row, &a.req.prompt_ids, &a.output, banned))
        };
        if jobs.len() >= PARALLEL_SAMPLING_MIN_ROWS {
            jobs.par_iter_mut().map(draw).collect()
        } else {
            jobs.iter_mut().map(draw).collect()
        }
    }

    /// Turns a chunk's rows (`start` is its first position) into the logprobs of
    /// the prompt tokens they predict: the row at position `q` predicts token
    /// `q + 1`. Rows already taken (a prefill recomputed after preemption) and the
    /// last prompt row (it predicts the first output token) are skipped.
    fn collect_prompt_logprobs(&mut self, id: SeqId, start: usize, rows: &[f32], vocab: usize) {
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        let (Some(top), prompt) = (a.req.prompt_logprobs, &a.req.prompt_ids) else {
            return;
        };
        let next = a.prompt_logprobs.len();
        if start > next {
            return;
        }
        let new: Vec<TokenOutput> = rows
            .par_chunks(vocab)
            .enumerate()
            .map(|(j, row)| (start + j, row))
            .filter(|&(q, _)| q >= next && q + 1 < prompt.len())
            .map(|(q, row)| {
                let token = prompt[q + 1];
                let (logprob, top_logprobs) = token_logprobs(row, token, top);
                TokenOutput { token, text: String::new(), logprob, top_logprobs }
            })
            .collect();
        a.prompt_logprobs.extend(new);
    }

    fn update_scheduler(&mut self, id: SeqId, sampled: Option<u32>) {
        if let Err(e) = self.scheduler.update(id, sampled) {
            // A bookkeeping bug, not a user error: drop the sequence rather than
            // let its KV state drift from what the backend holds.
            tracing::error!(error = %e, seq = id, "scheduler update failed");
            self.abort(id);
        }
    }

    /// Ends a sequence now with whatever text is still held back.
    fn finish_now(&mut self, id: SeqId, reason: FinishReason) -> Vec<SeqEvent> {
        let Some(mut a) = self.active.remove(&id) else {
            self.scheduler.abort(id);
            return Vec::new();
        };
        let mut text = match a.stop.push(&a.detok.flush()) {
            StopOutcome::Continue { emit } | StopOutcome::Stopped { emit, .. } => emit,
        };
        text.push_str(&a.stop.finish());
        self.scheduler.finish(id);
        let usage = Usage {
            prompt_tokens: a.req.prompt_ids.len(),
            completion_tokens: a.output.len(),
            cached_tokens: a.cached_tokens,
        };
        let prompt_logprobs = a.req.prompt_logprobs.map(|_| a.prompt_logprobs);
        vec![SeqEvent { id, kind: EventKind::Finished { reason, text, usage, prompt_logprobs } }]
    }

    /// Detokenizes a new token, applies stop conditions and finishes the sequence
    /// when one is met.
    fn on_token(&mut self, id: SeqId, sampled: super::sampling::Sampled) -> Vec<SeqEvent> {
        let tokenizer = Arc::clone(&self.tokenizer);
        let max_context = self.scheduler.config().max_context;
        let Some(a) = self.active.get_mut(&id) else {
            return Vec::new();
        };
        a.output.push(sampled.token);
        let mut finish = None;
        let mut text = String::new();
        if a.ends.contains(&sampled.token) {
            finish = Some(FinishReason::Stop);
        } else if a.output.len() <= a.req.min_tokens {
            // This token's text may not end the sequence either.
            text = a.stop.pass(&a.detok.push(&tokenizer, sampled.token).unwrap_or_default());
        } else {
            let delta = a.detok.push(&tokenizer, sampled.token).unwrap_or_default();
            match a.stop.push(&delta) {
                StopOutcome::Continue { emit } => text = emit,
                StopOutcome::Stopped { emit, .. } => {
                    text = emit;
                    finish = Some(FinishReason::Stop);
                }
            }
        }
        if finish.is_none()
            && (a.output.len() >= a.req.max_new_tokens
                || a.req.prompt_ids.len() + a.output.len() >= max_context)
        {
            finish = Some(FinishReason::Length);
        }
        let mut events = vec![SeqEvent {
            id,
            kind: EventKind::Token(TokenOutput {
                token: sampled.token,
                text,
                logprob: sampled.logprob,
                top_logprobs: sampled.top_logprobs,
            }),
        }];
        if let Some(reason) = finish {
            events.extend(self.finish_now(id, reason));
        }
        events
    }
}
