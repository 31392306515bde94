//! Causal grouped-query attention over the paged KV cache, for every token of a
//! step at once. Each token attends to its own sequence's positions `0..=pos`,
//! read through that sequence's block table, so sequences at different positions
//! share one call. Work is spread with rayon over tiles of a prefill chunk's rows
//! (`tiled.rs`) and over the other token rows × KV heads (`head.rs` and its kernels).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod head;
mod lanes;
mod tile_row;
mod tiled;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::kv_cache::{LayerKv, PagedKvCache};
use crate::backend::SeqStep;
use head::{softmax_in_place, HeadFn, HeadGeometry, KvRows};
use lanes::Cached;
use tiled::{TileFn, TileRows, TileScratch};
#[cfg(target_arch = "x86_64")]
use {avx2::Avx2, avx512::Avx512};

pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Prefill chunks through the tiled kernel (`--tiled-prefill-attention`).
    pub tiled_prefill: bool,
}

/// Stores the step's K and V rows (`kv_dim` values per token, head after head) in
/// the cache.
pub fn write_kv(cache: &mut PagedKvCache, layer: usize, seqs: &[SeqStep], k: &[f32], v: &[f32]) {
    let (kv_dim, d) = (cache.kv_dim(), cache.head_dim());
    let starts: Vec<usize> = seqs
        .iter()
        .flat_map(|s| (0..s.tokens.len()).map(move |i| (s, i)))
        .flat_map(|(s, i)| (0..kv_dim / d).map(move |h| (s, i, h)))
        .map(|(s, i, h)| cache.offset(s.block_table, s.start_pos + i, h))
        .collect();
    let kv = cache.layer_mut(layer);
    // The destination rows are cold (often in DRAM); requesting them all first lets
    // their misses overlap instead of stalling the stores one row at a time.
    for &at in &starts {
        kv.prefetch_row(at, d);
    }
    // `starts` holds one entry per (token row, KV head), in the order of k and v.
    for (j, at) in starts.into_iter().enumerate() {
        let src = j * d..(j + 1) * d;
        kv.store(at, &k[src.clone()], &v[src]);
    }
}

/// `out[row]` = softmax(q·Kᵀ / √d) · V for every token row of the step.
///
/// With `shape.tiled_prefill`, a sequence with at least [`TILED_MIN_ROWS`] rows in the
/// step (a prefill chunk) goes through the tiled kernel (`tiled.rs`), a tile of its
/// rows at a time, and every other row through `tile_row.rs`, which computes what the
/// tiled kernel computes for that row bit for bit: so a position's output does not
/// depend on how its prompt was chunked. Without it every row goes through the row
/// kernels of `head.rs`. Rows outside tiles go one token row × one KV head at a time:
/// the query heads that share that KV head read each cached K and V row once between
/// them, and a single decoding sequence still spreads its heads over every thread.
/// Which path a row takes depends only on its own sequence's rows, never on the rest
/// of the batch.
pub fn attend(
    cache: &PagedKvCache,
    layer: usize,
    seqs: &[SeqStep],
    shape: &AttentionShape,
    q: &[f32],
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let group = shape.num_heads / shape.num_kv_heads;
    let geo = HeadGeometry { head_dim: d, group, scale: 1.0 / (d as f32).sqrt() };
    let kv_heads = shape.num_kv_heads;
    match cache.layer(layer) {
        LayerKv::F32 { k, v } => {
            let kernels = Kernels::new(shape.tiled_prefill, || kernel_for::<f32>(&geo, attend_kv_head));
            attend_units(cache, seqs, kv_heads, &geo, (k, v), kernels, shape.tiled_prefill, q, out)
        }
        LayerKv::F16 { k, v } => {
            let kernels = Kernels::new(shape.tiled_prefill, || kernel_for::<f16>(&geo, attend_kv_head_f16));
            attend_units(cache, seqs, kv_heads, &geo, (k, v), kernels, shape.tiled_prefill, q, out)
        }
    }
}

