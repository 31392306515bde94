//! Prefill attention a tile of query rows at a time (FlashAttention-2's loop, on the
//! CPU): for one KV head, `W` consecutive query rows of one sequence (one per vector
//! lane) and all the query heads that share the KV head walk the cached positions
//! `C` at a time. Each group of `C` K and V rows is widened to f32 once and serves
//! every row and head of the tile; scores, the running maximum and sum of the online
//! softmax, and the rescaling of the output are all vertical vector operations, with
//! no horizontal sum per score as the row-at-a-time kernels need.
//!
//! The causal mask only touches the column groups that reach past the tile's first
//! row. Lanes past the tile's last row (a short last tile) hold zero queries and are
//! never written out. Results equal the row-at-a-time path's within float rounding: the
//! softmax is normalised once at the end instead of before the weighted sum.

use super::head::{HeadGeometry, PagedRows};
#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2Lanes, Avx512Lanes};
use super::lanes::{Cached, Lanes, Portable};
use super::tile_row::first;

/// Buffers one thread reuses from tile to tile.
#[derive(Default)]
pub struct TileScratch {
    /// The tile's queries, scaled by 1/√d: `qt[(h * d + x) * W + row]`.
    qt: Vec<f32>,
    /// Unnormalised outputs, a row of `d` values per head and query row:
    /// `ot[(h * W + row) * d + x]`.
    ot: Vec<f32>,
    /// Running maximum and sum of each head's scores: `[h * W + row]`.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// `C` positions' K values widened to f32, `[x * C + c]`, and V rows, `[c * d + x]`.
    kt: Vec<f32>,
    vc: Vec<f32>,
}

/// Where a tile sits: the position of its first row, how many rows it has (at most
/// [`tile_rows`]), and the distance between rows in its queries and in its outputs.
pub struct TileRows {
    pub first_pos: usize,
    pub rows: usize,
    pub stride: usize,
    pub out_stride: usize,
}

/// The tiled kernel for cache values of type `T`: `kv` holds the KV head's positions
/// `0..=last row's position`; the group's query heads of the tile's rows are read from
/// `q` (row `i` at `i * stride`) and written to `out` (row `i` at `i * out_stride`).
pub type TileFn<T> = fn(&PagedRows<'_, T>, &HeadGeometry, &TileRows, &[f32], &mut [f32], &mut TileScratch);

/// Query rows per tile with the kernel [`tile_kernel`] picks on this CPU.
pub fn tile_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::kernels::isa;
        if isa::avx512f() {
            return Avx512Lanes::W;
        }
        if isa::avx2_fma_f16c() {
            return Avx2Lanes::W;
        }
    }
    Portable::W
}

/// The widest instantiation this CPU runs.
pub fn tile_kernel<T: Cached>() -> TileFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::kernels::isa;
        if isa::avx512f() {
            return attend_tile_avx512::<T>;
        }
        if isa::avx2_fma_f16c() {
            return attend_tile_avx2::<T>;
        }
    }
    attend_tile_portable::<T>
}

/// The bounds the unchecked reads of [`tile_body`] rely on.
///
/// # Panics
/// If a cached region lies outside `k` or `v`, the tile has more rows than `w`, or the
/// queries or outputs do not hold the tile's rows.
pub(super) fn check<T>(
    kv: &PagedRows<'_, T>,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &[f32],
    w: usize,
) {
    let d = geo.head_dim;
    kv.check(d);
    assert!(t.rows >= 1 && t.rows <= w, "tile of {} rows for {w} lanes", t.rows);
    assert_eq!(kv.len, t.first_pos + t.rows, "positions 0..=last row");
    let span = |stride: usize| (t.rows - 1) * stride + geo.group * d;
    assert!(
        q.len() >= span(t.stride) && out.len() >= span(t.out_stride),
        "queries or outputs shorter than the tile"
    );
}

pub(super) fn attend_tile_portable<T: Cached>(
    kv: &PagedRows<'_, T>,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &mut [f32],
    s: &mut TileScratch,
) {
    check(kv, geo, t, q, out, Portable::W);
    // SAFETY: `Portable` needs no instruction set; `check` bounds every access.
    unsafe { tile_body::<T, Portable, 8, 1, 8>(kv, geo.head_dim, geo, t, q, out, s) }
}

