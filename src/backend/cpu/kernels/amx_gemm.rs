//! The AMX-INT8 many-rows path (Sapphire Rapids and later): prefill chunks.
//!
//! One `tdpbsud` multiplies a 16 × 32 tile of signed activation bytes (16 rows × one
//! block of 32 values, read in place from the quantized activations, `k` bytes apart)
//! by an 8 × 64 tile of unsigned weight bytes (one block of a group's 16 columns, four
//! values of each column per tile row: exactly the VNNI panel's quant lines) into a
//! 16 × 16 tile of 32-bit sums, the work of 128 `vpdpbusd`. Each tile row is then one
//! activation row's 16 column sums: stored, they take the block's scale and minimum
//! term in the portable kernel's order (AVX-512, a row per vector), so the outputs are
//! the same bits as every other kernel's, and each row's 16 outputs go out whole.
//!
//! The per-block scales are what bounds this path: every block's sums make a round
//! trip through memory (`tilestored`, then 16 vector loads) before the epilogue, so the
//! epilogue trails the tile unit by [`LAG`] blocks, and a task sweeps all its groups
//! with one tile of rows before the next, so its output stores (which would hold up the
//! sums stores queued behind them when they miss) run along rows. The integer sums are
//! exact, so the only instructions that could differ from the portable kernel's results
//! are the tile instructions themselves: [`Model`] renders their defined results in
//! plain Rust (the tests run the whole path through it on any AVX-512 host), and on an
//! AMX host [`enabled`] runs them against the portable kernel before first use.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::activations::QActs;
use super::gemm_panel::{offset, Line, Output, LINES_PER_BLOCK, MINS_LINE, SCALES_LINE};
use super::isa;
use super::layout::{record_shape, FMT_Q4K, FMT_Q4_0, FMT_Q4_1, FMT_Q8_0, GROUP, QK};
use super::prefetch::{prefetch_line, Level};
use super::QMatrix;

/// Rows a task needs for the tiles: prefill chunks. Decode batches (16-64 rows) ran no
/// faster on the tiles than on VNNI, and batch 16 up to 15% slower: their weights come
/// from memory, so they pay the tiles' sums round trip without the reuse.
pub const MIN_ROWS: usize = 128;
/// Activation rows per tile.
const TILE_ROWS: usize = 16;
/// Blocks in the tile unit at once: each has its own `A`, `B` and `C` tile.
const SLOTS: usize = 2;
/// Blocks the epilogue trails the tile unit by: a block's sums are read back this many
/// blocks after `tilestored` wrote them, so the loads do not wait on the stores.
const LAG: usize = 2;
/// Blocks ahead of the tile unit whose panel lines are prefetched.
const AHEAD: usize = 4;
/// Buffers for stored sums: a block's stay until its epilogue, `LAG` blocks later.
const RING: usize = LAG + 1;

/// The tile operations the kernel uses.
///
/// # Safety
/// Every pointer must be valid for the bytes the operation reads or writes, and
/// `configure` must precede the other operations on the same thread.
pub trait Tiles {
    unsafe fn configure(&mut self);
    /// One block's sums in slot `slot` (0 or 1): `C = A · B`, `A` 16 rows of 32 signed
    /// bytes `stride` apart, `B` 8 rows of 64 unsigned bytes back to back, and `C`
    /// (`C[m][n] = Σₖ Σₜ A[m][4k + t] · B[k][4n + t]`) stored as 16 rows of 16 i32 at
    /// `sums`.
    unsafe fn block(&mut self, slot: usize, a: *const i8, stride: usize, b: *const u8, sums: *mut i32);
    unsafe fn release(&mut self);
}

/// The AMX instructions: slot 0 is `tmm0` (C), `tmm2` (A), `tmm4` (B); slot 1 is
/// `tmm1`, `tmm3`, `tmm5`.
pub struct Hardware;

