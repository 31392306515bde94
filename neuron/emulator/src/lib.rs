//! **A libnrt emulator, not the Neuron runtime.** It exports libnrt's C symbols
//! with the signatures, enum values and struct layouts of the Neuron SDK 2.28
//! headers (the ones inflight's `backend::neuron::ffi` pins), over host memory, so
//! inflight's Neuron backend can be run and tested where no Inferentia exists.
//!
//! It is strict where real hardware punishes mistakes: a call before `nrt_init` or
//! after `nrt_close`, a second init, a handle freed twice or used after its free, a
//! tensor freed while a set names it, a read or write out of bounds, an execute
//! with a missing, unknown or wrongly sized tensor, a KV-state output not bound to
//! its own input: each returns the status libnrt would (or `NRT_INVALID` where the
//! real one is not documented) and is counted as misuse. `nrt_close` records what
//! was still alive (leaks). `nrt_emulator_report` (not a libnrt symbol) returns
//! the counts as JSON for tests.
//!
//! Its stand-in for a NEFF is a small JSON file (`Neff`): the graph's name and
//! tensors (name, input/output, dtype, shape, which input an output aliases). What
//! a graph computes is its `program`; this version knows `copy` (each output with
//! `copy_of` gets that input's bytes), enough to exercise loading, binding and
//! execution; the prefill and decode graphs of a model are the next step.
//!
//! `INFLIGHT_NRT_EMULATOR_NO_COMPUTE=1` (read at `nrt_init`) skips the model in
//! llama graphs, for measuring a caller's host-side cost per step. Fault injection,
//! read at `nrt_init`: `INFLIGHT_NRT_EMULATOR_FAULTS` lists which
//! executes fail how (`3:busy,5:resource,6:timeout,7:nan`, counting from 1), and
//! `INFLIGHT_NRT_EMULATOR_LOAD_FAULT=not_enough_nc` fails every load.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;

pub mod artifacts;
pub mod llama;

pub mod status {
    pub const SUCCESS: u32 = 0;
    pub const FAILURE: u32 = 1;
    pub const INVALID: u32 = 2;
    pub const INVALID_HANDLE: u32 = 3;
    pub const RESOURCE: u32 = 4;
    pub const TIMEOUT: u32 = 5;
    pub const LOAD_NOT_ENOUGH_NC: u32 = 9;
    pub const UNINITIALIZED: u32 = 13;
    pub const CLOSED: u32 = 14;
    pub const EXEC_BAD_INPUT: u32 = 1002;
    pub const EXEC_COMPLETED_WITH_NUM_ERR: u32 = 1003;
    pub const EXEC_NC_BUSY: u32 = 1005;
}
use status::*;

/// `nrt_tensor_info_t`.
#[repr(C)]
pub struct NrtTensorInfo {
    pub name: [c_char; 256],
    pub usage: u32,
    pub size: usize,
    pub dtype: u32,
    pub shape: *mut u32,
    pub ndim: u32,
}

/// `nrt_tensor_info_array_t`: the count, then the infos in place.
#[repr(C)]
pub struct NrtTensorInfoArray {
    pub tensor_count: u64,
    pub tensor_array: [NrtTensorInfo; 0],
}

/// `nrt_version_t`.
#[repr(C)]
pub struct NrtVersion {
    pub rt_major: u64,
    pub rt_minor: u64,
    pub rt_patch: u64,
    pub rt_maintenance: u64,
    pub rt_detail: [c_char; 128],
    pub git_hash: [c_char; 64],
}

