//! Register-block shapes for the AVX2 many-rows (GEMM) micro-kernel and the row-tile
//! walk, Q4_1 (and Q8_0) as `avx2_gemm.rs` / `avx2.rs` lay them out, against the bare
//! `vpmaddubsw` + `vpaddw` rate; one thread, operands in L1/L2, results checked bit for
//! bit against a scalar reference. A probe for this folder's README, not part of the build:
//!   rustc -O -C target-cpu=native probe.rs -o /tmp/probe && /tmp/probe
//! A: the panel kernel, one 8-column half at a time, a broadcast per row and step
//!    (today's shape), at MR rows; "pre-broadcast": activations stored pre-broadcast.
//! B: both halves per broadcast. D: one activation load per block, in-lane shuffles
//!    (a panel laid out for them). P: A with the tile kernel's pairwise adds.
//! T: the row-tile walk (nibbles unpacked per tile). Q8: the Q8_0 row tile.
//! E: both halves per broadcast with the f32 epilogue deferred: each block's widened
//!    sums go to an L1 buffer and a second pass runs the f32 chains (see
//!    ../2026-12-06-zen3-deferred-epilogue). F: E over two groups (32 columns).
//! Q8 E: the Q8_0 row tile's layout with E's shape.
use std::arch::x86_64::*;
use std::hint::black_box;
use std::time::Instant;

const NB: usize = 18; // k = 576
const K: usize = NB * 32;
const ROWS: usize = 240; // rows swept per group (a task's rows; multiple of 2,3,4,5,6,8)
const GROUPS: usize = 16;

struct Data {
    // layout A: per group, per block: 8 lines of 64 bytes (line j byte 4c+t = col c value 4j+t), then 16 dw f32, 16 mw f32
    pa: Vec<u8>,
    // layout D: per group, per block: 16 lines of 32 bytes (cs, i): lo 16 = cols 4cs.. values 4i+t; hi 16 = values 16+4i+t; then dw, mw
    pd: Vec<u8>,
    qs: Vec<i8>,   // ROWS x K
    pr: Vec<u8>,
    p8: Vec<u8>,
    qx: Vec<i8>,   // ROWS x K x 8 (each dword repeated 8 times)
    da: Vec<f32>,  // ROWS x NB
    sa: Vec<f32>,
    w: Vec<u8>,    // GROUPS*16 cols x K values 0..15
    dw: Vec<f32>,  // cols x NB
    mw: Vec<f32>,
}

const LA: usize = 8 * 64 + 128; // bytes per block, layout A
const LD: usize = 16 * 32 + 128;

fn f32_to_f16(x: f32) -> u16 { unsafe { let v = _mm_cvtps_ph::<0>(_mm_set1_ps(x)); _mm_extract_epi16::<0>(v) as u16 } }
fn rng(s: &mut u64) -> u64 { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; *s }

