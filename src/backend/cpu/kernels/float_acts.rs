//! Quantized weights against f32 activations (`--activations f32`): the weights stay in
//! their 4- or 8-bit records in memory and are widened to f32 in the task that uses
//! them, and the activations are never rounded, so a layer computes what the same
//! weights dequantized to f32 compute, to float rounding.
//!
//! A task takes one 32-value block of a group at a time, dequantizes it for the group's
//! 16 rows into a small value-major tile (`Tile`: 16 rows side by side, as the layout
//! stores them) and multiplies it into every activation row of the task with fused
//! multiply-adds, so the widening is paid once per task and block, not once per row.
//!
//! Every output is the same sequence of operations whatever the row count, the task cut
//! or the instruction set: within a block four partial sums over the values `c ≡ j
//! (mod 4)`, combined as `(p0 + p1) + (p2 + p3)` and added to the running total block
//! after block. So a row's result never depends on the rows beside it (batch
//! invariance), and every kernel matches the portable one bit for bit.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::dispatch::Kernel;
use super::layout::{self, WeightFormat, GROUP, K_HEADER_BYTES, Q4K_DMIN_OFFSET, QK};
use super::matmul::{OutPtr, Plan};
use super::prefetch::{prefetch, Level};
use super::QMatrix;

/// Activation rows per task: their f32 values (`ROW_CHUNK * k * 4` bytes) stay in L2.
const ROW_CHUNK: usize = 32;
/// Independent partial sums per output inside a block, so a single row (decode) is not
/// one chain of dependent multiply-adds.
const PARTIALS: usize = 4;

/// Records read ahead of the one being widened.
const PREFETCH_RECORDS: usize = 2;

/// One block of a group dequantized: `TILE[c][r]` is value `c` of the group's row `r`.
pub(super) type Tile = [[f32; GROUP]; QK];

/// `out = x · Wᵀ` on f32 activations with `kernel`'s instruction set. The caller has
/// checked the slice lengths.
pub fn run(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    if m == 0 || w.n == 0 {
        return;
    }
    let plan = Plan::new(m, w.groups, rayon::current_num_threads(), ROW_CHUNK);
    let out = OutPtr(out.as_mut_ptr());
    let body = |task: usize| {
        let (rc, gc) = (task / plan.group_chunks, task % plan.group_chunks);
        let rows = rc * plan.rows_per_task..((rc + 1) * plan.rows_per_task).min(m);
        let groups = gc * plan.groups_per_task..((gc + 1) * plan.groups_per_task).min(w.groups);
        // SAFETY: tasks cover disjoint (rows, groups) rectangles of `out`, which has
        // m * n elements; the kernel is available (checked by the caller).
        unsafe { run_task(kernel, w, x, rows, groups, out) };
    };
    let tasks = plan.row_chunks * plan.group_chunks;
    if tasks == 1 {
        body(0);
    } else {
        (0..tasks).into_par_iter().for_each(body);
    }
}

/// # Safety
/// As `matmul::run_task`, and `kernel` is available on this CPU.
unsafe fn run_task(
    kernel: Kernel,
    w: &QMatrix,
    x: &[f32],
    rows: Range<usize>,
    groups: Range<usize>,
    out: OutPtr,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => task_avx512(w, x, rows, groups, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => task_avx2(w, x, rows, groups, out),
        _ => task::<Portable, 1>(w, x, rows, groups, out),
    }
}

