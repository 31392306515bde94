//! Correctness of `QMatrix::matmul` against candle: float64 references on candle's
//! dequantized weights, every kernel against the portable one, and real model weights
//! against candle's `QMatMul`.

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::activations::QActs;
use super::{Activations, Kernel, QMatrix};

const DTYPES: [GgmlDType; 8] = [
    GgmlDType::Q4_1,
    GgmlDType::Q4_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
];

/// `k` rounded up to whole blocks of `dtype` (256 values for the K-quants, 32 otherwise).
fn whole_blocks(dtype: GgmlDType, k: usize) -> usize {
    k.next_multiple_of(dtype.block_size())
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    // Roughly normal, with a few outliers as real activations have.
    (0..len)
        .map(|i| {
            let v: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
            if i % 97 == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

fn quantized(rng: &mut StdRng, n: usize, k: usize, dtype: GgmlDType) -> (QTensor, Vec<f32>) {
    let w = Tensor::from_vec(random(rng, n * k), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let deq = q.dequantize(&Device::Cpu).unwrap();
    (q, deq.flatten_all().unwrap().to_vec1().unwrap())
}

/// `x · Wᵀ` in f64.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c])).sum();
        }
    }
    out
}

/// `|x| · |W|ᵀ` in f64: the scale of a product's rounding error, element by element.
fn magnitudes(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let abs = |v: &[f32]| v.iter().map(|v| v.abs()).collect::<Vec<_>>();
    reference(&abs(x), &abs(w), m, n, k)
}

/// The activations as the kernels see them after 8-bit quantization.
fn requantized(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut a = QActs::default();
    a.quantize(Kernel::Portable, x, m, k);
    (0..m * k).map(|i| f32::from(a.qs[i]) * a.d[i / 32]).collect()
}

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    let err: f64 = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    (err / norm).sqrt()
}

#[test]
fn matmul_matches_float64_references_for_every_kernel() {
    let mut rng = StdRng::seed_from_u64(7);
    for dtype in DTYPES {
        for (n, k) in [(37, 576), (50, 1536), (16, 64), (29, 64)] {
            let k = whole_blocks(dtype, k);
            let (q, w) = quantized(&mut rng, n, k, dtype);
            let qm = QMatrix::from_qtensor(&q).unwrap().unwrap();
            assert_eq!((qm.n(), qm.k(), qm.dtype()), (n, k, dtype));
            for m in [1, 3, 17, 64] {
                let x = random(&mut rng, m * k);
                let xq = requantized(&x, m, k);
                let same_acts = reference(&xq, &w, m, n, k);
                let exact_acts = reference(&x, &w, m, n, k);
                // Elementwise bound relative to Σ|x||w|, the scale of the rounding error.
                let scale = magnitudes(&xq, &w, m, n, k);
                let mut portable = vec![f32::NAN; m * n];
                qm.matmul_with(Kernel::Portable, &x, m, &mut portable);
                for kernel in Kernel::available() {
                    let what = format!("{dtype:?} {n}x{k} m={m} {}", kernel.name());
                    let mut out = vec![f32::NAN; m * n];
                    qm.matmul_with(kernel, &x, m, &mut out);
                    assert_eq!(out, portable, "{what}: differs from portable");
                    for (e, ((&o, &r), &s)) in out.iter().zip(&same_acts).zip(&scale).enumerate() {
                        let err = (f64::from(o) - r).abs();
                        assert!(err <= 1e-5 * s + 1e-9, "{what} [{e}]: {o} vs {r}");
                    }
                    assert!(rel_l2(&out, &same_acts) < 1e-4, "{what}");
                    // 8-bit activations cost ~1%; blocks holding one of the ×20
                    // outliers round the rest coarsely, up to ~2% on small shapes.
                    let loss = rel_l2(&out, &exact_acts);
                    assert!(loss < 0.03, "{what}: activation quantization loss {loss}");
                }
            }
        }
    }
}

