//! The AVX2 many-rows kernels (see `gemm`): unpacking a group into the panel (the same
//! panel `avx512_gemm` builds), and the `MR`-row micro-kernels that sweep one group of
//! it: the 4-bit formats' one half (8 columns, a 256-bit vector) at a time, Q8_0's both
//! halves at once with the f32 work deferred to a second pass.
//!
//! The products are `avx2`'s: `vpmaddubsw` of unsigned weight bytes by signed
//! activation bytes into 16-bit pairs, widened by `vpmaddwd`. A 4-bit block's eight
//! partial sums add up in 16 bits before one widening (8 × 2 × 15 × 128 < 2^15); Q8_0
//! takes the sign trick on its un-offset weights and widens every product. Each
//! weight vector loaded from the panel feeds `MR` rows' products, where the row-tile
//! walk unpacks the nibbles and converts the scales again for every tile of rows.

use std::arch::x86_64::*;

use super::gemm_panel::{offset, Block, Line, LINES_PER_BLOCK, MINS_LINE, SCALES_LINE};
use super::layout::{record_offset, record_shape, WeightFormat, FMT_Q8_0, QK};
use super::prefetch::{prefetch, Level};
use super::tile::{prefetch_ahead, store_lanes};

/// Activation rows per micro-kernel call, every format: four rows' block sums, f32
/// accumulators and the block's operands leave registers for the epilogue's
/// temporaries. Six rows of 4-bit formats (what the 16 vector registers hold in the
/// inner loop) spill there, and ran 10% slower on Zen 3 than four
/// (`benches/results/2026-12-06-zen3-gemm-rows`).
pub const ROWS: usize = 4;

/// Unpacks a group of format `F` (Q4_0, Q4_1, Q4_K or Q8_0) into `nb` blocks of the
/// panel, as `avx512_gemm::pack` does (the same bytes and the same f32 scales, formed
/// as the AVX2 row tile forms them), a half of each line at a time.
///
/// # Safety
/// AVX2 and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pack<const F: u8>(w: &[u8], nb: usize, panel: &mut [Line]) {
    assert!(w.len() >= WeightFormat::from_id(F).group_bytes(nb * QK) && panel.len() >= nb * LINES_PER_BLOCK);
    let shape = record_shape(F);
    let (w, p) = (w.as_ptr(), panel.as_mut_ptr().cast::<u8>());
    let low = _mm256_set1_epi8(0x0f);
    for b in 0..nb {
        let blk = w.add(record_offset(F, b));
        prefetch_ahead(blk, shape.bytes);
        let dst = p.add(b * LINES_PER_BLOCK * size_of::<Line>());
        for h in 0..2 {
            let line = |l: usize| dst.add(l * size_of::<Line>() + 32 * h);
            let chunk = |c: usize| _mm256_loadu_si256(blk.add(64 * c + 32 * h).cast());
            if F == FMT_Q8_0 {
                for j in 0..8 {
                    _mm256_store_si256(line(j).cast(), chunk(j));
                }
            } else {
                // Chunk `i` holds values 4i..4i+4 in its low nibbles and 16+4i.. in its high.
                for i in 0..4 {
                    let raw = chunk(i);
                    _mm256_store_si256(line(i).cast(), _mm256_and_si256(raw, low));
                    _mm256_store_si256(line(i + 4).cast(), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low));
                }
            }
            let (dw, mw) = super::avx2::half_block_scales::<F>(w, b, blk, h);
            _mm256_store_ps(line(SCALES_LINE).cast(), dw);
            _mm256_store_ps(line(MINS_LINE).cast(), mw);
        }
    }
}

