//! `NeuronBackend`: a folder of compiled graphs (`manifest.json`) run through
//! libnrt. At load, every graph's NEFF is loaded and its tensors checked against
//! the manifest; the weights and the KV state are allocated on the device once and
//! shared by every graph (a weight by its name in the weights file, a KV state by
//! its tensor name); each graph's own inputs and logits are allocated once. A step
//! writes ids, positions and slot ids into the smallest graph that holds it,
//! executes with the sets bound at load (prefill and decode rows apart) and reads
//! logits.
//!
//! Static shapes: one KV slot per sequence, which the scheduler sees as one block
//! of `max_context` tokens (`block_size = max_context`, `num_blocks = kv_slots`),
//! so a sequence's slot is its first block id. No prefix caching.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};

use super::ffi::{dtype as nrt_dtype, placement, usage};
use super::library::NrtApi;
use super::manifest::{Dtype, Graph, GraphKind, Manifest, Role, TensorSpec};
use super::runtime::{Model, Runtime, Tensor, TensorSet};
use super::status;
use crate::backend::{
    validate_step, Backend, BackendError, BackendInfo, Logits, SeqStep, StepBatch, StepLimits,
};
use crate::model::{ModelError, WeightSource};

/// How often an execute refused with `NRT_EXEC_NC_BUSY` is tried again, and the
/// first wait (doubling after each try).
const BUSY_RETRIES: u32 = 6;
const BUSY_FIRST_WAIT: Duration = Duration::from_millis(1);

struct LoadedGraph {
    spec: Graph,
    model: Model,
    /// The graph's own tensors by name: ids, positions, slot ids, sampling
    /// parameters, logits.
    io: HashMap<String, Arc<Tensor>>,
    /// Every input and output bound once, at load: a step only writes and reads.
    sets: (TensorSet, TensorSet),
}

pub struct NeuronBackend {
    info: BackendInfo,
    timings: HostTimings,
    /// The graphs, whose sets hold the weights and KV state they share.
    graphs: Vec<LoadedGraph>,
    // Last: the runtime closes only after every handle above is freed (each holds
    // it too; this keeps the order plain).
    _runtime: Arc<Runtime>,
}

/// The host's share of the executes, summed and logged (debug level) every
/// [`HostTimings::EVERY`] executes: writing inputs and reading logits, and the
/// execute itself for comparison. (Binding costs nothing per step: the sets are
/// built at load.)
#[derive(Default)]
struct HostTimings {
    executes: u32,
    write: Duration,
    execute: Duration,
    read: Duration,
}

impl HostTimings {
    const EVERY: u32 = 256;

    fn record(&mut self, write: Duration, execute: Duration, read: Duration) {
        self.executes += 1;
        self.write += write;
        self.execute += execute;
        self.read += read;
        if self.executes == Self::EVERY {
            let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6 / self.executes as f64);
            tracing::debug!(
                executes = self.executes,
                write_us = us(self.write),
                read_us = us(self.read),
                execute_us = us(self.execute),
                "neuron host timings per execute"
            );
            *self = Self::default();
        }
    }
}

fn unavailable(message: String) -> BackendError {
    BackendError::Unavailable(message)
}

fn element_size(d: Dtype) -> usize {
    match d {
        Dtype::Int32 | Dtype::Float32 => 4,
        Dtype::Int64 => 8,
        Dtype::Float16 | Dtype::Bfloat16 => 2,
    }
}

fn nrt_code(d: Dtype) -> u32 {
    match d {
        Dtype::Int32 => nrt_dtype::INT32,
        Dtype::Int64 => nrt_dtype::INT64,
        Dtype::Float32 => nrt_dtype::FLOAT32,
        Dtype::Float16 => nrt_dtype::FLOAT16,
        Dtype::Bfloat16 => nrt_dtype::BFLOAT16,
    }
}

fn bytes_of(t: &TensorSpec) -> usize {
    t.shape.iter().product::<usize>() * element_size(t.dtype)
}

