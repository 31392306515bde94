//! `inflight bench` run as a user runs it, against a real `inflight serve` on
//! loopback: a short sweep's request and token counts, percentile order, goodput
//! and cost; its results file read back by `bench report`; and servers that fail
//! (a model they do not serve, nothing listening) reported, not crashed on.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::model_path;
use crate::support::server::shared;

fn inflight() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inflight"));
    c.env("INFLIGHT_LOG", "warn");
    c
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("output dir");
    dir
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn read_json(path: &PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("results file")).expect("results JSON")
}

/// A short sweep against the shared server: c=1 then c=2, three requests each,
/// 8 prompt tokens (exact, by the model's tokenizer), 4 output tokens, an SLO no
/// request can meet, and a price.
fn sweep() -> &'static (Output, PathBuf) {
    static RUN: OnceLock<(Output, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let path = out_dir().join("sweep.json");
        let out = inflight()
            .args(["bench", "--url", &shared().base, "--model", "test-model", "--concurrency", "1,2"])
            .args(["--num-requests", "3", "--warmup", "1", "--input-tokens", "8", "--output-tokens", "4"])
            .args(["--slo-ttft-ms", "0.001", "--price-per-hour", "0.179", "--label", "inflight-test"])
            .arg("--tokenizer")
            .arg(model_path())
            .arg("--output")
            .arg(&path)
            .output()
            .expect("run inflight bench");
        (out, path)
    })
}

fn p(dist: &Value, q: f64) -> f64 {
    dist["percentiles"]
        .as_array()
        .expect("percentiles")
        .iter()
        .find(|x| x["p"].as_f64() == Some(q))
        .and_then(|x| x["value"].as_f64())
        .unwrap_or_else(|| panic!("p{q} in {dist}"))
}

