//! The llama-family hyper-parameters, read from GGUF metadata or a Hugging Face
//! `config.json`. Everything the forward pass needs to know about shapes lives here.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use super::ModelError;

/// How rotary position embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(x[2i], x[2i+1])`: GGUF files, whose Q/K weights llama.cpp's
    /// converter permuted for this layout.
    Interleaved,
    /// Halves `(x[i], x[i + d/2])`: Hugging Face checkpoints (`rotate_half`).
    Halves,
}

/// Llama 3.1-style frequency-dependent rope scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (GGUF `rope.scaling.type = linear`).
    Linear(f32),
    Llama3(Llama3RopeScaling),
    /// Per-frequency divisors stored in the file (GGUF `rope_freqs.weight`, which is
    /// how llama.cpp's converter records llama3 scaling).
    FreqFactors(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_layout: RopeLayout,
    pub max_position: usize,
}

impl LlamaConfig {
    /// A one-layer model of the given attention shape, for unit tests of the parts
    /// that only read these fields.
    #[cfg(test)]
    pub(crate) fn tiny(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> LlamaConfig {
        LlamaConfig {
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 1,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_layout: RopeLayout::Halves,
            max_position: 64,
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Reads the `llama.*` metadata of a GGUF file. The vocabulary size comes from the
    /// token list when the file does not state it.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self, ModelError> {
        let md = &content.metadata;
        let arch =
            md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture { path: path.into(), arch });
        }
        let get_u = |key: &str| -> Result<usize, ModelError> {
            md.get(key)
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Metadata { path: path.into(), key: key.into() })
        };
        let get_f = |key: &str| md.get(key).and_then(|v| v.to_f32().ok());

        let hidden_size = get_u("llama.embedding_length")?;
        let num_heads = get_u("llama.attention.head_count")?;
        let num_kv_heads = get_u("llama.attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get_u("llama.attention.key_length")
            .or_else(|_| get_u("llama.rope.dimension_count"))
            .unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match get_u("llama.vocab_size") {
            Ok(v) => v,
            Err(_) => {
                md.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()).map(|v| v.len()).ok_or_else(
                    || ModelError::Metadata { path: path.into(), key: "llama.vocab_size".into() },
                )?
            }
        };
        let rope_scaling =
            match md.get("llama.rope.scaling.type").and_then(|v| v.to_string().ok()).map(String::as_str) {
                Some("linear") => RopeScaling::Linear(get_f("llama.rope.scaling.factor").unwrap_or(1.0)),
                _ => RopeScaling::None,
            };
        let cfg = Self {
            hidden_size,
            intermediate_size: get_u("llama.feed_forward_length")?,
            num_layers: get_u("llama.block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: get_f("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: get_f("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            rope_layout: RopeLayout::Interleaved,
            max_position: get_u("llama.context_length").unwrap_or(4096),
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` of a llama-architecture model.
    pub fn from_hf_json(json: &str, path: &Path) -> Result<Self, ModelError> {
        let hf: HfConfig = serde_json::from_str(json).map_err(|e| ModelError::Load {
            path: path.into(),
            message: format!("invalid config.json: {e}"),
        })?;
        let arch_ok = hf.model_type.as_deref() == Some("llama")
            || hf.architectures.iter().any(|a| a == "LlamaForCausalLM");
        if !arch_ok {
            let arch = hf
                .model_type
                .clone()
                .or_else(|| hf.architectures.first().cloned())
                .unwrap_or_else(|| "unknown".into());
            return Err(ModelError::UnsupportedArchitecture { path: path.into(), arch });
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        let rope_scaling = match &hf.rope_scaling {
            None => RopeScaling::None,
            Some(s) => match s.rope_type.as_deref().or(s.kind.as_deref()) {
                Some("llama3") => RopeScaling::Llama3(Llama3RopeScaling {
                    factor: s.factor.unwrap_or(1.0),
                    low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                    original_max_position: s.original_max_position_embeddings.unwrap_or(8192),
                }),
                Some("linear") => RopeScaling::Linear(s.factor.unwrap_or(1.0)),
                Some("default") | None => RopeScaling::None,
                Some(other) => {
                    return Err(ModelError::Load {
                        path: path.into(),
                        message: format!("unsupported rope_scaling type `{other}`"),
                    })
                }
            },
        };
        let cfg = Self {
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-5),
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_layout: RopeLayout::Halves,
            max_position: hf.max_position_embeddings.unwrap_or(4096),
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Load { path: path.into(), message };
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            return Err(bad("head counts and head size must be non-zero".into()));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!("head size {} is odd; rope needs pairs", self.head_dim)));
        }
        if self.hidden_size == 0 || self.intermediate_size == 0 || self.vocab_size == 0 {
            return Err(bad("hidden, intermediate and vocabulary sizes must be non-zero".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    max_position_embeddings: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct HfRopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}
