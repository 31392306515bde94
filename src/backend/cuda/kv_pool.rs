//! The paged KV pool in device memory: per layer one K and one V tensor of
//! `[kv_heads, slots, head_dim]`, where slot `b * block_size + i` is offset `i` of
//! block `b`. Kv-head-major, so gathering a group's slots along dimension 1 gives
//! `[kv_heads, seqs * kv_len, head_dim]`: already the batched layout attention
//! multiplies, with no transpose of the gathered keys.

use candle_core::{DType, Device, Tensor};

use crate::model::LlamaConfig;

pub struct DeviceKvPool {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

impl DeviceKvPool {
    pub fn bytes_per_block(cfg: &LlamaConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_layers * cfg.kv_dim() * block_size * dtype.size_in_bytes()
    }

    pub fn new(cfg: &LlamaConfig, slots: usize, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let shape = (cfg.num_kv_heads, slots, cfg.head_dim);
        let mut keys = Vec::with_capacity(cfg.num_layers);
        let mut values = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self { keys, values })
    }

    /// Writes a step's new keys and values (`[kv_heads, rows, head_dim]`) of `layer`
    /// at the slots `index` names (`[kv_heads, rows, head_dim]`, each row's slot
    /// repeated; see [`DeviceKvPool::write_index`]).
    pub fn write(&self, layer: usize, index: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        self.keys[layer].scatter_set(index, k, 1)?;
        self.values[layer].scatter_set(index, v, 1)
    }

    /// The scatter index for rows written at `slots` (one per row): the same for
    /// every layer of a step, so it is built once.
    pub fn write_index(
        slots: &[u32],
        kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::from_slice(slots, (1, slots.len(), 1), device)?
            .broadcast_as((kv_heads, slots.len(), head_dim))?
            .contiguous()
    }

    /// Keys and values of `layer` at `slots` (a `[n]` u32 tensor on the device):
    /// each `[kv_heads, n, head_dim]`.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.keys[layer].index_select(slots, 1)?, self.values[layer].index_select(slots, 1)?))
    }
}
