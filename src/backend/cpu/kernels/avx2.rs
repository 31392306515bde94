//! The AVX2 kernel (the Inf2 / Zen 3 path): `vpmaddubsw` multiplies unsigned weight
//! bytes by signed activation bytes into 16-bit pairs, `vpmaddwd` widens to 32 bits.
//!
//! A 16-row group is processed as two halves of 8 lanes (bytes 0..32 and 32..64 of each
//! 64-byte chunk of the layout). For Q4 the eight 16-bit partial sums of a block cannot
//! overflow (8 × 2 × 15 × 127 < 2^15), so they are added before one widening; Q8_0 uses
//! the sign trick (|w| × sign(x, w)) on the un-offset weights and widens every product.
//! Q6_K uses the sign trick too; its values (-32..32) are small enough that the four
//! products of each 16-value half-block add up in 16 bits before one widening. Q5's
//! unsigned values (0..32) are Q4's with a fifth bit OR-ed in; four of their 16-bit
//! partial sums fit (4 × 2 × 31 × 127 < 2^15), so a block widens twice.

use std::arch::x86_64::*;

use super::layout::{
    k_header_offset, record_offset, record_shape, WeightFormat, FMT_Q6K, FMT_Q8_0, GROUP, Q4K_DMIN_OFFSET,
    Q5_HIGH_OFFSET, Q6K_HIGH_OFFSET, QK,
};
use super::tile::{prefetch_ahead, store_lanes, RawOperands, Tile};

/// # Safety
/// See [`super::tile::TileFn`]; AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<const F: u8, const MR: usize>(t: &Tile<'_>) {
    tile_keeping::<F, MR, KEEP_NONE>(t)
}

/// What a tile does with `Tile::kept_scales` (Q6_K; see `select::select_keeping`): a
/// const generic, so the plain kernel compiles without any of it.
pub const KEEP_NONE: u8 = 0;
/// Forms the block scales and stores them.
pub const KEEP_WRITE: u8 = 1;
/// Loads the block scales a `KEEP_WRITE` tile of the same group stored.
pub const KEEP_READ: u8 = 2;

/// As [`tile`], keeping Q6_K block scales as `KEEP` says.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_keeping<const F: u8, const MR: usize, const KEEP: u8>(t: &Tile<'_>) {
    let shape = record_shape(F);
    let RawOperands { w, qs, d: ds, s: ss, isum: sums, k, nb } = t.checked::<F, MR>();
    let keep = if F == FMT_Q6K { KEEP } else { KEEP_NONE };
    assert!(keep == KEEP_NONE || !t.kept_scales.is_null());
    for h in 0..2 {
        if 8 * h >= t.ncols {
            break;
        }
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..nb {
            let blk = w.add(record_offset(F, b));
            if h == 0 && t.prefetch {
                prefetch_ahead(blk, shape.bytes);
            }
            let operands =
                BlockOperands { record: blk, half: h, acts: qs.add(t.row0 * k + b * QK), row_stride: k };
            let mut dots = [_mm256_setzero_si256(); MR];
            // Q6_K: the dot products of values 16..32, which have a scale of their own.
            let mut dots_hi = [_mm256_setzero_si256(); MR];
            if F == FMT_Q8_0 {
                q8_0_dots(operands, &mut dots);
            } else if F == FMT_Q6K {
                q6k_dots(operands, &mut dots, &mut dots_hi);
            } else {
                if WeightFormat::from_id(F).is_q5() {
                    q5_dots(operands, &mut dots);
                } else {
                    q4_dots(operands, &mut dots);
                }
                let zero_point = WeightFormat::from_id(F).zero_point();
                if zero_point != 0 {
                    for (r, dot) in dots.iter_mut().enumerate() {
                        let offset = _mm256_set1_epi32(zero_point * *sums.add((t.row0 + r) * nb + b));
                        *dot = _mm256_sub_epi32(*dot, offset);
                    }
                }
            }
            // Half `h`'s eight scales and minimums (for Q4_K `d · sc` and `-dmin · m`;
            // for Q6_K the two `d · sc`), formed after the dot products so they do not
            // hold registers the weights need.
            let f16x8 = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
            // Q6_K's block scales: as an earlier row tile of the group formed them, or
            // formed here (and, for KEEP_WRITE, kept for the later tiles).
            let kept_at = t.kept_scales.wrapping_add(b * 2 * GROUP + 8 * h);
            let (dw, mw) = if keep == KEEP_READ {
                (_mm256_loadu_ps(kept_at), _mm256_loadu_ps(kept_at.add(GROUP)))
            } else if F == FMT_Q6K {
                let d = f16x8(w.add(k_header_offset(F, b)));
                let i8x8 = |at: usize| {
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(blk.add(at + 8 * h).cast())))
                };
                (_mm256_mul_ps(d, i8x8(shape.scales)), _mm256_mul_ps(d, i8x8(shape.scales + GROUP)))
            } else {
                half_block_scales::<F>(w, b, blk, h)
            };
            if keep == KEEP_WRITE {
                _mm256_storeu_ps(kept_at, dw);
                _mm256_storeu_ps(kept_at.add(GROUP), mw);
            }
            for (r, (acc, dot)) in acc.iter_mut().zip(&dots).enumerate() {
                let row = t.row0 + r;
                let dx = _mm256_set1_ps(*ds.add(row * nb + b));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*dot), _mm256_mul_ps(dw, dx), *acc);
                if F == FMT_Q6K {
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots_hi[r]), _mm256_mul_ps(mw, dx), *acc);
                } else if shape.has_mins {
                    *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*ss.add(row * nb + b)), *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            store_lanes(t.out.add(r * t.ldo + 8 * h), *acc, t.ncols - 8 * h);
        }
    }
}

