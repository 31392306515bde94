//! The emulator's model graphs: a prefill or decode graph of a llama model, run on
//! inflight's own model code (the CUDA backend's tensor forward pass, on candle's
//! CPU device in f32) with the weights and KV state the caller bound as tensors,
//! honouring the graph's static shapes and slot ids.
//!
//! A graph's rows: `token_ids` and `positions` are `[batch, seq_len]` int32, a
//! row's tokens at consecutive positions and its padding at position -1;
//! `slot_ids` is `[batch]` int32, the KV slot of each row (-1: an unused row).
//! Each layer's K and V state is `[slots, kv_heads, max_context, head_dim]` and is
//! updated in place (the outputs alias them). `logits` is `[batch, vocab]` f32:
//! the last real position of each row, zeros for unused rows.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use inflight::backend::cuda::plan::StepPlan;
use inflight::backend::cuda::{DeviceKvPool, TensorLlama};
use inflight::backend::{SeqStep, StepBatch};
use inflight::model::{LlamaConfig, WeightSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Prefill,
    Decode,
}

/// The `llama` program of a stand-in NEFF.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaProgram {
    pub kind: Kind,
    pub batch: usize,
    pub seq_len: usize,
    pub slots: usize,
    pub max_context: usize,
    /// The model's Hugging Face `config.json`.
    pub config: serde_json::Value,
    pub bind: Binding,
}

/// Which of the graph's tensors plays which part.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub token_ids: String,
    pub positions: String,
    pub slot_ids: String,
    pub logits: String,
    /// Per layer, the K and V state inputs (their outputs alias them).
    pub kv: Vec<[String; 2]>,
    /// Hugging Face weight name → the input tensor that holds it.
    pub weights: BTreeMap<String, String>,
}

/// A bound tensor's bytes and declared dtype and shape.
pub struct Buffer {
    pub bytes: Vec<u8>,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Buffer {
    fn tensor(&self) -> candle_core::Result<Tensor> {
        Tensor::from_raw_buffer(&self.bytes, self.dtype, &self.shape, &Device::Cpu)
    }

    fn ints(&self) -> Vec<i32> {
        self.bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

pub fn candle_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        "int64" => DType::I64,
        "int32" | "uint32" => DType::U32,
        _ => return None,
    })
}

impl LlamaProgram {
    pub fn llama_config(&self) -> Result<LlamaConfig, String> {
        LlamaConfig::from_hf_json(&self.config.to_string(), std::path::Path::new("emulated NEFF"))
            .map_err(|e| e.to_string())
    }

    /// Builds the model from the bound weight tensors (by Hugging Face name).
    pub fn build_model(&self, weights: &BTreeMap<String, Buffer>) -> Result<TensorLlama, String> {
        let cfg = self.llama_config()?;
        let mut tensors = std::collections::HashMap::new();
        for (hf, buffer) in weights {
            tensors.insert(hf.clone(), buffer.tensor().map_err(|e| format!("weight `{hf}`: {e}"))?);
        }
        let source = WeightSource::Memory { path: "emulated NEFF weights".into(), tensors };
        TensorLlama::load(&source, cfg, &Device::Cpu, DType::F32, self.max_context).map_err(|e| e.to_string())
    }

    /// A state tensor's bytes (`[slots, kv_heads, max_context, head_dim]`) in the
    /// pool's layout: `[kv_heads, slots * max_context, head_dim]`, f32.
    pub fn to_pool(&self, cfg: &LlamaConfig, state: &Buffer) -> Result<Tensor, String> {
        let err = |e: candle_core::Error| e.to_string();
        let t = state.tensor().and_then(|t| t.to_dtype(DType::F32)).map_err(err)?;
        let t = t.permute((1, 0, 2, 3)).and_then(|t| t.contiguous()).map_err(err)?;
        t.reshape((cfg.num_kv_heads, self.slots * self.max_context, cfg.head_dim)).map_err(err)
    }

