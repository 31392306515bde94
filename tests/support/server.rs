//! A real `inflight serve` process on a free loopback port, tied to the test
//! process: its standard input is a pipe we hold, and it exits when that closes.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::model_path;

pub struct Server {
    pub base: String,
    child: Child,
    _stdin: Option<ChildStdin>,
    /// The server's log lines so far (also forwarded to the test's own).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with the default model and extra flags; waits until
    /// `/health` says ready.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// As `start`, with extra environment variables for the server process. A
    /// `SAGEMAKER_BIND_TO_PORT` among them decides the port.
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        Self::spawn(&model_path(), extra, envs)
    }

    /// As `start`, serving the GGUF at `model` instead of the default model.
    pub fn start_with_model(model: &std::path::Path, extra: &[&str]) -> Server {
        Self::spawn(model, extra, &[])
    }

    /// As `start_with_model`, with extra environment variables.
    pub fn start_with_model_env(model: &std::path::Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        Self::spawn(model, extra, envs)
    }

    fn spawn(model: &std::path::Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        // With SageMaker's variable set, `--port` names a port nobody listens on:
        // the server must take the variable's.
        let (port, flag_port) = match envs.iter().find(|(k, _)| *k == "SAGEMAKER_BIND_TO_PORT") {
            Some((_, p)) => (p.parse().expect("port"), 9),
            None => {
                let p =
                    TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
                (p, p)
            }
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_inflight"))
            .args(["serve", "--host", "127.0.0.1", "--port", &flag_port.to_string(), "--exit-on-stdin-eof"])
            .args(["--model", &model.to_string_lossy(), "--served-model-name", "test-model"])
            .args(["--kv-cache-gib", "0.5"])
            // `--log` may be given once: a test's own level replaces the quiet default.
            .args(if extra.contains(&"--log") { &[][..] } else { &["--log", "warn"][..] })
            .args(extra)
            .env_remove("INFLIGHT_API_KEY")
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn inflight serve");
        let stdin = child.stdin.take();
        // Forward the server's log to ours so failures show it, and keep it.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[server:{port}] {line}");
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = reqwest::blocking::get(format!("{base}/health")) {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited before becoming ready: {status}");
            }
            assert!(Instant::now() < deadline, "server not ready within 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Server { base, child, _stdin: stdin, log }
    }

    /// The server's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server as `stop` does; returns its exit status and its whole log.
    pub fn stop_and_log(self) -> (std::process::ExitStatus, Vec<String>) {
        let log = std::sync::Arc::clone(&self.log);
        let status = self.stop();
        // The forwarding thread drains the pipe after the exit; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        let lines = log.lock().expect("log lock").clone();
        (status, lines)
    }

    /// Closes stdin (asking for a graceful stop) and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self._stdin.take();
        self.child.wait().expect("wait for server")
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server with default settings shared by every test that needs nothing special.
pub fn shared() -> &'static Server {
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| Server::start(&[]))
}
