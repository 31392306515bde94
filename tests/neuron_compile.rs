//! `neuron/compile.py` (Python; the light path needs only `neuron/requirements.txt`)
//! on the default GGUF. `--target emulator`: its folder is what the Rust
//! `nrt-emulator-compile` writes for the same buckets (manifest, stand-in NEFFs,
//! config, tokenizer and weights, compared whole), the Rust manifest reader
//! accepts it, and the Neuron backend serves it on the libnrt emulator with the
//! reference greedy tokens. `--target inf2 --manifest-only` (the same manifest
//! writer; compiling needs the Neuron SDK, never run here): the reader accepts it
//! and it differs from the emulator's only where a NEFF must (tensor names by
//! position, bf16 weights and KV state).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use inflight::backend::neuron::manifest::Manifest;

use crate::support::neuron::{
    assert_matches_f32_reference, emulator_artifacts, greedy_on_emulator, BUCKET_ARGS,
};
use crate::support::python::python_with;
use crate::support::{model_path, reference};

/// Runs `neuron/compile.py MODEL OUT <buckets> <extra>` in its venv.
fn compile_py(out: &Path, extra: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = python_with("neuron/requirements.txt", "neuron-compile-venv");
    let done = Command::new(py)
        .arg(root.join("neuron/compile.py"))
        .arg(model_path())
        .arg(out)
        .args(BUCKET_ARGS)
        .args(["--inflight", env!("CARGO_BIN_EXE_inflight")])
        .args(extra)
        .output()
        .expect("run compile.py");
    assert!(done.status.success(), "compile.py failed:\n{}", String::from_utf8_lossy(&done.stderr));
}

/// The default model compiled by compile.py for the emulator (once per process).
fn compile_py_artifacts() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("neuron-compile-py-artifacts");
        compile_py(&out, &["--target", "emulator"]);
        out
    })
    .clone()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON")
}

#[test]
fn compile_py_writes_what_nrt_emulator_compile_writes() {
    let (py, rs) = (compile_py_artifacts(), emulator_artifacts());
    assert_eq!(file_names(&py), file_names(&rs));
    for name in file_names(&rs) {
        let (a, b) = (py.join(&name), rs.join(&name));
        if name.ends_with(".safetensors") {
            // Same names, layout and f32 values: dequantization and the Q/K row order agree.
            assert!(std::fs::read(&a).expect("read") == std::fs::read(&b).expect("read"), "{name} differs");
        } else {
            assert_eq!(json(&a), json(&b), "{name} differs");
        }
    }
    let m = Manifest::load(&py).expect("the Rust reader accepts compile.py's manifest");
    assert_eq!((m.prefill_lengths(), m.decode_batch_sizes()), (vec![32, 128, 512], vec![1, 4, 8]));
}

/// A short check that the folder serves (the full reference run is in
/// `neuron::greedy_tokens_on_the_emulator_match_the_f32_reference`, on an equal folder).
#[test]
fn compile_py_artifacts_serve_the_reference_tokens_on_the_emulator() {
    let all = reference()["prompts"].as_array().expect("prompts");
    let prompts: Vec<&Value> = vec![&all[0], &all[3]];
    let got = greedy_on_emulator(&compile_py_artifacts(), &prompts, 8);
    assert!(got.iter().all(|c| c.len() == 8), "{got:?}");
    assert_matches_f32_reference(&prompts, &got);
}

#[test]
fn the_inf2_manifest_passes_the_reader_and_differs_only_where_a_neff_must() {
    let dir = tempfile::tempdir().expect("tempdir");
    compile_py(dir.path(), &["--target", "inf2", "--manifest-only"]);
    let text = std::fs::read_to_string(dir.path().join("manifest.json")).expect("manifest");
    Manifest::parse(&text).expect("the Rust reader accepts the inf2 manifest");
    let (inf2, emu): (Value, Value) =
        (serde_json::from_str(&text).expect("JSON"), json(&emulator_artifacts().join("manifest.json")));
    for key in
        ["format", "version", "config", "tokenizer", "weights", "tensor_parallel", "max_context", "kv_slots"]
    {
        assert_eq!(inf2[key], emu[key], "{key}");
    }
    let graphs = |m: &Value| m["graphs"].as_array().expect("graphs").clone();
    assert_eq!(graphs(&inf2).len(), graphs(&emu).len());
    for (g, e) in graphs(&inf2).iter().zip(graphs(&emu).iter()) {
        for key in ["name", "kind", "neff", "batch", "seq_len"] {
            assert_eq!(g[key], e[key], "{key}");
        }
        for (side, prefix) in [("inputs", "input"), ("outputs", "output")] {
            let (ts, es) = (g[side].as_array().expect("tensors"), e[side].as_array().expect("tensors"));
            assert_eq!(ts.len(), es.len(), "{} {side}", g["name"]);
            for (i, (t, want)) in ts.iter().zip(es).enumerate() {
                assert_eq!(t["name"], format!("{prefix}{i}"));
                for key in ["shape", "role", "weight"] {
                    assert_eq!(t[key], want[key], "{} {side} {i} {key}", g["name"]);
                }
                let wide = matches!(want["role"].as_str(), Some("weight" | "kv_state"));
                assert_eq!(t["dtype"], if wide { "bfloat16".into() } else { want["dtype"].clone() });
                if let Some(aliased) = want["aliases"].as_str() {
                    let inputs = e["inputs"].as_array().expect("inputs");
                    let at = inputs.iter().position(|x| x["name"] == aliased).expect("aliased input");
                    assert_eq!(t["aliases"], format!("input{at}"));
                }
            }
        }
    }
}