/// f32 activations: the product of the exact activations with the dequantized
/// weights, to f32 rounding; every kernel bit-identical to the portable one; and a
/// row's output the same whatever rows share its call.
#[test]
fn f32_activations_match_float64_references_bit_identically_across_kernels_and_batches() {
    let mut rng = StdRng::seed_from_u64(13);
    for dtype in DTYPES {
        for (n, k) in [(37, 576), (16, 64), (29, 64)] {
            let k = whole_blocks(dtype, k);
            let (q, w) = quantized(&mut rng, n, k, dtype);
            let qm = QMatrix::from_qtensor(&q).unwrap().unwrap();
            for m in [1, 5, 33, 70] {
                let x = random(&mut rng, m * k);
                let want = reference(&x, &w, m, n, k);
                let scale = magnitudes(&x, &w, m, n, k);
                let mut portable = vec![f32::NAN; m * n];
                qm.matmul_f32_with(Kernel::Portable, &x, m, &mut portable);
                for (e, ((&o, &r), &s)) in portable.iter().zip(&want).zip(&scale).enumerate() {
                    // f32 sums of k products: a few ulps of Σ|x||w| (the int8 path's
                    // bound is 1e-5 against its own rounded activations, and ~1% off these).
                    let err = (f64::from(o) - r).abs();
                    assert!(err <= 2e-6 * s + 1e-9, "{dtype:?} {n}x{k} m={m} [{e}]: {o} vs {r}");
                }
                let what = format!("{dtype:?} {n}x{k} m={m} f32");
                assert_same_bits_on_every_kernel_and_alone(
                    &qm,
                    &x,
                    m,
                    &portable,
                    &what,
                    QMatrix::matmul_f32_with,
                );
            }
        }
    }
}

/// 16-bit activations (two 8-bit passes): the exact product to ~1e-4 (relative L2)
/// where 8-bit activations are ~1% off (the ×20 outliers round their block
/// coarsely), the same bits on every kernel, and a row's output the same whatever
/// rows share its call.
#[test]
fn int16_activations_match_float64_references_bit_identically_across_kernels_and_batches() {
    let mut rng = StdRng::seed_from_u64(17);
    for dtype in DTYPES {
        for (n, k) in [(37, 576), (16, 64)] {
            let k = whole_blocks(dtype, k);
            let (q, w) = quantized(&mut rng, n, k, dtype);
            let qm = QMatrix::from_qtensor(&q).unwrap().unwrap();
            for m in [1, 6, 70] {
                let x = random(&mut rng, m * k);
                let want = reference(&x, &w, m, n, k);
                let scale = magnitudes(&x, &w, m, n, k);
                let mut portable = vec![f32::NAN; m * n];
                qm.matmul_int16_with(Kernel::Portable, &x, m, &mut portable);
                let mut int8 = vec![f32::NAN; m * n];
                qm.matmul_with(Kernel::Portable, &x, m, &mut int8);
                let worst = |out: &[f32]| {
                    out.iter()
                        .zip(&want)
                        .zip(&scale)
                        .map(|((&o, &r), &s)| (f64::from(o) - r).abs() / s)
                        .fold(0.0, f64::max)
                };
                let (e16, e8) = (worst(&portable), worst(&int8));
                let (l16, l8) = (rel_l2(&portable, &want), rel_l2(&int8, &want));
                let what =
                    format!("{dtype:?} {n}x{k} m={m}: int16 {e16:.1e} / {l16:.1e}, int8 {e8:.1e} / {l8:.1e}");
                // Measured: int16 ≤ 6e-4 worst and 1e-4 rel. L2, 120-300x below int8.
                assert!(e16 <= 2e-3 && l16 <= 2e-4, "{what}");
                assert!(l8 > 50.0 * l16, "{what}");
                assert_same_bits_on_every_kernel_and_alone(
                    &qm,
                    &x,
                    m,
                    &portable,
                    &what,
                    QMatrix::matmul_int16_with,
                );
            }
        }
    }
}