#[cfg(target_arch = "x86_64")]
fn attend_tile_avx512<T: Cached>(
    kv: &PagedRows<'_, T>,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &mut [f32],
    s: &mut TileScratch,
) {
    #[target_feature(enable = "avx512f")]
    unsafe fn run<T: Cached>(
        kv: &PagedRows<'_, T>,
        geo: &HeadGeometry,
        t: &TileRows,
        q: &[f32],
        out: &mut [f32],
        s: &mut TileScratch,
    ) {
        // Constant head sizes make the cached rows' strides immediates.
        match geo.head_dim {
            64 => tile_body::<T, Avx512Lanes, 16, 1, 16>(kv, 64, geo, t, q, out, s),
            128 => tile_body::<T, Avx512Lanes, 16, 1, 16>(kv, 128, geo, t, q, out, s),
            d => tile_body::<T, Avx512Lanes, 16, 1, 16>(kv, d, geo, t, q, out, s),
        }
    }
    assert!(crate::backend::cpu::kernels::isa::avx512f(), "AVX-512 F missing");
    check(kv, geo, t, q, out, Avx512Lanes::W);
    // SAFETY: the CPU has AVX-512 F; `check` bounds every access.
    unsafe { run(kv, geo, t, q, out, s) }
}

#[cfg(target_arch = "x86_64")]
pub(super) fn attend_tile_avx2<T: Cached>(
    kv: &PagedRows<'_, T>,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &mut [f32],
    s: &mut TileScratch,
) {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<T: Cached>(
        kv: &PagedRows<'_, T>,
        geo: &HeadGeometry,
        t: &TileRows,
        q: &[f32],
        out: &mut [f32],
        s: &mut TileScratch,
    ) {
        // Constant head sizes make the cached rows' strides immediates.
        match geo.head_dim {
            64 => tile_body::<T, Avx2Lanes, 8, 2, 4>(kv, 64, geo, t, q, out, s),
            128 => tile_body::<T, Avx2Lanes, 8, 2, 4>(kv, 128, geo, t, q, out, s),
            d => tile_body::<T, Avx2Lanes, 8, 2, 4>(kv, d, geo, t, q, out, s),
        }
    }
    assert!(crate::backend::cpu::kernels::isa::avx2_fma_f16c(), "AVX2, FMA or F16C missing");
    check(kv, geo, t, q, out, Avx2Lanes::W);
    // SAFETY: the CPU has AVX2, FMA and F16C; `check` bounds every access.
    unsafe { run(kv, geo, t, q, out, s) }
}

/// The tile's loop, `C` positions at a time, `P` query heads of the group at a time and
/// the rest one at a time (see [`heads`]: `CB` score columns at a time); `d` is
/// `geo.head_dim`, passed apart so a caller can make it a constant.
///
/// # Safety
/// `S`'s instruction sets must be available, and [`check`] must have passed for `S::W`.
#[inline(always)]
unsafe fn tile_body<T: Cached, S: Lanes, const C: usize, const P: usize, const CB: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    t: &TileRows,
    q: &[f32],
    out: &mut [f32],
    s: &mut TileScratch,
) {
    let (g, w) = (geo.group, S::W);
    let n = kv.len;
    s.qt.clear();
    s.qt.resize(g * d * w, 0.0);
    for i in 0..t.rows {
        for (j, &x) in q[i * t.stride..i * t.stride + g * d].iter().enumerate() {
            s.qt[j * w + i] = x * geo.scale;
        }
    }
    refill(&mut s.ot, g * d * w, 0.0);
    refill(&mut s.max, g * w, f32::NEG_INFINITY);
    refill(&mut s.sum, g * w, 0.0);
    refill(&mut s.kt, C * d, 0.0);
    refill(&mut s.vc, C * d, 0.0);
    let (kt, vc) = (s.kt.as_mut_ptr(), s.vc.as_mut_ptr());
    let bufs = Bufs {
        qt: s.qt.as_ptr(),
        ot: s.ot.as_mut_ptr(),
        mx: s.max.as_mut_ptr(),
        sm: s.sum.as_mut_ptr(),
        kt,
        vc,
    };

    let mut c0 = 0;
    while c0 < n {
        let cols = (n - c0).min(C);
        widen_group::<T, S>(kv, d, c0, cols, C, kt, vc);
        let (first, masked) = causal_mask::<C>(c0, cols, t.first_pos, w);

        let mut h = 0;
        while h + P <= g {
            heads::<S, C, P, CB>(h, d, &bufs, &first, masked);
            h += P;
        }
        while h < g {
            heads::<S, C, 1, C>(h, d, &bufs, &first, masked);
            h += 1;
        }
        c0 += C;
    }

    write_out(t, g, d, w, &s.sum, out, |h, i, x| s.ot[(h * w + i) * d + x]);
}

