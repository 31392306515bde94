//! AVX2 attention for one token row × one KV head, when `head_dim` is 64 or 128:
//! the kernel for CPUs without AVX-512 (Zen 2/3 EPYCs such as Inf2's hosts).
//!
//! Sixteen 8-wide registers cannot hold a group's queries and outputs the way the
//! AVX-512 kernel does, so the work is arranged around the register file instead:
//! - scores: each cached K row is read once for the whole group, 32 values (four
//!   registers) at a time, with the group's queries as memory operands (L1); the
//!   group's partial sums are reduced together, three or four scores with one
//!   horizontal-add tree instead of one tree per score;
//! - weighted sum: the output is built 16 columns at a time, the group's
//!   accumulators for those columns in registers across all positions, so each V
//!   value is still read once.
//!
//! An f16 cache is widened with F16C as it is loaded. Results equal the portable
//! path's within float rounding; the softmax is the same code.

use std::arch::x86_64::*;

use half::f16;

use super::head::{chunk_table, prefetch_for_position, softmax_in_place, ChunkFn, HandWritten, MAX_G};
use crate::backend::cpu::kernels::isa;

/// A cached value type the kernel can widen 8 at a time into one f32 register.
pub trait Load8: Copy {
    /// # Safety
    /// AVX2 and F16C must be available and `p` valid for reading 8 values.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Load8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Load8 for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// The kernel, for `head::attend_hand_written`.
pub struct Avx2;

impl<T: Load8> HandWritten<T> for Avx2 {
    const CHUNKS: [[ChunkFn<T>; MAX_G]; 2] = chunk_table!(chunk, T, 8, 16);

    fn detected() -> bool {
        isa::avx2_fma_f16c()
    }
}

/// Sum of each of four registers, as the four lanes of the result.
#[inline(always)]
unsafe fn reduce4(a: [__m256; 4]) -> __m128 {
    // hadd pairs lanes within each 128-bit half; two rounds leave every register's
    // half-sums in one lane per half, and adding the halves finishes them.
    let ab = _mm256_hadd_ps(a[0], a[1]);
    let cd = _mm256_hadd_ps(a[2], a[3]);
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps::<1>(abcd))
}

/// # Safety
/// As [`ChunkFn`], for heads of `8 * V` values; AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk<T: Load8, const V: usize, const G: usize>(
    k: &[T],
    v: &[T],
    offsets: &[usize],
    scale: f32,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
) {
    let n = offsets.len();
    let (kp, vp, qp) = (k.as_ptr(), v.as_ptr(), q.as_ptr());
    // Scores, scaled, and each head's maximum.
    let mut max = [f32::NEG_INFINITY; G];
    for p in 0..n {
        let off = *offsets.get_unchecked(p);
        prefetch_for_position(k, v, offsets, p, 8 * V);
        let mut acc = [_mm256_setzero_ps(); 4];
        for j0 in (0..V).step_by(4) {
            let row = kp.add(off + 8 * j0);
            let kr = [T::load8(row), T::load8(row.add(8)), T::load8(row.add(16)), T::load8(row.add(24))];
            for (h, a) in acc.iter_mut().enumerate().take(G) {
                for (j, &kx) in kr.iter().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * 8 * V + 8 * (j0 + j))), kx, *a);
                }
            }
        }
        let mut s = [0f32; 4];
        _mm_storeu_ps(s.as_mut_ptr(), _mm_mul_ps(reduce4(acc), _mm_set1_ps(scale)));
        for h in 0..G {
            *scores.get_unchecked_mut(h * n + p) = s[h];
            max[h] = max[h].max(s[h]);
        }
    }
    // Softmax weights, normalised.
    for h in 0..G {
        softmax_in_place(&mut scores[h * n..(h + 1) * n], max[h]);
    }
    // Weighted sum of the V rows, 16 columns at a time.
    for j0 in (0..V).step_by(2) {
        let mut acc = [[_mm256_setzero_ps(); 2]; G];
        for (p, &off) in offsets.iter().enumerate() {
            let vr = [T::load8(vp.add(off + 8 * j0)), T::load8(vp.add(off + 8 * (j0 + 1)))];
            for (h, acc) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(scores.get_unchecked(h * n + p));
                acc[0] = _mm256_fmadd_ps(w, vr[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(w, vr[1], acc[1]);
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(h * 8 * V + 8 * j0), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(h * 8 * V + 8 * (j0 + 1)), acc[1]);
        }
    }
}
