//! Renders chat templates in worker processes with bounded memory and time.
//!
//! A chat template comes with the model file, so it may be hostile. minijinja bounds
//! its instructions, its recursion and (through `ChatTemplate`) its output, but not
//! the size of the values a template builds: `{% set s = s ~ s %}` in a loop doubles
//! a string each pass and takes the host's memory within a hundred instructions, and
//! a single instruction can copy hundreds of megabytes. Compiling runs template code
//! too (minijinja folds constant expressions). So the server renders in workers (this binary again: `inflight chat-template-worker`) that cap their own
//! address space before they read the template, and gives each render a deadline,
//! killing a worker that misses it. A worker that dies costs only the render it was
//! doing: the next render starts a fresh one.
//!
//! Protocol, one JSON document per line: the server sends a `WorkerSetup`, then a
//! render request per render; the worker answers each request with
//! `{"Ok": text}` or `{"Err": message}`.

use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::chat_template::{ChatMessage, ChatTemplate, MAX_RENDERED_BYTES};
use super::TokenizerError;

/// The hidden subcommand a worker runs as.
pub const WORKER_SUBCOMMAND: &str = "chat-template-worker";

/// What bounds one worker and one render.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// The worker's whole address space (`RLIMIT_AS`): its code (about 25 MB),
    /// the compiled template and every value a render builds.
    pub memory_bytes: u64,
    /// Wall time one render may take, from sending the request to its answer.
    pub timeout: Duration,
}

impl Default for SandboxLimits {
    /// 1 GiB holds a render of the largest body the server accepts many times over
    /// (the rendered text is capped at `MAX_RENDERED_BYTES`); the default model's
    /// template renders such a body in well under a second.
    fn default() -> Self {
        SandboxLimits { memory_bytes: 1 << 30, timeout: Duration::from_secs(5) }
    }
}

/// The first line a worker reads.
#[derive(Serialize, Deserialize)]
struct WorkerSetup {
    source: String,
    bos_token: String,
    eos_token: String,
}

#[derive(Serialize)]
struct RenderRequest<'a> {
    messages: &'a [ChatMessage],
    add_generation_prompt: bool,
}

#[derive(Deserialize)]
struct OwnedRenderRequest {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
}

type RenderReply = Result<String, String>;

/// A pool of template workers for one template.
pub struct TemplateSandbox {
    exe: PathBuf,
    setup: Vec<u8>,
    limits: SandboxLimits,
    /// One slot per concurrent render; a slot's worker starts on its first render and
    /// again after a worker dies.
    slots: Vec<Mutex<Option<Worker>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for TemplateSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSandbox").field("exe", &self.exe).field("limits", &self.limits).finish()
    }
}

impl TemplateSandbox {
    /// Workers for `template`, started from `exe` (the `inflight` binary), at most
    /// `concurrency` rendering at once.
    pub fn new(exe: PathBuf, template: &ChatTemplate, limits: SandboxLimits, concurrency: usize) -> Self {
        let setup = WorkerSetup {
            source: template.source().to_owned(),
            bos_token: template.bos_token().to_owned(),
            eos_token: template.eos_token().to_owned(),
        };
        let mut setup = serde_json::to_vec(&setup).expect("strings serialize");
        setup.push(b'\n');
        let slots = (0..concurrency.max(1)).map(|_| Mutex::new(None)).collect();
        TemplateSandbox { exe, setup, limits, slots, next: AtomicUsize::new(0) }
    }

    /// Starts every worker now, so the first requests do not wait for them.
    pub fn warm_up(&self) -> Result<(), TokenizerError> {
        for slot in &self.slots {
            let mut worker = slot.lock().unwrap_or_else(|e| e.into_inner());
            if worker.is_none() {
                *worker = Some(self.spawn()?);
            }
        }
        Ok(())
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut request = serde_json::to_vec(&RenderRequest { messages, add_generation_prompt })
            .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))?;
        request.push(b'\n');
        // A free slot if there is one, else wait for the next in turn.
        let mut slot = self.slots.iter().find_map(|s| s.try_lock().ok()).unwrap_or_else(|| {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            // A poisoned slot only means a render panicked; its worker is still sound.
            self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
        });
        let mut worker = match slot.take() {
            Some(w) => w,
            None => self.spawn()?,
        };
        match worker.render(&request, Instant::now() + self.limits.timeout) {
            Ok(reply) => {
                *slot = Some(worker);
                reply.map_err(TokenizerError::ChatTemplate)
            }
            Err(failure) => {
                let status = worker.kill();
                let message = failure.describe(status, &self.limits);
                tracing::warn!(%message, "chat template worker stopped");
                Err(TokenizerError::ChatTemplate(message))
            }
        }
    }

    fn spawn(&self) -> Result<Worker, TokenizerError> {
        let failed = |e: std::io::Error| {
            TokenizerError::ChatTemplate(format!(
                "cannot start a template worker ({}): {e}",
                self.exe.display()
            ))
        };
        let mut child = Command::new(&self.exe)
            .arg(WORKER_SUBCOMMAND)
            .arg(self.limits.memory_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // mimalloc otherwise reserves a 1 GiB arena at start, before the worker
            // bounds its address space: the bound would then be the arena's size.
            .env("MIMALLOC_ARENA_RESERVE", "0")
            // Its own process group: a Ctrl-C meant for the server must not kill a
            // worker mid-render while the server drains its requests.
            .process_group(0)
            .spawn()
            .map_err(failed)?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(failed(std::io::Error::other("no pipes")));
        };
        if let Err(e) = stdin.write_all(&self.setup) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(e));
        }
        Ok(Worker { child, stdin, stdout })
    }
}