/// Each of the tile's rows and `g` heads' `d` outputs into `out` (row `i` at
/// `i * t.out_stride`): the unnormalised value `acc(h, i, x)` over the head's softmax
/// sum for the row (`sum[h * w + i]`).
#[inline(always)]
pub(super) fn write_out(
    t: &TileRows,
    g: usize,
    d: usize,
    w: usize,
    sum: &[f32],
    out: &mut [f32],
    acc: impl Fn(usize, usize, usize) -> f32,
) {
    for h in 0..g {
        for i in 0..t.rows {
            let inv = 1.0 / sum[h * w + i];
            let row = &mut out[i * t.out_stride + h * d..i * t.out_stride + (h + 1) * d];
            for (x, o) in row.iter_mut().enumerate() {
                *o = acc(h, i, x) * inv;
            }
        }
    }
}

/// For a group of `C` columns from position `c0` (`cols` of them cached), the first
/// lane (tile row) that may see each column, and whether any column hides a lane: row
/// `i` (position `first_pos + i`) sees column `c` when `c0 + c <= first_pos + i`.
/// Columns past `cols` are hidden from every lane.
#[inline(always)]
pub(super) fn causal_mask<const C: usize>(
    c0: usize,
    cols: usize,
    first_pos: usize,
    w: usize,
) -> ([usize; C], bool) {
    let mut first = [0usize; C];
    for (c, f) in first.iter_mut().enumerate() {
        *f = if c < cols { (c0 + c).saturating_sub(first_pos).min(w) } else { w };
    }
    (first, first[C - 1] > 0)
}

/// The exponential a kernel's softmax weights take. A type, not a closure: a closure is
/// a function of its own that does not inherit the kernel's `#[target_feature]`s unless
/// written inside the annotated function itself.
pub(super) trait WeightExp<S: Lanes> {
    /// `exp(x)` for `x <= 0`, 0 for -inf.
    ///
    /// # Safety
    /// `S`'s instruction sets must be available.
    unsafe fn exp(x: S::V) -> S::V;
}

/// The f32 tiles' exponential, [`Lanes::exp_nonpositive`].
pub(super) struct ExactExp;

impl<S: Lanes> WeightExp<S> for ExactExp {
    #[inline(always)]
    unsafe fn exp(x: S::V) -> S::V {
        S::exp_nonpositive(x)
    }
}

/// The online softmax's step over one group's scores `sc` (a lane per row): hides the
/// masked lanes, moves the running maximum at `mx` and sum at `sm` on, turns the
/// scores into this group's weights with `E`, and returns the factor that rescales
/// what was accumulated under the old maximum.
///
/// # Safety
/// `S`'s instruction sets must be available; `mx` and `sm` hold `S::W` values.
#[inline(always)]
pub(super) unsafe fn softmax_step<S: Lanes, E: WeightExp<S>, const C: usize>(
    sc: &mut [S::V; C],
    first: &[usize; C],
    masked: bool,
    mx: *mut f32,
    sm: *mut f32,
) -> S::V {
    if masked {
        for (a, &f) in sc.iter_mut().zip(first) {
            *a = S::hide_below(*a, f);
        }
    }
    let old = S::load(mx);
    let mut new = old;
    for &a in sc.iter() {
        new = S::max(new, a);
    }
    let alpha = E::exp(S::sub(old, new));
    let mut total = S::splat(0.0);
    for a in sc.iter_mut() {
        *a = E::exp(S::sub(*a, new));
        total = S::add(total, *a);
    }
    S::store(mx, new);
    S::store(sm, S::fma(S::load(sm), alpha, total));
    alpha
}

