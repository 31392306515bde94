//! The 8-bit float the KV cache can store values in (`--kv-cache-dtype fp8`): OCP FP8
//! E4M3 (the `e4m3fn` of PyTorch and vLLM's `fp8_e4m3`: 4 exponent bits, 3 mantissa
//! bits, no infinities, ±448 at most). Values are stored unscaled: K and V of the
//! models this server runs stay far inside its range, and a value past it saturates.
//!
//! The `float8` crate (already in the tree through candle) converts one value at a time
//! through f64, too slow for a prefill chunk's K and V (millions of values a step); the
//! conversions here are branch-free bit arithmetic, tested against it for every f16
//! value and many random f32s. Widening is exact and cheap in vector registers (a
//! shift and a mask turn the byte into an f16 whose value is 2⁻⁸ of it), which is what
//! lets attention read half the bytes of an f16 cache.

/// One E4M3 value, as its bits. Zero is all bits clear, so a pool of them can come from
/// zeroed memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct E4m3(pub u8);

/// The largest finite value.
pub const MAX: f32 = 448.0;
/// What an f16 made from an E4M3 byte by [`f16_bits`] must be multiplied by: the
/// exponent biases differ by 8 (15 against 7).
pub const F16_SCALE: f32 = 256.0;

/// Bits of `2^14`: added to a magnitude below E4M3's smallest normal, it puts the f32's
/// last mantissa bit at `2^-9`, E4M3's subnormal step, so the hardware rounds (to
/// nearest, ties to even) exactly where E4M3 must.
const SUBNORMAL_MAGIC: u32 = (127 + 14) << 23;
/// E4M3's smallest normal, `2^-6`.
const MIN_NORMAL: f32 = 1.0 / 64.0;

impl E4m3 {
    pub const ZERO: E4m3 = E4m3(0);

    /// `x` rounded to the nearest E4M3 value (ties to even), saturating at ±448; NaN
    /// stays NaN.
    #[inline(always)]
    pub fn from_f32(x: f32) -> E4m3 {
        let bits = x.to_bits();
        let sign = (bits >> 24) as u8 & 0x80;
        let a = f32::from_bits(bits & 0x7fff_ffff);
        let magnitude = if a >= MIN_NORMAL {
            let b = a.to_bits();
            // Round away the low 20 mantissa bits, ties to even, then rebias the
            // exponent (127 → 7); anything past 448 (and infinity) saturates.
            let rounded = (b + 0x7_ffff + ((b >> 20) & 1)) >> 20;
            (rounded - ((127 - 7) << 3)).min(0x7e)
        } else {
            (a + f32::from_bits(SUBNORMAL_MAGIC)).to_bits().wrapping_sub(SUBNORMAL_MAGIC)
        };
        // NaN fails both comparisons above and lands in the subnormal branch.
        let magnitude = if a.is_nan() { 0x7f } else { magnitude };
        E4m3(sign | magnitude as u8)
    }

    /// The value, exactly.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        half::f16::from_bits(f16_bits(self.0)).to_f32() * F16_SCALE
    }
}

/// The f16 whose value is `2^-8` times E4M3 `byte`'s (exactly, subnormals included):
/// the exponent and mantissa bits move up into f16's places, the sign to the top. The
/// vector kernels do the same on 16-bit lanes: sign-extend, shift left 7, mask.
#[inline(always)]
pub fn f16_bits(byte: u8) -> u16 {
    ((byte as i8 as i16 as u16) << 7) & F16_MASK
}

/// The f16 bits [`f16_bits`] keeps after its shift: the sign and the 7 bits below f16's
/// top exponent bit (which a sign-extended negative byte would set).
pub const F16_MASK: u16 = 0xbf80;

/// `dst[i] = E4m3::from_f32(src[i])`.
pub fn narrow(src: &[f32], dst: &mut [E4m3]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = E4m3::from_f32(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use float8::F8E4M3;

    fn reference(x: f32) -> u8 {
        F8E4M3::from_f32(x).to_bits()
    }

    #[test]
    fn widening_every_byte_gives_the_crates_value() {
        for b in 0..=255u8 {
            if b & 0x7f == 0x7f {
                continue; // NaN, never stored (narrowing saturates)
            }
            let want = F8E4M3::from_bits(b).to_f32();
            let got = E4m3(b).to_f32();
            assert_eq!(got.to_bits(), want.to_bits(), "byte {b:#04x}: {got} against {want}");
        }
    }

    #[test]
    fn narrowing_rounds_as_the_crate_does() {
        let check = |x: f32| {
            let got = E4m3::from_f32(x).0;
            assert_eq!(got, reference(x), "{x:e} ({:#010x})", x.to_bits());
        };
        // Every f16 value covers each E4M3 interval, its midpoints (ties) included.
        for h in 0..=u16::MAX {
            let x = half::f16::from_bits(h).to_f32();
            if x.is_finite() {
                check(x);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Exponents around E4M3's range: 2^-12 to 2^10.
            let exp = 115 + (state >> 40) as u32 % 23;
            let x = f32::from_bits((state as u32 & 0x807f_ffff) | exp << 23);
            check(x);
        }
    }

    #[test]
    fn out_of_range_saturates_and_nan_stays_nan() {
        for (x, want) in [(1e6, 448.0), (-500.0, -448.0), (f32::INFINITY, 448.0), (f32::NEG_INFINITY, -448.0)]
        {
            assert_eq!(E4m3::from_f32(x).to_f32(), want, "{x}");
        }
        assert_eq!(E4m3::from_f32(f32::NAN).0 & 0x7f, 0x7f);
        assert_eq!(E4m3::from_f32(1e-30).0, 0, "below half the smallest subnormal: zero");
        assert_eq!(E4m3::from_f32(-0.0).0, 0x80);
    }
}
