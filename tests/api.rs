//! The HTTP API over real HTTP on loopback, with the real model: the official
//! OpenAI client, concurrency, cancellation, bad input, auth, admission control,
//! SageMaker routes and graceful shutdown.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::http::{client, metric, post, sse};
use crate::support::python::run_script;
use crate::support::server::{shared, Server};

#[test]
fn official_openai_client_works_unchanged() {
    let out = run_script("openai_client.py", &shared().base, &[]);
    assert!(out.contains("all openai client checks passed"), "{out}");
}

fn prompt_of(len_words: usize, salt: usize) -> String {
    let words = ["river", "stone", "light", "music", "garden", "window", "paper", "cloud"];
    (0..len_words).map(|i| words[(i * 3 + salt) % words.len()]).collect::<Vec<_>>().join(" ")
}

/// Streams one greedy completion and returns (text, completion tokens from usage,
/// number of content chunks).
fn stream_completion(base: &str, prompt: &str, max_tokens: usize) -> (String, u64, usize) {
    let body = json!({"model": "test-model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let resp = client().post(format!("{base}/v1/completions")).json(&body).send().expect("send");
    assert_eq!(resp.status(), 200);
    let (events, done) = sse(resp);
    assert!(done, "stream ended without [DONE]");
    let mut text = String::new();
    let mut chunks = 0;
    let mut usage = None;
    for e in &events {
        if let Some(u) = e.get("usage").filter(|u| !u.is_null()) {
            usage = u["completion_tokens"].as_u64();
        }
        if let Some(c) = e["choices"].as_array().and_then(|c| c.first()) {
            text.push_str(c["text"].as_str().unwrap_or(""));
            chunks += 1;
        }
    }
    (text, usage.expect("usage chunk"), chunks)
}

#[test]
fn thirty_two_concurrent_streams_match_sequential_results() {
    // Concurrent traffic changes how a prompt is cut into prefill chunks (the step's
    // token budget is shared); the default server's outputs must not depend on it.
    let base = shared().base.clone();
    let prompts: Vec<String> = (0..32).map(|i| prompt_of(3 + (i * 37) % 200, i)).collect();
    let max_tokens = 24;
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let base = base.clone();
            std::thread::spawn(move || stream_completion(&base, &p, max_tokens))
        })
        .collect();
    let concurrent: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    for (i, (text, tokens, _)) in concurrent.iter().enumerate() {
        assert_eq!(*tokens, max_tokens as u64, "request {i}: usage says {tokens} tokens");
        // The same prompt alone (no other traffic from this test) gives the same text.
        if i % 4 == 0 {
            let (alone, _, _) = stream_completion(&base, &prompts[i], max_tokens);
            assert_eq!(&alone, text, "request {i}: batched output differs from the same request alone");
        }
    }
}

#[test]
fn disconnected_stream_frees_its_sequence() {
    let server = Server::start(&[]);
    let body = json!({"model": "test-model", "prompt": "Count forever:", "max_tokens": 3000, "ignore_eos": true, "stream": true});
    let resp = client().post(server.url("/v1/completions")).json(&body).send().expect("send");
    assert_eq!(resp.status(), 200);
    // Read a few chunks so the sequence is surely running, then hang up.
    let mut reader = std::io::BufReader::new(resp);
    let mut seen = 0;
    let mut line = String::new();
    while seen < 3 {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        if line.starts_with("data:") {
            seen += 1;
        }
    }
    let running = |s: &Server| {
        let text = client().get(s.url("/metrics")).send().expect("metrics").text().expect("text");
        (metric(&text, "inflight_requests_running"), metric(&text, "inflight_kv_cache_usage_ratio"))
    };
    assert_eq!(running(&server).0, Some(1.0), "the stream should be running before the hang-up");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (r, kv) = running(&server);
        if r == Some(0.0) && kv == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "sequence not freed after disconnect: running {r:?}, kv {kv:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_error(status: u16, body: &Value, want: u16, case: &str) {
    assert_eq!(status, want, "{case}: status (body {body})");
    let err = &body["error"];
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: error body {body}");
    assert!(err["type"].is_string(), "{case}: error type in {body}");
    assert!(err.get("param").is_some() && err.get("code").is_some(), "{case}: param/code keys in {body}");
}

