//! Python venvs for the tests, each installed once under `target/` from a pinned
//! requirements file: the official `openai` client (`target/test-venv`, from
//! `tests/python/requirements.txt`), for tests that drive the server the way
//! users' code does, and others by `python_with` (the deploy checkers, the Neuron
//! compile pipeline's light dependencies).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The venv's python, with `tests/python/requirements.txt` installed.
pub fn python() -> PathBuf {
    python_with("tests/python/requirements.txt", "test-venv")
}

/// The python of `target/<venv_name>`, a venv with `requirements` (relative to the
/// checkout) installed; reinstalled when the requirements file changes.
pub fn python_with(requirements: &str, venv_name: &str) -> PathBuf {
    static VENVS: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    // Held while installing, so two tests never build the same venv at once.
    let mut venvs = VENVS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(py) = venvs.get(venv_name) {
        return py.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(venv_name);
    let py = venv.join("bin/python");
    let reqs = root.join(requirements);
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&reqs).unwrap_or_else(|e| panic!("{}: {e}", reqs.display()));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&py)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&reqs));
        std::fs::write(&stamp, &wanted).expect("write stamp");
    }
    venvs.insert(venv_name.to_string(), py.clone());
    py
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
