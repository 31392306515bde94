//! The vector operations the tiled prefill kernels (`tiled.rs`, `tile_row.rs`) are
//! written in: one query row per lane, `W` rows at a time. Three instantiations:
//! AVX-512 (16 lanes), AVX2 (8) and a portable one of plain arrays (8) for other CPUs.
//! The exponential is `fastexp::exp_nonpositive` lane by lane, the same steps in vector
//! registers (the vector versions fuse its multiply-adds, so they round a little
//! differently).

use half::f16;

use crate::backend::cpu::e4m3::{f16_bits, E4m3, F16_SCALE};
use crate::fastexp::{C2, C3, C4, C5, C6, C7, LN2_HI, LN2_LO, LOG2_E, ROUNDER, UNDERFLOW};

/// `W` f32 lanes. Every method is `unsafe`: the hand-written instantiations need their
/// instruction sets (the caller's `#[target_feature]`), and pointers must be valid for
/// `W` values (`widen_*`: for `n`).
pub trait Lanes {
    type V: Copy;
    const W: usize;

    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `exp(x)` for `x <= 0`, 0 below `e^-87` (so a -inf score weighs exactly 0).
    unsafe fn exp_nonpositive(x: Self::V) -> Self::V;
    /// `x` with lanes `0..first` set to -inf: rows that must not see a position.
    unsafe fn hide_below(x: Self::V, first: usize) -> Self::V;
    /// `n` f16 values at `src` widened into `dst`.
    unsafe fn widen_f16(src: *const f16, dst: *mut f32, n: usize);
    /// `W` f16 values at `p`, widened.
    unsafe fn load_f16(p: *const f16) -> Self::V;
    /// `W` E4M3 values at `p`, widened to `2^-8` times their values: the f16s their
    /// bits make (`e4m3::f16_bits`), exactly. The multiply by [`F16_SCALE`] that would
    /// give the values is left to the caller, which can often fold it away.
    unsafe fn load_e4m3_over_256(p: *const E4m3) -> Self::V;
    /// `n` E4M3 values at `src` widened into `dst` (exactly, as [`E4m3::to_f32`]).
    #[inline(always)]
    unsafe fn widen_e4m3(src: *const E4m3, dst: *mut f32, n: usize) {
        let mut i = 0;
        while i + Self::W <= n {
            let v = Self::mul(Self::load_e4m3_over_256(src.add(i)), Self::splat(F16_SCALE));
            Self::store(dst.add(i), v);
            i += Self::W;
        }
        for j in i..n {
            *dst.add(j) = (*src.add(j)).to_f32();
        }
    }
}

/// A cached value type, widened to f32 as it is read.
pub trait Cached: Copy + Send + Sync {
    const ZERO: Self;
    /// What [`Cached::load`]'s lanes must be multiplied by to give the values: a power
    /// of two, so a kernel can multiply its queries (or its outputs) by it instead and
    /// get the same bits, one multiply per row rather than one per value read.
    const LOAD_SCALE: f32;

    /// `n` values at `src`, widened exactly into `dst`.
    ///
    /// # Safety
    /// As [`Lanes`]: `S`'s instruction sets, `src` and `dst` valid for `n` values.
    unsafe fn widen<S: Lanes>(src: *const Self, dst: *mut f32, n: usize);

    /// `S::W` values at `p`, widened and divided by [`Cached::LOAD_SCALE`] (exactly).
    ///
    /// # Safety
    /// As [`Lanes`].
    unsafe fn load<S: Lanes>(p: *const Self) -> S::V;

    /// `S::W` values at `p`, widened exactly (where `LOAD_SCALE` is 1 the multiply
    /// folds away).
    ///
    /// # Safety
    /// As [`Lanes`].
    #[inline(always)]
    unsafe fn load_values<S: Lanes>(p: *const Self) -> S::V {
        S::mul(Self::load::<S>(p), S::splat(Self::LOAD_SCALE))
    }
}

impl Cached for f32 {
    const ZERO: f32 = 0.0;
    const LOAD_SCALE: f32 = 1.0;

    #[inline(always)]
    unsafe fn widen<S: Lanes>(src: *const f32, dst: *mut f32, n: usize) {
        std::ptr::copy_nonoverlapping(src, dst, n);
    }

    #[inline(always)]
    unsafe fn load<S: Lanes>(p: *const f32) -> S::V {
        S::load(p)
    }
}

impl Cached for f16 {
    const ZERO: f16 = f16::ZERO;
    const LOAD_SCALE: f32 = 1.0;

    #[inline(always)]
    unsafe fn widen<S: Lanes>(src: *const f16, dst: *mut f32, n: usize) {
        S::widen_f16(src, dst, n);
    }

    #[inline(always)]
    unsafe fn load<S: Lanes>(p: *const f16) -> S::V {
        S::load_f16(p)
    }
}

impl Cached for E4m3 {
    const ZERO: E4m3 = E4m3::ZERO;
    const LOAD_SCALE: f32 = F16_SCALE;

    #[inline(always)]
    unsafe fn widen<S: Lanes>(src: *const E4m3, dst: *mut f32, n: usize) {
        S::widen_e4m3(src, dst, n);
    }