/// `ldtilecfg`'s 64-byte operand: palette 1; tiles 0-1 are 16 rows of 64 bytes, 2-3
/// 16 rows of 32 bytes, 4-5 8 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let shapes = [(16u8, 64u16), (16, 64), (16, 32), (16, 32), (8, 64), (8, 64)];
        for (tile, (rows, bytes)) in shapes.into_iter().enumerate() {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&bytes.to_le_bytes());
            c[48 + tile] = rows;
        }
        TileConfig(c)
    }
}

impl Tiles for Hardware {
    unsafe fn configure(&mut self) {
        let config = TileConfig::new();
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    }
    unsafe fn block(&mut self, slot: usize, a: *const i8, stride: usize, b: *const u8, sums: *mut i32) {
        if slot == 0 {
            asm!(
                "tilezero tmm0",
                "tileloadd tmm2, [{a} + {stride}*1]",
                "tileloadd tmm4, [{b} + {row}*1]",
                "tdpbsud tmm0, tmm2, tmm4",
                "tilestored [{c} + {row}*1], tmm0",
                a = in(reg) a, b = in(reg) b, c = in(reg) sums, stride = in(reg) stride, row = in(reg) 64usize,
                options(nostack),
            );
        } else {
            asm!(
                "tilezero tmm1",
                "tileloadd tmm3, [{a} + {stride}*1]",
                "tileloadd tmm5, [{b} + {row}*1]",
                "tdpbsud tmm1, tmm3, tmm5",
                "tilestored [{c} + {row}*1], tmm1",
                a = in(reg) a, b = in(reg) b, c = in(reg) sums, stride = in(reg) stride, row = in(reg) 64usize,
                options(nostack),
            );
        }
    }
    unsafe fn release(&mut self) {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The tile instructions' defined results in plain Rust (Intel SDM, `TDPBSUD`): the
/// stand-in for AMX on machines without it, so the rest of the path is tested there.
#[cfg(test)]
pub struct Model;

#[cfg(test)]
impl Tiles for Model {
    unsafe fn configure(&mut self) {}
    unsafe fn block(&mut self, slot: usize, a: *const i8, stride: usize, b: *const u8, sums: *mut i32) {
        assert!(slot < SLOTS);
        for m in 0..16 {
            for n in 0..16 {
                let mut sum = 0i32;
                for k in 0..8 {
                    for t in 0..4 {
                        sum +=
                            i32::from(*a.add(m * stride + 4 * k + t)) * i32::from(*b.add(64 * k + 4 * n + t));
                    }
                }
                *sums.add(16 * m + n) = sum;
            }
        }
    }
    unsafe fn release(&mut self) {}
}

/// Whether the many-rows path runs on AMX in this process: not turned off with
/// `INFLIGHT_AMX=0`, the CPU has AMX-TILE and AMX-INT8 and AVX-512, the kernel lets
/// this process use the tile registers, and the instructions reproduce the portable
/// kernel on a small problem. Decided once, on first use.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        if !available() {
            return false;
        }
        let ok = agrees_with_portable(|| Hardware);
        if ok {
            tracing::info!("AMX-INT8 tiles in use for many-row matmuls");
        } else {
            tracing::error!("AMX-INT8 tile kernel disagrees with the portable one; not using it");
        }
        ok
    })
}

/// The CPU has AMX-INT8 and AVX-512 VNNI, and this process may use the tiles.
fn available() -> bool {
    isa::amx_int8() && isa::amx_tiles_granted()
}

