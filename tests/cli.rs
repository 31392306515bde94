//! The `inflight` binary's offline commands, run as a user runs them.

use std::process::Command;

use candle_core::quantized::gguf_file;
use serde_json::Value;

use inflight::tokenizer::{ChatMessage, Tokenizer};

use crate::support::{ids, model_path, reference, steps_to_match};

fn inflight() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inflight"));
    c.env_remove("INFLIGHT_MODEL").env("INFLIGHT_LOG", "warn");
    c
}

/// `generate --prompts-file --json` runs the reference's plain-text prompts together
/// through the batched path and reproduces llama.cpp's greedy tokens up to its
/// first near-tie (`support::NEAR_TIE_MARGIN`), in input order, with every KV cache
/// dtype; an unknown dtype is a usage error.
#[test]
fn generate_json_batch_reproduces_reference_greedy_tokens() {
    for dtype in ["f16", "f32", "fp8"] {
        generate_json_batch_matches_reference(dtype);
    }
    let out = inflight().args(["generate", "-p", "hi", "--kv-cache-dtype", "f8"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kv-cache-dtype") && stderr.contains("f16, f32, fp8"), "{stderr}");
    // fp8 is the CPU cache's alone: another backend refuses it before loading anything.
    let out = inflight()
        .args(["generate", "-p", "hi", "--backend", "cuda", "--kv-cache-dtype", "fp8"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kv-cache-dtype fp8 is built for the CPU backend only"), "{stderr}");
}

fn generate_json_batch_matches_reference(kv_dtype: &str) {
    let prompts: Vec<&Value> =
        reference()["prompts"].as_array().expect("prompts").iter().filter(|p| p["kind"] == "text").collect();
    assert!(prompts.len() >= 3);
    let dir = tempfile::tempdir().expect("tempdir");
    // JSONL, because some prompts hold newlines.
    let file = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts.iter().map(|p| p["prompt_text"].to_string()).collect();
    std::fs::write(&file, lines.join("\n")).expect("write prompts");
    let out = inflight()
        .args(["generate", "--json", "--max-tokens", "32", "--ignore-eos", "--kv-cache-dtype", kv_dtype])
        .arg("--prompts-file")
        .arg(&file)
        .arg("--model")
        .arg(model_path())
        .output()
        .expect("run inflight generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "generate failed: {stderr}");
    assert!(stderr.contains("tok/s"), "aggregate throughput on stderr: {stderr}");
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), prompts.len());
    for (p, row) in prompts.iter().zip(&rows) {
        assert_eq!(ids(&row["prompt_token_ids"]), ids(&p["prompt_ids"]), "prompt {}", p["id"]);
        let got = ids(&row["token_ids"]);
        assert_eq!(got.len(), 32);
        assert_eq!(row["finish_reason"], "length");
        let want = ids(&p["llamacpp"]["greedy_ids"]);
        let n = steps_to_match(p);
        assert_eq!(
            &got[..n],
            &want[..n],
            "{kv_dtype} KV, prompt {}: greedy tokens before the first near-tie",
            p["id"]
        );
        assert!(row["text"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

/// `--chat` renders the prompt through the model's template exactly as the
/// reference did, and streams the answer.
#[test]
fn generate_chat_uses_the_template_and_streams_the_answer() {
    let p = reference()["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .find(|p| p["id"] == "chat_code_prime")
        .expect("chat_code_prime");
    let question = p["messages"][0]["content"].as_str().expect("content");
    let run = |json: bool| {
        let mut c = inflight();
        c.args(["generate", "--chat", "--max-tokens", "8", "--prompt", question])
            .arg("--model")
            .arg(model_path());
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let row: Value = serde_json::from_str(run(true).trim()).expect("json");
    assert_eq!(ids(&row["prompt_token_ids"]), ids(&p["prompt_ids"]), "chat template + tokenizer");
    let streamed = run(false);
    assert!(streamed.starts_with("```python\ndef is_prime"), "streamed answer: {streamed:?}");
}

/// With `--activations f32` (and an f32 KV cache) the 4-bit model answers as its
/// weights dequantized to f32 do in transformers, and so does it with
/// `--activations int16` on the default f16 cache; 8-bit activations cost this
/// small model that answer (see the README's accuracy figures).
#[test]
fn f32_int16_and_bf16_activations_answer_as_the_float_model_does() {
    let france = |args: &[&str]| {
        let out = inflight()
            .args(["generate", "--chat", "--max-tokens", "10"])
            .args(args)
            .args(["--prompt", "What is the capital of France?"])
            .arg("--model")
            .arg(model_path())
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in [&["--activations", "f32", "--kv-cache-dtype", "f32"][..], &["--activations", "int16"]] {
        let answer = france(args);
        assert!(answer.starts_with("The capital of France is Paris"), "{args:?}: {answer:?}");
    }
    if inflight::backend::cpu::Activations::Bf16.runs_here() {
        let answer = france(&["--activations", "bf16"]);
        assert!(answer.starts_with("The capital of France is Paris"), "bf16: {answer:?}");
    }
    let out = inflight().args(["generate", "-p", "hi", "--activations", "f16"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown precision is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("int8, int16, f32"));
}

/// Where the tiles are missing (or turned off, as here) bf16 activations are refused
/// at start-up with the alternatives named, not run some other way.
#[test]
fn bf16_activations_without_amx_tiles_are_a_clear_start_up_error() {
    let mut generate = inflight();
    generate.env("INFLIGHT_AMX", "0").args(["generate", "--activations", "bf16", "--prompt", "hi"]);
    let err = failure_on_the_model(generate);
    assert!(err.contains("bf16 activations need AMX-BF16") && err.contains("--activations int8"), "{err}");
}

/// bf16 attention tiles asked for where they cannot run as asked (here: beside
/// `--chunk-invariant-attention`, whose decode rows must equal f32 tiles' bits, or on a
/// CPU without AVX-512 BF16) are a start-up error that says what they need.
#[test]
fn bf16_attention_tiles_that_cannot_run_are_a_clear_start_up_error() {
    let mut generate = inflight();
    generate.args(["generate", "--attention-precision", "bf16", "--chunk-invariant-attention", "-p", "hi"]);
    let err = failure_on_the_model(generate);
    assert!(err.contains("--attention-precision bf16 needs"), "{err}");
    let out =
        inflight().args(["generate", "-p", "hi", "--attention-precision", "f16"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown precision is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("auto, f32, bf16"));
}

#[test]
fn generate_rejects_a_prompt_longer_than_the_context() {
    let long = "word ".repeat(200);
    let mut generate = inflight();
    generate.args(["generate", "--max-context", "64", "--prompt", &long]);
    let err = failure_on_the_model(generate);
    assert!(err.contains("context"), "error names the context limit: {err}");
}

/// Runs `cmd` on the default model, which must fail; its standard error.
fn failure_on_the_model(mut cmd: Command) -> String {
    let out = cmd.arg("--model").arg(model_path()).output().expect("run");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let out = inflight()
        .args(["generate", "--prompt", "x", "--model", "/nonexistent/model.gguf"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "error names the file: {err}");
}

#[test]
fn truncated_model_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(model_path()).expect("model");
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).expect("write");
    let out = inflight().args(["generate", "--prompt", "x", "--model"]).arg(&bad).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert!(err.contains("truncated.gguf"), "error names the file: {err}");
}

/// `models export-tokenizer` writes a Hugging Face folder that loads back as the
/// GGUF's own tokenizer: the same ids for plain text, whitespace, non-ASCII and
/// special tokens written in the text, the same BOS/EOS and stop ids, and the same
/// chat template output.
#[test]
fn exported_tokenizer_loads_back_as_the_gguf_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("tokenizer");
    let out = inflight()
        .args(["models", "export-tokenizer"])
        .arg(model_path())
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out_dir.join("tokenizer.json").is_file() && out_dir.join("tokenizer_config.json").is_file());

    let exported = Tokenizer::from_hf_dir(&out_dir).expect("exported folder loads");
    let mut file = std::fs::File::open(model_path()).expect("open model");
    let content = gguf_file::Content::read(&mut file).expect("read gguf");
    let gguf = Tokenizer::from_gguf(&content).expect("gguf tokenizer");

    for text in [
        "The capital of France is",
        "  two leading spaces,\ttabs\n\nand newlines  ",
        "naïve café, 東京, emoji 🙂",
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
    ] {
        for add_bos in [false, true] {
            assert_eq!(
                exported.encode(text, add_bos).expect("encode"),
                gguf.encode(text, add_bos).expect("encode"),
                "{text:?}, add_bos {add_bos}"
            );
        }
    }
    let im_start = gguf.token_to_id("<|im_start|>").expect("<|im_start|> in the vocabulary");
    assert!(gguf.encode("<|im_start|>user", false).expect("encode").starts_with(&[im_start]));
    assert_eq!(exported.bos_token_id(), gguf.bos_token_id());
    assert_eq!(exported.eos_token_id(), gguf.eos_token_id());
    assert!(gguf.eos_token_id().is_some());
    assert_eq!(exported.add_bos_token(), gguf.add_bos_token());
    assert_eq!(exported.stop_token_ids(), gguf.stop_token_ids());
    assert_eq!(exported.vocab_size(), gguf.vocab_size());

    let message = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
    let conversation = [
        message("system", "You are terse."),
        message("user", "What is 2+2?"),
        message("assistant", "4"),
        message("user", "And 3+3?"),
    ];
    for add_generation_prompt in [false, true] {
        let want = gguf.apply_chat_template(&conversation, add_generation_prompt).expect("gguf template");
        assert!(want.contains("<|im_start|>system\nYou are terse."), "{want}");
        assert_eq!(
            exported.apply_chat_template(&conversation, add_generation_prompt).expect("template"),
            want
        );
    }
}

#[test]
fn models_list_shows_the_default_model() {
    let out = inflight().args(["models", "list"]).output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("smollm2-135m-instruct-q4_1"));
}

/// `--backend cuda` in a build without the `cuda` feature says how to build one
/// with it. A build with the feature is checked on a GPU (`benches/gpu/`), so there
/// this test has nothing to refuse.
#[test]
fn cuda_backend_without_the_feature_says_how_to_build_it() {
    if candle_core::utils::cuda_is_available() {
        return;
    }
    let out = inflight()
        .args(["generate", "-p", "hi", "--backend", "cuda", "--model"])
        .arg(model_path())
        .output()
        .expect("run");
    assert!(!out.status.success(), "--backend cuda succeeded without CUDA support");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without CUDA support") && err.contains("--features cuda"), "{err}");
    assert!(!err.contains("panicked"), "no panic: {err}");
}

/// The Neuron backend (not built yet beyond loading libnrt), a missing libnrt,
/// and a model source the CPU backend cannot run are clear errors that say what to
/// do, never a panic.
#[test]
fn neuron_backend_and_compiled_artifacts_on_the_cpu_are_clear_errors() {
    // `generate` with these extra flags on the default model: it must fail; its stderr.
    let refused = |flags: &[&str]| {
        let out = inflight()
            .args(["generate", "-p", "hi"])
            .args(flags)
            .arg("--model")
            .arg(model_path())
            .env_remove("NEURON_RT_LIB")
            .env_remove("INFLIGHT_NEURON_LIB")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{flags:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Without libnrt, every path tried is named.
    let err = refused(&["--backend", "neuron"]);
    assert!(err.contains("libnrt.so.1 (") && err.contains("/opt/aws/neuron/lib/libnrt.so.1 ("), "{err}");
    let err = refused(&["--backend", "neuron", "--neuron-lib", "/nonexistent/libnrt.so"]);
    assert!(err.contains("/nonexistent/libnrt.so ("), "{err}");
    // A folder of compiled (Neuron) artifacts is recognised by its manifest.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("manifest.json"), b"{}").expect("write");
    let out = inflight().args(["generate", "-p", "hi", "--model"]).arg(dir.path()).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compiled artifacts") && err.contains("GGUF"), "{err}");
}