/// `nrt_dtype_t` codes (SDK 2.28 numbering) and element sizes, by the names the
/// stand-in NEFF uses.
fn dtype(name: &str) -> Option<(u32, usize)> {
    Some(match name {
        "bfloat16" => (0x6, 2),
        "float16" => (0x7, 2),
        "int32" => (0x8, 4),
        "uint32" => (0x9, 4),
        "float32" => (0xA, 4),
        "int64" => (0xC, 8),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Usage {
    Input,
    Output,
}

/// The emulator's stand-in for a NEFF file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Neff {
    format: String,
    version: u32,
    graph: String,
    tensors: Vec<NeffTensor>,
    program: Program,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeffTensor {
    name: String,
    usage: Usage,
    dtype: String,
    shape: Vec<u32>,
    /// An output that is the same memory as this input (KV state).
    #[serde(default)]
    aliases: Option<String>,
    /// `copy` program: this output receives that input's bytes.
    #[serde(default)]
    copy_of: Option<String>,
}

impl NeffTensor {
    fn bytes(&self) -> usize {
        let elem = dtype(&self.dtype).map_or(0, |(_, size)| size);
        self.shape.iter().map(|&d| d as usize).product::<usize>() * elem
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Program {
    /// Each output with `copy_of` receives that input's bytes.
    Copy,
    /// A prefill or decode graph of a llama model (`llama`).
    Llama(Box<llama::LlamaProgram>),
}

const NEFF_FORMAT: &str = "inflight-nrt-emulator-neff";

impl Neff {
    fn parse(bytes: &[u8]) -> Result<Neff, String> {
        let neff: Neff = serde_json::from_slice(bytes).map_err(|e| format!("not an emulator NEFF: {e}"))?;
        if neff.format != NEFF_FORMAT || neff.version != 1 {
            return Err(format!(
                "format {:?} version {}, expected {NEFF_FORMAT:?} 1",
                neff.format, neff.version
            ));
        }
        let mut names = std::collections::HashSet::new();
        for t in &neff.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(format!("tensor `{}` declared twice", t.name));
            }
            if dtype(&t.dtype).is_none() {
                return Err(format!("tensor `{}`: unknown dtype `{}`", t.name, t.dtype));
            }
        }
        for t in &neff.tensors {
            for (what, other) in [("aliases", &t.aliases), ("copy_of", &t.copy_of)] {
                let Some(other) = other else { continue };
                let input = neff.tensors.iter().find(|i| &i.name == other && i.usage == Usage::Input);
                match input {
                    Some(i) if t.usage == Usage::Output && i.bytes() == t.bytes() => {}
                    _ => {
                        return Err(format!(
                            "output `{}` {what} `{other}`, which is no input of its size",
                            t.name
                        ))
                    }
                }
            }
        }
        if let Program::Llama(p) = &neff.program {
            neff.check_llama(p)?;
        }
        Ok(neff)
    }

    fn tensor(&self, name: &str, usage: Usage) -> Result<&NeffTensor, String> {
        self.tensors
            .iter()
            .find(|t| t.name == name && t.usage == usage)
            .ok_or_else(|| format!("the llama program names `{name}`, which is no {usage:?} of the graph"))
    }

    fn check_llama(&self, p: &llama::LlamaProgram) -> Result<(), String> {
        let cfg = p.llama_config()?;
        let rows = [p.batch, p.seq_len];
        for (name, shape) in
            [(&p.bind.token_ids, &rows[..]), (&p.bind.positions, &rows[..]), (&p.bind.slot_ids, &rows[..1])]
        {
            let t = self.tensor(name, Usage::Input)?;
            if t.dtype != "int32" || t.shape.iter().map(|&d| d as usize).ne(shape.iter().copied()) {
                return Err(format!("`{name}` must be int32 {shape:?}, is {} {:?}", t.dtype, t.shape));
            }
        }
        let logits = self.tensor(&p.bind.logits, Usage::Output)?;
        if logits.dtype != "float32" || logits.shape != [p.batch as u32, cfg.vocab_size as u32] {
            return Err(format!("`{}` must be float32 [{}, {}]", logits.name, p.batch, cfg.vocab_size));
        }
        if p.kind == llama::Kind::Decode && p.seq_len != 1 {
            return Err("a decode graph has seq_len 1".into());
        }
        if p.bind.kv.len() != cfg.num_layers {
            return Err(format!("{} KV pairs for {} layers", p.bind.kv.len(), cfg.num_layers));
        }
        let state = [p.slots as u32, cfg.num_kv_heads as u32, p.max_context as u32, cfg.head_dim as u32];
        for name in p.bind.kv.iter().flatten() {
            let t = self.tensor(name, Usage::Input)?;
            if t.shape != state || llama::candle_dtype(&t.dtype).is_none_or(|d| !d.is_float()) {
                return Err(format!(
                    "state `{name}` must be a float {state:?}, is {} {:?}",
                    t.dtype, t.shape
                ));
            }
            if !self.tensors.iter().any(|o| o.usage == Usage::Output && o.aliases.as_deref() == Some(name)) {
                return Err(format!("state `{name}` has no output aliasing it"));
            }
        }
        for name in p.bind.weights.values() {
            self.tensor(name, Usage::Input)?;
        }
        Ok(())
    }
}

struct TensorRec {
    storage: Arc<Mutex<Vec<u8>>>,
    offset: usize,
    size: usize,
    name: String,
    /// Host writes so far: a weight's count keys the model built from it.
    writes: u64,
    /// Bound as a model's weight by an execute: writing it again is misuse (weights
    /// go to the device once, at load).
    weight: bool,
    /// A llama graph's KV state as the model code holds it between executes (the
    /// "device" copy); the bytes are stale while it is set, and written back when
    /// the host reads or writes the tensor.
    shadow: Option<Shadow>,
}

struct Shadow {
    pool: candle_core::Tensor,
    /// The graph that left it (a `llama` program), for its geometry.
    neff: Arc<Neff>,
    config: inflight::model::LlamaConfig,
    dtype: candle_core::DType,
}

impl Shadow {
    fn program(&self) -> Option<&llama::LlamaProgram> {
        match &self.neff.program {
            Program::Llama(p) => Some(p),
            Program::Copy => None,
        }
    }
}

/// One `nrt_get_model_tensor_info` allocation: the array and the shapes it points to.
struct InfoAlloc {
    _buffer: Vec<u64>,
    _shapes: Vec<Vec<u32>>,
}

#[derive(Default)]
struct State {
    initialized: bool,
    closed: bool,
    next_handle: usize,
    tensors: HashMap<usize, TensorRec>,
    sets: HashMap<usize, BTreeMap<String, usize>>,
    /// Shared with the KV shadows a model's graphs leave, so an execute clones no
    /// tensor list.
    models: HashMap<usize, Arc<Neff>>,
    infos: HashMap<usize, InfoAlloc>,
    /// Handles freed (or destroyed, or unloaded) once, to tell a double free from garbage.
    freed: std::collections::HashSet<usize>,
    misuse: Vec<String>,
    leaked_at_close: Option<serde_json::Value>,
    executes: u64,
    faults: HashMap<u64, u32>,
    load_fault: Option<u32>,
    /// `INFLIGHT_NRT_EMULATOR_NO_COMPUTE=1`: llama graphs check and bind as usual
    /// but skip the model (zero logits, state untouched), so what remains of a
    /// step's time is the caller's host side and the emulator's bookkeeping.
    no_compute: bool,
    /// Llama models built from bound weights, keyed by the weight tensors (handle,
    /// writes) and the context: every graph bound to the same weights shares one.
    llamas: HashMap<LlamaKey, Arc<inflight::backend::cuda::TensorLlama>>,
}

type LlamaKey = (Vec<(usize, u64)>, usize);

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the emulator's state (created on first use).
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = state();
    f(guard.get_or_insert_with(State::default))
}

impl State {
    fn misuse(&mut self, status: u32, what: String) -> u32 {
        eprintln!("libnrt emulator: misuse: {what}");
        self.misuse.push(what);
        status
    }

    fn handle(&mut self) -> usize {
        // Distinct, non-null, never dereferenced by callers, never reused.
        self.next_handle += 1;
        0x1000 + self.next_handle * 16
    }

    /// `Some(status)` when the runtime is not open for calls.
    fn not_open(&mut self, call: &str) -> Option<u32> {
        if self.closed {
            return Some(self.misuse(CLOSED, format!("{call} after nrt_close")));
        }
        if !self.initialized {
            return Some(self.misuse(UNINITIALIZED, format!("{call} before nrt_init")));
        }
        None
    }

    fn bad_handle(&mut self, call: &str, kind: &str, h: usize) -> u32 {
        let what = if self.freed.contains(&h) { "used after its free" } else { "unknown" };
        self.misuse(INVALID_HANDLE, format!("{call}: {kind} handle {h:#x} {what}"))
    }

    fn live(&self) -> serde_json::Value {
        serde_json::json!({
            "tensors": self.tensors.values().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "tensor_sets": self.sets.len(),
            "models": self.models.values().map(|m| m.graph.clone()).collect::<Vec<_>>(),
            "tensor_infos": self.infos.len(),
        })
    }

    fn read_faults(&mut self) {
        self.no_compute = std::env::var("INFLIGHT_NRT_EMULATOR_NO_COMPUTE").as_deref() == Ok("1");
        let faults = std::env::var("INFLIGHT_NRT_EMULATOR_FAULTS").unwrap_or_default();
        for item in faults.split(',').filter(|s| !s.is_empty()) {
            let parsed = item.split_once(':').and_then(|(n, kind)| {
                let code = match kind {
                    "busy" => EXEC_NC_BUSY,
                    "resource" => RESOURCE,
                    "timeout" => TIMEOUT,
                    "nan" => EXEC_COMPLETED_WITH_NUM_ERR,
                    _ => return None,
                };
                Some((n.parse().ok()?, code))
            });
            match parsed {
                Some((n, code)) => {
                    self.faults.insert(n, code);
                }
                None => eprintln!("libnrt emulator: ignoring fault `{item}` (N:busy|resource|timeout|nan)"),
            }
        }
        self.load_fault = (std::env::var("INFLIGHT_NRT_EMULATOR_LOAD_FAULT").as_deref()
            == Ok("not_enough_nc"))
        .then_some(LOAD_NOT_ENOUGH_NC);
    }
}

/// # Safety
/// `s` is null or a NUL-terminated string.
unsafe fn c_str(s: *const c_char) -> Option<String> {
    (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
}

#[no_mangle]
pub extern "C" fn nrt_init(framework: u32, _fw_version: *const c_char, _fal_version: *const c_char) -> u32 {
    with_state(|s| {
        if s.closed {
            return s.misuse(FAILURE, "nrt_init after nrt_close".into());
        }
        if s.initialized {
            return s.misuse(FAILURE, "nrt_init called twice".into());
        }
        if framework > 3 {
            return s.misuse(INVALID, format!("nrt_init: unknown framework type {framework}"));
        }
        s.read_faults();
        s.initialized = true;
        SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn nrt_close() {
    with_state(|s| {
        if s.not_open("nrt_close").is_some() {
            return;
        }
        s.closed = true;
        let live = s.live();
        let leaked =
            !s.tensors.is_empty() || !s.sets.is_empty() || !s.models.is_empty() || !s.infos.is_empty();
        if leaked {
            eprintln!("libnrt emulator: leaked at nrt_close: {live}");
        }
        // One line a test can find in a process's log: misuse and leaks at close.
        let report = serde_json::json!({"misuse": s.misuse, "leaked_at_close": live, "executes": s.executes});
        eprintln!("libnrt emulator: closed: {report}");
        s.leaked_at_close = Some(live);
    })
}

/// # Safety
/// libnrt's contract: `neff` holds `size` bytes; `model` is writable.
#[no_mangle]
pub unsafe extern "C" fn nrt_load(
    neff: *const c_void,
    size: usize,
    _start_vnc: i32,
    _vnc_count: i32,
    model: *mut *mut c_void,
) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_load") {
            return status;
        }
        if neff.is_null() || model.is_null() {
            return s.misuse(INVALID, "nrt_load: null NEFF or model pointer".into());
        }
        if let Some(fault) = s.load_fault {
            return fault;
        }
        let bytes = std::slice::from_raw_parts(neff.cast::<u8>(), size);
        match Neff::parse(bytes) {
            Ok(parsed) => {
                let h = s.handle();
                s.models.insert(h, Arc::new(parsed));
                *model = h as *mut c_void;
                SUCCESS
            }
            Err(why) => {
                eprintln!("libnrt emulator: nrt_load: {why}");
                INVALID
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn nrt_unload(model: *mut c_void) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_unload") {
            return status;
        }
        let h = model as usize;
        if s.models.remove(&h).is_none() {
            return s.bad_handle("nrt_unload", "model", h);
        }
        s.freed.insert(h);
        SUCCESS
    })
}

/// # Safety
/// libnrt's contract: `info` is writable.
#[no_mangle]
pub unsafe extern "C" fn nrt_get_model_tensor_info(
    model: *mut c_void,
    info: *mut *mut NrtTensorInfoArray,
) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_get_model_tensor_info") {
            return status;
        }
        let h = model as usize;
        let Some(neff) = s.models.get(&h) else {
            return s.bad_handle("nrt_get_model_tensor_info", "model", h);
        };
        let n = neff.tensors.len();
        let words = (8 + n * std::mem::size_of::<NrtTensorInfo>()).div_ceil(8);
        let mut buffer = vec![0u64; words];
        let mut shapes: Vec<Vec<u32>> = neff.tensors.iter().map(|t| t.shape.clone()).collect();
        let array = buffer.as_mut_ptr().cast::<NrtTensorInfoArray>();
        (*array).tensor_count = n as u64;
        let first = std::ptr::addr_of_mut!((*array).tensor_array).cast::<NrtTensorInfo>();
        for (i, t) in neff.tensors.iter().enumerate() {
            let mut name = [0 as c_char; 256];
            for (dst, &b) in name.iter_mut().zip(t.name.as_bytes().iter().take(255)) {
                *dst = b as c_char;
            }
            first.add(i).write(NrtTensorInfo {
                name,
                usage: if t.usage == Usage::Input { 0 } else { 1 },
                size: t.bytes(),
                dtype: dtype(&t.dtype).map_or(0, |(code, _)| code),
                shape: shapes[i].as_mut_ptr(),
                ndim: t.shape.len() as u32,
            });
        }
        s.infos.insert(array as usize, InfoAlloc { _buffer: buffer, _shapes: shapes });
        *info = array;
        SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn nrt_free_model_tensor_info(info: *mut NrtTensorInfoArray) -> u32 {
    with_state(|s| {
        let h = info as usize;
        if s.infos.remove(&h).is_none() {
            return s.bad_handle("nrt_free_model_tensor_info", "tensor info", h);
        }
        s.freed.insert(h);
        SUCCESS
    })
}

/// # Safety
/// libnrt's contract: `name` is null or a C string; `tensor` is writable.
#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_allocate(
    placement: u32,
    _vnc: c_int,
    size: usize,
    name: *const c_char,
    tensor: *mut *mut c_void,
) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_tensor_allocate") {
            return status;
        }
        if tensor.is_null() || placement > 2 {
            return s
                .misuse(INVALID, format!("nrt_tensor_allocate: placement {placement} or null out-pointer"));
        }
        if placement == 1 && size > 4 << 20 {
            return RESOURCE;
        }
        let h = s.handle();
        let name = c_str(name).unwrap_or_default();
        let storage = Arc::new(Mutex::new(vec![0u8; size]));
        s.tensors
            .insert(h, TensorRec { storage, offset: 0, size, name, writes: 0, weight: false, shadow: None });
        *tensor = h as *mut c_void;
        SUCCESS
    })
}