/// Block `b`'s scales and minimums of half `h` (8 of the group's 16 rows) as f32, for
/// every format but Q6_K (for Q4_K and Q5_K `d · sc` and `-dmin · m`; zero minimums for formats
/// without), read from its record `blk` in the repacked weights `w`. Shared by the
/// row-tile walk and the many-rows path's packing (`avx2_gemm`).
///
/// # Safety
/// Only for callers with AVX2 and F16C enabled (it inlines into them); `blk` must be
/// block `b`'s record in `w`, and `h` 0 or 1.
#[inline(always)]
pub(super) unsafe fn half_block_scales<const F: u8>(
    w: *const u8,
    b: usize,
    blk: *const u8,
    h: usize,
) -> (__m256, __m256) {
    let shape = record_shape(F);
    let f16x8 = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
    if WeightFormat::from_id(F).has_k_scales_and_mins() {
        let header = w.add(k_header_offset(F, b));
        let u8x8 =
            |at: usize| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(at + 8 * h).cast())));
        let (d, neg_dmin) = (f16x8(header), f16x8(header.add(Q4K_DMIN_OFFSET)));
        (_mm256_mul_ps(d, u8x8(shape.scales)), _mm256_mul_ps(neg_dmin, u8x8(shape.mins)))
    } else if shape.has_mins {
        (f16x8(blk.add(shape.scales)), f16x8(blk.add(shape.mins)))
    } else {
        (f16x8(blk.add(shape.scales)), _mm256_setzero_ps())
    }
}

/// One block's operands for the dot products of half `half` (8 of the group's rows):
/// the block's record, and the block's activation bytes in the tile's first row, the
/// next rows `row_stride` bytes apart.
#[derive(Clone, Copy)]
struct BlockOperands {
    record: *const u8,
    half: usize,
    acts: *const i8,
    row_stride: usize,
}

impl BlockOperands {
    /// This half's 32 bytes of the record's 64-byte chunk at `offset`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn chunk(self, offset: usize) -> __m256i {
        _mm256_loadu_si256(self.record.add(offset + 32 * self.half).cast())
    }

    /// Activation bytes `4 j .. 4 j + 4` of row `r`, broadcast to every lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn x(self, r: usize, j: usize) -> __m256i {
        _mm256_set1_epi32(self.acts.add(r * self.row_stride).cast::<i32>().add(j).read_unaligned())
    }
}

/// Integer dot products of one block half with the block's activations in `MR` rows,
/// for the 4-bit formats.
///
/// One row keeps all eight 4-byte chunks of weights in registers while its products go
/// by. Several rows go chunk by chunk instead: each 64-byte chunk is split into its two
/// nibble vectors and used by every row before the next is loaded, the rows' 16-bit
/// sums held across the chunks. That leaves registers for eight rows' sums, where four
/// rows with all chunks held already spilled, and is what lets the AVX2 tile be eight
/// rows tall for these formats (see `select::rows_for`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4_dots<const MR: usize>(op: BlockOperands, dots: &mut [__m256i; MR]) {
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    if MR == 1 {
        let mut v = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            let raw = op.chunk(64 * i);
            v[i] = _mm256_and_si256(raw, low);
            v[i + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        }
        let mut s16 = _mm256_maddubs_epi16(v[0], op.x(0, 0));
        for (j, &vj) in v.iter().enumerate().skip(1) {
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(vj, op.x(0, j)));
        }
        dots[0] = _mm256_madd_epi16(s16, ones);
        return;
    }
    let mut s16 = [_mm256_setzero_si256(); MR];
    for i in 0..4 {
        let raw = op.chunk(64 * i);
        let (lo, hi) = (_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low));
        for (r, s) in s16.iter_mut().enumerate() {
            let pair = _mm256_add_epi16(
                _mm256_maddubs_epi16(lo, op.x(r, i)),
                _mm256_maddubs_epi16(hi, op.x(r, i + 4)),
            );
            *s = _mm256_add_epi16(*s, pair);
        }
    }
    for (dot, s) in dots.iter_mut().zip(&s16) {
        *dot = _mm256_madd_epi16(*s, ones);
    }
}

