//! Small HTTP helpers: JSON posts and reading an SSE stream into its events.

use std::io::{BufRead, BufReader};

use serde_json::Value;

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .expect("http client")
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().expect("request");
    let status = r.status().as_u16();
    let text = r.text().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The `data:` payloads of an SSE response, up to and excluding `[DONE]`; the
/// flag says whether `[DONE]` arrived.
pub fn sse(resp: reqwest::blocking::Response) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    for line in BufReader::new(resp).lines() {
        let line = line.expect("stream line");
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data = data.trim();
        if data == "[DONE]" {
            return (events, true);
        }
        events.push(serde_json::from_str(data).expect("chunk is JSON"));
    }
    (events, false)
}

/// A metric's value from the Prometheus text format (first sample of that name).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
