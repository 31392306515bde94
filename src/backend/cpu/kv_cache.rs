//! The paged KV cache in host memory: per layer, one K and one V array of
//! `num_blocks` blocks, each laid out head-major: `num_kv_heads` regions of
//! `block_size × head_dim` values, so one KV head's share of a block is contiguous
//! (attention reads a KV head at a time; this way it streams whole runs of a few KiB
//! instead of every third quarter of each token's row). Within a region V is
//! position-major (`[position][value]`) and K is value-major (`[value][position]`): the
//! attention kernels give each position of a block a vector lane, so a K vector is one
//! value of consecutive positions, loaded as it is stored instead of transposed in
//! registers. Which blocks belong to which sequence is the engine's business (its block
//! table arrives with every step); this type only stores values where a block table
//! says.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::e4m3::{self, E4m3};
use super::kv_prefault::{PoolArray, Prefaulter};
use crate::model::config::LlamaConfig;

/// How cached K and V values are stored. f16 is the default (as in llama.cpp and
/// vLLM): half the pool memory, so twice the tokens fit in `--kv-cache-gib`, and half
/// the bytes attention streams, which is what decode waits on; prefill, bound by the
/// matmuls, does not notice (the A/B is in `benches/results/2026-12-04-architecture/`).
/// f32 keeps the model's arithmetic exact (the float-weights fidelity test uses it).
/// fp8 (E4M3, `e4m3.rs`) halves f16's memory and bytes again, at 3 mantissa bits a
/// value (vLLM's `fp8_e4m3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    F32,
    #[default]
    F16,
    Fp8,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
            KvDtype::Fp8 => 1,
        }
    }
}

/// One layer's cached K and V values, in the cache's [`KvDtype`].
#[derive(Debug)]
pub enum LayerKv {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
    Fp8 { k: Vec<E4m3>, v: Vec<E4m3> },
}

impl LayerKv {
    /// Zeroed arrays from the allocator's zeroed memory (`calloc`, fresh `mmap`
    /// pages for a pool this size), never written here: the OS backs a page when a
    /// block's first row is stored in it, so a pool costs nothing until it is used.
    /// f16 and fp8 are allocated as their bits (`u16`, `u8`): `vec![f16::ZERO; n]`
    /// would write every element, since only primitive zeros take the
    /// zeroed-allocation path.
    fn zeroed(dtype: KvDtype, len: usize) -> LayerKv {
        fn zeroed_e4m3(len: usize) -> Vec<E4m3> {
            let mut bytes = std::mem::ManuallyDrop::new(vec![0u8; len]);
            // SAFETY: `E4m3` is `repr(transparent)` over `u8` (same size and
            // alignment), every byte is a valid `E4m3`, and the vector's buffer is
            // handed over whole (pointer, length, capacity) and never freed as `u8`s.
            unsafe { Vec::from_raw_parts(bytes.as_mut_ptr().cast::<E4m3>(), bytes.len(), bytes.capacity()) }
        }
        match dtype {
            KvDtype::F32 => LayerKv::F32 { k: vec![0.0; len], v: vec![0.0; len] },
            KvDtype::F16 => {
                LayerKv::F16 { k: vec![0u16; len].reinterpret_into(), v: vec![0u16; len].reinterpret_into() }
            }
            KvDtype::Fp8 => LayerKv::Fp8 { k: zeroed_e4m3(len), v: zeroed_e4m3(len) },
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
            LayerKv::Fp8 { k, v } => [of(k), of(v)],
        }
    }

