//! Causal grouped-query attention over the paged KV cache, for every token of a
//! step at once. Each token attends to its own sequence's positions `0..=pos`,
//! read through that sequence's block table, so sequences at different positions
//! share one call. Work is spread with rayon over tiles of prompt rows (`tiled.rs`) and
//! over generated rows × KV heads, long ones cut into parts of their positions
//! (`tile_row.rs`); a prompt row's output never depends on how its prompt was chunked,
//! and no row's on what else ran in the step.

mod head;
mod lanes;
mod tile_row;
mod tiled;
#[cfg(target_arch = "x86_64")]
mod tiled_bf16;

use std::cell::Cell;

use half::f16;
use rayon::prelude::*;

use super::e4m3::E4m3;
use super::kv_cache::{BlockMut, LayerKv, PagedKvCache};
use crate::backend::SeqStep;
use head::{HeadGeometry, PagedRows};
use lanes::Cached;
use tile_row::{RowFn, RowScratch};
use tiled::{TileFn, TileRows, TileScratch};
#[cfg(target_arch = "x86_64")]
use tiled_bf16::Bf16Scratch;
/// Where the bf16 tiles cannot run, their scratch is nothing.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Default)]
struct Bf16Scratch;

pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Rows outside tiles computed bit for bit as a tile would
    /// (`--chunk-invariant-attention`).
    pub chunk_invariant: bool,
    /// Prompt tiles take their products in bf16 pairs (`tiled_bf16`); only where
    /// [`AttentionPrecision::resolve`] allowed it.
    pub bf16_tiles: bool,
}

/// How the prompt tiles multiply (`--attention-precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttentionPrecision {
    /// bf16 products where the matmuls already round activations to 8 bits (quantized
    /// weights with int8 activations), the CPU has AVX-512 BF16 and decode rows need
    /// not match tiles bit for bit; f32 otherwise.
    #[default]
    Auto,
    F32,
    Bf16,
}

impl AttentionPrecision {
    /// The name `--attention-precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttentionPrecision::Auto => "auto",
            AttentionPrecision::F32 => "f32",
            AttentionPrecision::Bf16 => "bf16",
        }
    }

    /// Whether prompt tiles take bf16 products, or why they cannot when asked to;
    /// `int8_matmuls`: the layers' matmuls round activations to 8 bits.
    pub fn resolve(self, int8_matmuls: bool, chunk_invariant: bool, head_dim: usize) -> Result<bool, String> {
        let unmet = if !bf16_tiles_run_here() {
            Some("a CPU with AVX-512 BF16".to_string())
        } else if !head_dim.is_multiple_of(16) {
            Some(format!("a head size that is a multiple of 16 (this model's is {head_dim})"))
        } else if chunk_invariant {
            Some(
                "decode rows that need not equal a tile's bits (--chunk-invariant-attention is on)"
                    .to_string(),
            )
        } else {
            None
        };
        match (self, unmet) {
            (AttentionPrecision::F32, _) => Ok(false),
            (AttentionPrecision::Auto, None) => Ok(int8_matmuls),
            (AttentionPrecision::Auto, Some(_)) => Ok(false),
            (AttentionPrecision::Bf16, None) => Ok(true),
            (AttentionPrecision::Bf16, Some(need)) => Err(format!("--attention-precision bf16 needs {need}")),
        }
    }
}

/// Whether this CPU runs the bf16 tiles.
pub fn bf16_tiles_run_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    return tiled_bf16::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Token rows at or above which the cache writes are spread over the pool, a block
/// (each with its own slice of the cache) per task.
const PARALLEL_WRITE_ROWS: usize = 64;

/// Where a step's token rows go in the cache, grouped by block (a block belongs to one
/// sequence; its rows keep their order): worked out once per step, used by every
/// layer's [`write_kv`].
pub struct KvWrites {
    /// (block, index in the block, token row), sorted by block.
    rows: Vec<(usize, usize, usize)>,
    /// Each block's rows: a run of `rows`.
    runs: Vec<std::ops::Range<usize>>,
    /// The blocks, strictly increasing.
    blocks: Vec<usize>,
}

impl KvWrites {
    pub fn new(block_size: usize, seqs: &[SeqStep]) -> KvWrites {
        let mut rows: Vec<(usize, usize, usize)> = seqs
            .iter()
            .flat_map(|s| (0..s.tokens.len()).map(move |i| (s, s.start_pos + i)))
            .enumerate()
            .map(|(row, (s, pos))| (s.block_table[pos / block_size] as usize, pos % block_size, row))
            .collect();
        rows.sort_by_key(|&(block, _, _)| block);
        let (mut runs, mut blocks) = (Vec::new(), Vec::new());
        let mut at = 0;
        for run in rows.chunk_by(|a, b| a.0 == b.0) {
            blocks.push(run[0].0);
            runs.push(at..at + run.len());
            at += run.len();
        }
        KvWrites { rows, runs, blocks }
    }
}

