//! One generated row (all query heads of one KV head), in two kernels: a two-pass one
//! (the default, fastest for decode; a long row may be computed in parts, merged by
//! [`merge_parts`]), and one with exactly the tiled kernel's arithmetic for that row
//! (`tiled.rs`, `--chunk-invariant-attention`), so a generated position's output is the
//! same bits a prefill of the same tokens gives it.
//!
//! The tiled kernel gives each row a vector lane and walks the positions `C` at a time:
//! each score is one chain of fused multiply-adds over the head's values, the running
//! maximum and sum of the online softmax are updated once per group of `C` positions,
//! and the weighted sum of V adds the group's `C` positions in order. Here the `C`
//! positions of a group take the lanes instead (`C` equals the lane count in every
//! instantiation): the cache stores K value-major within a block (`kv_cache.rs`), so a
//! vector of one value of `C` consecutive positions is one load, and a score is still
//! one chain of fused multiply-adds over the values, in the same order. The group's
//! maximum, weights and their sum are then computed with the same vector operations on
//! the same values, and the weighted sum runs over the output columns with the same
//! fused steps. Groups the tile walks past this row's position (masked for it) leave
//! its state unchanged bit for bit (`exp(0)` is exactly 1, masked weights exactly 0),
//! so stopping at the row's own last group changes nothing.
//!
//! A decode row's cache is read from memory, so the kernel asks for the positions
//! [`AHEAD`] groups on while it computes; the heads of a group run side by side (their
//! score chains share each K load, their weighted sums each V load).

use super::head::{HeadGeometry, PagedRows};
#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2Lanes, Avx512Lanes};
use super::lanes::{Cached, Lanes, Portable};
use crate::backend::cpu::kernels::prefetch::{prefetch_line, Level};

/// Buffers one thread reuses from row to row.
pub struct RowScratch<T> {
    /// Scaled queries, unnormalised outputs, scores and weights, running maxima, sums
    /// and rescaling factors (see `row_body`).
    f: Vec<f32>,
    /// Positions gathered when a group is not one run of a block: K as `[x * C + c]`,
    /// V as `[c * d + x]`, zeros past the last position.
    kt: Vec<T>,
    vc: Vec<T>,
    /// The cache runs of the job this thread takes next.
    pub upcoming: Upcoming,
}

impl<T> Default for RowScratch<T> {
    fn default() -> Self {
        RowScratch { f: Vec::new(), kt: Vec::new(), vc: Vec::new(), upcoming: Upcoming::default() }
    }
}

/// Memory a thread reads after the job it is computing. A decoding row's cache comes
/// from DRAM, and asking for a job's lines only once it starts leaves its first groups
/// waiting on their latency; so a row kernel asks for a share of the next job's lines
/// with each step of its score loop, and they arrive in L2 while it computes. (Asked
/// for a group's share at once, about 60 lines, the requests filled the miss buffers
/// and a sample profile found the loop waiting on its own prefetches.)
#[derive(Default)]
pub struct Upcoming {
    /// (address, bytes) runs, in the order they will be read.
    spans: Vec<(usize, usize)>,
    /// The next line to ask for: a run, and a byte offset in it.
    span: usize,
    offset: usize,
    /// Lines not yet asked for.
    left: usize,
}

impl Upcoming {
    pub fn clear(&mut self) {
        self.spans.clear();
        (self.span, self.offset, self.left) = (0, 0, 0);
    }

    /// Adds the run of `bytes` bytes from `at`.
    pub fn push<T>(&mut self, at: *const T, bytes: usize) {
        if bytes > 0 {
            self.spans.push((at as usize, bytes));
            self.left += bytes.div_ceil(64);
        }
    }

    /// Lines not yet asked for.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Asks for up to `lines` more lines, into L2.
    #[inline(always)]
    pub fn ask(&mut self, lines: usize) {
        let n = lines.min(self.left);
        self.left -= n;
        for _ in 0..n {
            let (at, bytes) = self.spans[self.span];
            prefetch_line((at + self.offset) as *const u8, Level::L2);
            self.offset += 64;
            if self.offset >= bytes {
                (self.span, self.offset) = (self.span + 1, 0);
            }
        }
    }
}

/// A share of the next job's lines for a score loop to ask for, spread over its steps.
struct Asks<'u> {
    upcoming: &'u mut Upcoming,
    lines: usize,
}

/// Attention for one row × KV head: the group's query heads in, its output heads out.
pub type RowFn<T> = fn(&PagedRows<'_, T>, &HeadGeometry, &[f32], &mut [f32], &mut RowScratch<T>);

/// The instantiation for this CPU: with `as_tiles`, the one that matches
/// `tiled::tile_kernel` bit for bit; else the two-pass one (exact maximum first), which
/// agrees with it within float rounding and decodes faster.
pub fn row_kernel<T: Cached>(as_tiles: bool) -> RowFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::kernels::isa;
        if isa::avx512f() {
            return if as_tiles { row_avx512::<T> } else { two_pass_avx512::<T> };
        }
        if isa::avx2_fma_f16c() {
            return if as_tiles { row_avx2::<T> } else { two_pass_avx2::<T> };
        }
    }
    if as_tiles {
        row_portable::<T>
    } else {
        two_pass_portable::<T>
    }
}

