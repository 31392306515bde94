//! The AVX-512 VNNI kernel: one `vpdpbusd` multiplies 4 unsigned weight bytes of each of
//! the group's 16 rows by the same 4 signed activation bytes and accumulates in 32 bits.
//!
//! Q8_0 weights are stored with +128 so they are unsigned too; the offset is removed
//! exactly with the block's integer activation sum (`dot - 128 * sum`), as Q4_0's
//! zero point is (`dot - 8 * sum`).

use std::arch::x86_64::*;

use super::layout::{
    k_header_offset, record_offset, record_shape, WeightFormat, FMT_Q4K, FMT_Q6K, FMT_Q8_0, Q4K_DMIN_OFFSET,
    QK,
};
use super::tile::{prefetch_ahead, RawOperands, Tile};

/// Block `b`'s 16 rows' scales and minimums as f32 (for Q4_K `d · sc` and
/// `-dmin · m`; zero minimums for formats without), read from its record `blk` in the
/// repacked weights `w`. Shared by the row-tile walk and the many-rows path's packing.
///
/// # Safety
/// Only for callers with AVX-512 F enabled (it inlines into them); `blk` must be
/// block `b`'s record in `w`.
#[inline(always)]
pub(super) unsafe fn block_scales<const F: u8>(w: *const u8, b: usize, blk: *const u8) -> (__m512, __m512) {
    let shape = record_shape(F);
    let f16x16 = |p: *const u8| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
    if F == FMT_Q4K {
        let header = w.add(k_header_offset(F, b));
        let u8x16 = |at: usize| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(at).cast())));
        let (d, neg_dmin) = (f16x16(header), f16x16(header.add(Q4K_DMIN_OFFSET)));
        (_mm512_mul_ps(d, u8x16(shape.scales)), _mm512_mul_ps(neg_dmin, u8x16(shape.mins)))
    } else if shape.has_mins {
        (f16x16(blk.add(shape.scales)), f16x16(blk.add(shape.mins)))
    } else {
        (f16x16(blk.add(shape.scales)), _mm512_setzero_ps())
    }
}

/// # Safety
/// See [`super::tile::TileFn`]; AVX-512 F, BW and VNNI must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile<const F: u8, const MR: usize>(t: &Tile<'_>) {
    // No AVX-512 Q6_K kernel yet (AVX-512 has no byte sign instruction for the trick
    // the AVX2 one uses): that format runs on AVX2, which `Kernel::is_available` checks.
    // Nor for Q5_0 / Q5_1 (llama.cpp's stand-ins for K-quants on rows that do not
    // divide into 256 values).
    if F == FMT_Q6K || WeightFormat::from_id(F).is_q5() {
        return super::avx2::tile::<F, MR>(t);
    }
    let shape = record_shape(F);
    let RawOperands { w, qs, d: ds, s: ss, isum: sums, k, nb } = t.checked::<F, MR>();
    let low = _mm512_set1_epi8(0x0f);
    // Q8_0's +128 is the layout's; the others are the format's own zero point.
    let offset = if F == FMT_Q8_0 { 128 } else { WeightFormat::from_id(F).zero_point() };
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..nb {
        let blk = w.add(record_offset(F, b));
        if t.prefetch {
            prefetch_ahead(blk, shape.bytes);
        }
        // The 16 scales and minimums (for Q4_K `d · sc` and `-dmin · m`).
        let (dw, mw) = block_scales::<F>(w, b, blk);
        let mut v = [_mm512_setzero_si512(); 8];
        if F == FMT_Q8_0 {
            for (j, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(blk.add(64 * j).cast());
            }
        } else {
            for i in 0..4 {
                let raw = _mm512_loadu_si512(blk.add(64 * i).cast());
                v[i] = _mm512_and_si512(raw, low);
                v[i + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = t.row0 + r;
            let xw = qs.add(row * k + b * QK).cast::<i32>();
            let x = |j: usize| _mm512_set1_epi32(xw.add(j).read_unaligned());
            // Two chains halve the dependent-latency path.
            let mut s0 = _mm512_setzero_si512();
            let mut s1 = _mm512_setzero_si512();
            for j in (0..8).step_by(2) {
                s0 = _mm512_dpbusd_epi32(s0, v[j], x(j));
                s1 = _mm512_dpbusd_epi32(s1, v[j + 1], x(j + 1));
            }
            let mut dot = _mm512_add_epi32(s0, s1);
            if offset != 0 {
                let corr = _mm512_set1_epi32(offset * *sums.add(row * nb + b));
                dot = _mm512_sub_epi32(dot, corr);
            }
            let dx = _mm512_set1_ps(*ds.add(row * nb + b));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), *acc);
            if shape.has_mins {
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*ss.add(row * nb + b)), *acc);
            }
        }
    }
    let mask: __mmask16 = if t.ncols >= 16 { 0xffff } else { (1u16 << t.ncols) - 1 };
    for (r, acc) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(t.out.add(r * t.ldo), mask, *acc);
    }
}