/// `matmul` with every kernel gives the portable kernel's bits (`portable`, `m` rows),
/// and the last row alone gives the bits it got among the `m`.
fn assert_same_bits_on_every_kernel_and_alone(
    qm: &QMatrix,
    x: &[f32],
    m: usize,
    portable: &[f32],
    what: &str,
    matmul: fn(&QMatrix, Kernel, &[f32], usize, &mut [f32]),
) {
    let (n, k) = (qm.n(), qm.k());
    for kernel in Kernel::available() {
        let mut out = vec![f32::NAN; m * n];
        matmul(qm, kernel, x, m, &mut out);
        assert_eq!(out, portable, "{what} {}: differs from portable", kernel.name());
    }
    let mut alone = vec![f32::NAN; n];
    matmul(qm, super::selected_kernel(), &x[(m - 1) * k..], 1, &mut alone);
    assert_eq!(alone, portable[(m - 1) * n..], "{what}: row {} alone vs in {m}", m - 1);
}

#[test]
fn dequantized_rows_equal_candles() {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in DTYPES {
        let (n, k) = (19, whole_blocks(dtype, 96));
        let (q, w) = quantized(&mut rng, n, k, dtype);
        let qm = QMatrix::from_qtensor(&q).unwrap().unwrap();
        let mut row = vec![0.0; k];
        for j in 0..n {
            qm.dequantize_row(j, &mut row);
            assert_eq!(row, w[j * k..(j + 1) * k], "{dtype:?} row {j}");
        }
    }
}

