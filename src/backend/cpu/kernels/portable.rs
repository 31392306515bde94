//! The reference kernel in plain Rust: the exact integer dot products and the same
//! sequence of fused multiply-adds as the SIMD kernels, so their results are identical.

use super::layout::{
    q5_value, q6k_scales, q6k_value, record_offset, record_shape, scale_and_min, WeightFormat, FMT_Q6K,
    FMT_Q8_0, GROUP, QK,
};
use super::tile::{store_partial, Tile};

/// # Safety
/// See [`super::tile::TileFn`].
pub unsafe fn tile<const F: u8, const MR: usize>(t: &Tile<'_>) {
    let shape = record_shape(F);
    let format = WeightFormat::from_id(F);
    let a = t.acts;
    let (k, nb) = (a.k, a.nb);
    let mut acc = [[0.0f32; GROUP]; MR];
    for b in 0..nb {
        let record = &t.w[record_offset(F, b)..][..shape.bytes];
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = t.row0 + r;
            let xq = &a.qs[row * k + b * QK..][..QK];
            let (dx, sx, isum) = (a.d[row * nb + b], a.s[row * nb + b], a.isum[row * nb + b]);
            for (c, acc) in acc.iter_mut().enumerate() {
                let byte = |i: usize| record[(i / 4) * 64 + 4 * c + i % 4];
                if F == FMT_Q6K {
                    // Two half-blocks with a scale each, in the AVX2 kernel's order.
                    let scales = q6k_scales(t.w, b, c);
                    for (half, scale) in scales.iter().enumerate() {
                        let dot: i32 = (16 * half..16 * half + 16)
                            .map(|i| q6k_value(record, c, i) * i32::from(xq[i]))
                            .sum();
                        *acc = (dot as f32).mul_add(scale * dx, *acc);
                    }
                    continue;
                }
                let mut dot = 0i32;
                if F == FMT_Q8_0 {
                    for (i, &x) in xq.iter().enumerate() {
                        dot += i32::from((byte(i) ^ 0x80) as i8) * i32::from(x);
                    }
                } else if format.is_q5() {
                    for (i, &x) in xq.iter().enumerate() {
                        dot += q5_value(record, c, i) * i32::from(x);
                    }
                } else {
                    for i in 0..QK / 2 {
                        let q = byte(i);
                        dot += i32::from(q & 0x0f) * i32::from(xq[i])
                            + i32::from(q >> 4) * i32::from(xq[i + QK / 2]);
                    }
                }
                dot -= format.zero_point() * isum;
                let (dw, mw) = scale_and_min(format, t.w, b, c);
                *acc = (dot as f32).mul_add(dw * dx, *acc);
                if shape.has_mins {
                    *acc = mw.mul_add(sx, *acc);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        store_partial(t.out.add(r * t.ldo), acc, t.ncols);
    }
}
