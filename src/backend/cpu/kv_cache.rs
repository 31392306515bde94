//! The paged KV cache in host memory: per layer, one K and one V array of
//! `num_blocks` blocks for each KV head, laid out head-major: KV head `h`'s regions of
//! `block_size × head_dim` values, block after block, then head `h + 1`'s. Attention
//! reads one KV head of one sequence at a time, so a sequence whose blocks are
//! consecutive is one run of memory per head, which the hardware prefetcher follows;
//! with the heads inside each block, that run had gaps every region and decode read
//! its cache at half the speed (`benches/results/2026-12-07-kv-head-major/`). Within a
//! region V is position-major (`[position][value]`) and K is value-major
//! (`[value][position]`): the attention kernels give each position of a block a
//! vector lane, so a K vector is one value of consecutive positions, loaded as it is
//! stored instead of transposed in registers. Which blocks belong to which sequence is
//! the engine's business (its block table arrives with every step); this type only
//! stores values where a block table says.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::e4m3::{self, E4m3};
use super::kv_prefault::{blocks_ahead, PoolArray, Prefaulter};
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

    /// Where each KV head's part of the K and V buffers is (`heads` parts of each),
    /// for the prefaulter.
    fn arrays(&self, heads: usize) -> Vec<PoolArray> {
        fn of<T>(v: &[T], heads: usize) -> impl Iterator<Item = PoolArray> + '_ {
            // An empty pool has no parts (a chunk size of 0 would panic).
            v.chunks_exact((v.len() / heads.max(1)).max(1))
                .map(|part| PoolArray { addr: part.as_ptr() as usize, bytes: std::mem::size_of_val(part) })
        }
        match self {
            LayerKv::F32 { k, v } => of(k, heads).chain(of(v, heads)).collect(),
            LayerKv::F16 { k, v } => of(k, heads).chain(of(v, heads)).collect(),
            LayerKv::Fp8 { k, v } => of(k, heads).chain(of(v, heads)).collect(),
        }
    }

    /// Mutable views of `blocks` (strictly increasing block numbers) for writing, each
    /// with its `heads` regions of `region_len` values in K and in V: writers on several
    /// threads each hold their own blocks.
    ///
    /// # Panics
    /// If the blocks are not strictly increasing or lie outside the pool.
    pub fn blocks_mut(&mut self, blocks: &[usize], heads: usize, region_len: usize) -> Vec<BlockMut<'_>> {
        /// Each block's region in every head's part of `array`: `[block][head]`.
        fn split<'a, T>(
            array: &'a mut [T],
            blocks: &[usize],
            heads: usize,
            len: usize,
        ) -> Vec<Vec<&'a mut [T]>> {
            let mut out: Vec<Vec<&mut [T]>> = blocks.iter().map(|_| Vec::with_capacity(heads)).collect();
            let per_head = (array.len() / heads.max(1)).max(1);
            for head in array.chunks_exact_mut(per_head) {
                let (mut rest, mut at) = (head, 0);
                for (&b, regions) in blocks.iter().zip(&mut out) {
                    assert!(b * len >= at, "blocks {blocks:?} not strictly increasing");
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(b * len - at);
                    let (region, tail) = tail.split_at_mut(len);
                    regions.push(region);
                    (rest, at) = (tail, (b + 1) * len);
                }
            }
            out
        }
        match self {
            LayerKv::F32 { k, v } => split(k, blocks, heads, region_len)
                .into_iter()
                .zip(split(v, blocks, heads, region_len))
                .map(|(k, v)| BlockMut::F32 { k, v })
                .collect(),
            LayerKv::F16 { k, v } => split(k, blocks, heads, region_len)
                .into_iter()
                .zip(split(v, blocks, heads, region_len))
                .map(|(k, v)| BlockMut::F16 { k, v })
                .collect(),
            LayerKv::Fp8 { k, v } => split(k, blocks, heads, region_len)
                .into_iter()
                .zip(split(v, blocks, heads, region_len))
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

/// One block of one layer's K and V (see [`LayerKv::blocks_mut`]): each KV head's
/// region, in K and in V.
pub enum BlockMut<'a> {
    F32 { k: Vec<&'a mut [f32]>, v: Vec<&'a mut [f32]> },
    F16 { k: Vec<&'a mut [f16]>, v: Vec<&'a mut [f16]> },
    Fp8 { k: Vec<&'a mut [E4m3]>, v: Vec<&'a mut [E4m3]> },
}

