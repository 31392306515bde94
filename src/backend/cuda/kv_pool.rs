//! The paged KV pool in device memory: per layer one K and one V tensor of
//! `[kv_heads, slots, head_dim]`, where slot `b * block_size + i` is offset `i` of
//! block `b`. Kv-head-major, so gathering a group's slots along dimension 1 gives
//! `[kv_heads, seqs * kv_len, head_dim]`: already the batched layout attention
//! multiplies, with no transpose of the gathered keys. Writes and decode
//! attention go through the backend's own ops (`ops`); a prefill chunk's keys
//! are gathered by slot.

use candle_core::{DType, Device, Tensor};

use super::ops::{PagedDecodeAttention, WriteKv};

use crate::model::LlamaConfig;

pub struct DeviceKvPool {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    block_size: usize,
}

impl DeviceKvPool {
    pub fn bytes_per_block(cfg: &LlamaConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_layers * cfg.kv_dim() * block_size * dtype.size_in_bytes()
    }

    /// A pool of `num_blocks` blocks of `block_size` slots.
    pub fn new(
        cfg: &LlamaConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = (cfg.num_kv_heads, num_blocks * block_size, cfg.head_dim);
        let mut keys = Vec::with_capacity(cfg.num_layers);
        let mut values = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self { keys, values, block_size })
    }

    /// A pool over existing per-layer K and V tensors (`[kv_heads, slots,
    /// head_dim]` each), e.g. a runtime's own KV buffers viewed as one block per slot.
    pub fn from_layers(keys: Vec<Tensor>, values: Vec<Tensor>, block_size: usize) -> Self {
        Self { keys, values, block_size }
    }

    /// The per-layer K and V tensors.
    pub fn into_layers(self) -> (Vec<Tensor>, Vec<Tensor>) {
        (self.keys, self.values)
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Writes a step's new keys and values of `layer` (each `[rows, kv_heads *
    /// head_dim]`, any row stride) at `slots` (`[rows]` u32, one per row).
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, slots: &Tensor) -> candle_core::Result<()> {
        self.keys[layer].inplace_op3(k, slots, &WriteKv)?;
        self.values[layer].inplace_op3(v, slots, &WriteKv)
    }

    /// Decode attention of `q` (`[seqs, heads, head_dim]`) over `layer`'s pool
    /// through the op's block tables: `[seqs, heads, head_dim]`.
    pub fn attend_decode(
        &self,
        layer: usize,
        q: &Tensor,
        op: &PagedDecodeAttention,
    ) -> candle_core::Result<Tensor> {
        q.apply_op3_no_bwd(&self.keys[layer], &self.values[layer], op)
    }

    /// Keys and values of `layer` at `slots` (a `[n]` u32 tensor on the device):
    /// each `[kv_heads, n, head_dim]`.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.keys[layer].index_select(slots, 1)?, self.values[layer].index_select(slots, 1)?))
    }
}