/// The two-pass kernel for one part of a row's positions (see [`merge_parts`]): `out`
/// gets the group's `g · d` weighted sums of V, unnormalised (weights
/// `exp(score - max)`), then each head's maximum score, then each head's sum of weights
/// ([`part_len`] values).
pub fn part_kernel<T: Cached>() -> RowFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::kernels::isa;
        if isa::avx512f() {
            return two_pass_part_avx512::<T>;
        }
        if isa::avx2_fma_f16c() {
            return two_pass_part_avx2::<T>;
        }
    }
    two_pass_part_portable::<T>
}

/// Values a part's result takes (see [`part_kernel`]).
pub fn part_len(geo: &HeadGeometry) -> usize {
    geo.group * (geo.head_dim + 2)
}

/// A row's output from its parts' results (`parts`, [`part_len`] values each, in
/// position order): each head's sums rescaled to the largest maximum and divided by the
/// rescaled sum of weights, the parts added in order.
pub fn merge_parts(geo: &HeadGeometry, parts: &[f32], out: &mut [f32]) {
    let (g, d) = (geo.group, geo.head_dim);
    let len = part_len(geo);
    for h in 0..g {
        let max_of = |p: &[f32]| p[g * d + h];
        let top = parts.chunks_exact(len).map(max_of).fold(f32::NEG_INFINITY, f32::max);
        let out = &mut out[h * d..(h + 1) * d];
        out.fill(0.0);
        let mut total = 0.0f32;
        for p in parts.chunks_exact(len) {
            let factor = (max_of(p) - top).exp();
            total += factor * p[g * d + g + h];
            for (o, &x) in out.iter_mut().zip(&p[h * d..(h + 1) * d]) {
                *o += factor * x;
            }
        }
        let inv = 1.0 / total;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

/// The bounds the unchecked reads of [`row_body`] rely on.
///
/// # Panics
/// If a cached region lies outside `k` or `v`, or the queries or outputs do not hold
/// the group's heads.
fn check<T>(kv: &PagedRows<'_, T>, geo: &HeadGeometry, q: &[f32], out: &[f32]) {
    let d = geo.head_dim;
    kv.check(d);
    assert!(kv.len > 0, "a row sees at least its own position");
    assert!(
        q.len() >= geo.group * d && out.len() >= geo.group * d,
        "queries or outputs shorter than the group"
    );
}

/// The portable entry for `$body`: checks the bounds and runs it on plain Rust lanes.
macro_rules! portable_row_fn {
    ($name:ident, $body:ident) => {
        pub(super) fn $name<T: Cached>(
            kv: &PagedRows<'_, T>,
            geo: &HeadGeometry,
            q: &[f32],
            out: &mut [f32],
            s: &mut RowScratch<T>,
        ) {
            check(kv, geo, q, out);
            // SAFETY: `Portable` needs no instruction set; `check` bounds every access.
            unsafe { $body::<T, Portable, 8>(kv, geo.head_dim, geo, q, out, s) }
        }
    };
}

portable_row_fn!(row_portable, row_body);
portable_row_fn!(two_pass_portable, two_pass_body);
portable_row_fn!(two_pass_part_portable, two_pass_part);

/// An entry for one instruction set: checks the CPU and the bounds, then runs `$body`
/// compiled for that set, the common head sizes as constants.
macro_rules! isa_row_fn {
    ($name:ident, $body:ident, $features:literal, $has:path, $lanes:ty, $width:literal) => {
        #[cfg(target_arch = "x86_64")]
        pub(super) fn $name<T: Cached>(
            kv: &PagedRows<'_, T>,
            geo: &HeadGeometry,
            q: &[f32],
            out: &mut [f32],
            s: &mut RowScratch<T>,
        ) {
            #[target_feature(enable = $features)]
            unsafe fn run<T: Cached>(
                kv: &PagedRows<'_, T>,
                geo: &HeadGeometry,
                q: &[f32],
                out: &mut [f32],
                s: &mut RowScratch<T>,
            ) {
                match geo.head_dim {
                    64 => $body::<T, $lanes, $width>(kv, 64, geo, q, out, s),
                    128 => $body::<T, $lanes, $width>(kv, 128, geo, q, out, s),
                    d => $body::<T, $lanes, $width>(kv, d, geo, q, out, s),
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

isa_row_fn!(row_avx512, row_body, "avx512f", crate::backend::cpu::kernels::isa::avx512f, Avx512Lanes, 16);
isa_row_fn!(
    row_avx2,
    row_body,
    "avx2,fma,f16c",
    crate::backend::cpu::kernels::isa::avx2_fma_f16c,
    Avx2Lanes,
    8
);
isa_row_fn!(
    two_pass_avx512,
    two_pass_body,
    "avx512f",
    crate::backend::cpu::kernels::isa::avx512f,
    Avx512Lanes,
    16
);
isa_row_fn!(
    two_pass_avx2,
    two_pass_body,
    "avx2,fma,f16c",
    crate::backend::cpu::kernels::isa::avx2_fma_f16c,
    Avx2Lanes,
    8
);
isa_row_fn!(
    two_pass_part_avx512,
    two_pass_part,
    "avx512f",
    crate::backend::cpu::kernels::isa::avx512f,
    Avx512Lanes,
    16
);
isa_row_fn!(
    two_pass_part_avx2,
    two_pass_part,
    "avx2,fma,f16c",
    crate::backend::cpu::kernels::isa::avx2_fma_f16c,
    Avx2Lanes,
    8
);

/// Groups of positions ahead of the one being computed whose K and V the kernel asks
/// for: a decoding batch's cache is in memory, in blocks too short for the hardware
/// prefetcher to follow.
const AHEAD: usize = 2;
/// Query heads whose chains run side by side, in the scores and the weighted sum.
const HEADS: usize = 4;
/// Output vectors of a head the weighted sum carries per pass over a group's V rows.
const OUT_VECTORS: usize = 2;

/// Lane 0 of `v`.
#[inline(always)]
pub(super) unsafe fn first<S: Lanes>(v: S::V) -> f32 {
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

/// One cached value, widened and divided by `T::LOAD_SCALE`, as [`Cached::load`]'s lanes.
#[inline(always)]
unsafe fn value<T: Cached, S: Lanes>(p: *const T) -> f32 {
    let mut x = 0.0f32;
    T::widen::<S>(p, &mut x, 1);
    x * (1.0 / T::LOAD_SCALE)
}

/// Where a group's `C` positions are read: K value `x` of column `c` at
/// `k + x * k_stride + c`, V row `c` at `v + c * d`; V rows from `cols` on are not read.
#[derive(Clone, Copy)]
struct Source<T> {
    k: *const T,
    k_stride: usize,
    v: *const T,
    cols: usize,
}

/// The group of positions `c0..c0 + cols`: read in place when its `C` lanes lie in one
/// block, else gathered into `kt` and `vc` (`C * d` values each) with zeros past
/// `cols`. In place, the lanes past `cols` (a decode row's last, partial group) read
/// whatever the block holds there: their scores are replaced by -inf, and their V rows
/// are skipped where the tiled kernel adds their zero weights, which leaves the sums
/// unchanged (up to the sign of a zero sum, which nothing after can tell apart).
///
/// # Safety
/// `check` must have passed and `c0 + cols <= kv.len`.
#[inline(always)]
unsafe fn source<T: Cached, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    c0: usize,
    cols: usize,
    kt: *mut T,
    vc: *mut T,
) -> Source<T> {
    let (k, v, bs) = (kv.k.as_ptr(), kv.v.as_ptr(), kv.block_size);
    let (region, index) = kv.place(c0);
    if index + C <= bs {
        return Source { k: k.add(region + index), k_stride: bs, v: v.add(region + index * d), cols };
    }
    for c in 0..C {
        if c < cols {
            let (region, index) = kv.place(c0 + c);
            for x in 0..d {
                *kt.add(x * C + c) = *k.add(region + x * bs + index);
            }
            std::ptr::copy_nonoverlapping(v.add(region + index * d), vc.add(c * d), d);
        } else {
            for x in 0..d {
                *kt.add(x * C + c) = T::ZERO;
            }
            std::slice::from_raw_parts_mut(vc.add(c * d), d).fill(T::ZERO);
        }
    }
    Source { k: kt, k_stride: C, v: vc, cols: C }
}

/// A row's working memory, carved out of its [`RowScratch`]: scaled queries (g·d),
/// unnormalised outputs (g·d; both in `T::LOAD_SCALE`'s units, see [`Work::new`]), every group's scores then weights
/// (`[(group · g + h) · C + c]`), three values per head (`per_head`, g each: what they
/// hold is the kernel's), and the gather buffers of [`source`].
struct Work<T> {
    qs: *const f32,
    ot: *mut f32,
    sc: *mut f32,
    per_head: [*mut f32; 3],
    kt: *mut T,
    vc: *mut T,
}

impl<T: Cached> Work<T> {
    /// # Safety
    /// The pointers are valid until `s` is next used.
    unsafe fn new<const C: usize>(
        s: &mut RowScratch<T>,
        geo: &HeadGeometry,
        q: &[f32],
        d: usize,
        groups: usize,
    ) -> Self {
        let g = geo.group;
        // Grown, not cleared: the score pass writes every score before it is read, so
        // zeroing them (24 KiB a row at 2,048 positions) would be wasted; the outputs
        // and the per-head values start at zero.
        let scores = 2 * g * d..2 * g * d + groups * g * C;
        if s.f.len() < scores.end + 3 * g {
            s.f.resize(scores.end + 3 * g, 0.0);
        }
        // The cache is read in units of `T::LOAD_SCALE` (K and V divided by it), so
        // the queries carry it and each product is the one of the values: the scores
        // are the same bits. It is a power of two and the outputs, which come out
        // divided by it, are multiplied back when normalised.
        let scale = geo.scale * T::LOAD_SCALE;
        for (s, &x) in s.f.iter_mut().zip(&q[..g * d]) {
            *s = x * scale;
        }
        s.f[g * d..scores.start].fill(0.0);
        s.f[scores.end..scores.end + 3 * g].fill(0.0);
        if s.kt.len() < C * d {
            s.kt.resize(C * d, T::ZERO);
            s.vc.resize(C * d, T::ZERO);
        }
        let f = s.f.as_mut_ptr();
        let heads = f.add(2 * g * d + groups * g * C);
        Work {
            qs: f,
            ot: f.add(g * d),
            sc: f.add(2 * g * d),
            per_head: [heads, heads.add(g), heads.add(2 * g)],
            kt: s.kt.as_mut_ptr(),
            vc: s.vc.as_mut_ptr(),
        }
    }
}

/// Every group's scores, each one chain of fused multiply-adds in value order (the
/// tiled kernel's), lanes past the last position set to -inf: one stream over K.
///
/// # Safety
/// As [`row_body`]; `w` from `Work::new` for `kv.len.div_ceil(C)` groups.
#[inline(always)]
unsafe fn score_pass<T: Cached, S: Lanes, const C: usize, const SPLIT: bool>(
    kv: &PagedRows<'_, T>,
    d: usize,
    g: usize,
    w: &Work<T>,
    upcoming: &mut Upcoming,
) {
    let n = kv.len;
    let per_group = upcoming.left().div_ceil(n.div_ceil(C).max(1));
    prefetch_groups::<T, C>(kv, d, 0, 0);
    for i in 0..n.div_ceil(C) {
        let c0 = i * C;
        let cols = (n - c0).min(C);
        let src = source::<T, C>(kv, d, c0, cols, w.kt, w.vc);
        // The group `AHEAD` on, and this group's share of the next job's lines, are
        // asked for a line or two per step of the score loop (all at once would fill
        // the miss buffers and stall the loop behind them).
        let mut ahead = [group_lines::<T, C>(kv, d, c0 + AHEAD * C)[0], (std::ptr::null(), 0)];
        let mut share = per_group;
        for h0 in (0..g).step_by(HEADS) {
            let (q, out) = (w.qs.add(h0 * d), w.sc.add((i * g + h0) * C));
            let next = Asks { upcoming: &mut *upcoming, lines: share };
            match g - h0 {
                1 => scores::<T, S, C, 1, SPLIT>(d, &src, q, &ahead, next, out),
                2 => scores::<T, S, C, 2, SPLIT>(d, &src, q, &ahead, next, out),
                3 => scores::<T, S, C, 3, SPLIT>(d, &src, q, &ahead, next, out),
                _ => scores::<T, S, C, HEADS, SPLIT>(d, &src, q, &ahead, next, out),
            }
            ahead = [(std::ptr::null(), 0); 2];
            share = 0;
        }
        // Positions past the row's own are the lanes from `cols` on.
        for h in 0..g {
            std::slice::from_raw_parts_mut(w.sc.add((i * g + h) * C + cols), C - cols)
                .fill(f32::NEG_INFINITY);
        }
    }
}

/// Group `i`'s step of the weighted sum: each head's output rescaled by `factor[h]`
/// plus the group's weights times its V rows; asks for the V rows `AHEAD` groups on.
///
/// # Safety
/// As [`score_pass`], after it.
#[inline(always)]
unsafe fn weigh_group<T: Cached, S: Lanes, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    g: usize,
    w: &Work<T>,
    i: usize,
    factor: &[f32],
) {
    let c0 = i * C;
    let src = source::<T, C>(kv, d, c0, (kv.len - c0).min(C), w.kt, w.vc);
    let (at, bytes) = group_lines::<T, C>(kv, d, c0 + AHEAD * C)[1];
    for line in (0..bytes).step_by(64) {
        prefetch_line(at.add(line), Level::L1);
    }
    for h0 in (0..g).step_by(HEADS) {
        let (wt, a, o) = (w.sc.add((i * g + h0) * C), &factor[h0..], w.ot.add(h0 * d));
        match g - h0 {
            1 => weighted_sum::<T, S, C, 1>(d, &src, wt, a, o),
            2 => weighted_sum::<T, S, C, 2>(d, &src, wt, a, o),
            3 => weighted_sum::<T, S, C, 3>(d, &src, wt, a, o),
            _ => weighted_sum::<T, S, C, HEADS>(d, &src, wt, a, o),
        }
    }
}

/// The outputs: each head's accumulated sum times `inv[h]`, and times `T::LOAD_SCALE`,
/// which the sums were divided by. That factor is a power of two, so folding it into
/// `inv[h]` is exact and the products are the bits the values' sums would give.
///
/// # Safety
/// As [`weigh_group`].
#[inline(always)]
unsafe fn finish<T: Cached>(d: usize, g: usize, w: &Work<T>, inv: impl Fn(usize) -> f32, out: &mut [f32]) {
    for h in 0..g {
        let acc = std::slice::from_raw_parts(w.ot.add(h * d), d);
        let inv = inv(h) * T::LOAD_SCALE;
        for (o, &a) in out[h * d..(h + 1) * d].iter_mut().zip(acc) {
            *o = a * inv;
        }
    }
}

/// The row's loop, `C` (= `S::W`) positions at a time; `d` is `geo.head_dim`, passed
/// apart so a caller can make it a constant. Every group's scores come first, then the
/// online softmax and weighted sum group by group: the same arithmetic in the same order
/// as computing each group's scores just before its update, but the cache is read as
/// two streams, all of K then all of V, which memory serves faster than the two
/// interleaved.
///
/// # Safety
/// `S`'s instruction sets must be available, `check` must have passed, and `C == S::W`.
#[inline(always)]
unsafe fn row_body<T: Cached, S: Lanes, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    q: &[f32],
    out: &mut [f32],
    s: &mut RowScratch<T>,
) {
    debug_assert_eq!(C, S::W);
    let g = geo.group;
    let groups = kv.len.div_ceil(C);
    let w = Work::new::<C>(s, geo, q, d, groups);
    // Each head's running maximum and sum, and the factor that rescales its output in
    // the current group.
    let [max, sum, alpha] = w.per_head.map(|p| std::slice::from_raw_parts_mut(p, g));
    max.fill(f32::NEG_INFINITY);
    score_pass::<T, S, C, false>(kv, d, g, &w, &mut s.upcoming);
    prefetch_groups::<T, C>(kv, d, 0, 1);
    for i in 0..groups {
        for h in 0..g {
            let lanes = std::slice::from_raw_parts_mut(w.sc.add((i * g + h) * C), C);
            // A maximum is the same in any order (up to the sign of a zero, which
            // nothing below can tell apart).
            let new = lanes.iter().fold(max[h], |m, &l| m.max(l));
            alpha[h] = first::<S>(S::exp_nonpositive(S::sub(S::splat(max[h]), S::splat(new))));
            let e = S::exp_nonpositive(S::sub(S::load(lanes.as_ptr()), S::splat(new)));
            S::store(lanes.as_mut_ptr(), e);
            // The tiled kernel adds the weights in position order; so does this.
            let mut total = 0.0f32;
            for &w in lanes.iter() {
                total += w;
            }
            max[h] = new;
            sum[h] = fma1::<S>(sum[h], alpha[h], total);
        }
        weigh_group::<T, S, C>(kv, d, g, &w, i, alpha);
    }
    finish(d, g, &w, |h| 1.0 / sum[h], out);
}

/// The row's attention in two passes over its positions, `C` (= `S::W`) at a time: all
/// scores and their exact maximum, then the weights and the weighted sum of V; the
/// output is normalised once at the end. The same vector steps as [`row_body`] but no
/// running maximum to rescale by, so it agrees with the tiled kernel within float
/// rounding, not bit for bit.
///
/// # Safety
/// As [`row_body`].
#[inline(always)]
unsafe fn two_pass_body<T: Cached, S: Lanes, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    q: &[f32],
    out: &mut [f32],
    s: &mut RowScratch<T>,
) {
    let (w, _, totals) = two_pass_sums::<T, S, C>(kv, d, geo, q, s);
    finish(d, geo.group, &w, |h| 1.0 / totals[h], out);
}

/// [`two_pass_body`] for one part of a row's positions, left unnormalised
/// ([`part_kernel`] has the layout of `out`).
///
/// # Safety
/// As [`row_body`].
#[inline(always)]
unsafe fn two_pass_part<T: Cached, S: Lanes, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    q: &[f32],
    out: &mut [f32],
    s: &mut RowScratch<T>,
) {
    let g = geo.group;
    assert!(out.len() >= part_len(geo), "a part's result holds g · (d + 2) values");
    let (w, max, totals) = two_pass_sums::<T, S, C>(kv, d, geo, q, s);
    for (o, &a) in out[..g * d].iter_mut().zip(std::slice::from_raw_parts(w.ot, g * d)) {
        *o = a * T::LOAD_SCALE;
    }
    out[g * d..g * d + g].copy_from_slice(max);
    out[g * d + g..g * d + 2 * g].copy_from_slice(totals);
}

/// The two passes: every head's weighted sum of V (in `w.ot`), unnormalised, its
/// maximum score and its sum of weights.
///
/// # Safety
/// As [`row_body`].
#[inline(always)]
unsafe fn two_pass_sums<'s, T: Cached, S: Lanes, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    geo: &HeadGeometry,
    q: &[f32],
    s: &'s mut RowScratch<T>,
) -> (Work<T>, &'s [f32], &'s [f32]) {
    debug_assert_eq!(C, S::W);
    let g = geo.group;
    let groups = kv.len.div_ceil(C);
    let w = Work::new::<C>(s, geo, q, d, groups);
    // Each head's maximum, the sum of its weights, and ones (the weighted sum's
    // rescaling factor, which here is none).
    let [max, totals, ones] = w.per_head.map(|p| std::slice::from_raw_parts_mut(p, g));
    ones.fill(1.0);
    score_pass::<T, S, C, true>(kv, d, g, &w, &mut s.upcoming);
    for (h, max) in max.iter_mut().enumerate() {
        // The lanes' maxima, then the largest lane: a maximum is the same in any order.
        let mut top = S::splat(f32::NEG_INFINITY);
        for i in 0..groups {
            top = S::max(top, S::load(w.sc.add((i * g + h) * C)));
        }
        let mut lanes = [0.0f32; 16];
        S::store(lanes.as_mut_ptr(), top);
        *max = lanes[..C].iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        let mut total = S::splat(0.0);
        for i in 0..groups {
            let p = w.sc.add((i * g + h) * C);
            let e = S::exp_nonpositive(S::sub(S::load(p), S::splat(*max)));
            S::store(p, e);
            total = S::add(total, e);
        }
        let mut lanes = [0.0f32; 16];
        S::store(lanes.as_mut_ptr(), total);
        totals[h] = lanes[..C].iter().sum::<f32>();
    }
    prefetch_groups::<T, C>(kv, d, 0, 1);
    for i in 0..groups {
        weigh_group::<T, S, C>(kv, d, g, &w, i, ones);
    }
    (w, max, totals)
}

/// Asks for span `which` (0: K, 1: V) of the first [`AHEAD`] groups from `c0`.
///
/// # Safety
/// `check` must have passed.
#[inline(always)]
unsafe fn prefetch_groups<T, const C: usize>(kv: &PagedRows<'_, T>, d: usize, c0: usize, which: usize) {
    for group in 0..AHEAD {
        let (at, bytes) = group_lines::<T, C>(kv, d, c0 + group * C)[which];
        for line in (0..bytes).step_by(64) {
            prefetch_line(at.add(line), Level::L1);
        }
    }
}

/// `H` heads' scores for one group (`q`: their scaled queries, `d` apart), written to
/// `out[h * C..]`; asks for the lines of the `ahead` spans, and `next`'s share of the
/// next job's lines, along the way. Each score is
/// one chain of fused multiply-adds in value order, as in the tiled kernel; with
/// `SPLIT` (the two-pass kernel, which need not match it) two chains, over the even and
/// the odd values, added at the end: a chain waits on its previous step, and a group's
/// few heads leave the multiply-add units idle otherwise.
///
/// # Safety
/// As [`row_body`]; `q` holds `H * d` values and `out` `H * C`.
#[inline(always)]
unsafe fn scores<T: Cached, S: Lanes, const C: usize, const H: usize, const SPLIT: bool>(
    d: usize,
    src: &Source<T>,
    q: *const f32,
    ahead: &[(*const u8, usize); 2],
    next: Asks<'_>,
    out: *mut f32,
) {
    let mut acc = [S::splat(0.0); H];
    let mut odd = [S::splat(0.0); H];
    let step = if SPLIT { 2 } else { 1 };
    let per_step = next.lines.div_ceil((d / step).max(1));
    let mut x = 0;
    while x + step <= d {
        next.upcoming.ask(per_step);
        for &(at, bytes) in ahead {
            if 64 * x < bytes {
                prefetch_line(at.add(64 * x), Level::L1);
                if SPLIT && 64 * (x + 1) < bytes {
                    prefetch_line(at.add(64 * (x + 1)), Level::L1);
                }
            }
        }
        let k = T::load::<S>(src.k.add(x * src.k_stride));
        for (h, a) in acc.iter_mut().enumerate() {
            *a = S::fma(S::splat(*q.add(h * d + x)), k, *a);
        }
        if SPLIT {
            let k = T::load::<S>(src.k.add((x + 1) * src.k_stride));
            for (h, a) in odd.iter_mut().enumerate() {
                *a = S::fma(S::splat(*q.add(h * d + x + 1)), k, *a);
            }
        }
        x += step;
    }
    if SPLIT && x < d {
        let k = T::load::<S>(src.k.add(x * src.k_stride));
        for (h, a) in acc.iter_mut().enumerate() {
            *a = S::fma(S::splat(*q.add(h * d + x)), k, *a);
        }
    }
    for (h, (&a, &b)) in acc.iter().zip(&odd).enumerate() {
        S::store(out.add(h * C), if SPLIT { S::add(a, b) } else { a });
    }
}

/// The K and V spans (start, bytes) of the group of positions from `c0`; empty past
/// the last position.
///
/// # Safety
/// `check` must have passed.
#[inline(always)]
unsafe fn group_lines<T, const C: usize>(
    kv: &PagedRows<'_, T>,
    d: usize,
    c0: usize,
) -> [(*const u8, usize); 2] {
    if c0 >= kv.len {
        return [(std::ptr::null(), 0); 2];
    }
    let size = std::mem::size_of::<T>();
    let (region, index) = kv.place(c0);
    let k_values = ((d - 1) * kv.block_size + C).min(kv.k.len() - region - index);
    let v_values = (C * d).min(kv.v.len() - region - index * d);
    [
        (kv.k.as_ptr().add(region + index).cast(), k_values * size),
        (kv.v.as_ptr().add(region + index * d).cast(), v_values * size),
    ]
}

/// `H` heads' outputs (`ot`, `d` apart) rescaled by `alpha[h]` plus the group's weights
/// (`w[h * C + c]`) times its V rows, each value one chain of fused multiply-adds in
/// position order (the tiled kernel's); [`OUT_VECTORS`] vectors of each head per pass,
/// sharing each V load.
///
/// # Safety
/// As [`row_body`]; `w` holds `H * C` weights, `alpha` `H` factors, `ot` `H * d` values.
#[inline(always)]
unsafe fn weighted_sum<T: Cached, S: Lanes, const C: usize, const H: usize>(
    d: usize,
    src: &Source<T>,
    w: *const f32,
    alpha: &[f32],
    ot: *mut f32,
) {
    let mut x = 0;
    while x + OUT_VECTORS * C <= d {
        weighted_columns::<T, S, C, H, OUT_VECTORS>(d, src, w, alpha, ot, x);
        x += OUT_VECTORS * C;
    }
    while x + C <= d {
        weighted_columns::<T, S, C, H, 1>(d, src, w, alpha, ot, x);
        x += C;
    }
    for x in x..d {
        for (h, &alpha) in alpha.iter().enumerate().take(H) {
            let o = ot.add(h * d + x);
            let mut a = first::<S>(S::mul(S::splat(*o), S::splat(alpha)));
            for c in 0..src.cols {
                a = fma1::<S>(*w.add(h * C + c), value::<T, S>(src.v.add(c * d + x)), a);
            }
            *o = a;
        }
    }
}

/// [`weighted_sum`] for `V` vectors of output columns from `x`.
#[inline(always)]
unsafe fn weighted_columns<T: Cached, S: Lanes, const C: usize, const H: usize, const V: usize>(
    d: usize,
    src: &Source<T>,
    w: *const f32,
    alpha: &[f32],
    ot: *mut f32,
    x: usize,
) {
    let mut acc = [[S::splat(0.0); V]; H];
    for (h, acc) in acc.iter_mut().enumerate() {
        let a = S::splat(alpha[h]);
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = S::mul(S::load(ot.add(h * d + x + j * C)), a);
        }
    }
    for c in 0..src.cols {
        let mut vx = [S::splat(0.0); V];
        for (j, v) in vx.iter_mut().enumerate() {
            *v = T::load::<S>(src.v.add(c * d + x + j * C));
        }
        for (h, acc) in acc.iter_mut().enumerate() {
            let wc = S::splat(*w.add(h * C + c));
            for (acc, &v) in acc.iter_mut().zip(&vx) {
                *acc = S::fma(wc, v, *acc);
            }
        }
    }
    for (h, acc) in acc.iter().enumerate() {
        for (j, &a) in acc.iter().enumerate() {
            S::store(ot.add(h * d + x + j * C), a);
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use crate::backend::cpu::e4m3::E4m3;

    use super::super::tests::{pseudo, Paged};
    use super::super::tiled::{attend_tile_portable, tile_kernel, tile_rows, TileFn, TileRows, TileScratch};
    use super::*;

    /// Every row of a tile, attended alone by `row`, gets the bits the tile kernel gave
    /// it: tiles of 1 to `w` rows, on the causal diagonal and far past it, head sizes
    /// not a multiple of the lanes, groups of 1 to 5, blocks of 16 positions and of 5
    /// (groups gathered across blocks), and scores far apart (a large query), where the
    /// running maximum jumps between column groups.
    fn rows_match_tiles<T: Cached>(
        name: &str,
        tile: TileFn<T>,
        row: RowFn<T>,
        two_pass: RowFn<T>,
        w: usize,
        cache: fn(&[f32]) -> Vec<T>,
    ) {
        for (g, d) in [(3, 64), (1, 8), (5, 6), (2, 128), (3, 20)] {
            let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
            for bs in [16, 5] {
                for (first_pos, q_scale) in [(0, 1.0), (5, 1.0), (16, 1.0), (37, 1.0), (53, 60.0), (150, 1.0)]
                {
                    for rows in [1, 2, w / 2 + 1, w] {
                        let n = first_pos + rows;
                        let (k, v) = (cache(&pseudo(n * d, 3)), cache(&pseudo(n * d, 4)));
                        let paged = Paged::new(&k, &v, d, bs);
                        let stride = g * d;
                        let q: Vec<f32> = pseudo(rows * stride, 5).iter().map(|x| x * q_scale).collect();
                        let t = TileRows { first_pos, rows, stride, out_stride: stride };
                        let mut tiled = vec![f32::NAN; rows * stride];
                        tile(&paged.rows(n), &geo, &t, &q, &mut tiled, &mut TileScratch::default());
                        let mut scratch = RowScratch::default();
                        for i in 0..rows {
                            let pos = first_pos + i;
                            let mut alone = vec![f32::NAN; stride];
                            let kv = paged.rows(pos + 1);
                            row(&kv, &geo, &q[i * stride..(i + 1) * stride], &mut alone, &mut scratch);
                            let want = &tiled[i * stride..(i + 1) * stride];
                            let what =
                                format!("{name}: g {g} d {d} bs {bs} first {first_pos} rows {rows} row {i}");
                            assert_eq!(alone, want, "{what}");
                            // The two-pass kernel: within float rounding. It adds a score's
                            // products in another order, so its scores differ by rounding
                            // that grows with their size (the query's scale), and the
                            // weights inherit that.
                            let mut close = vec![f32::NAN; stride];
                            two_pass(&kv, &geo, &q[i * stride..(i + 1) * stride], &mut close, &mut scratch);
                            for (a, b) in close.iter().zip(want) {
                                assert!(
                                    (a - b).abs() <= 1e-5 * q_scale * (1.0 + b.abs()),
                                    "{what}, two-pass: {a} vs {b}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every row of a tile, attended alone by the bit-exact row kernel, gets the bits
    /// the tile gave it, and by the two-pass one the same within float rounding.
    #[test]
    fn a_row_alone_gets_the_bits_its_tile_gave_it() {
        let f32s: fn(&[f32]) -> Vec<f32> = |x| x.to_vec();
        let f16s: fn(&[f32]) -> Vec<f16> = |x| x.iter().map(|&a| f16::from_f32(a)).collect();
        rows_match_tiles(
            "portable f32",
            attend_tile_portable::<f32>,
            row_portable,
            two_pass_portable,
            Portable::W,
            f32s,
        );
        rows_match_tiles(
            "portable f16",
            attend_tile_portable::<f16>,
            row_portable,
            two_pass_portable,
            Portable::W,
            f16s,
        );
        let fp8s: fn(&[f32]) -> Vec<E4m3> = |x| x.iter().map(|&a| E4m3::from_f32(a)).collect();
        rows_match_tiles(
            "portable fp8",
            attend_tile_portable::<E4m3>,
            row_portable,
            two_pass_portable,
            Portable::W,
            fp8s,
        );
        // The pair this CPU runs, and AVX2's where the CPU has AVX-512 too.
        let selected = |as_tiles| (row_kernel::<f32>(as_tiles), row_kernel::<f16>(as_tiles));
        let ((row32, row16), (two32, two16)) = (selected(true), selected(false));
        rows_match_tiles("selected f32", tile_kernel::<f32>(), row32, two32, tile_rows(), f32s);
        rows_match_tiles("selected f16", tile_kernel::<f16>(), row16, two16, tile_rows(), f16s);
        let (row8, two8) = (row_kernel::<E4m3>(true), row_kernel::<E4m3>(false));
        rows_match_tiles("selected fp8", tile_kernel::<E4m3>(), row8, two8, tile_rows(), fp8s);
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::kernels::isa::avx2_fma_f16c() {
            use super::super::tiled::attend_tile_avx2;
            rows_match_tiles(
                "avx2 f32",
                attend_tile_avx2::<f32>,
                row_avx2,
                two_pass_avx2,
                Avx2Lanes::W,
                f32s,
            );
            rows_match_tiles(
                "avx2 f16",
                attend_tile_avx2::<f16>,
                row_avx2,
                two_pass_avx2,
                Avx2Lanes::W,
                f16s,
            );
            rows_match_tiles(
                "avx2 fp8",
                attend_tile_avx2::<E4m3>,
                row_avx2,
                two_pass_avx2,
                Avx2Lanes::W,
                fp8s,
            );
        }
    }

    /// A row kernel asks for every line of the next job that the thread queued, spread
    /// over its score loop: with one head chunk or two (the second asks for nothing),
    /// head sizes whose score loop has few steps, and a row of one group or several.
    #[test]
    fn a_row_asks_for_every_line_of_the_next_job() {
        let next = vec![0u8; 157 * 64 + 10];
        for (g, d) in [(3, 64), (5, 6), (1, 5), (9, 64)] {
            let geo = HeadGeometry { head_dim: d, group: g, scale: 1.0 / (d as f32).sqrt() };
            for n in [1, 40, 330] {
                let (k, v) = (pseudo(n * d, 3), pseudo(n * d, 4));
                let paged = Paged::new(&k, &v, d, 16);
                let q = pseudo(g * d, 5);
                for as_tiles in [false, true] {
                    let mut scratch = RowScratch::default();
                    scratch.upcoming.push(next.as_ptr(), 100 * 64);
                    scratch.upcoming.push(next[100 * 64..].as_ptr(), next.len() - 100 * 64);
                    let mut out = vec![0.0; g * d];
                    row_kernel::<f32>(as_tiles)(&paged.rows(n), &geo, &q, &mut out, &mut scratch);
                    assert_eq!(scratch.upcoming.left(), 0, "g {g} d {d} n {n} as tiles {as_tiles}");
                }
            }
        }
    }
}
