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
//! Q4_K super-blocks (256 values: one f16 scale and minimum, refined by a 6-bit scale
//! and minimum per 32 values) become eight Q4_1-like records whose scales and minimums
//! are the products `d · sc` and `-dmin · m` stored as f32: a product of an f16 and a
//! 6-bit integer needs up to 17 significant bits, so f16 would round it. Such a record
//! (24 bytes per row and block) is a third larger than the file's 18 bytes.
//!
//! So one 512-bit (or two 256-bit) integer multiply-adds of a chunk against four
//! activation bytes broadcast to every lane yield partial sums for 16 outputs at once,
//! and every per-row scale is a vector load. The record is as large as the GGUF blocks
//! it replaces, so decode streams exactly the file's bytes. Invariant: quants of padded
//! rows are zero and their scales are zero, so padded outputs are 0 and never written.

use half::f16;

/// Output rows handled together by one pass of a kernel.
pub const GROUP: usize = 16;
/// Values per block of the repacked layout (every format; a Q4_K super-block is eight).
pub const QK: usize = 32;
/// Values per Q4_K super-block in the file.
pub const QK_K: usize = 256;

/// The weight formats the kernels understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 4-bit with per-block scale and minimum: `w = d * q + m`, q in 0..16.
    Q4_1,
    /// 4-bit with per-block scale: `w = d * (q - 8)`.
    Q4_0,
    /// 8-bit with per-block scale: `w = d * q`, q in -128..128.
    Q8_0,
    /// 4-bit K-quant: per 32 values `w = d·sc * q - dmin·m`, repacked as Q4_1 with f32
    /// scales and minimums.
    Q4K,
}

impl WeightFormat {
    /// Bytes of one GGUF block of this format.
    pub const fn gguf_block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4K => 144,
        }
    }

    /// Values per GGUF block of this format.
    pub const fn gguf_block_values(self) -> usize {
        match self {
            WeightFormat::Q4K => QK_K,
            _ => QK,
        }
    }

    /// Bytes of one row of `k` values in the file.
    pub const fn gguf_row_bytes(self, k: usize) -> usize {
        k / self.gguf_block_values() * self.gguf_block_bytes()
    }

    /// Offset of the 16 scales inside a group record (the quants come first).
    pub const fn scales_offset(self) -> usize {
        match self {
            WeightFormat::Q4_1 | WeightFormat::Q4_0 | WeightFormat::Q4K => GROUP * QK / 2,
            WeightFormat::Q8_0 => GROUP * QK,
        }
    }

    /// Bytes of one scale or minimum: f16, except f32 for Q4_K.
    pub const fn scale_bytes(self) -> usize {
        match self {
            WeightFormat::Q4K => 4,
            _ => 2,
        }
    }

    /// Offset of the 16 minimums inside a group record, for formats that have them.
    pub const fn mins_offset(self) -> Option<usize> {
        match self {
            WeightFormat::Q4_1 | WeightFormat::Q4K => Some(self.scales_offset() + GROUP * self.scale_bytes()),
            WeightFormat::Q4_0 | WeightFormat::Q8_0 => None,
        }
    }

    /// Bytes of one group record (16 rows × one block).
    pub const fn record_bytes(self) -> usize {
        let per_row = match self.mins_offset() {
            Some(_) => 2 * self.scale_bytes(),
            None => self.scale_bytes(),
        };
        self.scales_offset() + GROUP * per_row
    }

    /// A small integer naming the format, used as a const generic by the kernels.
    pub const fn id(self) -> u8 {
        match self {
            WeightFormat::Q4_1 => FMT_Q4_1,
            WeightFormat::Q4_0 => FMT_Q4_0,
            WeightFormat::Q8_0 => FMT_Q8_0,
            WeightFormat::Q4K => FMT_Q4K,
        }
    }

    const fn from_id(id: u8) -> WeightFormat {
        match id {
            FMT_Q4_1 => WeightFormat::Q4_1,
            FMT_Q4_0 => WeightFormat::Q4_0,
            FMT_Q4K => WeightFormat::Q4K,
            _ => WeightFormat::Q8_0,
        }
    }
}

pub const FMT_Q4_1: u8 = 0;
pub const FMT_Q4_0: u8 = 1;
pub const FMT_Q8_0: u8 = 2;
pub const FMT_Q4K: u8 = 3;

/// Where a kernel finds things in a record of the format with id `format` (kernels
/// take the format as a const generic, so all of this is known at compile time).
pub struct RecordShape {
    /// Offset of the 16 scales.
    pub scales: usize,
    /// Offset of the 16 minimums (formats `w = d * q + m`), 0 for formats without.
    pub mins: usize,
    /// Whether the format has minimums.
    pub has_mins: bool,
    /// Scales and minimums are f32 (else f16).
    pub f32_scales: bool,
    /// Bytes of the record.
    pub bytes: usize,
}

pub const fn record_shape(format: u8) -> RecordShape {
    let f = WeightFormat::from_id(format);
    let (has_mins, mins) = match f.mins_offset() {
        Some(at) => (true, at),
        None => (false, 0),
    };
    RecordShape {
        scales: f.scales_offset(),
        mins,
        has_mins,
        f32_scales: f.scale_bytes() == 4,
        bytes: f.record_bytes(),
    }
}

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

