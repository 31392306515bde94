//! The repacked weight layout every kernel reads, and the conversion from GGUF blocks.
//!
//! Output rows are taken 16 at a time ("groups"; the last one padded with zero rows).
//! Within a group the 32-value blocks are stored block by block, and each block of the
//! group is one contiguous record:
//!
//! - quants, as 64-byte chunks in which byte `4 * r + t` of chunk `i` belongs to row `r`
//!   of the group: for Q4 formats it is the GGUF byte `qs[4 i + t]` of that row (low
//!   nibble = value `4 i + t`, high nibble = value `16 + 4 i + t`; 4 chunks); for Q8_0 it
//!   is value `4 i + t` plus 128 as an unsigned byte (8 chunks); Q5 formats add to the
//!   Q4 chunks one chunk of each value's fifth bit (see `Q5_HIGH_OFFSET`);
//! - the 16 rows' scales `d` (f16), then for Q4_1 and Q5_1 the 16 rows' minimums `m` (f16).
//!
//! So one 512-bit (or two 256-bit) integer multiply-adds of a chunk against four
//! activation bytes broadcast to every lane yield partial sums for 16 outputs at once,
//! and every per-row scale is a vector load. The record is as large as the GGUF blocks
//! it replaces, so decode streams exactly the file's bytes.
//!
//! The K-quants keep their two-level scales, so decode streams about the file's bytes;
//! their kernels form `d · sc` (and `dmin · m`) in f32, where the products are exact (an
//! f16 times a small integer), as ggml does. Per group and 256-value super-block:
//!
//! - Q4_K: a 64-byte header of the 16 rows' `d` then `-dmin` (f16, sign flipped so the
//!   minimum `-dmin · m` adds like Q4_1's), then eight records of quants (as Q4_1's) and
//!   the rows' 6-bit `sc` and `m` as bytes: 148 bytes per row and 256 values against the
//!   file's 144;
//! - Q5_K: as Q4_K, each record with Q5's chunk of fifth bits after the quants
//!   (`Q5_HIGH_OFFSET`): 180 bytes per row and 256 values against the file's 176;
//! - Q6_K: a header of the rows' `d` (f16; 32 bytes of padding keep super-blocks on cache
//!   lines), then eight records of each value's low 4 bits (as Q4's quants), its top 2
//!   bits (see `Q6K_HIGH_OFFSET`) and the rows' two signed 8-bit scales, one per 16
//!   values: 212 bytes per row against the file's 210.
//!
//! Invariant: quants of padded rows are zero and their scales are zero, so padded
//! outputs are 0 and never written.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Output rows handled together by one pass of a kernel.
pub const GROUP: usize = 16;
/// Values per block of the repacked layout (every format; a K-quant super-block is eight).
pub const QK: usize = 32;
/// Values per K-quant super-block in the file.
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
    /// 4-bit K-quant: per 32 values `w = d·sc * q - dmin·m`, with `d`, `dmin` per 256
    /// values and the 6-bit `sc`, `m` per 32.
    Q4K,
    /// 5-bit K-quant: Q4_K's scales and minimums over values q in 0..32.
    Q5K,
    /// 6-bit K-quant: per 16 values `w = d·sc * (q - 32)`, q in 0..64, with `d` per 256
    /// values and a signed 8-bit `sc` per 16.
    Q6K,
    /// 5-bit with per-block scale: `w = d * (q - 16)`, q in 0..32 (llama.cpp's Q4_K
    /// stand-in for rows that do not divide into 256 values).
    Q5_0,
    /// 5-bit with per-block scale and minimum: `w = d * q + m`, q in 0..32 (the Q5_K
    /// stand-in).
    Q5_1,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 8] = [
        WeightFormat::Q4_1,
        WeightFormat::Q4_0,
        WeightFormat::Q8_0,
        WeightFormat::Q4K,
        WeightFormat::Q5K,
        WeightFormat::Q6K,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
    ];

    /// The GGUF tensor type this format reads.
    pub const fn ggml_dtype(self) -> GgmlDType {
        match self {
            WeightFormat::Q4_1 => GgmlDType::Q4_1,
            WeightFormat::Q4_0 => GgmlDType::Q4_0,
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
            WeightFormat::Q4K => GgmlDType::Q4K,
            WeightFormat::Q5K => GgmlDType::Q5K,
            WeightFormat::Q6K => GgmlDType::Q6K,
            WeightFormat::Q5_0 => GgmlDType::Q5_0,
            WeightFormat::Q5_1 => GgmlDType::Q5_1,
        }
    }

    /// Bytes of one GGUF block of this format.
    pub const fn gguf_block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4K => 144,
            WeightFormat::Q5K => 176,
            WeightFormat::Q6K => 210,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q5_1 => 24,
        }
    }

    /// Values per GGUF block of this format.
    pub const fn gguf_block_values(self) -> usize {
        match self {
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => QK_K,
            _ => QK,
        }
    }

    /// Bytes of one row of `k` values in the file.
    pub const fn gguf_row_bytes(self, k: usize) -> usize {
        k / self.gguf_block_values() * self.gguf_block_bytes()
    }

    /// Offset of the 16 scales inside a record (the quants come first).
    pub const fn scales_offset(self) -> usize {
        match self {
            WeightFormat::Q4_1 | WeightFormat::Q4_0 | WeightFormat::Q4K => GROUP * QK / 2,
            WeightFormat::Q8_0 => GROUP * QK,
            WeightFormat::Q6K => Q6K_HIGH_OFFSET + 2 * 64,
            WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5K => Q5_HIGH_OFFSET + 64,
        }
    }

    /// Bytes of one row's scale or minimum in a record: f16, or the byte of the
    /// K-quants (Q6_K has two scales per row, `GROUP` bytes apart).
    pub const fn scale_bytes(self) -> usize {
        match self {
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => 1,
            _ => 2,
        }
    }

    /// Offset of the 16 minimums inside a record, for formats that have them.
    pub const fn mins_offset(self) -> Option<usize> {
        match self {
            WeightFormat::Q4_1 | WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q5_1 => {
                Some(self.scales_offset() + GROUP * self.scale_bytes())
            }
            WeightFormat::Q4_0 | WeightFormat::Q8_0 | WeightFormat::Q6K | WeightFormat::Q5_0 => None,
        }
    }

    /// Bytes of one record (16 rows × one 32-value block).
    pub const fn record_bytes(self) -> usize {
        let per_row = match (self, self.mins_offset()) {
            (WeightFormat::Q6K, _) | (_, Some(_)) => 2 * self.scale_bytes(),
            _ => self.scale_bytes(),
        };
        self.scales_offset() + GROUP * per_row
    }

    const fn is_k_quant(self) -> bool {
        matches!(self, WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K)
    }

    /// Whether blocks take their scale and minimum from a super-block header's `d` and
    /// `-dmin` times the record's 6-bit `sc` and `m` (`K_HEADER_BYTES`).
    pub const fn has_k_scales_and_mins(self) -> bool {
        matches!(self, WeightFormat::Q4K | WeightFormat::Q5K)
    }

    /// The `z` of formats stored as `w = d * (q - z)` (Q4_0: 8, Q5_0: 16), else 0: kernels
    /// subtract `z` times the activations' block sum from the integer dot product.
    pub const fn zero_point(self) -> i32 {
        match self {
            WeightFormat::Q4_0 => 8,
            WeightFormat::Q5_0 => 16,
            _ => 0,
        }
    }

    /// Whether values have a fifth bit beside the Q4 nibbles (`Q5_HIGH_OFFSET`).
    pub const fn is_q5(self) -> bool {
        matches!(self, WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5K)
    }

    /// Bytes of one group (16 rows × `k` values).
    pub const fn group_bytes(self, k: usize) -> usize {
        if self.is_k_quant() {
            k / QK_K * (K_HEADER_BYTES + K_RECORDS * self.record_bytes())
        } else {
            k / QK * self.record_bytes()
        }
    }

    /// A small integer naming the format, used as a const generic by the kernels.
    pub const fn id(self) -> u8 {
        match self {
            WeightFormat::Q4_1 => FMT_Q4_1,
            WeightFormat::Q4_0 => FMT_Q4_0,
            WeightFormat::Q8_0 => FMT_Q8_0,
            WeightFormat::Q4K => FMT_Q4K,
            WeightFormat::Q5K => FMT_Q5K,
            WeightFormat::Q6K => FMT_Q6K,
            WeightFormat::Q5_0 => FMT_Q5_0,
            WeightFormat::Q5_1 => FMT_Q5_1,
        }
    }

    pub const fn from_id(id: u8) -> WeightFormat {
        match id {
            FMT_Q4_1 => WeightFormat::Q4_1,
            FMT_Q4_0 => WeightFormat::Q4_0,
            FMT_Q4K => WeightFormat::Q4K,
            FMT_Q5K => WeightFormat::Q5K,
            FMT_Q6K => WeightFormat::Q6K,
            FMT_Q5_0 => WeightFormat::Q5_0,
            FMT_Q5_1 => WeightFormat::Q5_1,
            _ => WeightFormat::Q8_0,
        }
    }
}

