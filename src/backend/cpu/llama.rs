//! The llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Mistral-style GQA) run
//! over a *step batch*: the new tokens of several sequences concatenated, each with
//! its own position and KV block table.
//!
//! Reference: Touvron et al., "LLaMA" (2023), and Hugging Face transformers'
//! `modeling_llama.py`. Linear layers run once over all tokens of the step (that is
//! where batching pays); attention runs per token over its own sequence's blocks;
//! past the last layer's K/V write, only the rows that asked for logits go on (its
//! attention, projections and MLP, the output projection).

use rayon::prelude::*;

use super::attention::{self, AttentionShape};
use super::elementwise::{add_in_place, add_then_rms_norm, rms_norm, swiglu_separate};
use super::kernels::Activations;
use super::kv_cache::PagedKvCache;
use super::linear::{Embedding, Linear};
use super::profile::{self, Section};
use super::scratch::{rows, Scratch};
use crate::backend::{PackedStep, SeqStep, StepBatch};
use crate::model::config::{LlamaConfig, RopeScaling};
use crate::model::rope::Rope;
use crate::model::weights::WeightSource;
use crate::model::ModelError;

struct Attention {
    /// Q, K and V stacked into one matrix when the kernels allow it: one pass over
    /// the activations instead of three.
    qkv: Projections,
    wo: Linear,
}

/// Rows at or above which the fused QKV rows are split into Q, K and V on every
/// thread.
const PARALLEL_SPLIT_ROWS: usize = 32;

/// One fused QKV row and the Q, K and V rows it is split into.
type SplitRow<'a> = (&'a [f32], ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]));

/// Query, key and value rows of a step.
type Qkv<'s> = (&'s mut [f32], &'s mut [f32], &'s mut [f32]);

enum Projections {
    Fused { qkv: Linear, q_dim: usize, kv_dim: usize },
    Separate { wq: Linear, wk: Linear, wv: Linear },
}

impl Projections {
    fn new(wq: Linear, wk: Linear, wv: Linear) -> Self {
        match Linear::stack(&[&wq, &wk, &wv]) {
            Some(qkv) => Projections::Fused { qkv, q_dim: wq.out_features(), kv_dim: wk.out_features() },
            None => Projections::Separate { wq, wk, wv },
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        match self {
            Projections::Separate { wq, wk, wv } => vec![wq, wk, wv],
            Projections::Fused { qkv, .. } => vec![qkv],
        }
    }

    /// Q, K and V for the `t` rows of `x`, in `q`, `k` and `v` (the fused matrix's
    /// rows go through `all` first).
    fn forward<'s>(
        &self,
        x: &[f32],
        t: usize,
        acts: Activations,
        all: &mut Vec<f32>,
        [q, k, v]: [&'s mut Vec<f32>; 3],
    ) -> Result<Qkv<'s>, ModelError> {
        match self {
            Projections::Separate { wq, wk, wv } => {
                let (qd, kd) = (wq.out_features(), wk.out_features());
                let (q, k, v) = (rows(q, t * qd), rows(k, t * kd), rows(v, t * kd));
                wq.forward_into(x, t, acts, q)?;
                wk.forward_into(x, t, acts, k)?;
                wv.forward_into(x, t, acts, v)?;
                Ok((q, k, v))
            }
            Projections::Fused { qkv, q_dim, kv_dim } => {
                let (qd, kd) = (*q_dim, *kv_dim);
                let all = rows(all, t * (qd + 2 * kd));
                qkv.forward_into(x, t, acts, all)?;
                let (q, k, v) = (rows(q, t * qd), rows(k, t * kd), rows(v, t * kd));
                let one = |(row, ((q, k), v)): SplitRow<'_>| {
                    q.copy_from_slice(&row[..qd]);
                    k.copy_from_slice(&row[qd..qd + kd]);
                    v.copy_from_slice(&row[qd + kd..]);
                };
                // A prefill chunk's rows are megabytes: split over the pool's threads.
                if t >= PARALLEL_SPLIT_ROWS {
                    let split = q
                        .par_chunks_exact_mut(qd)
                        .zip(k.par_chunks_exact_mut(kd))
                        .zip(v.par_chunks_exact_mut(kd));
                    all.par_chunks_exact(qd + 2 * kd)
                        .zip(split)
                        .with_min_len(PARALLEL_SPLIT_ROWS)
                        .for_each(one);
                } else {
                    let split =
                        q.chunks_exact_mut(qd).zip(k.chunks_exact_mut(kd)).zip(v.chunks_exact_mut(kd));
                    all.chunks_exact(qd + 2 * kd).zip(split).for_each(one);
                }
                Ok((q, k, v))
            }
        }
    }
}

