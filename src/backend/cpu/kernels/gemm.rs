//! The many-rows path (prefill chunks, decode batches; on AVX-512 VNNI every row count
//! of the formats it serves): a task's weight groups are unpacked once into a panel of
//! plain bytes and per-block f32 scales, and the panel is then swept by a
//! register-blocked micro-kernel of activation rows × groups (AVX-512 VNNI: `MR` rows ×
//! `NR` groups; AVX2: `avx2_gemm::ROWS` rows × one group). A short task on AVX-512
//! skips the panel: its micro-kernel calls read the records and unpack each block in
//! registers ([`RECORDS_MAX_ROWS`]).
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
pub use super::gemm_panel::{GateFn, Output};
use super::layout::{FMT_Q4K, FMT_Q4_0, FMT_Q4_1, FMT_Q5K, FMT_Q5_0, FMT_Q5_1, FMT_Q8_0, GROUP, QK};
use super::QMatrix;

/// Most rows per task on this path (the row-tile walk takes 64): each task unpacks its
/// groups once, so taller tasks unpack less often, and 256 rows of quantized
/// activations (up to 384 KiB at k = 1536) still sit in L2.
pub const ROW_CHUNK: usize = 256;
/// Rows a task needs for this path to pay off, by kernel. On AVX2 the row tile already
/// reuses each unpacked block over 8 rows and the micro-kernel saves little more than
/// the unpacking: decode batches of 16 and 32 ran 4-11% slower through the panel, a
/// 128-row prefill broke even and 256-row tasks gained 3-8% (`INFLIGHT_KERNEL=avx2`,
/// step bench, on an AVX-512 host). On AVX-512 VNNI every row count takes it: short
/// tasks read the records in place ([`RECORDS_MAX_ROWS`]), and that beat the row-tile
/// walk from one row up (`benches/results/2026-12-07-records-in-place/`).
pub fn min_rows(kernel: Kernel) -> usize {
    match kernel {
        Kernel::Avx2 => 128,
        _ => 1,
    }
}

/// Tasks of at most this many rows (AVX-512 VNNI) skip the panel: the micro-kernel
/// reads the groups' records and unpacks each block in registers, once per call. The
/// panel's stores and reloads are paid back only when many row blocks share them;
/// with a decode batch's few calls per group they cost more than unpacking again
/// (figures in `benches/results/2026-12-07-records-in-place/`).
pub const RECORDS_MAX_ROWS: usize = 64;

thread_local! {
    static PANEL: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Whether the many-rows path runs `format` on `kernel` for a task of `rows` rows. The
/// Q5 formats take it on AVX-512 VNNI only: the AVX2 micro-kernel adds a 4-bit block's
/// products up in 16 bits, where five-bit values could overflow.
pub fn applies(kernel: Kernel, format: u8, rows: usize) -> bool {
    let formats = match kernel {
        Kernel::Avx512Vnni => {
            matches!(format, FMT_Q4_1 | FMT_Q4_0 | FMT_Q8_0 | FMT_Q4K | FMT_Q5_0 | FMT_Q5_1 | FMT_Q5K)
        }
        Kernel::Avx2 => matches!(format, FMT_Q4_1 | FMT_Q4_0 | FMT_Q8_0 | FMT_Q4K),
        Kernel::Portable => false,
    };
    formats && rows >= min_rows(kernel) && cfg!(target_arch = "x86_64")
}

/// The register block of `kernel`'s micro-kernel: rows, groups.
fn block_shape(kernel: Kernel) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2 {
        return (super::avx2_gemm::ROWS, 1);
    }
    let _ = kernel;
    (MR, NR)
}

