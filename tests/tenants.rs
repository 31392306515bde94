//! Tenants over real HTTP: keys from a tenants file, per-tenant limits and
//! metrics, reloading the file on SIGHUP, and refusing a bad file at start-up.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::http::{client, metric, sse};
use crate::support::server::Server;

const ACME_KEY: &str = "sk-acme-test-0123456789";
const GLOBEX_KEY: &str = "sk-globex-test-9876543210";

fn tenants_file(dir: &Path, text: &str) -> String {
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).expect("write tenants file");
    path.to_string_lossy().into_owned()
}

/// Status and JSON body of a completion sent with `key` (none: no header).
fn complete(server: &Server, key: Option<&str>, body: &Value) -> (u16, Value, Option<String>) {
    let mut req = client().post(server.url("/v1/completions")).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().expect("send");
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null), retry)
}

fn models_status(server: &Server, key: &str) -> u16 {
    client().get(server.url("/v1/models")).bearer_auth(key).send().expect("send").status().as_u16()
}

fn stream_body(max_tokens: usize) -> Value {
    json!({"prompt": "Tell a long story:", "max_tokens": max_tokens, "ignore_eos": true, "stream": true})
}

/// Reads SSE lines until the first `data:` line, leaving the rest unread.
fn first_chunk(resp: reqwest::blocking::Response) -> std::io::BufReader<reqwest::blocking::Response> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(resp);
    let mut line = String::new();
    while reader.read_line(&mut line).expect("read stream") > 0 {
        if line.starts_with("data:") {
            return reader;
        }
        line.clear();
    }
    panic!("stream ended before its first chunk");
}

