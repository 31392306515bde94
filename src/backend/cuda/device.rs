//! Opening a CUDA device and asking it about itself. The only place that knows
//! whether candle was built with CUDA: without the `cuda` feature candle's CUDA
//! calls fail at run time, and this module turns that into the user's next step.

use candle_core::Device;

use crate::backend::BackendError;

/// Opens CUDA device `ordinal`, or says why not.
pub fn open(ordinal: usize) -> Result<Device, BackendError> {
    if !candle_core::utils::cuda_is_available() {
        return Err(BackendError::Unavailable(
            "built without CUDA support; rebuild with `cargo build --release --features cuda` (README: the CUDA \
             backend)"
                .into(),
        ));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| {
        BackendError::Unavailable(format!(
            "cannot open CUDA device {ordinal}: {e} (needs the NVIDIA driver's libcuda.so.1 and a GPU with that \
             index; `nvidia-smi` lists them)"
        ))
    })?;
    single_stream(&device);
    Ok(device)
}

/// Switches off cudarc's per-buffer event tracking, which records CUDA events on
/// every kernel launch so buffers can be shared between streams: two driver calls
/// per operation that this backend does not need.
#[cfg(feature = "cuda")]
fn single_stream(device: &Device) {
    if let Device::Cuda(d) = device {
        // SAFETY: the backend uses one stream: weights and the KV pool are written
        // on the loading thread and the device synchronized (`runtime::load_on_device`,
        // `CudaBackend::new`) before the engine thread, the only one that computes,
        // touches them.
        unsafe { d.disable_event_tracking() }
    }
}

#[cfg(not(feature = "cuda"))]
fn single_stream(_: &Device) {}

/// What the device says about itself: its name and free memory in bytes.
pub struct DeviceFacts {
    pub name: String,
    pub free_bytes: Option<usize>,
}

#[cfg(feature = "cuda")]
pub fn facts(device: &Device) -> DeviceFacts {
    match device {
        Device::Cuda(d) => {
            let stream = d.cuda_stream();
            let ctx = stream.context();
            DeviceFacts {
                name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
                free_bytes: ctx.mem_get_info().ok().map(|(free, _)| free),
            }
        }
        other => host_facts(other),
    }
}

#[cfg(not(feature = "cuda"))]
pub fn facts(device: &Device) -> DeviceFacts {
    host_facts(device)
}

fn host_facts(device: &Device) -> DeviceFacts {
    DeviceFacts { name: format!("{device:?}").to_lowercase(), free_bytes: None }
}
