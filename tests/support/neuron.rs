//! The libnrt emulator and its artifact folder for the Neuron tests. Both come
//! from the workspace's `neuron/emulator` (an emulator, not the Neuron runtime):
//! `cargo test` builds them; a narrower run (`cargo test --test tests`) gets them
//! built here on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::{ids, model_path};

/// `target/<profile>/`, where the test binary's own profile puts the emulator.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").to_path_buf()
}

fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Always asked: cargo builds nothing when the emulator is up to date, and a
        // narrower test run must not use a stale one.
        let dir = profile_dir();
        let profile = if dir.ends_with("release") { "release" } else { "dev" };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // Cargo gives the test process its package's variables (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, …). Build scripts that watch them (ring's does) would
        // see them changed and rerun, rebuilding half the dependency tree twice per
        // test run; the nested build gets the environment of a plain `cargo build`.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_by_cargo_test =
                ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_CFG_"]
                    .iter()
                    .any(|p| key.starts_with(p))
                    || ["CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&key.as_ref());
            if set_by_cargo_test {
                build.env_remove(key.as_ref());
            }
        }
        let status = build
            .args(["build", "-p", "inflight-nrt-emulator", "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the emulator");
        assert!(status.success(), "building the libnrt emulator failed");
    });
}

/// The emulator library, for `--neuron-lib`.
pub fn emulator_lib() -> PathBuf {
    ensure_built();
    profile_dir().join("libnrt_emulator.so")
}

/// Buckets the reference prompts (5 to 363 tokens, 32 generated) land in: three
/// prefill lengths, three decode batch sizes, 8 slots.
pub const PREFILL_BUCKETS: &str = "32,128,512";
pub const LARGEST_BUCKET: usize = 512;
/// The buckets every test artifact folder is compiled with (both writers).
pub const BUCKET_ARGS: [&str; 8] =
    ["--prefill", PREFILL_BUCKETS, "--decode", "1,4,8", "--slots", "8", "--max-context", "544"];

/// The default model compiled for the emulator (once per test process).
pub fn emulator_artifacts() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ensure_built();
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("neuron-emulator-artifacts");
        let status = Command::new(profile_dir().join("nrt-emulator-compile"))
            .arg(model_path())
            .arg(&out)
            .args(BUCKET_ARGS)
            .status()
            .expect("run nrt-emulator-compile");
        assert!(status.success(), "nrt-emulator-compile failed");
        out
    })
    .clone()
}

/// The emulator's report at `nrt_close` in a process's log, as JSON.
pub fn close_report(log: &str) -> serde_json::Value {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.split_once("libnrt emulator: closed: ").map(|(_, json)| json.to_string()))
        .unwrap_or_else(|| panic!("no emulator close report in the log:\n{log}"));
    serde_json::from_str(&line).expect("report is JSON")
}

/// Asserts the emulator saw no misuse and nothing left alive at close.
pub fn assert_clean_close(log: &str) {
    let report = close_report(log);
    assert_eq!(report["misuse"], serde_json::json!([]), "emulator misuse: {report}");
    assert_nothing_leaked(&report);
}

/// Asserts an emulator report shows no tensor, model, set or tensor-info array
/// left alive at close.
pub fn assert_nothing_leaked(report: &Value) {
    let leaked = &report["leaked_at_close"];
    assert_eq!(leaked["tensors"], serde_json::json!([]), "{report}");
    assert_eq!(leaked["models"], serde_json::json!([]), "{report}");
    assert_eq!(
        (leaked["tensor_sets"].as_u64(), leaked["tensor_infos"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
}

/// Flags that put a server or command on the Neuron backend over `lib`.
pub fn neuron_flags(lib: &Path) -> Vec<String> {
    vec!["--backend".into(), "neuron".into(), "--neuron-lib".into(), lib.display().to_string()]
}

/// A server on the Neuron backend over the emulator and its artifact folder, with
/// extra environment variables (fault injection) for it.
pub fn emulator_server(envs: &[(&str, &str)]) -> super::server::Server {
    let flags = neuron_flags(&emulator_lib());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    super::server::Server::start_with_model_env(&emulator_artifacts(), &flags, envs)
}

/// Greedy continuations (`steps` tokens) of reference `prompts`, all in flight
/// together, by `inflight score` on the Neuron backend over the emulator with the
/// artifact folder `art`; asserts the emulator closed clean.
pub fn greedy_on_emulator(art: &Path, prompts: &[&Value], steps: usize) -> Vec<Vec<u32>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sequences: Vec<Value> = prompts.iter().map(|p| json!({"prompt": ids(&p["prompt_ids"])})).collect();
    let input = dir.path().join("prompts.json");
    std::fs::write(&input, json!({"sequences": sequences}).to_string()).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_inflight"))
        .arg("score")
        .args(neuron_flags(&emulator_lib()))
        .arg("--model")
        .arg(art)
        .arg("--input")
        .arg(&input)
        .args(["--greedy", &steps.to_string(), "--log", "warn", "--output"])
        .arg(dir.path().join("scored"))
        .output()
        .expect("run inflight score");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_clean_close(&log);
    let scored: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("scored.json")).expect("read"))
            .expect("json");
    scored["sequences"].as_array().expect("seqs").iter().map(|s| ids(&s["continuation"])).collect()
}

/// Both sides compute in f32 from the same dequantized weights (the emulator's
/// graphs and transformers' reference), so only a true near-tie may flip a token:
/// the smallest top-1/top-2 margin among the reference prompts is 2.5e-3, so every
/// step of every prompt must match.
const F32_NEAR_TIE_MARGIN: f64 = 1e-3;

/// Each continuation equals transformers' f32 greedy tokens up to the reference's
/// first near-tie (the emulator runs the model in f32 on weights dequantized from
/// the GGUF, which is what transformers did).
pub fn assert_matches_f32_reference(prompts: &[&Value], continuations: &[Vec<u32>]) {
    assert_eq!(prompts.len(), continuations.len());
    for (p, got) in prompts.iter().zip(continuations) {
        let reference = &p["transformers_f32"];
        let margins = reference["top1_top2_margin"].as_array().expect("margins");
        let exact = margins
            .iter()
            .position(|m| m.as_f64().expect("margin") < F32_NEAR_TIE_MARGIN)
            .unwrap_or(margins.len())
            .min(got.len());
        let want = ids(&reference["greedy_ids"]);
        assert_eq!(got[..exact], want[..exact], "prompt {}", p["id"]);
    }
}
