//! `--activations bf16` on AMX-BF16 tiles (Sapphire Rapids and later), for every row
//! count: prefill chunks and decode batches alike.
//!
//! The activations are rounded to bf16 (nearest, ties to even); each weight block is
//! widened to f32 exactly as the f32-activations path widens it (`float_acts`) and
//! rounded to bf16 the same way, into a panel of `B` tiles (a block of a group is one
//! tile: 16 rows of the block's 16 value pairs × the group's 16 columns). One
//! `tdpbf16ps` multiplies a 16 × 32 tile of activations by such a block into a 16 × 16
//! tile of f32 sums, and the sums stay in the tile unit for the whole of `k`: unlike the
//! integer path (`amx_gemm`), whose per-block scales send every block's sums through
//! memory and an f32 epilogue, a tile of outputs here is stored once, straight into the
//! result. A task holds a 2 × 2 block of `C` tiles (two tiles of rows × two groups, or a
//! gate group and its up group), so each `A` and `B` load feeds two multiplications.
//!
//! Numerics. Each output is the tile unit's sum over `k` in 32-value steps, from zero,
//! in block order, whatever the row count, the task cut or the batch: a row's result
//! never depends on the rows beside it, so decode, prefill and any chunking agree bit
//! for bit. The unit's rounding inside a step is its own: one value pair at a time it
//! rounds as `fl(c + fl(a₀b₀ + a₁b₁))`, but over a 32-value step it matches no
//! sequence of f32 operations we tried, so no other instruction set can reproduce it
//! and this path exists only where the tiles do ([`available`]). Its tests compare it
//! with f64 sums of the same bf16 values (within the rounding of a k-long f32 sum) and
//! with itself across row counts and task cuts (bit for bit).

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::avx512::block_scales;
use super::float_acts::{self, Tile};
use super::gemm_panel::{GateFn, Line};
use super::isa;
use super::layout::{self, WeightFormat, FMT_Q4K, FMT_Q4_0, FMT_Q4_1, GROUP, QK};
use super::matmul::{OutPtr, Plan};
use super::tile::prefetch_ahead;
use super::QMatrix;

/// Rows of activations a task takes: a task's panel (its groups, widened) is built once
/// and swept by all its rows.
const ROW_CHUNK: usize = 256;
/// Activation rows per tile.
const TILE_ROWS: usize = 16;
/// `B` tile rows (value pairs) per block, and so panel lines per block.
const LINES_PER_BLOCK: usize = QK / 2;

/// Whether this process can run bf16 activations: the CPU has the bf16 tiles and the
/// AVX-512 around them ([`isa::amx_bf16`]) and this process may use the tiles.
pub fn available() -> bool {
    isa::amx_bf16() && isa::amx_tiles_granted()
}

/// `x` rounded to bf16, nearest with ties to even, as its 16 bits (finite `x`).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16's 16 bits stand for.
#[cfg(test)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

