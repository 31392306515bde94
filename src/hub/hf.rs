//! The Hugging Face side: looking files up in the local HF cache (no network) and
//! downloading through hf-hub's blocking API.
//!
//! hf-hub 0.4 does not expose ureq's connect timeout (its default is 30 s per call),
//! so before any hub call we probe the endpoint (or the proxy) with our own short
//! timeout: an unreachable hub costs at most `connect_timeout`, not minutes.

use std::io::IsTerminal;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

use super::HubError;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const PROXY_VARS: [&str; 6] =
    ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];

/// Where the hub and its cache are; from the environment, or set by tests.
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    /// `None` when no home folder is known: the cache is then skipped.
    pub cache_dir: Option<PathBuf>,
    pub endpoint: String,
    pub connect_timeout: Duration,
}

impl HubConfig {
    /// Honours `HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT` as the Python tools do.
    pub(crate) fn from_env() -> HubConfig {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub")));
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        HubConfig { cache_dir, endpoint, connect_timeout: Duration::from_secs(10) }
    }
}

fn repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string())
}

/// A file already in the HF cache for this revision (a commit id is also looked up
/// directly in `snapshots/`, where other tools leave it without a ref).
pub(crate) fn cached_file(cfg: &HubConfig, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let cache_dir = cfg.cache_dir.as_ref()?;
    if let Some(path) = Cache::new(cache_dir.clone()).repo(repo(repo_id, revision)).get(file) {
        return Some(path);
    }
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    if !is_commit {
        return None;
    }
    let folder = format!("models--{}", repo_id.replace('/', "--"));
    let path = cache_dir.join(folder).join("snapshots").join(revision).join(file);
    path.is_file().then_some(path)
}

fn api(cfg: &HubConfig, progress: bool) -> Result<Api, HubError> {
    let cache_dir = cfg
        .cache_dir
        .clone()
        .ok_or_else(|| HubError::Hub { message: "no cache folder (set HF_HOME or HOME)".into() })?;
    probe(&cfg.endpoint, cfg.connect_timeout).map_err(|message| HubError::Hub { message })?;
    let mut builder = ApiBuilder::from_cache(Cache::new(cache_dir))
        .with_endpoint(cfg.endpoint.clone())
        .with_progress(progress && std::io::stderr().is_terminal());
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    builder.build().map_err(|e| HubError::Hub { message: e.to_string() })
}

/// Downloads one file into the HF cache and returns its path. Always downloads:
/// callers look in the cache first, and a cached copy that failed verification must
/// not be handed back again.
pub(crate) fn download_file(
    cfg: &HubConfig,
    repo_id: &str,
    revision: &str,
    file: &str,
    progress: bool,
) -> Result<PathBuf, HubError> {
    let api = api(cfg, progress)?;
    api.repo(repo(repo_id, revision))
        .download(file)
        .map_err(|e| HubError::Hub { message: format!("{repo_id}/{file}@{revision}: {e}") })
}

/// The files of a safetensors model that the loader needs, by name in the repo.
/// `listing` is the repo's file list; returns the files to fetch, config first.
pub(crate) fn safetensors_files(listing: &[String], index: Option<&str>) -> Result<Vec<String>, String> {
    let has = |name: &str| listing.iter().any(|f| f == name);
    if !has("config.json") {
        return Err("repo has no config.json".into());
    }
    let mut files: Vec<String> =
        ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
            .into_iter()
            .filter(|f| has(f))
            .map(String::from)
            .collect();
    if has("model.safetensors") {
        files.push("model.safetensors".into());
    } else if has("model.safetensors.index.json") {
        let index = index.ok_or("model.safetensors.index.json was not read")?;
        files.push("model.safetensors.index.json".into());
        files.extend(shards(index)?);
    } else {
        return Err("repo has neither model.safetensors nor model.safetensors.index.json".into());
    }
    Ok(files)
}

/// The distinct shard names of a `model.safetensors.index.json`, sorted.
fn shards(index: &str) -> Result<Vec<String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(index).map_err(|e| format!("model.safetensors.index.json: {e}"))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("model.safetensors.index.json has no weight_map")?;
    let mut names: Vec<String> = map.values().filter_map(|v| v.as_str()).map(String::from).collect();
    names.sort();
    names.dedup();
    if names.is_empty() || names.iter().any(|n| n.contains("..") || n.starts_with('/')) {
        return Err("model.safetensors.index.json has an empty or unsafe weight_map".into());
    }
    Ok(names)
}

/// Downloads a safetensors model repo; returns the snapshot folder holding it.
pub(crate) fn download_repo(cfg: &HubConfig, repo_id: &str, progress: bool) -> Result<PathBuf, HubError> {
    let api = api(cfg, progress)?;
    let remote = api.repo(repo(repo_id, "main"));
    let hub_err = |e: hf_hub::api::sync::ApiError| HubError::Hub { message: format!("{repo_id}: {e}") };
    let listing: Vec<String> =
        remote.info().map_err(hub_err)?.siblings.into_iter().map(|s| s.rfilename).collect();
    let index = if listing.iter().any(|f| f == "model.safetensors.index.json")
        && !listing.iter().any(|f| f == "model.safetensors")
    {
        let path = remote.get("model.safetensors.index.json").map_err(hub_err)?;
        Some(std::fs::read_to_string(&path).map_err(HubError::io(path))?)
    } else {
        None
    };
    let files = safetensors_files(&listing, index.as_deref())
        .map_err(|message| HubError::Hub { message: format!("{repo_id}: {message}") })?;
    let mut folder = None;
    for file in &files {
        tracing::info!(repo = repo_id, file = %file, "downloading");
        let path = remote.get(file).map_err(hub_err)?;
        folder.get_or_insert_with(|| path.parent().map(Path::to_path_buf));
    }
    folder
        .flatten()
        .ok_or_else(|| HubError::Hub { message: format!("{repo_id}: downloaded files have no folder") })
}

