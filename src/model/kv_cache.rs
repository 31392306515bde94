//! The paged KV cache in host memory: per layer, one K and one V array of
//! `num_blocks × block_size` slots, each slot holding one token's
//! `num_kv_heads × head_dim` values. Which blocks belong to which sequence is the
//! engine's business (its block table arrives with every step); this type only
//! stores values at the slots a block table names.

use super::config::LlamaConfig;

#[derive(Debug)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Debug)]
pub struct PagedKvCache {
    block_size: usize,
    num_blocks: usize,
    kv_dim: usize,
    layers: Vec<LayerKv>,
}

impl PagedKvCache {
    pub fn new(cfg: &LlamaConfig, block_size: usize, num_blocks: usize) -> Self {
        let kv_dim = cfg.kv_dim();
        let len = num_blocks * block_size * kv_dim;
        // vec![0.0; n] maps zeroed pages lazily, so an unused pool costs no RAM.
        let layers = (0..cfg.num_layers).map(|_| LayerKv { k: vec![0.0; len], v: vec![0.0; len] }).collect();
        Self { block_size, num_blocks, kv_dim, layers }
    }

    /// Bytes one block occupies across all layers (K and V, f32).
    pub fn bytes_per_block(cfg: &LlamaConfig, block_size: usize) -> usize {
        2 * cfg.num_layers * block_size * cfg.kv_dim() * std::mem::size_of::<f32>()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// The slot (row of `kv_dim` values) that holds position `pos` of a sequence.
    /// Callers have checked that the block table covers `pos`.
    #[inline]
    pub fn slot(&self, block_table: &[u32], pos: usize) -> usize {
        block_table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}
