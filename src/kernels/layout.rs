//! The repacked weight layout every kernel reads, and the conversion from GGUF blocks.
//!
//! Output rows are taken 16 at a time ("groups"; the last one padded with zero rows).
//! Within a group the 32-value blocks are stored block by block, and each block of the
//! group is one contiguous record:
//!
//! - quants, as 64-byte chunks in which byte `4 * r + t` of chunk `i` belongs to row `r`
//!   of the group: for Q4 formats it is the GGUF byte `qs[4 i + t]` of that row (low
//!   nibble = value `4 i + t`, high nibble = value `16 + 4 i + t`; 4 chunks); for Q8_0 it
//!   is value `4 i + t` plus 128 as an unsigned byte (8 chunks);
//! - the 16 rows' scales `d` (f16), then for Q4_1 the 16 rows' minimums `m` (f16).
//!
//! So one 512-bit (or two 256-bit) integer multiply-adds of a chunk against four
//! activation bytes broadcast to every lane yield partial sums for 16 outputs at once,
//! and every per-row scale is a vector load. The record is as large as the GGUF blocks
//! it replaces, so decode streams exactly the file's bytes. Invariant: quants of padded
//! rows are zero and their scales are zero, so padded outputs are 0 and never written.

use half::f16;

/// Output rows handled together by one pass of a kernel.
pub const GROUP: usize = 16;
/// Values per quantization block (all supported formats).
pub const QK: usize = 32;

/// The weight formats the kernels understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 4-bit with per-block scale and minimum: `w = d * q + m`, q in 0..16.
    Q4_1,
    /// 4-bit with per-block scale: `w = d * (q - 8)`.
    Q4_0,
    /// 8-bit with per-block scale: `w = d * q`, q in -128..128.
    Q8_0,
}

impl WeightFormat {
    /// Bytes of one GGUF block of this format.
    pub const fn gguf_block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q8_0 => 34,
        }
    }

    /// Offset of the 16 scales inside a group record (the quants come first).
    pub const fn scales_offset(self) -> usize {
        match self {
            WeightFormat::Q4_1 | WeightFormat::Q4_0 => GROUP * QK / 2,
            WeightFormat::Q8_0 => GROUP * QK,
        }
    }

    /// Bytes of one group record (16 rows × one block).
    pub const fn record_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => self.scales_offset() + 2 * GROUP * 2,
            WeightFormat::Q4_0 | WeightFormat::Q8_0 => self.scales_offset() + GROUP * 2,
        }
    }

    /// A small integer naming the format, used as a const generic by the kernels.
    pub const fn id(self) -> u8 {
        match self {
            WeightFormat::Q4_1 => FMT_Q4_1,
            WeightFormat::Q4_0 => FMT_Q4_0,
            WeightFormat::Q8_0 => FMT_Q8_0,
        }
    }
}

pub const FMT_Q4_1: u8 = 0;
pub const FMT_Q4_0: u8 = 1;
pub const FMT_Q8_0: u8 = 2;

/// (offset of the scales, record bytes) of the format with id `format`, for kernels
/// that take the format as a const generic.
pub const fn record_shape(format: u8) -> (usize, usize) {
    let f = match format {
        FMT_Q4_1 => WeightFormat::Q4_1,
        FMT_Q4_0 => WeightFormat::Q4_0,
        _ => WeightFormat::Q8_0,
    };
    (f.scales_offset(), f.record_bytes())
}