/// # Safety
/// libnrt's contract: `tensor` is null or points to a handle.
#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_free(tensor: *mut *mut c_void) {
    with_state(|s| {
        if tensor.is_null() || (*tensor).is_null() {
            return;
        }
        if s.not_open("nrt_tensor_free").is_some() {
            return;
        }
        let h = *tensor as usize;
        let Some(rec) = s.tensors.remove(&h) else {
            let what = if s.freed.contains(&h) { "freed twice" } else { "unknown" };
            s.misuse(INVALID_HANDLE, format!("nrt_tensor_free: tensor {h:#x} {what}"));
            return;
        };
        s.freed.insert(h);
        let named_by: Vec<String> = s
            .sets
            .values()
            .flat_map(|set| set.iter().filter(|(_, &t)| t == h).map(|(n, _)| n.clone()))
            .collect();
        if !named_by.is_empty() {
            s.misuse(
                INVALID,
                format!("tensor `{}` freed while a tensor set still names it ({named_by:?})", rec.name),
            );
        }
        *tensor = std::ptr::null_mut();
    })
}

/// Writes a shadowed KV state back into its bytes, so the host sees them.
fn flush(s: &mut State, handle: usize) {
    let Some(rec) = s.tensors.get_mut(&handle) else { return };
    let Some(shadow) = rec.shadow.take() else { return };
    let Some(program) = shadow.program() else { return };
    match program.from_pool(&shadow.config, &shadow.pool, shadow.dtype) {
        Ok(bytes) => {
            let mut data = rec.storage.lock().unwrap_or_else(|p| p.into_inner());
            data[rec.offset..rec.offset + rec.size].copy_from_slice(&bytes);
        }
        Err(why) => eprintln!("libnrt emulator: cannot write back the state of `{}`: {why}", rec.name),
    }
}

