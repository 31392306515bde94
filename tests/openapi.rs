//! `/openapi.json` over real HTTP: a valid OpenAPI document (checked by
//! `openapi-spec-validator`), and a property-based run of it by `schemathesis`
//! against a live server with the real model, which must meet no 5xx and only
//! responses the document describes. A longer run, with schemathesis's
//! boundary-value phase too, is `benches/fuzz/schemathesis.sh`.

use std::path::PathBuf;
use std::process::Command;

use crate::support::python::python_with;
use crate::support::server::{shared, Server};

const REQUIREMENTS: &str = "tests/python/openapi-requirements.txt";
const VENV: &str = "openapi-venv";

fn venv_tool(name: &str) -> PathBuf {
    python_with(REQUIREMENTS, VENV).with_file_name(name)
}

#[test]
fn openapi_document_is_served_and_valid() {
    let server = shared();
    let resp = reqwest::blocking::get(server.url("/openapi.json")).expect("GET /openapi.json");
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().expect("JSON");
    assert_eq!(doc["components"]["schemas"]["ModelName"]["enum"][0], "test-model");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).expect("write the document");
    let out =
        Command::new(venv_tool("openapi-spec-validator")).arg(&path).output().expect("run the validator");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "not valid OpenAPI:\n{text}");
}

/// Runs schemathesis against a server whose every answer is cheap: a 64-token
/// context, and on `/v1/*` a tenant allowed 2 output tokens a request.
fn run_schemathesis(max_examples: u32, report_dir: &std::path::Path) -> (bool, String) {
    let tenants = report_dir.join("tenants.toml");
    std::fs::write(
        &tenants,
        "[[tenants]]\nname = \"schemathesis\"\napi_key = \"sk-schemathesis\"\ntier = \"on-demand\"\nmax_tokens_per_request = 2\n",
    )
    .expect("write tenants file");
    let server = Server::start(&["--max-context", "64", "--tenants", &tenants.to_string_lossy()]);
    let out = Command::new(venv_tool("st"))
        .args(["run", &server.url("/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--header", "Authorization: Bearer sk-schemathesis"])
        .args(["--phases", "examples,fuzzing"])
        .args(["--max-examples", &max_examples.to_string(), "--seed", "17", "--workers", "1"])
        .args(["--request-timeout", "120", "--suppress-health-check", "too_slow"])
        .arg("--report-dir")
        .arg(report_dir)
        .args(["--report", "junit"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let log = server.log();
    let panicked = log.iter().any(|l| l.contains("panicked"));
    (out.status.success() && !panicked, format!("{text}\n--- server log ---\n{}", log.join("\n")))
}

#[test]
fn schemathesis_finds_no_server_errors_and_no_undocumented_responses() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Random cases only: the boundary-value phase (`coverage`) runs in the bench
    // script, where it has minutes.
    let (ok, text) = run_schemathesis(8, dir.path());
    assert!(ok, "schemathesis found failures:\n{text}");
    // Every operation was reached with generated cases.
    assert!(text.contains("Tested: ") && text.contains(" generated, "), "{text}");
}