impl Drop for TemplateSandbox {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some(worker) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                worker.kill();
            }
        }
    }
}

/// One worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// Why a render got no answer.
enum Failure {
    Timeout,
    /// The worker closed its output or its input: it died.
    Died,
    Io(std::io::Error),
    Garbled(String),
}

impl Failure {
    fn describe(&self, status: Option<ExitStatus>, limits: &SandboxLimits) -> String {
        use std::os::unix::process::ExitStatusExt;
        let mib = limits.memory_bytes >> 20;
        match self {
            Failure::Timeout => format!("rendering took longer than {:.1} s", limits.timeout.as_secs_f64()),
            // Rust aborts when an allocation fails: the address-space bound.
            Failure::Died if status.and_then(|s| s.signal()) == Some(libc::SIGABRT) => {
                format!("rendering exceeded its memory bound of {mib} MiB")
            }
            Failure::Died => format!(
                "the template worker died ({})",
                status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
            ),
            Failure::Io(e) => format!("talking to the template worker: {e}"),
            Failure::Garbled(e) => format!("the template worker answered garbage: {e}"),
        }
    }
}

impl Worker {
    fn render(&mut self, request: &[u8], deadline: Instant) -> Result<RenderReply, Failure> {
        self.stdin.write_all(request).and_then(|()| self.stdin.flush()).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::Died,
            _ => Failure::Io(e),
        })?;
        let line = self.read_line_by(deadline)?;
        serde_json::from_slice(&line).map_err(|e| Failure::Garbled(e.to_string()))
    }

    /// The worker's next line, waiting for it no later than `deadline`.
    fn read_line_by(&mut self, deadline: Instant) -> Result<Vec<u8>, Failure> {
        // JSON escapes at most six bytes per rendered byte; more is not an answer.
        const MAX_LINE: usize = 6 * MAX_RENDERED_BYTES + 1024;
        let mut line = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(&self.stdout, left).map_err(Failure::Io)? {
                return Err(Failure::Timeout);
            }
            let n = match self.stdout.read(&mut chunk) {
                Ok(0) => return Err(Failure::Died),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Io(e)),
            };
            // The worker answers once per request, so nothing follows the newline.
            if let Some(end) = chunk[..n].iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&chunk[..end]);
                return Ok(line);
            }
            line.extend_from_slice(&chunk[..n]);
            if line.len() > MAX_LINE {
                return Err(Failure::Garbled(format!("an answer longer than {MAX_LINE} bytes")));
            }
        }
    }

    /// Ends the worker and reaps it; its exit status says how it ended.
    fn kill(mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // A worker that died just now may not be reapable yet: its status (the
        // signal that ended it) is what the caller reports, so wait a moment for it.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(5));
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// Whether `pipe` has something to read (or has closed) within `timeout`.
fn wait_readable(pipe: &ChildStdout, timeout: Duration) -> std::io::Result<bool> {
    let mut fd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `fd` is one valid pollfd for the call's duration, and the count says one.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        match ready {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// The worker's side: bounds its own address space to `memory_bytes`, reads the
/// setup and then renders request after request until its input closes.
pub fn run_worker(memory_bytes: u64) -> std::io::Result<()> {
    limit_address_space(memory_bytes)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let setup: WorkerSetup = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    let template = ChatTemplate::new(setup.source, setup.bos_token, setup.eos_token);
    // Compiled before the first request is read (a compile error is each render's answer).
    let _ = template.compile();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply: RenderReply = match serde_json::from_str::<OwnedRenderRequest>(&line) {
            Ok(req) => template.render(&req.messages, req.add_generation_prompt).map_err(|e| match e {
                TokenizerError::ChatTemplate(message) => message,
                other => other.to_string(),
            }),
            Err(e) => Err(format!("malformed render request: {e}")),
        };
        serde_json::to_writer(&mut output, &reply).map_err(std::io::Error::other)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
}

fn limit_address_space(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
    // SAFETY: setrlimit reads the one struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
