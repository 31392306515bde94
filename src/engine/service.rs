//! The engine thread: owns the `EngineCore` (and with it every piece of mutable
//! serving state) on its own OS thread, because forward passes block. The async
//! side talks to it through [`EngineHandle`]: a bounded command channel in, and
//! one bounded event channel back per sequence. Dropping a [`SeqStream`] aborts
//! its sequence, so a client that disconnects frees its KV blocks at the next step.
//!
//! The engine never waits on a client: it only `try_send`s events. A sequence
//! whose channel holds `stream_buffer` unread events (its client stopped reading,
//! and everything between, HTTP buffers and the socket, is full too) is cancelled
//! there and then; one slot of each channel is kept for the last event, so the
//! stream still learns why it ended.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::core::{AdmitError, EngineCore};
use super::request::{EventKind, GenerationRequest, SeqId};
use super::scheduler::AddError;
use crate::metrics::Metrics;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SubmitError {
    /// `drain`: how long the queue should take to drain, if known.
    #[error("the server is at capacity: too many requests waiting")]
    QueueFull { drain: Option<Duration> },
    #[error("the predicted queue wait of {:.1} s exceeds the server's limit of {:.1} s", predicted.as_secs_f64(), limit.as_secs_f64())]
    WaitTooLong { predicted: Duration, limit: Duration },
    #[error("{0}")]
    Rejected(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

enum Command {
    Submit {
        // Boxed: a request is several times the size of the other commands.
        req: Box<GenerationRequest>,
        events: tmpsc::Sender<EventKind>,
        reply: oneshot::Sender<Result<SeqId, SubmitError>>,
    },
    Abort(SeqId),
    /// Finish what is running, then end the loop (and drop the backend), whatever
    /// handles are still held.
    Stop,
}

/// Cheap to clone; every HTTP handler holds one.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Command>,
    /// Unread token events a sequence may have before it is cancelled as stalled.
    stream_buffer: usize,
}

/// Unread token events per sequence by default: far beyond what a reading client
/// lets pile up (the HTTP layer drains each sequence into its own bounded buffer
/// and the socket), and at most a few hundred KiB per stalled sequence.
pub const DEFAULT_STREAM_BUFFER: usize = 256;

/// What a stream whose client stopped reading ends with.
pub fn stalled_message(buffer: usize) -> String {
    format!(
        "the client stopped reading this stream: {buffer} events were waiting unread, so the request was cancelled"
    )
}

/// The events of one sequence, in order; the last is `Finished` or `Failed`.
pub struct SeqStream {
    pub id: SeqId,
    rx: tmpsc::Receiver<EventKind>,
    tx: SyncSender<Command>,
    done: bool,
}

impl SeqStream {
    pub async fn next(&mut self) -> Option<EventKind> {
        let ev = self.rx.recv().await;
        if matches!(ev, None | Some(EventKind::Finished { .. }) | Some(EventKind::Failed(_))) {
            self.done = true;
        }
        ev
    }
}

impl Drop for SeqStream {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: if the engine is gone there is nothing left to free.
            let _ = self.tx.try_send(Command::Abort(self.id)).or_else(|e| match e {
                TrySendError::Full(cmd) => self.tx.send(cmd).map_err(|_| ()),
                TrySendError::Disconnected(_) => Err(()),
            });
        }
    }
}

impl EngineHandle {
    /// Hands a request to the engine; resolves once it is admitted (or refused).
    pub async fn submit(&self, req: GenerationRequest) -> Result<SeqStream, SubmitError> {
        // One slot more than the buffer: the engine keeps it for the last event.
        let (events, rx) = tmpsc::channel(self.stream_buffer + 1);
        let (reply, reply_rx) = oneshot::channel();
        let tx = self.tx.clone();
        // The command channel is bounded; waiting for room must not block the
        // async runtime, so the send happens on the blocking pool.
        let cmd = Command::Submit { req: Box::new(req), events, reply };
        tokio::task::spawn_blocking(move || tx.send(cmd).is_ok())
            .await
            .ok()
            .filter(|sent| *sent)
            .ok_or(SubmitError::ShuttingDown)?;
        let id = reply_rx.await.map_err(|_| SubmitError::ShuttingDown)??;
        Ok(SeqStream { id, rx, tx: self.tx.clone(), done: false })
    }

    /// Unread events a sequence may have before it is cancelled as stalled.
    pub fn stream_buffer(&self) -> usize {
        self.stream_buffer
    }
}

pub struct EngineThread {
    pub handle: EngineHandle,
    join: JoinHandle<()>,
}

