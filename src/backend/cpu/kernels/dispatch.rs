//! Which instruction set the kernels use, chosen once per process at run time.
//!
//! The binary is built for baseline x86-64 so it runs on any deployment host; the fastest
//! kernel the CPU supports is picked on first use. Each SIMD kernel must also reproduce
//! the portable kernel bit for bit on a small problem before it is chosen: a kernel this
//! build machine cannot execute (AVX-512 on an AVX2-only host) is then still checked on
//! the machine that first runs it. `INFLIGHT_KERNEL=avx2|portable|avx512vnni` caps the
//! choice (e.g. to measure the AVX2 path on an AVX-512 host). On a CPU with AMX-INT8
//! the AVX-512 VNNI kernel hands its many-row tasks to AMX tiles (`amx_gemm`; its own
//! check runs where the kernel's name is first asked for, `kernels::kernel_name`);
//! `INFLIGHT_AMX=0` keeps them on VNNI.

use std::sync::OnceLock;

use super::layout::WeightFormat;
use super::QMatrix;

/// An implementation of the quantized dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 512-bit `vpdpbusd` (AVX-512 F + BW + VNNI).
    Avx512Vnni,
    /// 256-bit `vpmaddubsw` + `vpmaddwd` (AVX2 + FMA + F16C).
    Avx2,
    /// Plain Rust; any CPU.
    Portable,
}

impl Kernel {
    /// All kernels, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU can execute the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            // Q6_K borrows the AVX2 kernel (see `avx512::tile`).
            Kernel::Avx512Vnni => Kernel::Avx2.is_available() && super::isa::avx512f_bw_vnni(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::isa::avx2_fma_f16c(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU can execute, fastest first.
    pub fn available() -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available())
    }

    fn parse(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The kernel `QMatrix::matmul` uses in this process.
pub fn selected() -> Kernel {
    static SELECTED: OnceLock<Kernel> = OnceLock::new();
    *SELECTED.get_or_init(select)
}

fn select() -> Kernel {
    let cap = std::env::var("INFLIGHT_KERNEL").ok();
    let cap = match cap.as_deref().map(|s| (s, Kernel::parse(s))) {
        Some((_, Some(k))) => Some(k),
        Some((s, None)) => {
            tracing::warn!(value = s, "INFLIGHT_KERNEL not recognised; ignoring it");
            None
        }
        None => None,
    };
    let skip = cap.map_or(0, |c| Kernel::ALL.iter().position(|&k| k == c).unwrap_or(0));
    for kernel in Kernel::ALL.into_iter().skip(skip) {
        if !kernel.is_available() {
            continue;
        }
        if kernel == Kernel::Portable || agrees_with_portable(kernel) {
            return kernel;
        }
        tracing::error!(
            kernel = kernel.name(),
            "quantized matmul kernel disagrees with the portable one; not using it"
        );
    }
    Kernel::Portable
}

/// Runs every format through `kernel` and the portable kernel on small problems with a
/// ragged last group and several row tiles, with few rows and with as many as the
/// many-rows path (`gemm`) takes, and compares the results exactly.
fn agrees_with_portable(kernel: Kernel) -> bool {
    [11, SELF_CHECK_TALL_ROWS].into_iter().all(|m| agrees_on(kernel, m))
}

/// Rows of the self-check's second problem: above every kernel's many-rows threshold
/// (`gemm::min_rows`, whose tests hold it to this).
pub const SELF_CHECK_TALL_ROWS: usize = 131;

fn agrees_on(kernel: Kernel, m: usize) -> bool {
    let x = self_check_activations(m);
    WeightFormat::ALL.into_iter().all(|format| {
        let Some(w) = self_check_matrix(format) else {
            return false;
        };
        let mut want = vec![0.0; m * w.n];
        let mut got = vec![0.0; m * w.n];
        w.matmul_with(Kernel::Portable, &x, m, &mut want);
        w.matmul_with(kernel, &x, m, &mut got);
        want == got
    })
}

/// The self-checks' weights in `format` (`SELF_CHECK_K` values, 21 rows: a ragged last
/// group), with small positive scales and negative minimums; `None` if they do not
/// repack.
pub fn self_check_matrix(format: WeightFormat) -> Option<QMatrix> {
    pattern_matrix(format, 21, SELF_CHECK_K)
}

/// An `n × k` matrix in `format` with the self-checks' byte pattern.
pub fn pattern_matrix(format: WeightFormat, n: usize, k: usize) -> Option<QMatrix> {
    let block = format.gguf_block_bytes();
    let bytes: Vec<u8> = (0..n * format.gguf_row_bytes(k))
        .map(|i| match (format, i % block) {
            // Scales: small positive f16 (0x2c00 ≈ 0.0625); Q4_1 and Q5_1 minimums
            // negative (Q4_K and Q5_K subtract their positive `dmin`).
            (_, 0) => 0x00,
            (_, 1) => 0x2c,
            (WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4K | WeightFormat::Q5K, 2) => 0x00,
            (WeightFormat::Q4_1 | WeightFormat::Q5_1, 3) => 0xac,
            (WeightFormat::Q4K | WeightFormat::Q5K, 3) => 0x2c,
            // Q6_K keeps its f16 `d` last: 0x2c00 again.
            (WeightFormat::Q6K, 0..=207) => (i * 73 % 251) as u8,
            (WeightFormat::Q6K, 208) => 0x00,
            (WeightFormat::Q6K, _) => 0x2c,
            _ => (i * 73 % 251) as u8,
        })
        .collect();
    QMatrix::from_raw(format, n, k, &bytes).ok()
}

/// Values per row of the self-checks' weights and activations.
pub const SELF_CHECK_K: usize = 256;

/// The self-checks' activations: `m` rows of `SELF_CHECK_K`.
pub fn self_check_activations(m: usize) -> Vec<f32> {
    (0..m * SELF_CHECK_K).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_kernel_passes_its_self_check() {
        for kernel in Kernel::available() {
            assert!(agrees_with_portable(kernel), "{}", kernel.name());
        }
    }

    #[test]
    fn selection_picks_the_fastest_available_kernel() {
        // Tests do not set INFLIGHT_KERNEL, so the first available kernel must win.
        if std::env::var("INFLIGHT_KERNEL").is_err() {
            assert_eq!(Some(selected()), Kernel::available().next());
        }
    }
}