pub const FMT_Q4_1: u8 = 0;
pub const FMT_Q4_0: u8 = 1;
pub const FMT_Q8_0: u8 = 2;
pub const FMT_Q4K: u8 = 3;
pub const FMT_Q6K: u8 = 4;
pub const FMT_Q5_0: u8 = 5;
pub const FMT_Q5_1: u8 = 6;
pub const FMT_Q5K: u8 = 7;

/// Records per K-quant super-block.
const K_RECORDS: usize = QK_K / QK;
/// A K-quant super-block's header: 16 rows' `d` (f16), then for Q4_K and Q5_K 16 rows'
/// `-dmin`.
pub const K_HEADER_BYTES: usize = 64;
/// Offset of `-dmin` in a Q4_K or Q5_K header.
pub const Q4K_DMIN_OFFSET: usize = GROUP * 2;
/// Offset, in a Q6_K record, of two 64-byte chunks holding the top 2 bits of each
/// value: in the first, byte `4 * r + t` of row `r` holds those of values `4 i + t`
/// at bits `2 i..2 i + 2` (i in 0..4); the second the same for values `16 + 4 i + t`.
pub const Q6K_HIGH_OFFSET: usize = GROUP * QK / 2;
/// Offset, in a Q5_0, Q5_1 or Q5_K record, of the 64-byte chunk holding each value's fifth
/// bit: byte `4 * r + t` of row `r` holds that of value `4 i + t` at bit `i` and that of
/// value `16 + 4 i + t` at bit `4 + i` (i in 0..4), the values whose low 4 bits sit in
/// the same byte position of quant chunk `i`.
pub const Q5_HIGH_OFFSET: usize = GROUP * QK / 2;

