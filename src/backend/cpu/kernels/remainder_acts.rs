//! `--activations int16`: every 32-value block of the activations to about 16 bits, on
//! the int8 kernels. A block is rounded to 8 bits as `--activations int8` rounds it; what
//! that rounding left (about half a step at most) is rounded to 8 bits again on a scale
//! of its own, some 250 times finer. The remainder rows go under the activation rows
//! into one call of the int8 driver, so the weights are still read once per call, and
//! each output is its row's sum plus its remainder row's sum.
//!
//! The error is that of a block rounded to ≈ 1/64,000 of its largest value (int8: 1/254),
//! at twice the multiply-adds of the int8 path: prefill and large decode batches pay for
//! it, one-sequence decode (bound by reading the weights) much less. The integer sums stay exact and every row is
//! computed on its own, so results are the same bits on every kernel and a row's output
//! never depends on the rows beside it.

use std::cell::Cell;

use rayon::prelude::*;

use super::activations::QActs;
use super::dispatch::Kernel;
use super::gemm::GateFn;
use super::matmul;
use super::QMatrix;

/// Output rows at or above which the two halves are added on every thread.
const PARALLEL_ROWS: usize = 32;

thread_local! {
    /// The call's buffers, reused: a prefill chunk's are megabytes, which fresh
    /// allocations would fault in page by page on every call.
    static SCRATCH: Cell<(QActs, Vec<f32>)> = Cell::new(Default::default());
}

/// `out = x · Wᵀ` on activations rounded to 8 bits plus their 8-bit remainder. The
/// caller has checked the slice lengths.
pub fn run(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    with_both_sums(kernel, w, x, m, |whole, remainder| {
        let rows = out.par_chunks_mut(w.n).zip(whole.par_chunks(w.n)).zip(remainder.par_chunks(w.n));
        rows.with_min_len(PARALLEL_ROWS).for_each(|((o, a), r)| {
            for ((o, &a), &r) in o.iter_mut().zip(a).zip(r) {
                *o = a + r;
            }
        });
    });
}

/// For `w` a stack of a gate and an up projection of `width` rows each: `out[i * width
/// + j] = gate(g, u)` of row `i`'s gate and up outputs `j`, the same bits as [`run`]
/// followed by `gate` over each row, without writing the summed stack out.
pub fn run_gated(
    kernel: Kernel,
    w: &QMatrix,
    x: &[f32],
    m: usize,
    width: usize,
    gate: GateFn,
    out: &mut [f32],
) {
    with_both_sums(kernel, w, x, m, |whole, remainder| {
        let rows = out.par_chunks_mut(width).zip(whole.par_chunks(w.n)).zip(remainder.par_chunks(w.n));
        rows.with_min_len(PARALLEL_ROWS).for_each_init(
            || vec![0.0; w.n],
            |both, ((o, a), r)| {
                for ((b, &a), &r) in both.iter_mut().zip(a).zip(r) {
                    *b = a + r;
                }
                let (g, u) = both.split_at(width);
                gate(g, u, o);
            },
        );
    });
}

/// Runs `finish(whole, remainder)` on the `m × n` outputs of the rows and of their
/// remainder rows.
fn with_both_sums(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize, finish: impl FnOnce(&[f32], &[f32])) {
    if m == 0 || w.n == 0 {
        return;
    }
    // Taken, not borrowed: a nested call on this thread (rayon may run another task
    // here while this one waits) starts with empty buffers instead.
    let (mut acts, mut sums) = SCRATCH.with(Cell::take);
    acts.quantize_with_remainder(kernel, x, m, w.k);
    sums.resize(2 * m * w.n, 0.0);
    matmul::run_quantized(kernel, w, &acts, 2 * m, &mut sums);
    let (whole, remainder) = sums.split_at(m * w.n);
    finish(whole, remainder);
    SCRATCH.with(|c| c.set((acts, sums)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::layout::QK;

    /// Rows `m..2m` hold `x` minus its 8-bit blocks, rounded to 8 bits on their own
    /// scales, and the two together come within 1/25,000 of each block's largest value
    /// (one 8-bit rounding: 1/254); every kernel rounds them alike.
    #[test]
    fn remainder_rows_recover_the_activations_to_sixteen_bits() {
        let (m, k) = (3, 4 * QK);
        let x: Vec<f32> = (0..m * k)
            .map(|i| {
                let v = ((i as f32 * 0.618).fract() - 0.5) * 4.0;
                if i % 53 == 0 {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect();
        let mut acts = QActs::default();
        acts.quantize_with_remainder(Kernel::Portable, &x, m, k);
        let mut coarse = QActs::default();
        coarse.quantize(Kernel::Portable, &x, m, k);
        assert_eq!((&acts.qs[..m * k], &acts.d[..m * k / QK]), (&coarse.qs[..], &coarse.d[..]));
        let remainder: Vec<f32> =
            (0..m * k).map(|i| x[i] - coarse.d[i / QK] * f32::from(coarse.qs[i])).collect();
        let mut fine = QActs::default();
        fine.quantize(Kernel::Portable, &remainder, m, k);
        assert_eq!((&acts.qs[m * k..], &acts.d[m * k / QK..]), (&fine.qs[..], &fine.d[..]));
        assert_eq!((&acts.isum[m * k / QK..], &acts.s[m * k / QK..]), (&fine.isum[..], &fine.s[..]));
        for (blk, xb) in x.chunks(QK).enumerate() {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(amax / 25_000.0 < coarse.d[blk] / 4.0, "the remainder is what makes the difference");
            for (i, &v) in xb.iter().enumerate() {
                let at = blk * QK + i;
                let both = coarse.d[blk] * f32::from(coarse.qs[at]) + fine.d[blk] * f32::from(fine.qs[at]);
                assert!((both - v).abs() <= amax / 25_000.0, "block {blk} value {i}: {both} vs {v}");
            }
        }
        for kernel in Kernel::available() {
            let mut got = QActs::default();
            got.quantize_with_remainder(kernel, &x, m, k);
            assert_eq!((got.qs, got.d, got.isum), (acts.qs.clone(), acts.d.clone(), acts.isum.clone()));
        }
    }
}
