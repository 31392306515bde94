//! Fidelity of the model against llama.cpp's outputs in `../shared/reference/`:
//! greedy tokens up to llama.cpp's first near-tie, first-position top-5 logits,
//! and batch invariance.

use inflight::backend::cpu::attention::bf16_tiles_run_here;
use inflight::backend::cpu::{Activations, AttentionPrecision, CpuBackend, CpuConfig, KvDtype, Llama};
use inflight::backend::{Backend, SeqStep, StepBatch};
use inflight::engine::sampling::argmax;
use inflight::model::{LlamaConfig, WeightSource};

use crate::support::{
    ids, mixed_quant_model, model_path, reference, steps_to_match, LOGIT_MAX_TOLERANCE, LOGIT_MEAN_TOLERANCE,
    NEAR_TIE_MARGIN,
};

fn backend() -> CpuBackend {
    backend_with(false)
}

fn backend_with(dequantized: bool) -> CpuBackend {
    backend_on(&model_path(), dequantized)
}

fn backend_on(path: &std::path::Path, dequantized: bool) -> CpuBackend {
    backend_for(model_on(path, dequantized), dequantized)
}

/// `exact`: f32 KV cache and f32 activations, the exactness check against
/// transformers' f32; otherwise the serving defaults.
fn backend_for(model: Llama, exact: bool) -> CpuBackend {
    if exact {
        backend_computing(model, Activations::F32)
    } else {
        let cfg = CpuConfig { kv_cache_bytes: 256 << 20, ..Default::default() };
        CpuBackend::new(model, &cfg).expect("backend")
    }
}

/// An f32 KV cache and `activations`: only the matmuls' activations differ from the
/// float model.
fn backend_computing(model: Llama, activations: Activations) -> CpuBackend {
    let cfg =
        CpuConfig { kv_cache_bytes: 256 << 20, kv_dtype: KvDtype::F32, activations, ..Default::default() };
    CpuBackend::new(model, &cfg).expect("backend")
}

fn model_on(path: &std::path::Path, dequantized: bool) -> Llama {
    let mut w = WeightSource::open_gguf(path).expect("open gguf");
    if dequantized {
        w = w.with_dequantized_weights();
    }
    let cfg = LlamaConfig::from_gguf(w.gguf_content().expect("gguf"), path).expect("config");
    Llama::load(&w, cfg).expect("load")
}

/// What `greedy_batch` saw, per prompt.
struct Greedy {
    tokens: Vec<Vec<u32>>,
    first_logits: Vec<Vec<f32>>,
    /// Per step, how far the chosen token's logit is above the runner-up's.
    margins: Vec<Vec<f32>>,
}

fn top1_top2_margin(row: &[f32]) -> f32 {
    let (mut best, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > best {
            second = best;
            best = v;
        } else if v > second {
            second = v;
        }
    }
    best - second
}

/// Greedy decoding of several prompts in lockstep through the batched step path:
/// one step prefills all prompts, then every step decodes one token of each.
fn greedy_batch(be: &mut CpuBackend, prompts: &[Vec<u32>], steps: usize) -> Greedy {
    let bs = be.info().block_size;
    let mut next_block = 0u32;
    let tables: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let n = (p.len() + steps).div_ceil(bs) as u32;
            let t = (next_block..next_block + n).collect();
            next_block += n;
            t
        })
        .collect();
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut first_logits = Vec::new();
    let mut margins: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
    for step in 0..steps {
        let batch = StepBatch {
            seqs: prompts
                .iter()
                .zip(&outs)
                .zip(&tables)
                .enumerate()
                .map(|(i, ((p, o), t))| {
                    if step == 0 {
                        SeqStep {
                            id: i as u64,
                            tokens: p,
                            start_pos: 0,
                            prompt_rows: p.len(),
                            block_table: t,
                            want_logits: true,
                            all_logits: false,
                        }
                    } else {
                        SeqStep {
                            id: i as u64,
                            tokens: std::slice::from_ref(o.last().expect("token")),
                            start_pos: p.len() + o.len() - 1,
                            prompt_rows: 0,
                            block_table: t,
                            want_logits: true,
                            all_logits: false,
                        }
                    }
                })
                .collect(),
        };
        let logits = be.step(&batch).expect("step");
        for (i, o) in outs.iter_mut().enumerate() {
            let row = logits.row(i).expect("logits row");
            if step == 0 {
                first_logits.push(row.to_vec());
            }
            margins[i].push(top1_top2_margin(row));
            o.push(argmax(row));
        }
    }
    Greedy { tokens: outs, first_logits, margins }
}