/// Stores the step's K and V rows (`kv_dim` values per token, head after head) in
/// the cache, where `plan` (made for this cache's block size) says.
pub fn write_kv(cache: &mut PagedKvCache, layer: usize, plan: &KvWrites, k: &[f32], v: &[f32]) {
    let (d, bs) = (cache.head_dim(), cache.block_size());
    let (heads, region_len) = (cache.kv_heads(), cache.region_len());
    let mut views = cache.layer_mut(layer).blocks_mut(&plan.blocks, heads, region_len);
    let write = |(view, run): (&mut BlockMut, &std::ops::Range<usize>)| {
        let run = &plan.rows[run.clone()];
        // The destination rows are cold (often in DRAM); requesting them all first
        // lets their misses overlap instead of stalling the stores one row at a time.
        // A K column touches most of its region, which is asked for once.
        for h in 0..heads {
            view.prefetch(h, 0, 0, true);
            for &(_, index, _) in run {
                view.prefetch(h, index, d, false);
            }
        }
        for &(_, index, row) in run {
            for h in 0..heads {
                let src = (row * heads + h) * d..(row * heads + h + 1) * d;
                view.store(h, index, bs, &k[src.clone()], &v[src]);
            }
        }
    };
    if plan.rows.len() >= PARALLEL_WRITE_ROWS {
        views.par_iter_mut().zip(plan.runs.par_iter()).for_each(write);
    } else {
        views.iter_mut().zip(plan.runs.iter()).for_each(write);
    }
}

thread_local! {
    /// The tiles' outputs, a KV head's rows together, reused from call to call: a
    /// prefill chunk's are a megabyte, which a fresh allocation would fault in again.
    static TILE_OUTPUTS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `out[row]` = softmax(q·Kᵀ / √d) · V for every token row of the step.
///
/// A sequence's prompt rows ([`SeqStep::prompt_rows`]) go through the tiled kernel
/// (`tiled.rs`), a tile of its rows at a time, however few the chunk has: a row's
/// output from a tile is the same bits whatever tile it is in, so a prompt's outputs do
/// not depend on how it was chunked, which depends on the other traffic. Generated rows
/// (decode) go through a row kernel (`tile_row.rs`): by default one that reads all
/// scores before it weighs V (the fastest for decode), which agrees with the tiled
/// kernel within float rounding; with `shape.chunk_invariant` one that computes what
/// the tiled kernel computes for that row bit for bit, so a generated position's
/// outputs are also those a prefill of the same tokens gives (prompt logprobs against
/// generation). A recompute after preemption is a chunk of prompt rows then generated
/// rows, each taking its own path, so it reproduces the original cache in either mode. Rows outside tiles go one
/// token row × one KV head at a time: the query heads that share that KV head read
/// each cached K and V value once between them, and a single decoding sequence still
/// spreads its heads over every thread; with the two-pass kernel a long row is also
/// cut into parts of its positions (`PART_POSITIONS`), merged after. Which path a row
/// takes and how it is cut depend only on its own sequence, never on the rest of the
/// batch, so a sequence's outputs never depend on what else is in the step.
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
    match cache.layer(layer) {
        LayerKv::F32 { k, v } => attend_units::<f32>(cache, seqs, shape, &geo, (k, v), q, out),
        LayerKv::F16 { k, v } => attend_units::<f16>(cache, seqs, shape, &geo, (k, v), q, out),
        LayerKv::Fp8 { k, v } => attend_units::<E4m3>(cache, seqs, shape, &geo, (k, v), q, out),
    }
}

/// One tile: its sequence, the position of its first row, its queries and outputs
/// (whole rows, every KV head's).
type TileUnit<'a> = (&'a SeqStep<'a>, usize, &'a [f32], &'a mut [f32]);
/// Tiles a thread should have to go round before a tile's KV heads stop being split
/// into units of their own.
const TILES_PER_THREAD: usize = 4;

/// What one thread takes of the tiled path: a tile's KV heads `kv_heads`, its queries
/// (whole rows), and their outputs, row `i` at `i * out_stride` (the tile's own rows,
/// or a buffer of the heads' outputs).
struct TileWork<'a> {
    span: &'a SeqStep<'a>,
    first_pos: usize,
    rows: usize,
    kv_heads: std::ops::Range<usize>,
    q_rows: &'a [f32],
    out: &'a mut [f32],
    out_stride: usize,
}

/// The tiled path's work: each tile whole, its KV heads one after another, writing in
/// place; or, given `buffer` (room for every tile's outputs), each tile's KV heads as
/// units of their own writing there, a head's rows together, with the tiles' output
/// rows returned for [`copy_head_outputs`].
fn tile_work<'a: 'b, 'b>(
    tiles: Vec<TileUnit<'a>>,
    q_dim: usize,
    unit: usize,
    buffer: Option<&'b mut [f32]>,
) -> (Vec<TileWork<'b>>, Vec<&'a mut [f32]>) {
    let Some(mut rest) = buffer else {
        let whole = tiles.into_iter().map(|(span, first_pos, q_rows, out)| TileWork {
            span,
            first_pos,
            rows: out.len() / q_dim,
            kv_heads: 0..q_dim / unit,
            q_rows,
            out,
            out_stride: q_dim,
        });
        return (whole.collect(), Vec::new());
    };
    let (mut work, mut split) = (Vec::new(), Vec::new());
    for (span, first_pos, q_rows, out_rows) in tiles {
        let rows = out_rows.len() / q_dim;
        let (mine, next) = std::mem::take(&mut rest).split_at_mut(out_rows.len());
        rest = next;
        for (kvh, out) in mine.chunks_mut(rows * unit).enumerate() {
            let kv_heads = kvh..kvh + 1;
            work.push(TileWork { span, first_pos, rows, kv_heads, q_rows, out, out_stride: unit });
        }
        split.push(out_rows);
    }
    (work, split)
}