/// As [`q4_dots`] for Q5_0, Q5_1 and Q5_K: each nibble gets its fifth bit from the
/// high-bits chunk (bit `i` for the low nibbles of quant chunk `i`, bit `4 + i` for its
/// high nibbles), and the 16-bit sums are widened per four chunks.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q5_dots<const MR: usize>(op: BlockOperands, dots: &mut [__m256i; MR]) {
    let low = _mm256_set1_epi8(0x0f);
    let fifth = _mm256_set1_epi8(0x10);
    let ones = _mm256_set1_epi16(1);
    let high = op.chunk(Q5_HIGH_OFFSET);
    let mut v = [_mm256_setzero_si256(); 8];
    for i in 0..4 {
        let raw = op.chunk(64 * i);
        // Bit i (and 4 + i) of each high-bits byte to bit 4 (16-bit shifts; the mask
        // drops what crosses from the neighbouring byte).
        let (lo_top, hi_top) = match i {
            0 => (_mm256_slli_epi16::<4>(high), high),
            1 => (_mm256_slli_epi16::<3>(high), _mm256_srli_epi16::<1>(high)),
            2 => (_mm256_slli_epi16::<2>(high), _mm256_srli_epi16::<2>(high)),
            _ => (_mm256_slli_epi16::<1>(high), _mm256_srli_epi16::<3>(high)),
        };
        v[i] = _mm256_or_si256(_mm256_and_si256(raw, low), _mm256_and_si256(lo_top, fifth));
        v[i + 4] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low),
            _mm256_and_si256(hi_top, fifth),
        );
    }
    for (r, dot) in dots.iter_mut().enumerate() {
        let mut halves = [_mm256_setzero_si256(); 2];
        for (half, s16) in halves.iter_mut().enumerate() {
            let vs = &v[4 * half..4 * half + 4];
            *s16 = _mm256_maddubs_epi16(vs[0], op.x(r, 4 * half));
            for (j, &vj) in vs.iter().enumerate().skip(1) {
                *s16 = _mm256_add_epi16(*s16, _mm256_maddubs_epi16(vj, op.x(r, 4 * half + j)));
            }
        }
        *dot = _mm256_add_epi32(_mm256_madd_epi16(halves[0], ones), _mm256_madd_epi16(halves[1], ones));
    }
}

/// As [`q4_dots`] for Q8_0. Every product pair must be widened (two of them can exceed
/// 16 bits), so the loop runs chunk by chunk with one 32-bit sum per row: holding all
/// eight chunks' magnitudes and signs would take all 16 registers.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q8_0_dots<const MR: usize>(op: BlockOperands, dots: &mut [__m256i; MR]) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    for j in 0..8 {
        let v = _mm256_xor_si256(op.chunk(64 * j), flip);
        let mag = _mm256_abs_epi8(v);
        for (r, dot) in dots.iter_mut().enumerate() {
            let p = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(op.x(r, j), v));
            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(p, ones));
        }
    }
}

/// As [`q4_dots`] for Q6_K, with the sums of values 0..16 in `lo` and 16..32 in `hi`:
/// each value is its low nibble plus the two top bits moved up from the high-bits
/// chunk, less 32; the products go through the sign trick, and the four of each
/// half-block add in 16 bits (4 × 2 × 32 × 127 < 2^15) before one widening.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_dots<const MR: usize>(op: BlockOperands, lo: &mut [__m256i; MR], hi: &mut [__m256i; MR]) {
    let nibble = _mm256_set1_epi8(0x0f);
    let top_bits = _mm256_set1_epi8(0x30);
    let bias = _mm256_set1_epi8(32);
    let ones = _mm256_set1_epi16(1);
    for (part, dots) in [lo, hi].into_iter().enumerate() {
        let tops = op.chunk(Q6K_HIGH_OFFSET + 64 * part);
        let mut s16 = [_mm256_setzero_si256(); MR];
        for i in 0..4 {
            let raw = op.chunk(64 * i);
            let low = if part == 0 { raw } else { _mm256_srli_epi16::<4>(raw) };
            // Bits 2i..2i+2 of the high-bits byte to bits 4..6 (16-bit shifts; the
            // mask drops what crosses from the neighbouring byte).
            let top = match i {
                0 => _mm256_slli_epi16::<4>(tops),
                1 => _mm256_slli_epi16::<2>(tops),
                2 => tops,
                _ => _mm256_srli_epi16::<2>(tops),
            };
            let v = _mm256_sub_epi8(
                _mm256_or_si256(_mm256_and_si256(low, nibble), _mm256_and_si256(top, top_bits)),
                bias,
            );
            let mag = _mm256_abs_epi8(v);
            for (r, s) in s16.iter_mut().enumerate() {
                *s = _mm256_add_epi16(
                    *s,
                    _mm256_maddubs_epi16(mag, _mm256_sign_epi8(op.x(r, 4 * part + i), v)),
                );
            }
        }
        for (dot, s) in dots.iter_mut().zip(&s16) {
            *dot = _mm256_madd_epi16(*s, ones);
        }
    }
}
