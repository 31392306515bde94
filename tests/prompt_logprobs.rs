//! Prompt logprobs (`echo` with `logprobs` on `/v1/completions`) over real HTTP
//! with the real model: the request lm-evaluation-harness's `local-completions`
//! sends for loglikelihood, the logprobs against those of generating the same
//! tokens one at a time, a prompt longer than one prefill chunk, and a prompt
//! whose prefix is in the prefix cache.

use serde_json::{json, Value};

use inflight::model::WeightSource;
use inflight::tokenizer::Tokenizer;

use crate::support::http::post;
use crate::support::model_path;
use crate::support::server::{shared, Server};

/// Logprobs of one prompt prefilled in different chunkings run the same kernels
/// over the same f16 KV cache (only the matmul tiles differ with the row count).
const TOLERANCE: f64 = 2e-3;
/// A decode row or a prefill of fewer than 8 rows runs the one-row attention
/// kernel, a longer prefill the tiled one (online softmax): their attention
/// outputs agree to about 1e-5, but the int8 rounding of the activations after
/// them turns that into up to ~0.2 nats at some positions (measured: 0.16 at
/// worst, on a tail alternative). So each logprob gets this bound and all of
/// them together a mean bound about ten times tighter.
const ACROSS_KERNELS: f64 = 0.25;
const ACROSS_KERNELS_MEAN: f64 = 0.03;

/// The differences seen between generation and prompt scoring, checked one by
/// one against `ACROSS_KERNELS` and on average against `ACROSS_KERNELS_MEAN`.
#[derive(Default)]
struct Differences(Vec<f64>);

impl Differences {
    fn check(&mut self, x: f64, y: f64, what: &str) {
        let d = (x - y).abs();
        assert!(d < ACROSS_KERNELS, "{what}: generated {x}, prompt {y}");
        self.0.push(d);
    }

    /// `token`'s logprob `x` from generation against the prompt's alternatives
    /// `got`: the same within the bound, or, where a near tie put it out of
    /// `got`, no better than `got`'s worst by more than the bound.
    fn check_alternative(&mut self, got: &serde_json::Map<String, Value>, token: &str, x: f64, what: &str) {
        match got.get(token) {
            Some(y) => self.check(x, f(y), what),
            None => {
                let worst = got.values().map(f).fold(f64::INFINITY, f64::min);
                assert!(x < worst + ACROSS_KERNELS, "{what}: generated {x}, not among {got:?}");
            }
        }
    }

    fn check_mean(&self) {
        let mean = self.0.iter().sum::<f64>() / self.0.len().max(1) as f64;
        assert!(mean < ACROSS_KERNELS_MEAN, "mean difference {mean} over {} logprobs", self.0.len());
    }
}

fn completions(body: &Value) -> Value {
    let (status, v) = post(&shared().url("/v1/completions"), body);
    assert_eq!(status, 200, "{v}");
    v
}

