//! The CUDA backend's forward pass on candle's CPU device (its twin: the same
//! code, the same plan, the same KV pool, with f32 instead of bf16) against the
//! CPU backend, step for step: a prefill chunk, a second chunk beside a decode, and
//! decodes together, so every part of a mixed step (row order, KV slots across
//! blocks, the decode group's padding and masks, grouped-query heads, both RoPE
//! layouts) is compared. What only a GPU shows is checked by `benches/gpu/`.

use candle_core::{Device, Tensor};

use inflight::backend::cpu::{CpuBackend, CpuConfig, KvDtype, Llama};
use inflight::backend::cuda::{CudaBackend, CudaConfig, TensorLlama};
use inflight::backend::{Backend, SeqStep, StepBatch, StepLimits};
use inflight::model::{LlamaConfig, WeightSource};

use crate::support::model_path;

/// Both sides compute in f32 from the same f32 weights; they differ only in
/// summation order (blocked kernels against candle's GEMM).
const TOLERANCE: f32 = 2e-3;

fn limits() -> StepLimits {
    StepLimits { max_context: Some(256), ..Default::default() }
}

fn twin(w: &WeightSource, cfg: LlamaConfig) -> CudaBackend {
    let device = Device::Cpu;
    let model = TensorLlama::load(w, cfg, &device, CudaBackend::dtype_for(&device), 256).expect("load twin");
    let config =
        CudaConfig { limits: limits(), block_size: 4, kv_cache_bytes: Some(64 << 20), ..Default::default() };
    CudaBackend::new(model, device, &config).expect("twin backend")
}

fn reference(w: &WeightSource, cfg: LlamaConfig) -> CpuBackend {
    let model = Llama::load(w, cfg).expect("load cpu model");
    let config = CpuConfig {
        limits: limits(),
        block_size: 4,
        kv_cache_bytes: 64 << 20,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    };
    CpuBackend::new(model, &config).expect("cpu backend")
}

/// Runs the same three steps on a backend: A's prompt and B's first chunk; B's
/// second chunk beside A's first decode; both decoding. Block tables are
/// deliberately out of order and cross block boundaries. Returns every logits row.
fn three_steps(be: &mut dyn Backend, a: &[u32], b: &[u32]) -> Vec<Vec<f32>> {
    let (table_a, table_b): (Vec<u32>, Vec<u32>) = ((0..8).rev().collect(), (8..16).collect());
    let split = b.len() / 2;
    let mut rows = Vec::new();
    let mut run = |seqs: Vec<SeqStep>| {
        let batch = StepBatch { seqs };
        let logits = be.step(&batch).expect("step");
        for i in 0..batch.seqs.len() {
            if let Some(r) = logits.row(i) {
                rows.push(r.to_vec());
            }
        }
    };
    let seq = |id, tokens, start_pos, table, want_logits| SeqStep {
        id,
        tokens,
        start_pos,
        // Every chunk here that is not a single token after the prompt is prompt.
        prompt_rows: if tokens.len() > 1 || start_pos == 0 { tokens.len() } else { 0 },
        block_table: table,
        want_logits,
        all_logits: false,
    };
    run(vec![seq(1, a, 0, &table_a, true), seq(2, &b[..split], 0, &table_b, false)]);
    let next_a = [a[0]];
    run(vec![seq(2, &b[split..], split, &table_b, true), seq(1, &next_a, a.len(), &table_a, true)]);
    let (da, db) = ([b[1]], [a[1]]);
    run(vec![seq(1, &da, a.len() + 1, &table_a, true), seq(2, &db, b.len(), &table_b, true)]);
    rows
}

fn max_abs_diff(x: &[Vec<f32>], y: &[Vec<f32>]) -> f32 {
    assert_eq!(x.len(), y.len());
    x.iter().zip(y).flat_map(|(r, s)| r.iter().zip(s).map(|(a, b)| (a - b).abs())).fold(0.0, f32::max)
}

#[test]
fn twin_matches_the_cpu_backend_on_the_default_model() {
    let path = model_path();
    let w = WeightSource::open_gguf(&path).expect("open").with_dequantized_weights();
    let cfg = LlamaConfig::from_gguf(w.gguf_content().expect("gguf"), &path).expect("config");
    assert!(cfg.num_heads > cfg.num_kv_heads, "the default model has grouped-query heads");
    let (a, b): (Vec<u32>, Vec<u32>) =
        ((1..12).map(|i| i * 37).collect(), (1..20).map(|i| i * 101).collect());
    let expected = three_steps(&mut reference(&w, cfg.clone()), &a, &b);
    let got = three_steps(&mut twin(&w, cfg), &a, &b);
    assert_eq!(got.len(), 5);
    let diff = max_abs_diff(&got, &expected);
    assert!(diff < TOLERANCE, "twin and CPU backend logits differ by up to {diff}");
}

/// A small random llama in Hugging Face's layout (RoPE over halves, untied head,
/// two query heads per KV head), written as a safetensors folder.
fn random_hf_model(dir: &std::path::Path) {
    let (h, f, layers, heads, kv_heads, vocab) = (64usize, 96, 2, 4, 2, 300);
    let d = h / heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": h, "intermediate_size": f, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let dev = Device::Cpu;
    let randn = |shape: &[usize], std: f64| Tensor::randn(0f32, std as f32, shape, &dev).expect("randn");
    let mut tensors = std::collections::HashMap::new();
    tensors.insert("model.embed_tokens.weight".to_string(), randn(&[vocab, h], 1.0));
    tensors.insert("lm_head.weight".to_string(), randn(&[vocab, h], 0.2));
    tensors.insert("model.norm.weight".to_string(), (randn(&[h], 0.1) + 1.0).expect("norm"));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let mut put = |name: &str, t: Tensor| tensors.insert(format!("{p}.{name}"), t);
        put("input_layernorm.weight", (randn(&[h], 0.1) + 1.0).expect("norm"));
        put("post_attention_layernorm.weight", (randn(&[h], 0.1) + 1.0).expect("norm"));
        put("self_attn.q_proj.weight", randn(&[heads * d, h], 0.3));
        put("self_attn.k_proj.weight", randn(&[kv_heads * d, h], 0.3));
        put("self_attn.v_proj.weight", randn(&[kv_heads * d, h], 0.3));
        put("self_attn.o_proj.weight", randn(&[h, heads * d], 0.1));
        put("mlp.gate_proj.weight", randn(&[f, h], 0.1));
        put("mlp.up_proj.weight", randn(&[f, h], 0.1));
        put("mlp.down_proj.weight", randn(&[h, f], 0.1));
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
}

#[test]
fn twin_matches_the_cpu_backend_on_a_hugging_face_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    random_hf_model(dir.path());
    let cfg_path = dir.path().join("config.json");
    let cfg = LlamaConfig::from_hf_json(&std::fs::read_to_string(&cfg_path).expect("read"), &cfg_path)
        .expect("config");
    let w = WeightSource::open_safetensors(dir.path()).expect("open");
    let (a, b): (Vec<u32>, Vec<u32>) = ((1..10).map(|i| i * 7).collect(), (1..14).map(|i| i * 13).collect());
    let expected = three_steps(&mut reference(&w, cfg.clone()), &a, &b);
    let got = three_steps(&mut twin(&w, cfg), &a, &b);
    let diff = max_abs_diff(&got, &expected);
    assert!(diff < TOLERANCE, "twin and CPU backend logits differ by up to {diff}");
}
