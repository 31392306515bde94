//! The tiled prefill loop (`tiled.rs`) with its two products in bf16 pairs: AVX-512
//! BF16's `vdpbf16ps` multiplies two bf16 pairs a lane and adds both products to an
//! f32 lane, twice the multiply-adds of an f32 FMA an instruction (the kernel bench's
//! peak table). Queries and K are rounded to bf16 (nearest, ties to even) for the
//! scores, the softmax weights and V for the weighted sum; sums, the running maximum
//! and the softmax's normalisation stay f32.
//!
//! The layouts keep one query row per lane throughout, as the f32 tile does for its
//! scores: a lane of the queries holds a row's values `2j, 2j + 1`, and K's pairs are
//! broadcast; for the weighted sum, a lane holds a row's weights of columns
//! `2p, 2p + 1`, and V's pairs (`v[2p][x], v[2p + 1][x]`) are broadcast, so the
//! outputs build up transposed (`[x][row]`) and are turned back once at the end.
//!
//! A row's arithmetic never depends on the other rows of its tile, and column groups
//! start at position 0 whatever the chunk, so prompt outputs still do not depend on the
//! chunking. They differ from the f32 tile's by bf16 rounding (about 2^-9 of a value).

use std::arch::x86_64::*;

use super::head::{HeadGeometry, PagedRows};
use super::lanes::{Avx512Lanes, Cached, Lanes};
use super::tiled::{causal_mask, refill, softmax_step, widen_group, write_out, TileRows, WeightExp};
use crate::backend::cpu::kernels::bf16_bits;

/// Query rows per tile (one per lane) and positions per column group.
const W: usize = 16;
const C: usize = 16;

/// Buffers one thread reuses from tile to tile.
#[derive(Default)]
pub struct Bf16Scratch {
    /// The tile's scaled queries in pairs: `qp[(h * d / 2 + j) * W + row]`.
    qp: Vec<u32>,
    /// Unnormalised outputs, transposed: `ot[(h * d + x) * W + row]`.
    ot: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// A group's positions widened to f32 (as `tiled::widen_group` lays them out).
    kt: Vec<f32>,
    vc: Vec<f32>,
    /// The same in pairs: K `kp[j * C + c]` (values `2j, 2j + 1` of column `c`), V
    /// `vp[p * d + x]` (value `x` of columns `2p, 2p + 1`).
    kp: Vec<u32>,
    vp: Vec<u32>,
}

/// Whether this CPU runs the bf16 tiles.
pub fn available() -> bool {
    crate::backend::cpu::kernels::isa::avx512_bf16_f16c_fma()
}

/// Whether a head size suits the kernel: whole vectors of V values
/// (`AttentionPrecision::resolve` asks the same).
pub fn fits(head_dim: usize) -> bool {
    head_dim.is_multiple_of(W)
}

/// The tile kernel (see `tiled::TileFn`).
///
/// # Panics
/// If the CPU lacks an extension the kernel is compiled for ([`available`]), the head
/// size does not [`fits`], or the tile's bounds fail `tiled`'s checks.
pub fn attend_tile<T: Cached>(
    kv: &PagedRows<'_, T>,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &mut [f32],
    s: &mut Bf16Scratch,
) {
    assert!(available(), "AVX-512 BF16, BW or VL, F16C or FMA missing");
    assert!(fits(geo.head_dim), "head size {} is not a multiple of {W}", geo.head_dim);
    super::tiled::check(kv, geo, t, q, out, W);
    // SAFETY: the CPU has every extension `body` is compiled for; `check` bounds every access.
    unsafe {
        match geo.head_dim {
            64 => body::<T>(kv, 64, geo, t, q, out, s),
            d => body::<T>(kv, d, geo, t, q, out, s),
        }
    }
}

/// Two f32 vectors rounded to bf16 and interleaved: lane `i` holds `even[i]` in its low
/// half and `odd[i]` in its high half.
#[inline(always)]
unsafe fn pairs(even: __m512, odd: __m512) -> __m512i {
    // `vcvtne2ps2bf16` puts the 16 even values below the 16 odd ones.
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
    );
    let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even));
    _mm512_permutexvar_epi16(order, halves)
}