fn data() -> Data {
    let mut s = 88172645463325252u64;
    let cols = GROUPS * 16;
    let w: Vec<u8> = (0..cols * K).map(|_| (rng(&mut s) % 16) as u8).collect();
    let qs: Vec<i8> = (0..ROWS * K).map(|_| ((rng(&mut s) % 255) as i32 - 127) as i8).collect();
    let f = |s: &mut u64| (rng(s) % 1000) as f32 / 1024.0 - 0.5;
    let dw: Vec<f32> = (0..cols * NB).map(|_| f(&mut s)).collect();
    let mw: Vec<f32> = (0..cols * NB).map(|_| f(&mut s)).collect();
    let da: Vec<f32> = (0..ROWS * NB).map(|_| f(&mut s)).collect();
    let sa: Vec<f32> = (0..ROWS * NB).map(|_| f(&mut s)).collect();
    let mut pa = vec![0u8; GROUPS * NB * LA + 64];
    let mut pd = vec![0u8; GROUPS * NB * LD + 64];
    for g in 0..GROUPS {
        for b in 0..NB {
            let base = (g * NB + b) * LA;
            for j in 0..8 { for c in 0..16 { for t in 0..4 {
                pa[base + j * 64 + 4 * c + t] = w[(g * 16 + c) * K + b * 32 + 4 * j + t];
            }}}
            let based = (g * NB + b) * LD;
            for cs in 0..4 { for i in 0..4 { for c in 0..4 { for t in 0..4 {
                let col = g * 16 + 4 * cs + c;
                pd[based + (cs * 4 + i) * 32 + 4 * c + t] = w[col * K + b * 32 + 4 * i + t];
                pd[based + (cs * 4 + i) * 32 + 16 + 4 * c + t] = w[col * K + b * 32 + 16 + 4 * i + t];
            }}}}
            for c in 0..16 {
                let col = g * 16 + c;
                for (p, l) in [(&mut pa, base + 512), (&mut pd, based + 512)] {
                    p[l + 4 * c..l + 4 * c + 4].copy_from_slice(&dw[col * NB + b].to_le_bytes());
                    p[l + 64 + 4 * c..l + 64 + 4 * c + 4].copy_from_slice(&mw[col * NB + b].to_le_bytes());
                }
            }
        }
    }
    let mut pr = vec![0u8; GROUPS * NB * 320 + 64];
    for g in 0..GROUPS { for b in 0..NB {
        let base = (g * NB + b) * 320;
        for i in 0..4 { for c in 0..16 { for t in 0..4 {
            let col = g * 16 + c;
            pr[base + 64 * i + 4 * c + t] = w[col * K + b * 32 + 4 * i + t] | (w[col * K + b * 32 + 16 + 4 * i + t] << 4);
        }}}
        for c in 0..16 {
            let col = g * 16 + c;
            pr[base + 256 + 2 * c..base + 258 + 2 * c].copy_from_slice(&f32_to_f16(dw[col * NB + b]).to_le_bytes());
            pr[base + 288 + 2 * c..base + 290 + 2 * c].copy_from_slice(&f32_to_f16(mw[col * NB + b]).to_le_bytes());
        }
    }}
    let mut p8 = vec![0u8; GROUPS * NB * 544 + 64];
    for g in 0..GROUPS { for b in 0..NB {
        let base = (g * NB + b) * 544;
        for j in 0..8 { for c in 0..16 { for t in 0..4 {
            p8[base + 64 * j + 4 * c + t] = w[(g * 16 + c) * K + b * 32 + 4 * j + t].wrapping_add(128);
        }}}
        for c in 0..16 {
            p8[base + 512 + 2 * c..base + 514 + 2 * c].copy_from_slice(&f32_to_f16(dw[(g * 16 + c) * NB + b]).to_le_bytes());
        }
    }}
    let mut qx = vec![0i8; ROWS * K * 8];
    for r in 0..ROWS { for d in 0..K / 4 { for rep in 0..8 { for t in 0..4 {
        qx[(r * K / 4 + d) * 32 + rep * 4 + t] = qs[r * K + 4 * d + t];
    }}}}
    Data { pa, pd, pr, p8, qs, qx, da, sa, w, dw, mw }
}

fn reference(d: &Data, out: &mut [f32]) {
    let cols = GROUPS * 16;
    for r in 0..ROWS { for c in 0..cols {
        let mut acc = 0f32;
        for b in 0..NB {
            let dot: i32 = (0..32).map(|i| d.w[c * K + b * 32 + i] as i32 * d.qs[r * K + b * 32 + i] as i32).sum();
            acc = (dot as f32).mul_add(d.dw[c * NB + b] * d.da[r * NB + b], acc);
            acc = d.mw[c * NB + b].mul_add(d.sa[r * NB + b], acc);
        }
        out[r * cols + c] = acc;
    }}
}

/// A block's epilogue for `MR` rows of one half: widen the 16-bit sums, then the scaled
/// sum and the minimum term, in the portable kernel's order.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn epilogue<const MR: usize>(d: &Data, row0: usize, b: usize, s16: &[__m256i; MR], dw: __m256, mw: __m256, acc: &mut [__m256; MR]) {
    let ones = _mm256_set1_epi16(1);
    for r in 0..MR {
        let at = (row0 + r) * NB + b;
        let dot = _mm256_madd_epi16(s16[r], ones);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(*d.da.get_unchecked(at))), acc[r]);
        acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*d.sa.get_unchecked(at)), acc[r]);
    }
}

/// Rows `row0..row0 + MR`, eight columns from `col`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_rows<const MR: usize>(out: &mut [f32], row0: usize, col: usize, acc: &[__m256; MR]) {
    for r in 0..MR {
        _mm256_storeu_ps(out.as_mut_ptr().add((row0 + r) * GROUPS * 16 + col), acc[r]);
    }
}