/// Greedy tokens and first-position logits against llama.cpp, within llama.cpp's
/// own build-to-build reproducibility (see `support::NEAR_TIE_MARGIN`).
#[test]
fn greedy_tokens_and_logits_match_llama_cpp() {
    let mut be = backend();
    let prompts = reference()["prompts"].as_array().expect("prompts");
    let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["prompt_ids"])).collect();
    let Greedy { tokens: outs, first_logits: first, .. } = greedy_batch(&mut be, &prompt_ids, 32);
    let mut diffs = Vec::new();
    for ((p, got), logits) in prompts.iter().zip(&outs).zip(&first) {
        let want = ids(&p["llamacpp"]["greedy_ids"]);
        let n = steps_to_match(p);
        assert_eq!(
            &got[..n],
            &want[..n],
            "prompt {}: greedy tokens differ before llama.cpp's first near-tie",
            p["id"]
        );
        let top = p["llamacpp"]["top5_first"].as_array().expect("top5");
        assert_eq!(
            argmax(logits),
            top[0]["id"].as_u64().expect("id") as u32,
            "prompt {}: top-1 token",
            p["id"]
        );
        for t in top {
            let id = t["id"].as_u64().expect("id") as usize;
            let diff = (logits[id] - t["logit"].as_f64().expect("logit") as f32).abs();
            assert!(diff < LOGIT_MAX_TOLERANCE, "prompt {}: logit of {} off by {diff}", p["id"], t["token"]);
            diffs.push(diff);
        }
    }
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    eprintln!("first-position top-5 logits vs llama.cpp: mean |diff| {mean:.3}, max {max:.3}");
    assert!(mean < LOGIT_MEAN_TOLERANCE, "mean first-position logit difference {mean}");
}

/// With the weights dequantized to f32 the model computes what a float reference
/// computes: transformers' float32 logits, to float rounding. This pins the model
/// code (layout, RoPE, attention, norms) independently of quantized arithmetic.
#[test]
fn float_weights_reproduce_transformers_f32_logits() {
    assert_reproduces_transformers_f32(&mut backend_with(true), "float weights");
}

/// `--activations f32` on the 4-bit weights computes what the dequantized weights
/// compute in f32: the same tolerance as the float-weights check above.
#[test]
fn f32_activations_on_quantized_weights_reproduce_transformers_f32_logits() {
    let mut be = backend_for(model_on(&model_path(), false), true);
    assert!(
        be.model().matmul_implementations().keys().all(|k| k.starts_with("inflight")),
        "every matrix on the project's kernels: {:?}",
        be.model().matmul_implementations()
    );
    assert_reproduces_transformers_f32(&mut be, "f32 activations");
}

/// `--activations int16` (two 8-bit passes) on the 4-bit weights: within 5e-3 of the
/// float model's logits, where int8 activations are off by up to 0.3 (the check
/// below fails for them).
#[test]
fn int16_activations_on_quantized_weights_come_within_5e_3_of_transformers_f32_logits() {
    let mut be = backend_computing(model_on(&model_path(), false), Activations::Int16);
    assert_within_of_transformers_f32(&mut be, "int16 activations", 5e-3);
}

