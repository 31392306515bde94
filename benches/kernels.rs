//! Benchmarks of the quantized matmul kernels (`inflight::backend::cpu::kernels`) on the default
//! model's shapes, candle's `QMatMul` on the same shapes, and the machine's memory
//! bandwidth; then a whole-model pass (30 layers of distinct weights + lm_head, so the
//! weights stream from DRAM as in real decode) for decode, batch-16 decode and a
//! 512-token prefill.
//!
//! `cargo bench --bench kernels` (add `-- --quick` for a faster, noisier run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use inflight::backend::cpu::kernels::{kernel_name, QMatrix, WeightFormat};
use rayon::prelude::*;

const ROWS: [usize; 5] = [1, 4, 16, 64, 512];

/// (label, dtype, n, k)
/// The last four are how a Q4_K_M or Q5_K_M file carries the model: the FFN down
/// projection in Q4_K or Q5_K (Q6_K in some layers), the gate projection in Q5_0 (rows of
/// 576 values do not divide into K-quant super-blocks); the default model has none.
const SHAPES: [(&str, GgmlDType, usize, usize); 7] = [
    ("q4_1_1536x576", GgmlDType::Q4_1, 1536, 576),
    ("q4_1_576x1536", GgmlDType::Q4_1, 576, 1536),
    ("q8_0_49152x576", GgmlDType::Q8_0, 49152, 576),
    ("q4_k_576x1536", GgmlDType::Q4K, 576, 1536),
    ("q5_k_576x1536", GgmlDType::Q5K, 576, 1536),
    ("q6_k_576x1536", GgmlDType::Q6K, 576, 1536),
    ("q5_0_1536x576", GgmlDType::Q5_0, 1536, 576),
];

/// A small deterministic generator; quality is irrelevant here.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.f32()).collect()
    }
}

fn qtensor(rng: &mut XorShift, dtype: GgmlDType, n: usize, k: usize) -> QTensor {
    let w = Tensor::from_vec(rng.vec(n * k), (n, k), &Device::Cpu).expect("tensor");
    QTensor::quantize(&w, dtype).expect("quantize")
}

/// Random GGUF blocks with plausible scales, much faster to make than quantizing.
fn synthetic(rng: &mut XorShift, format: WeightFormat, n: usize, k: usize) -> QMatrix {
    let block = format.gguf_block_bytes();
    let mut bytes = vec![0u8; n * format.gguf_row_bytes(k)];
    for b in bytes.chunks_mut(block) {
        if format == WeightFormat::Q6K {
            // Quants and scales random; `d` comes last.
            for v in &mut b[..208] {
                *v = rng.next() as u8;
            }
            b[208..].copy_from_slice(&half::f16::from_f32(0.0001).to_le_bytes());
            continue;
        }
        b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        let start = match format {
            WeightFormat::Q4_1 => {
                b[2..4].copy_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
                4
            }
            // `dmin` (subtracted); the 6-bit scales and the quants stay random.
            WeightFormat::Q4K | WeightFormat::Q5K => {
                b[2..4].copy_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
                4
            }
            _ => 2,
        };
        for v in &mut b[start..] {
            *v = rng.next() as u8;
        }
    }
    QMatrix::from_raw(format, n, k, &bytes).expect("synthetic matrix")
}

fn kernel_benches(c: &mut Criterion) {
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    for (label, dtype, n, k) in SHAPES {
        let q = qtensor(&mut rng, dtype, n, k);
        let w = QMatrix::from_qtensor(&q).expect("repack").expect("supported");
        let bytes = w.weight_bytes() as u64;
        let mut group = c.benchmark_group(format!("{label}/{}", kernel_name()));
        group.throughput(Throughput::Bytes(bytes));
        for m in ROWS {
            let x = rng.vec(m * k);
            let mut out = vec![0.0; m * n];
            group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, &m| {
                b.iter(|| w.matmul(black_box(&x), m, &mut out))
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("{label}/candle"));
        group.throughput(Throughput::Bytes(bytes));
        let mm = QMatMul::from_qtensor(q).expect("qmatmul");
        for m in [1, 64] {
            let x = Tensor::from_vec(rng.vec(m * k), (m, k), &Device::Cpu).expect("x");
            group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, _| {
                b.iter(|| mm.forward(black_box(&x)).expect("forward"))
            });
        }
        group.finish();
    }
}

const BW_BYTES: usize = 256 << 20;

