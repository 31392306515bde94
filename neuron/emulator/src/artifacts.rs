//! Writes an artifact folder for the libnrt emulator: what `neuron/compile.py`
//! writes for Inferentia, with the emulator's stand-in NEFFs in place of compiled
//! ones. Same `manifest.json` (v1, `neuron/README.md`), same weights file, config
//! and tokenizer, same tensor names and roles; so `inflight serve --backend neuron
//! --neuron-lib libnrt_emulator.so --model DIR` runs the whole Neuron backend.
//!
//! Weights are f32 in Hugging Face's layout: a GGUF's quantized matrices are
//! dequantized, and its Q/K rows un-permuted from llama.cpp's interleaved RoPE
//! order back to the halves order `config.json` implies.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use inflight::hub::ResolvedModel;
use inflight::model::config::{RopeLayout, RopeScaling};
use inflight::model::weights::hf_name;
use inflight::model::LlamaConfig;

/// The buckets to write.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// Prefill sequence lengths.
    pub prefill: Vec<usize>,
    /// Sequences per prefill execution.
    pub prefill_batch: usize,
    /// Decode batch sizes.
    pub decode: Vec<usize>,
    pub kv_slots: usize,
    pub max_context: usize,
}

/// Writes the folder; returns the manifest as JSON.
pub fn write(model: &Path, out: &Path, buckets: &Buckets) -> Result<Value, String> {
    let resolved =
        if model.is_dir() { ResolvedModel::HfDir(model.into()) } else { ResolvedModel::Gguf(model.into()) };
    let (w, cfg, tokenizer) = inflight::runtime::open(&resolved).map_err(|e| e.to_string())?;
    if cfg.rope_scaling != RopeScaling::None {
        return Err("the emulator's artifacts support models without RoPE scaling".into());
    }
    if buckets.max_context > cfg.max_position {
        return Err(format!("max_context {} beyond the model's {}", buckets.max_context, cfg.max_position));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let err = |e: candle_core::Error| e.to_string();

    // Weights in HF names and layout, f32.
    let mut weights: Vec<(String, Tensor)> = Vec::new();
    let (h, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let matrix = |name: &str, rows: usize, cols: usize, heads: Option<usize>| -> Result<Tensor, String> {
        let mut t = w.dense_matrix(name, rows, cols, &Device::Cpu, DType::F32).map_err(|e| e.to_string())?;
        if let (Some(heads), RopeLayout::Interleaved) = (heads, cfg.rope_layout) {
            let d = cfg.head_dim;
            t = t.reshape((heads, d / 2, 2, cols)).and_then(|t| t.transpose(1, 2)).map_err(err)?;
            t = t.contiguous().and_then(|t| t.reshape((rows, cols))).map_err(err)?;
        }
        Ok(t)
    };
    weights.push((hf_name("token_embd.weight"), matrix("token_embd.weight", v, h, None)?));
    let head = if w.has("output.weight") { "output.weight" } else { "token_embd.weight" };
    weights.push(("lm_head.weight".into(), matrix(head, v, h, None)?));
    for i in 0..cfg.num_layers {
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        for (n, rows, cols, heads) in [
            ("attn_q.weight", q, h, Some(cfg.num_heads)),
            ("attn_k.weight", kv, h, Some(cfg.num_kv_heads)),
            ("attn_v.weight", kv, h, None),
            ("attn_output.weight", h, q, None),
            ("ffn_gate.weight", f, h, None),
            ("ffn_up.weight", f, h, None),
            ("ffn_down.weight", h, f, None),
        ] {
            let name = format!("blk.{i}.{n}");
            weights.push((hf_name(&name), matrix(&name, rows, cols, heads)?));
        }
    }
    for name in ["output_norm.weight".to_string()].into_iter().chain(
        (0..cfg.num_layers)
            .flat_map(|i| [format!("blk.{i}.attn_norm.weight"), format!("blk.{i}.ffn_norm.weight")]),
    ) {
        let values = w.vector(&name, h).map_err(|e| e.to_string())?;
        weights.push((hf_name(&name), Tensor::from_vec(values, h, &Device::Cpu).map_err(err)?));
    }
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let map: std::collections::HashMap<String, Tensor> = weights.iter().cloned().collect();
    candle_core::safetensors::save(&map, out.join("model.safetensors")).map_err(err)?;

    let config = hf_config(&cfg);
    std::fs::write(out.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    tokenizer.save_hf_dir(out).map_err(|e| e.to_string())?;

    let mut graphs = Vec::new();
    let shapes = |kind: &str, batch: usize, seq_len: usize| (kind.to_string(), batch, seq_len);
    let specs = buckets
        .prefill
        .iter()
        .map(|&len| shapes("prefill", buckets.prefill_batch, len))
        .chain(buckets.decode.iter().map(|&b| shapes("decode", b, 1)));
    for (kind, batch, seq_len) in specs {
        let name = format!("{kind}_{batch}x{seq_len}");
        let (manifest_graph, neff) = graph(&name, &kind, batch, seq_len, &cfg, &config, &weights, buckets);
        std::fs::write(out.join(format!("{name}.neff")), neff.to_string()).map_err(|e| e.to_string())?;
        graphs.push(manifest_graph);
    }
    let manifest = json!({
        "format": "inflight-neuron-artifacts", "version": 1,
        "config": "config.json", "tokenizer": "tokenizer.json", "weights": "model.safetensors",
        "tensor_parallel": 1, "max_context": buckets.max_context, "kv_slots": buckets.kv_slots,
        "graphs": graphs,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(manifest)
}

fn hf_config(cfg: &LlamaConfig) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position, "tie_word_embeddings": false,
    })
}

/// One graph: its manifest entry and its stand-in NEFF.
#[allow(clippy::too_many_arguments)]
fn graph(
    name: &str,
    kind: &str,
    batch: usize,
    seq_len: usize,
    cfg: &LlamaConfig,
    config: &Value,
    weights: &[(String, Tensor)],
    buckets: &Buckets,
) -> (Value, Value) {
    let state = [buckets.kv_slots, cfg.num_kv_heads, buckets.max_context, cfg.head_dim];
    let mut inputs = vec![
        json!({"name": "token_ids", "dtype": "int32", "shape": [batch, seq_len], "role": "token_ids"}),
        json!({"name": "positions", "dtype": "int32", "shape": [batch, seq_len], "role": "positions"}),
        json!({"name": "slot_ids", "dtype": "int32", "shape": [batch], "role": "slot_ids"}),
    ];
    let mut outputs = vec![
        json!({"name": "logits", "dtype": "float32", "shape": [batch, cfg.vocab_size], "role": "logits"}),
    ];
    let mut kv = Vec::new();
    for l in 0..cfg.num_layers {
        let pair = [format!("kv.{l}.k"), format!("kv.{l}.v")];
        for n in &pair {
            inputs.push(json!({"name": n, "dtype": "float32", "shape": state, "role": "kv_state"}));
            outputs.push(json!({"name": format!("{n}.out"), "dtype": "float32", "shape": state, "role": "kv_state", "aliases": n}));
        }
        kv.push(pair);
    }
    let mut bind_weights = serde_json::Map::new();
    for (n, t) in weights {
        inputs.push(json!({"name": n, "dtype": "float32", "shape": t.dims(), "role": "weight", "weight": n}));
        bind_weights.insert(n.clone(), json!(n));
    }
    let entry = json!({
        "name": name, "kind": kind, "neff": format!("{name}.neff"), "batch": batch, "seq_len": seq_len,
        "inputs": inputs, "outputs": outputs,
    });
    let usage = |list: &Vec<Value>, usage: &str| -> Vec<Value> {
        list.iter()
            .map(|t| {
                let mut t = t.clone();
                let o = t.as_object_mut().expect("object");
                o.remove("role");
                o.remove("weight");
                o.insert("usage".into(), json!(usage));
                t
            })
            .collect()
    };
    let mut tensors = usage(&inputs, "input");
    tensors.extend(usage(&outputs, "output"));
    let neff = json!({
        "format": "inflight-nrt-emulator-neff", "version": 1, "graph": name, "tensors": tensors,
        "program": {"llama": {
            "kind": kind, "batch": batch, "seq_len": seq_len, "slots": buckets.kv_slots,
            "max_context": buckets.max_context, "config": config,
            "bind": {"token_ids": "token_ids", "positions": "positions", "slot_ids": "slot_ids", "logits": "logits",
                     "kv": kv, "weights": bind_weights}
        }}
    });
    (entry, neff)
}
