//! The AVX-512 VNNI kernel's pieces outside the many-rows path (`avx512_gemm`, which
//! computes every row count of the formats it serves): a block's scales as f32, and
//! the row-tile entry for the formats that borrow the AVX2 kernel.

use std::arch::x86_64::*;

use super::layout::{k_header_offset, record_shape, WeightFormat, FMT_Q6K, Q4K_DMIN_OFFSET};
use super::tile::Tile;

/// Block `b`'s 16 rows' scales and minimums as f32 (for Q4_K and Q5_K `d · sc` and
/// `-dmin · m`; zero minimums for formats without), read from its record `blk` in the
/// repacked weights `w`. Shared by the many-rows path's packing and its kernels that
/// read records in place.
///
/// # Safety
/// Only for callers with AVX-512 F enabled (it inlines into them); `blk` must be
/// block `b`'s record in `w`.
#[inline(always)]
pub(super) unsafe fn block_scales<const F: u8>(w: *const u8, b: usize, blk: *const u8) -> (__m512, __m512) {
    let shape = record_shape(F);
    let f16x16 = |p: *const u8| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
    if WeightFormat::from_id(F).has_k_scales_and_mins() {
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

/// The row-tile kernel of AVX-512 hosts, for the one format that has no AVX-512 kernel:
/// Q6_K (AVX-512 has no byte sign instruction for the trick the AVX2 one uses, and its
/// two scales a block do not fit the many-rows path's one sum a block) runs the AVX2
/// kernel, which `Kernel::is_available` checks. The formats the VNNI instructions serve
/// never come here: the many-rows path (`gemm`) takes them at every row count, short
/// tasks reading their records in place.
///
/// # Safety
/// See [`super::tile::TileFn`]; AVX2 and FMA must be available.
pub unsafe fn tile<const F: u8, const MR: usize>(t: &Tile<'_>) {
    debug_assert!(F == FMT_Q6K, "format {F} runs on the many-rows path");
    super::avx2::tile::<F, MR>(t)
}
