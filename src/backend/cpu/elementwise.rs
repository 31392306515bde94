//! The per-element steps between the matmuls: RMS normalisation, the residual add and
//! the SwiGLU gate. Each is compiled for AVX-512 and AVX2 as well as the baseline and
//! picked at run time (the release binary targets baseline x86-64, whose SSE2 loops
//! were a visible share of a batch-16 decode step); the arithmetic is the same in every
//! version, so results do not depend on the machine.

use rayon::prelude::*;

use crate::fastexp::exp_nonpositive;

/// Rows below which the gate runs on the calling thread: a decode batch's few rows
/// take less time than waking another thread.
const PARALLEL_ROWS: usize = 32;

/// `out[row] = x[row] / rms(x[row]) * weight` for every row of `weight.len()` values.
/// A prefill chunk's rows are spread over the thread pool (here and in the other
/// row-wise steps); what a row gets does not depend on the split.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let per_task = PARALLEL_ROWS * weight.len();
    if out.len() < 2 * per_task {
        norm_rows(x, weight, eps, out);
    } else {
        x.par_chunks(per_task)
            .zip(out.par_chunks_mut(per_task))
            .for_each(|(x, o)| norm_rows(x, weight, eps, o));
    }
}

/// `x += y`, then `out = rms_norm(x)`: the residual add and the next norm in one pass
/// over each row.
pub fn add_then_rms_norm(x: &mut [f32], y: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let per_task = PARALLEL_ROWS * weight.len();
    let run = |x: &mut [f32], y: &[f32], o: &mut [f32]| {
        add(x, y);
        norm_rows(x, weight, eps, o);
    };
    if out.len() < 2 * per_task {
        run(x, y, out);
    } else {
        x.par_chunks_mut(per_task)
            .zip(y.par_chunks(per_task))
            .zip(out.par_chunks_mut(per_task))
            .for_each(|((x, y), o)| run(x, y, o));
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    const PER_TASK: usize = PARALLEL_ROWS * 1024;
    if x.len() < 2 * PER_TASK {
        add(x, y);
    } else {
        x.par_chunks_mut(PER_TASK).zip(y.par_chunks(PER_TASK)).for_each(|(x, y)| add(x, y));
    }
}

/// The mean square is summed over sixteen f64 lanes: vectorisable, unlike one running
/// f32 sum, and more accurate.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mut lanes = [0.0f64; 16];
        let chunks = row.chunks_exact(16);
        let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f64::from(v) * f64::from(v);
            }
        }
        let ms = (lanes.iter().sum::<f64>() + tail) / n as f64;
        let inv = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// SwiGLU over rows of `[gate (width) | up (width)]`, as one stacked projection
/// yields them: into `out`, the rows of `silu(gate) * up`, `width` values each.
pub fn swiglu_rows(gate_up: &[f32], width: usize, out: &mut [f32]) {
    gate_rows(gate_up, gate_up.get(width..).unwrap_or(&[]), 2 * width, width, out)
}

/// SwiGLU over separate gate and up projections of `width` values per row, into `out`.
pub fn swiglu_separate(gate: &[f32], up: &[f32], width: usize, out: &mut [f32]) {
    gate_rows(gate, up, width, width, out)
}

/// Row `r` of `out` (`width` values a row) is
/// `silu(gate[r * stride..][..width]) * up[r * stride..][..width]`.
fn gate_rows(gate: &[f32], up: &[f32], stride: usize, width: usize, out: &mut [f32]) {
    out.par_chunks_mut(width).enumerate().with_min_len(PARALLEL_ROWS).for_each(|(r, o)| {
        let at = r * stride;
        swiglu(&gate[at..at + width], &up[at..at + width], o);
    });
}

/// `out = silu(g) · u`, element by element (each element's bits do not depend on the
/// slices' lengths: the quantized matmul gates 16 at a time with it).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = silu(g) * u;
    }
}