    /// Mutable views of `blocks` (strictly increasing block numbers), K and V, a block
    /// (`block_len` values: all its KV heads' regions) each: writers on several threads
    /// each hold their own blocks.
    ///
    /// # Panics
    /// If the blocks are not strictly increasing or lie outside the pool.
    pub fn blocks_mut(&mut self, blocks: &[usize], block_len: usize) -> Vec<BlockMut<'_>> {
        fn split<'a, T>(mut rest: &'a mut [T], blocks: &[usize], len: usize) -> Vec<&'a mut [T]> {
            let mut at = 0;
            let mut out = Vec::with_capacity(blocks.len());
            for &b in blocks {
                assert!(b * len >= at, "blocks {blocks:?} not strictly increasing");
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(b * len - at);
                let (block, tail) = tail.split_at_mut(len);
                out.push(block);
                (rest, at) = (tail, (b + 1) * len);
            }
            out
        }
        match self {
            LayerKv::F32 { k, v } => split(k, blocks, block_len)
                .into_iter()
                .zip(split(v, blocks, block_len))
                .map(|(k, v)| BlockMut::F32 { k, v })
                .collect(),
            LayerKv::F16 { k, v } => split(k, blocks, block_len)
                .into_iter()
                .zip(split(v, blocks, block_len))
                .map(|(k, v)| BlockMut::F16 { k, v })
                .collect(),
            LayerKv::Fp8 { k, v } => split(k, blocks, block_len)
                .into_iter()
                .zip(split(v, blocks, block_len))
                .map(|(k, v)| BlockMut::Fp8 { k, v })
                .collect(),
        }
    }

    /// Values in each of K and V.
    pub fn len(&self) -> usize {
        match self {
            LayerKv::F32 { k, .. } => k.len(),
            LayerKv::F16 { k, .. } => k.len(),
            LayerKv::Fp8 { k, .. } => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One block of one layer's K and V (see [`LayerKv::blocks_mut`]); regions are
/// offsets from the block's start.
pub enum BlockMut<'a> {
    F32 { k: &'a mut [f32], v: &'a mut [f32] },
    F16 { k: &'a mut [f16], v: &'a mut [f16] },
    Fp8 { k: &'a mut [E4m3], v: &'a mut [E4m3] },
}

impl BlockMut<'_> {
    /// Stores one position's K and V values for the KV head whose region starts at
    /// `region`, at `index` in the block, converted to the cache's type: V as a row, K
    /// as a column of the region (stride `block_size`).
    pub fn store(&mut self, region: usize, index: usize, block_size: usize, k_row: &[f32], v_row: &[f32]) {
        /// `values`, each converted by `to`, down the column of `k` that starts at `at`.
        fn scatter<S: Copy, T>(k: &mut [T], at: usize, block_size: usize, values: &[S], to: impl Fn(S) -> T) {
            for (dst, &x) in k[at..].iter_mut().step_by(block_size).zip(values) {
                *dst = to(x);
            }
        }
        let (d, at) = (v_row.len(), region + index * v_row.len());
        match self {
            BlockMut::F32 { k, v } => {
                v[at..at + d].copy_from_slice(v_row);
                scatter(k, region + index, block_size, k_row, |x| x);
            }
            BlockMut::F16 { k, v } => {
                v[at..at + d].convert_from_f32_slice(v_row);
                // Converted as a row (vectorised), then spread over the column.
                const CHUNK: usize = 256;
                let mut narrow = [f16::ZERO; CHUNK];
                for (part, values) in k_row.chunks(CHUNK).enumerate() {
                    let narrow = &mut narrow[..values.len()];
                    narrow.convert_from_f32_slice(values);
                    scatter(k, region + part * CHUNK * block_size + index, block_size, narrow, |x| x);
                }
            }
            BlockMut::Fp8 { k, v } => {
                e4m3::narrow(v_row, &mut v[at..at + d]);
                scatter(k, region + index, block_size, k_row, E4m3::from_f32);
            }
        }
    }

    /// Asks for the lines a [`BlockMut::store`] at (`region`, `index`) writes to be
    /// brought into L1: the V row of `d` values, and with `whole_k` the K region of
    /// `n` values (a K column touches a line of nearly every value; later stores to the
    /// same region find them in cache).
    pub fn prefetch(&self, region: usize, index: usize, d: usize, whole_k: bool, n: usize) {
        fn lines<T>(k: &[T], v: &[T], k_span: std::ops::Range<usize>, v_span: std::ops::Range<usize>) {
            use crate::backend::cpu::kernels::prefetch::{prefetch, Level};
            prefetch(k.get(k_span).unwrap_or(&[]), Level::L1);
            prefetch(v.get(v_span).unwrap_or(&[]), Level::L1);
        }
        let k_span = if whole_k { region..region + n } else { 0..0 };
        let v_at = region + index * d;
        match self {
            BlockMut::F32 { k, v } => lines(k, v, k_span, v_at..v_at + d),
            BlockMut::F16 { k, v } => lines(k, v, k_span, v_at..v_at + d),
            BlockMut::Fp8 { k, v } => lines(k, v, k_span, v_at..v_at + d),
        }
    }
}

