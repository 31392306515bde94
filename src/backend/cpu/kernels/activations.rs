//! Quantization of the activations (the matmul's left operand) to 8-bit blocks.
//!
//! Each row of `k` floats becomes `k / 32` blocks of 32 signed bytes in -127..=127 with a
//! scale `d = amax / 127` (rounded to f16, as ggml stores it), the integer sum of the block's bytes (for the zero-point
//! terms of Q4_0 and of the +128 offset of repacked Q8_0) and `s = d * sum` (for the
//! Q4_1 minimum). Rounding is to nearest, ties to even, on every path, so all kernels
//! see identical bytes.

use rayon::prelude::*;

use super::dispatch::Kernel;
use super::layout::QK;

/// Quantized activations of `m` rows; reused across calls to avoid allocations.
#[derive(Default)]
pub struct QActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub isum: Vec<i32>,
    pub k: usize,
    pub nb: usize,
}

/// One row's outputs (quants, scales, scaled sums, sums) and its input.
type Row<'a> = ((((&'a mut [i8], &'a mut [f32]), &'a mut [f32]), &'a mut [i32]), &'a [f32]);

/// One row's input, its 8-bit quants and scales, and its remainder row's outputs.
type RemainderRow<'a> =
    (((&'a [f32], &'a [i8]), &'a [f32]), (((&'a mut [i8], &'a mut [f32]), &'a mut [f32]), &'a mut [i32]));

/// Rows at or above which quantization itself is spread over threads.
const PARALLEL_ROWS: usize = 32;

impl QActs {
    /// Quantizes `x` (`m` rows of `k` values, `k % 32 == 0`) into `self`.
    pub fn quantize(&mut self, kernel: Kernel, x: &[f32], m: usize, k: usize) {
        debug_assert_eq!(x.len(), m * k);
        let nb = k / QK;
        self.k = k;
        self.nb = nb;
        self.qs.resize(m * k, 0);
        self.d.resize(m * nb, 0.0);
        self.s.resize(m * nb, 0.0);
        self.isum.resize(m * nb, 0);
        let one = |((((q, d), s), isum), x): Row<'_>| quantize_row(kernel, x, q, d, s, isum);
        if m >= PARALLEL_ROWS {
            self.qs
                .par_chunks_mut(k)
                .zip(self.d.par_chunks_mut(nb))
                .zip(self.s.par_chunks_mut(nb))
                .zip(self.isum.par_chunks_mut(nb))
                .zip(x.par_chunks(k))
                .for_each(one);
        } else {
            self.qs
                .chunks_mut(k)
                .zip(self.d.chunks_mut(nb))
                .zip(self.s.chunks_mut(nb))
                .zip(self.isum.chunks_mut(nb))
                .zip(x.chunks(k))
                .for_each(one);
        }
    }
}

impl QActs {
    /// Quantizes `x` (`m` rows of `k`) into rows `0..m` as [`QActs::quantize`] does, and
    /// what that rounding leaves, `x - d * q` value by value, into rows `m..2m`: the
    /// activations to about 16 bits as two sets of 8-bit rows (`remainder_acts`).
    pub fn quantize_with_remainder(&mut self, kernel: Kernel, x: &[f32], m: usize, k: usize) {
        debug_assert_eq!(x.len(), m * k);
        let nb = k / QK;
        self.quantize(kernel, x, m, k);
        self.qs.resize(2 * m * k, 0);
        self.d.resize(2 * m * nb, 0.0);
        self.s.resize(2 * m * nb, 0.0);
        self.isum.resize(2 * m * nb, 0);
        let (qs, rest_qs) = self.qs.split_at_mut(m * k);
        let (d, rest_d) = self.d.split_at_mut(m * nb);
        let (s, isum) = (&mut self.s[m * nb..], &mut self.isum[m * nb..]);
        let one = |(((xr, qr), dr), (((q, d), s), isum)): RemainderRow<'_>| {
            let mut remainder = [0.0f32; QK];
            for (b, ((xb, qb), &db)) in xr.chunks_exact(QK).zip(qr.chunks_exact(QK)).zip(dr).enumerate() {
                for ((r, &v), &q) in remainder.iter_mut().zip(xb).zip(qb) {
                    *r = v - db * f32::from(q);
                }
                (d[b], isum[b], s[b]) = quantize_block(kernel, &remainder, &mut q[b * QK..(b + 1) * QK]);
            }
        };
        if m >= PARALLEL_ROWS {
            let rows = x.par_chunks(k).zip(qs.par_chunks(k)).zip(d.par_chunks(nb));
            let rest = rest_qs.par_chunks_mut(k).zip(rest_d.par_chunks_mut(nb));
            rows.zip(rest.zip(s.par_chunks_mut(nb)).zip(isum.par_chunks_mut(nb))).for_each(one);
        } else {
            let rows = x.chunks(k).zip(qs.chunks(k)).zip(d.chunks(nb));
            let rest = rest_qs.chunks_mut(k).zip(rest_d.chunks_mut(nb));
            rows.zip(rest.zip(s.chunks_mut(nb)).zip(isum.chunks_mut(nb))).for_each(one);
        }
    }
}

