//! One query row (all query heads of one KV head) with exactly the tiled kernel's
//! arithmetic for that row (`tiled.rs`), so with tiled prefill on, a position's output
//! is the same bits whether it was attended in a tile of a long chunk, a short chunk or
//! a decode step: a prompt's outputs then do not depend on how the scheduler chunked
//! it, nor on what else ran beside it.
//!
//! The tiled kernel gives each row a vector lane and walks the positions `C` at a time:
//! each score is one chain of fused multiply-adds over the head's values, the running
//! maximum and sum of the online softmax are updated once per group of `C` positions,
//! and the weighted sum of V adds the group's `C` positions in order. Here the `C`
//! positions of a group take the lanes instead (`C` equals the lane count in every
//! instantiation): K is transposed after it is widened, so a score is still one chain of
//! fused multiply-adds over the values, in the same order; the group's maximum, weights
//! and their sum are then computed with the same vector operations on the same values,
//! and the weighted sum runs over the output columns with the same fused steps. Groups
//! the tile walks past this row's position (masked for it) leave its state unchanged
//! bit for bit (`exp(0)` is exactly 1, masked weights exactly 0), so stopping at the
//! row's own last group changes nothing.

use super::head::{HeadGeometry, KvRows};
#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2Lanes, Avx512Lanes};
use super::lanes::{Cached, Lanes, Portable};

/// Attention for one row × KV head, as `head::HeadFn`; `scratch` is reused.
pub type RowFn<T> = fn(&KvRows<'_, T>, &HeadGeometry, &[f32], &mut [f32], &mut Vec<f32>);

/// The instantiation that matches `tiled::tile_kernel` on this CPU.
pub fn row_kernel<T: Cached>() -> RowFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::kernels::isa;
        if isa::avx512f() {
            return row_avx512::<T>;
        }
        if isa::avx2_fma_f16c() {
            return row_avx2::<T>;
        }
    }
    row_portable::<T>
}

/// The bounds the unchecked reads of [`row_body`] rely on.
///
/// # Panics
/// If a cached row lies outside `k` or `v`, or the queries or outputs do not hold the
/// group's heads.
fn check<T>(kv: &KvRows<'_, T>, geo: &HeadGeometry, q: &[f32], out: &[f32]) {
    let d = geo.head_dim;
    let need = kv.offsets.iter().map(|&o| o + d).max().unwrap_or(0);
    assert!(kv.k.len() >= need && kv.v.len() >= need, "a KV offset is outside the cache");
    assert!(!kv.offsets.is_empty(), "a row sees at least its own position");
    assert!(
        q.len() >= geo.group * d && out.len() >= geo.group * d,
        "queries or outputs shorter than the group"
    );
}

fn row_portable<T: Cached>(
    kv: &KvRows<'_, T>,
    geo: &HeadGeometry,
    q: &[f32],
    out: &mut [f32],
    s: &mut Vec<f32>,
) {
    check(kv, geo, q, out);
    // SAFETY: `Portable` needs no instruction set; `check` bounds every access.
    unsafe { row_body::<T, Portable, 8>(kv, geo.head_dim, geo, q, out, s) }
}

/// An entry for one instruction set: checks the CPU and the bounds, then runs
/// `row_body` compiled for that set, the common head sizes as constants.
macro_rules! isa_row_fn {
    ($name:ident, $features:literal, $has:path, $lanes:ty, $width:literal) => {
        #[cfg(target_arch = "x86_64")]
        fn $name<T: Cached>(
            kv: &KvRows<'_, T>,
            geo: &HeadGeometry,
            q: &[f32],
            out: &mut [f32],
            s: &mut Vec<f32>,
        ) {
            #[target_feature(enable = $features)]
            unsafe fn run<T: Cached>(
                kv: &KvRows<'_, T>,
                geo: &HeadGeometry,
                q: &[f32],
                out: &mut [f32],
                s: &mut Vec<f32>,
            ) {
                match geo.head_dim {
                    64 => row_body::<T, $lanes, $width>(kv, 64, geo, q, out, s),
                    128 => row_body::<T, $lanes, $width>(kv, 128, geo, q, out, s),
                    d => row_body::<T, $lanes, $width>(kv, d, geo, q, out, s),
                }
            }
            assert!($has(), concat!("CPU features missing: ", $features));
            check(kv, geo, q, out);
            // SAFETY: the CPU has the features `run` is compiled for; `check` bounds
            // every access.
            unsafe { run(kv, geo, q, out, s) }
        }
    };
}

isa_row_fn!(row_avx512, "avx512f", crate::backend::cpu::kernels::isa::avx512f, Avx512Lanes, 16);
isa_row_fn!(row_avx2, "avx2,fma,f16c", crate::backend::cpu::kernels::isa::avx2_fma_f16c, Avx2Lanes, 8);