impl Attention {
    fn load(w: &WeightSource, cfg: &LlamaConfig, i: usize) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Projections::new(
                Linear::load(w, &format!("blk.{i}.attn_q.weight"), cfg.q_dim(), h)?,
                Linear::load(w, &format!("blk.{i}.attn_k.weight"), cfg.kv_dim(), h)?,
                Linear::load(w, &format!("blk.{i}.attn_v.weight"), cfg.kv_dim(), h)?,
            ),
            wo: Linear::load(w, &format!("blk.{i}.attn_output.weight"), h, cfg.q_dim())?,
        })
    }

    /// Q, K and V of the step's rows from `s.normed`: K and V (rotated) into the
    /// cache, Q (rotated) left in `s.q`.
    fn store_kv(
        &self,
        step: &StepContext,
        layer: usize,
        kv: &mut PagedKvCache,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let t = step.num_tokens;
        let Scratch { normed, qkv, q, k, v, .. } = s;
        let x = &normed[..t * self.wo.out_features()];
        let (q, k, v) =
            profile::time(Section::QkvMatmul, || self.qkv.forward(x, t, step.activations, qkv, [q, k, v]))?;
        profile::time(Section::RopeKvWrite, || {
            step.rope.apply(q, step.shape.num_heads, &step.angles);
            step.rope.apply(k, step.shape.num_kv_heads, &step.angles);
            attention::write_kv(kv, layer, &step.kv_writes, k, v);
        });
        Ok(())
    }

    /// Attention and the output projection for the rows of `seqs`, whose queries are
    /// the first rows of `s.q`; the output in `s.projected`.
    fn attend(
        &self,
        step: &StepContext,
        seqs: &[SeqStep],
        layer: usize,
        kv: &PagedKvCache,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let t: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let q = &s.q[..t * step.shape.num_heads * step.shape.head_dim];
        let out = rows(&mut s.attended, q.len());
        profile::time(Section::Attention, || attention::attend(kv, layer, seqs, &step.shape, q, out));
        let projected = rows(&mut s.projected, t * self.wo.out_features());
        profile::time(Section::AttnOutMatmul, || self.wo.forward_into(out, t, step.activations, projected))
    }
}

struct Mlp {
    /// Gate and up projections, stacked into one matrix when the kernels allow.
    gate_up: GateUp,
    down: Linear,
}

enum GateUp {
    Fused { both: Linear, width: usize },
    Separate { gate: Linear, up: Linear },
}

impl Mlp {
    fn load(w: &WeightSource, cfg: &LlamaConfig, i: usize) -> Result<Self, ModelError> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let gate = Linear::load(w, &format!("blk.{i}.ffn_gate.weight"), f, h)?;
        let up = Linear::load(w, &format!("blk.{i}.ffn_up.weight"), f, h)?;
        let gate_up = match Linear::stack(&[&gate, &up]) {
            Some(both) => GateUp::Fused { both, width: f },
            None => GateUp::Separate { gate, up },
        };
        Ok(Self { gate_up, down: Linear::load(w, &format!("blk.{i}.ffn_down.weight"), h, f)? })
    }

    fn linears(&self) -> Vec<&Linear> {
        match &self.gate_up {
            GateUp::Separate { gate, up } => vec![gate, up, &self.down],
            GateUp::Fused { both, .. } => vec![both, &self.down],
        }
    }

    /// The MLP of the step's `t` rows: its input is `s.normed`, its output
    /// `s.projected`.
    fn forward(&self, t: usize, acts: Activations, s: &mut Scratch) -> Result<(), ModelError> {
        let Scratch { normed, hidden, projected, .. } = s;
        let x = &normed[..t * self.down.out_features()];
        let h = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let (g, u) = profile::time(Section::GateUpMatmul, || {
                    Ok::<_, ModelError>((gate.forward(x, t, acts)?, up.forward(x, t, acts)?))
                })?;
                let h = rows(hidden, t * gate.out_features());
                profile::time(Section::Swiglu, || swiglu_separate(&g, &u, gate.out_features(), h));
                h
            }
            // The gate runs inside the matmul where the kernels allow (its time is
            // then the matmul's in the step profile).
            GateUp::Fused { both, width } => {
                let h = rows(hidden, t * width);
                profile::time(Section::GateUpMatmul, || both.forward_swiglu_into(x, t, acts, *width, h))?;
                h
            }
        };
        let out = rows(projected, x.len());
        profile::time(Section::DownMatmul, || self.down.forward_into(h, t, acts, out))
    }
}

