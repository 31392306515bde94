//! Loads libnrt at run time and resolves every function the backend binds, so the
//! binary builds and runs without the Neuron SDK. The library comes from the path the
//! user names (`--neuron-lib`), else `NEURON_RT_LIB`, else the loader's search path
//! (`libnrt.so.1`), else the Neuron SDK's install folder. A library that cannot be
//! opened, or lacks a function, is an error naming every path tried and why.

use std::path::{Path, PathBuf};

use libloading::Library;

use super::ffi::*;
use crate::backend::BackendError;

/// Where libnrt is looked for when the user names no path.
pub const DEFAULT_PATHS: [&str; 2] = ["libnrt.so.1", "/opt/aws/neuron/lib/libnrt.so.1"];

/// The paths to try, in order: `named` alone if given, else `NEURON_RT_LIB` alone if
/// set, else [`DEFAULT_PATHS`].
pub fn candidates(named: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = named {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("NEURON_RT_LIB").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    DEFAULT_PATHS.iter().map(PathBuf::from).collect()
}

/// libnrt's functions, resolved from one loaded library that lives as long as they do.
pub struct NrtApi {
    pub path: PathBuf,
    pub init: NrtInit,
    pub close: NrtClose,
    pub load: NrtLoad,
    pub unload: NrtUnload,
    pub get_model_tensor_info: NrtGetModelTensorInfo,
    pub free_model_tensor_info: NrtFreeModelTensorInfo,
    pub tensor_allocate: NrtTensorAllocate,
    pub tensor_free: NrtTensorFree,
    pub tensor_read: NrtTensorRead,
    pub tensor_write: NrtTensorWrite,
    pub tensor_get_size: NrtTensorGetSize,
    pub tensor_allocate_slice: NrtTensorAllocateSlice,
    pub allocate_tensor_set: NrtAllocateTensorSet,
    pub add_tensor_to_tensor_set: NrtAddTensorToTensorSet,
    pub destroy_tensor_set: NrtDestroyTensorSet,
    pub execute: NrtExecute,
    pub get_version: NrtGetVersion,
    pub get_visible_vnc_count: NrtGetVisibleVncCount,
    /// Not exported by every libnrt (see `ffi::NrtGetStatusAsStr`).
    pub get_status_as_str: Option<NrtGetStatusAsStr>,
    // Last, so the function pointers above never outlive it.
    _library: Library,
}

impl NrtApi {
    /// Opens the first of [`candidates`] that loads and has every function.
    pub fn open(named: Option<&Path>) -> Result<Self, BackendError> {
        let mut tried = Vec::new();
        for path in candidates(named) {
            match Self::open_one(&path) {
                Ok(api) => return Ok(api),
                Err(why) => tried.push(format!("{} ({why})", path.display())),
            }
        }
        Err(BackendError::Unavailable(format!(
            "libnrt (the Neuron runtime, {NRT_TARGET_RUNTIME}) could not be loaded; tried: {}. Install \
             aws-neuronx-runtime-lib or name the library with --neuron-lib / NEURON_RT_LIB",
            tried.join("; ")
        )))
    }

    fn open_one(path: &Path) -> Result<Self, String> {
        // SAFETY: loading a shared library runs its initialisers; libnrt's (and any
        // library a user names in its place) are trusted like the binary itself.
        let library = unsafe { Library::new(path) }.map_err(|e| e.to_string())?;
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the symbol is declared with this signature in the pinned
                // headers (`ffi`); the pointer is used only while `library` is alive.
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|_| format!("it has no function `{}`", $name))?
            };
        }
        Ok(Self {
            path: path.to_path_buf(),
            init: symbol!("nrt_init"),
            close: symbol!("nrt_close"),
            load: symbol!("nrt_load"),
            unload: symbol!("nrt_unload"),
            get_model_tensor_info: symbol!("nrt_get_model_tensor_info"),
            free_model_tensor_info: symbol!("nrt_free_model_tensor_info"),
            tensor_allocate: symbol!("nrt_tensor_allocate"),
            tensor_free: symbol!("nrt_tensor_free"),
            tensor_read: symbol!("nrt_tensor_read"),
            tensor_write: symbol!("nrt_tensor_write"),
            tensor_get_size: symbol!("nrt_tensor_get_size"),
            tensor_allocate_slice: symbol!("nrt_tensor_allocate_slice"),
            allocate_tensor_set: symbol!("nrt_allocate_tensor_set"),
            add_tensor_to_tensor_set: symbol!("nrt_add_tensor_to_tensor_set"),
            destroy_tensor_set: symbol!("nrt_destroy_tensor_set"),
            execute: symbol!("nrt_execute"),
            get_version: symbol!("nrt_get_version"),
            get_visible_vnc_count: symbol!("nrt_get_visible_vnc_count"),
            // SAFETY: as above; absent in some versions, hence optional.
            get_status_as_str: unsafe { library.get::<NrtGetStatusAsStr>(b"nrt_get_status_as_str\0") }
                .ok()
                .map(|s| *s),
            _library: library,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_path_is_the_only_one_tried() {
        let named = Path::new("/opt/custom/libnrt.so.1");
        assert_eq!(candidates(Some(named)), vec![named.to_path_buf()]);
    }

    #[test]
    fn every_path_tried_is_named_with_its_reason() {
        let Err(e) = NrtApi::open(Some(Path::new("/nonexistent/libnrt.so.1"))) else {
            panic!("a missing library loaded");
        };
        let e = e.to_string();
        assert!(e.contains("/nonexistent/libnrt.so.1 (") && e.contains("--neuron-lib"), "{e}");
        // A library that loads but is not libnrt: the first missing function is named.
        let Err(e) = NrtApi::open(Some(Path::new("libc.so.6"))) else {
            panic!("libc passed for libnrt");
        };
        assert!(e.to_string().contains("libc.so.6 (it has no function `nrt_init`)"), "{e}");
    }
}