/// Current kernel shape: one half (8 cols) at a time, MR rows, broadcast per row-step.
#[target_feature(enable = "avx2,fma")]
unsafe fn var_a<const MR: usize, const XB: bool>(d: &Data, out: &mut [f32]) {
    for g in 0..GROUPS {
        let p = d.pa.as_ptr().add(g * NB * LA);
        for row0 in (0..ROWS).step_by(MR) {
            for h in 0..2 {
                let line = |b: usize, l: usize| p.add(b * LA + l * 64 + 32 * h);
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..NB {
                    let x = |r: usize, j: usize| if XB {
                        _mm256_loadu_si256(d.qx.as_ptr().add(((row0 + r) * K / 4 + b * 8 + j) * 32).cast())
                    } else {
                        _mm256_set1_epi32(d.qs.as_ptr().add((row0 + r) * K + b * 32 + 4 * j).cast::<i32>().read_unaligned())
                    };
                    let mut s16 = [_mm256_setzero_si256(); MR];
                    for j in 0..8 {
                        let wv = _mm256_loadu_si256(line(b, j).cast());
                        for (r, s) in s16.iter_mut().enumerate() {
                            *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(wv, x(r, j)));
                        }
                    }
                    let dw = _mm256_loadu_ps(p.add(b * LA + 512 + 32 * h).cast());
                    let mw = _mm256_loadu_ps(p.add(b * LA + 576 + 32 * h).cast());
                    epilogue(d, row0, b, &s16, dw, mw, &mut acc);
                }
                store_rows(out, row0, g * 16 + 8 * h, &acc);
            }
        }
    }
}

/// Both halves per broadcast.
#[target_feature(enable = "avx2,fma")]
unsafe fn var_b<const MR: usize>(d: &Data, out: &mut [f32]) {
    let cols = GROUPS * 16;
    let ones = _mm256_set1_epi16(1);
    for g in 0..GROUPS {
        let p = d.pa.as_ptr().add(g * NB * LA);
        for row0 in (0..ROWS).step_by(MR) {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for b in 0..NB {
                let mut s16 = [[_mm256_setzero_si256(); 2]; MR];
                for j in 0..8 {
                    let w0 = _mm256_loadu_si256(p.add(b * LA + j * 64).cast());
                    let w1 = _mm256_loadu_si256(p.add(b * LA + j * 64 + 32).cast());
                    for r in 0..MR {
                        let x = _mm256_set1_epi32(d.qs.as_ptr().add((row0 + r) * K + b * 32 + 4 * j).cast::<i32>().read_unaligned());
                        s16[r][0] = _mm256_add_epi16(s16[r][0], _mm256_maddubs_epi16(w0, x));
                        s16[r][1] = _mm256_add_epi16(s16[r][1], _mm256_maddubs_epi16(w1, x));
                    }
                }
                for r in 0..MR {
                    let at = (row0 + r) * NB + b;
                    let (da, sa) = (_mm256_set1_ps(*d.da.get_unchecked(at)), _mm256_set1_ps(*d.sa.get_unchecked(at)));
                    for h in 0..2 {
                        let dw = _mm256_loadu_ps(p.add(b * LA + 512 + 32 * h).cast());
                        let mw = _mm256_loadu_ps(p.add(b * LA + 576 + 32 * h).cast());
                        let dot = _mm256_madd_epi16(s16[r][h], ones);
                        acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, da), acc[r][h]);
                        acc[r][h] = _mm256_fmadd_ps(mw, sa, acc[r][h]);
                    }
                }
            }
            for r in 0..MR { for h in 0..2 {
                _mm256_storeu_ps(out.as_mut_ptr().add((row0 + r) * cols + g * 16 + 8 * h), acc[r][h]);
            }}
        }
    }
}