#[test]
fn bad_inputs_get_clear_errors_and_the_server_keeps_serving() {
    let base = &shared().base;
    let chat = format!("{base}/v1/chat/completions");
    let comp = format!("{base}/v1/completions");
    let msg = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, &str, Value, u16)> = vec![
        ("empty messages", &chat, json!({"model": "test-model", "messages": []}), 400),
        ("missing messages", &chat, json!({"model": "test-model"}), 422),
        ("messages wrong type", &chat, json!({"messages": "hello"}), 422),
        ("negative max_tokens", &chat, json!({"messages": msg, "max_tokens": -5}), 400),
        ("zero max_tokens", &chat, json!({"messages": msg, "max_tokens": 0}), 400),
        ("n = 0", &chat, json!({"messages": msg, "n": 0}), 400),
        ("huge n", &chat, json!({"messages": msg, "n": 100000}), 400),
        ("temperature negative", &chat, json!({"messages": msg, "temperature": -1}), 400),
        ("temperature wrong type", &chat, json!({"messages": msg, "temperature": "hot"}), 422),
        ("top_p out of range", &chat, json!({"messages": msg, "top_p": 1.5}), 400),
        ("top_logprobs too many", &chat, json!({"messages": msg, "logprobs": true, "top_logprobs": 50}), 400),
        ("unknown model", &chat, json!({"model": "gpt-17", "messages": msg}), 404),
        ("context overflow", &chat, json!({"messages": msg, "max_tokens": 100000000}), 400),
        ("empty prompt", &comp, json!({"prompt": ""}), 400),
        ("token id out of vocab", &comp, json!({"prompt": [1, 2, 99999999]}), 400),
        ("prompt wrong type", &comp, json!({"prompt": {"a": 1}}), 422),
        ("presence_penalty out of range", &chat, json!({"messages": msg, "presence_penalty": 5}), 400),
        ("frequency_penalty wrong type", &chat, json!({"messages": msg, "frequency_penalty": "x"}), 422),
        ("stop wrong type", &chat, json!({"messages": msg, "stop": 5}), 422),
        ("seed wrong type", &chat, json!({"messages": msg, "seed": "abc"}), 422),
        ("message without role", &chat, json!({"messages": [{"content": "hi"}]}), 422),
        ("content wrong type", &chat, json!({"messages": [{"role": "user", "content": 5}]}), 422),
        ("max_tokens wrong type", &chat, json!({"messages": msg, "max_tokens": "ten"}), 422),
        ("max_completion_tokens negative", &chat, json!({"messages": msg, "max_completion_tokens": -1}), 400),
        ("stream wrong type", &chat, json!({"messages": msg, "stream": "yes"}), 422),
        ("body is an array", &chat, json!([1, 2]), 422),
        ("no prompts", &comp, json!({"prompt": []}), 400),
        ("an empty token prompt", &comp, json!({"prompt": [[]]}), 400),
        ("top_k negative", &comp, json!({"prompt": "hi", "top_k": -3}), 400),
        ("min_p out of range", &comp, json!({"prompt": "hi", "min_p": 2}), 400),
        ("repetition_penalty zero", &comp, json!({"prompt": "hi", "repetition_penalty": 0}), 400),
        ("completions logprobs too many", &comp, json!({"prompt": "hi", "logprobs": 50}), 400),
        ("logit_bias key not a token id", &chat, json!({"messages": msg, "logit_bias": {"abc": 1}}), 400),
        ("logit_bias id out of vocab", &chat, json!({"messages": msg, "logit_bias": {"99999999": 1}}), 400),
        ("logit_bias id listed twice", &comp, json!({"prompt": "hi", "logit_bias": {"7": 1, "07": 2}}), 400),
        ("logit_bias above 100", &chat, json!({"messages": msg, "logit_bias": {"5": 100.5}}), 400),
        ("logit_bias wrong type", &chat, json!({"messages": msg, "logit_bias": {"5": "up"}}), 422),
        (
            "response_format json",
            &chat,
            json!({"messages": msg, "response_format": {"type": "json_object"}}),
            400,
        ),
        ("response_format without type", &comp, json!({"prompt": "hi", "response_format": {}}), 400),
        ("tool_choice required", &chat, json!({"messages": msg, "tool_choice": "required"}), 400),
        ("tool_choice a function", &chat, json!({"messages": msg, "tool_choice": {"type": "function"}}), 400),
        ("suffix", &comp, json!({"prompt": "hi", "suffix": "bye"}), 400),
        ("best_of above n", &comp, json!({"prompt": "hi", "best_of": 3}), 400),
        ("best_of below n", &comp, json!({"prompt": "hi", "n": 2, "best_of": 1}), 400),
        ("min_tokens negative", &chat, json!({"messages": msg, "min_tokens": -1}), 400),
        ("stop_token_ids out of vocab", &chat, json!({"messages": msg, "stop_token_ids": [1, -2]}), 400),
        ("guided_regex", &comp, json!({"prompt": "hi", "guided_regex": "a+"}), 400),
        ("structured_outputs", &chat, json!({"messages": msg, "structured_outputs": {"json": {}}}), 400),
        (
            "min_tokens above max_tokens",
            &comp,
            json!({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}),
            400,
        ),
    ];
    for (case, url, body, want) in cases {
        let (status, resp) = post(url, &body);
        assert_error(status, &resp, want, case);
    }
    // Bodies that are not JSON at all.
    let raw = |body: Vec<u8>| {
        let r =
            client().post(&chat).header("content-type", "application/json").body(body).send().expect("send");
        let s = r.status().as_u16();
        (s, serde_json::from_str::<Value>(&r.text().expect("text")).unwrap_or(Value::Null))
    };
    let (s, b) = raw(b"{not json".to_vec());
    assert_error(s, &b, 400, "malformed JSON");
    let (s, b) = raw(vec![0xff, 0xfe, 0x7b, 0x7d]);
    assert_error(s, &b, 400, "non-UTF-8 body");
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    let (s, b) = raw(nested.into_bytes());
    assert_error(s, &b, 400, "deeply nested JSON");
    // The server answers 413 as soon as the limit is passed and closes the connection
    // with the rest of the upload unread, so the client, still writing, can see a
    // reset before it reads the answer (a race on loopback). An attempt that ends
    // that way proves nothing either way; one that gets an answer must get the 413.
    let big = serde_json::to_vec(&json!({"messages": [{"role": "user", "content": "x".repeat(5 << 20)}]}))
        .expect("json");
    let answered = (0..5).find_map(|_| {
        let r =
            client().post(&chat).header("content-type", "application/json").body(big.clone()).send().ok()?;
        let s = r.status().as_u16();
        Some((s, serde_json::from_str::<Value>(&r.text().ok()?).unwrap_or(Value::Null)))
    });
    let (s, b) = answered.expect("no answer to an oversized body in 5 attempts");
    assert_error(s, &b, 413, "body over the limit");
    let r = client().get(format!("{base}/v1/nonexistent")).send().expect("send");
    assert_eq!(r.status(), 404);
    let r = client().get(&chat).send().expect("send");
    let status = r.status().as_u16();
    assert_error(status, &r.json().unwrap_or(Value::Null), 405, "GET on a POST route");
    // Still serving normally.
    let (status, ok) = post(&chat, &json!({"messages": msg, "max_tokens": 4}));
    assert_eq!(status, 200, "{ok}");
    assert!(ok["choices"][0]["message"]["content"].is_string());
}