/// `MR` activation rows against the panel's one group, over all of `k`: per block and
/// half, the rows' integer sums build up over the eight 4-byte steps (one weight load
/// and one activation broadcast per row each step), then each output takes the block's
/// scaled sum and minimum term in the portable kernel's order. Q8_0 goes to
/// [`micro_q8_0`].
///
/// # Safety
/// See [`super::gemm_panel::MicroFn`]; AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn micro<const F: u8, const MR: usize>(t: &Block<'_>) {
    // The share of the next groups all at once, before the sweep: asked for a block at
    // a time (`gemm_panel::prefetch_share`), as the AVX-512 kernel does, prefill ran
    // 1.35x slower (AVX2 forced on an AVX-512 host; why was not found).
    for span in t.ahead {
        prefetch(span, Level::L2);
    }
    if F == FMT_Q8_0 {
        return micro_q8_0::<MR>(t);
    }
    let a = t.acts;
    let (k, nb) = (a.k, a.nb);
    let rows_end = t.row0 + MR;
    assert!(t.panel.len() >= nb * LINES_PER_BLOCK && a.qs.len() >= rows_end * k);
    assert!(a.d.len() >= rows_end * nb && a.s.len() >= rows_end * nb && a.isum.len() >= rows_end * nb);
    let p = t.panel.as_ptr().cast::<u8>();
    let (qs, ds, ss, sums) = (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.isum.as_ptr());
    let off = offset(F);
    let has_mins = record_shape(F).has_mins;
    let ones = _mm256_set1_epi16(1);
    let cols = t.ncols[0];
    for h in 0..2 {
        if 8 * h >= cols {
            break;
        }
        let line = |b: usize, l: usize| p.add((b * LINES_PER_BLOCK + l) * size_of::<Line>() + 32 * h);
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..nb {
            let x = |r: usize, j: usize| {
                _mm256_set1_epi32(qs.add((t.row0 + r) * k + b * QK + 4 * j).cast::<i32>().read_unaligned())
            };
            let mut s16 = [_mm256_setzero_si256(); MR];
            for j in 0..QK / 4 {
                let wv = _mm256_load_si256(line(b, j).cast());
                for (r, s) in s16.iter_mut().enumerate() {
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(wv, x(r, j)));
                }
            }
            let mut dot = [_mm256_setzero_si256(); MR];
            for (d, s) in dot.iter_mut().zip(&s16) {
                *d = _mm256_madd_epi16(*s, ones);
            }
            let dw = _mm256_load_ps(line(b, SCALES_LINE).cast());
            let mw = _mm256_load_ps(line(b, MINS_LINE).cast());
            for (r, (acc, &dot)) in acc.iter_mut().zip(&dot).enumerate() {
                let at = (t.row0 + r) * nb + b;
                let mut d = dot;
                if off != 0 {
                    d = _mm256_sub_epi32(d, _mm256_set1_epi32(off * *sums.add(at)));
                }
                *acc = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(d),
                    _mm256_mul_ps(dw, _mm256_set1_ps(*ds.add(at))),
                    *acc,
                );
                if has_mins {
                    *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*ss.add(at)), *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            store_lanes(t.out.add(r * t.ldo + 8 * h), *acc, cols - 8 * h);
        }
    }
}

/// Blocks whose integer sums [`micro_q8_0`]'s integer pass stores before its f32 pass
/// reads them: 4 KiB at `ROWS` rows, which stay in L1.
const BLOCKS_PER_PASS: usize = 16;

/// One block's integer sums for `MR` rows and both halves of a group: `[r][h]` is row
/// `r` against columns `8 h..8 h + 8`.
type BlockSums<const MR: usize> = [[__m256i; 2]; MR];