thread_local! {
    /// The call's activations in bf16, on the calling thread.
    static ACTS: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// A task's widened groups.
    static PANEL: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Where a task's results go.
#[derive(Clone, Copy)]
enum Output {
    /// Row `r`, column `c` at `r · n + c`.
    Plain(OutPtr),
    /// `gate(g, u)` of each row's gate and up outputs, `width` per row.
    Gated { out: OutPtr, width: usize, gate: GateFn },
}

/// `out = x · Wᵀ` (`m` rows of `x`), bf16 activations on the tiles.
///
/// # Panics
/// If [`available`] is false (the caller checks it), or the slices are not `m × k` and
/// `m × n`.
pub fn run(w: &QMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    assert!(available(), "bf16 activations need AMX-BF16");
    assert_eq!(x.len(), m * w.k);
    assert_eq!(out.len(), m * w.n);
    drive(w, x, m, w.groups, Output::Plain(OutPtr(out.as_mut_ptr())));
}

/// For `w` a gate and up stack of `width` rows each: `out[i · width + j] = gate(g, u)`
/// of row `i`'s gate and up outputs `j`, the same bits as [`run`] then `gate`.
///
/// # Panics
/// As [`run`], and if `w.n != 2 · width` or `out` is not `m × width`.
pub fn run_gated(w: &QMatrix, x: &[f32], m: usize, width: usize, gate: GateFn, out: &mut [f32]) {
    assert!(available(), "bf16 activations need AMX-BF16");
    assert!(w.n == 2 * width && width.is_multiple_of(GROUP));
    assert_eq!(x.len(), m * w.k);
    assert_eq!(out.len(), m * width);
    let output = Output::Gated { out: OutPtr(out.as_mut_ptr()), width, gate };
    drive(w, x, m, width / GROUP, output);
}

/// Rounds the activations once, then runs the tasks of `units` (groups, or gate groups
/// with their up groups) on the pool.
fn drive(w: &QMatrix, x: &[f32], m: usize, units: usize, output: Output) {
    if m == 0 || units == 0 {
        return;
    }
    let k = w.k;
    let mut acts = ACTS.with(Cell::take);
    // A tile of rows starting anywhere in the last task reads 16 rows: zeros past `m`.
    if acts.len() < (m + TILE_ROWS) * k {
        acts.resize((m + TILE_ROWS) * k, 0);
    }
    acts[m * k..(m + TILE_ROWS) * k].fill(0);
    let rounded = &mut acts[..m * k];
    if m >= 32 {
        rounded.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, x)| round_row(x, o));
    } else {
        rounded.chunks_mut(k).zip(x.chunks(k)).for_each(|(o, x)| round_row(x, o));
    }
    let plan = Plan::new(m, units, rayon::current_num_threads(), ROW_CHUNK);
    let tasks = plan.row_chunks * plan.group_chunks;
    let acts_ref = &acts[..];
    let body = |t: usize| {
        let (rc, gc) = (t / plan.group_chunks, t % plan.group_chunks);
        let rows = rc * plan.rows_per_task..((rc + 1) * plan.rows_per_task).min(m);
        let range = gc * plan.groups_per_task..((gc + 1) * plan.groups_per_task).min(units);
        // SAFETY: `available` held (checked by the callers); tasks cover disjoint
        // (rows, units) rectangles of the output; `acts_ref` holds `m + 16` rows.
        unsafe { task(w, acts_ref, rows, range, output) };
    };
    if tasks == 1 {
        body(0);
    } else {
        (0..tasks).into_par_iter().for_each(body);
    }
    ACTS.with(|a| a.set(acts));
}

/// One row of activations rounded to bf16.
fn round_row(x: &[f32], out: &mut [u16]) {
    if available() {
        // SAFETY: `available` implies AVX-512 F and BF16.
        unsafe { round_row_avx512(x, out) }
    } else {
        out.iter_mut().zip(x).for_each(|(o, &x)| *o = bf16_bits(x));
    }
}

/// [`bf16_bits`] of a row, sixteen values an instruction (`vcvtneps2bf16`, which rounds
/// finite values as `bf16_bits` does and keeps a NaN a NaN).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row_avx512(x: &[f32], out: &mut [u16]) {
    let n = x.len().min(out.len());
    let mut i = 0;
    while i + 16 <= n {
        let half: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(i))));
        _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), half);
        i += 16;
    }
    for j in i..n {
        out[j] = bf16_bits(x[j]);
    }
}