/// The served model's tokenization of `text`, as the server does it.
fn tokenize(text: &str) -> Vec<u32> {
    static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    let tok = TOKENIZER.get_or_init(|| {
        let w = WeightSource::open_gguf(&model_path()).expect("gguf");
        Tokenizer::from_gguf(w.gguf_content().expect("gguf content")).expect("tokenizer")
    });
    tok.encode(text, tok.add_bos_token()).expect("encode")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The request lm-evaluation-harness's `local-completions` model sends for a
/// batch of loglikelihood requests (`max_tokens` 1; vLLM also takes 0), and the
/// fields it reads: `token_logprobs` and `top_logprobs` from the context length
/// on, the first prompt token's `null`.
#[test]
fn lm_eval_loglikelihood_request_shape() {
    let a = tokenize("Question: What is the capital of France?\nAnswer: Paris");
    let b = tokenize("The quick brown fox jumps over the lazy dog");
    for max_tokens in [1, 0] {
        let v = completions(&json!({"model": "test-model", "prompt": [a, b], "max_tokens": max_tokens,
                                    "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234}));
        let choices = v["choices"].as_array().expect("choices");
        assert_eq!(choices.len(), 2);
        for (c, ids) in choices.iter().zip([&a, &b]) {
            let lp = &c["logprobs"];
            let n = ids.len() + max_tokens;
            for field in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                assert_eq!(lp[field].as_array().map(Vec::len), Some(n), "{field}: {lp}");
            }
            assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(), "{lp}");
            let offsets: Vec<u64> =
                lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
            assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
            // What lm-eval computes: the sum over the continuation and whether each
            // token was the greedy one (its logprob equals the best alternative's).
            for k in 1..n {
                let x = f(&lp["token_logprobs"][k]);
                assert!(x <= 0.0 && x.is_finite(), "position {k}: {x}");
                let top = lp["top_logprobs"][k].as_object().expect("top_logprobs entry");
                assert_eq!(top.len(), 1, "logprobs: 1");
                let best = top.values().map(f).fold(f64::NEG_INFINITY, f64::max);
                assert!(x <= best + 1e-6, "position {k}: {x} above the best {best}");
            }
            assert_eq!(c["finish_reason"], "length");
            assert!(c["text"].as_str().unwrap().starts_with(if ids == &a {
                "Question"
            } else {
                "The quick"
            }));
        }
        assert_eq!(v["usage"]["completion_tokens"], 2 * max_tokens, "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], a.len() + b.len());
    }
    // Prompt logprobs are not streamed, and 0 tokens means something only with echo.
    let url = shared().url("/v1/completions");
    for bad in [
        json!({"model": "test-model", "prompt": [a], "max_tokens": 1, "logprobs": 1, "echo": true, "stream": true}),
        json!({"model": "test-model", "prompt": [a], "max_tokens": 0, "logprobs": 1}),
    ] {
        let (status, v) = post(&url, &bad);
        assert_eq!(status, 400, "{bad} gave {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // "Paris" after the question is the model's likely answer: a plausible score.
    let v = completions(&json!({"model": "test-model", "prompt": [a], "max_tokens": 0, "logprobs": 1,
                                "echo": true, "temperature": 0}));
    assert!(f(&v["choices"][0]["logprobs"]["token_logprobs"][a.len() - 1]) > -5.0, "{v}");
}

/// For each prefix `ids[..k]`, generating one token reports the model's top
/// alternatives after it; echoing the whole prompt reports prompt position `k`'s
/// from the prefill. They are the same distribution, so the same alternatives with
/// the same logprobs, and the prompt token's own logprob matches wherever it is
/// among them. Then a greedy continuation's logprobs, generated one by one, equal
/// the echo of prompt plus continuation.
#[test]
fn prompt_logprobs_equal_those_of_generating_the_tokens_one_by_one() {
    let ids = tokenize("Rust is a systems programming language. It guarantees memory safety");
    let echo = completions(&json!({"model": "test-model", "prompt": ids, "max_tokens": 0, "echo": true,
                                   "logprobs": 5, "temperature": 0}));
    let lp = &echo["choices"][0]["logprobs"];
    let mut diffs = Differences::default();
    for k in 1..ids.len() {
        let gen = completions(&json!({"model": "test-model", "prompt": &ids[..k], "max_tokens": 1,
                                      "logprobs": 5, "temperature": 0}));
        let glp = &gen["choices"][0]["logprobs"];
        let (want, got) =
            (glp["top_logprobs"][0].as_object().unwrap(), lp["top_logprobs"][k].as_object().unwrap());
        assert_eq!(want.keys().collect::<Vec<_>>().len(), 5);
        for (token, x) in want {
            diffs.check_alternative(got, token, f(x), &format!("position {k}, {token:?}"));
        }
        if let Some(x) = want.get(lp["tokens"][k].as_str().unwrap()) {
            diffs.check(f(x), f(&lp["token_logprobs"][k]), &format!("position {k}"));
        }
    }

    let gen = completions(&json!({"model": "test-model", "prompt": ids, "max_tokens": 8, "logprobs": 0,
                                  "temperature": 0, "ignore_eos": true}));
    let generated = &gen["choices"][0]["logprobs"];
    let text = gen["choices"][0]["text"].as_str().unwrap();
    let whole = tokenize(&format!("{}{text}", echo["choices"][0]["text"].as_str().unwrap()));
    let echo = completions(&json!({"model": "test-model", "prompt": whole, "max_tokens": 0, "echo": true,
                                   "logprobs": 0, "temperature": 0}));
    let scored = &echo["choices"][0]["logprobs"];
    // Compare the continuation's tokens where re-tokenizing kept them.
    let gen_tokens = generated["tokens"].as_array().unwrap();
    let tail = &scored["tokens"].as_array().unwrap()[whole.len() - gen_tokens.len()..];
    assert_eq!(tail, &gen_tokens[..], "the continuation re-tokenizes to itself");
    for (i, x) in generated["token_logprobs"].as_array().unwrap().iter().enumerate() {
        let y = &scored["token_logprobs"][whole.len() - gen_tokens.len() + i];
        diffs.check(f(x), f(y), &format!("continuation token {i}"));
    }
    diffs.check_mean();
}

/// A server whose steps hold 64 tokens prefills a prompt of about 250 tokens in
/// four or more chunks: every chunk's rows are scored, the same as the shared server's
/// single chunk, and each agrees with generation after the same prefix (positions
/// in the first, second, third and last chunk).
#[test]
fn a_prompt_over_several_prefill_chunks_is_scored_in_every_chunk() {
    let chunked = Server::start(&["--max-batch-tokens", "64"]);
    let text = (0..40).map(|i| format!("item {i} is {}.", i * 7 % 13)).collect::<Vec<_>>().join(" ");
    let ids = tokenize(&text);
    assert!((193..512).contains(&ids.len()), "{} tokens: over three chunks of 64, one of 512", ids.len());
    let body = json!({"model": "test-model", "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 3,
                      "temperature": 0});
    let one = completions(&body);
    let (status, four) = post(&chunked.url("/v1/completions"), &body);
    assert_eq!(status, 200, "{four}");
    let (a, b) = (&one["choices"][0]["logprobs"], &four["choices"][0]["logprobs"]);
    assert_eq!(b["token_logprobs"].as_array().unwrap().len(), ids.len());
    for k in 1..ids.len() {
        let (x, y) = (f(&a["token_logprobs"][k]), f(&b["token_logprobs"][k]));
        assert!((x - y).abs() < TOLERANCE, "position {k}: {x} in one chunk, {y} in chunks of 64");
    }
    let mut diffs = Differences::default();
    for k in [30, 100, 150, ids.len() - 1] {
        let (status, gen) = post(
            &chunked.url("/v1/completions"),
            &json!({"model": "test-model", "prompt": &ids[..k], "max_tokens": 1, "logprobs": 3, "temperature": 0}),
        );
        assert_eq!(status, 200, "{gen}");
        let want = gen["choices"][0]["logprobs"]["top_logprobs"][0].as_object().unwrap().clone();
        let got = b["top_logprobs"][k].as_object().unwrap();
        for (token, x) in &want {
            diffs.check_alternative(got, token, f(x), &format!("position {k}, {token:?}"));
        }
    }
    diffs.check_mean();
}

/// A prompt whose blocks sit in the prefix cache: a plain request reuses them,
/// an echo with logprobs recomputes them (cached KV has no logits), so it still
/// scores every token, the same as when nothing was cached.
#[test]
fn a_cached_prefix_is_recomputed_for_prompt_logprobs() {
    let nonce = std::process::id();
    let text = format!("Request {nonce}: {}", "the garden by the river is quiet in the evening. ".repeat(6));
    let ids = tokenize(&text);
    let body = json!({"model": "test-model", "prompt": ids, "max_tokens": 1, "echo": true, "logprobs": 2,
                      "temperature": 0});
    let first = completions(&body);
    let plain =
        completions(&json!({"model": "test-model", "prompt": ids, "max_tokens": 1, "temperature": 0}));
    let cached = plain["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= 32, "the prompt's blocks are cached: {plain}");
    let again = completions(&body);
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{again}");
    let (a, b) = (&first["choices"][0]["logprobs"], &again["choices"][0]["logprobs"]);
    assert_eq!(b["tokens"], a["tokens"]);
    let (xs, ys) = (a["token_logprobs"].as_array().unwrap(), b["token_logprobs"].as_array().unwrap());
    assert_eq!(xs.len(), ids.len() + 1);
    for (k, (x, y)) in xs.iter().zip(ys).enumerate().skip(1) {
        assert!((f(x) - f(y)).abs() < 1e-5, "position {k}: {x} uncached, {y} with the prefix cached");
    }
}