    /// The inverse of [`LlamaProgram::to_pool`]: the state's bytes in `dtype`.
    pub fn from_pool(&self, cfg: &LlamaConfig, pool: &Tensor, dtype: DType) -> Result<Vec<u8>, String> {
        let err = |e: candle_core::Error| e.to_string();
        let t = pool
            .reshape((cfg.num_kv_heads, self.slots, self.max_context, cfg.head_dim))
            .and_then(|t| t.permute((1, 0, 2, 3)))
            .and_then(|t| t.contiguous())
            .and_then(|t| t.to_dtype(dtype))
            .map_err(err)?;
        inflight::model::weights::le_bytes(&t).map_err(|e| e.to_string())
    }

    /// Runs the graph on `state` (per layer K and V in the pool's layout, updated in
    /// place); returns the logits bytes, or why the input is bad.
    pub fn run(
        &self,
        model: &TensorLlama,
        inputs: &BTreeMap<String, Buffer>,
        state: Vec<[Tensor; 2]>,
    ) -> Result<(Vec<u8>, Vec<[Tensor; 2]>), String> {
        let get = |name: &String| inputs.get(name).ok_or_else(|| format!("input `{name}` missing"));
        let (ids, positions, slots) = (
            get(&self.bind.token_ids)?.ints(),
            get(&self.bind.positions)?.ints(),
            get(&self.bind.slot_ids)?.ints(),
        );
        let (batch, seq_len) = (self.batch, self.seq_len);
        let mut rows: Vec<(usize, Vec<u32>, usize, [u32; 1])> = Vec::new();
        for b in 0..batch {
            let real: Vec<usize> = (0..seq_len).filter(|&t| positions[b * seq_len + t] >= 0).collect();
            if real.is_empty() || slots[b] < 0 {
                continue;
            }
            let slot = slots[b] as usize;
            let start = positions[b * seq_len + real[0]] as usize;
            let contiguous =
                real.iter().enumerate().all(|(i, &t)| positions[b * seq_len + t] as usize == start + i);
            if slot >= self.slots || !contiguous || start + real.len() > self.max_context {
                return Err(format!(
                    "row {b}: slot {slot} of {}, positions from {start} (consecutive: {contiguous}), {} tokens, \
                     context {}",
                    self.slots,
                    real.len(),
                    self.max_context
                ));
            }
            let tokens = real.iter().map(|&t| ids[b * seq_len + t] as u32).collect();
            rows.push((b, tokens, start, [slot as u32]));
        }
        let (keys, values): (Vec<Tensor>, Vec<Tensor>) = state.into_iter().map(|[k, v]| (k, v)).unzip();
        let pool = DeviceKvPool::from_layers(keys, values, self.max_context);
        let vocab = model.config().vocab_size;
        let mut logits = vec![0f32; batch * vocab];
        if !rows.is_empty() {
            let seqs = rows
                .iter()
                .map(|(b, tokens, start, table)| SeqStep {
                    id: *b as u64,
                    tokens,
                    start_pos: *start,
                    // A context-encoding graph runs prompts; a token-generation graph
                    // (one token a row) generated tokens.
                    prompt_rows: if seq_len > 1 { tokens.len() } else { 0 },
                    block_table: table,
                    want_logits: true,
                    all_logits: false,
                })
                .collect();
            let plan = StepPlan::new(&StepBatch { seqs }, self.max_context);
            let out = model.forward(&plan, &pool).map_err(|e| e.to_string())?;
            for (i, (b, ..)) in rows.iter().enumerate() {
                logits[b * vocab..(b + 1) * vocab].copy_from_slice(&out[i * vocab..(i + 1) * vocab]);
            }
        }
        let (keys, values) = pool.into_layers();
        let state = keys.into_iter().zip(values).map(|(k, v)| [k, v]).collect();
        Ok((logits.iter().flat_map(|v| v.to_le_bytes()).collect(), state))
    }
}