/// Offset of block `b`'s record within a group of the format with id `format`.
#[inline(always)]
pub const fn record_offset(format: u8, b: usize) -> usize {
    let f = WeightFormat::from_id(format);
    if f.is_k_quant() {
        k_header_offset(format, b) + K_HEADER_BYTES + (b % K_RECORDS) * f.record_bytes()
    } else {
        b * f.record_bytes()
    }
}

/// Offset of the header of the K-quant super-block holding block `b`, within a group.
#[inline(always)]
pub const fn k_header_offset(format: u8, b: usize) -> usize {
    b / K_RECORDS * (K_HEADER_BYTES + K_RECORDS * WeightFormat::from_id(format).record_bytes())
}

/// Where a kernel finds things in a record of the format with id `format` (kernels
/// take the format as a const generic, so all of this is known at compile time).
pub struct RecordShape {
    /// Offset of the 16 scales.
    pub scales: usize,
    /// Offset of the 16 minimums (formats `w = d * q + m`), 0 for formats without.
    pub mins: usize,
    /// Whether the format has minimums.
    pub has_mins: bool,
    /// Bytes of the record.
    pub bytes: usize,
}

pub const fn record_shape(format: u8) -> RecordShape {
    let f = WeightFormat::from_id(format);
    let (has_mins, mins) = match f.mins_offset() {
        Some(at) => (true, at),
        None => (false, 0),
    };
    RecordShape { scales: f.scales_offset(), mins, has_mins, bytes: f.record_bytes() }
}

