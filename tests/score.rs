//! `inflight score` run as the GPU checks run it: greedy continuations of short
//! prompts, the logits files' shape and layout, the same logits again when the
//! continuations are given, and refused input.

use inflight::engine::sampling::argmax;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::quantized::gguf_file;
use serde_json::{json, Value};

use inflight::tokenizer::Tokenizer;

use crate::support::{ids, model_path};

/// Logits of the same tokens through the same steps; only run-to-run noise
/// (none is expected on the CPU backend) may differ.
const RESCORE_TOLERANCE: f32 = 1e-4;

const STEPS: usize = 4;

fn inflight() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inflight"));
    c.env_remove("INFLIGHT_MODEL").env("INFLIGHT_LOG", "warn");
    c
}

/// Runs `score` on `input` (a JSON file) with extra flags, writing `PREFIX.*`.
fn score(input: &Path, prefix: &Path, flags: &[&str]) -> Output {
    inflight()
        .arg("score")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(prefix)
        .args(flags)
        .arg("--model")
        .arg(model_path())
        .output()
        .expect("run inflight score")
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, v.to_string()).expect("write input");
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("logits file");
    assert_eq!(bytes.len() % 4, 0, "{} holds whole f32s", path.display());
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn prompts() -> Vec<Vec<u32>> {
    let mut file = std::fs::File::open(model_path()).expect("open model");
    let content = gguf_file::Content::read(&mut file).expect("read gguf");
    let tok = Tokenizer::from_gguf(&content).expect("tokenizer");
    ["The capital of France is", "Once upon a time, there was a little"]
        .iter()
        .map(|t| tok.encode(t, tok.add_bos_token()).expect("encode"))
        .collect()
}

/// `--greedy 4` on two prompts: the json names shape [2, 4, vocab] and holds the
/// prompts and 4-token continuations; the .f32 file holds 2 * 4 * vocab floats,
/// sequence-major, and row i's argmax is continuation token i (row i follows the
/// prompt and the first i continuation tokens). Scoring that json again, with the
/// continuations given, gives the same logits.
#[test]
fn score_writes_greedy_continuations_and_their_logits_and_rescoring_reproduces_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.json");
    let prompts = prompts();
    write_json(
        &input,
        &json!({"sequences": prompts.iter().map(|p| json!({"prompt": p})).collect::<Vec<_>>()}),
    );
    let first = dir.path().join("first");
    let out = score(&input, &first, &["--greedy", &STEPS.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(first.with_extension("json")).expect("json"))
            .expect("parses");
    let shape: Vec<usize> =
        meta["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
    assert_eq!(&shape[..2], &[2, STEPS]);
    let vocab = shape[2];
    assert!(vocab > 1000, "vocab {vocab}");
    assert!(meta["device"].as_str().is_some_and(|d| !d.is_empty()), "{meta}");
    let seqs = meta["sequences"].as_array().expect("sequences");
    assert_eq!(seqs.len(), 2);

    let logits = read_f32(&first.with_extension("f32"));
    assert_eq!(logits.len(), 2 * STEPS * vocab);
    assert!(logits.iter().all(|v| v.is_finite()));
    for (s, seq) in seqs.iter().enumerate() {
        assert_eq!(ids(&seq["prompt"]), prompts[s], "sequence {s}'s prompt");
        let continuation = ids(&seq["continuation"]);
        assert_eq!(continuation.len(), STEPS);
        for (step, &token) in continuation.iter().enumerate() {
            let row = &logits[(s * STEPS + step) * vocab..][..vocab];
            assert_eq!(argmax(row), token, "sequence {s}, step {step}");
        }
    }

    // Rescoring the written sequences: continuations given, no --greedy.
    let again = dir.path().join("again");
    let out = score(&first.with_extension("json"), &again, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta_again: Value =
        serde_json::from_str(&std::fs::read_to_string(again.with_extension("json")).expect("json"))
            .expect("parses");
    assert_eq!(meta_again["sequences"], meta["sequences"]);
    assert_eq!(meta_again["shape"], meta["shape"]);
    let logits_again = read_f32(&again.with_extension("f32"));
    assert_eq!(logits_again.len(), logits.len());
    let worst = logits.iter().zip(&logits_again).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= RESCORE_TOLERANCE, "rescored logits differ by up to {worst}");
}

/// Input with nothing to score, or continuations of different lengths, is refused
/// with a message saying what is wrong, before the model is loaded, and writes
/// nothing.
#[test]
fn score_refuses_input_it_cannot_score() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (json!({"sequences": []}), vec!["--greedy", "4"], "nothing to score"),
        (json!({"sequences": [{"prompt": [1, 2, 3]}]}), vec![], "nothing to score"),
        (
            json!({"sequences": [{"prompt": [1, 2], "continuation": [3, 4]}, {"prompt": [5], "continuation": [6]}]}),
            vec![],
            "same length",
        ),
        (
            json!({"sequences": [{"prompt": [1, 2]}, {"prompt": [5], "continuation": [6, 7]}]}),
            vec!["--greedy", "2"],
            "same length",
        ),
        (json!({"sequences": [{"prompt": [], "continuation": [3]}]}), vec![], "needs a prompt"),
    ];
    for (i, (input, flags, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("input{i}.json"));
        write_json(&path, input);
        let prefix = dir.path().join(format!("bad{i}"));
        let out = score(&path, &prefix, flags);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input} was scored");
        assert!(err.contains(message), "{input}: {err}");
        assert!(!err.contains("panicked"), "{input}: {err}");
        assert!(!prefix.with_extension("f32").exists() && !prefix.with_extension("json").exists());
    }
    let path = dir.path().join("not-json.json");
    std::fs::write(&path, "{\"sequences\": [").expect("write");
    let out = score(&path, &dir.path().join("x"), &["--greedy", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parsing") && err.contains("not-json.json"), "{err}");
}