fn tensor_io(call: &str, tensor: usize, offset: usize, size: usize, f: impl FnOnce(&mut [u8])) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open(call) {
            return status;
        }
        flush(s, tensor);
        let Some(rec) = s.tensors.get(&tensor) else {
            return s.bad_handle(call, "tensor", tensor);
        };
        if offset.checked_add(size).is_none_or(|end| end > rec.size) {
            let what =
                format!("{call}: {size} bytes at {offset} beyond tensor `{}` of {}", rec.name, rec.size);
            return s.misuse(INVALID, what);
        }
        let mut data = rec.storage.lock().unwrap_or_else(|p| p.into_inner());
        let start = rec.offset + offset;
        f(&mut data[start..start + size]);
        SUCCESS
    })
}

/// # Safety
/// libnrt's contract: `buf` holds `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_read(
    tensor: *const c_void,
    buf: *mut c_void,
    offset: usize,
    size: usize,
) -> u32 {
    tensor_io("nrt_tensor_read", tensor as usize, offset, size, |src| {
        std::ptr::copy_nonoverlapping(src.as_ptr(), buf.cast::<u8>(), size)
    })
}

/// # Safety
/// libnrt's contract: `buf` holds `size` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_write(
    tensor: *mut c_void,
    buf: *const c_void,
    offset: usize,
    size: usize,
) -> u32 {
    let status = tensor_io("nrt_tensor_write", tensor as usize, offset, size, |dst| {
        std::ptr::copy_nonoverlapping(buf.cast::<u8>(), dst.as_mut_ptr(), size)
    });
    if status == SUCCESS {
        with_state(|s| {
            let Some(rec) = s.tensors.get_mut(&(tensor as usize)) else { return };
            rec.writes += 1;
            if rec.weight {
                let what = format!("weight `{}` written again after an execute used it", rec.name);
                s.misuse(SUCCESS, what);
            }
        });
    }
    status
}

