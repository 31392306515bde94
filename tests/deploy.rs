//! The deployment recipes under `deploy/`, checked offline with the real tools for
//! each (no Docker daemon, cloud account or cluster exists here): the linters and
//! validators run by `deploy/check-*.sh` from a venv pinned in
//! `deploy/requirements-check.txt`, `promtool` on the alert rules and on every
//! dashboard query, and the metric names all of them use against a running server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::http::client;
use crate::support::python::python_with;
use crate::support::server::Server;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_files(exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read deploy/").flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, exts, out);
            } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| exts.contains(&x)) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("deploy"), exts, &mut out);
    out
}

/// Metric names with the label names each carries, from the text exposition.
fn exposed_metrics(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.split_whitespace().next().unwrap_or_default();
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let keys = out.entry(name.to_string()).or_default();
        for pair in labels.trim_end_matches('}').split(',').filter(|p| !p.is_empty()) {
            if let Some((k, _)) = pair.split_once('=') {
                keys.insert(k.to_string());
            }
        }
    }
    out
}

/// Every `inflight_*` name in `text`, with the label names of the selector that
/// follows it, if any (`name{a="x",b=~"y"}`).
fn referenced_metrics(text: &str) -> Vec<(String, Vec<String>)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("inflight_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name);
        let tail = &rest[at..];
        let len = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        rest = &tail[len..];
        if preceded {
            continue;
        }
        let name = tail[..len].to_string();
        // A regex alternation over names (`inflight_requests_(waiting|running)`, as
        // adapter rules write them) stands for each name it spells.
        let alternation = rest.strip_prefix('(').and_then(|s| s.split_once(')')).map(|(alts, _)| alts);
        if let Some(alts) = alternation.filter(|a| a.chars().all(|c| is_name(c) || c == '|')) {
            out.extend(alts.split('|').map(|alt| (format!("{name}{alt}"), Vec::new())));
            continue;
        }
        let mut labels = Vec::new();
        if let Some(selector) = rest.strip_prefix('{').and_then(|s| s.split_once('}')).map(|(s, _)| s) {
            for matcher in selector.split(',') {
                let key = matcher.trim().split(['=', '!']).next().unwrap_or_default().trim();
                if !key.is_empty() {
                    labels.push(key.to_string());
                }
            }
        }
        out.push((name, labels));
    }
    out
}

/// The label names of every PromQL grouping clause in `text`: `by (a, b)`,
/// `without (c)`.
fn grouping_labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by", "without"] {
        let mut rest = text;
        while let Some(at) = rest.find(keyword) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + keyword.len()..].trim_start();
            rest = &rest[at + keyword.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if let Some((list, _)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
                let names = list.split(',').map(str::trim);
                if names
                    .clone()
                    .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                {
                    out.extend(names.map(String::from));
                }
            }
        }
    }
    out
}

/// Labels Prometheus (and its Kubernetes service discovery) attaches at scrape
/// time; the server cannot export them.
const SCRAPE_LABELS: &[&str] = &["instance", "job", "namespace", "pod", "service", "container", "endpoint"];

/// The dashboards, alerts, autoscaling rules and agent configs under `deploy/` name
/// only metrics (and labels) that a running server exports, so renaming one fails
/// here rather than leaving a blank panel or a silent alert.
#[test]
fn every_metric_deploy_names_is_exported() {
    let server = Server::start(&[]);
    // One served request, one 404 and one 422, so labelled series exist.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let r = client().post(server.url("/v1/chat/completions")).json(&body).send().expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(client().get(server.url("/v1/nope")).send().expect("send").status(), 404);
    let r =
        client().post(server.url("/v1/completions")).json(&json!({"max_tokens": 2})).send().expect("send");
    assert_eq!(r.status(), 422);
    let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
    let exposed = exposed_metrics(&text);

    let files = deploy_files(&["json", "yaml", "yml"]);
    let mut checked = 0;
    let mut missing = Vec::new();
    for file in &files {
        let content = std::fs::read_to_string(file).expect("read");
        let rel = file.strip_prefix(root()).unwrap_or(file).display().to_string();
        for (name, labels) in referenced_metrics(&content) {
            checked += 1;
            match exposed.get(&name) {
                None => missing.push(format!("{rel}: metric {name}")),
                Some(keys) => {
                    for l in
                        labels.iter().filter(|l| !keys.contains(*l) && !SCRAPE_LABELS.contains(&l.as_str()))
                    {
                        missing.push(format!("{rel}: label {l} of {name} (it has {keys:?})"));
                    }
                }
            }
        }
    }
    // Labels named in `by (...)` / `without (...)` must belong to some exported
    // series too (a grouping label that no series carries silently merges them all).
    let all_labels: BTreeSet<&str> = exposed.values().flatten().map(String::as_str).collect();
    for file in &files {
        let content = std::fs::read_to_string(file).expect("read");
        let rel = file.strip_prefix(root()).unwrap_or(file).display().to_string();
        for label in grouping_labels(&content) {
            if !all_labels.contains(label.as_str()) && !SCRAPE_LABELS.contains(&label.as_str()) {
                missing.push(format!("{rel}: grouping label {label}"));
            }
        }
    }
    assert!(missing.is_empty(), "deploy/ names what /metrics does not export:\n{}", missing.join("\n"));
    // The dashboard and the alert rules alone name more than a dozen series.
    assert!(checked >= 20, "only {checked} metric references found under deploy/");
}