/// `v` as `n` copies of `x`, keeping its allocation: a tile's scratch buffer reset.
pub(super) fn refill<T: Copy>(v: &mut Vec<T>, n: usize, x: T) {
    v.clear();
    v.resize(n, x);
}

/// A tile's scratch buffers (see [`TileScratch`]) as pointers, for the unchecked loops.
#[derive(Clone, Copy)]
struct Bufs {
    qt: *const f32,
    ot: *mut f32,
    mx: *mut f32,
    sm: *mut f32,
    kt: *const f32,
    vc: *const f32,
}

/// Query heads `h..h + P` of the tile against one group of `C` widened positions: the
/// scores (`CB` columns of every head at a time, each K value broadcast once for the `P`
/// heads), the online softmax's update, and each head's weighted sum of V ([`weigh`]).
/// Each head's arithmetic is the same sequence of operations whatever `P` is, so its
/// results do not depend on it; `P > 1` only saves broadcasts, which on AVX2 take an
/// issue slot of their own beside every multiply-add.
///
/// # Safety
/// As [`tile_body`]; heads `h..h + P` exist, `first` holds the group's first visible
/// lane per column and `CB` divides `C`.
// The loops walk `[head][column]` arrays by their inner index, one broadcast feeding
// every head: iterators over one of them would hide that.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn heads<S: Lanes, const C: usize, const P: usize, const CB: usize>(
    h: usize,
    d: usize,
    b: &Bufs,
    first: &[usize; C],
    masked: bool,
) {
    let Bufs { qt, ot, mx, sm, kt, vc } = *b;
    let w = S::W;
    let qh: [*const f32; P] = std::array::from_fn(|p| qt.add((h + p) * d * w));
    let oh: [*mut f32; P] = std::array::from_fn(|p| ot.add((h + p) * d * w));
    let mut sc = [[S::splat(0.0); C]; P];
    let mut cb = 0;
    while cb < C {
        let mut acc = [[S::splat(0.0); CB]; P];
        for x in 0..d {
            let qx: [S::V; P] = std::array::from_fn(|p| S::load(qh[p].add(x * w)));
            for c in 0..CB {
                let kb = S::splat(*kt.add(x * C + cb + c));
                for p in 0..P {
                    acc[p][c] = S::fma(qx[p], kb, acc[p][c]);
                }
            }
        }
        for p in 0..P {
            sc[p][cb..cb + CB].copy_from_slice(&acc[p]);
        }
        cb += CB;
    }
    let mut alpha = [S::splat(0.0); P];
    for p in 0..P {
        let sc = &mut sc[p];
        let (mx, sm) = (mx.add((h + p) * w), sm.add((h + p) * w));
        alpha[p] = softmax_step::<S, ExactExp, C>(sc, first, masked, mx, sm);
    }
    for p in 0..P {
        weigh::<S, C, 4>(d, oh[p], alpha[p], &sc[p], vc);
    }
}