fn ints(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl NeuronBackend {
    /// Loads the artifacts in `dir` through the libnrt `api`.
    pub fn load(dir: &Path, api: NrtApi, limits: &StepLimits) -> Result<Self, BackendError> {
        let manifest = Manifest::load(dir)?;
        if manifest.tensor_parallel != 1 {
            return Err(unavailable(format!(
                "tensor_parallel {} needs nrt_load_collectives across NeuronCores, which is planned; compile with \
                 tensor parallel 1",
                manifest.tensor_parallel
            )));
        }
        if manifest.graphs.iter().any(|g| g.outputs.iter().any(|t| t.role == Role::SampledTokens)) {
            return Err(unavailable(
                "graphs that sample on the device are not supported yet; compile with logits".into(),
            ));
        }
        let library = api.path.display().to_string();
        let runtime = Runtime::acquire(api)?;
        let version = runtime.version().unwrap_or_else(|e| format!("unknown version ({e})"));

        // Weights: once each, in the dtype the graphs declare.
        let weights_path = dir.join(&manifest.weights);
        let source = WeightSource::open_safetensors_file(&weights_path)?;
        let mut weights = HashMap::new();
        let mut kv = HashMap::new();
        for t in manifest.graphs.iter().flat_map(|g| &g.inputs) {
            match t.role {
                Role::Weight => {
                    let name = t.weight.clone().unwrap_or_default();
                    if weights.contains_key(&name) {
                        continue;
                    }
                    let bytes = weight_bytes(&source, &name, t)?;
                    let tensor = runtime.tensor(placement::DEVICE, 0, bytes.len(), &name)?;
                    tensor.write(&bytes, 0)?;
                    weights.insert(name, Arc::new(tensor));
                }
                Role::KvState if !kv.contains_key(&t.name) => {
                    let size = bytes_of(t);
                    let tensor = runtime.tensor(placement::DEVICE, 0, size, &t.name)?;
                    tensor.write(&vec![0u8; size], 0)?;
                    kv.insert(t.name.clone(), Arc::new(tensor));
                }
                _ => {}
            }
        }

        let mut graphs = Vec::new();
        for spec in &manifest.graphs {
            let path = dir.join(&spec.neff);
            let neff = std::fs::read(&path)
                .map_err(|e| ModelError::Load { path: path.clone(), message: format!("cannot read: {e}") })?;
            let model = runtime.load(&neff, -1, -1)?;
            check_tensors(&model, spec)?;
            let mut io = HashMap::new();
            let own = |t: &&TensorSpec| !matches!(t.role, Role::Weight | Role::KvState);
            for t in spec.inputs.iter().chain(&spec.outputs).filter(own) {
                io.insert(
                    t.name.clone(),
                    Arc::new(runtime.tensor(placement::DEVICE, 0, bytes_of(t), &t.name)?),
                );
            }
            let sets = bind(&runtime, spec, &io, &weights, &kv)?;
            graphs.push(LoadedGraph { spec: spec.clone(), model, io, sets });
        }

        let vocab_size = manifest
            .graphs
            .iter()
            .flat_map(|g| &g.outputs)
            .find(|t| t.role == Role::Logits)
            .and_then(|t| t.shape.last().copied())
            .unwrap_or(0);
        let mut step = manifest.step_shapes();
        step.max_seqs = step.max_seqs.min(limits.max_batch_seqs.max(1));
        let max_context = limits.max_context.unwrap_or(manifest.max_context).min(manifest.max_context);
        let info = BackendInfo {
            device: format!("neuron (libnrt {version} from {library})"),
            block_size: manifest.max_context,
            num_blocks: manifest.kv_slots,
            max_context,
            vocab_size,
            step,
            prefix_caching: false,
            prompt_logprobs: false,
        };
        // The weights and KV state live on in the graphs' sets, which hold them.
        Ok(Self { info, graphs, timings: HostTimings::default(), _runtime: runtime })
    }

    /// The smallest graph of `kind` that holds `seqs` rows of up to `len` tokens.
    fn pick(&self, kind: GraphKind, seqs: usize, len: usize) -> Result<usize, BackendError> {
        self.graphs
            .iter()
            .enumerate()
            .filter(|(_, g)| g.spec.kind == kind && g.spec.batch >= seqs && g.spec.seq_len >= len)
            .min_by_key(|(_, g)| (g.spec.seq_len, g.spec.batch))
            .map(|(i, _)| i)
            .ok_or_else(|| {
                BackendError::InvalidStep(format!("no {kind:?} graph holds {seqs} sequences of {len} tokens"))
            })
    }

    /// Runs `rows` (indices into `batch`) through one graph of `kind`; returns each
    /// row's logits.
    fn run(
        &mut self,
        kind: GraphKind,
        batch: &StepBatch,
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        let seqs: Vec<&SeqStep> = rows.iter().map(|&i| &batch.seqs[i]).collect();
        let longest = seqs.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
        let gi = self.pick(kind, seqs.len(), longest)?;
        let (b, s) = (self.graphs[gi].spec.batch, self.graphs[gi].spec.seq_len);
        let mut ids = vec![0i32; b * s];
        let mut positions = vec![-1i32; b * s];
        let mut slots = vec![-1i32; b];
        for (row, seq) in seqs.iter().enumerate() {
            for (t, &token) in seq.tokens.iter().enumerate() {
                ids[row * s + t] = token as i32;
                positions[row * s + t] = (seq.start_pos + t) as i32;
            }
            slots[row] = seq.block_table[0] as i32;
        }
        let started = std::time::Instant::now();
        let graph = &self.graphs[gi];
        for t in &graph.spec.inputs {
            let bytes = match t.role {
                Role::TokenIds => ints(&ids),
                Role::Positions => ints(&positions),
                Role::SlotIds => ints(&slots),
                // top-k, top-p, temperature: sampling happens on the host.
                Role::SamplingParams => [1f32; 3].repeat(b).iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => continue,
            };
            graph.io[&t.name].write(&bytes, 0)?;
        }

        let written = started.elapsed();
        let graph = &mut self.graphs[gi];
        let (inputs, outputs) = &mut graph.sets;
        execute_with_retry(&graph.model, inputs, outputs)?;
        let executed = started.elapsed();
        let graph = &self.graphs[gi];
        let logits_spec =
            graph.spec.outputs.iter().find(|t| t.role == Role::Logits).expect("checked at load");
        let vocab = self.info.vocab_size;
        let mut floats = vec![0f32; bytes_of(logits_spec) / 4];
        // SAFETY: any bytes are a valid f32; the runtime's little-endian f32 logits
        // land in the host's own order on the little-endian hosts libnrt runs on.
        let raw =
            unsafe { std::slice::from_raw_parts_mut(floats.as_mut_ptr().cast::<u8>(), floats.len() * 4) };
        graph.io[&logits_spec.name].read(raw, 0)?;
        let done = started.elapsed();
        self.timings.record(written, executed - written, done - executed);
        Ok((0..seqs.len()).map(|row| floats[row * vocab..(row + 1) * vocab].to_vec()).collect())
    }
}

/// A graph's input and output sets: its own tensors, the shared weights (by
/// their name in the weights file) and KV state (each bound as its own output).
fn bind(
    runtime: &Arc<Runtime>,
    spec: &Graph,
    io: &HashMap<String, Arc<Tensor>>,
    weights: &HashMap<String, Arc<Tensor>>,
    kv: &HashMap<String, Arc<Tensor>>,
) -> Result<(TensorSet, TensorSet), BackendError> {
    let mut inputs = runtime.tensor_set()?;
    for t in &spec.inputs {
        let tensor = match t.role {
            Role::Weight => &weights[t.weight.as_deref().unwrap_or_default()],
            Role::KvState => &kv[&t.name],
            _ => &io[&t.name],
        };
        inputs.add(&t.name, tensor)?;
    }
    let mut outputs = runtime.tensor_set()?;
    for t in &spec.outputs {
        let tensor = match (t.role, &t.aliases) {
            (Role::KvState, Some(input)) => &kv[input],
            _ => &io[&t.name],
        };
        outputs.add(&t.name, tensor)?;
    }
    Ok((inputs, outputs))
}

/// Executes, trying again while the NeuronCore is busy (another process or model
/// holds it), with doubling waits; any other failure is returned at once.
fn execute_with_retry(
    model: &Model,
    inputs: &TensorSet,
    outputs: &mut TensorSet,
) -> Result<(), BackendError> {
    let mut wait = BUSY_FIRST_WAIT;
    for attempt in 0..=BUSY_RETRIES {
        match model.execute(inputs, outputs) {
            Err(BackendError::Nrt { status: status::EXEC_NC_BUSY, .. }) if attempt < BUSY_RETRIES => {
                tracing::debug!(attempt, "NeuronCore busy; executing again");
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// Checks a loaded NEFF's tensors against the manifest: every tensor the graph
/// declares exists with its usage, byte size and dtype.
fn check_tensors(model: &Model, spec: &Graph) -> Result<(), BackendError> {
    let actual = model.tensor_info()?;
    let declared =
        spec.inputs.iter().map(|t| (t, usage::INPUT)).chain(spec.outputs.iter().map(|t| (t, usage::OUTPUT)));
    for (t, use_) in declared {
        let Some(a) = actual.iter().find(|a| a.name == t.name && a.usage == use_) else {
            return Err(unavailable(format!("graph `{}`: its NEFF has no tensor `{}`", spec.name, t.name)));
        };
        if a.size != bytes_of(t) || a.dtype != nrt_code(t.dtype) {
            return Err(unavailable(format!(
                "graph `{}`: tensor `{}` is {} bytes of dtype {:#x} in the NEFF, {} bytes of {:?} in the manifest",
                spec.name,
                t.name,
                a.size,
                a.dtype,
                bytes_of(t),
                t.dtype
            )));
        }
    }
    if let Some(extra) =
        actual.iter().find(|a| !spec.inputs.iter().chain(&spec.outputs).any(|t| t.name == a.name))
    {
        return Err(unavailable(format!(
            "graph `{}`: the NEFF's tensor `{}` is not in the manifest",
            spec.name, extra.name
        )));
    }
    Ok(())
}

/// A weight's bytes in the dtype its graph input declares.
fn weight_bytes(source: &WeightSource, name: &str, t: &TensorSpec) -> Result<Vec<u8>, BackendError> {
    let dtype = match t.dtype {
        Dtype::Float32 => DType::F32,
        Dtype::Float16 => DType::F16,
        Dtype::Bfloat16 => DType::BF16,
        other => return Err(unavailable(format!("weight `{name}`: dtype {other:?} is not a float"))),
    };
    let tensor = source.file_tensor(name, &Device::Cpu, dtype)?;
    if tensor.dims() != t.shape.as_slice() {
        return Err(unavailable(format!(
            "weight `{name}` is {:?} in the file, {:?} in the manifest",
            tensor.dims(),
            t.shape
        )));
    }
    Ok(crate::model::weights::le_bytes(&tensor)?)
}

impl Backend for NeuronBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn step(&mut self, batch: &StepBatch) -> Result<Logits, BackendError> {
        if batch.seqs.iter().any(|s| s.all_logits) {
            // Compiled graphs return the last position's logits only.
            return Err(BackendError::InvalidStep(
                "prompt logprobs need every prompt row's logits, which compiled graphs do not return".into(),
            ));
        }
        validate_step(&self.info, batch)?;
        let (decodes, prefills): (Vec<usize>, Vec<usize>) =
            (0..batch.seqs.len()).partition(|&i| batch.seqs[i].is_decode());
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; batch.seqs.len()];
        for (kind, idx) in [(GraphKind::Prefill, prefills), (GraphKind::Decode, decodes)] {
            if idx.is_empty() {
                continue;
            }
            for (i, row) in idx.iter().zip(self.run(kind, batch, &idx)?) {
                rows[*i] = Some(row);
            }
        }
        let data = batch
            .seqs
            .iter()
            .zip(rows)
            .filter(|(s, _)| s.want_logits)
            .flat_map(|(_, r)| r.unwrap_or_default())
            .collect();
        Ok(Logits::for_batch(batch, self.info.vocab_size, data))
    }
}
