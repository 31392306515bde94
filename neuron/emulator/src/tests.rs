//! The emulator's own checks: the header layouts it claims, and that each misuse
//! it promises to catch is caught and counted. The tests share one process and
//! one emulator state, so each takes a lock and starts from a reset.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::ptr::null_mut;
use std::sync::Mutex;

use super::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn fresh() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    nrt_emulator_reset();
    guard
}

fn report() -> serde_json::Value {
    let mut buf = vec![0 as c_char; 1 << 16];
    // SAFETY: the buffer holds its length.
    unsafe { nrt_emulator_report(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated by the call.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    serde_json::from_str(&text).expect("report is JSON")
}

fn misuse() -> Vec<String> {
    serde_json::from_value(report()["misuse"].clone()).expect("misuse list")
}

fn neff(tensors: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"format": NEFF_FORMAT, "version": 1, "graph": "g", "tensors": tensors, "program": "copy"})
        .to_string()
        .into_bytes()
}

fn tensor(size: usize, name: &CStr) -> *mut c_void {
    let mut t = null_mut();
    // SAFETY: valid out-pointer and name.
    assert_eq!(unsafe { nrt_tensor_allocate(0, 0, size, name.as_ptr(), &mut t) }, SUCCESS);
    t
}

#[test]
fn layouts_are_the_headers() {
    assert_eq!(size_of::<NrtTensorInfo>(), 296);
    assert_eq!(offset_of!(NrtTensorInfo, usage), 256);
    assert_eq!(offset_of!(NrtTensorInfo, size), 264);
    assert_eq!(offset_of!(NrtTensorInfo, dtype), 272);
    assert_eq!(offset_of!(NrtTensorInfo, shape), 280);
    assert_eq!(offset_of!(NrtTensorInfo, ndim), 288);
    assert_eq!(offset_of!(NrtTensorInfoArray, tensor_array), 8);
    assert_eq!(size_of::<NrtVersion>(), 224);
}

#[test]
fn calls_outside_init_and_close_are_refused() {
    let _g = fresh();
    let mut t = null_mut();
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { nrt_tensor_allocate(0, 0, 4, c"x".as_ptr(), &mut t) }, UNINITIALIZED);
    assert_eq!(nrt_init(1, c"".as_ptr(), c"".as_ptr()), SUCCESS);
    assert_eq!(nrt_init(1, c"".as_ptr(), c"".as_ptr()), FAILURE);
    nrt_close();
    assert_eq!(nrt_init(1, c"".as_ptr(), c"".as_ptr()), FAILURE);
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { nrt_tensor_allocate(0, 0, 4, c"x".as_ptr(), &mut t) }, CLOSED);
    let m = misuse();
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(m[0].contains("before nrt_init") && m[1].contains("twice") && m[2].contains("after nrt_close"));
}

#[test]
fn handles_are_freed_once_and_not_used_after() {
    let _g = fresh();
    assert_eq!(nrt_init(1, c"".as_ptr(), c"".as_ptr()), SUCCESS);
    let mut t = tensor(8, c"a");
    let mut copy = t;
    let mut set = null_mut();
    // SAFETY: live handles, valid pointers throughout.
    unsafe {
        assert_eq!(nrt_tensor_write(t, [1u8; 8].as_ptr().cast(), 0, 8), SUCCESS);
        assert_eq!(nrt_tensor_write(t, [1u8; 8].as_ptr().cast(), 4, 8), INVALID);
        assert_eq!(nrt_allocate_tensor_set(&mut set), SUCCESS);
        assert_eq!(nrt_add_tensor_to_tensor_set(set, c"a".as_ptr(), t), SUCCESS);
        nrt_tensor_free(&mut t);
        assert!(t.is_null());
        nrt_tensor_free(&mut copy);
        let mut buf = [0u8; 8];
        assert_eq!(nrt_tensor_read(copy, buf.as_mut_ptr().cast(), 0, 8), INVALID_HANDLE);
        nrt_destroy_tensor_set(&mut set);
    }
    let m = misuse();
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(m[0].contains("beyond tensor `a`"), "{m:?}");
    assert!(m[1].contains("freed while a tensor set still names it"), "{m:?}");
    assert!(m[2].contains("freed twice"), "{m:?}");
    assert!(m[3].contains("used after its free"), "{m:?}");
    nrt_close();
    assert_eq!(report()["leaked_at_close"]["tensors"], serde_json::json!([]));
}