/// Query heads whose scores are computed side by side.
const HEADS: usize = 4;

/// Lane 0 of `v`.
#[inline(always)]
unsafe fn first<S: Lanes>(v: S::V) -> f32 {
    let mut lanes = [0.0f32; 16];
    S::store(lanes.as_mut_ptr(), v);
    lanes[0]
}

/// `a * b + c` on one value, through the lanes' own multiply-add (fused or not, as the
/// tiled kernel's).
#[inline(always)]
unsafe fn fma1<S: Lanes>(a: f32, b: f32, c: f32) -> f32 {
    first::<S>(S::fma(S::splat(a), S::splat(b), S::splat(c)))
}

/// The row's loop, `C` (= `S::W`) positions at a time; `d` is `geo.head_dim`, passed
/// apart so a caller can make it a constant.
///
/// # Safety
/// `S`'s instruction sets must be available, `check` must have passed, and `C == S::W`.
#[inline(always)]
unsafe fn row_body<T: Cached, S: Lanes, const C: usize>(
    kv: &KvRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    debug_assert_eq!(C, S::W);
    let g = geo.group;
    let n = kv.offsets.len();
    // Scratch: scaled queries (g·d), unnormalised outputs (g·d), K transposed
    // (`kt[x * C + c]`), V (`vc[c * d + x]`), K as widened (`kc[c * d + x]`), and each
    // head's running maximum and sum (g each).
    scratch.clear();
    scratch.resize(2 * g * d + 3 * C * d + 2 * g, 0.0);
    let (qs, rest) = scratch.split_at_mut(g * d);
    let (ot, rest) = rest.split_at_mut(g * d);
    let (kt, rest) = rest.split_at_mut(C * d);
    let (vc, rest) = rest.split_at_mut(C * d);
    let (kc, rest) = rest.split_at_mut(C * d);
    let (max, sum) = rest.split_at_mut(g);
    max.fill(f32::NEG_INFINITY);
    for (s, &x) in qs.iter_mut().zip(&q[..g * d]) {
        *s = x * geo.scale;
    }
    let (ktp, vcp, kcp) = (kt.as_mut_ptr(), vc.as_mut_ptr(), kc.as_mut_ptr());
    let mut weights = [0.0f32; 16];

    let mut c0 = 0;
    while c0 < n {
        let cols = (n - c0).min(C);
        for c in 0..C {
            if c < cols {
                let off = *kv.offsets.get_unchecked(c0 + c);
                T::widen::<S>(kv.k.as_ptr().add(off), kcp.add(c * d), d);
                T::widen::<S>(kv.v.as_ptr().add(off), vcp.add(c * d), d);
            } else {
                // As the tiled kernel's zero padding: masked weights times finite V.
                std::ptr::write_bytes(kcp.add(c * d), 0, d);
                std::ptr::write_bytes(vcp.add(c * d), 0, d);
            }
        }
        // K transposed, `C` values at a time in registers, then the tail.
        let whole = d - d % C;
        for x0 in (0..whole).step_by(C) {
            S::transpose(kcp.add(x0), d, ktp.add(x0 * C), C);
        }
        for x in whole..d {
            for c in 0..C {
                *ktp.add(x * C + c) = *kcp.add(c * d + x);
            }
        }
        // Each head's scores are one chain of multiply-adds in value order, as in the
        // tiled kernel; up to `HEADS` heads' chains run side by side so they overlap.
        let mut scores = [[0.0f32; 16]; HEADS];
        for h in 0..g {
            let j = h % HEADS;
            if j == 0 {
                let heads = (g - h).min(HEADS);
                let mut sc = [S::splat(0.0); HEADS];
                for x in 0..d {
                    let kx = S::load(ktp.add(x * C));
                    for (i, a) in sc.iter_mut().enumerate().take(heads) {
                        *a = S::fma(S::splat(*qs.as_ptr().add((h + i) * d + x)), kx, *a);
                    }
                }
                for (i, a) in sc.iter().enumerate().take(heads) {
                    S::store(scores[i].as_mut_ptr(), *a);
                }
            }
            // Positions past the row's own are the lanes from `cols` on.
            let lanes = &mut scores[j];
            for l in lanes.iter_mut().take(C).skip(cols) {
                *l = f32::NEG_INFINITY;
            }
            // A maximum is the same in any order (up to the sign of a zero, which
            // nothing below can tell apart).
            let new = lanes[..C].iter().fold(max[h], |m, &l| m.max(l));
            let alpha = first::<S>(S::exp_nonpositive(S::sub(S::splat(max[h]), S::splat(new))));
            let e = S::exp_nonpositive(S::sub(S::load(lanes.as_ptr()), S::splat(new)));
            S::store(weights.as_mut_ptr(), e);
            // The tiled kernel adds the weights in position order; so does this.
            let mut total = 0.0f32;
            for &w in &weights[..C] {
                total += w;
            }
            max[h] = new;
            sum[h] = fma1::<S>(sum[h], alpha, total);
            // The weighted sum, `C` output columns per vector, then the tail.
            let oh = ot.as_mut_ptr().add(h * d);
            let mut x = 0;
            while x + C <= d {
                let mut acc = S::mul(S::load(oh.add(x)), S::splat(alpha));
                for (c, &w) in weights[..C].iter().enumerate() {
                    acc = S::fma(S::splat(w), S::load(vcp.add(c * d + x)), acc);
                }
                S::store(oh.add(x), acc);
                x += C;
            }
            while x < d {
                let mut a = first::<S>(S::mul(S::splat(*oh.add(x)), S::splat(alpha)));
                for (c, &w) in weights[..C].iter().enumerate() {
                    a = fma1::<S>(w, *vcp.add(c * d + x), a);
                }
                *oh.add(x) = a;
                x += 1;
            }
        }
        c0 += C;
    }
    for h in 0..g {
        let inv = 1.0 / sum[h];
        for (o, &a) in out[h * d..(h + 1) * d].iter_mut().zip(&ot[h * d..(h + 1) * d]) {
            *o = a * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::super::tests::pseudo;
    use super::super::tiled::{attend_tile_portable, tile_kernel, tile_rows, TileFn, TileRows, TileScratch};
    use super::*;

    /// Every row of a tile, attended alone by `row`, gets the bits the tile kernel gave
    /// it: tiles of 1 to `w` rows, on the causal diagonal and far past it, head sizes
    /// not a multiple of the lanes, groups of 1 to 5, and scores far apart (a large
    /// query), where the running maximum jumps between column groups.
    fn rows_match_tiles<T: Cached>(
        name: &str,
        tile: TileFn<T>,
        row: RowFn<T>,
        w: usize,
        cache: fn(&[f32]) -> Vec<T>,
    ) {
        for (g, d) in [(3, 64), (1, 8), (5, 6), (2, 128), (3, 20)] {
            let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
            for (first_pos, q_scale) in [(0, 1.0), (5, 1.0), (16, 1.0), (37, 1.0), (53, 60.0)] {
                for rows in [1, 2, w / 2 + 1, w] {
                    let n = first_pos + rows;
                    let (k, v) = (cache(&pseudo(n * d, 3)), cache(&pseudo(n * d, 4)));
                    let stride = g * d;
                    let q: Vec<f32> = pseudo(rows * stride, 5).iter().map(|x| x * q_scale).collect();
                    let offsets: Vec<usize> = (0..n).map(|p| p * d).collect();
                    let kv = KvRows { k: &k, v: &v, offsets: &offsets };
                    let t = TileRows { first_pos, rows, stride };
                    let mut tiled = vec![f32::NAN; rows * stride];
                    tile(&kv, &geo, &t, &q, &mut tiled, &mut TileScratch::default());
                    for i in 0..rows {
                        let pos = first_pos + i;
                        let mut alone = vec![f32::NAN; stride];
                        let kv = KvRows { k: &k, v: &v, offsets: &offsets[..=pos] };
                        row(&kv, &geo, &q[i * stride..(i + 1) * stride], &mut alone, &mut Vec::new());
                        assert_eq!(
                            alone,
                            tiled[i * stride..(i + 1) * stride],
                            "{name}: g {g} d {d} first {first_pos} rows {rows} row {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_alone_gets_the_bits_its_tile_gave_it() {
        let f32s: fn(&[f32]) -> Vec<f32> = |x| x.to_vec();
        let f16s: fn(&[f32]) -> Vec<f16> = |x| x.iter().map(|&a| f16::from_f32(a)).collect();
        rows_match_tiles("portable f32", attend_tile_portable::<f32>, row_portable::<f32>, Portable::W, f32s);
        rows_match_tiles("portable f16", attend_tile_portable::<f16>, row_portable::<f16>, Portable::W, f16s);
        // The pair this CPU runs, and AVX2's where the CPU has AVX-512 too.
        rows_match_tiles("selected f32", tile_kernel::<f32>(), row_kernel::<f32>(), tile_rows(), f32s);
        rows_match_tiles("selected f16", tile_kernel::<f16>(), row_kernel::<f16>(), tile_rows(), f16s);
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::kernels::isa::avx2_fma_f16c() {
            use super::super::tiled::attend_tile_avx2;
            rows_match_tiles("avx2 f32", attend_tile_avx2::<f32>, row_avx2::<f32>, Avx2Lanes::W, f32s);
            rows_match_tiles("avx2 f16", attend_tile_avx2::<f16>, row_avx2::<f16>, Avx2Lanes::W, f16s);
        }
    }
}