#[no_mangle]
pub extern "C" fn nrt_tensor_get_size(tensor: *const c_void) -> usize {
    with_state(|s| match s.tensors.get(&(tensor as usize)) {
        Some(rec) => rec.size,
        None => {
            s.bad_handle("nrt_tensor_get_size", "tensor", tensor as usize);
            0
        }
    })
}

/// # Safety
/// libnrt's contract: `name` is null or a C string; `slice` is writable.
#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_allocate_slice(
    source: *const c_void,
    offset: usize,
    size: usize,
    name: *const c_char,
    slice: *mut *mut c_void,
) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_tensor_allocate_slice") {
            return status;
        }
        let Some(src) = s.tensors.get(&(source as usize)) else {
            return s.bad_handle("nrt_tensor_allocate_slice", "tensor", source as usize);
        };
        if slice.is_null() || offset.checked_add(size).is_none_or(|end| end > src.size) {
            return s.misuse(
                INVALID,
                format!("nrt_tensor_allocate_slice: {size} bytes at {offset} beyond the source"),
            );
        }
        let rec = TensorRec {
            storage: Arc::clone(&src.storage),
            offset: src.offset + offset,
            size,
            name: c_str(name).unwrap_or_default(),
            writes: 0,
            weight: false,
            shadow: None,
        };
        let h = s.handle();
        s.tensors.insert(h, rec);
        *slice = h as *mut c_void;
        SUCCESS
    })
}