fn assert_reproduces_transformers_f32(be: &mut CpuBackend, what: &str) {
    assert_within_of_transformers_f32(be, what, 2e-3)
}

/// `--activations bf16` (AMX hosts): activations and widened weights rounded to bf16,
/// the head on f32 activations: within 0.1 of transformers' float32 logits, where int8
/// activations are off by up to 0.3.
#[test]
fn bf16_activations_on_quantized_weights_come_within_0_1_of_transformers_f32_logits() {
    if !Activations::Bf16.runs_here() {
        eprintln!("skipped: bf16 activations need AMX-BF16");
        return;
    }
    let mut be = backend_computing(model_on(&model_path(), false), Activations::Bf16);
    assert_within_of_transformers_f32(&mut be, "bf16 activations", 0.1);
}

fn assert_within_of_transformers_f32(be: &mut CpuBackend, what: &str, tolerance: f32) {
    let prompts = reference()["prompts"].as_array().expect("prompts");
    let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["prompt_ids"])).collect();
    let first = greedy_batch(be, &prompt_ids, 1).first_logits;
    for (p, logits) in prompts.iter().zip(&first) {
        for top in p["transformers_f32"]["top5_first"].as_array().expect("top5") {
            let id = top["id"].as_u64().expect("id") as usize;
            let want = top["logit"].as_f64().expect("logit") as f32;
            assert!(
                (logits[id] - want).abs() < tolerance,
                "{what}, prompt {}: logit of {} is {} vs transformers f32 {want}",
                p["id"],
                top["token"],
                logits[id]
            );
        }
    }
}

#[test]
fn batching_does_not_change_greedy_tokens() {
    let mut be = backend();
    let prompts = reference()["prompts"].as_array().expect("prompts");
    let mut prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["prompt_ids"])).collect();
    // Eight prompts of mixed lengths: the six references plus two truncations.
    prompt_ids.push(prompt_ids[0][..3].to_vec());
    prompt_ids.push(prompt_ids[prompt_ids.len() - 2].iter().take(40).cloned().collect());
    let batched = greedy_batch(&mut be, &prompt_ids, 12).tokens;
    for (p, b) in prompt_ids.iter().zip(&batched) {
        let alone = greedy_batch(&mut be, std::slice::from_ref(p), 12).tokens;
        assert_eq!(&alone[0], b, "prompt of {} tokens: alone vs batch of 8", p.len());
    }
}

/// A prompt's logits are the same bits whatever its chunking (the default server;
/// concurrent traffic decides the chunking): whole, in chunks of the tiled attention
/// kernel's sizes, and in chunks shorter than a tile, one row included; and whether the
/// last layer runs for its last row alone or for every row (a prompt being scored).
#[test]
fn prompt_logits_do_not_depend_on_the_chunking() {
    assert_prompt_logits_do_not_depend_on_the_chunking(Activations::Int8);
}

/// bf16 activations run every row count on the same tiles, so chunking changes no bit
/// there either (AMX hosts only: elsewhere the precision is refused).
#[test]
fn bf16_prompt_logits_do_not_depend_on_the_chunking() {
    if !Activations::Bf16.runs_here() {
        eprintln!("skipped: bf16 activations need AMX-BF16");
        return;
    }
    assert_prompt_logits_do_not_depend_on_the_chunking(Activations::Bf16);
}