/// Group `g` of `w` widened into `panel` (`nb · 16` lines): line `16 b + p` holds, at
/// bytes `4 r .. 4 r + 4`, row `r`'s values `32 b + 2 p` and `+ 1` in bf16 (the `B`
/// operand's pair layout).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")]
unsafe fn widen_group(w: &QMatrix, g: usize, panel: &mut [Line], tile: &mut Tile) {
    let group_bytes = w.format.group_bytes(w.k);
    let group = &w.data.as_slice()[g * group_bytes..(g + 1) * group_bytes];
    let nb = w.k / QK;
    assert!(panel.len() >= nb * LINES_PER_BLOCK);
    // `vcvtne2ps2bf16` puts the 16 even values (rounded as `bf16_bits`) below the 16
    // odd ones; this interleaves them into pairs.
    let pairs = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
    );
    let lines = panel.as_mut_ptr();
    let (id, record_bytes) = (w.format.id(), w.format.record_bytes());
    for b in 0..nb {
        // Decode reads the records from memory: ask for later ones as the integer
        // kernels do (a hint, so past the group's end is harmless).
        prefetch_ahead(group.as_ptr().add(layout::record_offset(id, b)), record_bytes);
        let at = lines.add(b * LINES_PER_BLOCK);
        match w.format {
            WeightFormat::Q4_1 => widen_q4_block::<FMT_Q4_1>(group, b, at, pairs),
            WeightFormat::Q4_0 => widen_q4_block::<FMT_Q4_0>(group, b, at, pairs),
            WeightFormat::Q4K => widen_q4_block::<FMT_Q4K>(group, b, at, pairs),
            _ => {
                float_acts::dequantize_avx512(w.format, group, b, tile);
                for p in 0..LINES_PER_BLOCK {
                    let even = _mm512_loadu_ps(tile[2 * p].as_ptr());
                    let odd = _mm512_loadu_ps(tile[2 * p + 1].as_ptr());
                    store_pairs(at.add(p), even, odd, pairs);
                }
            }
        }
    }
}

/// One pair line: row `r`'s `even[r]` and `odd[r]` rounded to bf16, side by side.
#[inline(always)]
unsafe fn store_pairs(line: *mut Line, even: __m512, odd: __m512, pairs: __m512i) {
    let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even));
    _mm512_store_si512(line.cast(), _mm512_permutexvar_epi16(pairs, halves));
}

/// Block `b` of a 4-bit group straight from its nibbles to its 16 pair lines at
/// `lines`, with the f32 path's values (`fma(d, q, m)`, as `float_acts` widens them)
/// and no f32 tile in between. Chunk `i` of a record holds values `4i + t` in the low
/// nibbles of byte `t` of each row's word and `16 + 4i + t` in the high ones.
#[inline(always)]
unsafe fn widen_q4_block<const F: u8>(group: &[u8], b: usize, lines: *mut Line, pairs: __m512i) {
    let (gp, rp) = (group.as_ptr(), group.as_ptr().add(layout::record_offset(F, b)));
    let (d, m) = block_scales::<F>(gp, b, rp);
    let m = if F == FMT_Q4_0 { _mm512_mul_ps(_mm512_set1_ps(-8.0), d) } else { m };
    let mask = _mm512_set1_epi32(0x0f);
    let value = |words: __m512i, shift: i32| {
        let q = _mm512_and_si512(_mm512_srlv_epi32(words, _mm512_set1_epi32(shift)), mask);
        _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), m)
    };
    for i in 0..4 {
        let words = _mm512_loadu_si512(rp.add(64 * i).cast());
        // (line, bit of the even value, bit of the odd one)
        for (line, even, odd) in [(2 * i, 0, 8), (2 * i + 1, 16, 24), (8 + 2 * i, 4, 12), (9 + 2 * i, 20, 28)]
        {
            store_pairs(lines.add(line), value(words, even), value(words, odd), pairs);
        }
    }
}

/// `ldtilecfg`'s operand: palette 1; tiles 0-3 (`C`) `rows` × 64 bytes, 4-5 (`A`)
/// `rows` × 64 bytes, 6-7 (`B`) 16 × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(rows: u8) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for tile in 0..8 {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&64u16.to_le_bytes());
            c[48 + tile] = if tile < 6 { rows } else { 16 };
        }
        TileConfig(c)
    }
}