/// Each KV head's outputs in `buffer` (as [`tile_work`] laid them out) into its place
/// in the tiles' rows.
fn copy_head_outputs(buffer: &[f32], tiles: Vec<&mut [f32]>, q_dim: usize, unit: usize) {
    let mut done = buffer;
    for out_rows in tiles {
        let (mine, next) = done.split_at(out_rows.len());
        done = next;
        let rows = out_rows.len() / q_dim;
        for (kvh, head) in mine.chunks(rows * unit).enumerate() {
            for (row, o) in head.chunks(unit).zip(out_rows.chunks_mut(q_dim)) {
                o[kvh * unit..(kvh + 1) * unit].copy_from_slice(row);
            }
        }
    }
}

/// One token row × KV head: its sequence, position, KV head, queries and outputs.
type RowUnit<'a> = (&'a SeqStep<'a>, usize, usize, &'a [f32], &'a mut [f32]);

fn attend_units<T: Cached>(
    cache: &PagedKvCache,
    seqs: &[SeqStep],
    shape: &AttentionShape,
    geo: &HeadGeometry,
    (k, v): (&[T], &[T]),
    q: &[f32],
    out: &mut [f32],
) {
    let num_kv_heads = shape.num_kv_heads;
    // Chunks of `group * head_dim` are one KV head's query heads.
    let unit = geo.group * geo.head_dim;
    let q_dim = num_kv_heads * unit;
    let tile = tiled::tile_rows();
    let block_size = cache.block_size();
    let (mut tiles, mut rows): (Vec<TileUnit>, Vec<RowUnit>) = (Vec::new(), Vec::new());
    let (mut q_rest, mut out_rest) = (q, out);
    for s in seqs {
        let n = s.tokens.len() * q_dim;
        let (q_seq, q_next) = q_rest.split_at(n);
        let (out_seq, out_next) = std::mem::take(&mut out_rest).split_at_mut(n);
        (q_rest, out_rest) = (q_next, out_next);
        // Prompt rows go through tiles, generated ones through the row kernels, so a
        // recompute after preemption gives every row the bits it first had.
        let prompt_rows = s.prompt_rows.min(s.tokens.len());
        let ((q_prompt, q_generated), (out_prompt, out_generated)) =
            (q_seq.split_at(prompt_rows * q_dim), out_seq.split_at_mut(prompt_rows * q_dim));
        let parts = q_prompt.chunks(tile * q_dim).zip(out_prompt.chunks_mut(tile * q_dim));
        tiles.extend(parts.enumerate().map(|(t, (qt, ot))| (s, s.start_pos + t * tile, qt, ot)));
        let first_generated = s.start_pos + prompt_rows;
        let parts = q_generated.chunks(unit).zip(out_generated.chunks_mut(unit)).enumerate();
        rows.extend(
            parts.map(|(i, (qu, ou))| (s, first_generated + i / num_kv_heads, i % num_kv_heads, qu, ou)),
        );
    }
    let part = tile_row::part_len(geo);
    let split_parts: usize = rows.iter().map(|r| cut(r.1 + 1, shape, block_size).1).filter(|&n| n > 1).sum();
    let mut partials = vec![0.0f32; split_parts * part];
    let (mut jobs, merges) = row_jobs(rows, shape, block_size, &mut partials, part);
    // Keep a job's work above the cost of handing it to another thread: one decoding
    // sequence's three or four units at a short context take a few microseconds, less
    // than waking a sleeping worker.
    let positions: usize = jobs.iter().map(|j| j.len).sum();
    let per_job = positions.div_ceil(jobs.len().max(1)).max(1);
    let min_jobs = MIN_POSITIONS_PER_JOB.div_ceil(per_job).max(1);
    let (tile_fn, row_fn, part_fn): (TileFn<T>, RowFn<T>, RowFn<T>) =
        (tiled::tile_kernel(), tile_row::row_kernel(shape.chunk_invariant), tile_row::part_kernel());
    // With few tiles (a short chunk: one tile for up to 16 rows), each tile's KV heads
    // are units of their own so the chunk still spreads over the threads; they write
    // to a buffer (a head's rows together), copied into the rows after. With enough
    // tiles to go round, a tile's heads stay together and write in place.
    let by_head = tiles.len() < TILES_PER_THREAD * rayon::current_num_threads();
    let head_len = if by_head { tiles.iter().map(|t| t.3.len()).sum() } else { 0 };
    let mut head_out = if by_head { TILE_OUTPUTS.with(Cell::take) } else { Vec::new() };
    // Grown, never cleared: the tiles write every value of it before it is read.
    if head_out.len() < head_len {
        head_out.resize(head_len, 0.0);
    }
    let (work, split) = tile_work(tiles, q_dim, unit, by_head.then_some(&mut head_out[..head_len]));
    rayon::join(
        || {
            work.into_par_iter().for_each_init(
                || (TileScratch::default(), Bf16Scratch::default(), Vec::new()),
                |(scratch, bf16_scratch, regions), w| {
                    let t = TileRows {
                        first_pos: w.first_pos,
                        rows: w.rows,
                        stride: q_dim,
                        out_stride: w.out_stride,
                    };
                    let len = w.first_pos + w.rows;
                    for (i, kvh) in w.kv_heads.enumerate() {
                        regions.clear();
                        cache.extend_regions(w.span.block_table, len, kvh, regions);
                        let kv = PagedRows { k, v, regions, block_size, len };
                        let (q, out) = (&w.q_rows[kvh * unit..], &mut w.out[i * unit..]);
                        #[cfg(target_arch = "x86_64")]
                        if shape.bf16_tiles {
                            tiled_bf16::attend_tile(&kv, geo, &t, q, out, bf16_scratch);
                            continue;
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        let _ = bf16_scratch;
                        tile_fn(&kv, geo, &t, q, out, scratch);
                    }
                },
            )
        },
        || {
            // A thread takes a run of jobs, so each job can ask for the next one's cache
            // while it computes (`tile_row::Upcoming`); a few runs a thread keep the
            // threads' shares even.
            let run = min_jobs.max(jobs.len().div_ceil(RUNS_PER_THREAD * rayon::current_num_threads()));
            let region_bytes = block_size * geo.head_dim * std::mem::size_of::<T>();
            jobs.par_chunks_mut(run.max(1)).for_each_init(
                || (RowScratch::default(), Vec::new(), Vec::new()),
                |(scratch, regions, next), run| {
                    job_regions(cache, &run[0], regions);
                    for i in 0..run.len() {
                        scratch.upcoming.clear();
                        if let Some(after) = run.get(i + 1) {
                            job_regions(cache, after, next);
                            for &r in next.iter() {
                                scratch.upcoming.push(k.as_ptr().wrapping_add(r), region_bytes);
                                scratch.upcoming.push(v.as_ptr().wrapping_add(r), region_bytes);
                            }
                        }
                        let job = &mut run[i];
                        let kv = PagedRows { k, v, regions, block_size, len: job.len };
                        let kernel = if job.part { part_fn } else { row_fn };
                        kernel(&kv, geo, job.q, job.out, scratch);
                        std::mem::swap(regions, next);
                    }
                },
            )
        },
    );
    copy_head_outputs(&head_out[..head_len], split, q_dim, unit);
    if by_head {
        TILE_OUTPUTS.with(|c| c.set(head_out));
    }
    let mut at = 0;
    for (out, n) in merges {
        tile_row::merge_parts(geo, &partials[at..at + n * part], out);
        at += n * part;
    }
}

/// Runs of row jobs per thread (see `attend_units`).
const RUNS_PER_THREAD: usize = 4;

/// The cache regions a row job reads.
fn job_regions(cache: &PagedKvCache, job: &RowJob, regions: &mut Vec<usize>) {
    regions.clear();
    cache.extend_regions(&job.span.block_table[job.first_block..], job.len, job.kv_head, regions);
}

/// Row units of at least twice this many positions are cut into parts of at least this
/// many (whole blocks) that threads take apart, their results merged after: one
/// decoding sequence at a long context otherwise has only its KV heads' few units to
/// spread over the threads (three for SmolLM2, so one of two threads idles a third of
/// the time). Shorter parts cost decode batches more than they gain (measured in
/// `benches/results/2026-12-05-decode-parts/`).
const PART_POSITIONS: usize = 512;

/// One job of the row path: a row × KV head over its positions from block `first_block`
/// on, `len` of them; `out` takes its output heads, or for one part of a split row its
/// unnormalised result (`tile_row::part_kernel`).
struct RowJob<'a> {
    span: &'a SeqStep<'a>,
    kv_head: usize,
    first_block: usize,
    len: usize,
    q: &'a [f32],
    out: &'a mut [f32],
    part: bool,
}