fn assert_prompt_logits_do_not_depend_on_the_chunking(activations: Activations) {
    let model = model_on(&model_path(), false);
    let cfg = CpuConfig { kv_cache_bytes: 256 << 20, activations, ..Default::default() };
    let mut be = CpuBackend::new(model, &cfg).expect("backend");
    let prompt: Vec<u32> = reference()["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| ids(&p["prompt_ids"]))
        .max_by_key(|p| p.len())
        .expect("a prompt");
    assert!(prompt.len() > 60, "a prompt long enough to chunk: {}", prompt.len());
    let table: Vec<u32> = (0..prompt.len().div_ceil(be.info().block_size) as u32).collect();
    let mut last_logits = |chunks: &[usize]| {
        let mut at = 0;
        let mut logits = Vec::new();
        for (i, &n) in
            chunks.iter().chain(std::iter::once(&(prompt.len() - chunks.iter().sum::<usize>()))).enumerate()
        {
            let last = i == chunks.len();
            let batch = StepBatch {
                seqs: vec![SeqStep {
                    id: 0,
                    tokens: &prompt[at..at + n],
                    start_pos: at,
                    prompt_rows: prompt[at..at + n].len(),
                    block_table: &table,
                    want_logits: last,
                    all_logits: false,
                }],
            };
            let out = be.step(&batch).expect("step");
            if last {
                logits = out.row(0).expect("logits").to_vec();
            }
            at += n;
        }
        logits
    };
    let whole = last_logits(&[]);
    for chunks in [&[17, 1, 3][..], &[32, 16], &[1, 1, 1, 40], &[9, 23, 5]] {
        assert_eq!(last_logits(chunks), whole, "chunks {chunks:?} then the rest");
    }
    // Those runs take only the last row past the last layer's attention; a prompt being
    // scored takes every row through it, and its last row must get the same bits.
    let scored = StepBatch {
        seqs: vec![SeqStep {
            id: 0,
            tokens: &prompt,
            start_pos: 0,
            prompt_rows: prompt.len(),
            block_table: &table,
            want_logits: true,
            all_logits: true,
        }],
    };
    let out = be.step(&scored).expect("step");
    let every_row = out.all_rows(0).expect("every row's logits");
    assert_eq!(every_row.len(), prompt.len() * whole.len());
    assert_eq!(
        &every_row[every_row.len() - whole.len()..],
        &whole[..],
        "the last row through the whole layer"
    );
}

/// Reverses llama.cpp's converter, which permutes Hugging Face's Q/K rows so that
/// rotating adjacent pairs equals HF's rotate-half: rows of each head go from
/// (pair index, half) order back to (half, pair index).
fn unpermute(t: &candle_core::Tensor, heads: usize) -> candle_core::Tensor {
    let (out, inp) = t.dims2().expect("2-D");
    t.reshape((heads, out / heads / 2, 2, inp))
        .and_then(|x| x.transpose(1, 2))
        .and_then(|x| x.contiguous())
        .and_then(|x| x.reshape((out, inp)))
        .expect("unpermute")
}

/// A Hugging Face safetensors checkpoint (HF tensor names, rotate-half Q/K layout,
/// config.json) loads and computes the same logits as the GGUF it was made from.
#[test]
fn safetensors_checkpoint_gives_the_same_logits_as_its_gguf() {
    use candle_core::Device;
    let path = model_path();
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = WeightSource::open_gguf(&path).expect("open gguf");
    let content = gguf.gguf_content().expect("gguf");
    let cfg = LlamaConfig::from_gguf(content, &path).expect("config");
    let mut file = std::fs::File::open(&path).expect("open");
    let mut tensors = std::collections::HashMap::new();
    for name in content.tensor_infos.keys() {
        let mut t = content
            .tensor(&mut file, name, &Device::Cpu)
            .expect("tensor")
            .dequantize(&Device::Cpu)
            .expect("f32");
        if name.ends_with("attn_q.weight") {
            t = unpermute(&t, cfg.num_heads);
        } else if name.ends_with("attn_k.weight") {
            t = unpermute(&t, cfg.num_kv_heads);
        }
        tensors.insert(inflight::model::weights::hf_name(name), t);
    }
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).expect("save");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position, "tie_word_embeddings": true,
    });
    let cfg_path = dir.path().join("config.json");
    std::fs::write(&cfg_path, config.to_string()).expect("write config");
    let hf_cfg = LlamaConfig::from_hf_json(&config.to_string(), &cfg_path).expect("hf config");
    let st = WeightSource::open_safetensors(dir.path()).expect("open safetensors");
    let model = Llama::load(&st, hf_cfg).expect("load safetensors");
    // Float weights, so the float configuration (f32 KV cache).
    let mut st_backend = backend_for(model, true);
    let mut gguf_backend = backend_with(true);
    let prompts: Vec<Vec<u32>> = reference()["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .take(3)
        .map(|p| ids(&p["prompt_ids"]))
        .collect();
    let Greedy { tokens: a_tokens, first_logits: a, .. } = greedy_batch(&mut st_backend, &prompts, 4);
    let Greedy { tokens: b_tokens, first_logits: b, .. } = greedy_batch(&mut gguf_backend, &prompts, 4);
    assert_eq!(a_tokens, b_tokens);
    for (x, y) in a.iter().zip(&b) {
        let max = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(max < 1e-3, "safetensors vs GGUF logits differ by {max}");
    }
}