#[test]
fn api_key_is_required_on_v1_when_configured() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let url = server.url("/v1/chat/completions");
    let r = client().post(&url).json(&body).send().expect("send");
    assert_eq!(r.status(), 401);
    let r = client().post(&url).bearer_auth("wrong").json(&body).send().expect("send");
    assert_eq!(r.status(), 401);
    let r = client().post(&url).bearer_auth("s3cret").json(&body).send().expect("send");
    assert_eq!(r.status(), 200);
    // Health and metrics stay open, and the served request is in the histograms.
    assert_eq!(client().get(server.url("/health")).send().expect("send").status(), 200);
    let m = client().get(server.url("/metrics")).send().expect("send");
    assert_eq!(m.status(), 200);
    let text = m.text().expect("text");
    for name in [
        "inflight_request_queue_time_seconds_count",
        "inflight_time_to_first_token_seconds_count",
        "inflight_e2e_request_latency_seconds_count",
    ] {
        assert_eq!(metric(&text, name), Some(1.0), "{name} after one request");
    }
    // Refusals are counted by route and status, so a dashboard can show them.
    let refused = r#"inflight_http_responses_total{code="401",route="/v1/chat/completions"}"#;
    assert_eq!(metric(&text, refused), Some(2.0), "two 401s in:\n{text}");
    let served = r#"inflight_http_responses_total{code="200",route="/v1/chat/completions"}"#;
    assert_eq!(metric(&text, served), Some(1.0));
    // `--api-key` is one tenant named `default`.
    assert_eq!(metric(&text, r#"inflight_tenant_requests_total{code="200",tenant="default"}"#), Some(1.0));
}

#[test]
fn full_queue_answers_429_with_retry_after_and_admitted_requests_finish() {
    let server = Server::start(&["--max-running", "1", "--max-waiting", "1"]);
    let url = server.url("/v1/completions");
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body =
                    json!({"prompt": format!("Story number {i}:"), "max_tokens": 40, "ignore_eos": true});
                let r = client().post(&url).json(&body).send().expect("send");
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_string());
                let status = r.status().as_u16();
                let body: Value = r.json().unwrap_or(Value::Null);
                (status, retry, body)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 1, "some requests must be served: {results:?}");
    assert!(!limited.is_empty(), "six requests against 1 running + 1 waiting must see a 429: {results:?}");
    for (_, retry, body) in &limited {
        assert!(retry.as_deref().is_some_and(|v| v.parse::<u64>().is_ok()), "Retry-After header: {retry:?}");
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
    for (status, _, body) in &results {
        if *status == 200 {
            assert_eq!(body["usage"]["completion_tokens"], 40, "admitted requests run to completion: {body}");
        }
    }
    let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
    let counted = metric(&text, r#"inflight_http_responses_total{code="429",route="/v1/completions"}"#);
    assert_eq!(counted, Some(limited.len() as f64), "429s counted in /metrics");
}

/// One completion; returns (status, Retry-After, body).
fn complete(url: &str, prompt: &str, max_tokens: usize) -> (u16, Option<String>, Value) {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": true});
    let r = client().post(url).json(&body).send().expect("send");
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_string());
    let status = r.status().as_u16();
    (status, retry, r.json().unwrap_or(Value::Null))
}

