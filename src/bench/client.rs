//! One streamed request against an OpenAI-compatible endpoint, timed as the client
//! sees it: the send time, the arrival of every server-sent-events chunk that
//! carries generated text, the `usage` the server reports, and how it failed if it
//! did. Every failure becomes a `RequestRecord` with an `ErrorKind`; nothing here
//! panics or returns early on what a server sends.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::endpoint::Endpoint;
use super::record::{ErrorKind, RequestError, RequestRecord};
use super::workload::{Input, Message, WorkItem};
use super::BenchError;

/// Where requests go and how they are shaped.
#[derive(Debug, Clone)]
pub struct Target {
    /// A server's base URL (`http://host:port`, with or without `/v1`), or a full
    /// endpoint URL ending in `/completions`.
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub api_key: Option<String>,
    /// Longest one request may take, connection included.
    pub timeout: Duration,
    /// Reuse connections between requests (some servers close them after every
    /// streamed response; then turn this off).
    pub keep_alive: bool,
    /// Send `ignore_eos` so every request produces exactly `max_tokens`.
    pub ignore_eos: bool,
    pub temperature: Option<f32>,
    /// Fields added to every request body, over the ones the client sets (e.g.
    /// vLLM's `priority`).
    pub extra_body: serde_json::Map<String, Value>,
}

/// The URL requests are posted to.
pub fn endpoint_url(url: &str, endpoint: Endpoint) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/completions") {
        return url.to_string();
    }
    let base = url.strip_suffix("/v1").unwrap_or(url);
    format!("{base}{}", endpoint.path())
}

pub struct Client {
    http: reqwest::Client,
    url: String,
    target: Target,
}

const MESSAGE_CHARS: usize = 300;

impl Client {
    pub fn new(target: Target) -> Result<Client, BenchError> {
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10).min(target.timeout));
        if !target.keep_alive {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder.build().map_err(|e| BenchError::Http(e.to_string()))?;
        Ok(Client { http, url: endpoint_url(&target.url, target.endpoint), target })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn body(&self, item: &WorkItem) -> Value {
        let t = &self.target;
        let mut body = json!({
            "model": t.model,
            "max_tokens": item.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        match (&item.input, t.endpoint) {
            (Input::Prompt(p), Endpoint::Completions) => body["prompt"] = json!(p),
            (Input::Prompt(p), Endpoint::Chat) => {
                body["messages"] = json!([Message { role: "user".into(), content: p.clone() }])
            }
            (Input::Messages(m), _) => body["messages"] = json!(m),
        }
        if t.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if let Some(temp) = t.temperature {
            body["temperature"] = json!(temp);
        }
        for (k, v) in &t.extra_body {
            body[k] = v.clone();
        }
        body
    }

    /// Sends `item` and measures it; `epoch` is when its load level started.
    pub async fn send(&self, item: &WorkItem, index: usize, epoch: Instant) -> RequestRecord {
        let start = Instant::now();
        let mut st = StreamState::new(start);
        st.record.index = index;
        st.record.start_s = start.saturating_duration_since(epoch).as_secs_f64();
        st.record.max_tokens = item.max_tokens;
        st.record.expected_input_tokens = item.input_tokens;
        let outcome = tokio::time::timeout(self.target.timeout, self.exchange(item, &mut st)).await;
        let error = match outcome {
            Err(_) => Some(RequestError {
                kind: ErrorKind::Timeout,
                message: format!("no complete answer within {:?}", self.target.timeout),
            }),
            Ok(Err(e)) => Some(e),
            Ok(Ok(())) => None,
        };
        st.finish(Instant::now(), error)
    }

    async fn exchange(&self, item: &WorkItem, st: &mut StreamState) -> Result<(), RequestError> {
        let mut req = self.http.post(&self.url).json(&self.body(item));
        if let Some(key) = &self.target.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RequestError {
                kind: ErrorKind::HttpStatus(status.as_u16()),
                message: error_message(&text),
            });
        }
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // A server that ignores `stream`: one whole answer, TTFT = E2E.
            let text = resp.text().await.map_err(transport_error)?;
            return st.on_whole_body(&text, Instant::now());
        }
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(transport_error)?;
            let now = Instant::now();
            buf.extend_from_slice(&bytes);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") {
                    st.on_data(data.trim_start(), now)?;
                    if st.done {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The `error.message` of an OpenAI error body, else the body itself, shortened.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().or(v["error"].as_str()).map(str::to_string));
    shorten(&msg.unwrap_or_else(|| body.to_string()))
}