/// In-lane shuffles of one activation load; layout D.
#[target_feature(enable = "avx2,fma")]
unsafe fn var_d<const MR: usize>(d: &Data, out: &mut [f32]) {
    let cols = GROUPS * 16;
    let ones = _mm256_set1_epi16(1);
    for g in 0..GROUPS {
        let p = d.pd.as_ptr().add(g * NB * LD);
        for row0 in (0..ROWS).step_by(MR) {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for b in 0..NB {
                let mut xs = [[_mm256_setzero_si256(); 4]; MR];
                for r in 0..MR {
                    let a = _mm256_loadu_si256(d.qs.as_ptr().add((row0 + r) * K + b * 32).cast());
                    xs[r] = [_mm256_shuffle_epi32(a, 0x00), _mm256_shuffle_epi32(a, 0x55), _mm256_shuffle_epi32(a, 0xaa), _mm256_shuffle_epi32(a, 0xff)];
                }
                let mut s16 = [[_mm256_setzero_si256(); 4]; MR];
                for cs in 0..4 {
                    for i in 0..4 {
                        let wv = _mm256_loadu_si256(p.add(b * LD + (cs * 4 + i) * 32).cast());
                        for r in 0..MR {
                            s16[r][cs] = _mm256_add_epi16(s16[r][cs], _mm256_maddubs_epi16(wv, xs[r][i]));
                        }
                    }
                }
                for r in 0..MR {
                    let at = (row0 + r) * NB + b;
                    let (da, sa) = (_mm256_set1_ps(*d.da.get_unchecked(at)), _mm256_set1_ps(*d.sa.get_unchecked(at)));
                    for h in 0..2 {
                        let (a0, a1) = (s16[r][2 * h], s16[r][2 * h + 1]);
                        let both = _mm256_add_epi16(_mm256_permute2x128_si256(a0, a1, 0x20), _mm256_permute2x128_si256(a0, a1, 0x31));
                        let dot = _mm256_madd_epi16(both, ones);
                        let dw = _mm256_loadu_ps(p.add(b * LD + 512 + 32 * h).cast());
                        let mw = _mm256_loadu_ps(p.add(b * LD + 576 + 32 * h).cast());
                        acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, da), acc[r][h]);
                        acc[r][h] = _mm256_fmadd_ps(mw, sa, acc[r][h]);
                    }
                }
            }
            for r in 0..MR { for h in 0..2 {
                _mm256_storeu_ps(out.as_mut_ptr().add((row0 + r) * cols + g * 16 + 8 * h), acc[r][h]);
            }}
        }
    }
}


#[target_feature(enable = "avx2,fma")]
unsafe fn var_p<const MR: usize>(d: &Data, out: &mut [f32]) {
    for g in 0..GROUPS {
        let p = d.pa.as_ptr().add(g * NB * LA);
        for row0 in (0..ROWS).step_by(MR) {
            for h in 0..2 {
                let line = |b: usize, l: usize| p.add(b * LA + l * 64 + 32 * h);
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..NB {
                    let x = |r: usize, j: usize| _mm256_set1_epi32(d.qs.as_ptr().add((row0 + r) * K + b * 32 + 4 * j).cast::<i32>().read_unaligned());
                    let mut s16 = [_mm256_setzero_si256(); MR];
                    for i in 0..4 {
                        let (lo, hi) = (_mm256_loadu_si256(line(b, i).cast()), _mm256_loadu_si256(line(b, i + 4).cast()));
                        for (r, s) in s16.iter_mut().enumerate() {
                            let pair = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x(r, i)), _mm256_maddubs_epi16(hi, x(r, i + 4)));
                            *s = _mm256_add_epi16(*s, pair);
                        }
                    }
                    let dw = _mm256_loadu_ps(p.add(b * LA + 512 + 32 * h).cast());
                    let mw = _mm256_loadu_ps(p.add(b * LA + 576 + 32 * h).cast());
                    epilogue(d, row0, b, &s16, dw, mw, &mut acc);
                }
                store_rows(out, row0, g * 16 + 8 * h, &acc);
            }
        }
    }
}

/// Q8_0 row-tile shape: 8 chunks of 64 bytes (value + 128 as u8), f16 scales.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn var_q8<const MR: usize>(d: &Data, out: &mut [f32]) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    for g in 0..GROUPS {
        let p = d.p8.as_ptr().add(g * NB * 544);
        for row0 in (0..ROWS).step_by(MR) {
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..NB {
                    let blk = p.add(b * 544);
                    let x = |r: usize, j: usize| _mm256_set1_epi32(d.qs.as_ptr().add((row0 + r) * K + b * 32 + 4 * j).cast::<i32>().read_unaligned());
                    let mut dots = [_mm256_setzero_si256(); MR];
                    for j in 0..8 {
                        let v = _mm256_xor_si256(_mm256_loadu_si256(blk.add(64 * j + 32 * h).cast()), flip);
                        let mag = _mm256_abs_epi8(v);
                        for (r, dot) in dots.iter_mut().enumerate() {
                            let pr = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(x(r, j), v));
                            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pr, ones));
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(512 + 16 * h).cast()));
                    for r in 0..MR {
                        let at = (row0 + r) * NB + b;
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[r]), _mm256_mul_ps(dw, _mm256_set1_ps(*d.da.get_unchecked(at))), acc[r]);
                    }
                }
                store_rows(out, row0, g * 16 + 8 * h, &acc);
            }
        }
    }
}

