//! The AVX-512 VNNI many-rows kernels (see `gemm`): unpacking a group into the panel,
//! and the `MR × G` micro-kernel that sweeps it or, for short tasks, reads the groups'
//! records in place and unpacks each block in registers.
//!
//! One `vpdpbusd` multiplies 4 unsigned weight bytes of each of a group's 16 rows by
//! the same 4 signed activation bytes and accumulates in 32 bits. Q8_0 weights are
//! stored with +128 so they are unsigned too; the offset is removed exactly with the
//! block's integer activation sum (`dot - 128 * sum`), as Q4_0's zero point is
//! (`dot - 8 * sum`) and Q5_0's (`dot - 16 * sum`). The Q5 formats' values (0..32) are
//! their nibbles with the fifth bit OR-ed in at unpacking; their sums need no more room
//! than 32 bits give.

use std::arch::x86_64::*;

use super::gemm_panel::{offset, prefetch_share, Block, Line, LINES_PER_BLOCK, MINS_LINE, SCALES_LINE};
use super::layout::{record_offset, record_shape, WeightFormat, FMT_Q8_0, Q5_HIGH_OFFSET, QK};
use super::tile::prefetch_ahead;

/// Unpacks a group of format `F` (Q4_0, Q4_1, Q4_K, Q8_0 or a Q5 format) into `nb`
/// blocks of the panel: the quants as unsigned bytes in activation order, the scales
/// (for Q4_K and Q5_K `d · sc`) and minimums (`-dmin · m`) as f32, formed by
/// `avx512::block_scales`.
///
/// # Safety
/// AVX-512 F and BW, F16C must be available.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pack<const F: u8>(w: &[u8], nb: usize, panel: &mut [Line]) {
    assert!(w.len() >= WeightFormat::from_id(F).group_bytes(nb * QK) && panel.len() >= nb * LINES_PER_BLOCK);
    let shape = record_shape(F);
    let (w, p) = (w.as_ptr(), panel.as_mut_ptr().cast::<__m512i>());
    for b in 0..nb {
        let blk = w.add(record_offset(F, b));
        // The group comes from memory (decode batches) or L2 (prefill): read ahead as
        // the row-tile kernel does on a group's first tile.
        prefetch_ahead(blk, shape.bytes);
        let dst = p.add(b * LINES_PER_BLOCK);
        if F == FMT_Q8_0 {
            for j in 0..8 {
                _mm512_store_si512(dst.add(j), _mm512_loadu_si512(blk.add(64 * j).cast()));
            }
        } else {
            for j in 0..8 {
                _mm512_store_si512(dst.add(j), unpack_line::<F>(blk, j));
            }
        }
        let (dw, mw) = super::avx512::block_scales::<F>(w, b, blk);
        _mm512_store_ps(dst.add(SCALES_LINE).cast(), dw);
        _mm512_store_ps(dst.add(MINS_LINE).cast(), mw);
    }
}

/// Line `j` (0..8) of the block whose record is at `blk`, for a 4-bit or Q5 format:
/// chunk `j` of the record's low nibbles, or for `j ≥ 4` chunk `j - 4`'s high ones; for
/// Q5 with each value's fifth bit from the high-bits chunk (bit `j` for the low
/// nibbles of chunk `j`, bit `j` too for `j ≥ 4`, the high nibbles of chunk `j - 4`;
/// see `layout::Q5_HIGH_OFFSET`) moved to bit 4.
///
/// # Safety
/// AVX-512 F and BW must be available (it inlines into such callers); `blk` must be a
/// record of format `F`.
#[inline(always)]
pub(super) unsafe fn unpack_line<const F: u8>(blk: *const u8, j: usize) -> __m512i {
    let low = _mm512_set1_epi8(0x0f);
    let raw = _mm512_loadu_si512(blk.add(64 * (j % 4)).cast());
    let nibbles = if j < 4 { raw } else { _mm512_srli_epi16(raw, 4) };
    if !WeightFormat::from_id(F).is_q5() {
        return _mm512_and_si512(nibbles, low);
    }
    let high = _mm512_loadu_si512(blk.add(Q5_HIGH_OFFSET).cast());
    // 16-bit shifts: the mask keeps bit 4 of each byte only, so what crosses from the
    // neighbouring byte drops.
    let top = match j {
        0 => _mm512_slli_epi16(high, 4),
        1 => _mm512_slli_epi16(high, 3),
        2 => _mm512_slli_epi16(high, 2),
        3 => _mm512_slli_epi16(high, 1),
        4 => high,
        5 => _mm512_srli_epi16(high, 1),
        6 => _mm512_srli_epi16(high, 2),
        _ => _mm512_srli_epi16(high, 3),
    };
    // (nibbles & 0x0f) | (top & 0x10), one ternary-logic operation: bit-select of
    // `nibbles` where the mask is set, of `top` elsewhere, then masked to 5 bits.
    let five = _mm512_ternarylogic_epi32::<0xca>(_mm512_set1_epi8(0x0f), nibbles, top);
    _mm512_and_si512(five, _mm512_set1_epi8(0x1f))
}