/// Row `r`'s scale and additive minimum for block `b` of a group (`w = d * q + m`;
/// `m` is 0 for Q8_0 and not used for Q4_0; Q6_K's two scales are [`q6k_scales`], the
/// first returned here). The kernels compute exactly these, in the same order.
pub fn scale_and_min(format: WeightFormat, group: &[u8], b: usize, r: usize) -> (f32, f32) {
    let record = &group[record_offset(format.id(), b)..][..format.record_bytes()];
    let so = format.scales_offset();
    match format {
        WeightFormat::Q4K | WeightFormat::Q5K => {
            let header = &group[k_header_offset(format.id(), b)..][..K_HEADER_BYTES];
            let (d, neg_dmin) = (read_f16(header, 2 * r), read_f16(header, Q4K_DMIN_OFFSET + 2 * r));
            let (sc, m) = (record[so + r], record[so + GROUP + r]);
            (d * f32::from(sc), neg_dmin * f32::from(m))
        }
        WeightFormat::Q4_1 | WeightFormat::Q5_1 => {
            (read_f16(record, so + 2 * r), read_f16(record, so + 2 * GROUP + 2 * r))
        }
        WeightFormat::Q4_0 | WeightFormat::Q8_0 | WeightFormat::Q5_0 => (read_f16(record, so + 2 * r), 0.0),
        WeightFormat::Q6K => (q6k_scales(group, b, r)[0], 0.0),
    }
}

/// Value `i` (0..32) of row `r` in a Q6_K record, as the signed `q - 32`.
pub fn q6k_value(record: &[u8], r: usize, i: usize) -> i32 {
    let (half, j) = (i / 16, i % 16);
    let byte = record[(j / 4) * 64 + 4 * r + j % 4];
    let low = if half == 0 { byte & 0x0f } else { byte >> 4 };
    let top = (record[Q6K_HIGH_OFFSET + 64 * half + 4 * r + j % 4] >> (2 * (j / 4))) & 3;
    i32::from(low | (top << 4)) - 32
}

/// Value `i` (0..32) of row `r` in a Q5_0, Q5_1 or Q5_K record, as the unsigned `q` (0..32).
pub fn q5_value(record: &[u8], r: usize, i: usize) -> i32 {
    let (half, j) = (i / 16, i % 16);
    let byte = record[(j / 4) * 64 + 4 * r + j % 4];
    let low = if half == 0 { byte & 0x0f } else { byte >> 4 };
    let top = (record[Q5_HIGH_OFFSET + 4 * r + j % 4] >> (4 * half + j / 4)) & 1;
    i32::from(low | (top << 4))
}