fn transport_error(e: reqwest::Error) -> RequestError {
    let kind = if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_body() || e.is_decode() || e.is_request() {
        ErrorKind::StreamClosed
    } else {
        ErrorKind::Other
    };
    // The source chain says what really happened ("connection refused").
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    RequestError { kind, message: shorten(&message) }
}

/// What one request has received so far. Kept outside the timed future so a
/// timeout still leaves the partial measurements in the record.
struct StreamState {
    start: Instant,
    last: Option<Instant>,
    done: bool,
    record: RequestRecord,
}

impl StreamState {
    fn new(start: Instant) -> Self {
        StreamState { start, last: None, done: false, record: RequestRecord::default() }
    }

    fn on_text(&mut self, now: Instant) {
        match self.last {
            None => self.record.ttft_s = Some((now - self.start).as_secs_f64()),
            Some(prev) => self.record.itl_s.push((now - prev).as_secs_f64()),
        }
        self.last = Some(now);
        self.record.chunks += 1;
    }

    fn on_usage(&mut self, usage: &Value) {
        let n = |v: &Value| v.as_u64().map(|x| x as usize);
        self.record.prompt_tokens = n(&usage["prompt_tokens"]).or(self.record.prompt_tokens);
        self.record.completion_tokens = n(&usage["completion_tokens"]).or(self.record.completion_tokens);
        self.record.cached_tokens =
            n(&usage["prompt_tokens_details"]["cached_tokens"]).or(self.record.cached_tokens);
    }