/// `x · sigmoid(x)`, through `e^-|x|` (never above 1) so the vectorisable
/// `exp_nonpositive` serves both signs: sigmoid(x) = 1 / (1 + e^-x) for x ≥ 0 and
/// e^x / (1 + e^x) below; the two differ only in the numerator, picked without a
/// branch so the loop stays vectorised.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { e };
    x * (numerator / (1.0 + e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_matches_the_definition_for_both_signs_and_extremes() {
        for x in [-100.0f32, -20.0, -3.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 9.0, 100.0] {
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            let got = f64::from(silu(x));
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "silu({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn rms_norm_matches_an_f64_reference() {
        let n = 37;
        let x: Vec<f32> = (0..3 * n).map(|i| ((i * 29 % 17) as f32 - 8.0) / 3.0).collect();
        let w: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / n as f32).collect();
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut out);
        for (row, o) in x.chunks(n).zip(out.chunks(n)) {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n as f64;
            for ((&v, &w), &o) in row.iter().zip(&w).zip(o) {
                let want = f64::from(v) / (ms + 1e-5).sqrt() * f64::from(w);
                assert!((f64::from(o) - want).abs() <= 1e-6 * want.abs().max(1.0), "{o} vs {want}");
            }
        }
    }

    #[test]
    fn row_steps_give_each_row_the_same_bits_however_the_rows_are_split() {
        let n = 45;
        for rows in [1, 3, 2 * PARALLEL_ROWS - 1, 2 * PARALLEL_ROWS, 5 * PARALLEL_ROWS + 7] {
            let x: Vec<f32> = (0..rows * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let y: Vec<f32> = (0..rows * n).map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0).collect();
            let w: Vec<f32> = (0..n).map(|i| 0.25 + i as f32 / n as f32).collect();
            let mut whole = vec![0.0; x.len()];
            rms_norm(&x, &w, 1e-5, &mut whole);
            let mut fused_x = x.clone();
            let mut fused = vec![0.0; x.len()];
            add_then_rms_norm(&mut fused_x, &y, &w, 1e-5, &mut fused);
            let mut added = x.clone();
            add_in_place(&mut added, &y);
            assert_eq!(fused_x, added, "{rows} rows: the residual");
            for r in 0..rows {
                let at = r * n..(r + 1) * n;
                let mut one = vec![0.0; n];
                norm_rows(&x[at.clone()], &w, 1e-5, &mut one);
                assert_eq!(whole[at.clone()], one[..], "{rows} rows: row {r} normed alone");
                norm_rows(&added[at.clone()], &w, 1e-5, &mut one);
                assert_eq!(fused[at.clone()], one[..], "{rows} rows: row {r} added and normed");
            }
        }
    }

    #[test]
    fn swiglu_rows_gates_each_row_with_its_own_halves() {
        let width = 5;
        let rows = 40; // above PARALLEL_ROWS, so the parallel split is exercised too
        let gu: Vec<f32> = (0..rows * 2 * width).map(|i| (i as f32 - 200.0) / 37.0).collect();
        let mut out = vec![f32::NAN; rows * width];
        swiglu_rows(&gu, width, &mut out);
        assert_eq!(out.len(), rows * width);
        for r in 0..rows {
            for c in 0..width {
                let (g, u) = (gu[r * 2 * width + c], gu[r * 2 * width + width + c]);
                assert_eq!(out[r * width + c], silu(g) * u, "row {r} col {c}");
            }
        }
    }

    #[test]
    fn separate_projections_gate_like_stacked_ones() {
        let (width, rows) = (7, 3);
        let gate: Vec<f32> = (0..rows * width).map(|i| (i as f32 - 10.0) / 3.0).collect();
        let up: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 7.0 % 5.0) - 2.0).collect();
        let stacked: Vec<f32> =
            gate.chunks(width).zip(up.chunks(width)).flat_map(|(g, u)| g.iter().chain(u)).copied().collect();
        let (mut separate, mut rows_of_stack) = (vec![f32::NAN; rows * width], vec![f32::NAN; rows * width]);
        swiglu_separate(&gate, &up, width, &mut separate);
        swiglu_rows(&stacked, width, &mut rows_of_stack);
        assert_eq!(separate, rows_of_stack);
    }
}
