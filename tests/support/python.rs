//! Python tools for the tests, each set in its own venv under `target/`: the
//! official `openai` client (pinned in `tests/python/requirements.txt`), for tests
//! that drive the server the way users' code does, and the offline checkers of
//! `deploy/` (`deploy/requirements-check.txt`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The python of `target/<venv>`, a virtual environment with the pinned
/// `requirements` (a path from the repository root) installed; rebuilt when the
/// requirements file changes. One venv per requirements file keeps the heavy tool
/// sets (deploy linters, the Neuron pipeline's) out of the client tests' venv.
pub fn python_with(venv: &str, requirements: &str) -> PathBuf {
    static VENVS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut ready = VENVS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, py)) = ready.iter().find(|(name, _)| name == venv) {
        return py.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join(venv);
    let py = dir.join("bin/python");
    let reqs = root.join(requirements);
    let stamp = dir.join(".requirements");
    let wanted = std::fs::read_to_string(&reqs).unwrap_or_else(|e| panic!("{}: {e}", reqs.display()));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir));
        run(Command::new(&py)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&reqs));
        std::fs::write(&stamp, &wanted).expect("write stamp");
    }
    ready.push((venv.to_string(), py.clone()));
    py
}

/// The venv with the official `openai` client.
pub fn python() -> PathBuf {
    python_with("test-venv", "tests/python/requirements.txt")
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
