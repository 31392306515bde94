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

use super::head::{chunk_table, prefetch_for_position, softmax_in_place, ChunkFn, HandWritten, MAX_G};
use crate::backend::cpu::kernels::isa;

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

/// The kernel, for `head::attend_hand_written`.
pub struct Avx512;

impl<T: Load16> HandWritten<T> for Avx512 {
    const CHUNKS: [[ChunkFn<T>; MAX_G]; 2] = chunk_table!(chunk, T, 4, 8);

    fn detected() -> bool {
        isa::avx512f()
    }
}

/// # Safety
/// As [`ChunkFn`], for heads of `16 * V` values; AVX-512 F must be available.
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