/// Repacks GGUF rows (`n` rows of `k` values, as in the file) into groups.
/// The caller has checked that `gguf.len()` matches `n`, `k` and the format.
pub fn repack(format: WeightFormat, gguf: &[u8], n: usize, k: usize) -> AlignedBytes {
    let nb = k / QK;
    let groups = n.div_ceil(GROUP);
    let rec = format.record_bytes();
    let row_bytes = format.gguf_row_bytes(k);
    let mut buf = AlignedBytes::zeroed(groups * nb * rec);
    let dst = buf.as_mut_slice();
    for (row, src) in gguf.chunks_exact(row_bytes).take(n).enumerate() {
        let (g, r) = (row / GROUP, row % GROUP);
        let mut put = |b: usize, block: RowBlock| {
            let out = &mut dst[(g * nb + b) * rec..][..rec];
            let (at, len) = (format.scales_offset() + r * format.scale_bytes(), format.scale_bytes());
            out[at..at + len].copy_from_slice(&block.scale[..len]);
            if let Some(mins) = format.mins_offset() {
                let at = mins + r * format.scale_bytes();
                out[at..at + len].copy_from_slice(&block.min[..len]);
            }
            scatter_words(block.quants, r, out);
        };
        match format {
            WeightFormat::Q4K => {
                for (sb, super_block) in src.chunks_exact(format.gguf_block_bytes()).enumerate() {
                    for (i, sub) in q4k_sub_blocks(super_block).iter().enumerate() {
                        let (scale, min) = (sub.0.to_le_bytes(), sub.1.to_le_bytes());
                        put(sb * (QK_K / QK) + i, RowBlock { scale, min, quants: &sub.2 });
                    }
                }
            }
            _ => {
                for (b, block) in src.chunks_exact(format.gguf_block_bytes()).enumerate() {
                    let f16_pair = |at: usize| [block[at], block[at + 1], 0, 0];
                    let mut q8 = [0u8; QK];
                    let (min, quants) = match format {
                        WeightFormat::Q4_1 => (f16_pair(2), &block[4..20]),
                        WeightFormat::Q4_0 => ([0; 4], &block[2..18]),
                        _ => {
                            for (dst, &s) in q8.iter_mut().zip(&block[2..34]) {
                                *dst = s ^ 0x80; // i8 + 128 as u8
                            }
                            ([0; 4], &q8[..])
                        }
                    };
                    put(b, RowBlock { scale: f16_pair(0), min, quants });
                }
            }
        }
    }
    buf
}

/// One row's share of a record, as raw little-endian scale and minimum (the first
/// `scale_bytes` of each are used) and the quants in GGUF order.
struct RowBlock<'a> {
    scale: [u8; 4],
    min: [u8; 4],
    quants: &'a [u8],
}

/// The eight 32-value sub-blocks of a Q4_K super-block as (scale, minimum, 16 bytes of
/// quants laid out as Q4_1's: low nibble value `i`, high nibble value `16 + i`), such
/// that value `v = scale * q + minimum` exactly as ggml dequantizes it.
fn q4k_sub_blocks(block: &[u8]) -> [(f32, f32, [u8; QK / 2]); QK_K / QK] {
    let d = read_f16(block, 0);
    let dmin = read_f16(block, 2);
    let scales: &[u8; 12] = block[4..16].try_into().expect("12 bytes of scales");
    let qs = &block[16..144];
    std::array::from_fn(|sub| {
        // Each 64 values share 32 bytes: the low nibbles are the even sub-block, the
        // high nibbles the odd one.
        let bytes = &qs[32 * (sub / 2)..][..32];
        let value = |t: usize| if sub % 2 == 0 { bytes[t] & 0x0f } else { bytes[t] >> 4 };
        let quants = std::array::from_fn(|i| value(i) | (value(i + QK / 2) << 4));
        let (sc, m) = q4k_scale_min(sub, scales);
        (d * f32::from(sc), -(dmin * f32::from(m)), quants)
    })
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K super-block: sub-blocks 0–3
/// keep theirs in the low 6 bits of bytes `j` and `j + 4`; 4–7 split theirs between a
/// nibble of byte `j + 4` and the top 2 bits of bytes `j - 4` and `j`.
fn q4k_scale_min(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
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
    let scale = |record: &[u8], at: usize| match format.scale_bytes() {
        4 => f32::from_le_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]]),
        _ => read_f16(record, at),
    };
    for b in 0..nb {
        let record = &data[(g * nb + b) * rec..][..rec];
        let d = scale(record, format.scales_offset() + r * format.scale_bytes());
        let vals = &mut out[b * QK..(b + 1) * QK];
        let quant = |i: usize| record[(i / 4) * 64 + 4 * r + i % 4];
        if format == WeightFormat::Q8_0 {
            for (i, v) in vals.iter_mut().enumerate() {
                *v = d * f32::from((quant(i) ^ 0x80) as i8);
            }
        } else {
            let m = match format.mins_offset() {
                Some(mins) => scale(record, mins + r * format.scale_bytes()),
                None => -8.0 * d,
            };
            for i in 0..QK / 2 {
                vals[i] = d * f32::from(quant(i) & 0x0f) + m;
                vals[i + QK / 2] = d * f32::from(quant(i) >> 4) + m;
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
        // Q4_K: 16 bytes of quants and two f32 per row and 32 values, in whole lines.
        assert_eq!(WeightFormat::Q4K.record_bytes(), GROUP * 24);
        assert_eq!(WeightFormat::Q4K.record_bytes() % 64, 0);
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