/// `MR` activation rows against `G` groups over all of `k`: the panel's groups, or with
/// `RECORDS` the groups' records (`Block::records`), each weight line unpacked from
/// them as `pack` would have stored it and each block's scales formed as `pack` forms
/// them. Per block, the `MR · G` integer sums build up over the eight 4-byte steps
/// (one weight line per group and one activation broadcast per row each step), then
/// each output takes the block's scaled sum and minimum term in the portable kernel's
/// order.
///
/// # Safety
/// See [`super::gemm_panel::MicroFn`]; AVX-512 F, BW and VNNI must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn micro<const F: u8, const MR: usize, const G: usize, const RECORDS: bool>(t: &Block<'_>) {
    let a = t.acts;
    let (k, nb) = (a.k, a.nb);
    let rows_end = t.row0 + MR;
    assert!(a.qs.len() >= rows_end * k);
    if RECORDS {
        let bytes = WeightFormat::from_id(F).group_bytes(k);
        assert!(t.records.iter().take(G).all(|r| r.len() >= bytes));
    } else {
        assert!(t.panel.len() >= G * nb * LINES_PER_BLOCK);
    }
    assert!(a.d.len() >= rows_end * nb && a.s.len() >= rows_end * nb && a.isum.len() >= rows_end * nb);
    let p = t.panel.as_ptr().cast::<__m512i>();
    let (qs, ds, ss, sums) = (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.isum.as_ptr());
    let off = offset(F);
    let has_mins = record_shape(F).has_mins;
    let line = |g: usize, b: usize, l: usize| p.add((g * nb + b) * LINES_PER_BLOCK + l);
    let records = t.records.map(|r| r.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); G]; MR];
    for b in 0..nb {
        prefetch_share(&t.ahead, b, nb);
        let mut dot = [[_mm512_setzero_si512(); G]; MR];
        for j in 0..QK / 4 {
            let mut wv = [_mm512_setzero_si512(); G];
            for (g, wv) in wv.iter_mut().enumerate() {
                *wv = if RECORDS {
                    // As `pack` lays line `j` out: chunk `j` of the record, or for the
                    // 4-bit formats chunk `j mod 4`'s low nibbles, then its high ones.
                    let blk = records[g].add(record_offset(F, b));
                    if F == FMT_Q8_0 {
                        _mm512_loadu_si512(blk.add(64 * j).cast())
                    } else {
                        unpack_line::<F>(blk, j)
                    }
                } else {
                    _mm512_load_si512(line(g, b, j))
                };
            }
            for (r, dot) in dot.iter_mut().enumerate() {
                let at = qs.add((t.row0 + r) * k + b * QK + 4 * j).cast::<i32>();
                let x = _mm512_set1_epi32(at.read_unaligned());
                for (d, &wv) in dot.iter_mut().zip(&wv) {
                    *d = _mm512_dpbusd_epi32(*d, wv, x);
                }
            }
        }
        let mut dw = [_mm512_setzero_ps(); G];
        let mut mw = [_mm512_setzero_ps(); G];
        for g in 0..G {
            if RECORDS {
                let blk = records[g].add(record_offset(F, b));
                (dw[g], mw[g]) = super::avx512::block_scales::<F>(records[g], b, blk);
            } else {
                dw[g] = _mm512_load_ps(line(g, b, SCALES_LINE).cast());
                if has_mins {
                    mw[g] = _mm512_load_ps(line(g, b, MINS_LINE).cast());
                }
            }
        }
        for (r, (acc, dot)) in acc.iter_mut().zip(&dot).enumerate() {
            let at = (t.row0 + r) * nb + b;
            let dx = _mm512_set1_ps(*ds.add(at));
            let sx = _mm512_set1_ps(*ss.add(at));
            let corr = _mm512_set1_epi32(off * *sums.add(at));
            for g in 0..G {
                let mut d = dot[g];
                if off != 0 {
                    d = _mm512_sub_epi32(d, corr);
                }
                acc[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw[g], dx), acc[g]);
                if has_mins {
                    acc[g] = _mm512_fmadd_ps(mw[g], sx, acc[g]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (g, acc) in acc.iter().enumerate() {
            let cols = t.ncols[g];
            let mask: __mmask16 = if cols >= 16 { 0xffff } else { (1u16 << cols) - 1 };
            _mm512_mask_storeu_ps(t.out.add(r * t.ldo + 16 * g), mask, *acc);
        }
    }
}