/// Computes rows `rows` of `output`: the columns of `groups` (for `Gated`, the gate's
/// groups, each with its up group), as `matmul::run_task`.
///
/// # Safety
/// As `matmul::run_task`: `output` points at the call's whole result and no other task
/// writes these rows of these groups' columns. The rows may be fewer than
/// `min_rows(kernel)` (a short last row chunk); `kernel` is AVX-512 VNNI or AVX2.
pub unsafe fn run_task(
    kernel: Kernel,
    w: &QMatrix,
    acts: &QActs,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    output: Output,
) {
    let format = w.format.id();
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512Vnni
        && super::amx_gemm::applies(format, rows.len())
        && super::amx_gemm::enabled()
    {
        return super::amx_gemm::run_task(&mut super::amx_gemm::Hardware, w, acts, rows, groups, output);
    }
    let nb = w.k / QK;
    let group_lines = nb * LINES_PER_BLOCK;
    let group_bytes = w.format.group_bytes(w.k);
    let data = w.data.as_slice();
    let bytes_of = |group: usize| data.get(group * group_bytes..(group + 1) * group_bytes).unwrap_or(&[]);
    let pack = select_pack(kernel, format);
    let (mr_max, nr_max) = block_shape(kernel);
    let in_place = kernel == Kernel::Avx512Vnni && rows.len() <= RECORDS_MAX_ROWS;
    let mut panel = PANEL.with(Cell::take);
    if !in_place {
        panel.resize(NR.max(nr_max) * group_lines, Line([0; 64]));
    }
    // A gated register block's outputs, `2 · GROUP` per row, before the gate.
    let mut staged = [0.0f32; 2 * GROUP * MR];
    let mut g = groups.start;
    while g < groups.end {
        // The groups swept together: `nr` consecutive ones, or a gate group and its up.
        let (members, nr, next): ([usize; NR], usize, [usize; NR]) = match output {
            Output::Plain(_) => {
                let nr = (groups.end - g).min(nr_max);
                ([g, g + 1], nr, [g + nr, g + nr + 1])
            }
            Output::Gated { width, .. } => {
                let up = width / GROUP;
                ([g, g + up], 2, [g + 1, g + 1 + up])
            }
        };
        let mut ncols = [0; NR];
        let mut records: [&[u8]; NR] = [&[], &[]];
        for (n, (&group, cols)) in members.iter().zip(&mut ncols).enumerate().take(nr) {
            if in_place {
                records[n] = bytes_of(group);
            } else {
                pack(bytes_of(group), nb, &mut panel[n * group_lines..][..group_lines]);
            }
            *cols = (w.n - group * GROUP).min(GROUP);
        }
        // The next groups come from memory (a decode batch) or L2 while these are swept:
        // each micro-kernel call asks for a share of them (`Block::ahead`), so the loads
        // overlap the compute instead of stalling the next packing.
        let ahead = match output {
            Output::Plain(_) => [bytes_of(next[0]), if nr_max > 1 { bytes_of(next[1]) } else { &[] }],
            Output::Gated { .. } => [bytes_of(next[0]), bytes_of(next[1])],
        };
        let calls = rows.len().div_ceil(mr_max);
        let shares = ahead.map(|a| a.len().div_ceil(calls).next_multiple_of(64));
        let mut row0 = rows.start;
        while row0 < rows.end {
            let mr = (rows.end - row0).min(mr_max);
            let call = (row0 - rows.start) / mr_max;
            let share = [0, 1].map(|n| {
                let from = (call * shares[n]).min(ahead[n].len());
                &ahead[n][from..(from + shares[n]).min(ahead[n].len())]
            });
            let (dst, ldo) = match output {
                Output::Plain(out) => (out.add(row0 * w.n + g * GROUP), w.n),
                Output::Gated { .. } => (staged.as_mut_ptr(), 2 * GROUP),
            };
            if nr <= nr_max {
                let block = Block {
                    panel: if in_place { &[] } else { &panel[..nr * group_lines] },
                    acts,
                    row0,
                    out: dst,
                    ldo,
                    ncols,
                    ahead: share,
                    records,
                };
                select_micro(kernel, format, mr, nr, in_place)(&block);
            } else {
                // A kernel that sweeps one group at a time (AVX2), through a gated pair.
                for n in 0..nr {
                    let block = Block {
                        panel: &panel[n * group_lines..][..group_lines],
                        acts,
                        row0,
                        out: dst.add(n * GROUP),
                        ldo,
                        ncols: [ncols[n], 0],
                        ahead: if n == 0 { share } else { [&[], &[]] },
                        records: [&[], &[]],
                    };
                    select_micro(kernel, format, mr, 1, false)(&block);
                }
            }
            if let Output::Gated { out, width, gate } = output {
                for (r, both) in staged.chunks_exact(2 * GROUP).take(mr).enumerate() {
                    let (gates, ups) = both.split_at(GROUP);
                    let dst = std::slice::from_raw_parts_mut(out.add((row0 + r) * width + g * GROUP), GROUP);
                    gate(gates, ups, dst);
                }
            }
            row0 += mr;
        }
        g += match output {
            Output::Plain(_) => nr,
            Output::Gated { .. } => 1,
        };
    }
    PANEL.with(|p| p.set(panel));
}