/// # Safety
/// libnrt's contract: `set` is writable.
#[no_mangle]
pub unsafe extern "C" fn nrt_allocate_tensor_set(set: *mut *mut c_void) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_allocate_tensor_set") {
            return status;
        }
        if set.is_null() {
            return s.misuse(INVALID, "nrt_allocate_tensor_set: null out-pointer".into());
        }
        let h = s.handle();
        s.sets.insert(h, BTreeMap::new());
        *set = h as *mut c_void;
        SUCCESS
    })
}

/// # Safety
/// libnrt's contract: `name` is a C string.
#[no_mangle]
pub unsafe extern "C" fn nrt_add_tensor_to_tensor_set(
    set: *mut c_void,
    name: *const c_char,
    tensor: *mut c_void,
) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_add_tensor_to_tensor_set") {
            return status;
        }
        if !s.tensors.contains_key(&(tensor as usize)) {
            return s.bad_handle("nrt_add_tensor_to_tensor_set", "tensor", tensor as usize);
        }
        let Some(name) = c_str(name) else {
            return s.misuse(INVALID, "nrt_add_tensor_to_tensor_set: null name".into());
        };
        match s.sets.get_mut(&(set as usize)) {
            Some(entries) => {
                entries.insert(name, tensor as usize);
                SUCCESS
            }
            None => s.bad_handle("nrt_add_tensor_to_tensor_set", "tensor set", set as usize),
        }
    })
}

/// # Safety
/// libnrt's contract: `set` is null or points to a handle.
#[no_mangle]
pub unsafe extern "C" fn nrt_destroy_tensor_set(set: *mut *mut c_void) {
    with_state(|s| {
        if set.is_null() || (*set).is_null() || s.not_open("nrt_destroy_tensor_set").is_some() {
            return;
        }
        let h = *set as usize;
        if s.sets.remove(&h).is_none() {
            s.bad_handle("nrt_destroy_tensor_set", "tensor set", h);
            return;
        }
        s.freed.insert(h);
        *set = std::ptr::null_mut();
    })
}

/// Checks that `set` binds exactly the NEFF's tensors of `usage`, each with its
/// declared byte size; returns the bound tensor of each name.
fn bindings(
    s: &mut State,
    neff_tensors: &[NeffTensor],
    usage: Usage,
    set: usize,
) -> Result<HashMap<String, usize>, u32> {
    let kind = if usage == Usage::Input { "input" } else { "output" };
    let Some(entries) = s.sets.get(&set).cloned() else {
        return Err(s.bad_handle("nrt_execute", "tensor set", set));
    };
    for name in entries.keys() {
        if !neff_tensors.iter().any(|t| t.usage == usage && &t.name == name) {
            return Err(s.misuse(
                INVALID,
                format!("nrt_execute: the {kind} set names `{name}`, which the NEFF has no {kind} of"),
            ));
        }
    }
    let mut bound = HashMap::new();
    for t in neff_tensors.iter().filter(|t| t.usage == usage) {
        let Some(&h) = entries.get(&t.name) else {
            return Err(s.misuse(INVALID, format!("nrt_execute: {kind} `{}` is not bound", t.name)));
        };
        let size = s.tensors.get(&h).map(|r| r.size);
        match size {
            None => return Err(s.bad_handle("nrt_execute", "tensor", h)),
            Some(size) if size != t.bytes() => {
                let what = format!(
                    "nrt_execute: {kind} `{}` is bound to {size} bytes, the NEFF's is {}",
                    t.name,
                    t.bytes()
                );
                return Err(s.misuse(INVALID, what));
            }
            Some(_) => {}
        }
        bound.insert(t.name.clone(), h);
    }
    Ok(bound)
}

fn same_memory(a: &TensorRec, b: &TensorRec) -> bool {
    Arc::ptr_eq(&a.storage, &b.storage) && a.offset == b.offset && a.size == b.size
}

