//! The libnrt C ABI the Neuron backend binds: opaque handles, the enum values and
//! struct layouts of the headers it follows, and the function signatures, as
//! `extern "C"` pointer types that `library` fills from the loaded library.
//!
//! Pinned to the headers of Neuron SDK 2.28 (`nrt.h`, `nrt_experimental.h`,
//! `nrt_status.h`, `nrt_version.h`), whose libnrt reports itself as 2.30.x. Those
//! headers renumbered the dtype codes (older headers and the developer guide list
//! FLOAT32 = 1, FLOAT16 = 2, …): [`NRT_TARGET_RUNTIME`] names the version so a
//! mismatch can be told apart, and a tensor's byte size is cross-checked against its
//! shape before its dtype is trusted. Layouts are asserted in the tests below.

use std::ffi::{c_char, c_int, c_void};

/// The runtime whose headers these declarations follow.
pub const NRT_TARGET_RUNTIME: &str = "libnrt 2.30 (Neuron SDK 2.28 headers)";

/// `NRT_STATUS`: a C enum, 32 bits on every platform libnrt ships for.
pub type NrtStatus = u32;

/// `nrt_model_t`, opaque.
#[repr(C)]
pub struct NrtModel {
    _private: [u8; 0],
}

/// `nrt_tensor_t`, opaque.
#[repr(C)]
pub struct NrtTensor {
    _private: [u8; 0],
}

/// `nrt_tensor_set_t` is `void` in the headers.
pub type NrtTensorSet = c_void;

/// `nrt_tensor_placement_t`.
pub mod placement {
    pub const DEVICE: u32 = 0;
    /// Deprecated by AWS, at most 4 MB.
    pub const HOST: u32 = 1;
    /// Host memory.
    pub const VIRTUAL: u32 = 2;
}

/// `nrt_framework_type_t`: inflight calls the runtime without a framework.
pub const NRT_FRAMEWORK_TYPE_NO_FW: u32 = 1;

/// `nrt_tensor_usage_t`.
pub mod usage {
    pub const INPUT: u32 = 0;
    pub const OUTPUT: u32 = 1;
}

/// `nrt_dtype_t` in the hardware numbering of SDK 2.28 on.
pub mod dtype {
    pub const UNKNOWN: u32 = 0x0;
    pub const UINT64: u32 = 0x1;
    pub const INT8: u32 = 0x2;
    pub const UINT8: u32 = 0x3;
    pub const INT16: u32 = 0x4;
    pub const UINT16: u32 = 0x5;
    pub const BFLOAT16: u32 = 0x6;
    pub const FLOAT16: u32 = 0x7;
    pub const INT32: u32 = 0x8;
    pub const UINT32: u32 = 0x9;
    pub const FLOAT32: u32 = 0xA;
    pub const FP32R: u32 = 0xB;
    pub const INT64: u32 = 0xC;
    pub const FP8_E3: u32 = 0xD;
    pub const FP8_E4: u32 = 0xE;
    pub const FP8_E5: u32 = 0xF;

    /// Bytes per element, `None` for codes without a fixed size here.
    pub fn size(code: u32) -> Option<usize> {
        match code {
            INT8 | UINT8 | FP8_E3 | FP8_E4 | FP8_E5 => Some(1),
            INT16 | UINT16 | BFLOAT16 | FLOAT16 => Some(2),
            INT32 | UINT32 | FLOAT32 | FP32R => Some(4),
            INT64 | UINT64 => Some(8),
            _ => None,
        }
    }
}

/// `NRT_TENSOR_NAME_MAX`.
pub const NRT_TENSOR_NAME_MAX: usize = 256;

/// `nrt_tensor_info_t` (`nrt_experimental.h`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NrtTensorInfo {
    pub name: [c_char; NRT_TENSOR_NAME_MAX],
    /// An [`usage`] value.
    pub usage: u32,
    /// Bytes.
    pub size: usize,
    /// A [`dtype`] value.
    pub dtype: u32,
    pub shape: *mut u32,
    pub ndim: u32,
}

/// `nrt_tensor_info_array_t`: a count, then that many [`NrtTensorInfo`] in place.
#[repr(C)]
pub struct NrtTensorInfoArray {
    pub tensor_count: u64,
    pub tensor_array: [NrtTensorInfo; 0],
}

/// `nrt_version_t` (`nrt_version.h`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NrtVersion {
    pub rt_major: u64,
    pub rt_minor: u64,
    pub rt_patch: u64,
    pub rt_maintenance: u64,
    pub rt_detail: [c_char; 128],
    pub git_hash: [c_char; 64],
}

pub type NrtInit =
    unsafe extern "C" fn(framework: u32, fw_version: *const c_char, fal_version: *const c_char) -> NrtStatus;