/// Rows of one sequence in a step from which it is attended to a tile at a time: below
/// this, most of a tile's lanes would be idle and the row kernels are quicker.
pub const TILED_MIN_ROWS: usize = 8;

struct Kernels<T> {
    row: HeadFn<T>,
    tile: TileFn<T>,
}

impl<T: Cached> Kernels<T> {
    /// With tiled prefill, rows outside tiles take the tiled kernel's arithmetic
    /// (`tile_row`); otherwise `row_kernels` picks the row kernels.
    fn new(tiled_prefill: bool, row_kernels: impl FnOnce() -> HeadFn<T>) -> Self {
        let row = if tiled_prefill { tile_row::row_kernel::<T>() } else { row_kernels() };
        Kernels { row, tile: tiled::tile_kernel() }
    }
}

/// The widest hand-written kernel that covers the geometry on this CPU, else
/// `portable`.
#[cfg(target_arch = "x86_64")]
fn kernel_for<T: avx512::Load16 + avx2::Load8>(geo: &HeadGeometry, portable: HeadFn<T>) -> HeadFn<T> {
    use head::{attend_hand_written, supports};
    if supports::<T, Avx512>(geo) {
        attend_hand_written::<T, Avx512>
    } else if supports::<T, Avx2>(geo) {
        attend_hand_written::<T, Avx2>
    } else {
        portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_for<T>(_: &HeadGeometry, portable: HeadFn<T>) -> HeadFn<T> {
    portable
}

/// One tile: its sequence, the position of its first row, its queries and outputs
/// (whole rows, every KV head's).
type TileUnit<'a> = (&'a SeqStep<'a>, usize, &'a [f32], &'a mut [f32]);
/// One token row × KV head: its sequence, position, KV head, queries and outputs.
type RowUnit<'a> = (&'a SeqStep<'a>, usize, usize, &'a [f32], &'a mut [f32]);

#[allow(clippy::too_many_arguments)]
fn attend_units<T: Cached + Sync>(
    cache: &PagedKvCache,
    seqs: &[SeqStep],
    num_kv_heads: usize,
    geo: &HeadGeometry,
    (k, v): (&[T], &[T]),
    kernels: Kernels<T>,
    tiled_prefill: bool,
    q: &[f32],
    out: &mut [f32],
) {
    // Chunks of `group * head_dim` are one KV head's query heads.
    let unit = geo.group * geo.head_dim;
    let q_dim = num_kv_heads * unit;
    let tile = tiled::tile_rows();
    let (mut tiles, mut rows): (Vec<TileUnit>, Vec<RowUnit>) = (Vec::new(), Vec::new());
    let (mut q_rest, mut out_rest) = (q, out);
    for s in seqs {
        let n = s.tokens.len() * q_dim;
        let (q_seq, q_next) = q_rest.split_at(n);
        let (out_seq, out_next) = std::mem::take(&mut out_rest).split_at_mut(n);
        (q_rest, out_rest) = (q_next, out_next);
        if tiled_prefill && s.tokens.len() >= TILED_MIN_ROWS {
            let parts = q_seq.chunks(tile * q_dim).zip(out_seq.chunks_mut(tile * q_dim));
            tiles.extend(parts.enumerate().map(|(t, (qt, ot))| (s, s.start_pos + t * tile, qt, ot)));
        } else {
            let parts = q_seq.chunks(unit).zip(out_seq.chunks_mut(unit)).enumerate();
            rows.extend(
                parts.map(|(i, (qu, ou))| (s, s.start_pos + i / num_kv_heads, i % num_kv_heads, qu, ou)),
            );
        }
    }
    // Keep a job's work above the cost of handing it to another thread: one decoding
    // sequence's three or four units at a short context take a few microseconds, less
    // than waking a sleeping worker.
    let positions: usize = rows.iter().map(|&(_, pos, ..)| pos + 1).sum();
    let per_unit = positions.div_ceil(rows.len().max(1)).max(1);
    let min_units = MIN_POSITIONS_PER_JOB.div_ceil(per_unit).max(1);
    let Kernels { row: head_fn, tile: tile_fn } = kernels;
    rayon::join(
        || {
            tiles.into_par_iter().for_each_init(
                || (TileScratch::default(), Vec::new()),
                |(scratch, slots), (span, first_pos, q_rows, out_rows)| {
                    let t = TileRows { first_pos, rows: q_rows.len() / q_dim, stride: q_dim };
                    for kvh in 0..num_kv_heads {
                        slots.clear();
                        cache.extend_offsets(span.block_table, first_pos + t.rows, kvh, slots);
                        let kv = KvRows { k, v, offsets: slots };
                        let at = kvh * unit;
                        tile_fn(&kv, geo, &t, &q_rows[at..], &mut out_rows[at..], scratch);
                    }
                },
            )
        },
        || {
            rows.into_par_iter().with_min_len(min_units).for_each_init(
                || (Vec::new(), Vec::new()),
                |(scores, slots), (span, pos, kvh, q_heads, out_heads)| {
                    slots.clear();
                    cache.extend_offsets(span.block_table, pos + 1, kvh, slots);
                    head_fn(&KvRows { k, v, offsets: slots }, geo, q_heads, out_heads, scores);
                },
            )
        },
    );
}

/// Cached positions (summed over a job's units) below which attention work is not
/// split further between threads.
const MIN_POSITIONS_PER_JOB: usize = 1024;

/// Lanes of every partial sum: one AVX-512 register, two AVX2 registers.
const LANES: usize = 16;

/// The query heads of one KV head (`group` heads of `head_dim`, back to back in
/// `q_heads`) against the cached K/V rows starting at `offsets`. Compiled for
/// AVX-512 and AVX2 as well as the baseline, picked at run time; the arithmetic is the
/// same in every version (the compiler does not reassociate float sums), so results
/// do not depend on the machine.
// The lifetime is named: `multiversion` cannot copy an elided one.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn attend_kv_head<'a>(
    rows: &KvRows<'a, f32>,
    geo: &HeadGeometry,
    q_heads: &[f32],
    out_heads: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let &KvRows { k, v, offsets } = rows;
    let (d, g, n) = (geo.head_dim, geo.group, offsets.len());
    // scores[h * n + p]: head h of the group at position p.
    scores.clear();
    scores.resize(g * n, 0.0);
    for (p, &off) in offsets.iter().enumerate() {
        let krow = &k[off..off + d];
        for h in 0..g {
            scores[h * n + p] = dot(&q_heads[h * d..(h + 1) * d], krow) * geo.scale;
        }
    }
    for h in 0..g {
        let s = &mut scores[h * n..(h + 1) * n];
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        softmax_in_place(s, max);
    }
    out_heads.fill(0.0);
    for (p, &off) in offsets.iter().enumerate() {
        let vrow = &v[off..off + d];
        for h in 0..g {
            axpy(&mut out_heads[h * d..(h + 1) * d], scores[h * n + p], vrow);
        }
    }
}

/// The portable path for an f16 cache: the rows it reads are widened to f32 once
/// (F16C where the CPU has it), then the f32 loop runs. Machines with AVX2 or AVX-512
/// use the kernels in `avx2.rs` / `avx512.rs`, which widen in registers instead.
fn attend_kv_head_f16(
    rows: &KvRows<'_, f16>,
    geo: &HeadGeometry,
    q_heads: &[f32],
    out_heads: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let &KvRows { k, v, offsets } = rows;
    thread_local! {
        static WIDE: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<usize>)> = Default::default();
    }
    let d = geo.head_dim;
    WIDE.with_borrow_mut(|(kw, vw, dense)| {
        kw.resize(offsets.len() * d, 0.0);
        vw.resize(offsets.len() * d, 0.0);
        dense.clear();
        for (p, &off) in offsets.iter().enumerate() {
            k[off..off + d].convert_to_f32_slice(&mut kw[p * d..(p + 1) * d]);
            v[off..off + d].convert_to_f32_slice(&mut vw[p * d..(p + 1) * d]);
            dense.push(p * d);
        }
        attend_kv_head(&KvRows { k: kw, v: vw, offsets: dense }, geo, q_heads, out_heads, scores);
    });
}