#[no_mangle]
pub extern "C" fn nrt_execute(model: *mut c_void, inputs: *const c_void, outputs: *mut c_void) -> u32 {
    with_state(|s| {
        if let Some(status) = s.not_open("nrt_execute") {
            return status;
        }
        let Some(neff) = s.models.get(&(model as usize)).map(Arc::clone) else {
            return s.bad_handle("nrt_execute", "model", model as usize);
        };
        let tensors = &neff.tensors;
        let ins = match bindings(s, tensors, Usage::Input, inputs as usize) {
            Ok(b) => b,
            Err(status) => return status,
        };
        let outs = match bindings(s, tensors, Usage::Output, outputs as usize) {
            Ok(b) => b,
            Err(status) => return status,
        };
        for t in tensors.iter().filter(|t| t.usage == Usage::Output) {
            if let Some(input) = &t.aliases {
                if !same_memory(&s.tensors[&outs[&t.name]], &s.tensors[&ins[input]]) {
                    let what =
                        format!("nrt_execute: state output `{}` is not bound to its input `{input}`", t.name);
                    return s.misuse(INVALID, what);
                }
            }
        }
        s.executes += 1;
        let fault = s.faults.get(&s.executes).copied();
        if let Some(code) = fault.filter(|&c| c != EXEC_COMPLETED_WITH_NUM_ERR) {
            return code;
        }
        if let Program::Llama(p) = &neff.program {
            let status = run_llama(s, &neff, p, &ins, &outs);
            if status != SUCCESS || fault != Some(EXEC_COMPLETED_WITH_NUM_ERR) {
                return status;
            }
        } else {
            for &h in ins.values().chain(outs.values()) {
                flush(s, h);
            }
            copy_outputs(s, tensors, &ins, &outs);
        }
        if fault == Some(EXEC_COMPLETED_WITH_NUM_ERR) {
            // NaN in the results (the state outputs alias inputs and are left as the
            // graph wrote them).
            for t in tensors
                .iter()
                .filter(|t| t.usage == Usage::Output && t.dtype == "float32" && t.aliases.is_none())
            {
                flush(s, outs[&t.name]);
                let dst = &s.tensors[&outs[&t.name]];
                let mut data = dst.storage.lock().unwrap_or_else(|p| p.into_inner());
                for v in data[dst.offset..dst.offset + dst.size].chunks_exact_mut(4) {
                    v.copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }
            return EXEC_COMPLETED_WITH_NUM_ERR;
        }
        SUCCESS
    })
}

/// The `copy` program: each output with `copy_of` receives that input's bytes.
fn copy_outputs(
    s: &State,
    tensors: &[NeffTensor],
    ins: &HashMap<String, usize>,
    outs: &HashMap<String, usize>,
) {
    for t in tensors.iter().filter(|t| t.usage == Usage::Output) {
        let dst = &s.tensors[&outs[&t.name]];
        let bytes = match &t.copy_of {
            Some(input) => {
                let src = &s.tensors[&ins[input]];
                let data = src.storage.lock().unwrap_or_else(|p| p.into_inner());
                data[src.offset..src.offset + src.size].to_vec()
            }
            None => continue,
        };
        let mut data = dst.storage.lock().unwrap_or_else(|p| p.into_inner());
        data[dst.offset..dst.offset + dst.size].copy_from_slice(&bytes);
    }
}

fn buffer(s: &State, decl: &NeffTensor, handle: usize) -> llama::Buffer {
    let rec = &s.tensors[&handle];
    let data = rec.storage.lock().unwrap_or_else(|p| p.into_inner());
    llama::Buffer {
        bytes: data[rec.offset..rec.offset + rec.size].to_vec(),
        dtype: llama::candle_dtype(&decl.dtype).unwrap_or(candle_core::DType::U8),
        shape: decl.shape.iter().map(|&d| d as usize).collect(),
    }
}

fn store(s: &State, handle: usize, bytes: &[u8]) {
    let rec = &s.tensors[&handle];
    let mut data = rec.storage.lock().unwrap_or_else(|p| p.into_inner());
    data[rec.offset..rec.offset + rec.size].copy_from_slice(bytes);
}

/// Runs a llama graph on bound tensors (already checked by name and size): the
/// model is built from the weight tensors once and rebuilt only if they change.
fn run_llama(
    s: &mut State,
    neff: &Arc<Neff>,
    p: &llama::LlamaProgram,
    ins: &HashMap<String, usize>,
    outs: &HashMap<String, usize>,
) -> u32 {
    let decl = |name: &str| neff.tensors.iter().find(|t| t.name == name && t.usage == Usage::Input);
    if s.no_compute {
        let size = s.tensors[&outs[&p.bind.logits]].size;
        store(s, outs[&p.bind.logits], &vec![0u8; size]);
        return SUCCESS;
    }
    let weights_key: Vec<(usize, u64)> =
        p.bind.weights.values().map(|n| (ins[n], s.tensors[&ins[n]].writes)).collect();
    let key = (weights_key, p.max_context);
    let llama = match s.llamas.get(&key).map(Arc::clone) {
        Some(m) => m,
        None => {
            let weights = p
                .bind
                .weights
                .iter()
                .filter_map(|(hf, n)| Some((hf.clone(), buffer(s, decl(n)?, ins[n]))))
                .collect();
            match p.build_model(&weights) {
                Ok(m) => {
                    let m = Arc::new(m);
                    // Models of earlier weights go: nothing binds them any more.
                    s.llamas.clear();
                    s.llamas.insert(key, Arc::clone(&m));
                    m
                }
                Err(why) => return s.misuse(INVALID, format!("nrt_execute: the bound weights: {why}")),
            }
        }
    };
    for n in p.bind.weights.values() {
        if let Some(rec) = s.tensors.get_mut(&ins[n]) {
            rec.weight = true;
        }
    }
    let names = [&p.bind.token_ids, &p.bind.positions, &p.bind.slot_ids];
    let inputs = names.into_iter().filter_map(|n| Some((n.clone(), buffer(s, decl(n)?, ins[n])))).collect();
    let config = llama.config().clone();
    let mut state = Vec::with_capacity(p.bind.kv.len());
    for pair in &p.bind.kv {
        let mut tensors = Vec::with_capacity(2);
        for name in pair {
            let h = ins[name];
            let shadow = s.tensors.get_mut(&h).and_then(|r| r.shadow.take());
            let pool = match shadow {
                Some(sh)
                    if sh.program().is_some_and(|q| q.slots == p.slots && q.max_context == p.max_context) =>
                {
                    sh.pool
                }
                other => {
                    if let Some(sh) = other {
                        s.tensors.get_mut(&h).expect("bound").shadow = Some(sh);
                        flush(s, h);
                    }
                    let Some(d) = decl(name) else { return INVALID };
                    match p.to_pool(&config, &buffer(s, d, h)) {
                        Ok(t) => t,
                        Err(why) => return s.misuse(INVALID, format!("nrt_execute: state `{name}`: {why}")),
                    }
                }
            };
            tensors.push(pool);
        }
        let v = tensors.pop().expect("two");
        let k = tensors.pop().expect("two");
        state.push([k, v]);
    }
    match p.run(&llama, &inputs, state) {
        Ok((logits, state)) => {
            store(s, outs[&p.bind.logits], &logits);
            // The state outputs alias their inputs (checked above): one memory,
            // kept in the model code's layout until the host looks at it.
            for ([k, v], new) in p.bind.kv.iter().zip(state) {
                for (name, pool) in [k, v].into_iter().zip(new) {
                    let dtype = decl(name)
                        .and_then(|d| llama::candle_dtype(&d.dtype))
                        .unwrap_or(candle_core::DType::F32);
                    let shadow = Shadow { pool, neff: Arc::clone(neff), config: config.clone(), dtype };
                    if let Some(rec) = s.tensors.get_mut(&ins[name]) {
                        rec.shadow = Some(shadow);
                    }
                }
            }
            SUCCESS
        }
        Err(why) => {
            eprintln!("libnrt emulator: nrt_execute: {why}");
            EXEC_BAD_INPUT
        }
    }
}

/// # Safety
/// libnrt's contract: `version` holds `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn nrt_get_version(version: *mut NrtVersion, size: usize) -> u32 {
    if version.is_null() || size < std::mem::size_of::<NrtVersion>() {
        return INVALID;
    }
    let mut detail = [0 as c_char; 128];
    for (dst, &b) in detail.iter_mut().zip(b"inflight libnrt emulator (not the Neuron runtime)") {
        *dst = b as c_char;
    }
    version.write(NrtVersion {
        rt_major: 2,
        rt_minor: 30,
        rt_patch: 0,
        rt_maintenance: 0,
        rt_detail: detail,
        git_hash: [0; 64],
    });
    SUCCESS
}

