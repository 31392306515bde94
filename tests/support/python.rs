//! The official `openai` Python client, installed once into `target/test-venv`
//! (pinned in `tests/python/requirements.txt`), for tests that drive the server
//! the way users' code does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn venv_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv")
}

/// The venv's python, with the requirements installed.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = venv_dir();
        let py = venv.join("bin/python");
        let reqs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
        let stamp = venv.join(".requirements");
        let wanted = std::fs::read_to_string(&reqs).expect("requirements.txt");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            run(Command::new(&py)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
                .arg(&reqs));
            std::fs::write(&stamp, &wanted).expect("write stamp");
        }
        py
    })
    .clone()
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Runs `tests/python/<script>` against a server; panics with its output unless it
/// exits 0.
pub fn run_script(script: &str, base_url: &str, extra_env: &[(&str, &str)]) -> String {
    let path: &Path = &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new(python())
        .arg(path)
        .env("OPENAI_BASE_URL", format!("{base_url}/v1"))
        .env("OPENAI_API_KEY", "test-key")
        .envs(extra_env.iter().copied())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}
