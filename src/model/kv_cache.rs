//! The paged KV cache in host memory: per layer, one K and one V array of
//! `num_blocks` blocks, each laid out head-major: `num_kv_heads × block_size ×
//! head_dim` values, so one KV head's rows of a block are contiguous (attention reads
//! a KV head at a time; this way it streams whole 4 KiB runs instead of every
//! third quarter of each token's row). Which blocks belong to which sequence is the
//! engine's business (its block table arrives with every step); this type only
//! stores values where a block table says.

use rayon::prelude::*;

use super::config::LlamaConfig;

/// Writes one value per 4 KiB page so the OS backs every page now. Volatile, so the
/// stores of a zero into calloc'd (known-zero) memory are not optimised away.
fn touch_pages(a: &mut [f32]) {
    for page in a.chunks_mut(1024) {
        // SAFETY: `page` is a non-empty slice of initialised f32s.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0.0) };
    }
}

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
    head_dim: usize,
    layers: Vec<LayerKv>,
}

impl PagedKvCache {
    pub fn new(cfg: &LlamaConfig, block_size: usize, num_blocks: usize) -> Self {
        let kv_dim = cfg.kv_dim();
        let len = num_blocks * block_size * kv_dim;
        let mut layers: Vec<LayerKv> =
            (0..cfg.num_layers).map(|_| LayerKv { k: vec![0.0; len], v: vec![0.0; len] }).collect();
        // vec![0.0; n] maps zeroed pages lazily, so the first write to each page
        // faults and zeroes it. Left to serving, that was 5% of the CPU time at 16
        // concurrent requests (first-touched blocks in every step); paid here
        // once instead, as a server preallocating its pool should.
        layers.par_iter_mut().flat_map(|l| [&mut l.k, &mut l.v]).for_each(|a| touch_pages(a));
        Self { block_size, num_blocks, kv_dim, head_dim: cfg.head_dim, layers }
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

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Where KV head `kv_head`'s `head_dim` values for position `pos` of a sequence
    /// start in a layer's K (or V) array. Callers have checked that the block table
    /// covers `pos`.
    #[inline]
    pub fn offset(&self, block_table: &[u32], pos: usize, kv_head: usize) -> usize {
        let block = block_table[pos / self.block_size];
        self.block_offset(block, kv_head) + (pos % self.block_size) * self.head_dim
    }

    /// Where KV head `kv_head`'s rows of `block` start; its `block_size` rows of
    /// `head_dim` values follow one another.
    #[inline]
    pub fn block_offset(&self, block: u32, kv_head: usize) -> usize {
        let heads = self.kv_dim / self.head_dim;
        (block as usize * heads + kv_head) * self.block_size * self.head_dim
    }

    /// Appends the offsets (as [`PagedKvCache::offset`]) of positions `0..len` of a
    /// sequence for one KV head, a block at a time: no division per position.
    pub fn extend_offsets(&self, block_table: &[u32], len: usize, kv_head: usize, out: &mut Vec<usize>) {
        for (b, &block) in block_table.iter().enumerate() {
            let first = b * self.block_size;
            if first >= len {
                break;
            }
            let base = self.block_offset(block, kv_head);
            let n = (len - first).min(self.block_size);
            out.extend((0..n).map(|i| base + i * self.head_dim));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{RopeLayout, RopeScaling};

    fn cache(num_kv_heads: usize, head_dim: usize, block_size: usize, num_blocks: usize) -> PagedKvCache {
        let cfg = LlamaConfig {
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: num_kv_heads,
            num_kv_heads,
            head_dim,
            vocab_size: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_layout: RopeLayout::Halves,
            max_position: 64,
        };
        PagedKvCache::new(&cfg, block_size, num_blocks)
    }

    #[test]
    fn offsets_tile_the_pool_without_overlap_and_agree_with_extend_offsets() {
        let c = cache(3, 8, 4, 5);
        let table = [4u32, 0, 2, 1, 3];
        let mut seen = vec![false; c.layer(0).k.len()];
        for h in 0..3 {
            let mut runs = Vec::new();
            c.extend_offsets(&table, 18, h, &mut runs);
            assert_eq!(runs.len(), 18);
            for (pos, &off) in runs.iter().enumerate() {
                assert_eq!(off, c.offset(&table, pos, h), "head {h} position {pos}");
                for x in &mut seen[off..off + 8] {
                    assert!(!*x, "head {h} position {pos} overlaps another row");
                    *x = true;
                }
            }
        }
        // A KV head's rows of one block are contiguous (what attention streams).
        assert_eq!(c.offset(&table, 1, 2), c.offset(&table, 0, 2) + 8);
        assert_eq!(c.block_offset(4, 0), c.offset(&table, 0, 0));
    }
}
