//! The llama decoder as candle tensor operations on one device: cuBLAS matmuls
//! and candle's fused kernels (RMSNorm, RoPE, softmax) on a GPU, the same
//! operations on candle's CPU device for the twin that tests run.
//!
//! Weights are dense in the compute dtype (bf16 on a GPU): GGUF files are
//! dequantized at load, because candle's quantized CUDA matmuls were measured
//! wrong on Q4_1 (the CUDA issue). Q, K and V are one stacked matrix, and so are
//! gate and up, so each is one GEMM per step.

use candle_core::{DType, Device, Tensor};

use super::kv_pool::DeviceKvPool;
use super::ops::PagedDecodeAttention;
use super::plan::{AttentionGroup, StepPlan};
use crate::model::config::{LlamaConfig, RopeLayout, RopeScaling};
use crate::model::rope::Rope;
use crate::model::{ModelError, WeightSource};

type Result<T> = std::result::Result<T, ModelError>;

struct Block {
    attn_norm: Tensor,
    /// `[q_dim + 2 * kv_dim, hidden]`.
    qkv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    /// `[2 * intermediate, hidden]`: gate rows, then up rows.
    gate_up: Tensor,
    down: Tensor,
}

impl Block {
    fn load(w: &WeightSource, cfg: &LlamaConfig, i: usize, dev: &Device, dtype: DType) -> Result<Self> {
        let (h, f, q, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
        let m = |name: &str, rows, cols| w.dense_matrix(&format!("blk.{i}.{name}"), rows, cols, dev, dtype);
        let v = |name: &str| -> Result<Tensor> {
            let host = w.vector(&format!("blk.{i}.{name}"), h)?;
            Ok(Tensor::from_vec(host, h, dev)?.to_dtype(dtype)?)
        };
        let qkv = Tensor::cat(
            &[m("attn_q.weight", q, h)?, m("attn_k.weight", kv, h)?, m("attn_v.weight", kv, h)?],
            0,
        )?;
        let gate_up = Tensor::cat(&[m("ffn_gate.weight", f, h)?, m("ffn_up.weight", f, h)?], 0)?;
        Ok(Self {
            attn_norm: v("attn_norm.weight")?,
            qkv,
            wo: m("attn_output.weight", h, q)?,
            ffn_norm: v("ffn_norm.weight")?,
            gate_up,
            down: m("ffn_down.weight", h, f)?,
        })
    }
}

/// What every layer of one step shares, on the device.
struct StepTensors {
    /// Per-row RoPE cos/sin, `[rows, 1, head_dim / 2]` (each row a rope "batch").
    cos: Tensor,
    sin: Tensor,
    /// Each row's KV slot, `[rows]` u32.
    slots: Tensor,
    /// The decode rows' attention (rows `0..seqs`), with their block tables.
    decode: Option<(usize, PagedDecodeAttention)>,
    prefills: Vec<GroupTensors>,
}

struct GroupTensors {
    first_row: usize,
    seqs: usize,
    query_len: usize,
    kv_len: usize,
    kv_slots: Tensor,
    /// `[1, seqs, 1, query_len, kv_len]`, f32.
    mask: Tensor,
}

impl GroupTensors {
    fn upload(g: &AttentionGroup, dev: &Device) -> Result<Self> {
        Ok(Self {
            first_row: g.first_row,
            seqs: g.seqs,
            query_len: g.query_len,
            kv_len: g.kv_len,
            kv_slots: Tensor::from_slice(&g.kv_slots, g.kv_slots.len(), dev)?,
            mask: Tensor::from_slice(&g.mask, (1, g.seqs, 1, g.query_len, g.kv_len), dev)?,
        })
    }
}

pub struct TensorLlama {
    cfg: LlamaConfig,
    device: Device,
    dtype: DType,
    embed: Tensor,
    /// The output projection; the embedding itself when the model ties them.
    lm_head: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// cos/sin of every position up to the served context, `[positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

impl TensorLlama {
    /// Loads the model onto `device` in `dtype`, with RoPE tables for `max_context`
    /// positions.
    pub fn load(
        w: &WeightSource,
        mut cfg: LlamaConfig,
        device: &Device,
        dtype: DType,
        max_context: usize,
    ) -> Result<Self> {
        if w.has("rope_freqs.weight") {
            cfg.rope_scaling = RopeScaling::FreqFactors(w.vector("rope_freqs.weight", cfg.head_dim / 2)?);
        }
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = w.dense_matrix("token_embd.weight", v, h, device, dtype)?;
        let lm_head = if w.has("output.weight") {
            w.dense_matrix("output.weight", v, h, device, dtype)?
        } else {
            embed.clone()
        };
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::load(w, &cfg, i, device, dtype))
            .collect::<Result<Vec<_>>>()?;
        let norm = Tensor::from_vec(w.vector("output_norm.weight", h)?, h, device)?.to_dtype(dtype)?;
        let positions: Vec<usize> = (0..max_context).collect();
        let (cos, sin) = Rope::new(&cfg).angles(&positions).into_tables();
        let half = cfg.head_dim / 2;
        let cos = Tensor::from_vec(cos, (max_context, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_context, half), device)?.to_dtype(dtype)?;
        Ok(Self { cfg, device: device.clone(), dtype, embed, lm_head, blocks, norm, cos, sin })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs one planned step; returns `[logit rows, vocab]` f32 logits on the host,
    /// flattened, in the plan's `logit_rows` order.
    pub fn forward(&self, plan: &StepPlan, kv: &DeviceKvPool) -> Result<Vec<f32>> {
        let dev = &self.device;
        let rows = plan.ids.len();
        let half = self.cfg.head_dim / 2;
        let positions = Tensor::from_slice(&plan.positions, rows, dev)?;
        let c = &self.cfg;
        let decode = match &plan.decode {
            None => None,
            Some(g) => Some((
                g.seqs,
                PagedDecodeAttention {
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    block_size: kv.block_size(),
                    scale: 1.0 / (c.head_dim as f32).sqrt(),
                    device_tables: Tensor::from_slice(&g.tables, (g.seqs, g.max_blocks), dev)?,
                    device_lens: Tensor::from_slice(&g.lens, g.seqs, dev)?,
                    tables: g.tables.clone(),
                    max_blocks: g.max_blocks,
                    lens: g.lens.clone(),
                },
            )),
        };
        let step = StepTensors {
            cos: self.cos.index_select(&positions, 0)?.reshape((rows, 1, half))?,
            sin: self.sin.index_select(&positions, 0)?.reshape((rows, 1, half))?,
            slots: Tensor::from_slice(&plan.slots, rows, dev)?,
            decode,
            prefills: plan.prefills.iter().map(|g| GroupTensors::upload(g, dev)).collect::<Result<_>>()?,
        };
        let ids = Tensor::from_slice(&plan.ids, rows, dev)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(block, &x, &step, layer, kv)?;
        }
        if plan.logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        let picked = Tensor::from_slice(&plan.logit_rows, plan.logit_rows.len(), dev)?;
        let last = x.index_select(&picked, 0)?;
        let normed = candle_nn::ops::rms_norm(&last, &self.norm, self.cfg.rms_norm_eps)?;
        let logits = normed.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    fn block_forward(
        &self,
        b: &Block,
        x: &Tensor,
        step: &StepTensors,
        layer: usize,
        kv: &DeviceKvPool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (rows, eps) = (x.dim(0)?, c.rms_norm_eps);
        let (nh, nkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let (qd, kd) = (c.q_dim(), c.kv_dim());

        let h = candle_nn::ops::rms_norm(x, &b.attn_norm, eps)?;
        let qkv = h.matmul(&b.qkv.t()?)?;
        let q = self.rope(&qkv.narrow(1, 0, qd)?.contiguous()?.reshape((rows, nh, 1, d))?, step)?;
        let k = self.rope(&qkv.narrow(1, qd, kd)?.contiguous()?.reshape((rows, nkv, 1, d))?, step)?;
        let v = qkv.narrow(1, qd + kd, kd)?;
        // New keys and values go into the pool before attention reads it, so a
        // chunk's own rows are among the keys it reads.
        kv.write(layer, &k.reshape((rows, kd))?, &v, &step.slots)?;

        let mut outs = Vec::with_capacity(step.prefills.len() + 1);
        if let Some((seqs, op)) = &step.decode {
            let q_rows = q.narrow(0, 0, *seqs)?.reshape((*seqs, nh, d))?;
            outs.push(kv.attend_decode(layer, &q_rows, op)?.reshape((*seqs, nh * d))?);
        }
        for g in &step.prefills {
            let q_rows = q.narrow(0, g.first_row, g.seqs * g.query_len)?;
            outs.push(self.attend(&q_rows, g, layer, kv)?);
        }
        let attended = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 0)? };
        let x = (x + attended.matmul(&b.wo.t()?)?)?;