pub type NrtClose = unsafe extern "C" fn();
pub type NrtLoad = unsafe extern "C" fn(
    neff_bytes: *const c_void,
    size: usize,
    vnc: i32,
    vnc_count: i32,
    model: *mut *mut NrtModel,
) -> NrtStatus;
pub type NrtUnload = unsafe extern "C" fn(model: *mut NrtModel) -> NrtStatus;
pub type NrtGetModelTensorInfo =
    unsafe extern "C" fn(model: *mut NrtModel, info: *mut *mut NrtTensorInfoArray) -> NrtStatus;
pub type NrtFreeModelTensorInfo = unsafe extern "C" fn(info: *mut NrtTensorInfoArray) -> NrtStatus;
pub type NrtTensorAllocate = unsafe extern "C" fn(
    placement: u32,
    vnc: c_int,
    size: usize,
    name: *const c_char,
    tensor: *mut *mut NrtTensor,
) -> NrtStatus;
pub type NrtTensorFree = unsafe extern "C" fn(tensor: *mut *mut NrtTensor);
pub type NrtTensorRead =
    unsafe extern "C" fn(tensor: *const NrtTensor, buf: *mut c_void, offset: usize, size: usize) -> NrtStatus;
pub type NrtTensorWrite =
    unsafe extern "C" fn(tensor: *mut NrtTensor, buf: *const c_void, offset: usize, size: usize) -> NrtStatus;
pub type NrtTensorGetSize = unsafe extern "C" fn(tensor: *const NrtTensor) -> usize;
pub type NrtTensorAllocateSlice = unsafe extern "C" fn(
    source: *const NrtTensor,
    offset: usize,
    size: usize,
    name: *const c_char,
    slice: *mut *mut NrtTensor,
) -> NrtStatus;
pub type NrtAllocateTensorSet = unsafe extern "C" fn(set: *mut *mut NrtTensorSet) -> NrtStatus;
pub type NrtAddTensorToTensorSet =
    unsafe extern "C" fn(set: *mut NrtTensorSet, name: *const c_char, tensor: *mut NrtTensor) -> NrtStatus;
pub type NrtDestroyTensorSet = unsafe extern "C" fn(set: *mut *mut NrtTensorSet);
pub type NrtExecute = unsafe extern "C" fn(
    model: *mut NrtModel,
    inputs: *const NrtTensorSet,
    outputs: *mut NrtTensorSet,
) -> NrtStatus;
pub type NrtGetVersion = unsafe extern "C" fn(version: *mut NrtVersion, size: usize) -> NrtStatus;
pub type NrtGetVisibleVncCount = unsafe extern "C" fn(count: *mut u32) -> NrtStatus;
/// Declared in `nrt_status.h` but reported missing from libnrt 2.31's exports:
/// looked up optionally, with `status::name` as the fallback.
pub type NrtGetStatusAsStr = unsafe extern "C" fn(status: NrtStatus) -> *const c_char;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn struct_layouts_match_the_pinned_headers() {
        assert_eq!(size_of::<NrtTensorInfo>(), 296);
        assert_eq!(align_of::<NrtTensorInfo>(), 8);
        assert_eq!(offset_of!(NrtTensorInfo, name), 0);
        assert_eq!(offset_of!(NrtTensorInfo, usage), 256);
        assert_eq!(offset_of!(NrtTensorInfo, size), 264);
        assert_eq!(offset_of!(NrtTensorInfo, dtype), 272);
        assert_eq!(offset_of!(NrtTensorInfo, shape), 280);
        assert_eq!(offset_of!(NrtTensorInfo, ndim), 288);
        assert_eq!(offset_of!(NrtTensorInfoArray, tensor_count), 0);
        assert_eq!(offset_of!(NrtTensorInfoArray, tensor_array), 8);
        assert_eq!(size_of::<NrtVersion>(), 224);
        assert_eq!(offset_of!(NrtVersion, rt_detail), 32);
        assert_eq!(offset_of!(NrtVersion, git_hash), 160);
    }

    #[test]
    fn enum_values_match_the_pinned_headers() {
        assert_eq!((placement::DEVICE, placement::HOST, placement::VIRTUAL), (0, 1, 2));
        assert_eq!(NRT_FRAMEWORK_TYPE_NO_FW, 1);
        assert_eq!((usage::INPUT, usage::OUTPUT), (0, 1));
        // The SDK 2.28 renumbering: not the old FLOAT32 = 1, FLOAT16 = 2, BF16 = 3.
        assert_eq!((dtype::FLOAT32, dtype::FLOAT16, dtype::BFLOAT16), (0xA, 0x7, 0x6));
        assert_eq!((dtype::INT32, dtype::INT64, dtype::UINT64, dtype::FP8_E5), (0x8, 0xC, 0x1, 0xF));
        assert_eq!(dtype::size(dtype::BFLOAT16), Some(2));
        assert_eq!(dtype::size(dtype::INT64), Some(8));
        assert_eq!(dtype::size(dtype::UNKNOWN), None);
    }
}
