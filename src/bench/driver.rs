//! The load driver: runs one load level's requests through the client and
//! collects their records. Closed loop keeps a fixed number of requests in flight
//! (a finished one is replaced at once); open loop sends on a schedule of arrival
//! times whatever the server's state, optionally capped at a number in flight.
//!
//! Every level is bounded: at most `num_requests` requests, none sent after
//! `duration`, and each one limited by the client's timeout, so a level always ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::{Deserialize, Serialize};

use super::arrivals;
use super::client::Client;
use super::record::RequestRecord;
use super::workload::WorkItem;
use super::BenchError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum LoadLevel {
    /// Closed loop with this many requests in flight.
    Concurrency { concurrency: usize },
    /// Open loop: `rate` requests per second on average (`None`: all at once),
    /// gamma-distributed gaps of shape `burstiness`.
    Rate { rate: Option<f64>, burstiness: f64, max_concurrency: Option<usize> },
}

impl LoadLevel {
    /// A short name used in tables, reports and plots: `c=4`, `rate=2/s`, `rate=inf`.
    pub fn label(&self) -> String {
        match self {
            LoadLevel::Concurrency { concurrency } => format!("c={concurrency}"),
            LoadLevel::Rate { rate, burstiness, max_concurrency } => {
                let mut s = match rate {
                    Some(r) => format!("rate={r}/s"),
                    None => "rate=inf".to_string(),
                };
                if (burstiness - 1.0).abs() > 1e-9 {
                    s.push_str(&format!(" b={burstiness}"));
                }
                if let Some(m) = max_concurrency {
                    s.push_str(&format!(" max={m}"));
                }
                s
            }
        }
    }
}

/// Told about every finished request (a progress bar, a log).
pub trait Progress: Sync {
    fn request_done(&self, record: &RequestRecord);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn request_done(&self, _: &RequestRecord) {}
}

#[derive(Debug, Clone)]
pub struct LevelRun {
    /// Ordered by workload index.
    pub records: Vec<RequestRecord>,
    /// First request sent to last one finished.
    pub duration_s: f64,
}