#[test]
fn other_dtypes_and_ranks_are_left_to_candle() {
    let t = Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
    for dtype in [GgmlDType::F32, GgmlDType::Q3K, GgmlDType::Q2K] {
        let q = QTensor::quantize(&t, dtype).unwrap();
        assert!(QMatrix::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
    }
    let t3 = Tensor::zeros((2, 4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t3, GgmlDType::Q8_0).unwrap();
    assert!(QMatrix::from_qtensor(&q).unwrap().is_none());
}

#[test]
fn raw_input_of_the_wrong_size_is_an_error() {
    use super::{KernelError, WeightFormat};
    let err = QMatrix::from_raw(WeightFormat::Q4_1, 3, 64, &[0; 119]).unwrap_err();
    assert!(matches!(err, KernelError::SizeMismatch { expected: 120, .. }));
    let err = QMatrix::from_raw(WeightFormat::Q8_0, 3, 48, &[0; 0]).unwrap_err();
    assert!(matches!(err, KernelError::RaggedRows { k: 48, .. }));
    let err = QMatrix::from_raw(WeightFormat::Q4K, 2, 576, &[0; 0]).unwrap_err();
    assert!(matches!(err, KernelError::RaggedRows { block: 256, k: 576, .. }));
    let err = QMatrix::from_raw(WeightFormat::Q4K, 2, 512, &[0; 575]).unwrap_err();
    assert!(matches!(err, KernelError::SizeMismatch { expected: 576, .. }));
}

#[test]
fn stacked_matrices_compute_the_concatenated_outputs() {
    let mut rng = StdRng::seed_from_u64(5);
    let k = 64;
    let parts: Vec<QMatrix> = [32, 16, 21]
        .iter()
        .map(|&n| QMatrix::from_qtensor(&quantized(&mut rng, n, k, GgmlDType::Q4_1).0).unwrap().unwrap())
        .collect();
    let refs: Vec<&QMatrix> = parts.iter().collect();
    let all = QMatrix::stack(&refs).unwrap();
    assert_eq!(all.n(), 69);
    let m = 3;
    let x = random(&mut rng, m * k);
    let mut got = vec![0.0; m * 69];
    all.matmul(&x, m, &mut got);
    let mut col = 0;
    for p in &parts {
        let mut want = vec![0.0; m * p.n()];
        p.matmul(&x, m, &mut want);
        for i in 0..m {
            assert_eq!(got[i * 69 + col..i * 69 + col + p.n()], want[i * p.n()..(i + 1) * p.n()]);
        }
        col += p.n();
    }
    // A ragged part may only come last; formats and widths must agree.
    assert!(QMatrix::stack(&[&parts[2], &parts[0]]).is_err());
    let q8 = QMatrix::from_qtensor(&quantized(&mut rng, 16, k, GgmlDType::Q8_0).0).unwrap().unwrap();
    assert!(QMatrix::stack(&[&parts[0], &q8]).is_err());
    assert!(QMatrix::stack(&[]).is_err());
}

fn model_path() -> std::path::PathBuf {
    crate::testing::default_model_path()
}

#[test]
fn real_weights_match_candles_qmatmul() {
    let path = model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for (name, dtype) in [("blk.0.ffn_gate.weight", GgmlDType::Q4_1), ("token_embd.weight", GgmlDType::Q8_0)]
    {
        let q = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        assert_eq!(q.dtype(), dtype, "{name}");
        let qm = QMatrix::from_qtensor(&q).unwrap().unwrap();
        let (n, k, m) = (qm.n(), qm.k(), 5);
        let x = random(&mut rng, m * k);
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let want: Vec<f32> =
            QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut got = vec![0.0; m * n];
        qm.matmul(&x, m, &mut got);
        for i in 0..m {
            let row = |v: &[f32]| v[i * n..(i + 1) * n].iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
            let err = rel_l2(&got[i * n..(i + 1) * n], &row(&want));
            assert!(err < 1e-3, "{name} row {i}: relative error {err}");
        }
    }
}

/// K-quants and their Q5 stand-ins as users' GGUF files carry them: a real weight
/// matrix requantized by candle (as llama.cpp would: K-quants for a row length
/// divisible by 256, Q5_0 / Q5_1 for rows that are not), against candle's dequantized
/// weights in f64.
#[test]
fn real_weights_requantized_to_k_quants_and_q5_match_their_dequantization() {
    let path = model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let down = content.tensor(&mut file, "blk.0.ffn_down.weight", &Device::Cpu).unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let gate = content.tensor(&mut file, "blk.0.ffn_gate.weight", &Device::Cpu).unwrap();
    for (dtype, tensor, shape) in [
        (GgmlDType::Q4K, &down, (576, 1536)),
        (GgmlDType::Q5K, &down, (576, 1536)),
        (GgmlDType::Q6K, &down, (576, 1536)),
        (GgmlDType::Q5_0, &gate, (1536, 576)),
        (GgmlDType::Q5_1, &gate, (1536, 576)),
    ] {
        let q = QTensor::quantize(&tensor.dequantize(&Device::Cpu).unwrap(), dtype).unwrap();
        let w: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let qm = QMatrix::from_qtensor(&q).unwrap().unwrap();
        let (n, k, m) = (qm.n(), qm.k(), 4);
        assert_eq!((n, k, qm.dtype()), (shape.0, shape.1, dtype));
        let x = random(&mut rng, m * k);
        let mut got = vec![0.0; m * n];
        qm.matmul(&x, m, &mut got);
        let same_acts = reference(&requantized(&x, m, k), &w, m, n, k);
        assert!(rel_l2(&got, &same_acts) < 1e-5, "{dtype:?}: against the same 8-bit activations");
        let loss = rel_l2(&got, &reference(&x, &w, m, n, k));
        assert!(loss < 0.02, "{dtype:?}: activation quantization loss {loss}");
    }
}

/// The many-rows path (`gemm`) against the portable kernel, bit for bit, at every row
/// count up to 64 and around AVX2's row threshold (so every remainder of the row tiles
/// and micro-kernels, and tasks on both sides of each kernel's threshold), on matrices
/// with a ragged last group and an odd number of groups.
#[test]
fn every_row_count_matches_portable_exactly() {
    let mut rng = StdRng::seed_from_u64(17);
    let counts: Vec<usize> = (1..=64).chain(121..=134).chain([255, 300]).collect();
    for dtype in DTYPES {
        for (n, k) in [(37, 256), (45, 256), (64, 512)] {
            let k = whole_blocks(dtype, k);
            let qm = QMatrix::from_qtensor(&quantized(&mut rng, n, k, dtype).0).unwrap().unwrap();
            let x = random(&mut rng, 300 * k);
            for &m in &counts {
                let x = &x[..m * k];
                let mut want = vec![f32::NAN; m * n];
                qm.matmul_with(Kernel::Portable, x, m, &mut want);
                for kernel in Kernel::available() {
                    let mut got = vec![f32::NAN; m * n];
                    qm.matmul_with(kernel, x, m, &mut got);
                    assert_eq!(got, want, "{dtype:?} {n}x{k} m={m} {}", kernel.name());
                }
            }
        }
    }
}

/// The gated matmul of a gate and up stack against the plain one followed by the gate,
/// bit for bit, on every kernel and on both sides of each many-rows threshold.
#[test]
fn a_gated_stack_equals_the_plain_matmul_then_the_gate() {
    fn gate(g: &[f32], u: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = g.tanh() * u + g;
        }
    }
    let mut rng = StdRng::seed_from_u64(23);
    for dtype in DTYPES {
        let (width, k) = (48, whole_blocks(dtype, 256));
        let gate_w = QMatrix::from_qtensor(&quantized(&mut rng, width, k, dtype).0).unwrap().unwrap();
        let up_w = QMatrix::from_qtensor(&quantized(&mut rng, width, k, dtype).0).unwrap().unwrap();
        let stack = QMatrix::stack(&[&gate_w, &up_w]).unwrap();
        let x = random(&mut rng, 300 * k);
        for m in [1, 5, 8, 13, 40, 127, 128, 131, 300] {
            let x = &x[..m * k];
            for kernel in Kernel::available() {
                let mut both = vec![0.0; m * 2 * width];
                stack.matmul_with(kernel, x, m, &mut both);
                let mut want = vec![0.0; m * width];
                for (row, o) in both.chunks(2 * width).zip(want.chunks_mut(width)) {
                    gate(&row[..width], &row[width..], o);
                }
                let mut got = vec![f32::NAN; m * width];
                stack.matmul_gated_with(kernel, x, m, width, gate, &mut got);
                assert_eq!(got, want, "{dtype:?} m={m} {}", kernel.name());
            }
            // Every activation precision, on this process's kernel.
            for activations in [Activations::Int8, Activations::Int16, Activations::F32] {
                let mut both = vec![0.0; m * 2 * width];
                stack.matmul_as(activations, x, m, &mut both);
                let mut want = vec![0.0; m * width];
                for (row, o) in both.chunks(2 * width).zip(want.chunks_mut(width)) {
                    gate(&row[..width], &row[width..], o);
                }
                let mut got = vec![f32::NAN; m * width];
                stack.matmul_gated_as(activations, x, m, width, gate, &mut got);
                assert_eq!(got, want, "{dtype:?} m={m} {activations:?}");
            }
        }
    }
}

/// A row's output is the same bits whatever rows share its call: alone, among 64, or
/// among a different 23 at another position (so on other paths and in other tiles).
#[test]
fn a_rows_output_does_not_depend_on_the_other_rows() {
    let mut rng = StdRng::seed_from_u64(19);
    for dtype in DTYPES {
        let (n, k) = (50, whole_blocks(dtype, 512));
        let qm = QMatrix::from_qtensor(&quantized(&mut rng, n, k, dtype).0).unwrap().unwrap();
        let m = 64;
        let x = random(&mut rng, m * k);
        for kernel in Kernel::available() {
            let mut all = vec![0.0; m * n];
            qm.matmul_with(kernel, &x, m, &mut all);
            // Rows 41.. and 0..5 of the full call, as rows 0..23 of another.
            let picked: Vec<usize> = (41..m).chain(0..5).collect();
            let sub: Vec<f32> = picked.iter().flat_map(|&i| x[i * k..(i + 1) * k].iter().copied()).collect();
            let mut some = vec![0.0; picked.len() * n];
            qm.matmul_with(kernel, &sub, picked.len(), &mut some);
            for (j, &i) in picked.iter().enumerate() {
                let mut one = vec![0.0; n];
                qm.matmul_with(kernel, &x[i * k..(i + 1) * k], 1, &mut one);
                let row = &all[i * n..(i + 1) * n];
                assert_eq!(one, row, "{dtype:?} {}: row {i} alone", kernel.name());
                assert_eq!(
                    some[j * n..(j + 1) * n],
                    *row,
                    "{dtype:?} {}: row {i} among others",
                    kernel.name()
                );
            }
        }
    }
}
