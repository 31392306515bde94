//! The many-rows path's shared contract (`gemm` drives it, `avx512_gemm`, `avx2_gemm`
//! and `amx_gemm` implement it): where a task's results go, the layout of a panel of
//! unpacked weight groups, the register block's shape, and the signatures of the
//! packing and micro-kernel functions.

use super::activations::QActs;
use super::layout::{WeightFormat, FMT_Q8_0};
use super::prefetch::{prefetch_line, Level};

/// Where a task's results go.
#[derive(Clone, Copy)]
pub enum Output {
    /// Every output, row `r` at `r * n`.
    Plain(*mut f32),
    /// The stack of a gate and an up projection (`width` rows each, a multiple of 16),
    /// gated: `gate(g, u, out)` of each row's matching 16 gate and up outputs, written
    /// at `r * width`. The `2 · width` outputs themselves are never stored.
    Gated { out: *mut f32, width: usize, gate: GateFn },
}

/// `out[j] = f(g[j], u[j])` for every `j` of equal-length slices; must give each
/// element the same bits whatever the slices' lengths.
pub type GateFn = fn(g: &[f32], u: &[f32], out: &mut [f32]);

/// One cache line; the panel is made of them so its vector loads are aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line(pub [u8; 64]);

/// Lines per block of one group in the panel: eight of quants (line `j` holds, at byte
/// `4 r + t`, row `r`'s value `4 j + t` of the block as an unsigned byte), the 16 rows'
/// scales as f32, then their minimums as f32 (zero for formats without).
pub const LINES_PER_BLOCK: usize = 10;
pub const SCALES_LINE: usize = 8;
pub const MINS_LINE: usize = 9;

/// Groups per AVX-512 micro-kernel call: each activation broadcast feeds this many
/// multiply-adds (the AVX2 kernel takes one group, a half at a time).
pub const NR: usize = 2;
/// Activation rows per AVX-512 micro-kernel call: with `NR` groups, `2 · MR · NR` accumulators
/// (integer and float) stay in registers.
pub const MR: usize = 6;
/// Where a micro-kernel call reads and writes.
pub struct Block<'a> {
    /// `NR` groups' panels (`nb · LINES_PER_BLOCK` lines each), back to back.
    pub panel: &'a [Line],
    pub acts: &'a QActs,
    pub row0: usize,
    /// Output (row0, first column of the first group); row `r` at `out + r * ldo`.
    pub out: *mut f32,
    pub ldo: usize,
    /// Valid columns of each group (16 but in the matrix's last group).
    pub ncols: [usize; NR],
    /// This call's share of the groups swept next, to be asked for into L2 (AVX-512:
    /// a little per block, [`prefetch_share`]; AVX2: all before the sweep); empty
    /// spans where there is nothing to ask for.
    pub ahead: [&'a [u8]; 2],
    /// For a kernel that reads the weight records in place of the panel (AVX-512
    /// `micro` with `RECORDS`, see `gemm::RECORDS_MAX_ROWS`): each group's records, `nb`
    /// back to back; empty spans otherwise.
    pub records: [&'a [u8]; NR],
}

/// Asks for block `b`'s part (of `nb`) of the lines of `ahead` into L2. A decode
/// batch's next groups come from memory, and a call's whole share asked for at once
/// fills the miss buffers, so the sweep's own loads wait behind it; spread over the
/// blocks, the misses overlap the multiply-adds (figures in
/// `benches/results/2026-12-07-spread-prefetch/`).
#[inline(always)]
pub fn prefetch_share(ahead: &[&[u8]; 2], b: usize, nb: usize) {
    for span in ahead {
        for line in block_part(span.len().div_ceil(64), b, nb) {
            prefetch_line(span.as_ptr().wrapping_add(64 * line), Level::L2);
        }
    }
}

/// Block `b`'s part of `lines` lines shared out over `nb` blocks: the parts of
/// `0..nb` cover every line once, in order.
#[inline(always)]
fn block_part(lines: usize, b: usize, nb: usize) -> std::ops::Range<usize> {
    b * lines / nb..(b + 1) * lines / nb
}

/// A micro-kernel for one format, `mr` rows and `nr` groups.
///
/// # Safety
/// The kernel's instruction set must be available; `out` must be valid for writes of
/// `ncols[g]` floats at column `16 g` of each of the `mr` rows, and no other thread may
/// touch them.
pub type MicroFn = unsafe fn(&Block<'_>);

/// Unpacks one group (`w`, all its records) into `nb · LINES_PER_BLOCK` lines.
///
/// # Safety
/// The kernel's instruction set must be available.
pub type PackFn = unsafe fn(w: &[u8], nb: usize, panel: &mut [Line]);

/// The integer the kernels subtract per unit of the activations' block sum: the
/// format's zero point, or Q8_0's +128 of the repacked layout.
pub const fn offset(format: u8) -> i32 {
    if format == FMT_Q8_0 {
        128
    } else {
        WeightFormat::from_id(format).zero_point()
    }
}

#[cfg(test)]
mod tests {
    use super::block_part;

    #[test]
    fn the_blocks_parts_cover_every_line_once() {
        for nb in [1, 2, 18, 48] {
            for lines in [0, 1, 5, 17, 18, 60, 181] {
                let parts: Vec<usize> = (0..nb).flat_map(|b| block_part(lines, b, nb)).collect();
                assert_eq!(parts, (0..lines).collect::<Vec<_>>(), "{lines} lines over {nb} blocks");
            }
        }
    }
}