    /// One `data:` payload of the stream.
    fn on_data(&mut self, data: &str, now: Instant) -> Result<(), RequestError> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| RequestError {
            kind: ErrorKind::BadChunk,
            message: shorten(&format!("{e}: {data}")),
        })?;
        if !v["error"].is_null() {
            return Err(RequestError { kind: ErrorKind::StreamError, message: error_message(data) });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.on_usage(u);
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            let text = [&choice["text"], &delta["content"], &delta["reasoning_content"], &delta["reasoning"]]
                .iter()
                .any(|t| t.as_str().is_some_and(|s| !s.is_empty()));
            if text {
                self.on_text(now);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.record.finish_reason = Some(reason.to_string());
            }
        }
        Ok(())
    }

    /// A non-streamed answer: its text counts as one chunk.
    fn on_whole_body(&mut self, body: &str, now: Instant) -> Result<(), RequestError> {
        let v: Value = serde_json::from_str(body).map_err(|e| RequestError {
            kind: ErrorKind::BadChunk,
            message: shorten(&format!("{e}: {body}")),
        })?;
        let choice = &v["choices"][0];
        let text = choice["text"].as_str().or(choice["message"]["content"].as_str()).unwrap_or("");
        if !text.is_empty() {
            self.on_text(now);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.on_usage(u);
        }
        self.record.finish_reason = choice["finish_reason"].as_str().map(str::to_string);
        self.done = true;
        Ok(())
    }

    fn finish(mut self, end: Instant, error: Option<RequestError>) -> RequestRecord {
        self.record.e2e_s = (end - self.start).as_secs_f64();
        self.record.error = error.or_else(|| {
            if !self.done {
                Some(RequestError {
                    kind: ErrorKind::StreamClosed,
                    message: "the stream ended without [DONE]".into(),
                })
            } else if self.record.chunks == 0 {
                Some(RequestError {
                    kind: ErrorKind::NoOutput,
                    message: "the stream carried no generated text".into(),
                })
            } else {
                None
            }
        });
        self.record
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn endpoint_urls_accept_a_base_a_v1_base_or_a_full_url() {
        let c = Endpoint::Completions;
        assert_eq!(endpoint_url("http://h:1", c), "http://h:1/v1/completions");
        assert_eq!(endpoint_url("http://h:1/v1/", Endpoint::Chat), "http://h:1/v1/chat/completions");
        assert_eq!(
            endpoint_url("http://h:1/custom/completions", Endpoint::Chat),
            "http://h:1/custom/completions"
        );
    }

    #[test]
    fn stream_parsing_times_text_chunks_and_reads_usage() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut st = StreamState::new(t0);
        // A chat stream's role-only first chunk is not a token.
        st.on_data(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#, at(5)).unwrap();
        assert_eq!(st.record.ttft_s, None);
        st.on_data(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#, at(100)).unwrap();
        st.on_data(r#"{"choices":[{"index":0,"text":" there","finish_reason":null}]}"#, at(130)).unwrap();
        st.on_data(r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#, at(131)).unwrap();
        st.on_data(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            at(132),
        )
        .unwrap();
        st.on_data("[DONE]", at(133)).unwrap();
        let r = st.finish(at(133), None);
        assert!(r.ok());
        assert_eq!(r.chunks, 2);
        assert!((r.ttft_s.unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(r.itl_s.len(), 1);
        assert!((r.itl_s[0] - 0.03).abs() < 1e-9);
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.cached_tokens), (Some(7), Some(2), Some(4)));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert!(!r.usage_mismatch());
    }

    #[test]
    fn stream_errors_are_classified() {
        let t0 = Instant::now();
        let mut st = StreamState::new(t0);
        let e = st.on_data(r#"{"error":{"message":"engine failed","type":"server_error"}}"#, t0).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::StreamError, "engine failed"));
        assert_eq!(st.on_data("{not json", t0).unwrap_err().kind, ErrorKind::BadChunk);
        let r = StreamState::new(t0).finish(t0, None);
        assert_eq!(r.error.unwrap().kind, ErrorKind::StreamClosed, "no [DONE]");
        let mut st = StreamState::new(t0);
        st.on_data("[DONE]", t0).unwrap();
        assert_eq!(st.finish(t0, None).error.unwrap().kind, ErrorKind::NoOutput);
    }

    /// Serves one connection with `response` (written in pieces, `pause` apart),
    /// after reading the whole request, then closes it.
    fn one_shot_server(pieces: Vec<String>, pause: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_lowercase();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if req.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            for p in pieces {
                s.write_all(p.as_bytes()).unwrap();
                s.flush().unwrap();
                std::thread::sleep(pause);
            }
        });
        format!("http://{addr}")
    }

    fn target(url: String) -> Target {
        Target {
            url,
            model: "m".into(),
            endpoint: Endpoint::Completions,
            api_key: None,
            timeout: Duration::from_secs(10),
            keep_alive: false,
            ignore_eos: true,
            temperature: Some(0.0),
            extra_body: Default::default(),
        }
    }

    #[test]
    fn extra_body_fields_are_added_and_override_the_clients_own() {
        let mut t = target("http://127.0.0.1:9".into());
        t.extra_body = serde_json::from_str(r#"{"priority": -1, "temperature": 0.7}"#).unwrap();
        let client = Client::new(t).unwrap();
        let item = WorkItem { input: Input::Prompt("a b c".into()), max_tokens: 3, input_tokens: Some(3) };
        let body = client.body(&item);
        assert_eq!(body["priority"], json!(-1));
        assert_eq!(body["temperature"], json!(0.7));
        assert_eq!(body["max_tokens"], json!(3));
    }

    fn send(url: String) -> RequestRecord {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = Client::new(target(url)).unwrap();
        let item = WorkItem { input: Input::Prompt("a b c".into()), max_tokens: 3, input_tokens: Some(3) };
        rt.block_on(client.send(&item, 0, Instant::now()))
    }

    const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

    #[test]
    fn a_whole_stream_over_a_socket_is_measured() {
        let mut pieces = vec![SSE_HEAD.to_string()];
        for t in ["a", "b", "c"] {
            pieces.push(format!("data: {{\"choices\":[{{\"index\":0,\"text\":\"{t}\"}}]}}\n\n"));
        }
        pieces.push("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n".into());
        let r = send(one_shot_server(pieces, Duration::from_millis(20)));
        assert!(r.ok(), "{:?}", r.error);
        assert_eq!((r.chunks, r.completion_tokens, r.itl_s.len()), (3, Some(3), 2));
        assert!(r.itl_s.iter().all(|&g| g >= 0.015), "gaps follow the server's pauses: {:?}", r.itl_s);
        assert!(r.e2e_s >= r.ttft_s.unwrap() + 0.03);
        assert_eq!(r.expected_input_tokens, Some(3));
    }

    #[test]
    fn a_dropped_connection_is_reported_not_a_panic() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let data = "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n";
        // One complete HTTP chunk, then the connection closes mid-body.
        let pieces = vec![head.to_string(), format!("{:x}\r\n{data}\r\n", data.len())];
        let r = send(one_shot_server(pieces, Duration::from_millis(1)));
        assert_eq!(r.error.as_ref().map(|e| e.kind), Some(ErrorKind::StreamClosed), "{:?}", r.error);
        assert_eq!(r.chunks, 1, "what arrived before the drop is kept");
    }

    #[test]
    fn http_errors_and_refused_connections_are_reported() {
        let body = r#"{"error":{"message":"The model `m` does not exist.","type":"invalid_request_error"}}"#;
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = send(one_shot_server(vec![resp], Duration::ZERO));
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::HttpStatus(404));
        assert!(e.message.contains("does not exist"), "{}", e.message);

        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = send(format!("http://127.0.0.1:{port}"));
        assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::Connect));
    }
}
