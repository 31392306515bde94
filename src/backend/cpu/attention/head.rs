//! One token row × one KV head, the unit of attention work: its geometry, the softmax
//! every kernel for it shares, and what the hand-written kernels run through (the
//! checks their unchecked reads rely on, the prefetch of the rows ahead).

use crate::fastexp::{exp_nonpositive, sum_f64};

pub struct HeadGeometry {
    pub head_dim: usize,
    /// Query heads per KV head.
    pub group: usize,
    pub scale: f32,
}

/// Attention for one token row × KV head over cached rows of type `T` (see
/// `attend_kv_head` in `mod.rs` for the arguments).
pub type HeadFn<T> = fn(&[T], &[T], &[usize], &HeadGeometry, &[f32], &mut [f32], &mut Vec<f32>);

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

/// Runs a hand-written kernel over the group's query heads in chunks of at most
/// `max_g`, after the checks its safety relies on: every offset's row lies inside `k`
/// and `v`, and the queries and outputs hold the whole group. `run` gets the chunk's
/// head count, queries, outputs and a score buffer of `max_g` heads.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn in_head_chunks<T>(
    k: &[T],
    v: &[T],
    offsets: &[usize],
    geo: &HeadGeometry,
    (q_heads, out_heads): (&[f32], &mut [f32]),
    scores: &mut Vec<f32>,
    max_g: usize,
    mut run: impl FnMut(usize, &[f32], &mut [f32], &mut [f32]),
) {
    let d = geo.head_dim;
    let need = offsets.iter().map(|&o| o + d).max().unwrap_or(0);
    assert!(k.len() >= need && v.len() >= need, "a KV offset is outside the cache");
    assert_eq!(q_heads.len(), geo.group * d);
    assert_eq!(out_heads.len(), geo.group * d);
    // Grown, never cleared: the kernels write every score before reading it, so
    // zeroing up to `max_g * positions` floats for every unit would be wasted.
    let slots = max_g * offsets.len();
    if scores.len() < slots {
        scores.resize(slots, 0.0);
    }
    let mut h0 = 0;
    while h0 < geo.group {
        let g = (geo.group - h0).min(max_g);
        run(g, &q_heads[h0 * d..(h0 + g) * d], &mut out_heads[h0 * d..(h0 + g) * d], scores);
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
/// in blocks of a few KB: too short for the hardware prefetcher to ramp up (≈ 30% of
/// a batch-16 step's attention time on a Zen 3 host).
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