/// `exp(x)` for `x <= 0` (-inf and NaN give 0), to about 6e-5 of the value: the
/// weights are rounded to bf16 (2^-9) right after, so the f32 tile's seventh-degree
/// polynomial would be wasted here. `2^f` on `[-1/2, 1/2]` by its Taylor polynomial of
/// degree 4, scaled by `2^n` with `vscalefps` (which also flushes what is below f32's
/// range to 0).
#[inline(always)]
unsafe fn exp_weights(x: __m512) -> __m512 {
    const LN2: f32 = std::f32::consts::LN_2;
    const C: [f32; 5] = [1.0, LN2, LN2 * LN2 / 2.0, LN2 * LN2 * LN2 / 6.0, LN2 * LN2 * LN2 * LN2 / 24.0];
    // `max` returns its second operand for a NaN first one.
    let x = _mm512_max_ps(x, _mm512_set1_ps(-200.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(C[4]);
    for &c in C[..4].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// [`exp_weights`] for the shared softmax step.
struct WeightsExp;

impl WeightExp<Avx512Lanes> for WeightsExp {
    #[inline(always)]
    unsafe fn exp(x: __m512) -> __m512 {
        exp_weights(x)
    }
}

/// `acc + a · b` over each lane's two bf16 pairs, `b` one pair broadcast.
#[inline(always)]
unsafe fn dot2(acc: __m512, a: __m512i, b: u32) -> __m512 {
    let b = _mm512_set1_epi32(b as i32);
    _mm512_dpbf16_ps(
        acc,
        std::mem::transmute::<__m512i, __m512bh>(a),
        std::mem::transmute::<__m512i, __m512bh>(b),
    )
}

/// # Safety
/// [`available`] must hold; `tiled::check` must have passed for `W`,
/// and `d` is `geo.head_dim`, a multiple of `W`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c,fma")]
unsafe fn body<T: Cached>(
    kv: &PagedRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &mut [f32],
    s: &mut Bf16Scratch,
) {
    type S = Avx512Lanes;
    let (g, dh, n) = (geo.group, d / 2, kv.len);
    refill(&mut s.qp, g * dh * W, 0);
    for i in 0..t.rows {
        let row = &q[i * t.stride..i * t.stride + g * d];
        for (hj, pair) in row.chunks_exact(2).enumerate() {
            let (lo, hi) = (bf16_bits(pair[0] * geo.scale), bf16_bits(pair[1] * geo.scale));
            s.qp[hj * W + i] = u32::from(lo) | u32::from(hi) << 16;
        }
    }
    refill(&mut s.ot, g * d * W, 0.0);
    refill(&mut s.max, g * W, f32::NEG_INFINITY);
    refill(&mut s.sum, g * W, 0.0);
    refill(&mut s.kt, C * d, 0.0);
    refill(&mut s.vc, C * d, 0.0);
    refill(&mut s.kp, dh * C, 0);
    refill(&mut s.vp, C / 2 * d, 0);
    let (qp, ot, mx, sm) = (s.qp.as_ptr(), s.ot.as_mut_ptr(), s.max.as_mut_ptr(), s.sum.as_mut_ptr());
    let (kt, vc, kp, vp) = (s.kt.as_mut_ptr(), s.vc.as_mut_ptr(), s.kp.as_mut_ptr(), s.vp.as_mut_ptr());

    let mut c0 = 0;
    while c0 < n {
        let cols = (n - c0).min(C);
        let (region, index) = kv.place(c0);
        if cols == C && index + C <= kv.block_size {
            // A whole group in one block: straight from the cache into pairs.
            let (k, v, bs) =
                (kv.k.as_ptr().add(region + index), kv.v.as_ptr().add(region + index * d), kv.block_size);
            for j in 0..dh {
                let line = pairs(
                    T::load_values::<S>(k.add(2 * j * bs)),
                    T::load_values::<S>(k.add((2 * j + 1) * bs)),
                );
                _mm512_storeu_si512(kp.add(j * C).cast(), line);
            }
            for p in 0..C / 2 {
                for x in (0..d).step_by(W) {
                    let line = pairs(
                        T::load_values::<S>(v.add(2 * p * d + x)),
                        T::load_values::<S>(v.add((2 * p + 1) * d + x)),
                    );
                    _mm512_storeu_si512(vp.add(p * d + x).cast(), line);
                }
            }
        } else {
            widen_group::<T, S>(kv, d, c0, cols, C, kt, vc);
            for j in 0..dh {
                let line = pairs(S::load(kt.add(2 * j * C)), S::load(kt.add((2 * j + 1) * C)));
                _mm512_storeu_si512(kp.add(j * C).cast(), line);
            }
            for p in 0..C / 2 {
                for x in (0..d).step_by(W) {
                    let line = pairs(S::load(vc.add(2 * p * d + x)), S::load(vc.add((2 * p + 1) * d + x)));
                    _mm512_storeu_si512(vp.add(p * d + x).cast(), line);
                }
            }
        }
        let (first, masked) = causal_mask::<C>(c0, cols, t.first_pos, W);

        for h in 0..g {
            let mut sc = [_mm512_setzero_ps(); C];
            let qh = qp.add(h * dh * W);
            for j in 0..dh {
                let qx = _mm512_loadu_si512(qh.add(j * W).cast());
                for (c, a) in sc.iter_mut().enumerate() {
                    *a = dot2(*a, qx, *kp.add(j * C + c));
                }
            }
            let (mxh, smh) = (mx.add(h * W), sm.add(h * W));
            let alpha = softmax_step::<S, WeightsExp, C>(&mut sc, &first, masked, mxh, smh);
            let mut pw = [_mm512_setzero_si512(); C / 2];
            for (p, w) in pw.iter_mut().enumerate() {
                *w = pairs(sc[2 * p], sc[2 * p + 1]);
            }
            let oh = ot.add(h * d * W);
            for x0 in (0..d).step_by(W) {
                let mut acc = [_mm512_setzero_ps(); W];
                for (xi, a) in acc.iter_mut().enumerate() {
                    *a = S::mul(S::load(oh.add((x0 + xi) * W)), alpha);
                }
                for (p, &w) in pw.iter().enumerate() {
                    for (xi, a) in acc.iter_mut().enumerate() {
                        *a = dot2(*a, w, *vp.add(p * d + x0 + xi));
                    }
                }
                for (xi, &a) in acc.iter().enumerate() {
                    S::store(oh.add((x0 + xi) * W), a);
                }
            }
        }
        c0 += C;
    }

    write_out(t, g, d, W, &s.sum, out, |h, i, x| s.ot[(h * d + x) * W + i]);
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::super::tests::{pseudo, Paged};
    use super::super::tiled::tests::reference;
    use super::*;

    /// The bf16 tiles against dense f64 attention over the values the cache holds:
    /// tiles of 1 to 16 rows on the causal diagonal and past it, column groups inside
    /// one block and across blocks of 5, groups of 1 and 3, head sizes 64 and 128, f16
    /// and f32 caches. The tolerance is bf16's: products of values rounded to 8
    /// significant bits. The rows between a tile's rows must come out untouched.
    #[test]
    fn bf16_tiles_match_dense_attention_within_bf16_rounding() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        fn run<T: Cached>(widen: fn(&[f32]) -> Vec<T>, unwiden: fn(&[T]) -> Vec<f32>) -> f32 {
            let mut worst = 0.0f32;
            for (g, d, bs) in [(3, 64, 16), (1, 64, 5), (2, 128, 5)] {
                let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
                for first_pos in [0, 5, 16, 37] {
                    for rows in 1..=W {
                        let n = first_pos + rows;
                        let (kc, vc) = (widen(&pseudo(n * d, 3)), widen(&pseudo(n * d, 4)));
                        let (k, v) = (unwiden(&kc), unwiden(&vc));
                        let stride = g * d + 3;
                        let t = TileRows { first_pos, rows, stride, out_stride: stride };
                        let q: Vec<f32> = pseudo(rows * stride, 5).iter().map(|x| x * 4.0).collect();
                        let cache = Paged::new(&kc, &vc, d, bs);
                        let mut got = vec![7.0; rows * stride];
                        attend_tile(&cache.rows(n), &geo, &t, &q, &mut got, &mut Bf16Scratch::default());
                        let want = reference(&k, &v, &geo, &t, &q);
                        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                            if j % stride >= g * d {
                                assert_eq!(
                                    *a, 7.0,
                                    "g {g} d {d} first {first_pos} rows {rows} [{j}] written"
                                );
                                continue;
                            }
                            let err = (a - b).abs();
                            assert!(
                                err < 2e-2,
                                "g {g} d {d} bs {bs} first {first_pos} rows {rows} [{j}]: {a} vs {b}"
                            );
                            worst = worst.max(err);
                        }
                    }
                }
            }
            worst
        }
        let worst_f32 = run::<f32>(|x| x.to_vec(), |x| x.to_vec());
        let worst_f16 = run::<f16>(
            |x| x.iter().map(|&a| f16::from_f32(a)).collect(),
            |x| x.iter().map(|a| a.to_f32()).collect(),
        );
        // Not f32 arithmetic in disguise: bf16 rounding shows.
        assert!(worst_f32 > 1e-4 && worst_f16 > 1e-4, "{worst_f32} {worst_f16}");
    }

    #[test]
    fn the_weights_exponential_is_close_enough_for_bf16() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn exp16(x: [f32; 16]) -> [f32; 16] {
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), exp_weights(_mm512_loadu_ps(x.as_ptr())));
            out
        }
        let xs: Vec<f32> = (0..=16 * 640).map(|i| -(i as f32) / 64.0).collect();
        for chunk in xs.chunks(16) {
            let mut x = [0.0f32; 16];
            x[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: the CPU has AVX-512 F (`available`).
            let got = unsafe { exp16(x) };
            for (&x, &e) in x.iter().zip(&got) {
                let want = (x as f64).exp();
                assert!(((e as f64) - want).abs() <= 1e-4 * want + 1e-38, "exp({x}) = {e}, not {want}");
            }
        }
        // SAFETY: as above.
        let edges = unsafe {
            exp16([
                0.0,
                -0.0,
                f32::NEG_INFINITY,
                f32::NAN,
                -150.0,
                -1e30,
                -87.0,
                -0.5,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ])
        };
        assert_eq!(&edges[..6], &[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(edges[6] > 0.0 && edges[6] < 2e-38, "{}", edges[6]);
    }

    /// Each query row's outputs are the same bits whatever tile it shares and wherever
    /// in the tile it sits: what keeps a prompt's outputs independent of its chunking.
    #[test]
    fn a_rows_bits_do_not_depend_on_its_tile() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let (g, d, n) = (3, 64, 60);
        let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
        let k: Vec<f16> = pseudo(n * d, 21).iter().map(|&a| f16::from_f32(a)).collect();
        let v: Vec<f16> = pseudo(n * d, 22).iter().map(|&a| f16::from_f32(a)).collect();
        let cache = Paged::new(&k, &v, d, 16);
        let q: Vec<f32> = pseudo(n * g * d, 23).iter().map(|x| x * 4.0).collect();
        let tile = |first: usize, rows: usize| {
            let t = TileRows { first_pos: first, rows, stride: g * d, out_stride: g * d };
            let mut out = vec![0.0; rows * g * d];
            let qs = &q[first * g * d..];
            attend_tile(&cache.rows(first + rows), &geo, &t, qs, &mut out, &mut Bf16Scratch::default());
            out
        };
        let whole: Vec<f32> =
            [(0, 16), (16, 16), (32, 16), (48, 12)].iter().flat_map(|&(f, r)| tile(f, r)).collect();
        for (first, rows) in [(0, 1), (3, 9), (13, 16), (40, 13), (59, 1)] {
            let got = tile(first, rows);
            let want = &whole[first * g * d..(first + rows) * g * d];
            assert!(
                got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "rows {first}..{} differ from the same rows in whole tiles",
                first + rows
            );
        }
    }
}