/// Row `r`'s two scales `d · sc` (values 0–15, 16–31) for block `b` of a Q6_K group.
pub fn q6k_scales(group: &[u8], b: usize, r: usize) -> [f32; 2] {
    let d = read_f16(&group[k_header_offset(FMT_Q6K, b)..], 2 * r);
    let record = &group[record_offset(FMT_Q6K, b)..][..WeightFormat::Q6K.record_bytes()];
    let so = WeightFormat::Q6K.scales_offset();
    [d * f32::from(record[so + r] as i8), d * f32::from(record[so + GROUP + r] as i8)]
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
    let groups = n.div_ceil(GROUP);
    let group_bytes = format.group_bytes(k);
    let mut buf = AlignedBytes::zeroed(groups * group_bytes);
    let dst = buf.as_mut_slice();
    for (row, src) in gguf.chunks_exact(format.gguf_row_bytes(k)).take(n).enumerate() {
        let (g, r) = (row / GROUP, row % GROUP);
        let group = &mut dst[g * group_bytes..][..group_bytes];
        let put = |group: &mut [u8], b: usize, scale: &[u8], min: &[u8], quants: &[u8]| {
            put_row_block(format, group, b, r, scale, min, quants)
        };
        if format.has_k_scales_and_mins() {
            for (s, block) in src.chunks_exact(format.gguf_block_bytes()).enumerate() {
                // d, dmin, 12 bytes of 6-bit scales, [Q5_K: 32 bytes of fifth bits,]
                // then the nibbles.
                let scales: &[u8; 12] = block[4..16].try_into().expect("12 bytes of scales");
                let (fifth_bits, nibbles) = if format == WeightFormat::Q5K {
                    (Some(&block[16..48]), &block[48..176])
                } else {
                    (None, &block[16..144])
                };
                for (i, q) in q4k_quants(nibbles).iter().enumerate() {
                    let (sc, m) = q4k_scale_min(i, scales);
                    put(group, s * K_RECORDS + i, &[sc], &[m], q);
                    if let Some(qh) = fifth_bits {
                        // Sub-block `i`'s value `l` has its fifth bit at bit `i` of `qh[l]`.
                        let high = (0..QK).fold(0u32, |acc, l| acc | (u32::from((qh[l] >> i) & 1) << l));
                        put_q5_high_bits(format, group, s * K_RECORDS + i, r, high);
                    }
                }
                let header = &mut group[k_header_offset(format.id(), s * K_RECORDS)..][..K_HEADER_BYTES];
                header[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
                // f16 sign bit flipped: exact negation.
                let neg_dmin = [block[2], block[3] ^ 0x80];
                header[Q4K_DMIN_OFFSET + 2 * r..Q4K_DMIN_OFFSET + 2 * r + 2].copy_from_slice(&neg_dmin);
            }
            continue;
        }
        if format == WeightFormat::Q6K {
            for (s, block) in src.chunks_exact(format.gguf_block_bytes()).enumerate() {
                let (values, scales) = q6k_values(block);
                for (i, v) in values.chunks_exact(QK).enumerate() {
                    put_q6k_row_block(group, s * K_RECORDS + i, r, v, [scales[2 * i], scales[2 * i + 1]]);
                }
                let header = &mut group[k_header_offset(FMT_Q6K, s * K_RECORDS)..][..K_HEADER_BYTES];
                header[2 * r..2 * r + 2].copy_from_slice(&block[208..210]);
            }
            continue;
        }
        for (b, block) in src.chunks_exact(format.gguf_block_bytes()).enumerate() {
            match format {
                WeightFormat::Q4_1 => put(group, b, &block[0..2], &block[2..4], &block[4..20]),
                WeightFormat::Q4_0 => put(group, b, &block[0..2], &[], &block[2..18]),
                WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                    // d, [m,] the fifth bits as a little-endian u32 (bit j of value j),
                    // then the nibbles as Q4's.
                    let (min, at) =
                        if format == WeightFormat::Q5_1 { (&block[2..4], 4) } else { (&[][..], 2) };
                    put(group, b, &block[0..2], min, &block[at + 4..]);
                    let high = u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
                    put_q5_high_bits(format, group, b, r, high);
                }
                _ => {
                    let mut q8 = [0u8; QK];
                    for (dst, &s) in q8.iter_mut().zip(&block[2..34]) {
                        *dst = s ^ 0x80; // i8 + 128 as u8
                    }
                    put(group, b, &block[0..2], &[], &q8);
                }
            }
        }
    }
    buf
}

/// Writes row `r`'s share of block `b`'s record in `group`: its scale and minimum
/// bytes (the minimum ignored by formats without) and its quants in GGUF order.
fn put_row_block(
    format: WeightFormat,
    group: &mut [u8],
    b: usize,
    r: usize,
    scale: &[u8],
    min: &[u8],
    quants: &[u8],
) {
    let (so, sb) = (format.scales_offset(), format.scale_bytes());
    let out = &mut group[record_offset(format.id(), b)..][..format.record_bytes()];
    out[so + r * sb..][..sb].copy_from_slice(scale);
    if let Some(mins) = format.mins_offset() {
        out[mins + r * sb..][..sb].copy_from_slice(min);
    }
    scatter_words(quants, r, out);
}

/// Writes row `r`'s fifth bits (bit `j` of `high` is value `j`'s) into the high-bits
/// chunk of Q5 block `b`'s record.
fn put_q5_high_bits(format: WeightFormat, group: &mut [u8], b: usize, r: usize, high: u32) {
    let at = record_offset(format.id(), b) + Q5_HIGH_OFFSET + 4 * r;
    for t in 0..4 {
        let bit = |j: usize| ((high >> j) & 1) as u8;
        group[at + t] =
            (0..4).fold(0u8, |acc, i| acc | (bit(4 * i + t) << i) | (bit(16 + 4 * i + t) << (4 + i)));
    }
}

/// Writes row `r`'s share of Q6_K block `b`: `values` are its 32 quants (0..64, the
/// `q` of `d·sc * (q - 32)`), `scales` the signed scales of values 0–15 and 16–31.
fn put_q6k_row_block(group: &mut [u8], b: usize, r: usize, values: &[u8], scales: [u8; 2]) {
    let format = WeightFormat::Q6K;
    let out = &mut group[record_offset(FMT_Q6K, b)..][..format.record_bytes()];
    let low: [u8; QK / 2] = std::array::from_fn(|i| (values[i] & 0x0f) | ((values[i + QK / 2] & 0x0f) << 4));
    scatter_words(&low, r, out);
    for half in 0..2 {
        for t in 0..4 {
            let tops = (0..4).fold(0u8, |acc, i| acc | ((values[16 * half + 4 * i + t] >> 4) << (2 * i)));
            out[Q6K_HIGH_OFFSET + 64 * half + 4 * r + t] = tops;
        }
    }
    let so = format.scales_offset();
    out[so + r] = scales[0];
    out[so + GROUP + r] = scales[1];
}

