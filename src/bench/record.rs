//! One request as the client measured it: timings in seconds, the server's token
//! counts, and, when it failed, why. These records are written raw into the
//! results file, so every summary can be recomputed from them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a request failed, coarse enough to count by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ErrorKind {
    /// No TCP connection (refused, unreachable, DNS).
    Connect,
    /// `--timeout` elapsed before the stream ended.
    Timeout,
    /// The server answered with a non-2xx status.
    HttpStatus(u16),
    /// An `error` object arrived inside the stream.
    StreamError,
    /// The connection closed before `[DONE]`.
    StreamClosed,
    /// A `data:` payload that is not JSON.
    BadChunk,
    /// The stream ended normally but carried no generated text.
    NoOutput,
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::HttpStatus(s) => write!(f, "http_{s}"),
            ErrorKind::StreamError => f.write_str("stream_error"),
            ErrorKind::StreamClosed => f.write_str("stream_closed"),
            ErrorKind::BadChunk => f.write_str("bad_chunk"),
            ErrorKind::NoOutput => f.write_str("no_output"),
            ErrorKind::Other => f.write_str("other"),
        }
    }
}

impl From<ErrorKind> for String {
    fn from(k: ErrorKind) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for ErrorKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "connect" => ErrorKind::Connect,
            "timeout" => ErrorKind::Timeout,
            "stream_error" => ErrorKind::StreamError,
            "stream_closed" => ErrorKind::StreamClosed,
            "bad_chunk" => ErrorKind::BadChunk,
            "no_output" => ErrorKind::NoOutput,
            "other" => ErrorKind::Other,
            _ => match s.strip_prefix("http_").and_then(|c| c.parse().ok()) {
                Some(code) => ErrorKind::HttpStatus(code),
                None => return Err(format!("unknown error kind `{s}`")),
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestError {
    pub kind: ErrorKind,
    /// The server's message or the transport error, shortened.
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Position of the request in its level's workload.
    pub index: usize,
    /// When it was sent, in seconds after its level started.
    pub start_s: f64,
    /// Until the first chunk with generated text; `None` if none came.
    pub ttft_s: Option<f64>,
    /// Until the stream ended (or the request failed).
    pub e2e_s: f64,
    /// Gaps between consecutive text-carrying chunks.
    pub itl_s: Vec<f64>,
    /// Text-carrying chunks received.
    pub chunks: usize,
    /// `max_tokens` sent.
    pub max_tokens: usize,
    /// Prompt length by the workload's tokenizer, when one was given.
    pub expected_input_tokens: Option<usize>,
    /// The server's `usage`, when it sent one.
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    pub cached_tokens: Option<usize>,
    pub finish_reason: Option<String>,
    pub error: Option<RequestError>,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Output tokens: the server's count, else the chunks received.
    pub fn output_tokens(&self) -> usize {
        self.completion_tokens.unwrap_or(self.chunks)
    }

    /// Input tokens: the server's count, else the workload's.
    pub fn input_tokens(&self) -> Option<usize> {
        self.prompt_tokens.or(self.expected_input_tokens)
    }

    /// (E2E − TTFT) / (output tokens − 1), for a successful request with at least
    /// two output tokens.
    pub fn tpot_s(&self) -> Option<f64> {
        let n = self.output_tokens();
        match (self.ok(), self.ttft_s) {
            (true, Some(ttft)) if n > 1 => Some((self.e2e_s - ttft) / (n - 1) as f64),
            _ => None,
        }
    }

    /// The server's token count disagrees with the chunks received. A server that
    /// holds back partial UTF-8 or batches tokens per chunk does this legitimately;
    /// a count that is simply wrong does too, which is why it is reported.
    pub fn usage_mismatch(&self) -> bool {
        self.completion_tokens.is_some_and(|n| n != self.chunks)
    }

    /// When the request finished, in seconds after its level started.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.e2e_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip_through_their_names() {
        for k in
            [ErrorKind::Connect, ErrorKind::HttpStatus(404), ErrorKind::StreamClosed, ErrorKind::NoOutput]
        {
            let name = k.to_string();
            assert_eq!(ErrorKind::try_from(name.clone()), Ok(k), "{name}");
        }
        assert_eq!(ErrorKind::HttpStatus(503).to_string(), "http_503");
        assert!(ErrorKind::try_from("http_x".to_string()).is_err());
    }

    #[test]
    fn tpot_excludes_the_first_token_and_needs_two() {
        let mut r =
            RequestRecord { ttft_s: Some(0.5), e2e_s: 2.5, completion_tokens: Some(5), ..Default::default() };
        assert_eq!(r.tpot_s(), Some(0.5));
        r.completion_tokens = Some(1);
        assert_eq!(r.tpot_s(), None);
        r.completion_tokens = None;
        r.chunks = 3;
        assert_eq!(r.tpot_s(), Some(1.0), "falls back to chunks without usage");
        r.error = Some(RequestError { kind: ErrorKind::Timeout, message: String::new() });
        assert_eq!(r.tpot_s(), None, "failed requests have no TPOT");
    }
}