/// Dot product over `LANES` independent partial sums, added pairwise at the end, so
/// the compiler keeps them in registers without reordering any single float sum.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

#[inline(always)]
fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kv_cache::KvDtype;
    use crate::model::config::LlamaConfig;

    fn cfg() -> LlamaConfig {
        cfg_with(4, 2, 8)
    }

    fn cfg_with(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> LlamaConfig {
        LlamaConfig::tiny(num_heads, num_kv_heads, head_dim)
    }

    pub(super) fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Dense attention for one sequence, the textbook way.
    fn reference(q: &[f32], k: &[f32], v: &[f32], t: usize, c: &LlamaConfig) -> Vec<f32> {
        let (d, qd, kd) = (c.head_dim, c.q_dim(), c.kv_dim());
        let group = c.num_heads / c.num_kv_heads;
        let mut out = vec![0.0; t * qd];
        for i in 0..t {
            for h in 0..c.num_heads {
                let kvh = h / group;
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d).map(|x| (q[i * qd + h * d + x] * k[j * kd + kvh * d + x]) as f64).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    out[i * qd + h * d + x] =
                        (0..=i).map(|j| e[j] / z * v[j * kd + kvh * d + x] as f64).sum::<f64>() as f32;
                }
            }
        }
        out
    }

    /// Every geometry the kernels treat differently: a head size only the portable
    /// loop takes; SmolLM2's (64, groups of 3); one KV head per query head; and
    /// 128-wide heads in groups of 5, which the AVX-512 kernel splits as 4 + 1.
    /// An f16 cache rounds every K and V value to 11 significant bits; with inputs
    /// in [-1, 1] the outputs stay within 2e-3 of the exact ones.
    #[test]
    fn paged_attention_matches_dense_in_chunks_and_scattered_blocks() {
        for (dtype, tol) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-3)] {
            attention_matches_dense(dtype, tol);
        }
    }

    fn attention_matches_dense(dtype: KvDtype, tol: f32) {
        for (heads, kv_heads, d) in [(4, 2, 8), (9, 3, 64), (4, 4, 64), (10, 2, 128)] {
            let c = cfg_with(heads, kv_heads, d);
            let (t, bs) = (11, 4);
            let (q, k, v) = (pseudo(t * c.q_dim(), 1), pseudo(t * c.kv_dim(), 2), pseudo(t * c.kv_dim(), 3));
            let want = reference(&q, &k, &v, t, &c);
            let shape =
                AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim: d, tiled_prefill: true };
            let mut cache = PagedKvCache::new(&c, bs, 8, dtype);
            // Non-contiguous, out-of-order blocks; prefill 7 tokens then 4 more.
            let table = [5u32, 0, 6];
            let mut got = vec![0.0; t * c.q_dim()];
            let ids: Vec<u32> = (0..t as u32).collect();
            for (lo, hi) in [(0, 7), (7, 11)] {
                let span = SeqStep {
                    id: 0,
                    tokens: &ids[lo..hi],
                    start_pos: lo,
                    block_table: &table,
                    want_logits: false,
                    all_logits: false,
                };
                let (kd, qd) = (c.kv_dim(), c.q_dim());
                write_kv(&mut cache, 0, &[span], &k[lo * kd..hi * kd], &v[lo * kd..hi * kd]);
                attend(&cache, 0, &[span], &shape, &q[lo * qd..hi * qd], &mut got[lo * qd..hi * qd]);
            }
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < tol, "{dtype:?} heads {heads}/{kv_heads}, d {d}: {a} vs {b}");
            }
        }
    }

    /// Each hand-written kernel this CPU can run gives the portable loop's result
    /// within float rounding, for both cache dtypes and every group split, so a
    /// machine with AVX-512 still checks its AVX2 kernel.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn hand_written_kernels_match_the_portable_loop() {
        fn check<T: Copy>(name: &str, kernel: HeadFn<T>, portable: HeadFn<T>, k: &[T], v: &[T]) {
            for (group, d) in [(1, 64), (3, 64), (4, 64), (5, 128), (2, 128)] {
                let geo = HeadGeometry { head_dim: d, group, scale: 1.0 / (d as f32).sqrt() };
                let offsets: Vec<usize> = (0..37).map(|p| (p * 7 % 37) * 128).collect();
                let q = pseudo(group * d, 9);
                let (mut want, mut got) = (vec![0.0; group * d], vec![1.0; group * d]);
                let mut scores = Vec::new();
                let rows = KvRows { k, v, offsets: &offsets };
                portable(&rows, &geo, &q, &mut want, &mut scores);
                kernel(&rows, &geo, &q, &mut got, &mut scores);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{name}: group {group}, d {d}: {a} vs {b}");
                }
            }
        }
        let (k, v) = (pseudo(37 * 128, 7), pseudo(37 * 128, 8));
        let (k16, v16): (Vec<f16>, Vec<f16>) =
            (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
        let geo_any = |d| HeadGeometry { head_dim: d, group: 1, scale: 1.0 };
        use head::{attend_hand_written, supports};
        if supports::<f32, Avx2>(&geo_any(64)) {
            check("avx2 f32", attend_hand_written::<f32, Avx2>, attend_kv_head, &k, &v);
            check("avx2 f16", attend_hand_written::<f16, Avx2>, attend_kv_head_f16, &k16, &v16);
        }
        if supports::<f32, Avx512>(&geo_any(64)) {
            check("avx512 f32", attend_hand_written::<f32, Avx512>, attend_kv_head, &k, &v);
            check("avx512 f16", attend_hand_written::<f16, Avx512>, attend_kv_head_f16, &k16, &v16);
        }
    }

    /// One sequence's whole K/V in a scattered cache (blocks of `bs`), the dense
    /// reference for all its rows, and `attend` over rows `lo..hi` as one chunk. The
    /// positions after the chunk are already cached, so any row that looked past its
    /// own position would be caught.
    struct Prompt {
        c: LlamaConfig,
        shape: AttentionShape,
        cache: PagedKvCache,
        table: Vec<u32>,
        q: Vec<f32>,
        want: Vec<f32>,
    }

    impl Prompt {
        fn new(heads: usize, kv_heads: usize, d: usize, t: usize, bs: usize, dtype: KvDtype) -> Prompt {
            let c = cfg_with(heads, kv_heads, d);
            let (q, k, v) =
                (pseudo(t * c.q_dim(), 11), pseudo(t * c.kv_dim(), 12), pseudo(t * c.kv_dim(), 13));
            let want = reference(&q, &k, &v, t, &c);
            let blocks = t.div_ceil(bs);
            let mut cache = PagedKvCache::new(&c, bs, blocks + 3, dtype);
            // Backwards, not starting at block 0.
            let table: Vec<u32> = (0..blocks as u32).map(|b| blocks as u32 + 2 - b).collect();
            let ids: Vec<u32> = (0..t as u32).collect();
            let span = SeqStep {
                id: 0,
                tokens: &ids,
                start_pos: 0,
                block_table: &table,
                want_logits: false,
                all_logits: false,
            };
            write_kv(&mut cache, 0, &[span], &k, &v);
            let shape =
                AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim: d, tiled_prefill: true };
            Prompt { c, shape, cache, table, q, want }
        }

        fn chunk(&self, lo: usize, hi: usize) -> Vec<f32> {
            let qd = self.c.q_dim();
            let ids: Vec<u32> = (lo as u32..hi as u32).collect();
            let span = SeqStep {
                id: 0,
                tokens: &ids,
                start_pos: lo,
                block_table: &self.table,
                want_logits: false,
                all_logits: false,
            };
            let mut got = vec![f32::NAN; (hi - lo) * qd];
            attend(&self.cache, 0, &[span], &self.shape, &self.q[lo * qd..hi * qd], &mut got);
            got
        }

        fn check(&self, lo: usize, got: &[f32], tol: f32, what: &str) {
            let qd = self.c.q_dim();
            for (i, (a, b)) in got.iter().zip(&self.want[lo * qd..]).enumerate() {
                assert!((a - b).abs() < tol, "{what}: row {} value {}: {a} vs {b}", lo + i / qd, i % qd);
            }
        }
    }

    /// Every chunk length from 1 to 100 (the row path below `TILED_MIN_ROWS`, full
    /// tiles, short last tiles), starting at a block boundary, mid-block and at the
    /// last position of a block, for SmolLM2's geometry and a group of one, in both
    /// cache dtypes. Tolerances as in the test above.
    #[test]
    fn prefill_chunks_of_every_length_match_dense() {
        for (dtype, tol) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-3)] {
            for (heads, kv_heads, d, bs) in [(9, 3, 64, 16), (2, 2, 8, 5)] {
                let p = Prompt::new(heads, kv_heads, d, 131, bs, dtype);
                for lo in [0, 16, 13, 31] {
                    for n in 1..=100 {
                        let what = format!("{dtype:?} {heads}/{kv_heads}×{d}, blocks of {bs}, rows {lo}+{n}");
                        p.check(lo, &p.chunk(lo, lo + n), tol, &what);
                    }
                }
            }
        }
    }

    /// A prompt's outputs do not depend on how it is chunked: several chunkings of 200
    /// rows (single rows, short chunks and tiles), odd head sizes and groups included,
    /// give the same bits, within rounding of dense attention.
    #[test]
    fn prompt_outputs_do_not_depend_on_the_chunking() {
        let plans: [&[usize]; 4] = [&[200], &[3, 8, 17, 1, 31, 140], &[64, 64, 64, 8], &[7, 9, 100, 84]];
        for (dtype, tol) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-3)] {
            for (heads, kv_heads, d, bs) in [(9, 3, 64, 16), (10, 2, 128, 16), (6, 2, 6, 7)] {
                let p = Prompt::new(heads, kv_heads, d, 200, bs, dtype);
                let mut first: Option<Vec<f32>> = None;
                for plan in plans {
                    let mut lo = 0;
                    let mut all = Vec::new();
                    for &n in plan {
                        let what = format!("{dtype:?} {heads}/{kv_heads}×{d} {plan:?}");
                        let got = p.chunk(lo, lo + n);
                        p.check(lo, &got, tol, &what);
                        all.extend(got);
                        lo += n;
                    }
                    // With tiled prefill, the same bits whatever the chunking.
                    match &first {
                        None => first = Some(all),
                        Some(f) => {
                            assert_eq!(f, &all, "{dtype:?} {heads}/{kv_heads}×{d} {plan:?} vs {:?}", plans[0])
                        }
                    }
                }
            }
        }
    }

    /// A sequence's rows come out bit for bit the same alone and beside other
    /// sequences (a prefill chunk and decode rows), whichever goes first.
    #[test]
    fn a_sequence_gets_the_same_bits_alone_and_in_a_batch() {
        let (heads, kv_heads, d) = (9, 3, 64);
        let c = cfg_with(heads, kv_heads, d);
        let shape =
            AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim: d, tiled_prefill: true };
        let (qd, kd, bs) = (c.q_dim(), c.kv_dim(), 16);
        let mut cache = PagedKvCache::new(&c, bs, 24, KvDtype::F16);
        // Sequence s owns blocks 8s..8s+8; each has 100 positions cached.
        let tables: Vec<Vec<u32>> = (0..3u32).map(|s| (8 * s..8 * s + 8).collect()).collect();
        let ids: Vec<u32> = (0..100).collect();
        for (s, table) in tables.iter().enumerate() {
            let span = SeqStep {
                id: 0,
                tokens: &ids,
                start_pos: 0,
                block_table: table,
                want_logits: false,
                all_logits: false,
            };
            let (k, v) = (pseudo(100 * kd, 20 + s as u32), pseudo(100 * kd, 30 + s as u32));
            write_kv(&mut cache, 0, &[span], &k, &v);
        }
        // Sequence 0: a chunk of 37 rows from 40; 1 and 2: one decode row each.
        let spans = [
            SeqStep {
                id: 0,
                tokens: &ids[40..77],
                start_pos: 40,
                block_table: &tables[0],
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 1,
                tokens: &ids[90..91],
                start_pos: 90,
                block_table: &tables[1],
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 2,
                tokens: &ids[60..61],
                start_pos: 60,
                block_table: &tables[2],
                want_logits: false,
                all_logits: false,
            },
        ];
        let q = pseudo(39 * qd, 40);
        let rows = [0..37, 37..38, 38..39];
        let alone: Vec<Vec<f32>> = (0..3)
            .map(|s| {
                let r = rows[s].clone();
                let mut out = vec![0.0; r.len() * qd];
                attend(&cache, 0, &spans[s..=s], &shape, &q[r.start * qd..r.end * qd], &mut out);
                out
            })
            .collect();
        for order in [[0, 1, 2], [2, 1, 0]] {
            let batch: Vec<SeqStep> = order.iter().map(|&s| spans[s]).collect();
            let qs: Vec<f32> =
                order.iter().flat_map(|&s| q[rows[s].start * qd..rows[s].end * qd].to_vec()).collect();
            let mut out = vec![0.0; 39 * qd];
            attend(&cache, 0, &batch, &shape, &qs, &mut out);
            let mut at = 0;
            for &s in &order {
                let n = rows[s].len() * qd;
                let same = out[at..at + n].iter().zip(&alone[s]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "sequence {s} in order {order:?}");
                at += n;
            }
        }
    }

    #[test]
    fn sequences_in_one_step_do_not_see_each_other() {
        let c = cfg();
        let shape = AttentionShape { num_heads: 4, num_kv_heads: 2, head_dim: 8, tiled_prefill: true };
        let (q, k, v) = (pseudo(3 * c.q_dim(), 4), pseudo(3 * c.kv_dim(), 5), pseudo(3 * c.kv_dim(), 6));
        let mut cache = PagedKvCache::new(&c, 4, 4, KvDtype::F32);
        let (ta, tb) = ([0u32], [1u32]);
        let spans = [
            SeqStep {
                id: 0,
                tokens: &[1, 2],
                start_pos: 0,
                block_table: &ta,
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 1,
                tokens: &[3],
                start_pos: 0,
                block_table: &tb,
                want_logits: false,
                all_logits: false,
            },
        ];
        write_kv(&mut cache, 0, &spans, &k, &v);
        let mut out = vec![0.0; 3 * c.q_dim()];
        attend(&cache, 0, &spans, &shape, &q, &mut out);
        // A one-token sequence attends only to itself: output = its own V per head.
        let (qd, kd) = (c.q_dim(), c.kv_dim());
        for h in 0..4 {
            let kvh = h / 2;
            for x in 0..8 {
                assert!((out[2 * qd + h * 8 + x] - v[2 * kd + kvh * 8 + x]).abs() < 1e-6);
            }
        }
    }
}
