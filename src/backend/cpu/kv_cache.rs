//! The paged KV cache in host memory: per layer, one K and one V array of
//! `num_blocks` blocks, each laid out head-major: `num_kv_heads × block_size ×
//! head_dim` values, so one KV head's rows of a block are contiguous (attention reads
//! a KV head at a time; this way it streams whole 4 KiB runs instead of every
//! third quarter of each token's row). Which blocks belong to which sequence is the
//! engine's business (its block table arrives with every step); this type only
//! stores values where a block table says.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::kv_prefault::{PoolArray, Prefaulter};
use crate::model::config::LlamaConfig;

/// How cached K and V values are stored. f16 is the default (as in llama.cpp and
/// vLLM): half the pool memory, so twice the tokens fit in `--kv-cache-gib`, and half
/// the bytes attention streams, which is what decode waits on; prefill, bound by the
/// matmuls, does not notice (the A/B is in `benches/results/2026-12-04-architecture/`).
/// f32 keeps the model's arithmetic exact (the float-weights fidelity test uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    F32,
    #[default]
    F16,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// One layer's cached K and V values, in the cache's [`KvDtype`].
#[derive(Debug)]
pub enum LayerKv {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

impl LayerKv {
    /// Zeroed arrays from the allocator's zeroed memory (`calloc`, fresh `mmap`
    /// pages for a pool this size), never written here: the OS backs a page when a
    /// block's first row is stored in it, so a pool costs nothing until it is used.
    /// f16 is allocated as its bits (`u16`): `vec![f16::ZERO; n]` would write every
    /// element, since only primitive zeros take the zeroed-allocation path.
    fn zeroed(dtype: KvDtype, len: usize) -> LayerKv {
        match dtype {
            KvDtype::F32 => LayerKv::F32 { k: vec![0.0; len], v: vec![0.0; len] },
            KvDtype::F16 => {
                LayerKv::F16 { k: vec![0u16; len].reinterpret_into(), v: vec![0u16; len].reinterpret_into() }
            }
        }
    }

    /// Where the K and V buffers are, for the prefaulter.
    fn arrays(&self) -> [PoolArray; 2] {
        fn of<T>(v: &[T]) -> PoolArray {
            PoolArray { addr: v.as_ptr() as usize, bytes: std::mem::size_of_val(v) }
        }
        match self {
            LayerKv::F32 { k, v } => [of(k), of(v)],
            LayerKv::F16 { k, v } => [of(k), of(v)],
        }
    }

    /// Stores one K row and one V row at `at`, converted to the cache's type.
    pub fn store(&mut self, at: usize, k_row: &[f32], v_row: &[f32]) {
        let n = k_row.len();
        match self {
            LayerKv::F32 { k, v } => {
                k[at..at + n].copy_from_slice(k_row);
                v[at..at + n].copy_from_slice(v_row);
            }
            LayerKv::F16 { k, v } => {
                k[at..at + n].convert_from_f32_slice(k_row);
                v[at..at + n].convert_from_f32_slice(v_row);
            }
        }
    }

    /// Asks for the K and V rows of `n` values at `at` to be brought into L1, ahead of
    /// a [`LayerKv::store`] there.
    pub fn prefetch_row(&self, at: usize, n: usize) {
        fn both<T>(k: &[T], v: &[T], rows: std::ops::Range<usize>) {
            use crate::backend::cpu::kernels::prefetch::{prefetch, Level};
            prefetch(k.get(rows.clone()).unwrap_or(&[]), Level::L1);
            prefetch(v.get(rows).unwrap_or(&[]), Level::L1);
        }
        match self {
            LayerKv::F32 { k, v } => both(k, v, at..at + n),
            LayerKv::F16 { k, v } => both(k, v, at..at + n),
        }
    }

    /// Values in each of K and V.
    pub fn len(&self) -> usize {
        match self {
            LayerKv::F32 { k, .. } => k.len(),
            LayerKv::F16 { k, .. } => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct PagedKvCache {
    /// Declared first so that it is dropped (its thread joined) before `layers`.
    prefaulter: Option<Prefaulter>,
    block_size: usize,
    num_blocks: usize,
    kv_dim: usize,
    head_dim: usize,
    layers: Vec<LayerKv>,
}

impl PagedKvCache {
    pub fn new(cfg: &LlamaConfig, block_size: usize, num_blocks: usize, dtype: KvDtype) -> Self {
        let kv_dim = cfg.kv_dim();
        let len = num_blocks * block_size * kv_dim;
        // Not touched here: faulting in a 2 GiB pool up front cost seconds of
        // kernel time before the first request (issue 19). A block's pages are backed
        // by the prefaulter's thread just ahead of the highest block used, or else
        // when it is first written; the block pool hands out recently freed blocks
        // first, so a server that is not full keeps reusing pages it already has.
        let layers: Vec<LayerKv> = (0..cfg.num_layers).map(|_| LayerKv::zeroed(dtype, len)).collect();
        let arrays = layers.iter().flat_map(LayerKv::arrays).collect();
        let block_bytes = block_size * kv_dim * dtype.size();
        // SAFETY: the arrays are `layers`' buffers, which are never reallocated and are
        // dropped after the prefaulter (field order).
        let prefaulter = unsafe { Prefaulter::spawn(arrays, block_bytes, num_blocks) };
        Self { prefaulter, block_size, num_blocks, kv_dim, head_dim: cfg.head_dim, layers }
    }

    /// Block `highest` is about to be written: have the pages of the blocks after it
    /// backed in the background (`kv_prefault.rs`).
    pub fn note_highest_block(&self, highest: u32) {
        if let Some(p) = &self.prefaulter {
            p.note_highest_block(highest as usize);
        }
    }

    /// Bytes one block occupies across all layers (K and V).
    pub fn bytes_per_block(cfg: &LlamaConfig, block_size: usize, dtype: KvDtype) -> usize {
        2 * cfg.num_layers * block_size * cfg.kv_dim() * dtype.size()
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

    fn cache(num_kv_heads: usize, head_dim: usize, block_size: usize, num_blocks: usize) -> PagedKvCache {
        let cfg = LlamaConfig::tiny(num_kv_heads, num_kv_heads, head_dim);
        PagedKvCache::new(&cfg, block_size, num_blocks, KvDtype::F32)
    }

    #[test]
    fn offsets_tile_the_pool_without_overlap_and_agree_with_extend_offsets() {
        let c = cache(3, 8, 4, 5);
        let table = [4u32, 0, 2, 1, 3];
        let mut seen = vec![false; c.layer(0).len()];
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