#[test]
fn a_request_predicted_to_wait_too_long_gets_429_and_admitted_ones_finish() {
    let server = Server::start(&["--max-running", "1", "--max-queue-wait", "0.5"]);
    let url = server.url("/v1/completions");
    // One long request holds the only running place; the engine measures its speed.
    let long = {
        let url = url.clone();
        std::thread::spawn(move || complete(&url, "Count forever:", 300))
    };
    std::thread::sleep(Duration::from_millis(500));
    // Queue long prompts one by one until the predicted wait passes the limit.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut queued = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let (url, tx) = (url.clone(), tx.clone());
        queued.push(std::thread::spawn(move || {
            let r = complete(&url, &prompt_of(200, i), 4);
            let _ = tx.send(r.0);
            r
        }));
        std::thread::sleep(Duration::from_millis(100));
        if rx.try_iter().any(|status| status == 429) {
            refused = Some(i);
            break;
        }
    }
    assert!(refused.is_some_and(|i| i >= 1), "no 429 once requests queued: {refused:?}");
    let results: Vec<_> = queued.into_iter().map(|h| h.join().expect("thread")).collect();
    let limited: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    for (_, retry, body) in &limited {
        let secs = retry.as_deref().and_then(|v| v.parse::<u64>().ok());
        assert!(secs.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("predicted queue wait"), "{message}");
    }
    for (status, _, body) in &results {
        if *status != 429 {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(body["usage"]["completion_tokens"], 4, "admitted requests complete: {body}");
        }
    }
    let (status, _, body) = long.join().expect("thread");
    assert_eq!((status, &body["usage"]["completion_tokens"]), (200, &json!(300)), "{body}");
}