impl BlockMut<'_> {
    /// Stores one position's K and V values for KV head `head`, at `index` in the
    /// block, converted to the cache's type: V as a row, K as a column of the region
    /// (stride `block_size`).
    pub fn store(&mut self, head: usize, index: usize, block_size: usize, k_row: &[f32], v_row: &[f32]) {
        /// `values`, each converted by `to`, down the column of `k` that starts at `at`.
        fn scatter<S: Copy, T>(k: &mut [T], at: usize, block_size: usize, values: &[S], to: impl Fn(S) -> T) {
            for (dst, &x) in k[at..].iter_mut().step_by(block_size).zip(values) {
                *dst = to(x);
            }
        }
        let (d, at) = (v_row.len(), index * v_row.len());
        match self {
            BlockMut::F32 { k, v } => {
                v[head][at..at + d].copy_from_slice(v_row);
                scatter(k[head], index, block_size, k_row, |x| x);
            }
            BlockMut::F16 { k, v } => {
                v[head][at..at + d].convert_from_f32_slice(v_row);
                // Converted as a row (vectorised), then spread over the column.
                const CHUNK: usize = 256;
                let mut narrow = [f16::ZERO; CHUNK];
                for (part, values) in k_row.chunks(CHUNK).enumerate() {
                    let narrow = &mut narrow[..values.len()];
                    narrow.convert_from_f32_slice(values);
                    scatter(k[head], part * CHUNK * block_size + index, block_size, narrow, |x| x);
                }
            }
            BlockMut::Fp8 { k, v } => {
                e4m3::narrow(v_row, &mut v[head][at..at + d]);
                scatter(k[head], index, block_size, k_row, E4m3::from_f32);
            }
        }
    }

    /// Asks for the lines a [`BlockMut::store`] at (`head`, `index`) writes to be
    /// brought into L1: the V row of `d` values, and with `whole_k` the whole K region
    /// (a K column touches a line of nearly every value; later stores to the same
    /// region find them in cache).
    pub fn prefetch(&self, head: usize, index: usize, d: usize, whole_k: bool) {
        fn lines<T>(k: &[T], v: &[T], whole_k: bool, v_span: std::ops::Range<usize>) {
            use crate::backend::cpu::kernels::prefetch::{prefetch, Level};
            if whole_k {
                prefetch(k, Level::L1);
            }
            prefetch(v.get(v_span).unwrap_or(&[]), Level::L1);
        }
        let v_span = index * d..(index + 1) * d;
        match self {
            BlockMut::F32 { k, v } => lines(k[head], v[head], whole_k, v_span),
            BlockMut::F16 { k, v } => lines(k[head], v[head], whole_k, v_span),
            BlockMut::Fp8 { k, v } => lines(k[head], v[head], whole_k, v_span),
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
        let heads = kv_dim / cfg.head_dim.max(1);
        let arrays = layers.iter().flat_map(|l| l.arrays(heads)).collect();
        let region_bytes = block_size * cfg.head_dim * dtype.size();
        let ahead = blocks_ahead(block_size * kv_dim * dtype.size());
        // SAFETY: the arrays are parts of `layers`' buffers, which are never reallocated
        // and are dropped after the prefaulter (field order).
        let prefaulter = unsafe { Prefaulter::spawn(arrays, region_bytes, num_blocks, ahead) };
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
        (kv_head * self.num_blocks + block as usize) * self.region_len()
    }

    /// Values of one KV head's region of a block, in each of K and V.
    pub fn region_len(&self) -> usize {
        self.block_size * self.head_dim
    }

    /// KV heads: regions in each block.
    pub fn kv_heads(&self) -> usize {
        self.kv_dim / self.head_dim.max(1)
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

    /// A block's view holds each KV head's region of that block, and only those: in
    /// the head-major layout they are `num_blocks` regions apart.
    #[test]
    fn block_views_are_the_blocks_asked_for() {
        let (heads, blocks) = (2, 6);
        let mut c = cache(heads, 4, 4, blocks);
        let region_len = c.region_len();
        let mut views = c.layer_mut(0).blocks_mut(&[0, 2, 5], heads, region_len);
        for (view, tag) in views.iter_mut().zip([1.0, 2.0, 3.0]) {
            match view {
                BlockMut::F32 { k, v } => {
                    assert_eq!((k.len(), v.len()), (heads, heads));
                    for (h, (k, v)) in k.iter_mut().zip(v.iter_mut()).enumerate() {
                        assert_eq!((k.len(), v.len()), (region_len, region_len));
                        k.fill(tag + 10.0 * h as f32);
                        v.fill(-tag - 10.0 * h as f32);
                    }
                }
                BlockMut::F16 { .. } | BlockMut::Fp8 { .. } => unreachable!("an f32 cache"),
            }
        }
        let written = [(0, 1.0), (2, 2.0), (5, 3.0)];
        let LayerKv::F32 { k, v } = c.layer(0) else { unreachable!() };
        for h in 0..heads {
            for b in 0..blocks {
                let want = written.iter().find(|&&(x, _)| x == b).map_or(0.0, |&(_, t)| t + 10.0 * h as f32);
                let region = c.region(b as u32, h);
                let range = region..region + region_len;
                assert!(
                    k[range.clone()].iter().all(|&x| x == want) && v[range].iter().all(|&x| x == -want),
                    "head {h} block {b}"
                );
            }
        }
    }

    /// A pool of no blocks has no parts to back and no blocks to write, and says so
    /// without panicking.
    #[test]
    fn an_empty_pool_builds_and_hands_out_no_blocks() {
        let mut c = cache(3, 8, 4, 0);
        let (heads, region_len) = (c.kv_heads(), c.region_len());
        assert!(c.layer(0).arrays(heads).is_empty());
        assert!(c.layer_mut(0).blocks_mut(&[], heads, region_len).is_empty());
    }

    /// One KV head's regions of consecutive blocks are one run of memory.
    #[test]
    fn a_heads_consecutive_blocks_are_contiguous() {
        let c = cache(3, 8, 4, 10);
        for h in 0..3 {
            let mut regions = Vec::new();
            c.extend_regions(&[3, 4, 5, 6], 16, h, &mut regions);
            for pair in regions.windows(2) {
                assert_eq!(pair[1], pair[0] + c.region_len(), "head {h}");
            }
        }
    }

    /// V is stored a position per row, K a position per column, in every dtype.
    #[test]
    fn store_puts_v_in_rows_and_k_in_columns() {
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Fp8] {
            let cfg = LlamaConfig::tiny(2, 2, 3);
            let mut c = PagedKvCache::new(&cfg, 4, 2, dtype);
            let slot = c.slot(&[1, 0], 2, 1);
            let (heads, region_len) = (c.kv_heads(), c.region_len());
            let mut blocks = c.layer_mut(0).blocks_mut(&[1], heads, region_len);
            blocks[0].store(1, slot.index, 4, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
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
