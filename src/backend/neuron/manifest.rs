//! The compiled-artifact manifest (`manifest.json`, specified in `neuron/README.md`):
//! read, checked against the one version this build understands, and turned into
//! the step shapes the scheduler honours. Anything it does not understand (a newer
//! version, an unknown field, role or dtype, a graph without the inputs its kind
//! needs, a KV state not aliased to its own output, a missing file) is an error
//! naming the manifest and what is wrong, before any device memory is touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::{Prefill, StepShapes};
use crate::model::ModelError;

/// What `format` must say.
pub const FORMAT: &str = "inflight-neuron-artifacts";
/// The manifest version this build reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// `config.json` and `tokenizer.json` of the model, relative to the folder.
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// The weights every graph shares (safetensors), relative to the folder.
    pub weights: PathBuf,
    pub tensor_parallel: usize,
    /// Longest sequence a KV slot holds.
    pub max_context: usize,
    /// KV slots: the most sequences in flight, and the largest decode batch.
    pub kv_slots: usize,
    pub graphs: Vec<Graph>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub name: String,
    pub kind: GraphKind,
    /// The compiled graph, relative to the folder.
    pub neff: PathBuf,
    /// Sequences per execution (padded to it).
    pub batch: usize,
    /// Tokens per sequence per execution: the bucket length of a prefill graph, 1 for
    /// a decode graph.
    pub seq_len: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphKind {
    Prefill,
    Decode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub role: Role,
    /// For `weight`: the tensor's name in the weights file.
    #[serde(default)]
    pub weight: Option<String>,
    /// For a `kv_state` output: the input it aliases (the same device tensor).
    #[serde(default)]
    pub aliases: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    Int32,
    Int64,
    Float32,
    Float16,
    Bfloat16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    TokenIds,
    Positions,
    SlotIds,
    SamplingParams,
    Weight,
    KvState,
    Logits,
    SampledTokens,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`, including that every file it names exists.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("manifest.json");
        let err = |message: String| ModelError::Load { path: path.clone(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read: {e}")))?;
        let m = Self::parse(&text).map_err(err)?;
        let files = [&m.config, &m.tokenizer, &m.weights].into_iter().chain(m.graphs.iter().map(|g| &g.neff));
        for f in files {
            if !dir.join(f).is_file() {
                return Err(err(format!("names {}, which is not in the folder", f.display())));
            }
        }
        Ok(m)
    }

    /// Parses and checks a manifest's text; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        // The version first, so a newer manifest says so instead of failing on a field.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header = serde_json::from_str(text).map_err(|e| format!("not a manifest: {e}"))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(format!("`format` must be \"{FORMAT}\""));
        }
        match header.version {
            Some(VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "manifest version {v} is not supported (this build reads version {VERSION})"
                ))
            }
            None => return Err("`version` is missing".into()),
        }
        let m: Manifest = serde_json::from_str(text).map_err(|e| format!("invalid manifest: {e}"))?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if !matches!(self.tensor_parallel, 1 | 2 | 4 | 8 | 12 | 24) {
            return Err(format!(
                "tensor_parallel {} is not a degree Inf2 runs (1, 2, 4, 8, 12, 24)",
                self.tensor_parallel
            ));
        }
        if self.kv_slots == 0 || self.max_context == 0 {
            return Err("kv_slots and max_context must be at least 1".into());
        }
        let mut names = BTreeSet::new();
        for g in &self.graphs {
            if !names.insert(&g.name) {
                return Err(format!("two graphs are named `{}`", g.name));
            }
            g.check(self).map_err(|e| format!("graph `{}`: {e}", g.name))?;
        }
        for kind in [GraphKind::Prefill, GraphKind::Decode] {
            if !self.graphs.iter().any(|g| g.kind == kind) {
                return Err(format!("no {kind:?} graph"));
            }
        }
        let sampled = |g: &Graph| g.outputs.iter().any(|t| t.role == Role::SampledTokens);
        if self.graphs.iter().any(sampled) != self.graphs.iter().all(sampled) {
            return Err("some graphs return logits and others sampled tokens".into());
        }
        Ok(())
    }

    /// Prefill bucket lengths, ascending.
    pub fn prefill_lengths(&self) -> Vec<usize> {
        self.sizes(GraphKind::Prefill, |g| g.seq_len)
    }

    /// Decode batch sizes, ascending.
    pub fn decode_batch_sizes(&self) -> Vec<usize> {
        self.sizes(GraphKind::Decode, |g| g.batch)
    }

    fn sizes(&self, kind: GraphKind, size: impl Fn(&Graph) -> usize) -> Vec<usize> {
        let set: BTreeSet<usize> = self.graphs.iter().filter(|g| g.kind == kind).map(size).collect();
        set.into_iter().collect()
    }

    /// What one step may hold on these graphs: each prompt whole in a prefill bucket,
    /// prefill and decode in separate executions, decodes up to the largest batch.
    pub fn step_shapes(&self) -> StepShapes {
        let lengths = self.prefill_lengths();
        let prefill_batch =
            self.graphs.iter().filter(|g| g.kind == GraphKind::Prefill).map(|g| g.batch).max();
        let decode = self.decode_batch_sizes();
        StepShapes {
            max_tokens: lengths.last().copied().unwrap_or(0) * prefill_batch.unwrap_or(1),
            max_seqs: self.kv_slots,
            prefill: Prefill::Buckets(lengths),
            max_prefill_seqs: prefill_batch.unwrap_or(1),
            decode_batch_sizes: decode,
            mixed_prefill_decode: false,
        }
    }
}

impl Graph {
    fn check(&self, m: &Manifest) -> Result<(), String> {
        if self.batch == 0 || self.seq_len == 0 {
            return Err("batch and seq_len must be at least 1".into());
        }
        if self.kind == GraphKind::Decode && self.seq_len != 1 {
            return Err("a decode graph runs one token per sequence (seq_len 1)".into());
        }
        if self.kind == GraphKind::Decode && self.batch > m.kv_slots {
            return Err(format!("batch {} exceeds the {} KV slots", self.batch, m.kv_slots));
        }
        if self.seq_len > m.max_context {
            return Err(format!("seq_len {} exceeds max_context {}", self.seq_len, m.max_context));
        }
        let one = |role: Role, specs: &[TensorSpec]| -> Result<(), String> {
            match specs.iter().filter(|t| t.role == role).count() {
                1 => Ok(()),
                n => Err(format!("needs exactly one {role:?} tensor, has {n}")),
            }
        };
        for role in [Role::TokenIds, Role::Positions, Role::SlotIds] {
            one(role, &self.inputs)?;
        }
        let (b, s) = (self.batch, self.seq_len);
        for t in self.inputs.iter().chain(&self.outputs) {
            let want: Option<Vec<usize>> = match t.role {
                Role::TokenIds | Role::Positions => Some(vec![b, s]),
                Role::SlotIds | Role::SampledTokens => Some(vec![b]),
                Role::SamplingParams => Some(vec![b, 3]),
                _ => None,
            };
            if want.as_ref().is_some_and(|w| *w != t.shape) {
                return Err(format!(
                    "tensor `{}` has shape {:?}, its role needs {:?}",
                    t.name,
                    t.shape,
                    want.unwrap_or_default()
                ));
            }
            if t.role == Role::Weight && t.weight.is_none() {
                return Err(format!("weight input `{}` names no weight", t.name));
            }
            if t.shape.contains(&0) {
                return Err(format!("tensor `{}` has an empty dimension", t.name));
            }
        }
        match self.outputs.iter().filter(|t| matches!(t.role, Role::Logits | Role::SampledTokens)).count() {
            1 => {}
            n => return Err(format!("needs exactly one logits or sampled_tokens output, has {n}")),
        }
        // Every KV state is one device tensor bound as input and as its own output.
        for input in self.inputs.iter().filter(|t| t.role == Role::KvState) {
            let aliased = self.outputs.iter().find(|o| o.aliases.as_deref() == Some(input.name.as_str()));
            match aliased {
                Some(o) if o.role == Role::KvState && o.shape == input.shape && o.dtype == input.dtype => {}
                Some(o) => {
                    return Err(format!(
                        "output `{}` aliases KV state `{}` with another role, shape or dtype",
                        o.name, input.name
                    ))
                }
                None => return Err(format!("KV state `{}` is not aliased to an output", input.name)),
            }
        }
        if let Some(o) = self.outputs.iter().find(|o| o.role == Role::KvState && o.aliases.is_none()) {
            return Err(format!("KV state output `{}` aliases no input", o.name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn graph(name: &str, kind: &str, batch: usize, seq_len: usize) -> Value {
        json!({
            "name": name, "kind": kind, "neff": format!("{name}.neff"), "batch": batch, "seq_len": seq_len,
            "inputs": [
                {"name": "input_ids", "dtype": "int32", "shape": [batch, seq_len], "role": "token_ids"},
                {"name": "position_ids", "dtype": "int32", "shape": [batch, seq_len], "role": "positions"},
                {"name": "seq_ids", "dtype": "int32", "shape": [batch], "role": "slot_ids"},
                {"name": "sampling_params", "dtype": "float32", "shape": [batch, 3], "role": "sampling_params"},
                {"name": "w0", "dtype": "bfloat16", "shape": [576, 576], "role": "weight", "weight": "model.layers.0.self_attn.q_proj.weight"},
                {"name": "cache_k.0", "dtype": "bfloat16", "shape": [8, 3, 2048, 64], "role": "kv_state"},
            ],
            "outputs": [
                {"name": "logits", "dtype": "float32", "shape": [batch, 49152], "role": "logits"},
                {"name": "cache_k.0.out", "dtype": "bfloat16", "shape": [8, 3, 2048, 64], "role": "kv_state", "aliases": "cache_k.0"},
            ],
        })
    }

    fn manifest() -> Value {
        json!({
            "format": FORMAT, "version": 1,
            "config": "config.json", "tokenizer": "tokenizer.json", "weights": "model.safetensors",
            "tensor_parallel": 2, "max_context": 2048, "kv_slots": 8,
            "graphs": [
                graph("prefill_512", "prefill", 1, 512),
                graph("prefill_128", "prefill", 1, 128),
                graph("decode_8", "decode", 8, 1),
                graph("decode_1", "decode", 1, 1),
            ],
        })
    }

    fn parse(v: &Value) -> Result<Manifest, String> {
        Manifest::parse(&v.to_string())
    }

    #[test]
    fn a_manifest_gives_its_buckets_as_step_shapes() {
        let m = parse(&manifest()).unwrap();
        assert_eq!(m.prefill_lengths(), vec![128, 512]);
        assert_eq!(m.decode_batch_sizes(), vec![1, 8]);
        let s = m.step_shapes();
        assert_eq!(s.prefill, Prefill::Buckets(vec![128, 512]));
        assert_eq!((s.max_tokens, s.max_seqs, s.max_prefill_seqs, s.max_decode_seqs()), (512, 8, 1, 8));
        assert!(!s.mixed_prefill_decode);
    }

    #[test]
    fn what_this_build_does_not_understand_is_refused_by_name() {
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut v = manifest();
            f(&mut v);
            parse(&v).unwrap_err()
        };
        assert!(edit(&|v| v["version"] = json!(2)).contains("version 2 is not supported"));
        assert!(edit(&|v| v["format"] = json!("other")).contains("`format`"));
        assert!(edit(&|v| v["future"] = json!(true)).contains("unknown field `future`"));
        assert!(edit(&|v| v["graphs"][0]["inputs"][0]["role"] = json!("mystery"))
            .contains("unknown variant `mystery`"));
        assert!(edit(&|v| v["graphs"][0]["inputs"][0]["dtype"] = json!("int4"))
            .contains("unknown variant `int4`"));
        assert!(edit(&|v| v["tensor_parallel"] = json!(3)).contains("tensor_parallel 3"));
        let e = edit(&|v| {
            v["graphs"][1]["inputs"].as_array_mut().unwrap().remove(2);
        });
        assert!(e.contains("graph `prefill_128`") && e.contains("SlotIds"), "{e}");
        let e = edit(&|v| v["graphs"][2]["outputs"][1]["aliases"] = json!("cache_v.0"));
        assert!(e.contains("`cache_k.0` is not aliased"), "{e}");
        let e = edit(&|v| v["graphs"][2]["inputs"][0]["shape"] = json!([8, 2]));
        assert!(e.contains("shape [8, 2]"), "{e}");
        let e = edit(&|v| v["graphs"][3]["seq_len"] = json!(2));
        assert!(e.contains("seq_len 1"), "{e}");
        let e = edit(&|v| {
            v["graphs"].as_array_mut().unwrap().retain(|g| g["kind"] == "prefill");
        });
        assert!(e.contains("no Decode graph"), "{e}");
    }

    #[test]
    fn every_file_it_names_must_be_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), manifest().to_string()).unwrap();
        for f in [
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "prefill_128.neff",
            "prefill_512.neff",
            "decode_1.neff",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json") && e.contains("decode_8.neff"), "{e}");
        std::fs::write(dir.path().join("decode_8.neff"), b"").unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().graphs.len(), 4);
    }
}
