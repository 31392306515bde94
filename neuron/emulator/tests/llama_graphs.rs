//! The emulator's llama graphs against inflight's CPU backend: a prefill graph
//! (two prompts of different lengths, padded, in non-adjacent KV slots) and a
//! decode graph (both sequences, one token each), bound by name to weights written
//! once and KV state aliased in place, give the CPU backend's logits.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::ptr::null_mut;

use candle_core::{Device, Tensor};
use inflight::backend::cpu::{CpuBackend, CpuConfig, KvDtype, Llama};
use inflight::backend::{Backend, SeqStep, StepBatch, StepLimits};
use inflight::model::{LlamaConfig, WeightSource};
use nrt_emulator::*;
use serde_json::{json, Value};

const SLOTS: usize = 3;
const CONTEXT: usize = 32;
const BATCH: usize = 2;
const PREFILL_LEN: usize = 8;

fn random_checkpoint(dir: &std::path::Path) -> Value {
    let (h, f, layers, heads, kv_heads, vocab) = (64usize, 96, 2, 4, 2, 300);
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": CONTEXT, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let d = h / heads;
    let randn = |shape: &[usize], std: f32| Tensor::randn(0f32, std, shape, &Device::Cpu).expect("randn");
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), randn(&[vocab, h], 1.0));
    t.insert("lm_head.weight".to_string(), randn(&[vocab, h], 0.2));
    t.insert("model.norm.weight".to_string(), (randn(&[h], 0.1) + 1.0).expect("norm"));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape, std) in [
            ("input_layernorm.weight", vec![h], 0.0),
            ("post_attention_layernorm.weight", vec![h], 0.0),
            ("self_attn.q_proj.weight", vec![heads * d, h], 0.3),
            ("self_attn.k_proj.weight", vec![kv_heads * d, h], 0.3),
            ("self_attn.v_proj.weight", vec![kv_heads * d, h], 0.3),
            ("self_attn.o_proj.weight", vec![h, heads * d], 0.1),
            ("mlp.gate_proj.weight", vec![f, h], 0.1),
            ("mlp.up_proj.weight", vec![f, h], 0.1),
            ("mlp.down_proj.weight", vec![h, f], 0.1),
        ] {
            let value =
                if std == 0.0 { (randn(&shape, 0.1) + 1.0).expect("norm") } else { randn(&shape, std) };
            t.insert(format!("{p}.{name}"), value);
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).expect("save");
    config
}

/// The graph's tensors and its llama program, as an emulator NEFF.
fn neff(
    kind: &str,
    batch: usize,
    seq_len: usize,
    config: &Value,
    weights: &[(String, Vec<usize>)],
) -> Vec<u8> {
    let layers = config["num_hidden_layers"].as_u64().unwrap() as usize;
    let (heads, kv_heads, h) = (
        config["num_attention_heads"].as_u64().unwrap(),
        config["num_key_value_heads"].as_u64().unwrap(),
        config["hidden_size"].as_u64().unwrap(),
    );
    let state = json!([SLOTS, kv_heads, CONTEXT, h / heads]);
    let mut tensors = vec![
        json!({"name": "token_ids", "usage": "input", "dtype": "int32", "shape": [batch, seq_len]}),
        json!({"name": "positions", "usage": "input", "dtype": "int32", "shape": [batch, seq_len]}),
        json!({"name": "slot_ids", "usage": "input", "dtype": "int32", "shape": [batch]}),
        json!({"name": "logits", "usage": "output", "dtype": "float32", "shape": [batch, config["vocab_size"]]}),
    ];
    let mut kv = Vec::new();
    for l in 0..layers {
        let pair = [format!("kv.{l}.k"), format!("kv.{l}.v")];
        for name in &pair {
            tensors.push(json!({"name": name, "usage": "input", "dtype": "float32", "shape": state}));
            tensors.push(json!({"name": format!("{name}.out"), "usage": "output", "dtype": "float32", "shape": state, "aliases": name}));
        }
        kv.push(pair);
    }
    let mut bind_weights = serde_json::Map::new();
    for (name, shape) in weights {
        tensors.push(json!({"name": name, "usage": "input", "dtype": "float32", "shape": shape}));
        bind_weights.insert(name.clone(), json!(name));
    }
    json!({
        "format": "inflight-nrt-emulator-neff", "version": 1, "graph": format!("{kind}_{batch}x{seq_len}"),
        "tensors": tensors,
        "program": {"llama": {
            "kind": kind, "batch": batch, "seq_len": seq_len, "slots": SLOTS, "max_context": CONTEXT,
            "config": config,
            "bind": {"token_ids": "token_ids", "positions": "positions", "slot_ids": "slot_ids", "logits": "logits",
                     "kv": kv, "weights": bind_weights}
        }}
    })
    .to_string()
    .into_bytes()
}

