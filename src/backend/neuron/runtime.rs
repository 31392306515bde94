//! Safe owners of libnrt's handles. Every handle is freed exactly once, by `Drop`,
//! and every non-zero status becomes [`BackendError::Nrt`] naming the call.
//!
//! - [`Runtime`]: `nrt_init` once per process; `nrt_close` when the last owner
//!   goes, which is after every model and tensor (each holds the runtime), so
//!   nothing is freed after close. A closed runtime is never initialised again
//!   (AWS's own code shows close/init cycles, and SDK 2.32 fixed a hang after
//!   one): [`Runtime::acquire`] refuses instead.
//! - [`Model`]: a loaded NEFF, unloaded on drop; its tensors' names, dtypes and
//!   shapes ([`Model::tensor_info`]).
//! - [`Tensor`]: device (or host) memory, freed on drop.
//! - [`TensorSet`]: names bound to tensors for executes. It holds the tensors it
//!   names (shared, `Arc`), so none is freed while a set still names it: the
//!   runtime does not keep them alive, the set does. Sets can therefore be built
//!   once and bound to every execute of a graph.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::ptr;
use std::sync::{Arc, Mutex, Weak};

use super::ffi::{self, NrtModel, NrtTensor, NrtTensorInfo, NrtTensorSet, NRT_FRAMEWORK_TYPE_NO_FW};
use super::library::NrtApi;
use super::status::check;
use crate::backend::BackendError;

/// The process's runtime: alive while any owner holds it, closed for good after.
enum Slot {
    Never,
    Open(Weak<Runtime>),
    Closed(PathBuf),
}

static RUNTIME: Mutex<Slot> = Mutex::new(Slot::Never);

pub struct Runtime {
    api: NrtApi,
}

fn unavailable(message: String) -> BackendError {
    BackendError::Unavailable(message)
}

impl Runtime {
    /// The process's runtime, initialising libnrt from `api` the first time.
    pub fn acquire(api: NrtApi) -> Result<Arc<Runtime>, BackendError> {
        let mut slot =
            RUNTIME.lock().map_err(|_| unavailable("the Neuron runtime's lock is poisoned".into()))?;
        match &*slot {
            Slot::Open(weak) => {
                if let Some(rt) = weak.upgrade() {
                    if rt.api.path != api.path {
                        return Err(unavailable(format!(
                            "libnrt is already initialised from {}; this process cannot also use {}",
                            rt.api.path.display(),
                            api.path.display()
                        )));
                    }
                    return Ok(rt);
                }
            }
            Slot::Closed(path) => {
                return Err(unavailable(format!(
                    "the Neuron runtime ({}) was closed in this process and is not initialised twice",
                    path.display()
                )))
            }
            Slot::Never => {}
        }
        let (empty, framework) = (c"", NRT_FRAMEWORK_TYPE_NO_FW);
        // SAFETY: `nrt_init` with the no-framework type and empty version strings, as
        // the headers document; called once per process (the slot above).
        check("nrt_init", unsafe { (api.init)(framework, empty.as_ptr(), empty.as_ptr()) })?;
        let rt = Arc::new(Runtime { api });
        *slot = Slot::Open(Arc::downgrade(&rt));
        Ok(rt)
    }

    pub fn library(&self) -> &std::path::Path {
        &self.api.path
    }

    /// The runtime's own version string (`nrt_get_version`).
    pub fn version(&self) -> Result<String, BackendError> {
        let mut v = std::mem::MaybeUninit::<ffi::NrtVersion>::zeroed();
        // SAFETY: the buffer is an `nrt_version_t` of the size passed.
        check("nrt_get_version", unsafe {
            (self.api.get_version)(v.as_mut_ptr(), std::mem::size_of::<ffi::NrtVersion>())
        })?;
        // SAFETY: zeroed, then filled by the runtime.
        let v = unsafe { v.assume_init() };
        // SAFETY: `rt_detail` is a NUL-terminated string inside the struct (zeroed first).
        let detail = unsafe { CStr::from_ptr(v.rt_detail.as_ptr()) }.to_string_lossy();
        Ok(format!("{}.{}.{} {detail}", v.rt_major, v.rt_minor, v.rt_patch))
    }