struct Block {
    attn_norm: Vec<f32>,
    attn: Attention,
    ffn_norm: Vec<f32>,
    mlp: Mlp,
}

impl Block {
    fn load(w: &WeightSource, cfg: &LlamaConfig, i: usize) -> Result<Self, ModelError> {
        Ok(Self {
            attn_norm: w.vector(&format!("blk.{i}.attn_norm.weight"), cfg.hidden_size)?,
            attn: Attention::load(w, cfg, i)?,
            ffn_norm: w.vector(&format!("blk.{i}.ffn_norm.weight"), cfg.hidden_size)?,
            mlp: Mlp::load(w, cfg, i)?,
        })
    }

    /// The layer over the step's rows in `x`. With `only`, K and V of every row go into
    /// the cache and the rest runs for the rows of `only` alone, whose results are then
    /// all of `x`: the model's last layer, whose other rows no one reads. Each row comes
    /// out with the same bits either way (every kernel computes a row alone, and a cut
    /// prompt row stays a prompt row).
    fn forward(
        &self,
        x: &mut Vec<f32>,
        step: &StepContext,
        layer: usize,
        kv: &mut PagedKvCache,
        s: &mut Scratch,
        only: Option<&KeptRows>,
    ) -> Result<(), ModelError> {
        let (n, eps) = (x.len(), step.rms_norm_eps);
        profile::time(Section::NormsResiduals, || rms_norm(x, &self.attn_norm, eps, rows(&mut s.normed, n)));
        self.attn.store_kv(step, layer, kv, s)?;
        let (seqs, t) = match only {
            None => (step.seqs, step.num_tokens),
            Some(kept) => {
                // Moved forward in place: a kept row's new index is never above its old one.
                let (h, qd) = (n / step.num_tokens, step.shape.num_heads * step.shape.head_dim);
                for (to, &from) in kept.rows.iter().enumerate() {
                    s.q.copy_within(from * qd..(from + 1) * qd, to * qd);
                    x.copy_within(from * h..(from + 1) * h, to * h);
                }
                x.truncate(kept.rows.len() * h);
                (&kept.seqs[..], kept.rows.len())
            }
        };
        if t == 0 {
            return Ok(()); // only non-final prompt chunks, cut to no rows
        }
        self.attn.attend(step, seqs, layer, kv, s)?;
        let n = x.len();
        profile::time(Section::NormsResiduals, || {
            add_then_rms_norm(x, &s.projected[..n], &self.ffn_norm, eps, rows(&mut s.normed, n))
        });
        self.mlp.forward(t, step.activations, s)?;
        profile::time(Section::NormsResiduals, || add_in_place(x, &s.projected[..n]));
        Ok(())
    }
}

/// The rows of a step that go past the last layer's K/V write: those that want logits.
struct KeptRows<'a> {
    /// The step cut down to them ([`StepBatch::logit_rows_only`]).
    seqs: Vec<SeqStep<'a>>,
    /// Their indices among the step's rows, increasing.
    rows: &'a [usize],
}

/// What every layer of one forward pass shares.
struct StepContext<'a> {
    num_tokens: usize,
    seqs: &'a [SeqStep<'a>],
    /// Where each layer's K and V rows go in the cache.
    kv_writes: attention::KvWrites,
    rope: &'a Rope,
    angles: crate::model::rope::RopeAngles,
    shape: AttentionShape,
    activations: Activations,
    rms_norm_eps: f32,
}

pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    lm_head: Linear,
    rope: Rope,
    activations: Activations,
    chunk_invariant_attention: bool,
    bf16_tiles: bool,
}

impl Llama {
    /// Prompt tiles take their attention products in bf16 pairs (the caller resolved
    /// `--attention-precision`, `AttentionPrecision::resolve`).
    pub fn with_bf16_tiles(mut self, on: bool) -> Self {
        self.bf16_tiles = on;
        self
    }

    /// Computes decode rows' attention bit for bit as a prefill tile would (see
    /// `attention::attend`).
    pub fn with_chunk_invariant_attention(mut self, on: bool) -> Self {
        self.chunk_invariant_attention = on;
        self
    }