        let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
        let gate_up = h.matmul(&b.gate_up.t()?)?;
        let f = c.intermediate_size;
        let act = (gate_up.narrow(1, 0, f)?.silu()? * gate_up.narrow(1, f, f)?)?;
        Ok((x + act.matmul(&b.down.t()?)?)?)
    }

    /// Rotates `[rows, heads, 1, head_dim]` by each row's own position.
    fn rope(&self, x: &Tensor, step: &StepTensors) -> Result<Tensor> {
        Ok(match self.cfg.rope_layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(x, &step.cos, &step.sin)?,
            RopeLayout::Halves => candle_nn::rotary_emb::rope(x, &step.cos, &step.sin)?,
        })
    }

    /// Attention of one group's query rows (`[seqs * query_len, heads, 1, head_dim]`)
    /// over its gathered keys: `[seqs * query_len, heads * head_dim]`. Grouped-query
    /// heads share their KV head by folding the group into the query rows.
    fn attend(&self, q: &Tensor, g: &GroupTensors, layer: usize, kv: &DeviceKvPool) -> Result<Tensor> {
        let c = &self.cfg;
        let (nh, nkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = nh / nkv;
        let (n, ql, l) = (g.seqs, g.query_len, g.kv_len);
        let q = q.reshape((n, ql, nkv, group, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?.reshape((
            nkv,
            n,
            group * ql,
            d,
        ))?;
        let (k, v) = kv.gather(layer, &g.kv_slots)?;
        let k = k.reshape((nkv, n, l, d))?;
        let v = v.reshape((nkv, n, l, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?.affine(scale, 0.0)?;
        let scores = scores.reshape((nkv, n, group, ql, l))?.broadcast_add(&g.mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
        let out = probs.reshape((nkv, n, group * ql, l))?.matmul(&v)?;
        Ok(out
            .reshape((nkv, n, group, ql, d))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?
            .reshape((n * ql, nh * d))?)
    }
}