/// How a row unit of `len` positions is cut: positions per part (whole blocks, nearly
/// equal parts) and the number of parts; one part (not cut) for the chunk-invariant
/// kernel, which must compute what a tile computes.
fn cut(len: usize, shape: &AttentionShape, block_size: usize) -> (usize, usize) {
    let parts = len / PART_POSITIONS;
    if shape.chunk_invariant || parts < 2 {
        return (len, 1);
    }
    let per_part = len.div_ceil(block_size).div_ceil(parts) * block_size;
    (per_part, len.div_ceil(per_part))
}

/// The row units as jobs, long ones cut into parts of nearly equal whole-block lengths
/// whose results go to consecutive `part`-value slots of `partials`; and each cut row's
/// output with its number of parts, in the order of their slots. How a row is cut
/// depends only on its own length, so its output never depends on the batch.
fn row_jobs<'a: 's, 's>(
    rows: Vec<RowUnit<'a>>,
    shape: &AttentionShape,
    block_size: usize,
    partials: &'s mut [f32],
    part: usize,
) -> (Vec<RowJob<'s>>, Vec<(&'a mut [f32], usize)>) {
    let mut slots = partials.chunks_exact_mut(part);
    let (mut jobs, mut merges) = (Vec::with_capacity(rows.len()), Vec::new());
    for (span, pos, kv_head, q, out) in rows {
        let len = pos + 1;
        let (per_part, n) = cut(len, shape, block_size);
        if n == 1 {
            jobs.push(RowJob { span, kv_head, first_block: 0, len, q, out, part: false });
            continue;
        }
        for (j, from) in (0..len).step_by(per_part).enumerate() {
            let slot = slots.next().expect("a slot for every part");
            let first_block = j * per_part / block_size;
            let len = (len - from).min(per_part);
            jobs.push(RowJob { span, kv_head, first_block, len, q, out: slot, part: true });
        }
        merges.push((out, n));
    }
    (jobs, merges)
}