/// Where one position of one KV head lives: the start of its block's region for that
/// head (in values, the same in K and V) and the position's index within the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub region: usize,
    pub index: usize,
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

    /// Where KV head `kv_head`'s values for position `pos` of a sequence live. Callers
    /// have checked that the block table covers `pos`.
    #[inline]
    pub fn slot(&self, block_table: &[u32], pos: usize, kv_head: usize) -> Slot {
        let block = block_table[pos / self.block_size];
        Slot { region: self.region(block, kv_head), index: pos % self.block_size }
    }

    /// Where KV head `kv_head`'s region of `block` starts: `block_size × head_dim`
    /// values, laid out as the module says.
    #[inline]
    pub fn region(&self, block: u32, kv_head: usize) -> usize {
        block as usize * self.block_len() + self.region_in_block(kv_head)
    }

    /// Values of one block in each of K and V: every KV head's region.
    pub fn block_len(&self) -> usize {
        self.block_size * self.kv_dim
    }

    /// Where KV head `kv_head`'s region starts within any block.
    #[inline]
    pub fn region_in_block(&self, kv_head: usize) -> usize {
        kv_head * self.block_size * self.head_dim
    }

    /// Appends the regions of KV head `kv_head` for the blocks that hold positions
    /// `0..len` of a sequence.
    pub fn extend_regions(&self, block_table: &[u32], len: usize, kv_head: usize, out: &mut Vec<usize>) {
        let blocks = len.div_ceil(self.block_size);
        out.extend(block_table[..blocks].iter().map(|&b| self.region(b, kv_head)));
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
    fn regions_tile_the_pool_without_overlap() {
        let c = cache(3, 8, 4, 5);
        let table = [4u32, 0, 2, 1, 3];
        let mut seen = vec![false; c.layer(0).len()];
        for h in 0..3 {
            let mut regions = Vec::new();
            c.extend_regions(&table, 18, h, &mut regions);
            assert_eq!(regions.len(), 5, "18 positions in blocks of 4");
            for (b, &region) in regions.iter().enumerate() {
                assert_eq!(c.slot(&table, 4 * b + 1, h), Slot { region, index: 1 });
                for x in &mut seen[region..region + 4 * 8] {
                    assert!(!*x, "head {h} block {b} overlaps another region");
                    *x = true;
                }
            }
        }
        assert!(seen.iter().all(|&x| x), "the regions cover the pool");
    }

    #[test]
    fn block_views_are_the_blocks_asked_for() {
        let mut c = cache(2, 4, 4, 6);
        let block_len = c.block_len();
        let mut views = c.layer_mut(0).blocks_mut(&[0, 2, 5], block_len);
        for (view, tag) in views.iter_mut().zip([1.0, 2.0, 3.0]) {
            match view {
                BlockMut::F32 { k, v } => {
                    assert_eq!((k.len(), v.len()), (block_len, block_len));
                    k.fill(tag);
                    v.fill(-tag);
                }
                BlockMut::F16 { .. } | BlockMut::Fp8 { .. } => unreachable!("an f32 cache"),
            }
        }
        let LayerKv::F32 { k, v } = c.layer(0) else { unreachable!() };
        for b in 0..6 {
            let want = [(0, 1.0), (2, 2.0), (5, 3.0)].iter().find(|&&(x, _)| x == b).map_or(0.0, |&(_, t)| t);
            let range = b * block_len..(b + 1) * block_len;
            assert!(
                k[range.clone()].iter().all(|&x| x == want) && v[range].iter().all(|&x| x == -want),
                "block {b}"
            );
        }
    }

    /// V is stored a position per row, K a position per column, in every dtype.
    #[test]
    fn store_puts_v_in_rows_and_k_in_columns() {
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Fp8] {
            let cfg = LlamaConfig::tiny(2, 2, 3);
            let mut c = PagedKvCache::new(&cfg, 4, 2, dtype);
            let slot = c.slot(&[1, 0], 2, 1);
            let block_len = c.block_len();
            let mut blocks = c.layer_mut(0).blocks_mut(&[1], block_len);
            blocks[0].store(slot.region - block_len, slot.index, 4, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
            let (k, v): (Vec<f32>, Vec<f32>) = match c.layer(0) {
                LayerKv::F32 { k, v } => (k.clone(), v.clone()),
                LayerKv::F16 { k, v } => {
                    (k.iter().map(|x| x.to_f32()).collect(), v.iter().map(|x| x.to_f32()).collect())
                }
                LayerKv::Fp8 { k, v } => {
                    (k.iter().map(|x| x.to_f32()).collect(), v.iter().map(|x| x.to_f32()).collect())
                }
            };
            let region = c.region(1, 1);
            assert_eq!(slot, Slot { region, index: 2 });
            assert_eq!(&v[region + 2 * 3..region + 3 * 3], &[4.0, 5.0, 6.0]);
            assert_eq!([k[region + 2], k[region + 4 + 2], k[region + 8 + 2]], [1.0, 2.0, 3.0]);
            let written = k.iter().chain(&v).filter(|&&x| x != 0.0).count();
            assert_eq!(written, 6, "{dtype:?}: nothing else written");
        }
    }
}