fn bandwidth_benches(c: &mut Criterion) {
    let src: Vec<u64> = (0..BW_BYTES as u64 / 8).collect();
    let mut dst = vec![0u64; src.len()];
    let chunk = src.len() / rayon::current_num_threads().max(1);
    let mut group = c.benchmark_group("machine");
    group.throughput(Throughput::Bytes(BW_BYTES as u64));
    group.bench_function("memcpy_256MiB", |b| {
        b.iter(|| {
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s))
        })
    });
    group.bench_function("read_256MiB", |b| b.iter(|| read_all(&src, chunk)));
    group.finish();
}

fn read_all(src: &[u64], chunk: usize) -> u64 {
    src.par_chunks(chunk)
        .map(|c| {
            c.chunks_exact(8).fold([0u64; 8], |mut a, v| {
                for i in 0..8 {
                    a[i] ^= v[i];
                }
                a
            })
        })
        .map(|a| a.iter().fold(0, |x, y| x ^ y))
        .reduce(|| 0, |x, y| x ^ y)
}

/// The core's peak multiply-add rates with every thread busy, for the gap between a
/// kernel's GOP/s and what the machine can do: register-only loops of independent
/// chains (no loads), 8 chains per thread so latency does not bound them.
#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// Chains per loop: at least latency × instructions per cycle of every mix below.
    const CHAINS: usize = 8;

    /// `vpmaddubsw` + `vpaddw`: the 4-bit kernels' inner step, 32 products each.
    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs_add16(iters: usize) -> i64 {
        int_chains(iters, |acc, w, x| _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x)))
    }

    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd`: Q8_0's step on AVX2, 32 products each.
    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs_madd_add32(iters: usize) -> i64 {
        let ones = _mm256_set1_epi16(1);
        int_chains(iters, |acc, w, x| {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones))
        })
    }

    /// `CHAINS` independent accumulators, each updated by `step(acc, weights, x)` once
    /// per iteration.
    #[target_feature(enable = "avx2")]
    unsafe fn int_chains(iters: usize, step: impl Fn(__m256i, __m256i, __m256i) -> __m256i) -> i64 {
        let (mut x, dx) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
        let w: [__m256i; CHAINS] = std::array::from_fn(|i| _mm256_set1_epi8(i as i8 + 2));
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iters {
            for (a, w) in acc.iter_mut().zip(&w) {
                *a = step(*a, *w, x);
            }
            // A new operand every iteration, so the products cannot be hoisted out of
            // the loop; its chain (one add) is shorter than the iteration.
            x = _mm256_add_epi8(x, dx);
        }
        fold(&acc)
    }

    /// `vfmadd231ps` on 8 floats: what a dequantize-then-f32 GEMM could reach.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_f32(iters: usize) -> i64 {
        let mut x = _mm256_set1_ps(1.0);
        let w: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(1e-6 * i as f32));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for (a, w) in acc.iter_mut().zip(&w) {
                *a = _mm256_fmadd_ps(*w, x, *a);
            }
            x = _mm256_add_ps(x, w[1]);
        }
        fold(&acc.map(|a| _mm256_castps_si256(a)))
    }

    /// `vpdpbusd` on 64 bytes: the AVX-512 VNNI kernel's step, 64 products each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dpbusd_512(iters: usize) -> i64 {
        let (mut x, step) = (_mm512_set1_epi8(1), _mm512_set1_epi8(3));
        let w: [__m512i; CHAINS] = std::array::from_fn(|i| _mm512_set1_epi8(i as i8 + 2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for (a, w) in acc.iter_mut().zip(&w) {
                *a = _mm512_dpbusd_epi32(*a, *w, x);
            }
            x = _mm512_add_epi8(x, step);
        }
        acc.iter().fold(0, |s, a| s ^ _mm512_reduce_add_epi32(*a) as i64)
    }

    /// `vpdpwssd` on 32 signed 16-bit pairs: what activations held in 16 bits would
    /// multiply with (`--activations int16` runs two `vpdpbusd` passes instead), 32
    /// products each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dpwssd_512(iters: usize) -> i64 {
        let (mut x, step) = (_mm512_set1_epi16(1), _mm512_set1_epi16(3));
        let w: [__m512i; CHAINS] = std::array::from_fn(|i| _mm512_set1_epi16(i as i16 + 2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for (a, w) in acc.iter_mut().zip(&w) {
                *a = _mm512_dpwssd_epi32(*a, *w, x);
            }
            x = _mm512_add_epi16(x, step);
        }
        acc.iter().fold(0, |s, a| s ^ _mm512_reduce_add_epi32(*a) as i64)
    }

    /// `vdpbf16ps` on 32 bf16 pairs: what bf16 activations would multiply with, 32
    /// products each.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn dpbf16_512(iters: usize) -> i64 {
        // bf16 1.0 and 2^-7 in every lane, so the sums stay finite.
        let (mut x, step) = (_mm512_set1_epi16(0x3f80), _mm512_set1_epi16(1));
        let w: [__m512i; CHAINS] = std::array::from_fn(|i| _mm512_set1_epi16(0x3c00 + i as i16));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for (a, w) in acc.iter_mut().zip(&w) {
                *a = _mm512_dpbf16_ps(
                    *a,
                    std::mem::transmute::<__m512i, __m512bh>(*w),
                    std::mem::transmute::<__m512i, __m512bh>(x),
                );
            }
            x = _mm512_xor_si512(x, step);
        }
        acc.iter().fold(0, |s, a| s ^ _mm512_reduce_add_ps(*a) as i64)
    }

    /// `vfmadd231ps` on 16 floats: the `--activations f32` kernel's step on AVX-512.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_f32_512(iters: usize) -> i64 {
        let mut x = _mm512_set1_ps(1.0);
        let w: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(1e-6 * i as f32));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for (a, w) in acc.iter_mut().zip(&w) {
                *a = _mm512_fmadd_ps(*w, x, *a);
            }
            x = _mm512_add_ps(x, w[1]);
        }
        acc.iter().fold(0, |s, a| s ^ _mm512_reduce_add_ps(*a) as i64)
    }

    /// Everything the AVX2 Q4_1 kernel issues for one row and one block half (8 weight
    /// rows × 32 values = 256 products): eight `vpmaddubsw`, seven `vpaddw`, the
    /// `vpmaddwd` widening, and the float epilogue (`vcvtdq2ps`, `vmulps` for the scale
    /// product, two `vfmadd231ps` for the scaled sum and the minimum). The instructions
    /// are independent of each other (only the two accumulators carry from one
    /// iteration to the next), so this measures the port limit alone: the ceiling of
    /// the kernel as written, below the bare `vpmaddubsw` + `vpaddw` rate wherever the
    /// conversion and the FMAs share ports with `vpmaddubsw` (Zen 3: two). The nibble
    /// unpacking, shared by a tile's rows, is left out.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_1_block(iters: usize) -> i64 {
        let (w, f) = (_mm256_set1_epi8(3), _mm256_set1_ps(1.5));
        let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        std::arch::asm!(
            "2:",
            "vpmaddubsw {t0}, {w}, {w}", "vpmaddubsw {t1}, {w}, {w}", "vpmaddubsw {t2}, {w}, {w}",
            "vpmaddubsw {t3}, {w}, {w}", "vpmaddubsw {t0}, {w}, {w}", "vpmaddubsw {t1}, {w}, {w}",
            "vpmaddubsw {t2}, {w}, {w}", "vpmaddubsw {t3}, {w}, {w}",
            "vpaddw {t4}, {w}, {w}", "vpaddw {t5}, {w}, {w}", "vpaddw {t4}, {w}, {w}",
            "vpaddw {t5}, {w}, {w}", "vpaddw {t4}, {w}, {w}", "vpaddw {t5}, {w}, {w}",
            "vpaddw {t4}, {w}, {w}",
            "vpmaddwd {t6}, {w}, {w}",
            "vcvtdq2ps {t7}, {w}",
            "vmulps {t8}, {f}, {f}",
            "vfmadd231ps {acc}, {f}, {f}",
            "vfmadd231ps {acc_min}, {f}, {f}",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            w = in(ymm_reg) w,
            f = in(ymm_reg) f,
            acc = inout(ymm_reg) acc,
            acc_min = inout(ymm_reg) acc_min,
            t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _, t3 = out(ymm_reg) _,
            t4 = out(ymm_reg) _, t5 = out(ymm_reg) _, t6 = out(ymm_reg) _, t7 = out(ymm_reg) _,
            t8 = out(ymm_reg) _,
            options(nomem, nostack),
        );
        fold(&[_mm256_castps_si256(_mm256_add_ps(acc, acc_min))])
    }

    /// AMX `tdpbsud` into four independent `C` tiles from one `A` (16 rows × `a_bytes`
    /// signed bytes) and one `B` (`a_bytes / 4` rows × 64 unsigned): 16 × 16 × `a_bytes`
    /// products each. The kernel's shape is `a_bytes = 32` (one quant block); 64 is the
    /// tiles' full depth.
    unsafe fn tdpbsud_tiles(iters: usize, a_bytes: u8) -> i64 {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut c = [0u8; 64];
        c[0] = 1;
        let shapes =
            [(16u8, 64u16), (16, 64), (16, 64), (16, 64), (16, u16::from(a_bytes)), (a_bytes / 4, 64)];
        for (tile, (rows, bytes)) in shapes.into_iter().enumerate() {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&bytes.to_le_bytes());
            c[48 + tile] = rows;
        }
        let config = Config(c);
        std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        std::arch::asm!(
            "2:",
            "tdpbsud tmm0, tmm4, tmm5", "tdpbsud tmm1, tmm4, tmm5",
            "tdpbsud tmm2, tmm4, tmm5", "tdpbsud tmm3, tmm4, tmm5",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            options(nomem, nostack),
        );
        std::arch::asm!("tilerelease", options(nostack, nomem));
        iters as i64
    }

    pub unsafe fn tdpbsud_k32(iters: usize) -> i64 {
        tdpbsud_tiles(iters, 32)
    }

    pub unsafe fn tdpbsud_k64(iters: usize) -> i64 {
        tdpbsud_tiles(iters, 64)
    }

    /// AMX-INT8 in CPUID and the tile state granted to this process by Linux.
    fn amx_int8() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        let leaf7 = __cpuid_count(7, 0);
        leaf7.edx & (0b11 << 24) == 0b11 << 24
            // SAFETY: only changes this process's permissions.
            && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn fold(acc: &[__m256i]) -> i64 {
        let mut lanes = [0i32; 8];
        let s = acc.iter().fold(_mm256_setzero_si256(), |s, a| _mm256_xor_si256(s, *a));
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s);
        lanes.iter().fold(0, |s, &v| s ^ v as i64)
    }

    /// Everything the AVX-512 VNNI many-rows kernel (`avx512_gemm::micro`) issues for one
    /// row, one group and one Q4_1 block (16 columns × 32 values = 512 products): eight
    /// `vpdpbusd`, then the float epilogue (`vcvtdq2ps`, `vmulps` for the scale product,
    /// two `vfmadd231ps` for the scaled sum and the minimum). As in [`q4_1_block`] the
    /// instructions are independent, so this is the port limit of the kernel's
    /// arithmetic: where the multiplies and FMAs share ports with `vpdpbusd` (Zen 4),
    /// below the bare `vpdpbusd` rate. Loads and broadcasts are left out.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q4_1_block_vnni(iters: usize) -> i64 {
        let (w, f) = (_mm512_set1_epi8(3), _mm512_set1_ps(1.5));
        let (mut acc, mut acc_min) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        std::arch::asm!(
            "2:",
            "vpdpbusd {t0}, {w}, {w}", "vpdpbusd {t1}, {w}, {w}", "vpdpbusd {t2}, {w}, {w}",
            "vpdpbusd {t3}, {w}, {w}", "vpdpbusd {t4}, {w}, {w}", "vpdpbusd {t5}, {w}, {w}",
            "vpdpbusd {t6}, {w}, {w}", "vpdpbusd {t7}, {w}, {w}",
            "vcvtdq2ps {t8}, {w}",
            "vmulps {t9}, {f}, {f}",
            "vfmadd231ps {acc}, {f}, {f}",
            "vfmadd231ps {acc_min}, {f}, {f}",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            w = in(zmm_reg) w,
            f = in(zmm_reg) f,
            acc = inout(zmm_reg) acc,
            acc_min = inout(zmm_reg) acc_min,
            t0 = out(zmm_reg) _, t1 = out(zmm_reg) _, t2 = out(zmm_reg) _, t3 = out(zmm_reg) _,
            t4 = out(zmm_reg) _, t5 = out(zmm_reg) _, t6 = out(zmm_reg) _, t7 = out(zmm_reg) _,
            t8 = out(zmm_reg) _, t9 = out(zmm_reg) _,
            options(nomem, nostack),
        );
        _mm512_reduce_add_ps(_mm512_add_ps(acc, acc_min)) as i64
    }

    /// Each mix: its name, multiply-adds per loop iteration, whether this CPU runs it,
    /// and the loop.
    pub type Mix = (&'static str, usize, bool, unsafe fn(usize) -> i64);

    pub fn mixes() -> [Mix; 11] {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni");
        let avx512 = is_x86_feature_detected!("avx512f");
        let bf16 = is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16");
        let amx = amx_int8();
        [
            ("vpmaddubsw+vpaddw (Q4 step)", 32 * CHAINS, avx2, maddubs_add16),
            ("vpmaddubsw+vpmaddwd+vpaddd (Q8_0 step)", 32 * CHAINS, avx2, maddubs_madd_add32),
            ("AVX2 Q4_1 kernel's whole mix (+ f32 epilogue)", 256, avx2, q4_1_block),
            ("vfmadd231ps f32", 8 * CHAINS, avx2, fma_f32),
            ("vfmadd231ps zmm f32", 16 * CHAINS, avx512, fma_f32_512),
            ("vpdpbusd zmm (VNNI step)", 64 * CHAINS, vnni, dpbusd_512),
            ("VNNI Q4_1 kernel's whole mix (+ f32 epilogue)", 512, vnni, q4_1_block_vnni),
            ("vpdpwssd zmm (16-bit pairs)", 32 * CHAINS, vnni, dpwssd_512),
            ("vdpbf16ps zmm (bf16 pairs)", 32 * CHAINS, bf16, dpbf16_512),
            ("tdpbsud 16x32 by 8x64 (AMX kernel's tile)", 4 * 16 * 16 * 32, amx, tdpbsud_k32),
            ("tdpbsud 16x64 by 16x64 (AMX full tile)", 4 * 16 * 16 * 64, amx, tdpbsud_k64),
        ]
    }
}

/// Peak multiply-add rates of the core, every thread running the same register-only loop.
#[cfg(target_arch = "x86_64")]
fn peak_table() {
    const ITERS: usize = 20_000_000;
    let threads = rayon::current_num_threads();
    println!("\npeak multiply-add rate, {threads} threads, registers only (no memory):");
    for (name, macs, available, f) in peak::mixes() {
        if !available {
            continue;
        }
        let (t, fastest) = timed(5, || {
            let sums = rayon::broadcast(|_| {
                // SAFETY: `available` says this CPU has the mix's instructions.
                unsafe { f(ITERS) }
            });
            black_box(sums);
        });
        let per_second = |t: Duration| (threads * ITERS * macs) as f64 / t.as_secs_f64() / 1e9;
        println!("  {name:<48} {:>7.1} GMAC/s (fastest {:.1})", per_second(t), per_second(fastest));
    }
}

/// The median and the fastest of `runs` timed calls of `f` (after one untimed call). On
/// a shared VM the fastest is the steadier figure: neighbours only ever add time.
fn timed(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[runs / 2], t[0])
}

/// Per-shape figures from our own timer (criterion reports time and GB/s only).
fn shape_table() {
    let mut rng = XorShift(42);
    println!(
        "\n{:<16} {:>5} {:>11} {:>8} {:>8} {:>11} {:>8}",
        "shape", "m", "time", "GB/s", "GOP/s", "fastest", "GOP/s"
    );
    for (label, dtype, n, k) in SHAPES {
        let format = match dtype {
            GgmlDType::Q8_0 => WeightFormat::Q8_0,
            GgmlDType::Q4K => WeightFormat::Q4K,
            GgmlDType::Q5K => WeightFormat::Q5K,
            GgmlDType::Q6K => WeightFormat::Q6K,
            GgmlDType::Q5_0 => WeightFormat::Q5_0,
            _ => WeightFormat::Q4_1,
        };
        let w = synthetic(&mut rng, format, n, k);
        for m in ROWS {
            let x = rng.vec(m * k);
            let mut out = vec![0.0; m * n];
            let runs = if m >= 64 { 9 } else { 31 };
            let (t, fastest) = timed(runs, || w.matmul(&x, m, &mut out));
            let (t, fastest) = (t.as_secs_f64(), fastest.as_secs_f64());
            let ops = 2.0 * (m * n * k) as f64;
            println!(
                "{label:<16} {m:>5} {:>9.1}µs {:>8.1} {:>8.1} {:>9.1}µs {:>8.1}",
                t * 1e6,
                w.weight_bytes() as f64 / t / 1e9,
                ops / t / 1e9,
                fastest * 1e6,
                ops / fastest / 1e9
            );
        }
    }
}

/// The default model's matmuls as the model runs them: 30 layers × (the q, k, v stack;
/// o; the gate and up stack, gated; down) + lm_head.
struct Model {
    layers: Vec<[QMatrix; 4]>,
    lm_head: QMatrix,
}

/// The gate of the gated stack: a product only, so the table times the matmuls (the
/// model's SiLU is vectorised and timed by the step bench).
fn product_gate(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * u;
    }
}

impl Model {
    fn synthetic() -> Model {
        let mut rng = XorShift(7);
        let q41 = WeightFormat::Q4_1;
        let stack = |parts: &[&QMatrix]| QMatrix::stack(parts).expect("stackable");
        let layers = (0..30)
            .map(|_| {
                let (q, k, v) = (
                    synthetic(&mut rng, q41, 576, 576),
                    synthetic(&mut rng, q41, 192, 576),
                    synthetic(&mut rng, q41, 192, 576),
                );
                let o = synthetic(&mut rng, q41, 576, 576);
                let (gate, up) = (synthetic(&mut rng, q41, 1536, 576), synthetic(&mut rng, q41, 1536, 576));
                let down = synthetic(&mut rng, q41, 576, 1536);
                [stack(&[&q, &k, &v]), o, stack(&[&gate, &up]), down]
            })
            .collect();
        let lm_head = synthetic(&mut rng, WeightFormat::Q8_0, 49152, 576);
        Model { layers, lm_head }
    }

    fn bytes(&self) -> usize {
        let layers: usize = self.layers.iter().flatten().map(QMatrix::weight_bytes).sum();
        layers + self.lm_head.weight_bytes()
    }

    /// Every matmul of one forward step over `m` rows, with logits for `lm` of them
    /// (every sequence of a decode batch; only the last position of a prefill).
    fn step(&self, m: usize, lm: usize, buf: &mut Buffers) {
        for [qkv, o, gate_up, down] in &self.layers {
            qkv.matmul(&buf.x576[..m * 576], m, &mut buf.o960[..m * 960]);
            o.matmul(&buf.x576[..m * 576], m, &mut buf.o576[..m * 576]);
            gate_up.matmul_gated(&buf.x576[..m * 576], m, 1536, product_gate, &mut buf.o1536[..m * 1536]);
            down.matmul(&buf.x1536[..m * 1536], m, &mut buf.o576[..m * 576]);
        }
        self.lm_head.matmul(&buf.x576[..lm * 576], lm, &mut buf.logits[..lm * 49152]);
    }
}

struct Buffers {
    x576: Vec<f32>,
    x1536: Vec<f32>,
    o576: Vec<f32>,
    o960: Vec<f32>,
    o1536: Vec<f32>,
    logits: Vec<f32>,
}

fn model_summary() {
    let model = Model::synthetic();
    let mut rng = XorShift(99);
    let mut buf = Buffers {
        x576: rng.vec(512 * 576),
        x1536: rng.vec(512 * 1536),
        o576: vec![0.0; 512 * 576],
        o960: vec![0.0; 512 * 960],
        o1536: vec![0.0; 512 * 1536],
        logits: vec![0.0; 16 * 49152],
    };
    let mb = model.bytes() as f64 / 1e6;
    println!("\nwhole model ({mb:.1} MB of weights, kernel {}):", kernel_name());
    for (what, m, lm, runs) in
        [("decode, 1 sequence", 1, 1, 21), ("decode, batch 16", 16, 16, 9), ("prefill 512", 512, 1, 3)]
    {
        let tokens = m;
        let outside = timed(runs, || model.step(m, lm, &mut buf));
        // Called from a pool thread, the caller works instead of waiting for the pool.
        let inside = rayon::scope(|_| timed(runs, || model.step(m, lm, &mut buf)));
        for (how, (t, fastest)) in [("caller outside pool", outside), ("caller inside pool", inside)] {
            let (t, fastest) = (t.as_secs_f64(), fastest.as_secs_f64());
            println!(
                "  {what:<20} {how:<20} {:>8.2} ms/step {:>8.1} tok/s {:>6.1} GB/s (fastest {:.2} ms)",
                t * 1e3,
                tokens as f64 / t,
                mb / 1e3 / t,
                fastest * 1e3
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args();
    println!("kernel: {}", kernel_name());

    bandwidth_benches(&mut c);
    kernel_benches(&mut c);
    c.final_summary();
    #[cfg(target_arch = "x86_64")]
    peak_table();
    shape_table();
    model_summary();
}