/// Cached positions (summed over a job's units) below which attention work is not
/// split further between threads.
const MIN_POSITIONS_PER_JOB: usize = 1024;

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

    /// A paged copy of one KV head's dense K and V rows (position `p`'s at `p * d`):
    /// blocks of `bs` positions in regions laid out as the cache lays them out, the
    /// blocks in reverse order, as a pool that recycles blocks may hand them out.
    pub(super) struct Paged<T> {
        k: Vec<T>,
        v: Vec<T>,
        regions: Vec<usize>,
        bs: usize,
    }

    impl<T: Cached> Paged<T> {
        pub(super) fn new(k: &[T], v: &[T], d: usize, bs: usize) -> Self {
            let n = v.len() / d;
            let blocks = n.div_ceil(bs);
            let regions: Vec<usize> = (0..blocks).map(|b| (blocks - 1 - b) * bs * d).collect();
            let (mut kp, mut vp) = (vec![T::ZERO; blocks * bs * d], vec![T::ZERO; blocks * bs * d]);
            for p in 0..n {
                let (region, index) = (regions[p / bs], p % bs);
                for x in 0..d {
                    kp[region + x * bs + index] = k[p * d + x];
                    vp[region + index * d + x] = v[p * d + x];
                }
            }
            Paged { k: kp, v: vp, regions, bs }
        }

        /// Positions `0..len`.
        pub(super) fn rows(&self, len: usize) -> PagedRows<'_, T> {
            PagedRows { k: &self.k, v: &self.v, regions: &self.regions, block_size: self.bs, len }
        }
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

    /// A step of two sequences (a prompt chunk across blocks, above the parallel
    /// threshold, and one decode row), written and read back value by value.
    #[test]
    fn write_kv_puts_every_row_where_the_block_tables_say() {
        let c = cfg_with(4, 2, 8);
        let (bs, kd) = (4, c.kv_dim());
        let mut cache = PagedKvCache::new(&c, bs, 40, KvDtype::F32);
        let ids: Vec<u32> = (0..PARALLEL_WRITE_ROWS as u32 + 9).collect();
        let (long, short) = (&ids[..], &ids[..1]);
        let table_a: Vec<u32> = (0..20).rev().map(|b| 2 * b + 1).collect();
        let table_b = [8u32, 30, 2];
        let seqs = [
            SeqStep {
                id: 0,
                tokens: long,
                start_pos: 3,
                prompt_rows: long.len(),
                block_table: &table_a,
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 1,
                tokens: short,
                start_pos: 9,
                prompt_rows: 0,
                block_table: &table_b,
                want_logits: true,
                all_logits: false,
            },
        ];
        let rows = long.len() + 1;
        let (k, v) = (pseudo(rows * kd, 4), pseudo(rows * kd, 5));
        write_kv(&mut cache, 0, &KvWrites::new(bs, &seqs), &k, &v);
        let LayerKv::F32 { k: ck, v: cv } = cache.layer(0) else { unreachable!() };
        let placed = (0..long.len()).map(|i| (&table_a[..], 3 + i)).chain([(&table_b[..], 9)]);
        for (row, (table, pos)) in placed.enumerate() {
            for h in 0..2 {
                let slot = cache.slot(table, pos, h);
                for x in 0..8 {
                    let at = (row * 2 + h) * 8 + x;
                    assert_eq!(cv[slot.region + slot.index * 8 + x], v[at], "V row {row} head {h}");
                    assert_eq!(ck[slot.region + x * bs + slot.index], k[at], "K row {row} head {h}");
                }
            }
        }
    }

    /// Every cache dtype; the dense reference gets the K and V values each stores
    /// ([`stored`]), so the kernels must read every value back exactly.
    const DTYPES: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Fp8];
    /// How far an output may be from the dense f64 reference: f32 rounding.
    const TOL: f32 = 1e-5;
    /// bf16 tiles round queries, K, weights and V to 8 significant bits.
    const BF16_TOL: f32 = 2e-2;

    /// An attention shape with f32 tiles.
    fn shape(
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        chunk_invariant: bool,
    ) -> AttentionShape {
        AttentionShape { num_heads, num_kv_heads, head_dim, chunk_invariant, bf16_tiles: false }
    }

    /// `x` as a cache of `dtype` stores it.
    fn stored(dtype: KvDtype, x: &[f32]) -> Vec<f32> {
        match dtype {
            KvDtype::F32 => x.to_vec(),
            KvDtype::F16 => x.iter().map(|&a| f16::from_f32(a).to_f32()).collect(),
            KvDtype::Fp8 => x.iter().map(|&a| E4m3::from_f32(a).to_f32()).collect(),
        }
    }

    /// Every geometry the kernels treat differently: a head size only the portable
    /// loop takes; SmolLM2's (64, groups of 3); one KV head per query head; and
    /// 128-wide heads in groups of 5, which the AVX-512 kernel splits as 4 + 1.
    #[test]
    fn paged_attention_matches_dense_in_chunks_and_scattered_blocks() {
        for dtype in DTYPES {
            attention_matches_dense(dtype);
        }
    }

    fn attention_matches_dense(dtype: KvDtype) {
        for (heads, kv_heads, d) in [(4, 2, 8), (9, 3, 64), (4, 4, 64), (10, 2, 128)] {
            let c = cfg_with(heads, kv_heads, d);
            let (t, bs) = (11, 4);
            let (q, k, v) = (pseudo(t * c.q_dim(), 1), pseudo(t * c.kv_dim(), 2), pseudo(t * c.kv_dim(), 3));
            let want = reference(&q, &stored(dtype, &k), &stored(dtype, &v), t, &c);
            let shape = shape(heads, kv_heads, d, true);
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
                    prompt_rows: ids[lo..hi].len(),
                    block_table: &table,
                    want_logits: false,
                    all_logits: false,
                };
                let (kd, qd) = (c.kv_dim(), c.q_dim());
                write_kv(
                    &mut cache,
                    0,
                    &KvWrites::new(bs, &[span]),
                    &k[lo * kd..hi * kd],
                    &v[lo * kd..hi * kd],
                );
                attend(&cache, 0, &[span], &shape, &q[lo * qd..hi * qd], &mut got[lo * qd..hi * qd]);
            }
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < TOL, "{dtype:?} heads {heads}/{kv_heads}, d {d}: {a} vs {b}");
            }
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
        /// How far from dense attention a value may be.
        tol: f32,
    }

    impl Prompt {
        fn new(
            heads: usize,
            kv_heads: usize,
            d: usize,
            t: usize,
            bs: usize,
            dtype: KvDtype,
            chunk_invariant: bool,
        ) -> Prompt {
            let c = cfg_with(heads, kv_heads, d);
            let (q, k, v) =
                (pseudo(t * c.q_dim(), 11), pseudo(t * c.kv_dim(), 12), pseudo(t * c.kv_dim(), 13));
            let want = reference(&q, &stored(dtype, &k), &stored(dtype, &v), t, &c);
            let blocks = t.div_ceil(bs);
            let mut cache = PagedKvCache::new(&c, bs, blocks + 3, dtype);
            // Backwards, not starting at block 0.
            let table: Vec<u32> = (0..blocks as u32).map(|b| blocks as u32 + 2 - b).collect();
            let ids: Vec<u32> = (0..t as u32).collect();
            let span = SeqStep {
                id: 0,
                tokens: &ids,
                start_pos: 0,
                prompt_rows: ids.len(),
                block_table: &table,
                want_logits: false,
                all_logits: false,
            };
            write_kv(&mut cache, 0, &KvWrites::new(bs, &[span]), &k, &v);
            let shape = shape(heads, kv_heads, d, chunk_invariant);
            Prompt { c, shape, cache, table, q, want, tol: TOL }
        }

        /// The same prompt with its tiles' products in bf16.
        fn with_bf16_tiles(mut self) -> Prompt {
            self.shape.bf16_tiles = true;
            self.tol = BF16_TOL;
            self
        }

        /// Rows `lo..hi` as one prompt chunk.
        fn chunk(&self, lo: usize, hi: usize) -> Vec<f32> {
            self.attend(lo, hi, hi - lo)
        }

        /// Row `pos` as a generated token (a decode row).
        fn generated(&self, pos: usize) -> Vec<f32> {
            self.attend(pos, pos + 1, 0)
        }

        /// Rows `lo..hi` as one chunk whose first `prompt_rows` are prompt.
        fn attend(&self, lo: usize, hi: usize, prompt_rows: usize) -> Vec<f32> {
            let qd = self.c.q_dim();
            let ids: Vec<u32> = (lo as u32..hi as u32).collect();
            let span = SeqStep {
                id: 0,
                tokens: &ids,
                start_pos: lo,
                prompt_rows,
                block_table: &self.table,
                want_logits: false,
                all_logits: false,
            };
            let mut got = vec![f32::NAN; (hi - lo) * qd];
            attend(&self.cache, 0, &[span], &self.shape, &self.q[lo * qd..hi * qd], &mut got);
            got
        }

        fn check(&self, lo: usize, got: &[f32], what: &str) {
            let qd = self.c.q_dim();
            for (i, (a, b)) in got.iter().zip(&self.want[lo * qd..]).enumerate() {
                assert!((a - b).abs() < self.tol, "{what}: row {} value {}: {a} vs {b}", lo + i / qd, i % qd);
            }
        }
    }

    /// Every chunk length from 1 to 100 (full tiles, short last tiles, chunks shorter
    /// than a tile), starting at a block boundary, mid-block and at the last position
    /// of a block, and every position as a generated row (the row kernels), for
    /// SmolLM2's geometry and a group of one, in every cache dtype.
    #[test]
    fn prefill_chunks_of_every_length_and_generated_rows_match_dense() {
        for dtype in DTYPES {
            for (heads, kv_heads, d, bs, invariant) in
                [(9, 3, 64, 16, false), (9, 3, 64, 16, true), (2, 2, 8, 5, false)]
            {
                let p = Prompt::new(heads, kv_heads, d, 131, bs, dtype, invariant);
                for lo in [0, 16, 13, 31] {
                    for n in 1..=100 {
                        let what = format!("{dtype:?} {heads}/{kv_heads}×{d}, blocks of {bs}, rows {lo}+{n}");
                        p.check(lo, &p.chunk(lo, lo + n), &what);
                    }
                }
                for pos in 0..131 {
                    let what =
                        format!("{dtype:?} {heads}/{kv_heads}×{d}, blocks of {bs}, generated row {pos}");
                    p.check(pos, &p.generated(pos), &what);
                }
            }
        }
    }

    /// Generated rows long enough to be cut into parts (two `PART_POSITIONS` or more),
    /// either side of that length, match dense attention in both modes (the
    /// chunk-invariant kernel does not cut), with blocks of 16 and of 5 positions.
    #[test]
    fn long_generated_rows_cut_into_parts_match_dense() {
        for dtype in DTYPES {
            for (bs, invariant) in [(16, false), (5, false), (16, true)] {
                let p = Prompt::new(6, 2, 32, 1100, bs, dtype, invariant);
                for pos in [1021, 1022, 1023, 1024, 1099] {
                    let (per_part, parts) = cut(pos + 1, &p.shape, bs);
                    assert_eq!(parts > 1, !invariant && pos + 1 >= 2 * PART_POSITIONS, "row {pos}");
                    assert!(parts == 1 || (per_part % bs == 0 && per_part * (parts - 1) <= pos), "row {pos}");
                    let what =
                        format!("{dtype:?} blocks of {bs}, invariant {invariant}, generated row {pos}");
                    p.check(pos, &p.generated(pos), &what);
                }
            }
        }
    }

    /// A prompt's outputs do not depend on how it is chunked, in either mode: several
    /// chunkings of 200 rows (single rows, chunks shorter than a tile, and tiles), odd
    /// head sizes and groups included, give the same bits, within rounding of dense
    /// attention. Concurrent traffic changes how the scheduler chunks a prompt, so this
    /// is what makes a request's output independent of the others.
    #[test]
    fn prompt_outputs_do_not_depend_on_the_chunking() {
        for dtype in DTYPES {
            for (heads, kv_heads, d, bs) in [(9, 3, 64, 16), (10, 2, 128, 16), (6, 2, 6, 7)] {
                for invariant in [false, true] {
                    let p = Prompt::new(heads, kv_heads, d, 200, bs, dtype, invariant);
                    let what = format!("{dtype:?} {heads}/{kv_heads}×{d} invariant {invariant}");
                    same_bits_however_chunked(&p, &what);
                }
            }
        }
    }

    /// Several chunkings of `p`'s 200 rows (single rows, chunks shorter than a tile, and
    /// tiles) give the same bits, each within `p.tol` of dense attention.
    fn same_bits_however_chunked(p: &Prompt, what: &str) {
        let plans: [&[usize]; 4] = [&[200], &[3, 8, 17, 1, 31, 140], &[64, 64, 64, 8], &[7, 9, 100, 84]];
        let mut first: Option<Vec<f32>> = None;
        for plan in plans {
            let mut lo = 0;
            let mut all = Vec::new();
            let what = format!("{what} {plan:?}");
            for &n in plan {
                let got = p.chunk(lo, lo + n);
                p.check(lo, &got, &what);
                all.extend(got);
                lo += n;
            }
            match &first {
                None => first = Some(all),
                Some(f) => assert!(
                    f.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what} vs {:?}",
                    plans[0]
                ),
            }
        }
    }

    /// With bf16 prompt tiles (where the CPU has them) a prompt's outputs still do not
    /// depend on its chunking and stay within bf16 rounding of dense attention; decode
    /// rows keep f32 products (dense attention's tolerance); and a recompute still gives
    /// prompt and generated rows their first bits.
    #[test]
    fn bf16_prompt_tiles_keep_chunking_and_recompute_invariance() {
        if !bf16_tiles_run_here() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        for dtype in DTYPES {
            for (heads, kv_heads, d, bs) in [(9, 3, 64, 16), (10, 2, 128, 5)] {
                let p = Prompt::new(heads, kv_heads, d, 200, bs, dtype, false).with_bf16_tiles();
                let what = format!("bf16 tiles, {dtype:?} {heads}/{kv_heads}×{d}");
                same_bits_however_chunked(&p, &what);
                let mut off = 0.0f32;
                for pos in [0, 15, 16, 100, 199] {
                    let got = p.generated(pos);
                    for (a, b) in got.iter().zip(&p.want[pos * p.c.q_dim()..]) {
                        assert!((a - b).abs() < TOL, "{what}: generated row {pos}: {a} vs {b}");
                    }
                    let tiled = p.chunk(pos, pos + 1);
                    off = got.iter().zip(&tiled).map(|(a, b)| (a - b).abs()).fold(off, f32::max);
                }
                assert!(off > 0.0, "{what}: decode rows gave the bf16 tile's bits; they multiply in f32");
                let (len, prompt_rows) = (200, 150);
                let got = p.attend(0, len, prompt_rows);
                let qd = p.c.q_dim();
                let mut want = p.chunk(0, prompt_rows);
                for pos in prompt_rows..len {
                    want.extend(p.generated(pos));
                }
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: recompute");
                assert_eq!(got.len(), len * qd);
            }
        }
    }

    #[test]
    fn bf16_tiles_are_chosen_only_where_they_run_and_fit() {
        use AttentionPrecision::*;
        let here = bf16_tiles_run_here();
        assert_eq!(Auto.resolve(true, false, 64), Ok(here));
        assert_eq!(Auto.resolve(false, false, 64), Ok(false), "float matmuls");
        assert_eq!(Auto.resolve(true, true, 64), Ok(false), "chunk-invariant");
        assert_eq!(Auto.resolve(true, false, 6), Ok(false), "head size");
        assert_eq!(F32.resolve(true, false, 64), Ok(false));
        assert_eq!(Bf16.resolve(false, false, 64).is_ok(), here, "asked for, with any matmuls");
        for (invariant, d) in [(true, 64), (false, 6)] {
            let err = Bf16.resolve(true, invariant, d).expect_err("refused");
            assert!(err.starts_with("--attention-precision bf16 needs"), "{err}");
        }
    }

    /// A recompute after preemption is one chunk of the prompt and the tokens the
    /// sequence had generated: its prompt rows get the bits a prompt chunk gives them
    /// and its generated rows the bits their decode gave them, so the recomputed cache
    /// equals the original in either mode (long rows cut into parts included).
    #[test]
    fn a_recompute_gives_prompt_and_generated_rows_their_first_bits() {
        for invariant in [false, true] {
            for (len, prompt_rows) in [(60, 37), (60, 1), (60, 0), (1100, 1060)] {
                let p = Prompt::new(9, 3, 64, len, 16, KvDtype::Fp8, invariant);
                let got = p.attend(0, len, prompt_rows);
                let qd = p.c.q_dim();
                let mut want = p.chunk(0, prompt_rows.max(1));
                want.truncate(prompt_rows * qd);
                for pos in prompt_rows..len {
                    want.extend(p.generated(pos));
                }
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "invariant {invariant}, {prompt_rows} prompt rows of {len}"
                );
                p.check(0, &got, "recompute against dense");
            }
        }
    }

    /// A sequence's rows come out bit for bit the same alone and beside other
    /// sequences (a prefill chunk and decode rows), whichever goes first.
    #[test]
    fn a_sequence_gets_the_same_bits_alone_and_in_a_batch() {
        same_bits_alone_and_in_a_batch(false);
        same_bits_alone_and_in_a_batch(true);
    }

    fn same_bits_alone_and_in_a_batch(chunk_invariant: bool) {
        let (heads, kv_heads, d) = (9, 3, 64);
        let c = cfg_with(heads, kv_heads, d);
        let shape = shape(heads, kv_heads, d, chunk_invariant);
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
                prompt_rows: ids.len(),
                block_table: table,
                want_logits: false,
                all_logits: false,
            };
            let (k, v) = (pseudo(100 * kd, 20 + s as u32), pseudo(100 * kd, 30 + s as u32));
            write_kv(&mut cache, 0, &KvWrites::new(bs, &[span]), &k, &v);
        }
        // Sequence 0: a chunk of 37 rows from 40; 1 and 2: one decode row each.
        let spans = [
            SeqStep {
                id: 0,
                tokens: &ids[40..77],
                start_pos: 40,
                prompt_rows: ids[40..77].len(),
                block_table: &tables[0],
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 1,
                tokens: &ids[90..91],
                start_pos: 90,
                prompt_rows: 0,
                block_table: &tables[1],
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 2,
                tokens: &ids[60..61],
                start_pos: 60,
                prompt_rows: 0,
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
                assert!(same, "sequence {s} in order {order:?}, chunk invariant: {chunk_invariant}");
                at += n;
            }
        }
    }

    #[test]
    fn sequences_in_one_step_do_not_see_each_other() {
        let c = cfg();
        let shape = AttentionShape {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            chunk_invariant: false,
            bf16_tiles: false,
        };
        let (q, k, v) = (pseudo(3 * c.q_dim(), 4), pseudo(3 * c.kv_dim(), 5), pseudo(3 * c.kv_dim(), 6));
        let mut cache = PagedKvCache::new(&c, 4, 4, KvDtype::F32);
        let (ta, tb) = ([0u32], [1u32]);
        let spans = [
            SeqStep {
                id: 0,
                tokens: &[1, 2],
                start_pos: 0,
                prompt_rows: 2,
                block_table: &ta,
                want_logits: false,
                all_logits: false,
            },
            SeqStep {
                id: 1,
                tokens: &[3],
                start_pos: 0,
                prompt_rows: 1,
                block_table: &tb,
                want_logits: false,
                all_logits: false,
            },
        ];
        let plan = KvWrites::new(cache.block_size(), &spans);
        write_kv(&mut cache, 0, &plan, &k, &v);
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