#[test]
fn two_tenants_each_key_works_limits_are_enforced_and_counted_per_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tenants_file(
        dir.path(),
        &format!(
            r#"
[[tenants]]
name = "acme"
api_key = "{ACME_KEY}"
tier = "provisioned"
input_tokens_per_minute = 20000
output_tokens_per_minute = 5000
max_tokens_per_request = 8

[[tenants]]
name = "globex"
api_key_env = "GLOBEX_TEST_KEY"
tier = "on-demand"
max_concurrent_requests = 1
"#
        ),
    );
    let server =
        Server::start_with_env(&["--tenants", &file, "--log", "debug"], &[("GLOBEX_TEST_KEY", GLOBEX_KEY)]);
    let small = json!({"prompt": "Hello", "max_tokens": 3, "ignore_eos": true});

    // Each key works; a wrong key or none is 401.
    let (s, body, _) = complete(&server, Some(ACME_KEY), &small);
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = complete(&server, Some(GLOBEX_KEY), &small);
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = complete(&server, Some("sk-acme-test-012345678"), &small);
    assert_eq!((s, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{body}");
    assert_eq!(complete(&server, None, &small).0, 401);

    // max_tokens_per_request: above it is a 400 naming the limit; unset, it caps.
    let (s, body, _) = complete(&server, Some(ACME_KEY), &json!({"prompt": "Hello", "max_tokens": 9}));
    assert_eq!(s, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`acme`") && message.contains("limit of 8"), "{body}");
    assert_eq!(body["error"]["param"], "max_tokens");
    let (s, body, _) = complete(&server, Some(ACME_KEY), &json!({"prompt": "Hello", "ignore_eos": true}));
    assert_eq!((s, body["usage"]["completion_tokens"].as_u64()), (200, Some(8)), "{body}");

    // max_concurrent_requests = 1: a second request while a stream runs is 429
    // with Retry-After; the stream completes; then a new request is admitted.
    let url = server.url("/v1/completions");
    let first = client().post(&url).bearer_auth(GLOBEX_KEY).json(&stream_body(48)).send().expect("send");
    assert_eq!(first.status(), 200);
    let first = first_chunk(first);
    let (s, body, retry) = complete(&server, Some(GLOBEX_KEY), &small);
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("`globex`"), "{body}");
    assert!(retry.is_some_and(|v| v.parse::<u64>().is_ok()), "Retry-After on the 429");
    let (_, done) = sse(first.into_inner());
    assert!(done, "the admitted stream ran to [DONE]");
    let (s, retried) = admitted_within(&server, GLOBEX_KEY, &small, Duration::from_secs(5));
    assert_eq!(s, 200);

    // A client that hangs up mid-stream frees the slot too.
    let hung = client().post(&url).bearer_auth(GLOBEX_KEY).json(&stream_body(400)).send().expect("send");
    drop(first_chunk(hung));
    let (s, retried_after_hang_up) = admitted_within(&server, GLOBEX_KEY, &small, Duration::from_secs(10));
    assert_eq!(s, 200);
    let throttled = 1 + retried + retried_after_hang_up;

    let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
    let m = |name: &str| metric(&text, name);
    assert_eq!(m(r#"inflight_tenant_requests_total{code="200",tenant="acme"}"#), Some(2.0), "{text}");
    assert_eq!(m(r#"inflight_tenant_requests_total{code="400",tenant="acme"}"#), Some(1.0));
    assert_eq!(m(r#"inflight_tenant_requests_total{code="429",tenant="globex"}"#), Some(throttled as f64));
    assert_eq!(m(r#"inflight_tenant_throttled_total{tenant="globex"}"#), Some(throttled as f64));
    assert_eq!(m(r#"inflight_tenant_tokens_total{kind="completion",tenant="acme"}"#), Some(11.0));
    assert!(m(r#"inflight_tenant_tokens_total{kind="prompt",tenant="acme"}"#).is_some_and(|v| v >= 2.0));
    // globex finished: 3 + 48 + 3 + 3 completion tokens (the hung-up stream is not
    // a finished request).
    assert_eq!(m(r#"inflight_tenant_tokens_total{kind="completion",tenant="globex"}"#), Some(57.0));

    // Keys never reach the log, even at debug level; the tenant does.
    let (_, log) = server.stop_and_log();
    let all = without_colour(&log.join("\n"));
    assert!(all.contains("DEBUG") && all.contains("tenant=acme"), "debug log with tenant spans:\n{all}");
    for key in [ACME_KEY, GLOBEX_KEY] {
        assert!(!all.contains(key), "a key appeared in the log");
    }
}

/// The log text without ANSI colour sequences (`ESC [ ... m`).
fn without_colour(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `body` until it is admitted (not 429) or `within` passes; the status.
/// Retries while the answer is 429 (a slot is freed just after the client saw
/// `[DONE]`); returns the last status and how many 429s came before it.
fn admitted_within(server: &Server, key: &str, body: &Value, within: Duration) -> (u16, usize) {
    let deadline = Instant::now() + within;
    let mut refused = 0;
    loop {
        let (s, _, _) = complete(server, Some(key), body);
        if s != 429 || Instant::now() > deadline {
            return (s, refused);
        }
        refused += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn one_tenant(key: &str) -> String {
    format!("[[tenants]]\nname = \"acme\"\napi_key = \"{key}\"\ntier = \"on-demand\"\n")
}

fn hang_up(pid: u32) {
    let sent = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill");
    assert!(sent.success());
}

#[test]
fn sighup_reloads_the_tenants_file_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tenants_file(dir.path(), &one_tenant("sk-old"));
    let mut server = Server::start(&["--tenants", &file, "--log", "info"]);
    let (pid, base) = (server.pid(), server.base.clone());
    assert_eq!(models_status(&server, "sk-old"), 200);

    // A rotated key: the new one works and the old one is refused, same process.
    tenants_file(dir.path(), &one_tenant("sk-new"));
    hang_up(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while models_status(&server, "sk-new") != 200 {
        assert!(Instant::now() < deadline, "the rotated key was not accepted after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(models_status(&server, "sk-old"), 401);
    assert!(server.try_wait().is_none(), "the server kept running");
    assert_eq!((server.pid(), server.base.as_str()), (pid, base.as_str()));

    // A broken file: logged, and the keys in force stay in force.
    tenants_file(dir.path(), "[[tenants]]\nname = \"acme\"\napi_key = \n");
    hang_up(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().iter().any(|l| l.contains("not reloaded")) {
        assert!(Instant::now() < deadline, "no log line about the failed reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = server.log().join("\n");
    assert!(logged.contains("tenants.toml:3:"), "the failed reload names file and line:\n{logged}");
    assert_eq!(models_status(&server, "sk-new"), 200);
    assert_eq!(models_status(&server, "sk-old"), 401);
    let (s, body, _) =
        complete(&server, Some("sk-new"), &json!({"prompt": "Hello", "max_tokens": 2, "ignore_eos": true}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(client().get(server.url("/health")).send().expect("health").status(), 200);
    assert!(server.try_wait().is_none());
}

fn serve_with(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inflight"))
        .args(["serve", "--host", "127.0.0.1", "--port", "9", "--model", "no-such-model"])
        .args(args)
        .env_remove("INFLIGHT_API_KEY")
        .env_remove("INFLIGHT_TENANTS")
        .env("INFLIGHT_LOG", "warn")
        .output()
        .expect("run inflight serve")
}

#[test]
fn a_malformed_tenants_file_stops_start_up_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tenants_file(dir.path(), &(one_tenant("sk-a") + "max_rps = 5\n"));
    let out = serve_with(&["--tenants", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{file}:5:")) && stderr.contains("max_rps"), "{stderr}");
    assert!(!stderr.contains("sk-a"), "the key appeared in the error:\n{stderr}");

    // `--api-key` and `--tenants` together are a usage error.
    let good = tenants_file(dir.path(), &one_tenant("sk-a"));
    let out = serve_with(&["--tenants", &good, "--api-key", "k"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tenants") && stderr.contains("--api-key"), "{stderr}");
}

/// A prompt of some twenty tokens: a few of them exhaust a small bucket.
const LONG_PROMPT: &str =
    "Tell a long story about a dragon who lived in the mountains and loved to read books about the sea.";

/// A response's status and headers, kept after its body is read.
struct Head {
    status: u16,
    headers: reqwest::header::HeaderMap,
}

impl Head {
    fn of(r: &reqwest::blocking::Response) -> Self {
        Self { status: r.status().as_u16(), headers: r.headers().clone() }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no numeric {name}"))
    }
}

fn get_models(server: &Server, key: &str) -> Head {
    Head::of(&client().get(server.url("/v1/models")).bearer_auth(key).send().expect("send"))
}

/// Sends a short completion of `LONG_PROMPT` with `key`.
fn complete_long(server: &Server, key: &str) -> (Head, Value) {
    let body = json!({"prompt": LONG_PROMPT, "max_tokens": 3, "ignore_eos": true});
    let r = client().post(server.url("/v1/completions")).bearer_auth(key).json(&body).send().expect("send");
    let head = Head::of(&r);
    (head, r.json().unwrap_or(Value::Null))
}

fn usage_of(server: &Server, key: Option<&str>) -> (u16, Value) {
    let mut req = client().get(server.url("/v1/usage"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().expect("send");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn token_rates_reserve_fall_back_refuse_and_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tenants_file(
        dir.path(),
        &format!(
            r#"
[[tenants]]
name = "acme"
api_key = "{ACME_KEY}"
tier = "provisioned"
input_tokens_per_minute = 30
output_tokens_per_minute = 30

[[tenants]]
name = "globex"
api_key = "{GLOBEX_KEY}"
tier = "on-demand"
input_tokens_per_minute = 60
output_tokens_per_minute = 600
max_concurrent_requests = 4
"#
        ),
    );
    let server = Server::start(&["--tenants", &file]);

    // Headers before any tokens are drawn: full buckets, limit = input + output.
    let r = get_models(&server, ACME_KEY);
    assert_eq!(r.number("x-ratelimit-limit-tokens"), 60);
    assert_eq!(r.number("x-ratelimit-remaining-tokens"), 60);
    assert_eq!(r.header("x-ratelimit-reset-tokens").as_deref(), Some("0ms"));
    assert!(r.header("x-ratelimit-limit-requests").is_none(), "acme has no concurrency limit");

    // The first request is within the reservation and draws on it; the next ones
    // are over it and still succeed (fallback to on-demand, no 429).
    let (r, body) = complete_long(&server, ACME_KEY);
    assert_eq!(r.status, 200, "{body}");
    let prompt = body["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!((16..30).contains(&prompt), "the prompt fits the bucket once, not twice: {prompt} tokens");
    let after_first = r.number("x-ratelimit-remaining-tokens");
    assert!(after_first < 60 - prompt + 3, "remaining went down by the prompt: {after_first}");
    assert!(r.header("x-ratelimit-reset-tokens").is_some_and(|v| v.ends_with('s')));
    let mut remaining = after_first;
    for _ in 0..2 {
        let (r, body) = complete_long(&server, ACME_KEY);
        assert_eq!(r.status, 200, "over the reservation is served, not refused: {body}");
        // Fallback requests draw nothing, so only the refill (1 token/s) moves it.
        remaining = r.number("x-ratelimit-remaining-tokens");
    }
    assert!(remaining < 60, "{remaining}");
    let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
    let m = |name: &str| metric(&text, name);
    assert_eq!(
        m(r#"inflight_tenant_admitted_total{priority="reserved",tenant="acme"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(m(r#"inflight_tenant_admitted_total{priority="standard",tenant="acme"}"#), Some(2.0));
    let ratio = m(r#"inflight_tenant_reservation_usage_ratio{tenant="acme"}"#).expect("ratio");
    assert!(
        (ratio - (prompt + 3) as f64 / 60.0).abs() < 1e-9,
        "reserved draws over the reservation: {ratio}"
    );

    // A stream carries the headers in its head.
    let stream = json!({"prompt": "Hi", "max_tokens": 2, "stream": true});
    let r = client()
        .post(server.url("/v1/completions"))
        .bearer_auth(ACME_KEY)
        .json(&stream)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(Head::of(&r).header("x-ratelimit-remaining-tokens").is_some(), "a stream's head has the headers");
    assert!(sse(r).1);

    // On-demand with a cap of 60 input tokens a minute (1 a second): refused once
    // over it, with a Retry-After the refill rate bears out.
    let r = get_models(&server, GLOBEX_KEY);
    assert_eq!((r.number("x-ratelimit-limit-requests"), r.number("x-ratelimit-remaining-requests")), (4, 4));
    assert_eq!(r.number("x-ratelimit-limit-tokens"), 660);
    let mut refused = None;
    for _ in 0..4 {
        let (r, body) = complete_long(&server, GLOBEX_KEY);
        if r.status == 429 {
            refused = Some((r.header("retry-after"), body));
            break;
        }
        assert_eq!(r.status, 200, "{body}");
    }
    let (retry, body) = refused.expect("the cap refused a request");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("`globex`"), "{body}");
    let retry: u64 = retry.and_then(|v| v.parse().ok()).expect("numeric Retry-After");
    assert!(
        (1..=prompt).contains(&retry),
        "at 1 token/s a {prompt}-token prompt waits at most {prompt} s: {retry}"
    );
    std::thread::sleep(Duration::from_secs(retry));
    let (r, body) = complete_long(&server, GLOBEX_KEY);
    assert_eq!(r.status, 200, "admitted after Retry-After: {body}");

    // /v1/usage: each key sees its own figures, and only them.
    let (s, acme) = usage_of(&server, Some(ACME_KEY));
    assert_eq!(s, 200, "{acme}");
    assert_eq!((acme["object"].as_str(), acme["tenant"].as_str()), (Some("usage"), Some("acme")), "{acme}");
    assert_eq!(acme["tier"], "provisioned");
    assert!(acme["tokens"]["prompt"].as_u64().is_some_and(|p| p > 3 * prompt), "{acme}");
    assert_eq!(acme["tokens"]["completion"].as_u64(), Some(3 * 3 + 2), "{acme}");
    assert_eq!(acme["responses"]["200"].as_u64(), Some(5), "models, three completions, a stream: {acme}");
    assert_eq!(acme["rate_limits"]["input_tokens_per_minute"], 30);
    assert_eq!(acme["rate_limits"]["output_tokens_per_minute"], 30);
    assert!(acme["rate_limits"]["input_tokens_available"].as_i64().is_some(), "{acme}");
    assert_eq!(acme["concurrency"]["max_concurrent_requests"], Value::Null);
    let (_, globex) = usage_of(&server, Some(GLOBEX_KEY));
    assert_eq!(
        (globex["tenant"].as_str(), globex["tier"].as_str()),
        (Some("globex"), Some("on-demand")),
        "{globex}"
    );
    assert_eq!(globex["responses"]["429"].as_u64(), Some(1), "{globex}");
    assert_eq!(globex["rate_limits"]["input_tokens_per_minute"], 60);
    assert_eq!(globex["concurrency"]["max_concurrent_requests"], 4);
    assert!(!acme.to_string().contains("globex") && !globex.to_string().contains("acme"));
    assert_eq!(usage_of(&server, None).0, 401);
    assert_eq!(usage_of(&server, Some("sk-nobody")).0, 401);
}

#[test]
fn with_auth_off_usage_reports_the_anonymous_tenant_and_no_rate_headers() {
    let server = crate::support::server::shared();
    let r = client().get(server.url("/v1/usage")).send().expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers().keys().all(|k| !k.as_str().starts_with("x-ratelimit-")), "no rates, no headers");
    let body: Value = r.json().expect("json");
    assert_eq!(
        (body["tenant"].as_str(), body["tier"].as_str()),
        (Some("anonymous"), Some("on-demand")),
        "{body}"
    );
    assert_eq!(body["rate_limits"], Value::Null);
    assert!(body["tokens"]["prompt"].is_u64() && body["responses"].is_object(), "{body}");
}

/// A provisioned tenant within its rate goes ahead of an on-demand backlog: with
/// the one running slot held by an on-demand stream and more on-demand work
/// queued, the provisioned request preempts the stream (which is recomputed and
/// still finishes) and completes before any queued on-demand request. Under FIFO it
/// would finish last.
#[test]
fn a_provisioned_tenant_within_its_rate_goes_ahead_of_an_on_demand_backlog() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tenants_file(
        dir.path(),
        &format!(
            r#"
[[tenants]]
name = "acme"
api_key = "{ACME_KEY}"
tier = "provisioned"
input_tokens_per_minute = 100000
output_tokens_per_minute = 100000

[[tenants]]
name = "globex"
api_key = "{GLOBEX_KEY}"
tier = "on-demand"
"#
        ),
    );
    let server = Server::start(&["--tenants", &file, "--max-running", "1"]);
    let url = server.url("/v1/completions");
    let running = client().post(&url).bearer_auth(GLOBEX_KEY).json(&stream_body(300)).send().expect("send");
    assert_eq!(running.status(), 200);
    let mut stream = first_chunk(running);
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": format!("Story {i}:"), "max_tokens": 60, "ignore_eos": true});
                let r = client().post(url).bearer_auth(GLOBEX_KEY).json(&body).send().expect("send");
                (r.status().as_u16(), Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
        if metric(&text, "inflight_requests_waiting") == Some(3.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the three on-demand requests never queued");
        std::thread::sleep(Duration::from_millis(20));
    }

    let (status, body, _) =
        complete(&server, Some(ACME_KEY), &json!({"prompt": "Hi", "max_tokens": 8, "ignore_eos": true}));
    let provisioned_done = Instant::now();
    assert_eq!(status, 200, "{body}");
    for h in queued {
        let (status, done) = h.join().expect("thread");
        assert_eq!(status, 200, "queued on-demand requests are served, not failed");
        assert!(
            done > provisioned_done,
            "an on-demand request queued earlier finished before the provisioned one"
        );
    }
    // The preempted stream was recomputed and runs to its end.
    let mut line = String::new();
    let mut done = false;
    while stream.read_line(&mut line).expect("read stream") > 0 {
        assert!(!line.contains("\"error\""), "the preempted stream failed: {line}");
        done |= line.trim() == "data: [DONE]";
        line.clear();
    }
    assert!(done, "the preempted stream ended without [DONE]");
    let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
    assert!(metric(&text, "inflight_preemptions_total").is_some_and(|n| n >= 1.0), "no preemption:\n{text}");
}

/// SageMaker's `/invocations` is behind the keys like `/v1` once keys are
/// required, and served as the key's tenant; `--invocations-without-key` (for a
/// SageMaker endpoint, which authenticates callers itself) opens it alone, as the
/// anonymous tenant, while `/v1` still wants a key.
#[test]
fn invocations_take_a_key_unless_told_otherwise() {
    let body = json!({"prompt": "Hello", "max_tokens": 2, "ignore_eos": true});
    let invoke = |server: &Server, key: Option<&str>| {
        let mut req = client().post(server.url("/invocations")).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().expect("send");
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tenants_file(dir.path(), &one_tenant(ACME_KEY));
    let keyed = Server::start(&["--tenants", &file]);
    let (s, refused) = invoke(&keyed, None);
    assert_eq!(s, 401, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_api_key", "{refused}");
    assert_eq!(invoke(&keyed, Some("sk-wrong")).0, 401);
    let (s, served) = invoke(&keyed, Some(ACME_KEY));
    assert_eq!(s, 200, "{served}");
    let text = client().get(keyed.url("/metrics")).send().expect("metrics").text().expect("text");
    assert_eq!(
        metric(&text, r#"inflight_tenant_requests_total{code="200",tenant="acme"}"#),
        Some(1.0),
        "{text}"
    );
    drop(keyed);

    let open = Server::start(&["--api-key", ACME_KEY, "--invocations-without-key"]);
    let (s, served) = invoke(&open, None);
    assert_eq!(s, 200, "{served}");
    assert_eq!(complete(&open, None, &body).0, 401, "/v1 still wants the key");
    assert_eq!(complete(&open, Some(ACME_KEY), &body).0, 200);
    let text = client().get(open.url("/metrics")).send().expect("metrics").text().expect("text");
    assert_eq!(metric(&text, r#"inflight_tenant_requests_total{code="200",tenant="anonymous"}"#), Some(1.0));
}