struct Device1 {
    tensors: HashMap<String, *mut c_void>,
}

impl Device1 {
    fn tensor(&mut self, name: &str, bytes: usize) -> *mut c_void {
        let mut t = null_mut();
        let cname = CString::new(name).unwrap();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { nrt_tensor_allocate(0, 0, bytes, cname.as_ptr(), &mut t) }, status::SUCCESS);
        self.tensors.insert(name.to_string(), t);
        t
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        // SAFETY: the buffer is valid; the tensor holds exactly these bytes.
        assert_eq!(unsafe { nrt_tensor_write(self.tensors[name], bytes.as_ptr().cast(), 0, bytes.len()) }, 0);
    }
}

fn ints(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_f32(dev: &Device1, name: &str, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    // SAFETY: the buffer holds n floats.
    assert_eq!(unsafe { nrt_tensor_read(dev.tensors[name], out.as_mut_ptr().cast(), 0, n * 4) }, 0);
    out
}

#[test]
fn prefill_and_decode_graphs_give_the_cpu_backends_logits() {
    nrt_emulator_reset();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = random_checkpoint(dir.path());
    let w = WeightSource::open_safetensors(dir.path()).expect("weights");
    let cfg_path = dir.path().join("config.json");
    let cfg = LlamaConfig::from_hf_json(&config.to_string(), &cfg_path).expect("config");
    let vocab = cfg.vocab_size;

    // The weights as the graphs see them: every tensor of the file, f32.
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::new(dir.path().join("model.safetensors")) }
            .expect("mmap");
    let mut weights: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, _)| {
            let t = st.load(&name, &Device::Cpu).expect("load");
            let bytes = inflight::model::weights::le_bytes(&t).expect("bytes");
            (name, t.dims().to_vec(), bytes)
        })
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: Vec<(String, Vec<usize>)> = weights.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();

    assert_eq!(nrt_init(1, c"".as_ptr(), c"".as_ptr()), status::SUCCESS);
    let (prefill_neff, decode_neff) =
        (neff("prefill", BATCH, PREFILL_LEN, &config, &shapes), neff("decode", BATCH, 1, &config, &shapes));
    let (mut prefill, mut decode) = (null_mut(), null_mut());
    // SAFETY: valid buffers and out-pointers.
    unsafe {
        assert_eq!(nrt_load(prefill_neff.as_ptr().cast(), prefill_neff.len(), -1, -1, &mut prefill), 0);
        assert_eq!(nrt_load(decode_neff.as_ptr().cast(), decode_neff.len(), -1, -1, &mut decode), 0);
    }
    let mut dev = Device1 { tensors: HashMap::new() };
    for (name, _, bytes) in &weights {
        dev.tensor(name, bytes.len());
        dev.write(name, bytes);
    }
    let state_bytes = SLOTS * cfg.num_kv_heads * CONTEXT * cfg.head_dim * 4;
    let mut kv_names = Vec::new();
    for l in 0..cfg.num_layers {
        for part in ["k", "v"] {
            let name = format!("kv.{l}.{part}");
            dev.tensor(&name, state_bytes);
            kv_names.push(name);
        }
    }
    for (name, bytes) in [
        ("p.token_ids", BATCH * PREFILL_LEN * 4),
        ("p.positions", BATCH * PREFILL_LEN * 4),
        ("slot_ids", BATCH * 4),
        ("p.logits", BATCH * vocab * 4),
        ("d.token_ids", BATCH * 4),
        ("d.positions", BATCH * 4),
        ("d.logits", BATCH * vocab * 4),
    ] {
        dev.tensor(name, bytes);
    }

    // Sequence A: 5 tokens in slot 2; sequence B: 8 tokens in slot 0. Padding: -1.
    let (a, b): (Vec<i32>, Vec<i32>) = (vec![11, 22, 33, 44, 55], vec![7, 8, 9, 10, 200, 201, 202, 299]);
    let mut ids = vec![0; BATCH * PREFILL_LEN];
    let mut pos = vec![-1; BATCH * PREFILL_LEN];
    for (i, &t) in a.iter().enumerate() {
        ids[i] = t;
        pos[i] = i as i32;
    }
    for (i, &t) in b.iter().enumerate() {
        ids[PREFILL_LEN + i] = t;
        pos[PREFILL_LEN + i] = i as i32;
    }
    dev.write("p.token_ids", &ints(&ids));
    dev.write("p.positions", &ints(&pos));
    dev.write("slot_ids", &ints(&[2, 0]));
    let map = |graph: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            ["token_ids", "positions"].iter().map(|n| (n.to_string(), format!("{graph}.{n}"))).collect();
        v.push(("slot_ids".into(), "slot_ids".into()));
        v.extend(kv_names.iter().map(|n| (n.clone(), n.clone())));
        v.extend(weights.iter().map(|(n, ..)| (n.clone(), n.clone())));
        v
    };
    // Inputs are bound under the graph's names; the test's tensor names differ for ids.
    let run = |model, graph: &str, logits: &str| {
        let pairs = map(graph);
        let (mut ins, mut outs) = (null_mut(), null_mut());
        // SAFETY: live handles, valid names.
        unsafe {
            nrt_allocate_tensor_set(&mut ins);
            nrt_allocate_tensor_set(&mut outs);
            for (graph_name, tensor) in &pairs {
                let c = CString::new(graph_name.as_str()).unwrap();
                nrt_add_tensor_to_tensor_set(ins, c.as_ptr(), dev.tensors[tensor]);
            }
            nrt_add_tensor_to_tensor_set(outs, c"logits".as_ptr(), dev.tensors[logits]);
            for n in &kv_names {
                let c = CString::new(format!("{n}.out")).unwrap();
                nrt_add_tensor_to_tensor_set(outs, c.as_ptr(), dev.tensors[n]);
            }
            let status = nrt_execute(model, ins, outs);
            nrt_destroy_tensor_set(&mut ins);
            nrt_destroy_tensor_set(&mut outs);
            status
        }
    };
    assert_eq!(run(prefill, "p", "p.logits"), status::SUCCESS);
    let prefill_logits = read_f32(&dev, "p.logits", BATCH * vocab);
    dev.write("d.token_ids", &ints(&[66, 77]));
    dev.write("d.positions", &ints(&[a.len() as i32, b.len() as i32]));
    assert_eq!(run(decode, "d", "d.logits"), status::SUCCESS);
    let decode_logits = read_f32(&dev, "d.logits", BATCH * vocab);

    // The CPU backend on the same checkpoint and sequences.
    let model = Llama::load(&w, cfg).expect("cpu model");
    let cpu_cfg = CpuConfig {
        limits: StepLimits { max_context: Some(CONTEXT), ..Default::default() },
        block_size: 4,
        kv_cache_bytes: 16 << 20,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    };
    let mut cpu = CpuBackend::new(model, &cpu_cfg).expect("cpu backend");
    let (ua, ub): (Vec<u32>, Vec<u32>) =
        (a.iter().map(|&x| x as u32).collect(), b.iter().map(|&x| x as u32).collect());
    let (ta, tb) = ([0u32, 1, 2], [3u32, 4, 5]);
    let mut step = |seqs| cpu.step(&StepBatch { seqs }).expect("cpu step");
    let first = step(vec![
        SeqStep {
            id: 1,
            tokens: &ua,
            start_pos: 0,
            prompt_rows: ua.len(),
            block_table: &ta,
            want_logits: true,
            all_logits: false,
        },
        SeqStep {
            id: 2,
            tokens: &ub,
            start_pos: 0,
            prompt_rows: ub.len(),
            block_table: &tb,
            want_logits: true,
            all_logits: false,
        },
    ]);
    let close = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
    assert!(close(first.row(0).unwrap(), &prefill_logits[..vocab]) < 2e-3);
    assert!(close(first.row(1).unwrap(), &prefill_logits[vocab..]) < 2e-3);
    let (da, db) = ([66u32], [77u32]);
    let second = step(vec![
        SeqStep {
            id: 1,
            tokens: &da,
            start_pos: ua.len(),
            prompt_rows: 0,
            block_table: &ta,
            want_logits: true,
            all_logits: false,
        },
        SeqStep {
            id: 2,
            tokens: &db,
            start_pos: ub.len(),
            prompt_rows: 0,
            block_table: &tb,
            want_logits: true,
            all_logits: false,
        },
    ]);
    assert!(close(second.row(0).unwrap(), &decode_logits[..vocab]) < 2e-3);
    assert!(close(second.row(1).unwrap(), &decode_logits[vocab..]) < 2e-3);

    // Rewriting a weight after the graphs used it is reported.
    let (first_name, _, bytes) = &weights[0];
    dev.write(first_name, bytes);
    let report = {
        let mut buf = vec![0 as std::ffi::c_char; 1 << 16];
        // SAFETY: the buffer holds its length.
        unsafe { nrt_emulator_report(buf.as_mut_ptr(), buf.len()) };
        let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        serde_json::from_str::<Value>(&text).expect("json")
    };
    let misuse = report["misuse"].as_array().expect("list");
    assert_eq!(misuse.len(), 1, "{misuse:?}");
    assert!(misuse[0].as_str().unwrap().contains("written again after an execute used it"));
}
