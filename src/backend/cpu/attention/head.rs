//! One token row × one KV head, the unit of attention work: its geometry, the softmax
//! every kernel for it shares, and the one entry the hand-written kernels run through
//! (`attend_hand_written`: the instruction-set and bounds checks their unchecked reads
//! rely on, the choice of instantiation by head size and group), with the prefetch of
//! the rows ahead that their score loops share.

use crate::fastexp::{exp_nonpositive, sum_f64};

pub struct HeadGeometry {
    pub head_dim: usize,
    /// Query heads per KV head.
    pub group: usize,
    pub scale: f32,
}

/// The cached rows one unit reads: a layer's K and V, and where this KV head's row of
/// each position the token attends to starts in them.
pub struct KvRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub offsets: &'a [usize],
}

/// Attention for one token row × KV head over cached rows of type `T`: the group's
/// query heads in, its output heads out (`group` heads of `head_dim`, back to back),
/// and a score buffer to reuse.
pub type HeadFn<T> = fn(&KvRows<'_, T>, &HeadGeometry, &[f32], &mut [f32], &mut Vec<f32>);

/// `s = softmax(s)` given `max(s)`, in three passes that each vectorise: the
/// exponentials, their sum (over independent lanes), the normalisation.
#[inline(always)]
pub fn softmax_in_place(s: &mut [f32], max: f32) {
    for x in s.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    let inv = (1.0 / sum_f64(s)) as f32;
    s.iter_mut().for_each(|x| *x *= inv);
}

/// Query heads a hand-written kernel takes in one pass; larger groups go in chunks of
/// this.
#[cfg(target_arch = "x86_64")]
pub const MAX_G: usize = 4;

/// One instantiation of a hand-written kernel, `chunk::<T, V, G>`: `G` query heads of
/// `V` registers each. Arguments: `k`, `v`, `offsets` (as in [`KvRows`]), `scale`, the
/// heads' queries and outputs, and the score buffer. The slices go one by one, not as a
/// `KvRows`: behind a pointer they changed the kernels' generated code.
///
/// # Safety
/// The kernel's instruction sets must be available; every `offsets[p] + head_dim` must
/// be within `k` and `v`; queries and outputs hold `G * head_dim` values, the score
/// buffer at least `G * offsets.len()`.
#[cfg(target_arch = "x86_64")]
pub type ChunkFn<T> = unsafe fn(&[T], &[T], &[usize], f32, &[f32], &mut [f32], &mut [f32]);

/// A hand-written kernel for rows of `T`, as [`attend_hand_written`] runs it.
#[cfg(target_arch = "x86_64")]
pub trait HandWritten<T> {
    /// Its instantiations: `[0]` for 64-value heads, `[1]` for 128; `[_][g - 1]` for
    /// `g` heads (see [`chunk_table`]).
    const CHUNKS: [[ChunkFn<T>; MAX_G]; 2];

    /// Whether this CPU has the instruction sets its `#[target_feature]` names.
    fn detected() -> bool;
}

/// [`HandWritten::CHUNKS`] for a kernel whose `$chunk::<$t, V, G>` takes 64-value heads
/// at `V = $v64` and 128-value ones at `V = $v128`.
#[cfg(target_arch = "x86_64")]
macro_rules! chunk_table {
    ($chunk:ident, $t:ty, $v64:literal, $v128:literal) => {
        [
            [$chunk::<$t, $v64, 1>, $chunk::<$t, $v64, 2>, $chunk::<$t, $v64, 3>, $chunk::<$t, $v64, 4>],
            [$chunk::<$t, $v128, 1>, $chunk::<$t, $v128, 2>, $chunk::<$t, $v128, 3>, $chunk::<$t, $v128, 4>],
        ]
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use chunk_table;

/// Whether kernel `K` handles the geometry on this CPU.
#[cfg(target_arch = "x86_64")]
pub fn supports<T, K: HandWritten<T>>(geo: &HeadGeometry) -> bool {
    matches!(geo.head_dim, 64 | 128) && geo.group >= 1 && K::detected()
}

/// Kernel `K` as a [`HeadFn`]: the checks its unchecked reads rely on, then the
/// group's query heads in chunks of at most [`MAX_G`].
///
/// # Panics
/// If `K` does not [`support`](supports) the geometry, an offset's row lies outside `k`
/// or `v`, or the queries or outputs do not hold the whole group.
#[cfg(target_arch = "x86_64")]
pub fn attend_hand_written<T, K: HandWritten<T>>(
    rows: &KvRows<'_, T>,
    geo: &HeadGeometry,
    q_heads: &[f32],
    out_heads: &mut [f32],
    scores: &mut Vec<f32>,
) {
    assert!(supports::<T, K>(geo), "kernel run on a CPU or geometry it does not support");
    let (d, offsets) = (geo.head_dim, rows.offsets);
    let need = offsets.iter().map(|&o| o + d).max().unwrap_or(0);
    assert!(rows.k.len() >= need && rows.v.len() >= need, "a KV offset is outside the cache");
    assert_eq!(q_heads.len(), geo.group * d);
    assert_eq!(out_heads.len(), geo.group * d);
    // Grown, never cleared: the kernels write every score before reading it, so
    // zeroing up to `MAX_G * positions` floats for every unit would be wasted.
    let slots = MAX_G * offsets.len();
    if scores.len() < slots {
        scores.resize(slots, 0.0);
    }
    let chunks = &K::CHUNKS[usize::from(d != 64)];
    let mut h0 = 0;
    while h0 < geo.group {
        let g = (geo.group - h0).min(MAX_G);
        let (q, out) = (&q_heads[h0 * d..(h0 + g) * d], &mut out_heads[h0 * d..(h0 + g) * d]);
        // SAFETY: `supports` says the CPU has the kernel's instruction sets and `d` is 64
        // or 128, so `chunks[g - 1]` is the instantiation for `g` heads of `d` values;
        // the asserts put every offset's row inside `k` and `v`; `q` and `out` hold the
        // `g` heads, `scores` `MAX_G` heads' worth.
        unsafe { chunks[g - 1](rows.k, rows.v, offsets, geo.scale, q, out, scores) };
        h0 += g;
    }
}

/// How many positions ahead the hand-written kernels' score loops prefetch K rows.
#[cfg(target_arch = "x86_64")]
const PREFETCH_POSITIONS: usize = 16;

/// The prefetches for position `p` of a score loop over rows of `row_len` values: the
/// K row `PREFETCH_POSITIONS` ahead (all of the first ones at `p == 0`) and this
/// position's V row, which the weighted sum then finds in cache. A decoding batch's
/// cache lives in DRAM (16 sequences × 128 positions is 47 MB for the default model),
/// in blocks of a few KB: too short for the hardware prefetcher to ramp up, so without
/// these hints attention stalls on memory at every block (figures in
/// `benches/results/2026-12-04-architecture/`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn prefetch_for_position<T>(k: &[T], v: &[T], offsets: &[usize], p: usize, row_len: usize) {
    use crate::backend::cpu::kernels::prefetch::{prefetch, Level};
    let ahead =
        if p == 0 { 0..PREFETCH_POSITIONS } else { p + PREFETCH_POSITIONS - 1..p + PREFETCH_POSITIONS };
    for &off in offsets.get(ahead.start..ahead.end.min(offsets.len())).unwrap_or(&[]) {
        prefetch(k.get(off..off + row_len).unwrap_or(&[]), Level::L1);
    }
    if let Some(&off) = offsets.get(p) {
        prefetch(v.get(off..off + row_len).unwrap_or(&[]), Level::L1);
    }
}