/// Q8_0 row-tile layout with E's shape: both halves per broadcast, the f32 pass deferred.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn var_q8e<const MR: usize>(d: &Data, out: &mut [f32]) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    let mut buf = SumsBuf([0; NB * 8 * 32]);
    let bp = buf.0.as_mut_ptr();
    for g in 0..GROUPS {
        let p = d.p8.as_ptr().add(g * NB * 544);
        for row0 in (0..ROWS).step_by(MR) {
            for b in 0..NB {
                let blk = p.add(b * 544);
                let xrow = d.qs.as_ptr().add(row0 * K + b * 32);
                let mut dots = [[_mm256_setzero_si256(); 2]; MR];
                for j in 0..8 {
                    let v0 = _mm256_xor_si256(_mm256_loadu_si256(blk.add(64 * j).cast()), flip);
                    let v1 = _mm256_xor_si256(_mm256_loadu_si256(blk.add(64 * j + 32).cast()), flip);
                    let (m0, m1) = (_mm256_abs_epi8(v0), _mm256_abs_epi8(v1));
                    for r in 0..MR {
                        let x = _mm256_set1_epi32(xrow.add(r * K + 4 * j).cast::<i32>().read_unaligned());
                        let p0 = _mm256_maddubs_epi16(m0, _mm256_sign_epi8(x, v0));
                        let p1 = _mm256_maddubs_epi16(m1, _mm256_sign_epi8(x, v1));
                        dots[r][0] = _mm256_add_epi32(dots[r][0], _mm256_madd_epi16(p0, ones));
                        dots[r][1] = _mm256_add_epi32(dots[r][1], _mm256_madd_epi16(p1, ones));
                    }
                }
                for r in 0..MR { for h in 0..2 {
                    _mm256_store_si256(bp.add((b * MR + r) * 16 + 8 * h).cast(), dots[r][h]);
                }}
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for b in 0..NB {
                let blk = p.add(b * 544);
                let dw = [_mm256_cvtph_ps(_mm_loadu_si128(blk.add(512).cast())), _mm256_cvtph_ps(_mm_loadu_si128(blk.add(528).cast()))];
                for r in 0..MR {
                    let da = _mm256_set1_ps(*d.da.get_unchecked((row0 + r) * NB + b));
                    for h in 0..2 {
                        let dot = _mm256_load_si256(bp.add((b * MR + r) * 16 + 8 * h).cast());
                        acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[h], da), acc[r][h]);
                    }
                }
            }
            for r in 0..MR { for h in 0..2 {
                _mm256_storeu_ps(out.as_mut_ptr().add((row0 + r) * GROUPS * 16 + g * 16 + 8 * h), acc[r][h]);
            }}
        }
    }
}

/// Row-tile walk shape (decode): nibbles unpacked per tile, f16 scales converted per tile.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn var_t<const MR: usize>(d: &Data, out: &mut [f32]) {
    let low = _mm256_set1_epi8(0x0f);
    for g in 0..GROUPS {
        let p = d.pr.as_ptr().add(g * NB * 320);
        for row0 in (0..ROWS).step_by(MR) {
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..NB {
                    let blk = p.add(b * 320);
                    let x = |r: usize, j: usize| _mm256_set1_epi32(d.qs.as_ptr().add((row0 + r) * K + b * 32 + 4 * j).cast::<i32>().read_unaligned());
                    let mut s16 = [_mm256_setzero_si256(); MR];
                    for i in 0..4 {
                        let raw = _mm256_loadu_si256(blk.add(64 * i + 32 * h).cast());
                        let (lo, hi) = (_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low));
                        for (r, s) in s16.iter_mut().enumerate() {
                            let pair = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x(r, i)), _mm256_maddubs_epi16(hi, x(r, i + 4)));
                            *s = _mm256_add_epi16(*s, pair);
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(256 + 16 * h).cast()));
                    let mw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(288 + 16 * h).cast()));
                    epilogue(d, row0, b, &s16, dw, mw, &mut acc);
                }
                store_rows(out, row0, g * 16 + 8 * h, &acc);
            }
        }
    }
}