/// A GGUF with Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1 matrices (see `support::mixed_quant_model`)
/// runs them on inflight's kernels, and computes what the same file's weights dequantized to f32 compute:
/// first-position logits within the quantized path's usual distance, and the same
/// greedy tokens up to the float path's first near-tie.
#[test]
fn k_quant_and_q5_weights_run_on_the_kernels_and_match_their_float_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, changed) = mixed_quant_model(dir.path());
    let model = model_on(&path, false);
    let layers = model.config().num_layers;
    assert_eq!(changed, 2 * layers, "the FFN down and attention output projections requantized");
    let kinds = model.matmul_implementations();
    let every_third_from = |first: usize| (first..layers).step_by(3).count();
    assert_eq!(kinds.get("inflight Q4K"), Some(&every_third_from(0)), "{kinds:?}");
    assert_eq!(kinds.get("inflight Q5K"), Some(&every_third_from(1)), "{kinds:?}");
    assert_eq!(kinds.get("inflight Q6K"), Some(&every_third_from(2)), "{kinds:?}");
    assert_eq!(kinds.get("inflight Q5_0"), Some(&layers.div_ceil(2)), "{kinds:?}");
    assert_eq!(kinds.get("inflight Q5_1"), Some(&(layers / 2)), "{kinds:?}");
    assert!(kinds.keys().all(|k| k.starts_with("inflight")), "nothing left to candle: {kinds:?}");
    let mut quantized = backend_for(model, false);
    let mut float = backend_on(&path, true);
    let prompts: Vec<Vec<u32>> =
        reference()["prompts"].as_array().expect("prompts").iter().map(|p| ids(&p["prompt_ids"])).collect();
    let got = greedy_batch(&mut quantized, &prompts, 16);
    let want = greedy_batch(&mut float, &prompts, 16);
    for (i, prompt) in prompts.iter().enumerate() {
        let (g, w) = (&got.first_logits[i], &want.first_logits[i]);
        let mut top: Vec<usize> = (0..w.len()).collect();
        top.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
        for &id in &top[..5] {
            let diff = (g[id] - w[id]).abs();
            assert!(
                diff < LOGIT_MAX_TOLERANCE,
                "prompt of {} tokens: logit of {id} off by {diff}",
                prompt.len()
            );
        }
        let n = want.margins[i].iter().position(|&m| f64::from(m) < NEAR_TIE_MARGIN).unwrap_or(16);
        assert_eq!(
            got.tokens[i][..n],
            want.tokens[i][..n],
            "prompt of {} tokens: greedy tokens before the first near-tie",
            prompt.len()
        );
    }
}

