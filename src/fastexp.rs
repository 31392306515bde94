//! A branch-free `exp` for non-positive arguments (softmax in sampling and in
//! attention), so passes over many values auto-vectorise instead of calling libm.
//!
//! Every exponent here is `(logit - max) / temperature <= 0`. Range reduction
//! `x = n ln2 + r`, |r| <= ln2 / 2, a degree-7 Taylor polynomial for `e^r`
//! (truncation error below 1e-8, under f32 resolution) and `2^n` built from the
//! exponent bits. Results below `e^-87` (near the smallest normal f32) are 0, so a
//! -inf logit always weighs exactly 0, and `exp(0)` is exactly 1. The tiled attention
//! kernels run the same steps in vector registers (`backend/cpu/attention/lanes.rs`),
//! hence the shared constants.

pub(crate) const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two: `LN2_HI` has few mantissa bits, so `n * LN2_HI` is exact.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 to the nearest integer.
pub(crate) const ROUNDER: f32 = 12_582_912.0;
pub(crate) const UNDERFLOW: f32 = -87.0;

/// Taylor coefficients 1/k! for k = 2..=7, as products: a division would not
/// vectorise as cheaply.
pub(crate) const C2: f32 = 1.0 / 2.0;
pub(crate) const C3: f32 = 1.0 / 6.0;
pub(crate) const C4: f32 = 1.0 / 24.0;
pub(crate) const C5: f32 = 1.0 / 120.0;
pub(crate) const C6: f32 = 1.0 / 720.0;
pub(crate) const C7: f32 = 1.0 / 5040.0;

#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    // Clamping first keeps the bit tricks in range (and maps NaN / -inf somewhere
    // harmless); the select at the end restores the true 0.
    let xc = if x > UNDERFLOW { x } else { UNDERFLOW };
    let shifted = xc * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * (C6 + r * C7))))));
    // `shifted` lies in [2^23, 2^24), where consecutive integers are consecutive bit
    // patterns, so its bits minus ROUNDER's are n; unlike `n as i32` (saturating)
    // this stays a plain vector integer subtract.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    if x > UNDERFLOW {
        p * scale
    } else {
        0.0
    }
}

/// Fills `weights[i] = exp((logits[i] - max) * inv_t)` and returns their sum.
/// `max` must be the maximum of `logits` and `inv_t` positive.
pub fn fill_weights(logits: &[f32], max: f32, inv_t: f32, weights: &mut Vec<f32>) -> f64 {
    weights.clear();
    weights.resize(logits.len(), 0.0);
    for (w, &x) in weights.iter_mut().zip(logits) {
        *w = exp_nonpositive((x - max) * inv_t);
    }
    sum_f64(weights)
}

/// Sum in f64 over eight independent lanes: accurate over 128k terms and still
/// vectorisable (a single running sum would serialise).
pub fn sum_f64(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(x);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_exp_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..870_000 {
            let x = -(i as f32) * 1e-4;
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    #[test]
    fn edges_are_exact() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-1e30), 0.0);
        assert_eq!(exp_nonpositive(-87.5), 0.0);
        assert!(exp_nonpositive(-86.9) > 0.0);
    }

    #[test]
    fn fill_weights_sums_what_it_stores() {
        let logits: Vec<f32> = (0..1001).map(|i| (i % 17) as f32 * -0.3).collect();
        let mut w = Vec::new();
        let total = fill_weights(&logits, 0.0, 2.0, &mut w);
        let direct: f64 = logits.iter().map(|&x| f64::from(x * 2.0).exp()).sum();
        assert_eq!(w.len(), logits.len());
        assert!((total - direct).abs() / direct < 1e-6);
        assert!((sum_f64(&w) - total).abs() < 1e-12);
    }
}