/// E's and F's widened block sums (F's four half-groups a row; E uses half of it).
#[repr(align(64))]
struct SumsBuf([i32; NB * 8 * 32]);

/// The deferred f32 pass of E and F: rows `row0..row0 + MR` of the group at `p`, from
/// widened block sums at `bp` (row `r` of block `b` at `(b * MR + r) * stride`).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn deferred_f32<const MR: usize>(d: &Data, p: *const u8, bp: *const i32, stride: usize, row0: usize, out: &mut [f32], col: usize) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for b in 0..NB {
        let dw = [_mm256_loadu_ps(p.add(b * LA + 512).cast()), _mm256_loadu_ps(p.add(b * LA + 544).cast())];
        let mw = [_mm256_loadu_ps(p.add(b * LA + 576).cast()), _mm256_loadu_ps(p.add(b * LA + 608).cast())];
        for r in 0..MR {
            let at = (row0 + r) * NB + b;
            let (da, sa) = (_mm256_set1_ps(*d.da.get_unchecked(at)), _mm256_set1_ps(*d.sa.get_unchecked(at)));
            for h in 0..2 {
                let dot = _mm256_load_si256(bp.add((b * MR + r) * stride + 8 * h).cast());
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[h], da), acc[r][h]);
                acc[r][h] = _mm256_fmadd_ps(mw[h], sa, acc[r][h]);
            }
        }
    }
    for r in 0..MR { for h in 0..2 {
        _mm256_storeu_ps(out.as_mut_ptr().add((row0 + r) * GROUPS * 16 + col + 8 * h), acc[r][h]);
    }}
}

/// Deferred epilogue: MR rows x both halves of integer sums per broadcast (no f32
/// accumulators live in the integer loop), each block's widened sums stored to an L1
/// buffer; then the f32 epilogue over all blocks, 2*MR independent chains.
#[target_feature(enable = "avx2,fma")]
unsafe fn var_e<const MR: usize>(d: &Data, out: &mut [f32]) {
    let ones = _mm256_set1_epi16(1);
    let mut buf = SumsBuf([0; NB * 8 * 32]);
    let bp = buf.0.as_mut_ptr();
    for g in 0..GROUPS {
        let p = d.pa.as_ptr().add(g * NB * LA);
        for row0 in (0..ROWS).step_by(MR) {
            for b in 0..NB {
                let mut s16 = [[_mm256_setzero_si256(); 2]; MR];
                let xrow = d.qs.as_ptr().add(row0 * K + b * 32);
                for j in 0..8 {
                    let w0 = _mm256_loadu_si256(p.add(b * LA + j * 64).cast());
                    let w1 = _mm256_loadu_si256(p.add(b * LA + j * 64 + 32).cast());
                    for r in 0..MR {
                        let x = _mm256_set1_epi32(xrow.add(r * K + 4 * j).cast::<i32>().read_unaligned());
                        s16[r][0] = _mm256_add_epi16(s16[r][0], _mm256_maddubs_epi16(w0, x));
                        s16[r][1] = _mm256_add_epi16(s16[r][1], _mm256_maddubs_epi16(w1, x));
                    }
                }
                for r in 0..MR { for h in 0..2 {
                    _mm256_store_si256(bp.add((b * MR + r) * 16 + 8 * h).cast(), _mm256_madd_epi16(s16[r][h], ones));
                }}
            }
            deferred_f32::<MR>(d, p, bp, 16, row0, out, g * 16);
        }
    }
}