/// Runs `items` (one per request, at most) at `level`; no request is sent after
/// `duration` into the level. `seed` seeds open-loop arrivals.
pub async fn run_level(
    client: &Client,
    level: &LoadLevel,
    items: &[WorkItem],
    duration: Option<Duration>,
    seed: u64,
    progress: &dyn Progress,
) -> Result<LevelRun, BenchError> {
    let epoch = Instant::now();
    let within_time = |t: Duration| duration.is_none_or(|d| t < d);
    let mut records = match level {
        LoadLevel::Concurrency { concurrency } => {
            if *concurrency == 0 {
                return Err(BenchError::Config("concurrency must be at least 1".into()));
            }
            let next = AtomicUsize::new(0);
            let done = Mutex::new(Vec::with_capacity(items.len()));
            let worker = || async {
                while within_time(epoch.elapsed()) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = client.send(item, i, epoch).await;
                    progress.request_done(&r);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            };
            join_all((0..(*concurrency).min(items.len())).map(|_| worker())).await;
            done.into_inner().unwrap_or_else(|e| e.into_inner())
        }
        LoadLevel::Rate { rate, burstiness, max_concurrency } => {
            if *max_concurrency == Some(0) {
                return Err(BenchError::Config("--max-concurrency must be at least 1".into()));
            }
            let times = arrivals::schedule(items.len(), *rate, *burstiness, seed)?;
            let cap = max_concurrency.map(tokio::sync::Semaphore::new);
            let sends = items
                .iter()
                .zip(times)
                .enumerate()
                .filter(|(_, (_, t))| within_time(Duration::from_secs_f64(*t)));
            let sends = sends.map(|(i, (item, t))| {
                let cap = &cap;
                async move {
                    tokio::time::sleep_until((epoch + Duration::from_secs_f64(t)).into()).await;
                    // The semaphore is never closed, so acquiring only waits.
                    let _permit = match cap {
                        Some(s) => s.acquire().await.ok(),
                        None => None,
                    };
                    let r = client.send(item, i, epoch).await;
                    progress.request_done(&r);
                    r
                }
            });
            join_all(sends).await
        }
    };
    records.sort_by_key(|r| r.index);
    let duration_s = records.iter().map(RequestRecord::end_s).fold(0.0, f64::max);
    Ok(LevelRun { records, duration_s })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use axum::routing::post;

    use super::*;
    use crate::bench::client::Target;
    use crate::bench::endpoint::Endpoint;
    use crate::bench::workload::Input;

    /// A fake OpenAI server whose every answer takes `delay` and streams two
    /// chunks; it remembers the most requests it ever had in flight.
    async fn fake_server(delay: Duration) -> (String, Arc<AtomicUsize>) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let app = axum::Router::new().route(
            "/v1/completions",
            post(move || {
                let (f, p) = (f.clone(), p.clone());
                async move {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    let body = "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\n\
                                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
                    ([("content-type", "text/event-stream")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, peak)
    }

    fn client(url: String) -> Client {
        Client::new(Target {
            url,
            model: "m".into(),
            endpoint: Endpoint::Completions,
            api_key: None,
            timeout: Duration::from_secs(10),
            keep_alive: true,
            ignore_eos: true,
            temperature: None,
            extra_body: Default::default(),
        })
        .unwrap()
    }

    fn items(n: usize) -> Vec<WorkItem> {
        (0..n)
            .map(|i| WorkItem { input: Input::Prompt(format!("p{i}")), max_tokens: 2, input_tokens: None })
            .collect()
    }

    #[tokio::test]
    async fn closed_loop_keeps_the_asked_number_in_flight() {
        let (url, peak) = fake_server(Duration::from_millis(40)).await;
        let c = client(url);
        let level = LoadLevel::Concurrency { concurrency: 3 };
        let run = run_level(&c, &level, &items(9), None, 0, &NoProgress).await.unwrap();
        assert_eq!(run.records.len(), 9);
        assert!(run.records.iter().all(|r| r.ok() && r.output_tokens() == 2), "{:?}", run.records[0].error);
        assert_eq!(run.records.iter().map(|r| r.index).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        // Three waves of 40 ms.
        assert!(run.duration_s >= 0.11 && run.duration_s < 2.0, "{}", run.duration_s);
    }

    #[tokio::test]
    async fn open_loop_follows_the_schedule_and_the_cap() {
        let (url, peak) = fake_server(Duration::from_millis(100)).await;
        let c = client(url);
        let level = LoadLevel::Rate { rate: None, burstiness: 1.0, max_concurrency: Some(2) };
        let run = run_level(&c, &level, &items(4), None, 0, &NoProgress).await.unwrap();
        assert_eq!(run.records.len(), 4);
        assert_eq!(peak.load(Ordering::SeqCst), 2, "the cap holds");
        let level = LoadLevel::Rate { rate: Some(20.0), burstiness: 1.0, max_concurrency: None };
        let run = run_level(&c, &level, &items(6), None, 5, &NoProgress).await.unwrap();
        let want = arrivals::schedule(6, Some(20.0), 1.0, 5).unwrap();
        for (r, t) in run.records.iter().zip(&want) {
            assert!(r.start_s >= t - 1e-3 && r.start_s < t + 0.05, "sent at {} for {t}", r.start_s);
        }
    }

    #[tokio::test]
    async fn a_duration_bound_stops_sending() {
        let (url, _) = fake_server(Duration::from_millis(50)).await;
        let c = client(url);
        let level = LoadLevel::Concurrency { concurrency: 1 };
        let bound = Some(Duration::from_millis(120));
        let run = run_level(&c, &level, &items(100), bound, 0, &NoProgress).await.unwrap();
        assert!(
            (2..=4).contains(&run.records.len()),
            "{} requests in 120 ms of 50 ms each",
            run.records.len()
        );
        let level = LoadLevel::Rate { rate: Some(1.0), burstiness: 1.0, max_concurrency: None };
        let many = items(100);
        let run = run_level(&c, &level, &many, Some(Duration::ZERO), 0, &NoProgress).await.unwrap();
        assert!(run.records.is_empty());
    }

    #[test]
    fn labels_name_the_level() {
        assert_eq!(LoadLevel::Concurrency { concurrency: 4 }.label(), "c=4");
        let r = LoadLevel::Rate { rate: Some(2.5), burstiness: 0.5, max_concurrency: Some(8) };
        assert_eq!(r.label(), "rate=2.5/s b=0.5 max=8");
        assert_eq!(
            LoadLevel::Rate { rate: None, burstiness: 1.0, max_concurrency: None }.label(),
            "rate=inf"
        );
    }
}