#[test]
fn a_short_sweep_counts_requests_and_tokens_and_orders_percentiles() {
    let (out, path) = sweep();
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for s in ["── c=1 ──", "── c=2 ──", "TTFT ms", "TPOT ms", "ITL ms", "E2E ms", "no level met the SLOs"]
    {
        assert!(stdout.contains(s), "stdout shows {s}:\n{stdout}");
    }
    let r = read_json(path);
    let levels = r["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2);
    for (level, c) in levels.iter().zip([1, 2]) {
        let s = &level["summary"];
        assert_eq!(s["load"], format!("c={c}"));
        assert_eq!(
            (s["requests"].as_u64(), s["completed"].as_u64(), s["failed"].as_u64()),
            (Some(3), Some(3), Some(0))
        );
        assert_eq!((s["input_tokens"].as_u64(), s["output_tokens"].as_u64()), (Some(24), Some(12)));
        assert_eq!(s["usage_mismatch"], 0, "usage agrees with the chunks received");
        assert_eq!((s["usage_missing"].as_u64(), s["short_outputs"].as_u64()), (Some(0), Some(0)));
        let records = level["records"].as_array().expect("records");
        assert_eq!(records.len(), 3);
        for rec in records {
            assert!(rec["error"].is_null(), "{rec}");
            assert_eq!(
                (rec["prompt_tokens"].as_u64(), rec["expected_input_tokens"].as_u64()),
                (Some(8), Some(8))
            );
            assert_eq!((rec["completion_tokens"].as_u64(), rec["chunks"].as_u64()), (Some(4), Some(4)));
            assert_eq!(rec["itl_s"].as_array().map(Vec::len), Some(3), "one gap between each pair of chunks");
            let (ttft, e2e) = (rec["ttft_s"].as_f64().expect("ttft"), rec["e2e_s"].as_f64().expect("e2e"));
            assert!(0.0 < ttft && ttft <= e2e, "{ttft} {e2e}");
        }
        for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            let d = &s[metric];
            let (p50, p90, p99) = (p(d, 50.0), p(d, 90.0), p(d, 99.0));
            let (min, max) = (d["min"].as_f64().expect("min"), d["max"].as_f64().expect("max"));
            assert!(min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{metric}: {d}");
        }
        assert_eq!(s["itl_ms"]["count"], 9);
        // Throughput and cost follow from the level's own numbers.
        let duration = s["duration_s"].as_f64().expect("duration");
        let out_tps = s["output_throughput"].as_f64().expect("output throughput");
        assert!((out_tps - 12.0 / duration).abs() < 1e-9 * out_tps);
        let cost = s["cost"]["usd_per_1m_output_tokens"].as_f64().expect("cost");
        assert!((cost - 0.179 / (out_tps * 3600.0) * 1e6).abs() < 1e-9 * cost, "{cost}");
        // An SLO of 1 µs to the first token: nothing meets it.
        assert_eq!(s["goodput"].as_f64(), Some(0.0));
        assert_eq!(s["meets_slo"], false);
    }
    assert!(r["best_level"].is_null());
    assert_eq!(r["percentiles"], serde_json::json!([50.0, 90.0, 99.0]));
}

#[test]
fn results_round_trip_into_a_side_by_side_report_and_plot() {
    let (out, path) = sweep();
    assert!(out.status.success(), "{}", text(out).1);
    let dir = out_dir();
    let (md, svg) = (dir.join("report.md"), dir.join("report.svg"));
    let out = inflight()
        .args(["bench", "report"])
        .args([path, path])
        .arg("--markdown")
        .arg(&md)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run bench report");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "report failed: {stderr}");
    assert_eq!(std::fs::read_to_string(&md).expect("markdown file"), stdout);
    for s in [
        "| load | inflight-test | inflight-test #2 |",
        "## TTFT p99 (ms)",
        "| c=2 |",
        "$ per 1M output tokens",
    ] {
        assert!(stdout.contains(s), "report shows {s}:\n{stdout}");
    }
    let svg = std::fs::read_to_string(&svg).expect("plot");
    assert!(svg.starts_with("<svg") && svg.contains("inflight-test") && svg.contains("c=1"));
}

/// Runs a bench that cannot succeed and checks it is reported: a non-zero exit with
/// a clear message, the error kind counted, the results file still written, the
/// later level skipped, and no panic.
fn assert_reported_failure(url: &str, model: &str, kind: &str) {
    let path = out_dir().join(format!("{kind}.json"));
    let out = inflight()
        .args(["bench", "--url", url, "--model", model, "--concurrency", "1,4", "--num-requests", "2"])
        .args(["--warmup", "0", "--input-tokens", "4", "--output-tokens", "2", "--timeout", "30"])
        .arg("--output")
        .arg(&path)
        .output()
        .expect("run inflight bench");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "a bench where every request fails exits non-zero");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("no request succeeded"), "{stderr}");
    assert!(stdout.contains(&format!("{kind} ×2")), "stdout counts the errors by kind:\n{stdout}");
    let r = read_json(&path);
    let s = &r["levels"][0]["summary"];
    assert_eq!((s["requests"].as_u64(), s["failed"].as_u64()), (Some(2), Some(2)));
    assert_eq!(s["errors"][kind], 2);
    assert_eq!(r["skipped_levels"], serde_json::json!(["c=4"]));
}

#[test]
fn a_model_the_server_does_not_serve_is_reported_as_http_404() {
    assert_reported_failure(&shared().base, "no-such-model", "http_404");
}

#[test]
fn a_closed_port_is_reported_as_connect_errors() {
    let port = TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    assert_reported_failure(&format!("http://127.0.0.1:{port}"), "m", "connect");
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let out = inflight()
        .args(["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--concurrency", "0"])
        .output();
    let (_, stderr) = text(&out.expect("run"));
    assert!(stderr.contains("at least 1"), "{stderr}");
    let out = inflight().args(["bench", "report", "/nonexistent/results.json"]).output().expect("run");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("/nonexistent/results.json"));
    let out = inflight()
        .args(["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--instance-type", "p9.huge"])
        .output()
        .expect("run");
    assert!(text(&out).1.contains("inf2.xlarge"), "unknown instance types list the known ones");
    for (extra, says) in [("[1]", "must be a JSON object"), ("{priority", "is not JSON")] {
        let out = inflight()
            .args(["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--extra-body", extra])
            .output()
            .expect("run");
        assert!(!out.status.success());
        assert!(text(&out).1.contains(says), "--extra-body {extra}: {}", text(&out).1);
    }
}