/// A token decoded 1,100 positions deep (its attention cut into parts, merged after)
/// gets the logits a prefill of the same tokens gives its last position: by default
/// within float rounding carried through the layers (int8 requantization can turn a
/// last-bit difference into one quantization step; 0 was seen on this model), and the
/// same bits with `--chunk-invariant-attention`, which computes decode rows as a tile
/// does. With bf16 prompt tiles (`--attention-precision bf16`, where the CPU has them)
/// the decode row still multiplies in f32, so the two differ by bf16 rounding carried
/// through the layers: within a logit, with the same top token. A merge that drops the
/// parts' rescaling is off by several logits.
#[test]
fn a_token_decoded_deep_in_a_long_context_gets_its_prefill_logits() {
    let prompt: Vec<u32> = reference()["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .flat_map(|p| ids(&p["prompt_ids"]))
        .cycle()
        .take(1100)
        .collect();
    let n = prompt.len();
    let mut runs = vec![(false, AttentionPrecision::F32), (true, AttentionPrecision::Auto)];
    if bf16_tiles_run_here() {
        runs.push((false, AttentionPrecision::Bf16));
    }
    for (invariant, attention_precision) in runs {
        let model = model_on(&model_path(), false);
        let cfg = CpuConfig {
            kv_cache_bytes: 256 << 20,
            chunk_invariant_attention: invariant,
            attention_precision,
            ..Default::default()
        };
        let mut be = CpuBackend::new(model, &cfg).expect("backend");
        // Both runs cut the prompt into the same 512-token chunks, so its first 1,024
        // positions get the same K/V bits in both: the prefill run shares those blocks
        // (as the prefix cache would) and computes only the chunk that differs.
        let shared = 1024;
        let block_size = be.info().block_size;
        assert_eq!(shared % block_size, 0, "the shared positions fill whole blocks");
        let blocks = n.div_ceil(block_size) as u32;
        let shared_blocks = (shared / block_size) as u32;
        let decoded_table: Vec<u32> = (0..blocks).collect();
        let prefilled_table: Vec<u32> =
            (0..shared_blocks).chain(blocks..2 * blocks - shared_blocks).collect();
        let mut step =
            |tokens: &[u32], start_pos: usize, prompt: bool, table: &[u32], want_logits: bool, all| {
                let seqs = vec![SeqStep {
                    id: 0,
                    tokens,
                    start_pos,
                    prompt_rows: if prompt { tokens.len() } else { 0 },
                    block_table: table,
                    want_logits,
                    all_logits: all,
                }];
                be.step(&StepBatch { seqs }).expect("step")
            };
        let mut run = |tokens: &[u32], start_pos: usize, prompt: bool, table: &[u32], want_logits: bool| {
            step(tokens, start_pos, prompt, table, want_logits, false).row(0).map(<[f32]>::to_vec)
        };
        for at in (0..n - 1).step_by(512) {
            run(&prompt[at..(at + 512).min(n - 1)], at, true, &decoded_table, false);
        }
        let decoded = run(&prompt[n - 1..], n - 1, false, &decoded_table, true).expect("logits");
        let mut prefilled = None;
        for at in (shared..n).step_by(512) {
            let end = (at + 512).min(n);
            prefilled = run(&prompt[at..end], at, true, &prefilled_table, end == n);
        }
        let prefilled = prefilled.expect("logits");
        // The last chunk again as a prompt being scored: every row through the last layer
        // (the run above took only its last row past attention), deep in the context.
        let last_chunk = n - (n - 1) / 512 * 512;
        let scored = step(&prompt[n - last_chunk..], n - last_chunk, true, &prefilled_table, true, true);
        assert_eq!(scored.row(0), Some(&prefilled[..]), "the last row through the whole layer");
        let worst = decoded.iter().zip(&prefilled).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        if invariant {
            assert_eq!(decoded, prefilled, "decoded with the tile's arithmetic");
        } else if attention_precision == AttentionPrecision::Bf16 {
            assert!(worst < 1.0, "bf16 tiles: max |Δlogit| {worst}");
            assert_eq!(argmax(&decoded), argmax(&prefilled), "bf16 tiles: the top token");
        } else {
            assert!(worst < 0.05, "max |Δlogit| {worst}");
        }
    }
}