/// One head's weighted sum of a group's V rows, an output row (a query row of the tile)
/// at a time: `ot`'s row `i` (`d` values at `i * d`) times the row's `alpha` lane, plus
/// each column's weight (`sc[c]`'s lane `i`) times V row `c`, in column order. The V
/// rows are whole vectors in `vc`, so one broadcast of a weight feeds `XV` multiply-adds
/// (and one V load two rows' chains) where the lanes-across-rows layout of the scores
/// needs a broadcast per V value. Every output value is the same sequence of
/// operations as in that layout.
///
/// # Safety
/// As [`heads`]; `ot` holds `S::W * d` values (`S::W` is even).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn weigh<S: Lanes, const C: usize, const XV: usize>(
    d: usize,
    ot: *mut f32,
    alpha: S::V,
    sc: &[S::V; C],
    vc: *const f32,
) {
    let w = S::W;
    let mut factor = [0.0f32; 16];
    S::store(factor.as_mut_ptr(), alpha);
    let mut weights = [[0.0f32; 16]; C];
    for (row, &v) in weights.iter_mut().zip(sc) {
        S::store(row.as_mut_ptr(), v);
    }
    for i in (0..w).step_by(2) {
        let rows = [ot.add(i * d), ot.add((i + 1) * d)];
        let mut x = 0;
        // `XV` vectors of both rows at a time, then one vector of each: enough chains
        // of multiply-adds to cover their latency where `d` allows.
        while x + XV * w <= d {
            let mut acc = [[S::splat(0.0); XV]; 2];
            for r in 0..2 {
                let a = S::splat(factor[i + r]);
                for j in 0..XV {
                    acc[r][j] = S::mul(S::load(rows[r].add(x + j * w)), a);
                }
            }
            for c in 0..C {
                let pw = [S::splat(weights[c][i]), S::splat(weights[c][i + 1])];
                for j in 0..XV {
                    let v = S::load(vc.add(c * d + x + j * w));
                    for r in 0..2 {
                        acc[r][j] = S::fma(pw[r], v, acc[r][j]);
                    }
                }
            }
            for r in 0..2 {
                for j in 0..XV {
                    S::store(rows[r].add(x + j * w), acc[r][j]);
                }
            }
            x += XV * w;
        }
        while x + w <= d {
            for r in 0..2 {
                let mut a = S::mul(S::load(rows[r].add(x)), S::splat(factor[i + r]));
                for c in 0..C {
                    a = S::fma(S::splat(weights[c][i + r]), S::load(vc.add(c * d + x)), a);
                }
                S::store(rows[r].add(x), a);
            }
            x += w;
        }
        // A head size that is not a whole number of vectors: the rest a value at a
        // time, through the same lane operations.
        for x in x..d {
            for r in 0..2 {
                let o = rows[r].add(x);
                let mut a = S::mul(S::splat(*o), S::splat(factor[i + r]));
                for c in 0..C {
                    a = S::fma(S::splat(weights[c][i + r]), S::splat(*vc.add(c * d + x)), a);
                }
                *o = first::<S>(a);
            }
        }
    }
}