impl EngineThread {
    /// Starts the engine loop with [`DEFAULT_STREAM_BUFFER`]. It ends when every
    /// `EngineHandle` is dropped and no sequence is left.
    pub fn spawn(core: EngineCore, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Self::spawn_with_buffer(core, metrics, DEFAULT_STREAM_BUFFER)
    }

    /// As `spawn`, cancelling a sequence once `stream_buffer` (at least 1) of its
    /// events wait unread.
    pub fn spawn_with_buffer(
        core: EngineCore,
        metrics: Arc<Metrics>,
        stream_buffer: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(1024);
        let stream_buffer = stream_buffer.max(1);
        let join = std::thread::Builder::new()
            .name("inflight-engine".into())
            .spawn(move || run(core, rx, metrics, stream_buffer))?;
        Ok(Self { handle: EngineHandle { tx, stream_buffer }, join })
    }

    /// Asks the loop to end once nothing is running, and waits up to `wait` for it:
    /// the backend is dropped on the engine thread, so device runtimes close. Returns
    /// whether the loop ended in time.
    pub fn stop(self, wait: Duration) -> bool {
        let _ = self.handle.tx.send(Command::Stop);
        drop(self.handle);
        let deadline = Instant::now() + wait;
        while !self.join.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.join.join();
        true
    }

    /// Waits for the loop to end (after all handles are dropped).
    pub fn join(self) {
        drop(self.handle);
        let _ = self.join.join();
    }
}

struct Live {
    events: tmpsc::Sender<EventKind>,
    /// When the request reached the server (TTFT and E2E count from here).
    arrived: Instant,
    /// When the engine received it (queue time counts from here).
    submitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Whether the sequence has been in a step yet (for queue time).
    started: bool,
    /// The queue wait predicted when it was admitted, to compare with the real one.
    predicted_wait: Option<Duration>,
}

/// What became of an event handed to a sequence's channel.
enum Delivery {
    Sent,
    /// The receiver is gone: the client hung up.
    Gone,
    /// The buffer is full: the client stopped reading.
    Stalled,
}