/// A Q6_K super-block's 256 quants (0..64, in value order) and 16 scales (as bytes of
/// signed values), decoded from ggml's split of each value into 4 + 2 bits.
fn q6k_values(block: &[u8]) -> ([u8; QK_K], [u8; 16]) {
    let (ql, qh) = (&block[0..128], &block[128..192]);
    let mut values = [0u8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        for l in 0..32 {
            let v = &mut values[128 * half..];
            v[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
            v[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
            v[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    (values, block[192..208].try_into().expect("16 scales"))
}

/// The nibbles of a Q4_K or Q5_K super-block's eight 32-value sub-blocks (`qs`, its 128
/// bytes of them), each as 16 bytes laid out as Q4_1's (low nibble value `i`, high
/// nibble value `16 + i`).
fn q4k_quants(qs: &[u8]) -> [[u8; QK / 2]; K_RECORDS] {
    std::array::from_fn(|sub| {
        // Each 64 values share 32 bytes: the low nibbles are the even sub-block, the
        // high nibbles the odd one.
        let bytes = &qs[32 * (sub / 2)..][..32];
        let value = |t: usize| if sub % 2 == 0 { bytes[t] & 0x0f } else { bytes[t] >> 4 };
        std::array::from_fn(|i| value(i) | (value(i + QK / 2) << 4))
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
    let group_bytes = format.group_bytes(k);
    let (g, r) = (row / GROUP, row % GROUP);
    let group = &data[g * group_bytes..][..group_bytes];
    for b in 0..k / QK {
        let record = &group[record_offset(format.id(), b)..][..format.record_bytes()];
        let vals = &mut out[b * QK..(b + 1) * QK];
        if format == WeightFormat::Q6K {
            let scales = q6k_scales(group, b, r);
            for (i, v) in vals.iter_mut().enumerate() {
                *v = scales[i / 16] * q6k_value(record, r, i) as f32;
            }
            continue;
        }
        let (d, m) = scale_and_min(format, group, b, r);
        // Exact: `d` is an f16 and the zero point a small integer.
        let m = if format.zero_point() != 0 { -(format.zero_point() as f32) * d } else { m };
        if format.is_q5() {
            for (i, v) in vals.iter_mut().enumerate() {
                *v = d * q5_value(record, r, i) as f32 + m;
            }
            continue;
        }
        let quant = |i: usize| record[(i / 4) * 64 + 4 * r + i % 4];
        if format == WeightFormat::Q8_0 {
            for (i, v) in vals.iter_mut().enumerate() {
                *v = d * f32::from((quant(i) ^ 0x80) as i8);
            }
        } else {
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
        for f in [
            WeightFormat::Q4_1,
            WeightFormat::Q4_0,
            WeightFormat::Q8_0,
            WeightFormat::Q5_0,
            WeightFormat::Q5_1,
        ] {
            assert_eq!(f.record_bytes(), GROUP * f.gguf_block_bytes(), "{f:?}");
        }
        // Q4_K: per row and 256 values, 8 × (16 bytes of quants + sc + m) and the
        // header's d and dmin: 148 bytes against the file's 144; whole cache lines.
        assert_eq!(WeightFormat::Q4K.group_bytes(256), GROUP * 148);
        assert_eq!(WeightFormat::Q4K.group_bytes(256) % 64, 0);
        // Q5_K: Q4_K's and a chunk of fifth bits per record: 180 bytes against 176.
        assert_eq!(WeightFormat::Q5K.group_bytes(256), GROUP * 180);
        assert_eq!(WeightFormat::Q5K.group_bytes(256) % 64, 0);
        // Q6_K: the file's 210 bytes per row and 256 values, plus the header's padding.
        assert_eq!(WeightFormat::Q6K.group_bytes(256), GROUP * 210 + 32);
        assert_eq!(WeightFormat::Q6K.group_bytes(256) % 64, 0);
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