fn quantize_row(kernel: Kernel, x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], isum: &mut [i32]) {
    let nb = d.len();
    assert!(x.len() == nb * QK && q.len() == nb * QK && s.len() == nb && isum.len() == nb);
    let mut first = 0;
    // A vector's worth of blocks at a time (16 on AVX-512, 8 on AVX2) share their
    // reductions and divisions (a block's own are mostly horizontal steps and a scalar
    // division's latency).
    #[cfg(target_arch = "x86_64")]
    let many: Option<(usize, x86::BlocksFn)> = match kernel {
        Kernel::Avx512Vnni => Some((x86::AVX512_BLOCKS, x86::blocks_avx512)),
        Kernel::Avx2 => Some((x86::AVX2_BLOCKS, x86::blocks_avx2)),
        Kernel::Portable => None,
    };
    #[cfg(target_arch = "x86_64")]
    if let Some((blocks, run)) = many {
        while first + blocks <= nb {
            let at = first * QK;
            // SAFETY: the kernel was checked available; `blocks` blocks' values and
            // quants lie at `at` and their factors at `first` (lengths asserted above).
            unsafe {
                run(
                    x[at..].as_ptr(),
                    q[at..].as_mut_ptr(),
                    d[first..].as_mut_ptr(),
                    isum[first..].as_mut_ptr(),
                    s[first..].as_mut_ptr(),
                )
            };
            first += blocks;
        }
    }
    for b in first..nb {
        let (xb, qb) = (&x[b * QK..(b + 1) * QK], &mut q[b * QK..(b + 1) * QK]);
        (d[b], isum[b], s[b]) = quantize_block(kernel, xb, qb);
    }
}

/// One block of 32 values: its quants into `q`, and its scale, sum and scaled sum.
#[inline(always)]
fn quantize_block(kernel: Kernel, x: &[f32], q: &mut [i8]) -> (f32, i32, f32) {
    assert!(x.len() == QK && q.len() == QK, "a block is {QK} values");
    let (d, sum) = match kernel {
        // SAFETY: the kernel is only ever used once `is_available` said so, and both
        // blocks hold exactly 32 elements (asserted above).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { x86::block_avx512(x.as_ptr(), q.as_mut_ptr()) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::block_avx2(x.as_ptr(), q.as_mut_ptr()) },
        _ => block_portable(x, q),
    };
    // The scale is kept at f16 precision, as ggml's Q8_0/Q8_1 blocks store it, so
    // results follow llama.cpp's arithmetic more closely, not only its algorithm.
    let d = round_f16(d);
    (d, sum, d * sum as f32)
}

/// Scale and reciprocal for a block whose largest magnitude is `amax` (the
/// reciprocal as ggml computes it, `127 / amax`, which can differ from `1 / d` in
/// the last bit and so flip a rounding).
fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