/// Hands `kind` over without waiting. A token needs two free slots, so the last
/// one is always there for a `Finished` or `Failed` event.
fn deliver(events: &tmpsc::Sender<EventKind>, kind: EventKind) -> Delivery {
    let last = matches!(kind, EventKind::Finished { .. } | EventKind::Failed(_));
    if events.is_closed() {
        return Delivery::Gone;
    }
    if !last && events.capacity() < 2 {
        return Delivery::Stalled;
    }
    match events.try_send(kind) {
        Ok(()) => Delivery::Sent,
        Err(tmpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        Err(tmpsc::error::TrySendError::Full(_)) => Delivery::Stalled,
    }
}

fn run(mut core: EngineCore, rx: Receiver<Command>, metrics: Arc<Metrics>, stream_buffer: usize) {
    let mut live: std::collections::HashMap<SeqId, Live> = Default::default();
    let mut disconnected = false;
    loop {
        // Idle: block for the next command. Busy: take what is queued, then step.
        if !core.has_work() {
            if disconnected {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Command::Stop) => disconnected = true,
                Ok(cmd) => handle(cmd, &mut core, &mut live, &metrics),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(Command::Stop) => disconnected = true,
                Ok(cmd) => handle(cmd, &mut core, &mut live, &metrics),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if !core.has_work() {
            continue;
        }
        let started = Instant::now();
        let events = core.step();
        let now = Instant::now();
        metrics.observe_step(&core.last_stats().figures, now - started);
        for id in &core.last_stats().scheduled {
            if let Some(l) = live.get_mut(id).filter(|l| !l.started) {
                l.started = true;
                let waited = started - l.submitted;
                metrics.observe_queue_time(waited);
                if let Some(p) = l.predicted_wait {
                    metrics.observe_prediction("queue_wait", p, waited);
                }
                log_queue_wait(*id, l.predicted_wait, waited);
            }
        }
        for ev in events {
            let Some(l) = live.get_mut(&ev.id) else { continue };
            let finished = matches!(ev.kind, EventKind::Finished { .. } | EventKind::Failed(_));
            match &ev.kind {
                EventKind::Token(_) => {
                    match l.last_token {
                        None => metrics.observe_ttft(now - l.arrived),
                        Some(prev) => metrics.observe_itl(now - prev),
                    }
                    l.first_token.get_or_insert(now);
                    l.last_token = Some(now);
                }
                EventKind::Finished { reason, usage, .. } => {
                    metrics.observe_finished(
                        reason.as_str(),
                        usage.completion_tokens,
                        usage.cached_tokens,
                        now - l.arrived,
                        l.first_token.map(|t| now - t),
                    );
                }
                EventKind::Failed(_) => metrics.observe_failed(),
            }
            let delivery = deliver(&l.events, ev.kind);
            if finished {
                live.remove(&ev.id);
                continue;
            }
            match delivery {
                Delivery::Sent => {}
                Delivery::Gone => {
                    // The client went away without us seeing the abort yet.
                    core.abort(ev.id);
                    live.remove(&ev.id);
                    metrics.observe_cancelled();
                }
                Delivery::Stalled => {
                    core.abort(ev.id);
                    if let Some(l) = live.remove(&ev.id) {
                        tracing::warn!(
                            seq = ev.id,
                            unread = stream_buffer,
                            "client stopped reading; sequence cancelled"
                        );
                        let _ = l.events.try_send(EventKind::Failed(stalled_message(stream_buffer)));
                    }
                    metrics.observe_stalled();
                }
            }
        }
        metrics.set_queue(
            core.scheduler().num_running(),
            core.scheduler().num_waiting(),
            core.scheduler().kv_usage(),
        );
    }
    tracing::info!("engine loop stopped");
}

fn handle(
    cmd: Command,
    core: &mut EngineCore,
    live: &mut std::collections::HashMap<SeqId, Live>,
    metrics: &Metrics,
) {
    match cmd {
        Command::Submit { req, events, reply } => {
            let arrived = req.arrived;
            let predicted_wait = core.predicted_wait();
            let result = core.add(*req).map_err(|e| submit_error(e, predicted_wait));
            if let Ok(id) = result {
                live.insert(
                    id,
                    Live {
                        events,
                        arrived,
                        submitted: Instant::now(),
                        first_token: None,
                        last_token: None,
                        started: false,
                        predicted_wait,
                    },
                );
            }
            if reply.send(result.clone()).is_err() {
                if let Ok(id) = result {
                    core.abort(id);
                    live.remove(&id);
                }
            }
        }
        Command::Abort(id) => {
            if live.remove(&id).is_some() {
                core.abort(id);
                metrics.observe_cancelled();
            }
        }
        // Taken by the loop itself before it calls here.
        Command::Stop => {}
    }
    metrics.set_queue(
        core.scheduler().num_running(),
        core.scheduler().num_waiting(),
        core.scheduler().kv_usage(),
    );
}

/// What the client is told; a full queue says how long it should take to drain.
fn submit_error(e: AdmitError, drain: Option<Duration>) -> SubmitError {
    match e {
        AdmitError::Scheduler(AddError::QueueFull(_)) => SubmitError::QueueFull { drain },
        AdmitError::WaitTooLong { predicted, limit } => SubmitError::WaitTooLong { predicted, limit },
        other => SubmitError::Rejected(other.to_string()),
    }
}

/// The predictor's error, request by request: `RUST_LOG=inflight::engine=debug`
/// and compare `predicted_s` with `waited_s` (or average `error_s`).
fn log_queue_wait(id: SeqId, predicted: Option<Duration>, waited: Duration) {
    if let Some(p) = predicted {
        let (predicted_s, waited_s) = (p.as_secs_f64(), waited.as_secs_f64());
        tracing::debug!(seq = id, predicted_s, waited_s, error_s = predicted_s - waited_s, "queue wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuConfig;
    use crate::backend::StepLimits;
    use crate::engine::request::SchedClass;
    use crate::engine::sampling::SamplingParams;
    use crate::engine::scheduler::SchedulerConfig;
    use crate::hub::ResolvedModel;
    use crate::runtime::{load, BackendConfig};

    /// The value of a metric's sample line, e.g. `…_sum 5.01`.
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    }

    fn core() -> EngineCore {
        let model = ResolvedModel::Gguf(crate::testing::default_model_path());
        let limits = StepLimits { max_context: Some(512), ..Default::default() };
        let cpu = CpuConfig { limits, kv_cache_bytes: 32 << 20, ..Default::default() };
        let loaded = load(&model, &BackendConfig::Cpu(cpu)).expect("model");
        EngineCore::new(loaded.backend, loaded.tokenizer, SchedulerConfig::dynamic(256, 4, 4, false)).unwrap()
    }

    fn request(max_new_tokens: usize) -> GenerationRequest {
        GenerationRequest {
            arrived: Instant::now(),
            prompt_ids: vec![1, 2, 3],
            max_new_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: true,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            class: SchedClass::default(),
            prompt_logprobs: None,
        }
    }

    /// The engine never waits for a reader: a sequence whose buffer of four events
    /// goes unread is cancelled (its blocks freed, counted as stalled) and its
    /// stream ends with the four tokens and then the reason, while the engine goes
    /// on serving others.
    #[test]
    fn a_sequence_whose_events_go_unread_is_cancelled_and_the_engine_goes_on() {
        let metrics = Arc::new(Metrics::new());
        let engine = EngineThread::spawn_with_buffer(core(), metrics.clone(), 4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut unread = engine.handle.submit(request(100)).await.expect("admitted");
            let stalled = "inflight_requests_total{finish_reason=\"stalled\"} 1";
            let deadline = Instant::now() + Duration::from_secs(60);
            while !metrics.render().contains(stalled) {
                assert!(Instant::now() < deadline, "never cancelled:\n{}", metrics.render());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut events = Vec::new();
            while let Some(ev) = unread.next().await {
                events.push(ev);
            }
            assert_eq!(events.len(), 5, "{events:?}");
            assert!(events[..4].iter().all(|e| matches!(e, EventKind::Token(_))), "{events:?}");
            assert!(
                matches!(&events[4], EventKind::Failed(m) if m.contains("stopped reading")),
                "{events:?}"
            );
            let mut other = engine.handle.submit(request(6)).await.expect("admitted");
            let mut last = None;
            while let Some(ev) = other.next().await {
                last = Some(ev);
            }
            assert!(matches!(last, Some(EventKind::Finished { .. })), "{last:?}");
        });
        engine.join();
        let text = metrics.render();
        assert_eq!(sample(&text, "inflight_requests_running"), 0.0);
        assert_eq!(sample(&text, "inflight_kv_cache_usage_ratio"), 0.0);
    }

    #[test]
    fn ttft_and_e2e_count_from_arrival_at_the_server_queue_time_from_the_engine() {
        let core = core();
        let metrics = Arc::new(Metrics::new());
        let engine = EngineThread::spawn(core, metrics.clone()).unwrap();
        // As if tokenizing and the HTTP layer had taken five seconds.
        let early = Duration::from_secs(5);
        let req = GenerationRequest {
            arrived: Instant::now().checked_sub(early).expect("a clock five seconds old"),
            ..request(2)
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut events = engine.handle.submit(req).await.expect("admitted");
            while let Some(ev) = events.next().await {
                assert!(!matches!(ev, EventKind::Failed(_)), "{ev:?}");
            }
        });
        engine.join();
        let text = metrics.render();
        assert!(sample(&text, "inflight_time_to_first_token_seconds_sum") >= 5.0);
        assert!(sample(&text, "inflight_e2e_request_latency_seconds_sum") >= 5.0);
        assert!(sample(&text, "inflight_request_queue_time_seconds_sum") < 5.0);
        assert_eq!(sample(&text, "inflight_time_to_first_token_seconds_count"), 1.0);
    }

    /// The count of one labelled series of the prediction-error histogram.
    fn prediction_errors(text: &str, what: &str) -> f64 {
        ["under", "over"]
            .iter()
            .map(|d| {
                let name =
                    format!("inflight_prediction_error_seconds_count{{direction=\"{d}\",what=\"{what}\"}}");
                text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse().ok()).unwrap_or(0.0)
            })
            .sum()
    }

    #[test]
    fn queue_wait_and_step_time_predictions_are_scored_once_the_models_are_warm() {
        let model = ResolvedModel::Gguf(crate::testing::default_model_path());
        let limits = StepLimits { max_context: Some(512), ..Default::default() };
        let cpu = CpuConfig { limits, kv_cache_bytes: 32 << 20, ..Default::default() };
        let loaded = load(&model, &BackendConfig::Cpu(cpu)).expect("model");
        let core =
            EngineCore::new(loaded.backend, loaded.tokenizer, SchedulerConfig::dynamic(256, 4, 4, false))
                .unwrap();
        let metrics = Arc::new(Metrics::new());
        let engine = EngineThread::spawn(core, metrics.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // One request at a time: every one prefills, so the step model warms up
        // (32 steps, 4 of them prefilling) within the run.
        let requests = 24;
        rt.block_on(async {
            for i in 0..requests {
                let req = GenerationRequest { prompt_ids: vec![1, 2, 3 + i], ..request(2) };
                let mut events = engine.handle.submit(req).await.expect("admitted");
                while let Some(ev) = events.next().await {
                    assert!(!matches!(ev, EventKind::Failed(_)), "{ev:?}");
                }
            }
        });
        engine.join();
        let text = metrics.render();
        // No prediction before the first step; one per request after it.
        assert_eq!(prediction_errors(&text, "queue_wait"), f64::from(requests - 1), "{text}");
        // 48 steps, the first 32 warming the model up.
        assert_eq!(prediction_errors(&text, "step_time"), f64::from(2 * requests - 32), "{text}");
    }
}
