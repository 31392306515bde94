//! The Neuron backend's handle owners (`backend::neuron::runtime`) on the libnrt
//! emulator (`neuron/emulator`, built with the workspace; an emulator, not the
//! Neuron runtime): a whole lifecycle frees every handle exactly once, errors
//! carry the call and the status, and a closed runtime is not initialised again.
//!
//! The runtime is one per process and closes for good when its last owner goes, so
//! this is the only test in this binary that initialises it.

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use inflight::backend::neuron::ffi::{dtype, placement, usage};
use inflight::backend::neuron::library::NrtApi;
use inflight::backend::neuron::runtime::Runtime;
use inflight::backend::BackendError;

fn report(lib: &libloading::Library) -> serde_json::Value {
    type Report = unsafe extern "C" fn(*mut c_char, usize) -> usize;
    // SAFETY: the emulator exports this function with this signature.
    let f = unsafe { lib.get::<Report>(b"nrt_emulator_report\0") }.expect("emulator report symbol");
    let mut buf = vec![0 as c_char; 1 << 16];
    // SAFETY: the buffer holds its length; the result is NUL-terminated.
    let text = unsafe {
        f(buf.as_mut_ptr(), buf.len());
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    };
    serde_json::from_str(&text).expect("report is JSON")
}

fn copy_neff() -> Vec<u8> {
    serde_json::json!({
        "format": "inflight-nrt-emulator-neff", "version": 1, "graph": "copy", "program": "copy",
        "tensors": [
            {"name": "x", "usage": "input", "dtype": "float32", "shape": [2, 3]},
            {"name": "kv", "usage": "input", "dtype": "bfloat16", "shape": [4]},
            {"name": "y", "usage": "output", "dtype": "float32", "shape": [2, 3], "copy_of": "x"},
            {"name": "kv_out", "usage": "output", "dtype": "bfloat16", "shape": [4], "aliases": "kv"}
        ]
    })
    .to_string()
    .into_bytes()
}

#[test]
fn handles_are_owned_freed_once_and_the_runtime_closes_for_good() {
    let path = crate::support::neuron::emulator_lib();
    // SAFETY: the emulator is this workspace's own library.
    let lib = unsafe { libloading::Library::new(&path) }.expect("load emulator");
    let rt = Runtime::acquire(NrtApi::open(Some(&path)).expect("open emulator")).expect("init");
    assert!(rt.version().expect("version").contains("emulator"));
    let again = Runtime::acquire(NrtApi::open(Some(&path)).expect("open")).expect("the same runtime");
    drop(again);

    let model = rt.load(&copy_neff(), -1, -1).expect("load");
    let info = model.tensor_info().expect("tensor info");
    let names: Vec<_> =
        info.iter().map(|t| (t.name.as_str(), t.usage, t.size, t.dtype, t.shape.clone())).collect();
    assert_eq!(
        names,
        vec![
            ("x", usage::INPUT, 24, dtype::FLOAT32, vec![2, 3]),
            ("kv", usage::INPUT, 8, dtype::BFLOAT16, vec![4]),
            ("y", usage::OUTPUT, 24, dtype::FLOAT32, vec![2, 3]),
            ("kv_out", usage::OUTPUT, 8, dtype::BFLOAT16, vec![4]),
        ]
    );

    let x = Arc::new(rt.tensor(placement::DEVICE, 0, 24, "x").expect("x"));
    let kv = Arc::new(rt.tensor(placement::DEVICE, 0, 8, "kv").expect("kv"));
    let y = Arc::new(rt.tensor(placement::DEVICE, 0, 24, "y").expect("y"));
    let values: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    x.write(&values, 0).expect("write");
    // Out of range is refused before libnrt sees it.
    assert!(matches!(x.write(&values, 4), Err(BackendError::InvalidStep(_))));

    let mut inputs = rt.tensor_set().expect("set");
    inputs.add("x", &x).expect("bind x");
    let mut outputs = rt.tensor_set().expect("set");
    outputs.add("y", &y).expect("bind y");
    outputs.add("kv_out", &kv).expect("bind kv_out");
    // `kv` unbound: the runtime's status comes back with the call's name.
    match model.execute(&inputs, &mut outputs) {
        Err(BackendError::Nrt { op: "nrt_execute", status: 2, message }) => {
            assert_eq!(message, "NRT_INVALID")
        }
        other => panic!("an unbound input executed: {other:?}"),
    }
    inputs.add("kv", &kv).expect("bind kv");
    model.execute(&inputs, &mut outputs).expect("execute");
    let mut got = vec![0u8; 24];
    y.read(&mut got, 0).expect("read");
    assert_eq!(got, values);

    drop((inputs, outputs));
    drop((x, kv, y, model));
    let before_close = report(&lib);
    assert_eq!(before_close["closed"], false, "the runtime closed while an owner held it");
    drop(rt);

    let after = report(&lib);
    assert_eq!(after["closed"], true);
    let misuse: Vec<String> = serde_json::from_value(after["misuse"].clone()).expect("list");
    assert_eq!(misuse.len(), 1, "only the deliberate unbound input: {misuse:?}");
    assert!(misuse[0].contains("input `kv` is not bound"), "{misuse:?}");
    crate::support::neuron::assert_nothing_leaked(&after);

    let Err(e) = Runtime::acquire(NrtApi::open(Some(&path)).expect("open")) else {
        panic!("a closed runtime was initialised again");
    };
    assert!(e.to_string().contains("not initialised twice"), "{e}");
}