/// A safetensors model repo fully present in the HF cache (main revision).
pub(crate) fn cached_repo(cfg: &HubConfig, repo_id: &str) -> Option<PathBuf> {
    let config = cached_file(cfg, repo_id, "main", "config.json")?;
    let folder = config.parent()?.to_path_buf();
    if folder.join("model.safetensors").is_file() {
        return Some(folder);
    }
    let index = std::fs::read_to_string(folder.join("model.safetensors.index.json")).ok()?;
    let all_there = shards(&index).ok()?.iter().all(|s| folder.join(s).is_file());
    all_there.then_some(folder)
}

/// Fails within `timeout` if nothing answers at the endpoint's host (or at the proxy,
/// when one is configured, since that is where the connection would go).
pub(crate) fn probe(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let proxy = PROXY_VARS.iter().find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()));
    let (target, default_port) = match &proxy {
        Some(proxy) => (proxy.as_str(), 80),
        None => (endpoint, if endpoint.starts_with("http://") { 80 } else { 443 }),
    };
    let (host, port) =
        host_port(target, default_port).ok_or_else(|| format!("cannot parse host of {target:?}"))?;
    let what = if proxy.is_some() { "proxy" } else { "hub" };
    let (tx, rx) = mpsc::channel();
    let deadline = Instant::now() + timeout;
    let (h, p) = (host.clone(), port);
    // Name resolution has no timeout of its own, so the probe runs on a thread we
    // stop waiting for; a stuck resolver only leaks that thread.
    std::thread::spawn(move || {
        let result = (|| {
            let addrs = (h.as_str(), p).to_socket_addrs().map_err(|e| format!("cannot resolve {h}: {e}"))?;
            let mut last = format!("{h} resolved to no address");
            for addr in addrs {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("cannot connect to {addr}: {e}"),
                }
            }
            Err(last)
        })();
        let _ = tx.send(result);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what} unreachable: {e}")),
        Err(_) => Err(format!("{what} {host}:{port} did not answer within {} s", timeout.as_secs())),
    }
}

/// `scheme://user@host:port/path` → (host, port).
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = after.strip_prefix(':').map(str::parse).transpose().ok()?;
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (authority, None),
        }
    };
    (!host.is_empty()).then(|| (host.to_string(), port.unwrap_or(default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A local port with nothing listening on it: bind, note the port, close.
    pub(crate) fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(host_port("https://huggingface.co", 443), Some(("huggingface.co".into(), 443)));
        assert_eq!(host_port("http://127.0.0.1:8080/x", 80), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(host_port("http://u:p@proxy:3128", 80), Some(("proxy".into(), 3128)));
        assert_eq!(host_port("http://[::1]:9", 80), Some(("::1".into(), 9)));
        assert_eq!(host_port("http://host:notaport", 80), None);
    }

    #[test]
    fn probe_fails_fast_on_a_closed_port_and_passes_on_an_open_one() {
        if PROXY_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return; // the probe would target the proxy, not these local ports
        }
        let start = Instant::now();
        let err = probe(&format!("http://127.0.0.1:{}", closed_port()), Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("unreachable"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        probe(&format!("http://127.0.0.1:{port}"), Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn cache_lookup_by_ref_and_by_commit() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HubConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            endpoint: DEFAULT_ENDPOINT.into(),
            connect_timeout: Duration::from_secs(1),
        };
        let commit = "ab810cf68114990406fdf996510dd3d3c6adbdf5";
        let repo_dir = dir.path().join("models--o--r");
        let snapshot = repo_dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("m.gguf"), b"x").unwrap();
        assert_eq!(cached_file(&cfg, "o/r", commit, "m.gguf"), Some(snapshot.join("m.gguf")));
        assert_eq!(cached_file(&cfg, "o/r", "main", "m.gguf"), None);
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
        assert_eq!(cached_file(&cfg, "o/r", "main", "m.gguf"), Some(snapshot.join("m.gguf")));
        assert_eq!(cached_file(&cfg, "o/r", "main", "other.gguf"), None);
    }

    #[test]
    fn download_from_an_unreachable_endpoint_fails_fast() {
        if PROXY_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = HubConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            endpoint: format!("http://127.0.0.1:{}", closed_port()),
            connect_timeout: Duration::from_secs(10),
        };
        let start = Instant::now();
        let err = download_file(&cfg, "o/r", "main", "m.gguf", false).unwrap_err();
        assert!(matches!(err, HubError::Hub { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn safetensors_file_choice() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let single = names(&["config.json", "tokenizer.json", "model.safetensors", "README.md"]);
        assert_eq!(
            safetensors_files(&single, None).unwrap(),
            names(&["config.json", "tokenizer.json", "model.safetensors"])
        );

        let sharded = names(&["config.json", "model.safetensors.index.json", "generation_config.json"]);
        let index = r#"{"weight_map": {"a": "model-00002.safetensors", "b": "model-00001.safetensors", "c": "model-00001.safetensors"}}"#;
        assert_eq!(
            safetensors_files(&sharded, Some(index)).unwrap(),
            names(&[
                "config.json",
                "generation_config.json",
                "model.safetensors.index.json",
                "model-00001.safetensors",
                "model-00002.safetensors"
            ])
        );
        assert!(safetensors_files(&sharded, Some(r#"{"weight_map": {"a": "../x"}}"#)).is_err());
        assert!(safetensors_files(&names(&["model.safetensors"]), None).is_err());
        assert!(safetensors_files(&names(&["config.json", "pytorch_model.bin"]), None).is_err());
    }
}