#[test]
fn sagemaker_routes_and_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let port_s = port.to_string();
    let server = Server::start_with_env(&[], &[("SAGEMAKER_BIND_TO_PORT", &port_s)]);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(server.base, base);
    assert_eq!(client().get(format!("{base}/ping")).send().expect("ping").status(), 200);
    let (s, chat) = post(
        &format!("{base}/invocations"),
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    );
    assert_eq!(s, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    let (s, comp) = post(&format!("{base}/invocations"), &json!({"prompt": "Hello", "max_tokens": 3}));
    assert_eq!(s, 200, "{comp}");
    assert_eq!(comp["object"], "text_completion");
    let resp = client()
        .post(format!("{base}/invocations"))
        .json(&json!({"prompt": "Hello", "max_tokens": 3, "stream": true}))
        .send()
        .expect("send");
    let (events, done) = sse(resp);
    assert!(done && !events.is_empty());
    let (s, bad) = post(&format!("{base}/invocations"), &json!({"inputs": "x"}));
    assert_error(s, &bad, 422, "invocations without messages or prompt");
    // With no key configured, `/invocations` requests are the anonymous tenant's.
    let text = client().get(format!("{base}/metrics")).send().expect("metrics").text().expect("text");
    let served = metric(&text, r#"inflight_tenant_requests_total{code="200",tenant="anonymous"}"#);
    assert_eq!(served, Some(3.0), "{text}");
    let completion = metric(&text, r#"inflight_tenant_tokens_total{kind="completion",tenant="anonymous"}"#);
    assert!(completion.is_some_and(|v| v >= 2.0), "{text}");
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let server = Server::start(&["--shutdown-timeout", "60"]);
    let url = server.url("/v1/completions");
    let body = json!({"prompt": "A long story:", "max_tokens": 64, "ignore_eos": true, "stream": true});
    let resp = client().post(&url).json(&body).send().expect("send");
    assert_eq!(resp.status(), 200);
    let pid = server.pid();
    let reader = std::thread::spawn(move || sse(resp));
    std::thread::sleep(Duration::from_millis(300));
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    // New work is refused while the stream drains (503, or the listener is closed).
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(r) = client().post(&url).json(&json!({"prompt": "x", "max_tokens": 2})).send() {
        assert_eq!(r.status(), 503, "new requests during drain");
    }
    let (events, done) = reader.join().expect("reader");
    assert!(done, "the in-flight stream finished with [DONE]");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
    assert!(!text.is_empty());
    let status = server.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// A user's GGUF with K-quant matrices and their Q5 stand-ins (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1; see
/// `support::mixed_quant_model`) serves like the default model: a chat completion and the same prompt streamed as a
/// completion, greedy, with usage.
#[test]
fn a_gguf_with_k_quant_and_q5_matrices_serves_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, changed) = crate::support::mixed_quant_model(dir.path());
    assert!(changed > 0);
    let server = Server::start_with_model(&path, &[]);
    let (status, body) = post(
        &server.url("/v1/chat/completions"),
        &json!({"model": "test-model", "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let reply = body["choices"][0]["message"]["content"].as_str().expect("content");
    assert!(!reply.trim().is_empty(), "{body}");
    assert_eq!(body["usage"]["prompt_tokens"].as_u64().map(|n| n > 0), Some(true), "{body}");
    let prompt = "The three primary colours are";
    let (status, plain) = post(
        &server.url("/v1/completions"),
        &json!({"model": "test-model", "prompt": prompt, "max_tokens": 12, "temperature": 0,
                "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{plain}");
    let (streamed, tokens, _) = stream_completion(&server.base, prompt, 12);
    assert_eq!(tokens, 12);
    assert_eq!(plain["choices"][0]["text"].as_str(), Some(streamed.as_str()));
}

/// A server with an fp8 KV cache (`--kv-cache-dtype fp8`) answers a chat completion with
/// usage, and concurrent streams get what each request gets alone: the cache rounds
/// each value on its own, so batching and chunking still do not change a request's
/// output.
#[test]
fn an_fp8_kv_cache_serves_and_outputs_do_not_depend_on_other_traffic() {
    let server = Server::start(&["--kv-cache-dtype", "fp8"]);
    let (status, body) = post(
        &server.url("/v1/chat/completions"),
        &json!({"model": "test-model", "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.trim().is_empty()),
        "{body}"
    );
    assert_eq!(body["usage"]["completion_tokens"].as_u64().map(|n| n > 0), Some(true), "{body}");
    let prompts: Vec<String> = (0..8).map(|i| prompt_of(20 + i * 41, i)).collect();
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let base = server.base.clone();
            std::thread::spawn(move || stream_completion(&base, &p, 16))
        })
        .collect();
    let concurrent: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    for (i, (text, tokens, _)) in concurrent.iter().enumerate() {
        assert_eq!(*tokens, 16, "request {i}");
        let (alone, _, _) = stream_completion(&server.base, &prompts[i], 16);
        assert_eq!(&alone, text, "request {i}: batched output differs from the same request alone");
    }
}