    #[inline(always)]
    unsafe fn load<S: Lanes>(p: *const E4m3) -> S::V {
        S::load_e4m3_over_256(p)
    }
}

/// Plain arrays, for CPUs without AVX2; the compiler vectorises what it can.
pub struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const W: usize = 8;

    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        p.cast::<[f32; 8]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        p.cast::<[f32; 8]>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn max(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    #[inline(always)]
    unsafe fn exp_nonpositive(x: [f32; 8]) -> [f32; 8] {
        x.map(crate::fastexp::exp_nonpositive)
    }
    #[inline(always)]
    unsafe fn hide_below(x: [f32; 8], first: usize) -> [f32; 8] {
        std::array::from_fn(|i| if i < first { f32::NEG_INFINITY } else { x[i] })
    }
    #[inline(always)]
    unsafe fn widen_f16(src: *const f16, dst: *mut f32, n: usize) {
        for i in 0..n {
            *dst.add(i) = (*src.add(i)).to_f32();
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> [f32; 8] {
        std::array::from_fn(|i| (*p.add(i)).to_f32())
    }
    #[inline(always)]
    unsafe fn load_e4m3_over_256(p: *const E4m3) -> [f32; 8] {
        std::array::from_fn(|i| f16::from_bits(f16_bits((*p.add(i)).0)).to_f32())
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2Lanes, Avx512Lanes};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::*;
    use crate::backend::cpu::e4m3::F16_MASK;

    /// 16 lanes; needs AVX-512 F.
    pub struct Avx512Lanes;

    impl Lanes for Avx512Lanes {
        type V = __m512;
        const W: usize = 16;

        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn exp_nonpositive(x: __m512) -> __m512 {
            let under = _mm512_set1_ps(UNDERFLOW);
            let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, under);
            let xc = _mm512_max_ps(x, under);
            let rounder = _mm512_set1_ps(ROUNDER);
            let shifted = _mm512_fmadd_ps(xc, _mm512_set1_ps(LOG2_E), rounder);
            let n = _mm512_sub_ps(shifted, rounder);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
            let mut p = _mm512_set1_ps(C7);
            for c in [C6, C5, C4, C3, C2, 1.0, 1.0] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let n_int =
                _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(ROUNDER.to_bits() as i32));
            let scale =
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n_int, _mm512_set1_epi32(127))));
            _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, scale))
        }
        #[inline(always)]
        unsafe fn hide_below(x: __m512, first: usize) -> __m512 {
            let keep: __mmask16 = if first >= 16 { 0 } else { 0xffff << first };
            _mm512_mask_blend_ps(keep, _mm512_set1_ps(f32::NEG_INFINITY), x)
        }
        #[inline(always)]
        unsafe fn widen_f16(src: *const f16, dst: *mut f32, n: usize) {
            let mut i = 0;
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(_mm256_loadu_si256(src.add(i).cast())));
                i += 16;
            }
            for j in i..n {
                *dst.add(j) = (*src.add(j)).to_f32();
            }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
        #[inline(always)]
        unsafe fn load_e4m3_over_256(p: *const E4m3) -> __m512 {
            let wide = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast()));
            _mm512_cvtph_ps(_mm256_and_si256(
                _mm256_slli_epi16::<7>(wide),
                _mm256_set1_epi16(F16_MASK as i16),
            ))
        }
    }

    /// 8 lanes; needs AVX2, FMA and F16C.
    pub struct Avx2Lanes;

    impl Lanes for Avx2Lanes {
        type V = __m256;
        const W: usize = 8;

        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn exp_nonpositive(x: __m256) -> __m256 {
            let under = _mm256_set1_ps(UNDERFLOW);
            let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(x, under);
            let xc = _mm256_max_ps(x, under);
            let rounder = _mm256_set1_ps(ROUNDER);
            let shifted = _mm256_fmadd_ps(xc, _mm256_set1_ps(LOG2_E), rounder);
            let n = _mm256_sub_ps(shifted, rounder);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
            let mut p = _mm256_set1_ps(C7);
            for c in [C6, C5, C4, C3, C2, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let n_int =
                _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(ROUNDER.to_bits() as i32));
            let scale =
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127))));
            _mm256_and_ps(keep, _mm256_mul_ps(p, scale))
        }
        #[inline(always)]
        unsafe fn hide_below(x: __m256, first: usize) -> __m256 {
            let lane = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
            let hide = _mm256_cmp_ps::<_CMP_LT_OQ>(lane, _mm256_set1_ps(first.min(8) as f32));
            _mm256_blendv_ps(x, _mm256_set1_ps(f32::NEG_INFINITY), hide)
        }
        #[inline(always)]
        unsafe fn widen_f16(src: *const f16, dst: *mut f32, n: usize) {
            let mut i = 0;
            while i + 8 <= n {
                _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.add(i).cast())));
                i += 8;
            }
            for j in i..n {
                *dst.add(j) = (*src.add(j)).to_f32();
            }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
        #[inline(always)]
        unsafe fn load_e4m3_over_256(p: *const E4m3) -> __m256 {
            let wide = _mm_cvtepi8_epi16(_mm_loadl_epi64(p.cast()));
            _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16::<7>(wide), _mm_set1_epi16(F16_MASK as i16)))
        }
    }
}