/// Deferred epilogue over two groups (32 columns) per broadcast.
#[target_feature(enable = "avx2,fma")]
unsafe fn var_f<const MR: usize>(d: &Data, out: &mut [f32]) {
    let ones = _mm256_set1_epi16(1);
    let mut buf = SumsBuf([0; NB * 8 * 32]);
    let bp = buf.0.as_mut_ptr();
    for g in (0..GROUPS).step_by(2) {
        let p = d.pa.as_ptr().add(g * NB * LA);
        let wl = |b: usize, j: usize, q: usize| p.add((q / 2) * NB * LA + b * LA + j * 64 + 32 * (q % 2));
        for row0 in (0..ROWS).step_by(MR) {
            for b in 0..NB {
                let mut s16 = [[_mm256_setzero_si256(); 4]; MR];
                let xrow = d.qs.as_ptr().add(row0 * K + b * 32);
                for j in 0..8 {
                    let w: [__m256i; 4] = std::array::from_fn(|q| _mm256_loadu_si256(wl(b, j, q).cast()));
                    for r in 0..MR {
                        let x = _mm256_set1_epi32(xrow.add(r * K + 4 * j).cast::<i32>().read_unaligned());
                        for q in 0..4 {
                            s16[r][q] = _mm256_add_epi16(s16[r][q], _mm256_maddubs_epi16(w[q], x));
                        }
                    }
                }
                for r in 0..MR { for q in 0..4 {
                    _mm256_store_si256(bp.add((b * MR + r) * 32 + 8 * q).cast(), _mm256_madd_epi16(s16[r][q], ones));
                }}
            }
            for gg in 0..2 {
                deferred_f32::<MR>(d, p.add(gg * NB * LA), bp.add(16 * gg), 32, row0, out, (g + gg) * 16);
            }
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn peak(iters: usize) -> i64 {
    let (mut x, dx) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
    let w: [__m256i; 8] = std::array::from_fn(|i| _mm256_set1_epi8(i as i8 + 2));
    let mut acc = [_mm256_setzero_si256(); 8];
    for _ in 0..iters {
        for (a, w) in acc.iter_mut().zip(&w) { *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(*w, x)); }
        x = _mm256_add_epi8(x, dx);
    }
    let mut s = _mm256_setzero_si256();
    for a in acc { s = _mm256_xor_si256(s, a); }
    _mm256_extract_epi64(s, 0)
}
fn main() {
    for _ in 0..3 {
        let n = 20_000_000;
        let t = Instant::now();
        black_box(unsafe { peak(black_box(n)) });
        println!("peak vpmaddubsw+vpaddw 1 thread: {:.1} GMAC/s", (n * 8 * 32) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }

    let d = data();
    let cols = GROUPS * 16;
    let mut want = vec![0f32; ROWS * cols];
    reference(&d, &mut want);
    let macs = (ROWS * cols * K) as f64;
    type F = unsafe fn(&Data, &mut [f32]);
    let vars: Vec<(&str, F)> = vec![
        ("A mr6 (before)", var_a::<6, false>),
        ("A mr4 (after)", var_a::<4, false>),
        ("A mr3", var_a::<3, false>),
        ("A mr8", var_a::<8, false>),
        ("E mr3 deferred", var_e::<3>),
        ("E mr4 deferred", var_e::<4>),
        ("E mr6 deferred", var_e::<6>),
        ("F mr2 two groups", var_f::<2>),
        ("F mr3 two groups", var_f::<3>),
        ("A mr6 pre-broadcast", var_a::<6, true>),
        ("B mr3 both halves", var_b::<3>),
        ("B mr4 both halves", var_b::<4>),
        ("D mr2 lane shuffles", var_d::<2>),
        ("P mr4 pairs", var_p::<4>),
        ("P mr6 pairs", var_p::<6>),
        ("T mr8 tile", var_t::<8>),
        ("T mr4 tile", var_t::<4>),
        ("Q8 mr8 tile", var_q8::<8>),
        ("Q8 mr4 tile", var_q8::<4>),
        ("Q8 E mr4 deferred", var_q8e::<4>),
        ("Q8 E mr8 deferred", var_q8e::<8>),
    ];
    let mut out = vec![0f32; ROWS * cols];
    // Q8 runs the Q4 values without minimums: its variants are checked against its row tile.
    let mut want8 = vec![0f32; ROWS * cols];
    unsafe { var_q8::<8>(&d, &mut want8) };
    for (name, f) in &vars {
        out.fill(0.0);
        unsafe { f(&d, &mut out) };
        let want = if name.starts_with("Q8") { &want8 } else { &want };
        let same = out.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{} differs from the reference", name);
    }
    for round in 0..3 {
        let mut line = format!("round {round}:");
        for (name, f) in &vars {
            let mut best = f64::MAX;
            for _ in 0..15 {
                let t = Instant::now();
                unsafe { f(black_box(&d), &mut out) };
                best = best.min(t.elapsed().as_secs_f64());
            }
            black_box(&out);
            line += &format!("\n  {name:<24} {:6.1}", macs / best / 1e9);
        }
        println!("{line}\n  (GMAC/s, one thread, best of 15)");
    }
}
