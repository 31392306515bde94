//! The contract between the threaded driver and the per-ISA kernels: one call computes
//! `MR` consecutive activation rows against one group of 16 weight rows over all of `k`.
//! Also what every SIMD kernel starts from: its operands as bounds-checked raw pointers
//! and the read-ahead of the records.

use super::activations::QActs;
#[cfg(target_arch = "x86_64")]
use super::layout::WeightFormat;

/// One kernel call's operands.
pub struct Tile<'a> {
    /// The group's records, `nb` of them back to back.
    pub w: &'a [u8],
    pub acts: &'a QActs,
    /// First activation row of the tile.
    pub row0: usize,
    /// Where output (row0, first column of the group) goes; row `r` of the tile is at
    /// `out + r * ldo`.
    pub out: *mut f32,
    pub ldo: usize,
    /// Whether to prefetch the records ahead: set for the first row tile of a group,
    /// whose reads come from memory; later tiles find the group in L1.
    pub prefetch: bool,
    /// Valid columns in this group (16 except in the last group); only those are written.
    pub ncols: usize,
    /// For a kernel from `select::select_keeping`: the group's block scales as f32,
    /// `2 * GROUP` per block (the 16 rows' `d · sc` for values 0–15, then for 16–31);
    /// null for any other kernel.
    pub kept_scales: *mut f32,
}

/// How far ahead of the record being read to prefetch, in bytes. The hardware
/// prefetcher alone ramps up too slowly on the short runs of groups a decode task
/// streams; 1 KiB ahead was the best of 0.5–4 KiB on a matrix streamed from DRAM
/// (figures in `benches/results/2026-12-04-architecture/`).
const PREFETCH_AHEAD: usize = 1024;

/// A kernel specialised for one format and tile height.
///
/// # Safety
/// The kernel's instruction set must be available; `tile.out` must be valid for writes
/// of `ncols` floats at each of the tile's rows, and no other thread may touch them;
/// for a kernel from `select::select_keeping`, `tile.kept_scales` points at `2 * GROUP`
/// floats per block of `k` that no other thread touches, which a reading kernel finds
/// written by the writing kernel on an earlier tile of the same group.
pub type TileFn = unsafe fn(&Tile<'_>);

/// A tile's operands as raw pointers, for kernels that read them unchecked.
#[cfg(target_arch = "x86_64")]
pub struct RawOperands {
    /// The group's records.
    pub w: *const u8,
    /// `QActs::qs`, `k` bytes a row.
    pub qs: *const i8,
    /// `QActs::d`, `s` and `isum`, `nb` a row.
    pub d: *const f32,
    pub s: *const f32,
    pub isum: *const i32,
    pub k: usize,
    pub nb: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    /// The operands for a kernel of format `F` and `MR` rows, after the checks its
    /// unchecked reads rely on: the group holds all its records, and the activations
    /// rows `row0..row0 + MR` (`d`, `s` and `isum` are sized together by
    /// `QActs::quantize`).
    #[inline(always)]
    pub fn checked<const F: u8, const MR: usize>(&self) -> RawOperands {
        let a = self.acts;
        let (k, nb) = (a.k, a.nb);
        assert!(
            self.w.len() >= WeightFormat::from_id(F).group_bytes(k) && a.qs.len() >= (self.row0 + MR) * k
        );
        assert!(a.d.len() >= (self.row0 + MR) * nb);
        RawOperands {
            w: self.w.as_ptr(),
            qs: a.qs.as_ptr(),
            d: a.d.as_ptr(),
            s: a.s.as_ptr(),
            isum: a.isum.as_ptr(),
            k,
            nb,
        }
    }
}

/// Asks for `bytes` bytes from [`PREFETCH_AHEAD`] past `record` to be loaded into L1.
/// A hint: it never faults, so the address may lie past the group.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn prefetch_ahead(record: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let ahead = record.wrapping_add(PREFETCH_AHEAD);
    for line in (0..bytes).step_by(64) {
        // SAFETY: prefetching has no requirement on the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
    }
}

/// Writes the first `ncols` of `vals` to `out`.
///
/// # Safety
/// `out` must be valid for `ncols` writes.
#[inline(always)]
pub unsafe fn store_partial(out: *mut f32, vals: &[f32], ncols: usize) {
    std::ptr::copy_nonoverlapping(vals.as_ptr(), out, ncols.min(vals.len()));
}

/// Writes the first `ncols` (at most 8) lanes of `v` to `out`: one store for a whole
/// vector, else through a buffer (a group's last columns in the matrix's last group).
///
/// # Safety
/// AVX must be available; `out` must be valid for `ncols.min(8)` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub unsafe fn store_lanes(out: *mut f32, v: std::arch::x86_64::__m256, ncols: usize) {
    use std::arch::x86_64::_mm256_storeu_ps;
    if ncols >= 8 {
        _mm256_storeu_ps(out, v);
    } else {
        let mut tmp = [0.0f32; 8];
        _mm256_storeu_ps(tmp.as_mut_ptr(), v);
        store_partial(out, &tmp, ncols);
    }
}