/// Runs the formats this path takes through `tiles` and the portable kernel, plain and
/// gated, with a ragged last group and a ragged last tile of rows, and compares the
/// results exactly.
pub fn agrees_with_portable<T: Tiles>(tiles: impl Fn() -> T) -> bool {
    use super::dispatch::{self_check_activations, self_check_matrix, Kernel, SELF_CHECK_K};
    use super::layout::WeightFormat;
    let m = TILE_ROWS + 7;
    let x = self_check_activations(m);
    let mut acts = QActs::default();
    acts.quantize(Kernel::Portable, &x, m, SELF_CHECK_K);
    [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q4K, WeightFormat::Q8_0].into_iter().all(
        |format| {
            let Some(w) = self_check_matrix(format) else {
                return false;
            };
            let mut want = vec![0.0; m * w.n];
            w.matmul_with(Kernel::Portable, &x, m, &mut want);
            let mut got = vec![f32::NAN; m * w.n];
            // SAFETY: AVX-512 is available (checked by the callers), `got` holds m × n.
            unsafe { run_task(&mut tiles(), &w, &acts, 0..m, 0..w.groups, Output::Plain(got.as_mut_ptr())) };
            // Gated: the first group as the gate, the second (its first `n - 16`
            // columns real) as the up projection.
            let (width, live) = (GROUP, w.n - GROUP);
            let mut gated = vec![f32::NAN; m * width];
            let output = Output::Gated { out: gated.as_mut_ptr(), width, gate: check_gate };
            // SAFETY: as above; the matrix has two groups, `gated` holds m × 16.
            unsafe { run_task(&mut tiles(), &w, &acts, 0..m, 0..1, output) };
            let gated_ok = (0..m).all(|r| {
                let (g, u) = (&want[r * w.n..][..live], &want[r * w.n + GROUP..][..live]);
                let mut expect = vec![0.0; live];
                check_gate(g, u, &mut expect);
                gated[r * width..][..live] == expect[..]
            });
            want == got && gated_ok
        },
    )
}

/// The self-check's gate: any function of both operands.
fn check_gate(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
        *o = g * 0.5 - u;
    }
}

/// Whether this path takes `format` for a task of `rows` rows (with [`enabled`]).
pub fn applies(format: u8, rows: usize) -> bool {
    rows >= MIN_ROWS && matches!(format, FMT_Q4_1 | FMT_Q4_0 | FMT_Q8_0 | FMT_Q4K)
}

thread_local! {
    static BUFFERS: Cell<Buffers> = Cell::new(Buffers::default());
}

/// What a task keeps between its groups: their panels, a short last tile of rows
/// padded to 16, and the stored sums.
#[derive(Default)]
struct Buffers {
    /// The task's groups (each gate group followed by its up group), each
    /// `nb · LINES_PER_BLOCK` lines.
    panel: Vec<Line>,
    /// The task's last rows when they do not fill a tile: their quants and per-block
    /// factors, then zero rows up to 16.
    tail: QActs,
    /// Blocks' integer sums, stored from the `C` tiles until their epilogue.
    sums: Vec<Sums>,
}

/// Computes rows `rows` of `output` for the columns of `groups` (for `Gated`, the gate's
/// groups, each with its up group), as `gemm::run_task`.
///
/// # Safety
/// As `gemm::run_task`; AVX-512 F, BW and VNNI must be available, and for
/// [`Hardware`], [`enabled`] must have returned true.
pub unsafe fn run_task<T: Tiles>(
    tiles: &mut T,
    w: &QMatrix,
    acts: &QActs,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    output: Output,
) {
    match w.format.id() {
        FMT_Q4_1 => task::<FMT_Q4_1, T>(tiles, w, acts, rows, groups, output),
        FMT_Q4_0 => task::<FMT_Q4_0, T>(tiles, w, acts, rows, groups, output),
        FMT_Q4K => task::<FMT_Q4K, T>(tiles, w, acts, rows, groups, output),
        _ => task::<FMT_Q8_0, T>(tiles, w, acts, rows, groups, output),
    }
}

