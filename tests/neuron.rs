//! The Neuron backend end to end on the libnrt emulator (`neuron/emulator`; an
//! emulator, not the Neuron runtime): the default model compiled into bucketed
//! stand-in graphs, served through `--backend neuron --neuron-lib`, against the
//! reference greedy tokens, concurrent streams against the same prompts alone,
//! the largest bucket as a limit, and injected runtime faults. Every run must end
//! with the emulator reporting no misuse and nothing leaked.

use serde_json::{json, Value};

use crate::support::http::{client, post, sse};
use crate::support::neuron::{
    assert_clean_close, assert_matches_f32_reference, emulator_artifacts, emulator_server,
    greedy_on_emulator, LARGEST_BUCKET,
};
use crate::support::reference;

/// Teacher-free greedy decoding of every reference prompt (all in flight together:
/// prompts in three buckets, decodes batched) matches transformers' f32 greedy
/// tokens up to its first near-tie: the emulator runs the model in f32 on weights
/// dequantized from the GGUF, which is what transformers did.
#[test]
fn greedy_tokens_on_the_emulator_match_the_f32_reference() {
    let prompts: Vec<&Value> = reference()["prompts"].as_array().expect("prompts").iter().collect();
    let got = greedy_on_emulator(&emulator_artifacts(), &prompts, 32);
    assert_matches_f32_reference(&prompts, &got);
}

fn stream(base: &str, prompt: &str) -> String {
    let body =
        json!({"model": "test-model", "prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": true});
    let resp = client().post(format!("{base}/v1/completions")).json(&body).send().expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let (events, done) = sse(resp);
    assert!(done, "stream ended without [DONE]");
    events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect()
}

/// Eight concurrent streams, whose prompts land in different prefill buckets and
/// whose decodes share batched steps over different slots, equal the same prompts
/// served one at a time; a prompt over the largest bucket is refused with 400.
#[test]
fn concurrent_streams_equal_alone_and_the_largest_bucket_is_the_limit() {
    let server = emulator_server(&[]);
    let prompts: Vec<String> = (0..8)
        .map(|i| match i % 3 {
            0 => format!("Fact {i}: the capital of France is"),
            1 => {
                format!("Story {i}: {}", "once upon a time there was a small village by the sea, ".repeat(4))
            }
            _ => format!(
                "Notes {i}: {}",
                "the quick brown fox jumps over the lazy dog and runs away. ".repeat(20)
            ),
        })
        .collect();
    let alone: Vec<String> = prompts.iter().map(|p| stream(&server.base, p)).collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts.iter().map(|p| scope.spawn(|| stream(&server.base, p))).collect();
        handles.into_iter().map(|h| h.join().expect("stream thread")).collect()
    });
    assert_eq!(together, alone);

    let long = "word ".repeat(LARGEST_BUCKET + 8);
    let (status, body) = post(
        &server.url("/v1/completions"),
        &json!({"model": "test-model", "prompt": long, "max_tokens": 4}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or_default().contains(&LARGEST_BUCKET.to_string()),
        "{body}"
    );
    let health = client().get(server.url("/health")).send().expect("health");
    assert_eq!(health.status().as_u16(), 200);
    let (status, log) = server.stop_and_log();
    assert!(status.success(), "server exit: {status:?}");
    assert_clean_close(&log.join("\n"));
}

fn complete(base: &str, prompt: &str) -> (u16, Value) {
    post(
        &format!("{base}/v1/completions"),
        &json!({"model": "test-model", "prompt": prompt, "max_tokens": 2}),
    )
}

/// Runtime faults on given executes: a busy NeuronCore is retried and the request
/// succeeds; out-of-memory, timeout and NaN results fail only the request whose
/// step they hit, with the runtime's status named, while the server stays healthy
/// and the next requests complete. Each request is one prefill and one decode.
#[test]
fn runtime_faults_fail_only_their_requests() {
    let faults = [("INFLIGHT_NRT_EMULATOR_FAULTS", "2:busy,5:resource,7:timeout,9:nan")];
    let server = emulator_server(&faults);
    // Executes: 1 prefill, 2 busy (retried as 3); 4, 5 resource; 6, 7 timeout;
    // 8, 9 NaN; 10, 11.
    let expect = [
        (200, None),
        (500, Some("NRT_RESOURCE")),
        (500, Some("NRT_TIMEOUT")),
        (500, Some("NUM_ERR")),
        (200, None),
    ];
    for (i, (want, message)) in expect.into_iter().enumerate() {
        let (status, body) = complete(&server.base, "The capital of France is");
        assert_eq!(status, want, "request {i}: {body}");
        if let Some(m) = message {
            assert!(body["error"]["message"].as_str().unwrap_or_default().contains(m), "request {i}: {body}");
        }
        let health = client().get(server.url("/health")).send().expect("health");
        assert_eq!(health.status().as_u16(), 200, "after request {i}");
    }
    let (status, log) = server.stop_and_log();
    assert!(status.success());
    assert_clean_close(&log.join("\n"));
}

/// The official OpenAI Python client's checks (the ones the CPU backend passes)
/// against a server on the Neuron backend.
#[test]
fn official_openai_client_works_on_the_neuron_backend() {
    let server = emulator_server(&[]);
    let out = crate::support::python::run_script("openai_client.py", &server.base, &[]);
    assert!(out.contains("all openai client checks passed"), "{out}");
    // Prompt logprobs need every row's logits, which compiled graphs do not return:
    // refused up front (a step asking for them would fail every request in it).
    let scored =
        json!({"model": "test-model", "prompt": "Hi there", "max_tokens": 1, "echo": true, "logprobs": 1});
    let (status, body) = post(&format!("{}/v1/completions", server.base), &scored);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "logprobs", "{body}");
    assert_eq!(complete(&server.base, "Hi there").0, 200);
    let (status, log) = server.stop_and_log();
    assert!(status.success());
    assert_clean_close(&log.join("\n"));
}