    /// Runs the quantized matmuls on activations of this precision.
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.activations = activations;
        self
    }

    /// Loads the model from GGUF or safetensors weights with the given config.
    pub fn load(w: &WeightSource, mut cfg: LlamaConfig) -> Result<Self, ModelError> {
        if w.has("rope_freqs.weight") {
            cfg.rope_scaling = RopeScaling::FreqFactors(w.vector("rope_freqs.weight", cfg.head_dim / 2)?);
        }
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = Embedding::load(w, "token_embd.weight", v, h)?;
        // Tied embeddings (SmolLM2, Llama 3.2 1B): the output projection reuses them.
        let head_name = if w.has("output.weight") { "output.weight" } else { "token_embd.weight" };
        let lm_head = Linear::load(w, head_name, v, h)?;
        let blocks = (0..cfg.num_layers).map(|i| Block::load(w, &cfg, i)).collect::<Result<Vec<_>, _>>()?;
        let norm = w.vector("output_norm.weight", h)?;
        let rope = Rope::new(&cfg);
        let model = Self {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            activations: Activations::default(),
            chunk_invariant_attention: false,
            bf16_tiles: false,
        };
        // Which matrices run where: a format the kernels do not cover falls back to
        // candle and is much slower at batch sizes above one.
        tracing::info!(matmuls = ?model.matmul_implementations(), "weight matrices placed");
        Ok(model)
    }

    /// Whether every layer's matmuls take quantized weights, and so (with int8
    /// activations) round their inputs to 8 bits.
    pub fn quantized_layers(&self) -> bool {
        self.layer_linears().all(Linear::is_quantized)
    }

    /// Every layer's weight matrices (stacked ones counting once), the output head not
    /// included.
    fn layer_linears(&self) -> impl Iterator<Item = &Linear> {
        self.blocks.iter().flat_map(|b| {
            let mut l = b.attn.qkv.linears();
            l.push(&b.attn.wo);
            l.extend(b.mlp.linears());
            l
        })
    }

    /// How many weight matrices (stacked ones counting once) each implementation
    /// computes, keyed by [`Linear::implementation`].
    pub fn matmul_implementations(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for linear in self.layer_linears().chain([&self.lm_head]) {
            *counts.entry(linear.implementation()).or_insert(0) += 1;
        }
        counts
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Runs one step. Returns one row of `vocab_size` logits per sequence with
    /// `want_logits` (every row of one with `all_logits`), in batch order. The caller has validated block tables,
    /// positions and token ids against the cache and vocabulary. The layers' rows go
    /// through `scratch`, which keeps its buffers for the next step.
    pub fn forward(
        &self,
        batch: &StepBatch,
        kv: &mut PagedKvCache,
        scratch: &mut Scratch,
    ) -> Result<Vec<f32>, ModelError> {
        let packed = PackedStep::new(batch);
        if packed.num_tokens() == 0 {
            return Err(ModelError::InvalidBatch("no tokens".into()));
        }
        let step = StepContext {
            num_tokens: packed.num_tokens(),
            seqs: &batch.seqs,
            kv_writes: attention::KvWrites::new(kv.block_size(), &batch.seqs),
            rope: &self.rope,
            angles: self.rope.angles(&packed.positions),
            shape: AttentionShape {
                num_heads: self.cfg.num_heads,
                num_kv_heads: self.cfg.num_kv_heads,
                head_dim: self.cfg.head_dim,
                chunk_invariant: self.chunk_invariant_attention,
                bf16_tiles: self.bf16_tiles,
            },
            activations: self.activations,
            rms_norm_eps: self.cfg.rms_norm_eps,
        };
        profile::count_pass();
        let mut x = profile::time(Section::Embedding, || self.embed.lookup(&packed.ids))?;
        let Some((last, below)) = self.blocks.split_last() else {
            return Err(ModelError::InvalidBatch("a model without layers".into()));
        };
        for (layer, block) in below.iter().enumerate() {
            block.forward(&mut x, &step, layer, kv, scratch, None)?;
        }
        // Only the rows that want logits go past the last layer's attention and reach
        // the head: the last token of most sequences, every token of a prompt being
        // scored. (A decode-only step keeps every row: nothing to cut.)
        let logit_rows = &packed.logit_rows;
        let kept = (logit_rows.len() < packed.num_tokens())
            .then(|| KeptRows { seqs: batch.logit_rows_only().seqs, rows: logit_rows });
        last.forward(&mut x, &step, below.len(), kv, scratch, kept.as_ref())?;
        if logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        profile::time(Section::LmHead, || {
            let mut normed = vec![0.0; x.len()];
            rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, &mut normed);
            // With bf16 activations the head runs on f32 ones: it sees a row or a few per
            // step, where widening its weights for the tiles costs more than the f32
            // kernel's multiply-adds, and every logit row takes this one path either way.
            let activations = match self.activations {
                Activations::Bf16 => Activations::F32,
                other => other,
            };
            self.lm_head.forward(&normed, logit_rows.len(), activations)
        })
    }
}