/// [`run_task`] for format `F`: unpack every group of the task (and each gate's up
/// group), then sweep them all with one tile of rows after another.
///
/// # Safety
/// As [`run_task`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn task<const F: u8, T: Tiles>(
    tiles: &mut T,
    w: &QMatrix,
    acts: &QActs,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    output: Output,
) {
    let nb = acts.nb;
    let mut buf = BUFFERS.with(Cell::take);
    let live_in_tail = rows.len() % TILE_ROWS;
    if live_in_tail != 0 {
        pad_tail(acts, rows.end - live_in_tail..rows.end, &mut buf.tail);
    }
    let group_lines = nb * LINES_PER_BLOCK;
    let group_bytes = w.format.group_bytes(w.k);
    let data = w.data.as_slice();
    // Every group of the task is unpacked first (a gated task: each gate group, then
    // its up group), so a tile of rows can sweep them all in turn: its outputs are
    // then written along its rows, streams the prefetchers follow, instead of a line
    // in each of 16 rows per group. Output stores that miss hold up the sums stores
    // queued behind them, and with those the epilogue.
    let members = match output {
        Output::Plain(_) => 1,
        Output::Gated { .. } => 2,
    };
    buf.panel.resize(groups.len() * members * group_lines, Line([0; 64]));
    for (i, g) in groups.clone().enumerate() {
        for n in 0..members {
            let group = match output {
                Output::Gated { width, .. } if n == 1 => g + width / GROUP,
                _ => g,
            };
            let bytes = &data[group * group_bytes..(group + 1) * group_bytes];
            let at = (i * members + n) * group_lines;
            super::avx512_gemm::pack::<F>(bytes, nb, &mut buf.panel[at..at + group_lines]);
        }
    }
    buf.sums.resize(RING, Sums([0; 256]));
    let sums = &mut buf.sums[..];
    // A gated pair's gate and up outputs for one tile of rows.
    let mut gates = [[0.0f32; GROUP]; TILE_ROWS];
    let mut ups = [[0.0f32; GROUP]; TILE_ROWS];
    tiles.configure();
    for tile in 0..rows.len().div_ceil(TILE_ROWS) {
        let row0 = rows.start + tile * TILE_ROWS;
        let live = (rows.end - row0).min(TILE_ROWS);
        let src = if live == TILE_ROWS { RowTile::of(acts, row0) } else { RowTile::of(&buf.tail, 0) };
        for (i, g) in groups.clone().enumerate() {
            let panel = |n: usize| &buf.panel[(i * members + n) * group_lines..][..group_lines];
            match output {
                Output::Plain(out) => {
                    let cols = (w.n - g * GROUP).min(GROUP);
                    let dst = Dest { out: out.add(row0 * w.n + g * GROUP), ldo: w.n, rows: live, cols };
                    sweep::<F, T>(tiles, &src, panel(0), sums, dst);
                }
                Output::Gated { out, width, gate } => {
                    let dst = |values: &mut [[f32; GROUP]; TILE_ROWS]| Dest {
                        out: values.as_mut_ptr().cast(),
                        ldo: GROUP,
                        rows: TILE_ROWS,
                        cols: GROUP,
                    };
                    sweep::<F, T>(tiles, &src, panel(0), sums, dst(&mut gates));
                    sweep::<F, T>(tiles, &src, panel(1), sums, dst(&mut ups));
                    for r in 0..live {
                        let dst =
                            std::slice::from_raw_parts_mut(out.add((row0 + r) * width + g * GROUP), GROUP);
                        gate(&gates[r], &ups[r], dst);
                    }
                }
            }
        }
    }
    tiles.release();
    BUFFERS.with(|b| b.set(buf));
}

/// `rows` (fewer than 16) of `acts` into `tail`, followed by zero rows up to 16.
fn pad_tail(acts: &QActs, rows: std::ops::Range<usize>, tail: &mut QActs) {
    let (k, nb) = (acts.k, acts.nb);
    (tail.k, tail.nb) = (k, nb);
    let live = rows.len();
    tail.qs.clear();
    tail.qs.extend_from_slice(&acts.qs[rows.start * k..rows.end * k]);
    tail.qs.resize(TILE_ROWS * k, 0);
    for (mine, theirs) in [(&mut tail.d, &acts.d), (&mut tail.s, &acts.s)] {
        mine.clear();
        mine.extend_from_slice(&theirs[rows.start * nb..rows.end * nb]);
        mine.resize(TILE_ROWS * nb, 0.0);
    }
    tail.isum.clear();
    tail.isum.extend_from_slice(&acts.isum[rows.start * nb..rows.end * nb]);
    tail.isum.resize(TILE_ROWS * nb, 0);
    debug_assert_eq!(tail.qs.len(), TILE_ROWS * k, "{live} rows padded");
}