    /// Loads a NEFF onto `vnc_count` NeuronCores from `start_vnc` (`-1`: the runtime
    /// picks).
    pub fn load(
        self: &Arc<Self>,
        neff: &[u8],
        start_vnc: i32,
        vnc_count: i32,
    ) -> Result<Model, BackendError> {
        let mut model = ptr::null_mut();
        // SAFETY: the NEFF bytes are valid for the call; the runtime copies what it keeps.
        check("nrt_load", unsafe {
            (self.api.load)(neff.as_ptr().cast(), neff.len(), start_vnc, vnc_count, &mut model)
        })?;
        Ok(Model { rt: Arc::clone(self), ptr: model })
    }

    /// `size` bytes of tensor memory named `name`.
    pub fn tensor(
        self: &Arc<Self>,
        placement: u32,
        vnc: i32,
        size: usize,
        name: &str,
    ) -> Result<Tensor, BackendError> {
        let cname = c_string(name)?;
        let mut tensor = ptr::null_mut();
        // SAFETY: `cname` outlives the call; the runtime writes the new handle.
        check("nrt_tensor_allocate", unsafe {
            (self.api.tensor_allocate)(placement, vnc, size, cname.as_ptr(), &mut tensor)
        })?;
        Ok(Tensor { rt: Arc::clone(self), ptr: tensor, size, name: name.to_string() })
    }

    pub fn tensor_set(self: &Arc<Self>) -> Result<TensorSet, BackendError> {
        let mut set = ptr::null_mut();
        // SAFETY: the runtime writes the new handle.
        check("nrt_allocate_tensor_set", unsafe { (self.api.allocate_tensor_set)(&mut set) })?;
        Ok(TensorSet { rt: Arc::clone(self), ptr: set, tensors: Vec::new() })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Every model, tensor and set holds the runtime, so all are gone by now.
        if let Ok(mut slot) = RUNTIME.lock() {
            *slot = Slot::Closed(self.api.path.clone());
        }
        // SAFETY: initialised in `acquire`, closed once, here.
        unsafe { (self.api.close)() };
    }
}

fn c_string(name: &str) -> Result<CString, BackendError> {
    CString::new(name)
        .map_err(|_| BackendError::InvalidStep(format!("tensor name {name:?} contains a NUL byte")))
}

/// One tensor of a loaded model, as the runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// `ffi::usage::INPUT` or `OUTPUT`.
    pub usage: u32,
    pub size: usize,
    /// An `ffi::dtype` code.
    pub dtype: u32,
    pub shape: Vec<u32>,
}

pub struct Model {
    rt: Arc<Runtime>,
    ptr: *mut NrtModel,
}

// SAFETY: libnrt's handles may be used from any thread (one call at a time per
// model, which `&mut`/ownership in the backend ensures).
unsafe impl Send for Model {}

impl Model {
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// The model's input and output tensors.
    pub fn tensor_info(&self) -> Result<Vec<TensorInfo>, BackendError> {
        let api = &self.rt.api;
        let mut array = ptr::null_mut();
        // SAFETY: a loaded model; the runtime allocates the array, freed below.
        check("nrt_get_model_tensor_info", unsafe { (api.get_model_tensor_info)(self.ptr, &mut array) })?;
        if array.is_null() {
            return Err(unavailable("nrt_get_model_tensor_info returned no array".into()));
        }
        // SAFETY: the runtime's array holds `tensor_count` infos in place after the count.
        let infos = unsafe {
            let count = (*array).tensor_count as usize;
            let first = ptr::addr_of!((*array).tensor_array).cast::<NrtTensorInfo>();
            (0..count).map(|i| read_info(&*first.add(i))).collect::<Vec<_>>()
        };
        // SAFETY: freed once, with its paired call.
        check("nrt_free_model_tensor_info", unsafe { (api.free_model_tensor_info)(array) })?;
        Ok(infos)
    }