#[test]
fn execute_binds_by_name_and_size_and_keeps_state_aliased() {
    let _g = fresh();
    assert_eq!(nrt_init(1, c"".as_ptr(), c"".as_ptr()), SUCCESS);
    let bytes = neff(serde_json::json!([
        {"name": "x", "usage": "input", "dtype": "float32", "shape": [2]},
        {"name": "kv", "usage": "input", "dtype": "bfloat16", "shape": [4]},
        {"name": "y", "usage": "output", "dtype": "float32", "shape": [2], "copy_of": "x"},
        {"name": "kv_out", "usage": "output", "dtype": "bfloat16", "shape": [4], "aliases": "kv"},
    ]));
    let mut model = null_mut();
    // SAFETY: the bytes are valid for the call.
    assert_eq!(unsafe { nrt_load(bytes.as_ptr().cast(), bytes.len(), -1, -1, &mut model) }, SUCCESS);
    let (x, kv, y, other) = (tensor(8, c"x"), tensor(8, c"kv"), tensor(8, c"y"), tensor(8, c"other"));
    let (mut ins, mut outs) = (null_mut(), null_mut());
    // SAFETY: live handles and valid pointers throughout.
    unsafe {
        assert_eq!(nrt_allocate_tensor_set(&mut ins), SUCCESS);
        assert_eq!(nrt_allocate_tensor_set(&mut outs), SUCCESS);
        assert_eq!(nrt_tensor_write(x, [1.5f32, -2.0].as_ptr().cast(), 0, 8), SUCCESS);
        nrt_add_tensor_to_tensor_set(ins, c"x".as_ptr(), x);
        // An input left unbound.
        assert_eq!(nrt_execute(model, ins, outs), INVALID);
        nrt_add_tensor_to_tensor_set(ins, c"kv".as_ptr(), kv);
        nrt_add_tensor_to_tensor_set(outs, c"y".as_ptr(), y);
        // State output bound to other memory than its input.
        nrt_add_tensor_to_tensor_set(outs, c"kv_out".as_ptr(), other);
        assert_eq!(nrt_execute(model, ins, outs), INVALID);
        nrt_add_tensor_to_tensor_set(outs, c"kv_out".as_ptr(), kv);
        assert_eq!(nrt_execute(model, ins, outs), SUCCESS);
        let mut got = [0f32; 2];
        assert_eq!(nrt_tensor_read(y, got.as_mut_ptr().cast(), 0, 8), SUCCESS);
        assert_eq!(got, [1.5, -2.0]);
        // A name the NEFF does not have.
        nrt_add_tensor_to_tensor_set(ins, c"z".as_ptr(), other);
        assert_eq!(nrt_execute(model, ins, outs), INVALID);
        nrt_destroy_tensor_set(&mut ins);
        nrt_destroy_tensor_set(&mut outs);
        assert_eq!(nrt_unload(model), SUCCESS);
        assert_eq!(nrt_unload(model), INVALID_HANDLE);
        for mut t in [x, kv, y] {
            nrt_tensor_free(&mut t);
        }
    }
    let m = misuse();
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(m[0].contains("`kv` is not bound") && m[1].contains("not bound to its input `kv`"), "{m:?}");
    assert!(m[2].contains("names `z`") && m[3].contains("used after its free"), "{m:?}");
    nrt_close();
    // `other` was never freed.
    assert_eq!(report()["leaked_at_close"]["tensors"], serde_json::json!(["other"]));
}