/// Rows `rows` × `units` of the output.
///
/// # Safety
/// [`available`] is true; `acts` holds the call's rows in bf16 and 16 more; the output
/// is valid for these rows and units and no other task writes them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")]
unsafe fn task(w: &QMatrix, acts: &[u16], rows: Range<usize>, units: Range<usize>, output: Output) {
    let (k, nb) = (w.k, w.k / QK);
    let group_lines = nb * LINES_PER_BLOCK;
    // The columns each unit's two `B` tiles come from: two groups for plain outputs
    // (the second is the first again on an odd last one, its results unused), a gate
    // group and its up group for gated ones.
    let (step, end) = (if matches!(output, Output::Plain(_)) { 2 } else { 1 }, units.end);
    let members = units.step_by(step).map(move |g| match output {
        Output::Plain(_) => [g, if g + 1 < end { g + 1 } else { g }],
        Output::Gated { width, .. } => [g, g + width / GROUP],
    });
    // One unit's two groups at a time (36 KB at k = 576, 96 KB at 1,536), widened just
    // before every tile of rows passes over them, so they are still in L1/L2; widening
    // the whole task first wrote 4 bytes of panel per weight byte read out to L2 and
    // beyond, which a decode step, reading its weights from memory, waited on.
    let mut panel = PANEL.with(Cell::take);
    panel.resize(2 * group_lines, Line([0; 64]));
    let mut tile: Tile = [[0.0; GROUP]; QK];
    let rows_in_tile = rows.len().min(TILE_ROWS);
    let config = TileConfig::new(rows_in_tile as u8);
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    let a_stride = 2 * k;
    let row_tiles = rows.len().div_ceil(TILE_ROWS);
    let mut staged = [[[0.0f32; GROUP]; TILE_ROWS]; 4];
    for pair in members {
        let pair = &pair;
        widen_group(w, pair[0], &mut panel[..group_lines], &mut tile);
        // An odd last plain group stands in for its missing partner: widened once.
        let b1_at = if pair[1] == pair[0] { 0 } else { group_lines };
        if b1_at != 0 {
            widen_group(w, pair[1], &mut panel[group_lines..2 * group_lines], &mut tile);
        }
        let b0 = panel.as_ptr();
        let b1 = panel.as_ptr().add(b1_at);
        for rt in (0..row_tiles).step_by(2) {
            let row0 = rows.start + rt * TILE_ROWS;
            // The second tile of rows, or the first again when it is the last.
            let row1 = if rt + 1 < row_tiles { row0 + TILE_ROWS } else { row0 };
            let a0 = acts.as_ptr().add(row0 * k);
            let a1 = acts.as_ptr().add(row1 * k);
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            if row1 != row0 {
                for b in 0..nb {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(b * QK),
                        a1 = in(reg) a1.add(b * QK),
                        b0 = in(reg) b0.add(b * LINES_PER_BLOCK),
                        b1 = in(reg) b1.add(b * LINES_PER_BLOCK),
                        sa = in(reg) a_stride,
                        sb = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
            } else {
                // One tile of rows (decode batches, a task's last odd tile): half the
                // multiplications, the same sums in `tmm0` and `tmm1`.
                for b in 0..nb {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        a0 = in(reg) a0.add(b * QK),
                        b0 = in(reg) b0.add(b * LINES_PER_BLOCK),
                        b1 = in(reg) b1.add(b * LINES_PER_BLOCK),
                        sa = in(reg) a_stride,
                        sb = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
            }
            let tiles = if row1 != row0 { 2 } else { 1 };
            for t in 0..tiles {
                let first = row0 + t * TILE_ROWS;
                let live = (rows.end - first).min(TILE_ROWS);
                for (j, &g) in pair.iter().enumerate() {
                    if j == 1 && matches!(output, Output::Plain(_)) && g == pair[0] {
                        continue; // the odd last group's stand-in
                    }
                    match output {
                        Output::Plain(out) if stored_whole(w, g, live) => {
                            // A whole tile of outputs goes straight to the result.
                            store_tile(2 * t + j, out.0.add(first * w.n + g * GROUP), 4 * w.n);
                        }
                        _ => store_tile(2 * t + j, staged[2 * t + j].as_mut_ptr().cast(), 64),
                    }
                }
                write_staged(w, output, pair, first, live, &staged[2 * t], &staged[2 * t + 1]);
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    PANEL.with(|p| p.set(panel));
}

/// Whether a plain output's tile of `live` rows of group `g` goes straight to the
/// result (a whole 16 × 16 tile) rather than through the staging tile.
#[inline(always)]
fn stored_whole(w: &QMatrix, g: usize, live: usize) -> bool {
    live == TILE_ROWS && w.n - g * GROUP >= GROUP
}

/// `C` tile `c` (0-3: `tmm0`-`tmm3`) stored as 16-float rows `stride` bytes apart.
///
/// # Safety
/// The tiles are configured; `dst` is valid for the tile's rows.
#[inline(always)]
unsafe fn store_tile(c: usize, dst: *mut f32, stride: usize) {
    match c {
        0 => asm!("tilestored [{d} + {s}*1], tmm0", d = in(reg) dst, s = in(reg) stride, options(nostack)),
        1 => asm!("tilestored [{d} + {s}*1], tmm1", d = in(reg) dst, s = in(reg) stride, options(nostack)),
        2 => asm!("tilestored [{d} + {s}*1], tmm2", d = in(reg) dst, s = in(reg) stride, options(nostack)),
        _ => asm!("tilestored [{d} + {s}*1], tmm3", d = in(reg) dst, s = in(reg) stride, options(nostack)),
    }
}

/// The outputs of a tile of rows (`first..first + live`) for one unit that did not go
/// straight to the result: a short tile or a narrow last group of a plain output (from
/// `c0`, `c1`), or the gated rows (`gate` of `c0` and `c1`).
///
/// # Safety
/// As [`task`].
#[inline(always)]
unsafe fn write_staged(
    w: &QMatrix,
    output: Output,
    pair: &[usize; 2],
    first: usize,
    live: usize,
    c0: &[[f32; GROUP]; TILE_ROWS],
    c1: &[[f32; GROUP]; TILE_ROWS],
) {
    match output {
        Output::Plain(out) => {
            let distinct = if pair[1] != pair[0] { 2 } else { 1 };
            for (g, sums) in [(pair[0], c0), (pair[1], c1)].into_iter().take(distinct) {
                if stored_whole(w, g, live) {
                    continue;
                }
                let col0 = g * GROUP;
                let cols = (w.n - col0).min(GROUP);
                for (r, row) in sums.iter().enumerate().take(live) {
                    let dst = std::slice::from_raw_parts_mut(out.0.add((first + r) * w.n + col0), cols);
                    dst.copy_from_slice(&row[..cols]);
                }
            }
        }
        Output::Gated { out, width, gate } => {
            let col0 = pair[0] * GROUP;
            for r in 0..live {
                let dst = std::slice::from_raw_parts_mut(out.0.add((first + r) * width + col0), GROUP);
                gate(&c0[r], &c1[r], dst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::dispatch::{pattern_matrix, self_check_activations, SELF_CHECK_K};

    #[test]
    fn bf16_rounding_is_nearest_with_ties_to_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even one, 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.5), 0xc020);
        for x in [0.1f32, -3.7, 1e-20, 65504.0] {
            let r = bf16_value(bf16_bits(x));
            assert!(((r - x) / x).abs() <= 1.0 / 256.0, "{x} -> {r}");
        }
        // Ties among them, so the vector rounding is checked on both ties.
        let mut x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.7311).collect();
        x[3] = 1.0 + 1.0 / 256.0;
        x[4] = -(1.0 + 3.0 / 256.0);
        x[5] = f32::MAX;
        let mut fast = vec![0u16; x.len()];
        round_row(&x, &mut fast);
        assert_eq!(fast, x.iter().map(|&v| bf16_bits(v)).collect::<Vec<_>>());
    }

    /// The panel holds every weight as `dequantize_row` gives it, rounded by
    /// `bf16_bits`, in the `B` tiles' pair layout.
    #[test]
    fn the_panel_holds_the_dequantized_weights_rounded_to_bf16_in_pairs() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        let (n, k) = (40, 512);
        for format in WeightFormat::ALL {
            let bytes: Vec<u8> = (0..n * format.gguf_row_bytes(k)).map(|i| (i * 131 % 251) as u8).collect();
            let w = QMatrix::from_raw(format, n, k, &bytes).expect("matrix");
            let mut panel = vec![Line([0; 64]); (k / QK) * LINES_PER_BLOCK];
            let mut tile: Tile = [[0.0; GROUP]; QK];
            let mut row = vec![0.0; k];
            for g in 0..w.groups {
                // SAFETY: `available` implies the features.
                unsafe { widen_group(&w, g, &mut panel, &mut tile) };
                for r in 0..GROUP.min(n - g * GROUP) {
                    w.dequantize_row(g * GROUP + r, &mut row);
                    for (c, &v) in row.iter().enumerate() {
                        if v.is_nan() {
                            continue; // the byte pattern makes some f16 scales NaN
                        }
                        let line = &panel[(c / QK) * LINES_PER_BLOCK + (c % QK) / 2].0;
                        let at = 4 * r + 2 * (c % 2);
                        let got = u16::from_le_bytes([line[at], line[at + 1]]);
                        assert_eq!(got, bf16_bits(v), "{format:?} row {} value {c}: {v}", g * GROUP + r);
                    }
                }
            }
        }
    }

    /// f64 sums of the bf16-rounded activations and weights: what the tiles compute, up
    /// to the rounding of their f32 accumulation.
    fn reference(w: &QMatrix, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
        let (n, k) = (w.n, w.k);
        let mut want = vec![0.0; m * n];
        let mut scale = vec![0.0; m * n];
        let mut row = vec![0.0; k];
        for j in 0..n {
            w.dequantize_row(j, &mut row);
            for i in 0..m {
                let (mut s, mut a) = (0.0f64, 0.0f64);
                for c in 0..k {
                    let p = f64::from(bf16_value(bf16_bits(x[i * k + c])))
                        * f64::from(bf16_value(bf16_bits(row[c])));
                    s += p;
                    a += p.abs();
                }
                want[i * n + j] = s;
                scale[i * n + j] = a;
            }
        }
        (want, scale)
    }

    #[test]
    fn tiles_compute_the_bf16_products_sums_and_do_not_depend_on_the_rows_beside() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        for format in WeightFormat::ALL {
            let (n, k) = (80, SELF_CHECK_K);
            let w = pattern_matrix(format, n, k).expect("pattern matrix");
            let m = 45;
            let x = self_check_activations(m);
            let mut got = vec![f32::NAN; m * n];
            run(&w, &x, m, &mut got);
            let (want, scale) = reference(&w, &x, m);
            for i in 0..m * n {
                let err = (f64::from(got[i]) - want[i]).abs();
                assert!(err <= 1e-5 * scale[i] + 1e-30, "{format:?} output {i}: {} vs {}", got[i], want[i]);
            }
            // Every row alone, and every odd-sized slice, gives the same bits.
            for (lo, hi) in [(0, 1), (7, 8), (44, 45), (3, 20), (13, 45)] {
                let mut part = vec![f32::NAN; (hi - lo) * n];
                run(&w, &x[lo * k..hi * k], hi - lo, &mut part);
                assert_eq!(part, got[lo * n..hi * n], "{format:?} rows {lo}..{hi}");
            }
        }
    }

    #[test]
    fn the_gated_tiles_equal_the_plain_ones_then_the_gate() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        fn gate(g: &[f32], u: &[f32], out: &mut [f32]) {
            for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                *o = g * u - 0.25 * g;
            }
        }
        let (n, k, width) = (96, SELF_CHECK_K, 48);
        let w = pattern_matrix(WeightFormat::Q4_1, n, k).expect("pattern matrix");
        for m in [1, 16, 33, 300] {
            let x = self_check_activations(m);
            let mut both = vec![0.0; m * n];
            run(&w, &x, m, &mut both);
            let mut want = vec![0.0; m * width];
            for (row, o) in both.chunks(n).zip(want.chunks_mut(width)) {
                gate(&row[..width], &row[width..], o);
            }
            let mut got = vec![f32::NAN; m * width];
            run_gated(&w, &x, m, width, gate, &mut got);
            assert_eq!(got, want, "m = {m}");
        }
    }
}