/// Offset of the minimums inside a Q4_1 record.
pub const Q4_1_MINS_OFFSET: usize = GROUP * QK / 2 + GROUP * 2;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zero-initialised byte buffer aligned to a cache line, so records never straddle
/// more lines than their size requires.
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes { lines: vec![Line([0; 64]); len.div_ceil(64)], len }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `lines` owns at least `len` initialised bytes; `Line` is plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Repacks GGUF rows (`n` rows of `k / 32` blocks each, as in the file) into groups.
/// The caller has checked that `gguf.len()` matches `n`, `k` and the format.
pub fn repack(format: WeightFormat, gguf: &[u8], n: usize, k: usize) -> AlignedBytes {
    let nb = k / QK;
    let groups = n.div_ceil(GROUP);
    let rec = format.record_bytes();
    let src_block = format.gguf_block_bytes();
    let mut buf = AlignedBytes::zeroed(groups * nb * rec);
    let dst = buf.as_mut_slice();
    for row in 0..n {
        let (g, r) = (row / GROUP, row % GROUP);
        for b in 0..nb {
            let src = &gguf[(row * nb + b) * src_block..][..src_block];
            let out = &mut dst[(g * nb + b) * rec..][..rec];
            let so = format.scales_offset();
            out[so + 2 * r..so + 2 * r + 2].copy_from_slice(&src[0..2]);
            match format {
                WeightFormat::Q4_1 => {
                    let mo = Q4_1_MINS_OFFSET;
                    out[mo + 2 * r..mo + 2 * r + 2].copy_from_slice(&src[2..4]);
                    scatter_words(&src[4..20], r, out);
                }
                WeightFormat::Q4_0 => scatter_words(&src[2..18], r, out),
                WeightFormat::Q8_0 => {
                    let mut q = [0u8; QK];
                    for (dst, &s) in q.iter_mut().zip(&src[2..34]) {
                        *dst = s ^ 0x80; // i8 + 128 as u8
                    }
                    scatter_words(&q, r, out);
                }
            }
        }
    }
    buf
}

/// Places consecutive 4-byte words of one row's quants into lane `r` of successive
/// 64-byte chunks.
fn scatter_words(quants: &[u8], r: usize, record: &mut [u8]) {
    for (i, word) in quants.chunks_exact(4).enumerate() {
        record[i * 64 + 4 * r..i * 64 + 4 * r + 4].copy_from_slice(word);
    }
}

/// Dequantizes row `row` of a repacked matrix into `out` (`k` values).
pub fn dequantize_row(format: WeightFormat, data: &[u8], k: usize, row: usize, out: &mut [f32]) {
    let nb = k / QK;
    let rec = format.record_bytes();
    let (g, r) = (row / GROUP, row % GROUP);
    for b in 0..nb {
        let record = &data[(g * nb + b) * rec..][..rec];
        let d = read_f16(record, format.scales_offset() + 2 * r);
        let vals = &mut out[b * QK..(b + 1) * QK];
        match format {
            WeightFormat::Q4_1 | WeightFormat::Q4_0 => {
                let m = match format {
                    WeightFormat::Q4_1 => read_f16(record, Q4_1_MINS_OFFSET + 2 * r),
                    _ => -8.0 * d,
                };
                for i in 0..QK / 2 {
                    let byte = record[(i / 4) * 64 + 4 * r + i % 4];
                    vals[i] = d * f32::from(byte & 0x0f) + m;
                    vals[i + QK / 2] = d * f32::from(byte >> 4) + m;
                }
            }
            WeightFormat::Q8_0 => {
                for (i, v) in vals.iter_mut().enumerate() {
                    let q = (record[(i / 4) * 64 + 4 * r + i % 4] ^ 0x80) as i8;
                    *v = d * f32::from(q);
                }
            }
        }
    }
}

pub fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_match_gguf_blocks() {
        for f in [WeightFormat::Q4_1, WeightFormat::Q4_0, WeightFormat::Q8_0] {
            assert_eq!(f.record_bytes(), GROUP * f.gguf_block_bytes(), "{f:?}");
        }
    }

    #[test]
    fn q8_0_roundtrips_through_repack() {
        let (n, k) = (17, 64);
        let mut gguf = Vec::new();
        for row in 0..n {
            for b in 0..k / QK {
                gguf.extend_from_slice(&f16::from_f32(0.5 + row as f32).to_le_bytes());
                gguf.extend((0..QK).map(|i| ((row * 7 + b * 3 + i * 5) % 256) as u8));
            }
        }
        let packed = repack(WeightFormat::Q8_0, &gguf, n, k);
        let mut out = vec![0.0; k];
        for row in 0..n {
            dequantize_row(WeightFormat::Q8_0, packed.as_slice(), k, row, &mut out);
            for (c, &v) in out.iter().enumerate() {
                let (b, i) = (c / QK, c % QK);
                let q = ((row * 7 + b * 3 + i * 5) % 256) as u8 as i8;
                assert_eq!(v, (0.5 + row as f32) * f32::from(q), "row {row} col {c}");
            }
        }
    }
}