// The driver compiled for each instruction set with its block operations: AVX-512
// has its own (`avx512`); AVX2 and other CPUs run the portable ones, which the
// compiler vectorizes as it can.
/// Block `b` of `group` (records of `format`) widened into `tile` on AVX-512: the
/// values every kernel of this module multiplies with (the bf16 tiles round them).
///
/// # Safety
/// AVX-512 F, BW and VL, FMA and F16C are available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(super) unsafe fn dequantize_avx512(format: WeightFormat, group: &[u8], b: usize, tile: &mut Tile) {
    <avx512::Avx512 as BlockOps>::dequantize(format, group, b, tile)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn task_avx512(w: &QMatrix, x: &[f32], rows: Range<usize>, groups: Range<usize>, out: OutPtr) {
    task::<avx512::Avx512, 4>(w, x, rows, groups, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_avx2(w: &QMatrix, x: &[f32], rows: Range<usize>, groups: Range<usize>, out: OutPtr) {
    task::<Portable, 1>(w, x, rows, groups, out)
}

/// What the driver needs per instruction set; every implementation computes exactly
/// what the portable one does, in the same order.
trait BlockOps {
    /// Block `b` of a group, dequantized into `tile`.
    ///
    /// # Safety
    /// The implementation's instruction sets are available.
    unsafe fn dequantize(format: WeightFormat, group: &[u8], b: usize, tile: &mut Tile);
    /// `totals[i][col] += Σ_c acts[i][c] · tile[c][col]` for `ROWS` rows.
    ///
    /// # Safety
    /// As `dequantize`; `totals` holds at least `ROWS` rows.
    unsafe fn add_block<const ROWS: usize>(
        tile: &Tile,
        acts: [&[f32; QK]; ROWS],
        totals: &mut [[f32; GROUP]],
    );
}

struct Portable;

impl BlockOps for Portable {
    #[inline(always)]
    unsafe fn dequantize(format: WeightFormat, group: &[u8], b: usize, tile: &mut Tile) {
        dequantize_block(format, group, b, tile)
    }
    #[inline(always)]
    unsafe fn add_block<const ROWS: usize>(
        tile: &Tile,
        acts: [&[f32; QK]; ROWS],
        totals: &mut [[f32; GROUP]],
    ) {
        add_block::<ROWS>(tile, acts, totals)
    }
}

/// Rows `rows` × the columns of `groups`, `ROWS` activation rows per pass over a tile.
///
/// # Safety
/// `O`'s instruction sets are available; `out` points at `m * n` floats; no other task
/// writes rows `rows` × the columns of `groups`.
#[inline(always)]
unsafe fn task<O: BlockOps, const ROWS: usize>(
    w: &QMatrix,
    x: &[f32],
    rows: Range<usize>,
    groups: Range<usize>,
    out: OutPtr,
) {
    let k = w.k;
    let group_bytes = w.format.group_bytes(k);
    let data = w.data.as_slice();
    let xs = &x[rows.start * k..rows.end * k];
    let mut totals = vec![[0.0f32; GROUP]; rows.len()];
    let mut tile: Tile = [[0.0; GROUP]; QK];
    for g in groups {
        let group = &data[g * group_bytes..(g + 1) * group_bytes];
        totals.fill([0.0; GROUP]);
        let blocks = k / QK;
        for b in 0..blocks {
            // A few records ahead: the scales sit behind the quants, so the record is
            // not read front to back, which the hardware prefetcher follows poorly.
            let ahead = (b + PREFETCH_RECORDS).min(blocks - 1);
            let at = layout::record_offset(w.format.id(), ahead);
            prefetch(&group[at..at + w.format.record_bytes()], Level::L1);
            O::dequantize(w.format, group, b, &mut tile);
            let mut r = 0;
            while r + ROWS <= rows.len() {
                let acts: [&[f32; QK]; ROWS] = std::array::from_fn(|i| block_of(xs, k, r + i, b));
                O::add_block::<ROWS>(&tile, acts, &mut totals[r..r + ROWS]);
                r += ROWS;
            }
            while r < rows.len() {
                O::add_block::<1>(&tile, [block_of(xs, k, r, b)], &mut totals[r..r + 1]);
                r += 1;
            }
        }
        let col0 = g * GROUP;
        let ncols = (w.n - col0).min(GROUP);
        for (i, row) in rows.clone().enumerate() {
            // SAFETY: row < m and col0 + ncols <= n; this task owns these elements.
            let dst = std::slice::from_raw_parts_mut(out.0.add(row * w.n + col0), ncols);
            dst.copy_from_slice(&totals[i][..ncols]);
        }
    }
}

/// Block `b` of activation row `r` of `xs` (rows of `k` values).
#[inline(always)]
fn block_of(xs: &[f32], k: usize, r: usize, b: usize) -> &[f32; QK] {
    let at = r * k + b * QK;
    xs[at..at + QK].try_into().expect("a block is QK values")
}

/// `totals[i][col] += Σ_c acts[i][c] · tile[c][col]` in the fixed order the module
/// describes.
#[inline(always)]
fn add_block<const ROWS: usize>(tile: &Tile, acts: [&[f32; QK]; ROWS], totals: &mut [[f32; GROUP]]) {
    let mut partial = [[[0.0f32; GROUP]; PARTIALS]; ROWS];
    for c in (0..QK).step_by(PARTIALS) {
        for j in 0..PARTIALS {
            let wv = &tile[c + j];
            for (p, a) in partial.iter_mut().zip(&acts) {
                let xv = a[c + j];
                for (s, &wl) in p[j].iter_mut().zip(wv) {
                    *s = xv.mul_add(wl, *s);
                }
            }
        }
    }
    for (t, p) in totals.iter_mut().zip(&partial) {
        for col in 0..GROUP {
            t[col] += (p[0][col] + p[1][col]) + (p[2][col] + p[3][col]);
        }
    }
}

/// Block `b` of a group as f32 values: exactly the values `layout::dequantize_row`
/// gives (`d · q + m`, where `d · q` is exact, so the fused form rounds the same).
#[inline(always)]
fn dequantize_block(format: WeightFormat, group: &[u8], b: usize, tile: &mut Tile) {
    let record = &group[layout::record_offset(format.id(), b)..][..format.record_bytes()];
    match format {
        WeightFormat::Q4_1 | WeightFormat::Q4_0 | WeightFormat::Q4K => {
            let (d, m) = scales_and_mins(format, group, record, b);
            for i in 0..QK / 8 {
                let words = chunk_words(record, i);
                for t in 0..4 {
                    for r in 0..GROUP {
                        // Through i32: a signed conversion is one instruction on AVX2 too.
                        let byte = (words[r] >> (8 * t)) as i32;
                        tile[4 * i + t][r] = d[r].mul_add((byte & 0x0f) as f32, m[r]);
                        tile[QK / 2 + 4 * i + t][r] = d[r].mul_add(((byte >> 4) & 0x0f) as f32, m[r]);
                    }
                }
            }
        }
        WeightFormat::Q8_0 => {
            let d = f16s(record, format.scales_offset());
            for i in 0..QK / 4 {
                let words = chunk_words(record, i);
                for t in 0..4 {
                    for r in 0..GROUP {
                        // Stored as value + 128.
                        let q = ((words[r] >> (8 * t)) as u8 ^ 0x80) as i8;
                        tile[4 * i + t][r] = d[r] * f32::from(q);
                    }
                }
            }
        }
        // The 5- and 6-bit formats value by value (AVX-512 widens them in registers:
        // `avx512::widen_q5`, `widen_q6k`).
        WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5K => {
            for r in 0..GROUP {
                let (d, m) = layout::scale_and_min(format, group, b, r);
                let m = if format.zero_point() != 0 { -(format.zero_point() as f32) * d } else { m };
                for (c, row) in tile.iter_mut().enumerate() {
                    row[r] = d.mul_add(layout::q5_value(record, r, c) as f32, m);
                }
            }
        }
        WeightFormat::Q6K => {
            for r in 0..GROUP {
                let scales = layout::q6k_scales(group, b, r);
                for (c, row) in tile.iter_mut().enumerate() {
                    row[r] = scales[c / 16] * layout::q6k_value(record, r, c) as f32;
                }
            }
        }
    }
}

/// The 16 rows' `d` and `m` (`w = d · q + m`) of a Q4 block, as `layout::scale_and_min`
/// gives them (Q4_0: `m = -8 d`).
#[inline(always)]
fn scales_and_mins(
    format: WeightFormat,
    group: &[u8],
    record: &[u8],
    b: usize,
) -> ([f32; GROUP], [f32; GROUP]) {
    let so = format.scales_offset();
    match format {
        WeightFormat::Q4K => {
            let header = &group[layout::k_header_offset(format.id(), b)..][..K_HEADER_BYTES];
            let (d, neg_dmin) = (f16s(header, 0), f16s(header, Q4K_DMIN_OFFSET));
            let d = std::array::from_fn(|r| d[r] * f32::from(record[so + r]));
            let m = std::array::from_fn(|r| neg_dmin[r] * f32::from(record[so + GROUP + r]));
            (d, m)
        }
        WeightFormat::Q4_1 => (f16s(record, so), f16s(record, so + 2 * GROUP)),
        _ => {
            let d = f16s(record, so);
            (d, std::array::from_fn(|r| -8.0 * d[r]))
        }
    }
}

/// 16 little-endian f16 values at `at`.
#[inline(always)]
fn f16s(bytes: &[u8], at: usize) -> [f32; GROUP] {
    let b = &bytes[at..at + 2 * GROUP];
    std::array::from_fn(|r| f16::from_le_bytes([b[2 * r], b[2 * r + 1]]).to_f32())
}

/// Quant chunk `i` of a record as the 16 rows' 32-bit words (byte `t` of word `r` is
/// byte `4 r + t` of the chunk).
#[inline(always)]
fn chunk_words(record: &[u8], i: usize) -> [u32; GROUP] {
    let chunk = &record[64 * i..64 * (i + 1)];
    std::array::from_fn(|r| {
        u32::from_le_bytes([chunk[4 * r], chunk[4 * r + 1], chunk[4 * r + 2], chunk[4 * r + 3]])
    })
}

/// The block operations in AVX-512 registers: every format widens a whole 64-byte
/// chunk of quants (four values of each of the 16 rows) per register.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockOps, Tile, WeightFormat, GROUP, QK};
    use crate::backend::cpu::kernels::avx512::block_scales;
    use crate::backend::cpu::kernels::avx512_gemm::unpack_line;
    use crate::backend::cpu::kernels::layout::{
        self, FMT_Q4K, FMT_Q4_0, FMT_Q4_1, FMT_Q5K, FMT_Q5_0, FMT_Q5_1, FMT_Q6K, FMT_Q8_0, Q6K_HIGH_OFFSET,
    };

    pub struct Avx512;

    /// Block `b` of a Q6_K group (at `gp`; its record at `rp`) as `d · sc · (q - 32)` for
    /// its 16 rows, the values `layout::q6k_value` and `q6k_scales` give: each value's
    /// low 4 bits from the quant chunks (as Q4's), its top 2 from the two high-bits chunks
    /// (`layout::Q6K_HIGH_OFFSET`), values 0–15 at the first scale and 16–31 at the second.
    #[inline(always)]
    unsafe fn widen_q6k(gp: *const u8, b: usize, rp: *const u8, tile: &mut Tile) {
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(gp.add(layout::k_header_offset(FMT_Q6K, b)).cast()));
        let so = WeightFormat::Q6K.scales_offset();
        let scale = |at: usize| {
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(rp.add(at).cast()))))
        };
        let scales = [scale(so), scale(so + GROUP)];
        let (mask, bias) = (_mm512_set1_epi32(0xff), _mm512_set1_epi32(32));
        for j in 0..QK / 4 {
            // Line `j`: values 4j..4j + 4, byte `t` of each row's lane value `4j + t`.
            let raw = _mm512_loadu_si512(rp.add(64 * (j % 4)).cast());
            let nibbles = if j < 4 { raw } else { _mm512_srli_epi16(raw, 4) };
            let high = _mm512_loadu_si512(rp.add(Q6K_HIGH_OFFSET + 64 * (j / 4)).cast());
            // Bits 2(j mod 4).. of each high-bits byte to bits 4..6.
            let tops = match j % 4 {
                0 => _mm512_slli_epi16(high, 4),
                1 => _mm512_slli_epi16(high, 2),
                2 => high,
                _ => _mm512_srli_epi16(high, 2),
            };
            let six = _mm512_or_si512(
                _mm512_and_si512(nibbles, _mm512_set1_epi8(0x0f)),
                _mm512_and_si512(tops, _mm512_set1_epi8(0x30)),
            );
            for t in 0..4 {
                let q = _mm512_and_si512(_mm512_srlv_epi32(six, _mm512_set1_epi32(8 * t as i32)), mask);
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, bias));
                _mm512_storeu_ps(tile[4 * j + t].as_mut_ptr(), _mm512_mul_ps(scales[j / 4], v));
            }
        }
    }

    /// A Q5 block (record at `rp`) as `d · q + m` for its 16 rows: the five-bit values as
    /// the many-rows path unpacks them, a byte of each row's 32-bit lane at a time.
    #[inline(always)]
    unsafe fn widen_q5<const F: u8>(rp: *const u8, d: __m512, m: __m512, tile: &mut Tile) {
        let mask = _mm512_set1_epi32(0xff);
        for j in 0..QK / 4 {
            // Line `j` holds values 4j..4j + 4, byte `t` of each row's lane value `4j + t`.
            let line = unpack_line::<F>(rp, j);
            for t in 0..4 {
                let byte = _mm512_and_si512(_mm512_srlv_epi32(line, _mm512_set1_epi32(8 * t as i32)), mask);
                _mm512_storeu_ps(
                    tile[4 * j + t].as_mut_ptr(),
                    _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(byte), m),
                );
            }
        }
    }

    impl BlockOps for Avx512 {
        #[inline(always)]
        unsafe fn dequantize(format: WeightFormat, group: &[u8], b: usize, tile: &mut Tile) {
            let record = &group[layout::record_offset(format.id(), b)..][..format.record_bytes()];
            let (gp, rp) = (group.as_ptr(), record.as_ptr());
            // The 16 rows' `d` and `m` (`w = d · q + m`) as the integer kernels read them.
            let (d, m) = match format {
                WeightFormat::Q4_1 => block_scales::<FMT_Q4_1>(gp, b, rp),
                WeightFormat::Q4_0 => {
                    let (d, _) = block_scales::<FMT_Q4_0>(gp, b, rp);
                    (d, _mm512_mul_ps(_mm512_set1_ps(-8.0), d))
                }
                WeightFormat::Q4K => block_scales::<FMT_Q4K>(gp, b, rp),
                WeightFormat::Q5_0 => {
                    let (d, _) = block_scales::<FMT_Q5_0>(gp, b, rp);
                    return widen_q5::<FMT_Q5_0>(rp, d, _mm512_mul_ps(_mm512_set1_ps(-16.0), d), tile);
                }
                WeightFormat::Q5_1 => {
                    let (d, m) = block_scales::<FMT_Q5_1>(gp, b, rp);
                    return widen_q5::<FMT_Q5_1>(rp, d, m, tile);
                }
                WeightFormat::Q5K => {
                    let (d, m) = block_scales::<FMT_Q5K>(gp, b, rp);
                    return widen_q5::<FMT_Q5K>(rp, d, m, tile);
                }
                WeightFormat::Q6K => return widen_q6k(gp, b, rp, tile),
                WeightFormat::Q8_0 => {
                    let (d, _) = block_scales::<FMT_Q8_0>(gp, b, rp);
                    let (mask, bias) = (_mm512_set1_epi32(0xff), _mm512_set1_epi32(128));
                    for i in 0..QK / 4 {
                        let words = _mm512_loadu_si512(rp.add(64 * i).cast());
                        for t in 0..4 {
                            let byte = _mm512_and_si512(
                                _mm512_srlv_epi32(words, _mm512_set1_epi32(8 * t as i32)),
                                mask,
                            );
                            let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(byte, bias));
                            _mm512_storeu_ps(tile[4 * i + t].as_mut_ptr(), _mm512_mul_ps(d, q));
                        }
                    }
                    return;
                }
            };
            let mask = _mm512_set1_epi32(0x0f);
            for i in 0..QK / 8 {
                let words = _mm512_loadu_si512(rp.add(64 * i).cast());
                for t in 0..4 {
                    let lo =
                        _mm512_and_si512(_mm512_srlv_epi32(words, _mm512_set1_epi32(8 * t as i32)), mask);
                    let hi =
                        _mm512_and_si512(_mm512_srlv_epi32(words, _mm512_set1_epi32(8 * t as i32 + 4)), mask);
                    _mm512_storeu_ps(
                        tile[4 * i + t].as_mut_ptr(),
                        _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lo), m),
                    );
                    _mm512_storeu_ps(
                        tile[QK / 2 + 4 * i + t].as_mut_ptr(),
                        _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(hi), m),
                    );
                }
            }
        }

        #[inline(always)]
        unsafe fn add_block<const ROWS: usize>(
            tile: &Tile,
            acts: [&[f32; QK]; ROWS],
            totals: &mut [[f32; GROUP]],
        ) {
            let mut p = [[_mm512_setzero_ps(); 4]; ROWS];
            for c in (0..QK).step_by(4) {
                for j in 0..4 {
                    let w = _mm512_loadu_ps(tile[c + j].as_ptr());
                    for (pr, a) in p.iter_mut().zip(&acts) {
                        pr[j] = _mm512_fmadd_ps(_mm512_set1_ps(a[c + j]), w, pr[j]);
                    }
                }
            }
            for (t, pr) in totals.iter_mut().zip(&p) {
                let s = _mm512_add_ps(_mm512_add_ps(pr[0], pr[1]), _mm512_add_ps(pr[2], pr[3]));
                _mm512_storeu_ps(t.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(t.as_ptr()), s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantizing a block for 16 rows at once gives `dequantize_row`'s values.
    #[test]
    fn block_dequantization_matches_row_dequantization() {
        let (n, k) = (21, 512);
        for format in WeightFormat::ALL {
            let bytes: Vec<u8> = (0..n * format.gguf_row_bytes(k)).map(|i| (i * 131 % 251) as u8).collect();
            let w = QMatrix::from_raw(format, n, k, &bytes).expect("matrix");
            let group_bytes = format.group_bytes(k);
            let mut tile: Tile = [[0.0; GROUP]; QK];
            for row in 0..n {
                let mut want = vec![0.0; k];
                w.dequantize_row(row, &mut want);
                let (g, r) = (row / GROUP, row % GROUP);
                let group = &w.data.as_slice()[g * group_bytes..(g + 1) * group_bytes];
                for b in 0..k / QK {
                    dequantize_block(format, group, b, &mut tile);
                    for c in 0..QK {
                        let (got, want) = (tile[c][r], want[b * QK + c]);
                        assert!(
                            got == want || (got.is_nan() && want.is_nan()),
                            "{format:?} row {row} value {}: {got} vs {want}",
                            b * QK + c
                        );
                    }
                }
            }
        }
    }
}
