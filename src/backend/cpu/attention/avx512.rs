//! AVX-512 attention for one token row × one KV head, when `head_dim` is 64 or 128.
//!
//! The portable loop in `mod.rs` leaves the query heads and the output in memory and
//! pays a horizontal sum per score in scalar code. Here the group's query heads and
//! its output accumulators live in registers for the whole pass (`G` heads ×
//! `V` = head_dim / 16 vectors), each cached K and V row is loaded once for the group,
//! and a score costs `V` fused multiply-adds and one in-register reduction. An f16
//! cache is widened in registers as it is read. Results
//! equal the portable path's within float rounding (fused multiply-add, another
//! summation order); the softmax is the same code.

use std::arch::x86_64::*;

use half::f16;

use super::head::{in_head_chunks, prefetch_for_position, softmax_in_place, HeadGeometry};

/// A cached value type the kernel can widen 16 at a time into one f32 register.
pub trait Load16: Copy {
    /// # Safety
    /// AVX-512 F must be available and `p` valid for reading 16 values.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
}

/// Whether this kernel handles the geometry on this CPU.
pub fn supports(geo: &HeadGeometry) -> bool {
    matches!(geo.head_dim, 64 | 128) && geo.group >= 1 && is_x86_feature_detected!("avx512f")
}

/// Group sizes the kernel is instantiated for; larger groups go in chunks of this.
const MAX_G: usize = 4;

/// Same contract as `attend_kv_head`; the caller has checked [`supports`].
pub fn attend_kv_head<T: Load16>(
    k: &[T],
    v: &[T],
    offsets: &[usize],
    geo: &HeadGeometry,
    q_heads: &[f32],
    out_heads: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = geo.head_dim;
    in_head_chunks(k, v, offsets, geo, (q_heads, out_heads), scores, MAX_G, |g, q, out, scores| {
        macro_rules! run {
            ($v:literal, $g:literal) => {
                // SAFETY: `supports` checked the instruction set; `in_head_chunks` checked
                // that every offset's row is inside `k` and `v`, and the slices hold
                // `g` heads of `d = 16 * $v` values.
                unsafe { chunk::<T, $v, $g>(k, v, offsets, geo.scale, q, out, scores) }
            };
        }
        match (d, g) {
            (64, 1) => run!(4, 1),
            (64, 2) => run!(4, 2),
            (64, 3) => run!(4, 3),
            (64, _) => run!(4, 4),
            (_, 1) => run!(8, 1),
            (_, 2) => run!(8, 2),
            (_, 3) => run!(8, 3),
            (_, _) => run!(8, 4),
        }
    });
}

/// # Safety
/// AVX-512 F must be available; every `offsets[p] + 16 * V` must be within `k` and
/// `v`; `q` and `out` hold `G * 16 * V` values; `scores` at least `G * offsets.len()`.
#[target_feature(enable = "avx512f")]
unsafe fn chunk<T: Load16, const V: usize, const G: usize>(
    k: &[T],
    v: &[T],
    offsets: &[usize],
    scale: f32,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
) {
    let n = offsets.len();
    let (kp, vp) = (k.as_ptr(), v.as_ptr());
    let mut qv = [[_mm512_setzero_ps(); V]; G];
    for (h, qh) in qv.iter_mut().enumerate() {
        for (j, r) in qh.iter_mut().enumerate() {
            *r = _mm512_loadu_ps(q.as_ptr().add((h * V + j) * 16));
        }
    }
    // Scores, scaled, and each head's maximum.
    let mut max = [f32::NEG_INFINITY; G];
    for (p, &off) in offsets.iter().enumerate() {
        prefetch_for_position(k, v, offsets, p, 16 * V);
        let mut kr = [_mm512_setzero_ps(); V];
        for (j, r) in kr.iter_mut().enumerate() {
            *r = T::load16(kp.add(off + 16 * j));
        }
        for h in 0..G {
            let mut acc = _mm512_mul_ps(qv[h][0], kr[0]);
            for j in 1..V {
                acc = _mm512_fmadd_ps(qv[h][j], kr[j], acc);
            }
            let s = _mm512_reduce_add_ps(acc) * scale;
            *scores.get_unchecked_mut(h * n + p) = s;
            max[h] = max[h].max(s);
        }
    }
    // Softmax weights, normalised.
    for h in 0..G {
        softmax_in_place(&mut scores[h * n..(h + 1) * n], max[h]);
    }
    // Weighted sum of the V rows, accumulated in registers.
    let mut acc = [[_mm512_setzero_ps(); V]; G];
    for (p, &off) in offsets.iter().enumerate() {
        let mut vr = [_mm512_setzero_ps(); V];
        for (j, r) in vr.iter_mut().enumerate() {
            *r = T::load16(vp.add(off + 16 * j));
        }
        for (h, acc) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(*scores.get_unchecked(h * n + p));
            for (a, &x) in acc.iter_mut().zip(&vr) {
                *a = _mm512_fmadd_ps(w, x, *a);
            }
        }
    }
    for (h, acc) in acc.iter().enumerate() {
        for (j, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add((h * V + j) * 16), a);
        }
    }
}