fn select_pack(kernel: Kernel, format: u8) -> PackFn {
    #[cfg(target_arch = "x86_64")]
    {
        use super::{avx2_gemm, avx512_gemm};
        match (kernel, format) {
            (Kernel::Avx2, FMT_Q4_1) => avx2_gemm::pack::<FMT_Q4_1>,
            (Kernel::Avx2, FMT_Q4_0) => avx2_gemm::pack::<FMT_Q4_0>,
            (Kernel::Avx2, FMT_Q4K) => avx2_gemm::pack::<FMT_Q4K>,
            (Kernel::Avx2, _) => avx2_gemm::pack::<FMT_Q8_0>,
            (_, FMT_Q4_1) => avx512_gemm::pack::<FMT_Q4_1>,
            (_, FMT_Q4_0) => avx512_gemm::pack::<FMT_Q4_0>,
            (_, FMT_Q4K) => avx512_gemm::pack::<FMT_Q4K>,
            (_, FMT_Q5_0) => avx512_gemm::pack::<FMT_Q5_0>,
            (_, FMT_Q5_1) => avx512_gemm::pack::<FMT_Q5_1>,
            (_, FMT_Q5K) => avx512_gemm::pack::<FMT_Q5K>,
            (_, _) => avx512_gemm::pack::<FMT_Q8_0>,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the many-rows path is x86-64 only (`applies`)")
}

/// `in_place`: the AVX-512 kernel that reads the records (`RECORDS`), not the panel.
fn select_micro(kernel: Kernel, format: u8, mr: usize, nr: usize, in_place: bool) -> MicroFn {
    #[cfg(target_arch = "x86_64")]
    {
        use super::avx2_gemm;
        use super::avx512_gemm::micro;
        macro_rules! by_rows {
            ($fmt:expr, $nr:expr, $in_place:expr) => {
                match mr {
                    1 => micro::<$fmt, 1, $nr, $in_place> as MicroFn,
                    2 => micro::<$fmt, 2, $nr, $in_place> as MicroFn,
                    3 => micro::<$fmt, 3, $nr, $in_place> as MicroFn,
                    4 => micro::<$fmt, 4, $nr, $in_place> as MicroFn,
                    5 => micro::<$fmt, 5, $nr, $in_place> as MicroFn,
                    _ => micro::<$fmt, 6, $nr, $in_place> as MicroFn,
                }
            };
        }
        macro_rules! by_groups {
            ($fmt:expr) => {
                match (nr, in_place) {
                    (1, false) => by_rows!($fmt, 1, false),
                    (_, false) => by_rows!($fmt, 2, false),
                    (1, true) => by_rows!($fmt, 1, true),
                    (_, true) => by_rows!($fmt, 2, true),
                }
            };
        }
        // `avx2_by_rows` names every height below `ROWS` and takes `ROWS` for the rest.
        const _: () = assert!(avx2_gemm::ROWS == 4);
        macro_rules! avx2_by_rows {
            ($fmt:expr) => {
                match mr {
                    1 => avx2_gemm::micro::<$fmt, 1> as MicroFn,
                    2 => avx2_gemm::micro::<$fmt, 2> as MicroFn,
                    3 => avx2_gemm::micro::<$fmt, 3> as MicroFn,
                    _ => avx2_gemm::micro::<$fmt, { avx2_gemm::ROWS }> as MicroFn,
                }
            };
        }
        let (mr_max, nr_max) = block_shape(kernel);
        debug_assert!((1..=mr_max).contains(&mr) && (1..=nr_max).contains(&nr));
        if kernel == Kernel::Avx2 {
            return match format {
                FMT_Q4_1 => avx2_by_rows!(FMT_Q4_1),
                FMT_Q4_0 => avx2_by_rows!(FMT_Q4_0),
                FMT_Q4K => avx2_by_rows!(FMT_Q4K),
                _ => avx2_by_rows!(FMT_Q8_0),
            };
        }
        match format {
            FMT_Q4_1 => by_groups!(FMT_Q4_1),
            FMT_Q4_0 => by_groups!(FMT_Q4_0),
            FMT_Q4K => by_groups!(FMT_Q4K),
            FMT_Q5_0 => by_groups!(FMT_Q5_0),
            FMT_Q5_1 => by_groups!(FMT_Q5_1),
            FMT_Q5K => by_groups!(FMT_Q5K),
            _ => by_groups!(FMT_Q8_0),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the many-rows path is x86-64 only (`applies`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_check_reaches_every_kernels_many_rows_path() {
        for kernel in Kernel::ALL {
            assert!(min_rows(kernel) < super::super::dispatch::SELF_CHECK_TALL_ROWS, "{}", kernel.name());
        }
    }

    /// The start-up self-check (11 and `SELF_CHECK_TALL_ROWS` rows) and the exactness
    /// tests (every count to 64, then from 121) must run tasks on both sides of the
    /// AVX-512 threshold, so that both ways of reading the weights are checked.
    #[test]
    fn the_checks_reach_both_ways_of_reading_the_weights() {
        use super::super::dispatch::SELF_CHECK_TALL_ROWS;
        assert!((11..SELF_CHECK_TALL_ROWS).contains(&RECORDS_MAX_ROWS));
        assert!((64..121).contains(&RECORDS_MAX_ROWS));
    }
}