/// Positions `c0..c0 + cols` of `kv` widened into a group of `c` columns: K values to
/// `kt[x * c + j]`, V rows to `vc[j * d + x]`; columns `cols..c` are zeros, which keep
/// masked columns' weights (0) times V finite.
///
/// # Safety
/// `S`'s instruction sets must be available, `kv.check(d)` must have passed and
/// `c0 + cols <= kv.len`; `kt` and `vc` hold `c * d` values.
#[inline(always)]
pub(super) unsafe fn widen_group<T: Cached, S: Lanes>(
    kv: &PagedRows<'_, T>,
    d: usize,
    c0: usize,
    cols: usize,
    c: usize,
    kt: *mut f32,
    vc: *mut f32,
) {
    let (k, v, bs) = (kv.k.as_ptr(), kv.v.as_ptr(), kv.block_size);
    let (region, index) = kv.place(c0);
    if index + cols <= bs {
        // One block: each K value of the group's positions is a run in the cache.
        for x in 0..d {
            T::widen::<S>(k.add(region + x * bs + index), kt.add(x * c), cols);
        }
        T::widen::<S>(v.add(region + index * d), vc, cols * d);
    } else {
        for j in 0..cols {
            let (region, index) = kv.place(c0 + j);
            for x in 0..d {
                T::widen::<S>(k.add(region + x * bs + index), kt.add(x * c + j), 1);
            }
            T::widen::<S>(v.add(region + index * d), vc.add(j * d), d);
        }
    }
    if cols < c {
        for x in 0..d {
            std::ptr::write_bytes(kt.add(x * c + cols), 0, c - cols);
        }
        std::ptr::write_bytes(vc.add(cols * d), 0, (c - cols) * d);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use half::f16;

    use crate::backend::cpu::e4m3::E4m3;

    use super::*;

    use super::super::tests::{pseudo, Paged};

    /// Dense causal attention of one KV head's group in f64: row `i` of the tile (at
    /// position `first_pos + i`) over rows `0..=first_pos + i` of `k` and `v`, which
    /// are dense here (position `p`'s row at `p * d`).
    pub(in super::super) fn reference(
        k: &[f32],
        v: &[f32],
        geo: &HeadGeometry,
        t: &TileRows,
        q: &[f32],
    ) -> Vec<f32> {
        let (d, g) = (geo.head_dim, geo.group);
        let mut out = vec![0.0; t.rows * t.stride];
        for i in 0..t.rows {
            for h in 0..g {
                let qh = &q[i * t.stride + h * d..][..d];
                let s: Vec<f64> = (0..=t.first_pos + i)
                    .map(|p| qh.iter().zip(&k[p * d..]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>())
                    .map(|x| x * geo.scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    let o: f64 = e.iter().enumerate().map(|(p, w)| w / z * v[p * d + x] as f64).sum();
                    out[i * t.stride + h * d + x] = o as f32;
                }
            }
        }
        out
    }

    /// Every instantiation this CPU runs, for both cache dtypes, against the f64
    /// reference: tiles of 1 to `W` rows, starting at position 0 (the whole tile on the
    /// causal diagonal), inside the first column group and far past it; head sizes not
    /// a multiple of 4 (the weighted sum's tail) and groups of 1, 3 and 5; blocks of 16
    /// positions and of 5 (column groups that straddle blocks). The rows between a
    /// tile's rows (other KV heads' queries) must come out untouched.
    #[test]
    fn every_tile_kernel_matches_dense_attention() {
        fn run<T: Cached>(name: &str, kernel: TileFn<T>, w: usize, widen: fn(&[f32]) -> Vec<T>, tol: f32) {
            for (g, d, bs) in [(3, 64, 16), (1, 8, 5), (5, 6, 16), (2, 128, 5)] {
                let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
                for first_pos in [0, 5, 16, 37] {
                    for rows in 1..=w {
                        let n = first_pos + rows;
                        let (k, v) = (pseudo(n * d, 3), pseudo(n * d, 4));
                        // The reference reads the values the cache holds.
                        let (kt, vt) = (widen(&k), widen(&v));
                        let (k, v) = (unwiden(&kt), unwiden(&vt));
                        let stride = g * d + 3;
                        let t = TileRows { first_pos, rows, stride, out_stride: stride };
                        let q = pseudo(rows * stride, 5);
                        let cache = Paged::new(&kt, &vt, d, bs);
                        let mut got = vec![7.0; rows * stride];
                        kernel(&cache.rows(n), &geo, &t, &q, &mut got, &mut TileScratch::default());
                        let want = reference(&k, &v, &geo, &t, &q);
                        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                            let b = if j % stride < g * d { *b } else { 7.0 };
                            assert!(
                                (a - b).abs() < tol,
                                "{name}: g {g} d {d} bs {bs} first {first_pos} rows {rows} [{j}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
        fn unwiden<T: Cached>(x: &[T]) -> Vec<f32> {
            let mut out = vec![0.0; x.len()];
            // SAFETY: `Portable` needs no instruction set; both hold `x.len()` values.
            unsafe { T::widen::<Portable>(x.as_ptr(), out.as_mut_ptr(), x.len()) };
            out
        }
        let f32s: fn(&[f32]) -> Vec<f32> = |x| x.to_vec();
        let f16s: fn(&[f32]) -> Vec<f16> = |x| x.iter().map(|&a| f16::from_f32(a)).collect();
        let fp8s: fn(&[f32]) -> Vec<E4m3> = |x| x.iter().map(|&a| E4m3::from_f32(a)).collect();
        // Against the values the cache holds, so f16 and fp8 need no wider tolerance.
        run("portable f32", attend_tile_portable::<f32>, Portable::W, f32s, 1e-5);
        run("portable f16", attend_tile_portable::<f16>, Portable::W, f16s, 1e-5);
        run("portable fp8", attend_tile_portable::<E4m3>, Portable::W, fp8s, 1e-5);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::backend::cpu::kernels::isa;
            if isa::avx2_fma_f16c() {
                run("avx2 f32", attend_tile_avx2::<f32>, Avx2Lanes::W, f32s, 1e-5);
                run("avx2 f16", attend_tile_avx2::<f16>, Avx2Lanes::W, f16s, 1e-5);
                run("avx2 fp8", attend_tile_avx2::<E4m3>, Avx2Lanes::W, fp8s, 1e-5);
            }
            if isa::avx512f() {
                run("avx512 f32", attend_tile_avx512::<f32>, Avx512Lanes::W, f32s, 1e-5);
                run("avx512 f16", attend_tile_avx512::<f16>, Avx512Lanes::W, f16s, 1e-5);
                run("avx512 fp8", attend_tile_avx512::<E4m3>, Avx512Lanes::W, fp8s, 1e-5);
            }
        }
    }

    /// Heads taken in pairs (AVX2's shape) get the bits they get one at a time: the
    /// pairing shares broadcasts only, never reorders a head's arithmetic. Groups of 2,
    /// 3 and 5 heads (pairs only, a pair and one left over, two pairs and one), tiles
    /// on the causal diagonal and past it, a block size that splits column groups.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn heads_in_pairs_give_the_bits_of_heads_alone() {
        use crate::backend::cpu::kernels::isa;
        if !isa::avx2_fma_f16c() {
            return;
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn both(
            kv: &PagedRows<'_, f16>,
            geo: &HeadGeometry,
            t: &TileRows,
            q: &[f32],
        ) -> (Vec<f32>, Vec<f32>) {
            let mut alone = vec![0.0; q.len()];
            let mut paired = vec![0.0; q.len()];
            let s = &mut TileScratch::default();
            tile_body::<f16, Avx2Lanes, 8, 1, 8>(kv, geo.head_dim, geo, t, q, &mut alone, s);
            tile_body::<f16, Avx2Lanes, 8, 2, 4>(kv, geo.head_dim, geo, t, q, &mut paired, s);
            (alone, paired)
        }
        for (g, bs) in [(2, 16), (3, 5), (5, 16)] {
            let d = 64;
            let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
            for (first_pos, rows) in [(0, 8), (29, 5), (100, 8)] {
                let n = first_pos + rows;
                let k: Vec<f16> = pseudo(n * d, 11).iter().map(|&a| f16::from_f32(a)).collect();
                let v: Vec<f16> = pseudo(n * d, 12).iter().map(|&a| f16::from_f32(a)).collect();
                let cache = Paged::new(&k, &v, d, bs);
                let t = TileRows { first_pos, rows, stride: g * d, out_stride: g * d };
                let q: Vec<f32> = pseudo(rows * g * d, 13).iter().map(|x| x * 4.0).collect();
                let kv = cache.rows(n);
                check(&kv, &geo, &t, &q, &q, Avx2Lanes::W);
                // SAFETY: the CPU has AVX2, FMA and F16C; `check` passed.
                let (alone, paired) = unsafe { both(&kv, &geo, &t, &q) };
                for (j, (a, b)) in alone.iter().zip(&paired).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "g {g} bs {bs} first {first_pos} [{j}]: {a} vs {b}");
                }
            }
        }
    }

    /// Scores far apart (a large query) leave most weights at exactly 0 and the
    /// running maximum jumps between column groups; the output stays finite and right.
    #[test]
    fn large_scores_rescale_without_overflow() {
        let (g, d) = (3, 64);
        let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
        let n = 70;
        let (k, v) = (pseudo(n * d, 8), pseudo(n * d, 9));
        let t = TileRows { first_pos: n - 4, rows: 4, stride: g * d, out_stride: g * d };
        let q: Vec<f32> = pseudo(4 * g * d, 10).iter().map(|x| x * 60.0).collect();
        let cache = Paged::new(&k, &v, d, 16);
        let mut got = vec![0.0; 4 * g * d];
        let kernel = tile_kernel::<f32>();
        kernel(&cache.rows(n), &geo, &t, &q, &mut got, &mut TileScratch::default());
        let want = reference(&k, &v, &geo, &t, &q);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