/// 16 rows of quantized activations as a sweep reads them: row `r`'s quants at
/// `qs + r · k` (an `A` tile is a block's 32 bytes of each, `k` apart), its block
/// factors at `r · nb` of `d`, `s` and `isum`.
struct RowTile {
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    isum: *const i32,
    k: usize,
    nb: usize,
}

impl RowTile {
    /// Rows `row0..row0 + 16` of `acts`, which must hold them.
    fn of(acts: &QActs, row0: usize) -> RowTile {
        let (k, nb) = (acts.k, acts.nb);
        assert!(acts.qs.len() >= (row0 + TILE_ROWS) * k && acts.d.len() >= (row0 + TILE_ROWS) * nb);
        assert!(acts.s.len() >= (row0 + TILE_ROWS) * nb && acts.isum.len() >= (row0 + TILE_ROWS) * nb);
        RowTile {
            qs: acts.qs[row0 * k..].as_ptr(),
            d: acts.d[row0 * nb..].as_ptr(),
            s: acts.s[row0 * nb..].as_ptr(),
            isum: acts.isum[row0 * nb..].as_ptr(),
            k,
            nb,
        }
    }
}

/// The integer sums as stored from a `C` tile: row `m` at `16 m`.
#[derive(Clone)]
#[repr(C, align(64))]
struct Sums([i32; 256]);

/// Where a sweep's outputs go: row `r`, column `c` at `out + r · ldo + c`, for the
/// first `rows` rows and `cols` columns.
struct Dest {
    out: *mut f32,
    ldo: usize,
    rows: usize,
    cols: usize,
}