/// Q8_0's `MR` rows against the panel's one group, in two passes over each run of
/// [`BLOCKS_PER_PASS`] blocks. The integer pass builds every block's sums for both
/// halves of the group at once (each activation broadcast feeds both halves' products,
/// one weight load feeds all `MR` rows) and stores them; the f32 pass then gives each
/// output the block's scaled sum in the portable kernel's order, `2 · MR` independent
/// chains. Holding no f32 accumulators during the integer pass is what leaves the
/// registers to share the broadcasts (with the epilogue inline, both halves'
/// accumulators spill). Q8_0's sign trick spends four operations on each product
/// vector, so a broadcast saved weighs more than in the 4-bit kernel, which this shape
/// did not speed up in the whole model
/// (`benches/results/2026-12-06-zen3-deferred-epilogue`).
///
/// # Safety
/// As [`micro`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro_q8_0<const MR: usize>(t: &Block<'_>) {
    let a = t.acts;
    let (k, nb) = (a.k, a.nb);
    let rows_end = t.row0 + MR;
    assert!(MR <= ROWS && t.panel.len() >= nb * LINES_PER_BLOCK && a.qs.len() >= rows_end * k);
    assert!(a.d.len() >= rows_end * nb);
    let p = t.panel.as_ptr().cast::<u8>();
    let ds = a.d.as_ptr();
    let line = |b: usize, l: usize| p.add((b * LINES_PER_BLOCK + l) * size_of::<Line>());
    let mut sums = std::mem::MaybeUninit::<[BlockSums<ROWS>; BLOCKS_PER_PASS]>::uninit();
    // `BlockSums<MR>` is no larger than `BlockSums<ROWS>`, so a pass's blocks fit.
    let sums = sums.as_mut_ptr().cast::<BlockSums<MR>>();
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for first in (0..nb).step_by(BLOCKS_PER_PASS) {
        let pass = first..(first + BLOCKS_PER_PASS).min(nb);
        for b in pass.clone() {
            sums.add(b - first).write(q8_0_block_sums::<MR>(t, b, line(b, 0)));
        }
        for b in pass {
            let block = &*sums.add(b - first);
            let dw = line(b, SCALES_LINE);
            let dw = [_mm256_load_ps(dw.cast()), _mm256_load_ps(dw.add(32).cast())];
            for (r, (acc, dots)) in acc.iter_mut().zip(block).enumerate() {
                let dx = _mm256_set1_ps(*ds.add((t.row0 + r) * nb + b));
                for h in 0..2 {
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[h]), _mm256_mul_ps(dw[h], dx), acc[h]);
                }
            }
        }
    }
    let cols = t.ncols[0];
    for (r, acc) in acc.iter().enumerate() {
        for (h, acc) in acc.iter().enumerate() {
            if cols > 8 * h {
                store_lanes(t.out.add(r * t.ldo + 8 * h), *acc, cols - 8 * h);
            }
        }
    }
}

/// Q8_0 block `b`'s integer sums for rows `t.row0..t.row0 + MR`, both halves, from the
/// block's quant lines at `lines`: per 4-byte step one weight load per half and one
/// activation broadcast per row, the sign trick on the un-offset weights, every
/// product widened. (No closure here yields a vector: such closures are not always
/// inlined, and each call then costs a `vzeroupper`.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q8_0_block_sums<const MR: usize>(t: &Block<'_>, b: usize, lines: *const u8) -> BlockSums<MR> {
    let a = t.acts;
    let x = a.qs.as_ptr().add(t.row0 * a.k + b * QK).cast::<u8>();
    let (ones, flip) = (_mm256_set1_epi16(1), _mm256_set1_epi8(-128));
    let mut dots = [[_mm256_setzero_si256(); 2]; MR];
    for j in 0..QK / 4 {
        let at = lines.add(j * size_of::<Line>());
        let v0 = _mm256_xor_si256(_mm256_load_si256(at.cast()), flip);
        let v1 = _mm256_xor_si256(_mm256_load_si256(at.add(32).cast()), flip);
        let (m0, m1) = (_mm256_abs_epi8(v0), _mm256_abs_epi8(v1));
        for (r, dot) in dots.iter_mut().enumerate() {
            let xr = _mm256_set1_epi32(x.add(r * a.k + 4 * j).cast::<i32>().read_unaligned());
            let p0 = _mm256_maddubs_epi16(m0, _mm256_sign_epi8(xr, v0));
            let p1 = _mm256_maddubs_epi16(m1, _mm256_sign_epi8(xr, v1));
            dot[0] = _mm256_add_epi32(dot[0], _mm256_madd_epi16(p0, ones));
            dot[1] = _mm256_add_epi32(dot[1], _mm256_madd_epi16(p1, ones));
        }
    }
    dots
}
