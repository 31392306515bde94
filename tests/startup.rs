//! Start-up as a client and an operator see it: the listener answers `/health`
//! with 503 (an OpenAI error body) while the model loads, then 200; and
//! `generate` sizes its KV pool to its prompts. How long either takes is measured
//! by `benches/startup/run.sh`, not here.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::model_path;

/// Polls `/health` from the moment the process starts. The port is bound before
/// the model loads, so the first answers are 503 until the engine runs; a server
/// that bound only once ready would never show one.
#[test]
fn health_says_503_while_the_model_loads_then_200() {
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inflight"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--exit-on-stdin-eof"])
        .arg("--model")
        .arg(model_path())
        .args(["--log", "warn"])
        .env_remove("INFLIGHT_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn inflight serve");
    let url = format!("http://127.0.0.1:{port}/health");
    let client =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let mut loading_body = None;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send() {
            let status = r.status().as_u16();
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == 503 && loading_body.is_none() {
                loading_body = Some(r.text().expect("body"));
            }
            if status == 200 {
                break;
            }
        }
        assert!(child.try_wait().expect("wait").is_none(), "server exited during start-up");
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, vec![503, 200], "loading, then ready");
    let body: Value = serde_json::from_str(&loading_body.expect("a 503 body")).expect("JSON error body");
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("loading")), "{body}");
}

/// The KV pool's size, from the `model loaded` log line.
fn kv_blocks(args: &[&str]) -> usize {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inflight"));
    c.env_remove("INFLIGHT_MODEL").args(["generate", "--log", "info", "--max-tokens", "4"]).args(args);
    let out = c.arg("--model").arg(model_path()).stderr(Stdio::piped()).output().expect("run generate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = BufReader::new(&out.stderr[..])
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("model loaded"))
        .expect("a `model loaded` line");
    // The log may be coloured: drop ANSI escapes (ESC … m) before reading fields.
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let n = plain.split("kv_blocks=").nth(1).expect("kv_blocks field");
    n.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).expect("a count")
}

#[test]
fn generate_sizes_its_kv_pool_to_its_prompts() {
    // One short prompt: the floor of one 512-token step (32 blocks of 16), not
    // the 2 GiB a server without `--kv-cache-gib` may take.
    assert_eq!(kv_blocks(&["--prompt", "Hello"]), 32);
    // Forty prompts of about 100 tokens each with 4 more: every one fits at once.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prompts.txt");
    let prompt = "one two three four five six seven eight nine ten ".repeat(10);
    std::fs::write(&file, format!("{prompt}\n").repeat(40)).expect("write prompts");
    let n = kv_blocks(&["--prompts-file", file.to_str().expect("utf-8 path")]);
    assert!((40 * 6..=40 * 8).contains(&n), "{n} blocks for 40 prompts of ~100 tokens");
    // `--kv-cache-gib` is taken as given, and fp8 values take half f16's bytes.
    let f16 = kv_blocks(&["--prompt", "Hello", "--kv-cache-gib", "0.25"]);
    assert!(f16 > 500);
    let fp8 = kv_blocks(&["--prompt", "Hello", "--kv-cache-gib", "0.25", "--kv-cache-dtype", "fp8"]);
    assert_eq!(fp8, 2 * f16, "fp8 blocks in the memory of {f16} f16 ones");
}