#[test]
fn grouping_label_parser_reads_by_and_without_clauses() {
    let text = "sum by (le, instance) (rate(x[5m])) / sum without(code) (y) + max by(unit)(z) ; standby (q)";
    assert_eq!(grouping_labels(text), ["le", "instance", "unit", "code"]);
}

#[test]
fn metric_reference_parser_reads_names_and_selector_labels() {
    let refs = referenced_metrics(
        r#"sum(rate(inflight_http_responses_total{code=~"5..", route!="x"}[5m])) / my_inflight_x + inflight_up
        {__name__=~"^inflight_requests_(waiting|running)$"}"#,
    );
    let want = vec![
        ("inflight_http_responses_total".to_string(), vec!["code".to_string(), "route".to_string()]),
        ("inflight_up".to_string(), vec![]),
        ("inflight_requests_waiting".to_string(), vec![]),
        ("inflight_requests_running".to_string(), vec![]),
    ];
    assert_eq!(refs, want);
}

/// `promtool` from Debian's `prometheus` package, unpacked under `target/` (the
/// package's service is never installed or started).
fn promtool() -> PathBuf {
    // Two tests want it at once: one of them fetches and unpacks, the other waits.
    // The unpacking happens in a scratch folder renamed into place when complete,
    // so a run interrupted half-way never leaves a partial binary behind.
    static FETCHED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/deploy-tools");
    let bin = dir.join("usr/bin/promtool");
    if !bin.exists() {
        let scratch = root().join(format!("target/deploy-tools.partial-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).expect("mkdir");
        let out = Command::new("apt-get").args(["download", "prometheus"]).current_dir(&scratch).output();
        let out = out.expect("apt-get (promtool comes from Debian's prometheus package)");
        assert!(
            out.status.success(),
            "apt-get download prometheus: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deb = std::fs::read_dir(&scratch)
            .expect("read")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("downloaded .deb");
        let ok = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch).status().expect("dpkg-deb");
        assert!(ok.success(), "unpacking {}", deb.display());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&scratch, &dir).expect("move promtool into place");
    }
    bin
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

/// The alert rules load in Prometheus' own checker, and so does every query of the
/// Grafana dashboard (wrapped as recording rules, with Grafana's variables given
/// values), so a PromQL typo fails here, not on the dashboard.
#[test]
fn alert_rules_and_dashboard_queries_pass_promtool() {
    let promtool = promtool();
    let alerts = root().join("deploy/prometheus/inflight-alerts.yaml");
    run_ok(Command::new(&promtool).args(["check", "rules"]).arg(&alerts));

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/inflight-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has a PromQL expr");
            let expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
            rules.push_str(&format!("      - record: dashboard:query{n}\n        expr: {}\n", json!(expr)));
            n += 1;
        }
    }
    assert!(n >= 10, "the dashboard has {n} queries");
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-queries.yaml");
    std::fs::write(&file, rules).expect("write");
    let out = run_ok(Command::new(&promtool).args(["check", "rules"]).arg(&file));
    assert!(out.contains(&format!("{n} rules found")), "{out}");
}

/// The alert rules fire when they should, on synthetic series (promtool's rule
/// unit tests, `deploy/prometheus/inflight-alerts.test.yaml`).
#[test]
fn alert_rules_fire_on_synthetic_series() {
    let tests = root().join("deploy/prometheus/inflight-alerts.test.yaml");
    run_ok(
        Command::new(promtool())
            .args(["test", "rules"])
            .arg(&tests)
            .current_dir(root().join("deploy/prometheus")),
    );
}

fn check_script(script: &str) {
    let python = python_with("deploy/requirements-check.txt", "deploy-venv");
    let bin = python.parent().expect("venv bin");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    run_ok(
        Command::new("bash").arg(root().join("deploy").join(script)).current_dir(root()).env("PATH", path),
    );
}

/// hadolint on the Dockerfiles, cfn-lint on the CloudFormation templates,
/// `systemd-analyze verify` on the unit.
#[test]
fn images_ec2_and_regions_pass_their_linters() {
    check_script("check-infra.sh");
}

/// The Kubernetes overlays rendered by kustomize and validated against the
/// Kubernetes schemas; the SageMaker script's moto-backed tests.
#[test]
fn kubernetes_and_sagemaker_pass_their_checks() {
    check_script("check-sm-k8s.sh");
}