/// # Safety
/// libnrt's contract: `count` is writable.
#[no_mangle]
pub unsafe extern "C" fn nrt_get_visible_vnc_count(count: *mut u32) -> u32 {
    if count.is_null() {
        return INVALID;
    }
    // An inf2.xlarge's two NeuronCores.
    *count = 2;
    SUCCESS
}

/// Not a libnrt symbol: the emulator's counts as JSON (misuse, what is alive, what
/// was alive at `nrt_close`, executes), written to `buf` (NUL-terminated, cut at
/// `len`). Returns the full length, so a caller can retry with a larger buffer.
///
/// # Safety
/// `buf` is null or holds `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn nrt_emulator_report(buf: *mut c_char, len: usize) -> usize {
    let report = with_state(|s| {
        serde_json::json!({
            "emulator": "inflight libnrt emulator (not the Neuron runtime)",
            "initialized": s.initialized,
            "closed": s.closed,
            "misuse": s.misuse,
            "live": s.live(),
            "leaked_at_close": s.leaked_at_close,
            "executes": s.executes,
        })
        .to_string()
    });
    if !buf.is_null() && len > 0 {
        let n = report.len().min(len - 1);
        std::ptr::copy_nonoverlapping(report.as_ptr().cast::<c_char>(), buf, n);
        *buf.add(n) = 0;
    }
    report.len() + 1
}

/// Not a libnrt symbol: forgets everything (for the emulator's own tests, which
/// share one process).
#[no_mangle]
pub extern "C" fn nrt_emulator_reset() {
    *state() = None;
}

#[cfg(test)]
mod tests;
