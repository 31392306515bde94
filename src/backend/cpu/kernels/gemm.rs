//! The many-rows path (prefill chunks, large batches): a task's weight groups are
//! unpacked once into a panel of plain bytes and per-block f32 scales, and the panel is
//! then swept by a register-blocked micro-kernel of `MR` activation rows × `NR` groups.
//!
//! The row-tile walk (`tile`) unpacks a group's nibbles and converts its f16 scales again
//! for every tile of rows; here that work is done once per group and task, and each
//! activation byte broadcast feeds `NR` groups' multiply-adds. Only the order of the
//! integer products inside a block changes, and integer sums do not depend on it: every
//! output gets the same per-block integer sum and then the same sequence of f32 fused
//! multiply-adds as in the portable kernel, so results are bit-identical and a row's
//! output never depends on which other rows share its call.

use std::cell::Cell;

use super::activations::QActs;
use super::dispatch::Kernel;
use super::gemm_panel::{Block, Line, MicroFn, PackFn, LINES_PER_BLOCK, MR, NR};
use super::layout::{FMT_Q4K, FMT_Q4_0, FMT_Q4_1, FMT_Q8_0, GROUP, QK};
use super::QMatrix;

/// Most rows per task on this path (the row-tile walk takes 64): each task unpacks its
/// groups once, so taller tasks unpack less often, and 256 rows of quantized
/// activations (up to 384 KiB at k = 1536) still sit in L2.
pub const ROW_CHUNK: usize = 256;
/// A task needs at least this many rows for the panel's unpacking to pay off.
pub const MIN_ROWS: usize = 8;

thread_local! {
    static PANEL: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Whether the many-rows path runs `format` on `kernel` for a task of `rows` rows.
pub fn applies(kernel: Kernel, format: u8, rows: usize) -> bool {
    rows >= MIN_ROWS
        && kernel == Kernel::Avx512Vnni
        && cfg!(target_arch = "x86_64")
        && matches!(format, FMT_Q4_1 | FMT_Q4_0 | FMT_Q8_0 | FMT_Q4K)
}

/// Computes rows `rows` × the columns of `groups` of `out`, as `matmul::run_task`.
///
/// # Safety
/// As `matmul::run_task`; `applies(kernel, w.format.id(), rows.len())` holds.
pub unsafe fn run_task(
    kernel: Kernel,
    w: &QMatrix,
    acts: &QActs,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    out: *mut f32,
) {
    let format = w.format.id();
    debug_assert!(applies(kernel, format, rows.len()));
    let nb = w.k / QK;
    let group_lines = nb * LINES_PER_BLOCK;
    let group_bytes = w.format.group_bytes(w.k);
    let data = w.data.as_slice();
    let pack = select_pack(format);
    let mut panel = PANEL.with(Cell::take);
    panel.resize(NR * group_lines, Line([0; 64]));
    let mut g = groups.start;
    while g < groups.end {
        let nr = (groups.end - g).min(NR);
        let mut ncols = [0; NR];
        for (n, cols) in ncols.iter_mut().enumerate().take(nr) {
            let group = g + n;
            pack(
                &data[group * group_bytes..(group + 1) * group_bytes],
                nb,
                &mut panel[n * group_lines..][..group_lines],
            );
            *cols = (w.n - group * GROUP).min(GROUP);
        }
        let mut row0 = rows.start;
        while row0 < rows.end {
            let mr = (rows.end - row0).min(MR);
            let block = Block {
                panel: &panel[..nr * group_lines],
                acts,
                row0,
                out: out.add(row0 * w.n + g * GROUP),
                ldo: w.n,
                ncols,
            };
            select_micro(format, mr, nr)(&block);
            row0 += mr;
        }
        g += nr;
    }
    PANEL.with(|p| p.set(panel));
}

fn select_pack(format: u8) -> PackFn {
    #[cfg(target_arch = "x86_64")]
    {
        use super::avx512_gemm::pack;
        match format {
            FMT_Q4_1 => pack::<FMT_Q4_1>,
            FMT_Q4_0 => pack::<FMT_Q4_0>,
            FMT_Q4K => pack::<FMT_Q4K>,
            _ => pack::<FMT_Q8_0>,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the many-rows path is x86-64 only (`applies`)")
}

fn select_micro(format: u8, mr: usize, nr: usize) -> MicroFn {
    #[cfg(target_arch = "x86_64")]
    {
        use super::avx512_gemm::micro;
        macro_rules! by_rows {
            ($fmt:expr, $nr:expr) => {
                match mr {
                    1 => micro::<$fmt, 1, $nr> as MicroFn,
                    2 => micro::<$fmt, 2, $nr> as MicroFn,
                    3 => micro::<$fmt, 3, $nr> as MicroFn,
                    4 => micro::<$fmt, 4, $nr> as MicroFn,
                    5 => micro::<$fmt, 5, $nr> as MicroFn,
                    _ => micro::<$fmt, 6, $nr> as MicroFn,
                }
            };
        }
        macro_rules! by_groups {
            ($fmt:expr) => {
                if nr == 1 {
                    by_rows!($fmt, 1)
                } else {
                    by_rows!($fmt, 2)
                }
            };
        }
        debug_assert!((1..=MR).contains(&mr) && (1..=NR).contains(&nr));
        match format {
            FMT_Q4_1 => by_groups!(FMT_Q4_1),
            FMT_Q4_0 => by_groups!(FMT_Q4_0),
            FMT_Q4K => by_groups!(FMT_Q4K),
            _ => by_groups!(FMT_Q8_0),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the many-rows path is x86-64 only (`applies`)")
}