    /// Runs the model on `inputs`, writing `outputs`.
    pub fn execute(&self, inputs: &TensorSet, outputs: &mut TensorSet) -> Result<(), BackendError> {
        // SAFETY: both sets are live, and so (by their borrows) is every tensor they name.
        check("nrt_execute", unsafe { (self.rt.api.execute)(self.ptr, inputs.ptr, outputs.ptr) })
    }
}

/// Copies one `nrt_tensor_info_t` out of the runtime's memory.
///
/// # Safety
/// `info` must come from a live tensor-info array, whose `shape` holds `ndim` values.
unsafe fn read_info(info: &NrtTensorInfo) -> TensorInfo {
    let name = CStr::from_ptr(info.name.as_ptr() as *const c_char).to_string_lossy().into_owned();
    let shape = if info.shape.is_null() {
        Vec::new()
    } else {
        std::slice::from_raw_parts(info.shape, info.ndim as usize).to_vec()
    };
    TensorInfo { name, usage: info.usage, size: info.size, dtype: info.dtype, shape }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: loaded by `Runtime::load`, unloaded once, here, before the runtime closes.
        let status = unsafe { (self.rt.api.unload)(self.ptr) };
        if let Err(e) = check("nrt_unload", status) {
            tracing::warn!(error = %e, "unloading a Neuron model failed");
        }
    }
}

pub struct Tensor {
    rt: Arc<Runtime>,
    ptr: *mut NrtTensor,
    size: usize,
    name: String,
}

// SAFETY: as for `Model`; shared (`Sync`) because sets hold tensors by `Arc`, and
// libnrt's tensor calls take any thread (the backend makes them from one).
unsafe impl Send for Tensor {}
unsafe impl Sync for Tensor {}

impl Tensor {
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `bytes` at byte `offset`.
    pub fn write(&self, bytes: &[u8], offset: usize) -> Result<(), BackendError> {
        self.check_range(offset, bytes.len(), "write")?;
        // SAFETY: in range (checked), the buffer is valid for the call.
        check("nrt_tensor_write", unsafe {
            (self.rt.api.tensor_write)(self.ptr, bytes.as_ptr().cast(), offset, bytes.len())
        })
    }

    /// Reads `out.len()` bytes from byte `offset`.
    pub fn read(&self, out: &mut [u8], offset: usize) -> Result<(), BackendError> {
        self.check_range(offset, out.len(), "read")?;
        // SAFETY: in range (checked), the buffer is valid for the call.
        check("nrt_tensor_read", unsafe {
            (self.rt.api.tensor_read)(self.ptr, out.as_mut_ptr().cast(), offset, out.len())
        })
    }

    fn check_range(&self, offset: usize, len: usize, what: &str) -> Result<(), BackendError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(BackendError::InvalidStep(format!(
                "{what} of {len} bytes at {offset} beyond tensor `{}` of {} bytes",
                self.name, self.size
            )));
        }
        Ok(())
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        // SAFETY: allocated by `Runtime::tensor`, freed once, here; no set names it any
        // more (a set holds its tensors).
        unsafe { (self.rt.api.tensor_free)(&mut self.ptr) };
    }
}

pub struct TensorSet {
    rt: Arc<Runtime>,
    ptr: *mut NrtTensorSet,
    /// What the set names, kept alive as long as it does.
    tensors: Vec<Arc<Tensor>>,
}

// SAFETY: as for `Model`.
unsafe impl Send for TensorSet {}

impl TensorSet {
    /// Binds `name` to `tensor` (replacing an earlier binding of the name).
    pub fn add(&mut self, name: &str, tensor: &Arc<Tensor>) -> Result<(), BackendError> {
        let cname = c_string(name)?;
        // SAFETY: the set and the tensor are live; the set keeps the tensor alive.
        check("nrt_add_tensor_to_tensor_set", unsafe {
            (self.rt.api.add_tensor_to_tensor_set)(self.ptr, cname.as_ptr(), tensor.ptr)
        })?;
        self.tensors.push(Arc::clone(tensor));
        Ok(())
    }
}

impl Drop for TensorSet {
    fn drop(&mut self) {
        // SAFETY: allocated by `Runtime::tensor_set`, destroyed once, here.
        unsafe { (self.rt.api.destroy_tensor_set)(&mut self.ptr) };
    }
}
