//! The threaded driver: quantizes the activations once, cuts the output into tasks of
//! (row chunk × run of groups) for rayon, and walks each task in register-sized tiles.
//!
//! Within a task every group's records are read from memory once and reused from L1 for
//! all row tiles of the chunk; the chunk's quantized activations stay in L2. At m = 1
//! the groups alone are split so that every thread has several tasks.

use std::cell::Cell;

use rayon::prelude::*;

use super::activations::QActs;
use super::dispatch::Kernel;
use super::gemm::{self, GateFn};
use super::layout::{GROUP, QK};
use super::prefetch::{prefetch, Level};
use super::select;
use super::tile::Tile;
use super::QMatrix;

/// Activation rows per task: their quantized bytes (`ROW_CHUNK * k`) should sit in L2.
const ROW_CHUNK: usize = 64;
/// Tasks per thread to aim for, so a thread slowed by a neighbour does not stall the call.
const TASKS_PER_THREAD: usize = 4;

thread_local! {
    /// Quantized-activation buffers, reused across calls on this thread.
    static SCRATCH: Cell<QActs> = Cell::new(QActs::default());
    /// A group's block scales, shared by its row tiles (see `select::select_keeping`).
    static BLOCK_SCALES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A raw output pointer that tasks share; each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint (row, column) ranges of the same buffer, and `run` does
// not return before every task has finished.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so a closure captures the `Sync` wrapper, not the field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// How `m × groups` is cut into tasks.
#[derive(Debug, PartialEq)]
pub(super) struct Plan {
    pub(super) rows_per_task: usize,
    pub(super) row_chunks: usize,
    pub(super) groups_per_task: usize,
    pub(super) group_chunks: usize,
}

impl Plan {
    /// `row_chunk`: the most rows a task takes ([`ROW_CHUNK`], or `gemm::ROW_CHUNK`).
    pub(super) fn new(m: usize, groups: usize, threads: usize, row_chunk: usize) -> Plan {
        let row_chunks = m.div_ceil(row_chunk).max(1);
        let rows_per_task = m.div_ceil(row_chunks).max(1);
        let want = (TASKS_PER_THREAD * threads).div_ceil(row_chunks);
        let groups_per_task = groups.div_ceil(want.clamp(1, groups.max(1))).max(1);
        Plan { rows_per_task, row_chunks, groups_per_task, group_chunks: groups.div_ceil(groups_per_task) }
    }
}

/// `out = x · Wᵀ` with `kernel`. The caller has checked the slice lengths.
pub fn run(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    with_quantized(kernel, x, m, w.k, |acts| run_quantized(kernel, w, acts, m, out));
}

/// [`run`] on activations already quantized for `kernel` (`m` rows of `acts`).
pub fn run_quantized(kernel: Kernel, w: &QMatrix, acts: &QActs, m: usize, out: &mut [f32]) {
    let row_chunk = if gemm::applies(kernel, w.format.id(), m) { gemm::ROW_CHUNK } else { ROW_CHUNK };
    let out = OutPtr(out.as_mut_ptr());
    drive(acts, m, w.groups, row_chunk, |acts, rows, groups| {
        // SAFETY: tasks cover disjoint (rows, groups) rectangles of `out`, which has
        // m * n elements.
        unsafe { run_task(kernel, w, acts, rows, groups, out) }
    });
}

/// For `w` the stack of a gate and an up projection of `width` rows each (a multiple
/// of 16): `out[i * width + j] = gate(g, u)` of row `i`'s gate and up outputs `j`, the
/// same bits as [`run`] followed by `gate` over each row. On the many-rows path the
/// gate is applied as each register block is finished, so the stack's outputs are
/// never written out; the row-tile walk computes the stack and gates it after.
pub fn run_gated(
    kernel: Kernel,
    w: &QMatrix,
    x: &[f32],
    m: usize,
    width: usize,
    gate: GateFn,
    out: &mut [f32],
) {
    if !gemm::applies(kernel, w.format.id(), m) {
        let mut both = vec![0.0; m * w.n];
        run(kernel, w, x, m, &mut both);
        gate_rows(&both, width, gate, out);
        return;
    }
    let out = OutPtr(out.as_mut_ptr());
    with_quantized(kernel, x, m, w.k, |acts| {
        drive(acts, m, width / GROUP, gemm::ROW_CHUNK, |acts, rows, groups| {
            let output = gemm::Output::Gated { out: out.ptr(), width, gate };
            // SAFETY: tasks cover disjoint (rows, gate groups) rectangles of `out`, which
            // has m * width elements.
            unsafe { gemm::run_task(kernel, w, acts, rows, groups, output) }
        })
    });
}

/// `out`'s rows are `gate(g, u)` of `both`'s rows (`width` gate outputs, then `width`
/// up outputs each). Rows spread over the pool from 32 of them, as the unfused gate did
/// (AVX2 prefill chunks under 128 rows and f32 activations come this way).
pub(super) fn gate_rows(both: &[f32], width: usize, gate: GateFn, out: &mut [f32]) {
    both.par_chunks_exact(2 * width).zip(out.par_chunks_exact_mut(width)).with_min_len(32).for_each(
        |(row, o)| {
            let (g, u) = row.split_at(width);
            gate(g, u, o);
        },
    );
}

/// Runs `f` on `x` (`m` rows of `k`) quantized for `kernel`, in this thread's buffer.
fn with_quantized(kernel: Kernel, x: &[f32], m: usize, k: usize, f: impl FnOnce(&QActs)) {
    // Taken, not borrowed: a nested call on this thread (rayon may run another task
    // here while this one waits) then simply starts with an empty buffer.
    let mut acts = SCRATCH.with(Cell::take);
    acts.quantize(kernel, x, m, k);
    f(&acts);
    SCRATCH.with(|s| s.set(acts));
}

/// Cuts `m` rows × `groups` into tasks and runs `task(acts, rows, groups)` for each on
/// rayon's threads.
fn drive(
    acts: &QActs,
    m: usize,
    groups: usize,
    row_chunk: usize,
    task: impl Fn(&QActs, std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    if m == 0 || groups == 0 {
        return;
    }
    let plan = Plan::new(m, groups, rayon::current_num_threads(), row_chunk);
    let tasks = plan.row_chunks * plan.group_chunks;
    let body = |t: usize| {
        let (rc, gc) = (t / plan.group_chunks, t % plan.group_chunks);
        let rows = rc * plan.rows_per_task..((rc + 1) * plan.rows_per_task).min(m);
        let range = gc * plan.groups_per_task..((gc + 1) * plan.groups_per_task).min(groups);
        task(acts, rows, range);
    };
    if tasks == 1 {
        body(0);
    } else {
        (0..tasks).into_par_iter().for_each(body);
    }
}

/// # Safety
/// `out` points at `m * n` floats; no other task writes rows `rows` × the columns of
/// `groups`.
unsafe fn run_task(
    kernel: Kernel,
    w: &QMatrix,
    acts: &QActs,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    out: OutPtr,
) {
    let format = w.format.id();
    if gemm::applies(kernel, format, rows.len()) {
        return gemm::run_task(kernel, w, acts, rows, groups, gemm::Output::Plain(out.0));
    }
    let tile_rows = select::rows_for(kernel, format);
    let full = select::select(kernel, format, tile_rows);
    let group_bytes = w.format.group_bytes(w.k);
    let data = w.data.as_slice();
    let tiles_per_group = (rows.end - rows.start).div_ceil(tile_rows);
    let groups_start = groups.start;
    let share_scales = tiles_per_group > 1 && select::keeps_block_scales(kernel, format);
    let mut scales = if share_scales { BLOCK_SCALES.with(Cell::take) } else { Vec::new() };
    scales.resize(if share_scales { w.k / QK * 2 * GROUP } else { 0 }, 0.0);
    let scales_ptr = scales.as_mut_ptr();
    for g in groups {
        let col0 = g * GROUP;
        // With several row tiles per group, only the first reads the group from memory
        // and the rest run from L1; each tile therefore pulls a share of the next group
        // in, so the memory traffic overlaps the compute instead of stalling the first
        // tile of every group. The last group of a task warms the next task's first
        // group, which some thread reads soon anyway.
        let next = data.get((g + 1) * group_bytes..(g + 2) * group_bytes).unwrap_or(&[]);
        let share = if tiles_per_group > 1 { next.len().div_ceil(tiles_per_group) } else { 0 };
        let mut tile_index = 0;
        let mut row0 = rows.start;
        while row0 < rows.end {
            if share > 0 {
                let from = (tile_index * share).min(next.len());
                prefetch(&next[from..(from + share).min(next.len())], Level::L1);
            }
            tile_index += 1;
            let mr = (rows.end - row0).min(tile_rows);
            let f = if share_scales {
                select::select_keeping(kernel, format, mr, row0 == rows.start)
            } else if mr == tile_rows {
                full
            } else {
                select::select(kernel, format, mr)
            };
            let t = Tile {
                w: &data[g * group_bytes..(g + 1) * group_bytes],
                acts,
                row0,
                // The kernel's own read-ahead is for a group nothing has prefetched: the
                // task's first, or any group when there is one tile per group.
                prefetch: row0 == rows.start && (tiles_per_group == 1 || g == groups_start),
                out: out.0.add(row0 * w.n + col0),
                ldo: w.n,
                ncols: (w.n - col0).min(GROUP),
                kept_scales: if share_scales { scales_ptr } else { std::ptr::null_mut() },
            };
            f(&t);
            row0 += mr;
        }
    }
    if share_scales {
        BLOCK_SCALES.with(|s| s.set(scales));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_plan_gives_every_thread_several_tasks() {
        let p = Plan::new(1, 96, 2, ROW_CHUNK);
        assert_eq!((p.row_chunks, p.rows_per_task), (1, 1));
        assert_eq!((p.groups_per_task, p.group_chunks), (12, 8));
        // Fewer groups than wanted tasks: one group each.
        let p = Plan::new(1, 5, 2, ROW_CHUNK);
        assert_eq!((p.groups_per_task, p.group_chunks), (1, 5));
    }

    #[test]
    fn prefill_plan_chunks_rows_evenly() {
        let p = Plan::new(130, 36, 2, ROW_CHUNK);
        assert_eq!((p.row_chunks, p.rows_per_task), (3, 44));
        assert_eq!(p.group_chunks, 3);
        let p = Plan::new(512, 36, 2, ROW_CHUNK);
        assert_eq!((p.row_chunks, p.rows_per_task, p.group_chunks), (8, 64, 1));
        // The many-rows path unpacks each group once per task: fewer, taller row
        // chunks, the groups split instead.
        let p = Plan::new(512, 36, 2, gemm::ROW_CHUNK);
        assert_eq!((p.row_chunks, p.rows_per_task, p.group_chunks), (2, 256, 4));
    }
}