fn block_portable(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let (d, id) = scales(amax);
    let mut sum = 0;
    for (q, &v) in q.iter_mut().zip(x) {
        // In -127..=127 by construction of `id`.
        *q = (v * id).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::scales;

    /// # Safety
    /// AVX2 must be available; `x` and `q` must point at 32 readable / writable elements.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_avx2(x: *const f32, q: *mut i8) -> (f32, i32) {
        let v = [
            _mm256_loadu_ps(x),
            _mm256_loadu_ps(x.add(8)),
            _mm256_loadu_ps(x.add(16)),
            _mm256_loadu_ps(x.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        let (d, id) = scales(_mm_cvtss_f32(h));
        let idv = _mm256_set1_ps(id);
        // Default MXCSR rounding: nearest, ties to even.
        let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
        let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
        // The packs interleave 128-bit lanes; the permute restores element order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), p);
        (d, _mm_cvtsi128_si32(s))
    }

    /// Quantizes a fixed number of consecutive blocks (see [`blocks_avx512`]).
    pub type BlocksFn = unsafe fn(x: *const f32, q: *mut i8, d: *mut f32, isum: *mut i32, s: *mut f32);

    /// Blocks [`blocks_avx512`] and [`blocks_avx2`] take at a time.
    pub const AVX512_BLOCKS: usize = 16;
    pub const AVX2_BLOCKS: usize = 8;

    /// Eight vectors' horizontal reductions by `$op` as one vector, lane `i` from
    /// `$v[τ(i)]` with `τ(2p + h) = 4h + p` (pairs of halves, pairs, lanes; the caller
    /// places its inputs at `τ`), as `reduce16!` does for AVX-512.
    macro_rules! reduce8 {
        ($v:expr, $op:expr) => {{
            let v: [__m256; 8] = $v;
            let halves: [__m256; 4] = std::array::from_fn(|i| {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                $op(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
            });
            let pairs: [__m256; 2] = std::array::from_fn(|i| {
                let (a, b) = (halves[2 * i], halves[2 * i + 1]);
                $op(_mm256_shuffle_ps::<0x44>(a, b), _mm256_shuffle_ps::<0xee>(a, b))
            });
            $op(_mm256_shuffle_ps::<0x88>(pairs[0], pairs[1]), _mm256_shuffle_ps::<0xdd>(pairs[0], pairs[1]))
        }};
    }

    /// The block a `reduce8!` input `i` must hold for the result's lane `i` to be
    /// block `i`'s.
    const fn placed8(i: usize) -> usize {
        4 * (i % 2) + i / 2
    }

    /// Eight consecutive blocks (256 values at `x`), as [`blocks_avx512`] does sixteen:
    /// the same bits as [`block_avx2`] and `quantize_block` block by block.
    ///
    /// # Safety
    /// AVX2 and F16C must be available; `x` and `q` must point at 256 readable /
    /// writable elements, `d`, `isum` and `s` at 8 writable ones.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn blocks_avx2(x: *const f32, q: *mut i8, d: *mut f32, isum: *mut i32, s: *mut f32) {
        let block =
            |b: usize| std::array::from_fn::<__m256, 4, _>(|j| _mm256_loadu_ps(x.add(b * 32 + 8 * j)));
        let sign = _mm256_set1_ps(-0.0);
        let amax = reduce8!(
            std::array::from_fn(|i| {
                let v = block(placed8(i));
                _mm256_max_ps(
                    _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                    _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
                )
            }),
            |a, b| _mm256_max_ps(a, b)
        );
        let d_exact = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_OQ>(amax, _mm256_setzero_ps());
        let id = _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(127.0), amax));
        let mut ids = [0.0f32; AVX2_BLOCKS];
        _mm256_storeu_ps(ids.as_mut_ptr(), id);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let sums = reduce8!(
            std::array::from_fn(|i| {
                let b = placed8(i);
                let idv = _mm256_set1_ps(ids[b]);
                // Default MXCSR rounding: nearest, ties to even.
                let n = block(b).map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
                // The packs interleave 128-bit lanes; the permute restores element order.
                let p = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
                _mm256_storeu_si256(q.add(b * 32).cast(), _mm256_permutevar8x32_epi32(p, order));
                let sum = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
                _mm256_castsi256_ps(sum)
            }),
            |a, b| _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)))
        );
        let sums = _mm256_castps_si256(sums);
        // The f16 rounding of `quantize_block` (to nearest, ties to even).
        let dv = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d_exact));
        _mm256_storeu_ps(d, dv);
        _mm256_storeu_si256(isum.cast(), sums);
        _mm256_storeu_ps(s, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(sums)));
    }

    /// Sixteen vectors' horizontal reductions by `$op` (max or add; any order gives
    /// the same result) as one vector, lane `i` from `$v[σ(i)]` with
    /// `σ(4p + t) = 4t + p`: four rounds of pairing halves, quarters, pairs and
    /// lanes, after which the lanes come out transposed in fours, which the caller
    /// undoes by placing its inputs at `σ`.
    macro_rules! reduce16 {
        ($v:expr, $op:expr) => {{
            let v: [__m512; 16] = $v;
            let halves: [__m512; 8] = std::array::from_fn(|i| {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                $op(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xee>(a, b))
            });
            let quarters: [__m512; 4] = std::array::from_fn(|i| {
                let (a, b) = (halves[2 * i], halves[2 * i + 1]);
                $op(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xdd>(a, b))
            });
            let pairs: [__m512; 2] = std::array::from_fn(|i| {
                let (a, b) = (quarters[2 * i], quarters[2 * i + 1]);
                $op(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xee>(a, b))
            });
            $op(_mm512_shuffle_ps::<0x88>(pairs[0], pairs[1]), _mm512_shuffle_ps::<0xdd>(pairs[0], pairs[1]))
        }};
    }

    /// The block a reduction input `i` must hold for the result's lane `i` to be block
    /// `i`'s (see `reduce16!`).
    const fn placed(i: usize) -> usize {
        (i % 4) * 4 + i / 4
    }

    /// Sixteen consecutive blocks (512 values at `x`): their quants at `q`, and their
    /// scales (rounded to f16), sums and scaled sums at `d`, `isum` and `s`: the same
    /// bits as [`block_avx512`] and `quantize_block` block by block.
    ///
    /// # Safety
    /// AVX-512 F must be available; `x` and `q` must point at 512 readable / writable
    /// elements, `d`, `isum` and `s` at 16 writable ones.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn blocks_avx512(x: *const f32, q: *mut i8, d: *mut f32, isum: *mut i32, s: *mut f32) {
        let block = |b: usize| (_mm512_loadu_ps(x.add(b * 32)), _mm512_loadu_ps(x.add(b * 32 + 16)));
        let amax = reduce16!(
            std::array::from_fn(|i| {
                let (v0, v1) = block(placed(i));
                _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1))
            }),
            |a, b| _mm512_max_ps(a, b)
        );
        // `scales`, lane by lane: d = amax / 127, and 127 / amax where amax is not 0.
        let d_exact = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(amax, _mm512_setzero_ps());
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(127.0), amax);
        let mut ids = [0.0f32; AVX512_BLOCKS];
        _mm512_storeu_ps(ids.as_mut_ptr(), id);
        let sums = reduce16!(
            std::array::from_fn(|i| {
                let b = placed(i);
                let (v0, v1) = block(b);
                let idv = _mm512_set1_ps(ids[b]);
                // Default MXCSR rounding: nearest, ties to even.
                let i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
                let i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
                _mm_storeu_si128(q.add(b * 32).cast(), _mm512_cvtsepi32_epi8(i0));
                _mm_storeu_si128(q.add(b * 32 + 16).cast(), _mm512_cvtsepi32_epi8(i1));
                _mm512_castsi512_ps(_mm512_add_epi32(i0, i1))
            }),
            |a, b| _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)))
        );
        let sums = _mm512_castps_si512(sums);
        // The f16 rounding of `quantize_block` (to nearest, ties to even).
        let dv =
            _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(d_exact));
        _mm512_storeu_ps(d, dv);
        _mm512_storeu_si512(isum.cast(), sums);
        _mm512_storeu_ps(s, _mm512_mul_ps(dv, _mm512_cvtepi32_ps(sums)));
    }

    /// # Safety
    /// AVX-512 F must be available; pointers as for [`block_avx2`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block_avx512(x: *const f32, q: *mut i8) -> (f32, i32) {
        let v0 = _mm512_loadu_ps(x);
        let v1 = _mm512_loadu_ps(x.add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let (d, id) = scales(amax);
        let idv = _mm512_set1_ps(id);
        let i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
        let i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
        _mm_storeu_si128(q.cast(), _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128(q.add(16).cast(), _mm512_cvtsepi32_epi8(i1));
        (d, _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| {
                let t = (i as f32 * 0.618).fract();
                // Some exact ties (x * id = n + 0.5) and an all-zero block.
                if i / QK == 3 {
                    0.0
                } else if i % 7 == 0 {
                    (i % 5) as f32 - 2.5
                } else {
                    (t - 0.5) * 8.0
                }
            })
            .collect()
    }

    #[test]
    fn portable_blocks_reconstruct_within_half_a_step() {
        let x = sample(2, 4 * QK);
        let mut a = QActs::default();
        a.quantize(Kernel::Portable, &x, 2, 4 * QK);
        for (blk, xb) in x.chunks(QK).enumerate() {
            let d = a.d[blk];
            let mut sum = 0;
            for (i, &v) in xb.iter().enumerate() {
                let q = a.qs[blk * QK + i];
                assert!(q != -128);
                assert!((f32::from(q) * d - v).abs() <= 0.5 * d + 1e-6, "block {blk} {i}");
                sum += i32::from(q);
            }
            assert_eq!(a.isum[blk], sum);
            assert_eq!(a.s[blk], d * sum as f32);
        }
        assert_eq!(a.d[3], 0.0);
    }

    /// Rows long enough for sixteen-block steps and a remainder, with blocks of every
    /// scale from f16 subnormal to large: every byte and factor as the portable path.
    #[test]
    fn simd_quantization_of_long_rows_equals_portable() {
        let (m, k) = (33, 37 * QK);
        let x: Vec<f32> = sample(m, k)
            .iter()
            .enumerate()
            .map(|(i, &v)| v * [1.0, 3e-6, 1e-9, 250.0, 0.01][(i / QK) % 5])
            .collect();
        let mut want = QActs::default();
        want.quantize(Kernel::Portable, &x, m, k);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for kernel in Kernel::available() {
            let mut got = QActs::default();
            got.quantize(kernel, &x, m, k);
            assert_eq!(got.qs, want.qs, "{}", kernel.name());
            assert_eq!(bits(&got.d), bits(&want.d), "{}", kernel.name());
            assert_eq!(got.isum, want.isum, "{}", kernel.name());
            assert_eq!(bits(&got.s), bits(&want.s), "{}", kernel.name());
        }
    }

    #[test]
    fn simd_quantization_equals_portable() {
        let (m, k) = (40, 6 * QK); // m ≥ PARALLEL_ROWS exercises the threaded path too
        let x = sample(m, k);
        let mut want = QActs::default();
        want.quantize(Kernel::Portable, &x, m, k);
        for kernel in Kernel::available() {
            let mut got = QActs::default();
            got.quantize(kernel, &x, m, k);
            assert_eq!(got.qs, want.qs, "{}", kernel.name());
            assert_eq!(got.d, want.d, "{}", kernel.name());
            assert_eq!(got.isum, want.isum, "{}", kernel.name());
            assert_eq!(got.s, want.s, "{}", kernel.name());
        }
    }
}