/// One tile of activation rows against one group's panel over all blocks, into `dst`.
/// Each block's integer sums come from the tiles; each output then takes
/// `fma(sum, dw · dx)` and, with minimums, `fma(mw, sx)`, block by block, as in the
/// portable kernel. The 16 rows' accumulators stay in registers.
///
/// # Safety
/// As [`run_task`]; `src` must hold its 16 rows of `panel.len() / 10` blocks, and `dst`
/// be valid for its rows and columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn sweep<const F: u8, T: Tiles>(
    tiles: &mut T,
    src: &RowTile,
    panel: &[Line],
    sums: &mut [Sums],
    dst: Dest,
) {
    let nb = panel.len() / LINES_PER_BLOCK;
    assert!(nb <= src.nb && sums.len() >= RING);
    let has_mins = record_shape(F).has_mins;
    let off = offset(F);
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS];
    // Step `t` starts block `t` in the tile unit and finishes block `t - LAG`.
    for t in 0..nb + LAG {
        if t < nb {
            // The panel comes from L2 (a tile of rows sweeps all the task's groups), and
            // a tile load waits for its lines: ask for a later block's now.
            let ahead = panel.as_ptr().wrapping_add((t + AHEAD) * LINES_PER_BLOCK);
            for line in 0..LINES_PER_BLOCK {
                prefetch_line(ahead.wrapping_add(line), Level::L1);
            }
            let b = panel.as_ptr().add(t * LINES_PER_BLOCK).cast();
            tiles.block(t % SLOTS, src.qs.add(t * QK), src.k, b, sums[t % RING].0.as_mut_ptr());
        }
        let Some(blk) = t.checked_sub(LAG) else {
            continue;
        };
        let block_sums = sums[blk % RING].0.as_ptr();
        let line = panel.as_ptr().add(blk * LINES_PER_BLOCK);
        let dw = _mm512_load_ps(line.add(SCALES_LINE).cast());
        let mw = _mm512_load_ps(line.add(MINS_LINE).cast());
        for (r, acc) in acc.iter_mut().enumerate() {
            let at = r * src.nb + blk;
            let mut sum = _mm512_load_si512(block_sums.add(16 * r).cast());
            if off != 0 {
                sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(off * *src.isum.add(at)));
            }
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*src.d.add(at)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, *acc);
            if has_mins {
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*src.s.add(at)), *acc);
            }
        }
    }
    let mask: __mmask16 = if dst.cols >= 16 { 0xffff } else { (1u16 << dst.cols) - 1 };
    for (r, acc) in acc.iter().enumerate().take(dst.rows) {
        _mm512_mask_storeu_ps(dst.out.add(r * dst.ldo), mask, *acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything but the instructions, through the model: the same bits as the
    /// portable kernel for every format this path takes, plain and gated.
    #[test]
    fn the_tile_path_matches_the_portable_kernel_through_the_model() {
        if !super::super::isa::avx512f_bw_vnni() {
            return; // the epilogue is AVX-512
        }
        assert!(agrees_with_portable(|| Model));
    }

    /// Prefill-sized tasks (several tiles of rows, a ragged last tile, several groups,
    /// plain and gated) through the model, and through the instructions where this CPU
    /// has them, against the portable kernel bit for bit.
    #[test]
    fn prefill_sized_tasks_match_the_portable_kernel() {
        use super::super::dispatch::{pattern_matrix, self_check_activations, Kernel, SELF_CHECK_K};
        use super::super::layout::WeightFormat;
        if !super::super::isa::avx512f_bw_vnni() {
            return;
        }
        fn gate(g: &[f32], u: &[f32], out: &mut [f32]) {
            for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                *o = g * u - 0.25 * g;
            }
        }
        let hardware = available();
        for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q4K, WeightFormat::Q8_0] {
            let (n, k) = (64, SELF_CHECK_K);
            let w = pattern_matrix(format, n, k).expect("pattern matrix");
            for m in [128, 131, 150] {
                let x = self_check_activations(m);
                let mut acts = QActs::default();
                acts.quantize(Kernel::Portable, &x, m, k);
                let mut want = vec![0.0; m * n];
                w.matmul_with(Kernel::Portable, &x, m, &mut want);
                let width = n / 2;
                let mut want_gated = vec![0.0; m * width];
                for (row, o) in want.chunks(n).zip(want_gated.chunks_mut(width)) {
                    gate(&row[..width], &row[width..], o);
                }
                let check = |run: &mut dyn FnMut(std::ops::Range<usize>, Output)| {
                    let mut got = vec![f32::NAN; m * n];
                    run(0..w.groups, Output::Plain(got.as_mut_ptr()));
                    assert_eq!(got, want, "{format:?} m={m} plain");
                    let mut gated = vec![f32::NAN; m * width];
                    run(0..w.groups / 2, Output::Gated { out: gated.as_mut_ptr(), width, gate });
                    assert_eq!(gated, want_gated, "{format:?} m={m} gated");
                };
                // SAFETY: AVX-512 is available; the outputs hold m × n and m × width.
                check(&mut |groups, out| unsafe { run_task(&mut Model, &w, &acts, 0..m, groups, out) });
                if hardware {
                    // SAFETY: as above, and `available` granted the tiles.
                    check(&mut |groups, out| unsafe {
                        run_task(&mut Hardware, &w, &acts, 0..m, groups, out)
                    });
                }
            }
        }
    }

    /// The instructions themselves, where this CPU has them (the start-up check, run as
    /// a test so `cargo test` on an AMX host exercises the hardware path).
    #[test]
    fn the_tile_instructions_match_the_portable_kernel_on_an_amx_host() {
        if !available() {
            return;
        }
        assert!(agrees_with_portable(|| Hardware));
    }

    #[test]
    fn the_tile_configuration_names_the_six_tiles() {
        let c = TileConfig::new().0;
        assert_eq!(c[0], 1, "palette");
        assert_eq!(
            &c[16..28],
            &[64, 0, 64, 0, 32, 0, 32, 0, 64, 0, 64, 0],
            "bytes per row of C, C, A, A, B, B"
        );
        assert_eq!(&c[48..54], &[16, 16, 16, 16, 8, 8], "rows of C, C, A, A, B, B");
        assert!(c[1..16].iter().chain(&c[28..48]).chain(&c[54..]).all(|&b| b == 0));
    }
}
