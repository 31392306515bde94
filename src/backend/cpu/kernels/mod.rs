//! Quantized matrix multiplication for the CPU backend's linear layers.
//!
//! [`QMatrix`] holds a GGUF Q4_1 / Q4_0 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K weight matrix repacked for
//! SIMD (see `layout`), and [`QMatrix::matmul`] computes `x · Wᵀ` for any number of activation
//! rows: the activations are quantized once to 8-bit blocks, the dot products are exact
//! integer multiply-adds, and the work is spread over rayon's threads. One token
//! (decode) streams the weights once; many rows (prefill, batched decode) reuse each
//! weight block from cache across a tile of rows; with enough rows (AVX-512 VNNI or AVX2) a task
//! unpacks its weights once and runs a register-blocked micro-kernel over them (`gemm`),
//! with bit-identical results. The instruction set is picked at run
//! time (`dispatch`); call from inside the rayon pool (`ThreadPool::install`) so the
//! calling thread works too instead of waiting on the pool.

mod activations;
#[cfg(target_arch = "x86_64")]
mod amx_bf16;
#[cfg(target_arch = "x86_64")]
mod amx_gemm;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_gemm;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_gemm;
mod dispatch;
mod float_acts;
mod gemm;
mod gemm_panel;
#[cfg(target_arch = "x86_64")]
pub mod isa;
mod layout;
mod matmul;
mod portable;
pub mod prefetch;
mod remainder_acts;
mod select;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
pub use amx_bf16::bf16_bits;
mod tile;

use candle_core::quantized::{GgmlDType, QTensor};

pub use dispatch::{selected as selected_kernel, Kernel};
pub use gemm::GateFn;
pub use layout::WeightFormat;

use layout::{AlignedBytes, GROUP};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("a {format:?} weight matrix needs k divisible by {block}, got k = {k}")]
    RaggedRows { format: WeightFormat, block: usize, k: usize },
    #[error("{format:?} matrix {n}x{k} needs {expected} bytes, got {got}")]
    SizeMismatch { format: WeightFormat, n: usize, k: usize, expected: usize, got: usize },
    #[error("cannot stack {what}")]
    CannotStack { what: String },
    #[error("reading quantized tensor data: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The kernel this process runs, for logs: decided on first call with its start-up
/// self-checks, including the AMX tiles' (`avx512vnni+amx` when they are used).
pub fn kernel_name() -> &'static str {
    let kernel = dispatch::selected();
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512Vnni && amx_gemm::enabled() {
        return "avx512vnni+amx";
    }
    kernel.name()
}

/// How the activations meet the quantized weights in a matrix multiplication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activations {
    /// Rounded to 8 bits per 32-value block (scale per block), multiplied with integer
    /// multiply-adds: the fastest, and as accurate as llama.cpp's CPU path.
    #[default]
    Int8,
    /// Rounded to about 16 bits per 32-value block: the 8-bit block plus its rounding
    /// remainder rounded to 8 bits, both through the integer kernels
    /// (`remainder_acts`): as accurate as f32 on the models measured, at twice int8's
    /// multiply-adds, which prefill pays in full and one-sequence decode (bound by
    /// reading the weights) in small part.
    Int16,
    /// Kept in f32; the weights are widened to f32 in registers: the layer computes
    /// what the dequantized weights compute in f32, at more compute per weight.
    F32,
    /// Rounded to bf16 and multiplied on AMX-BF16 tiles by the weights widened as for
    /// `F32` and rounded to bf16 (`amx_bf16`): AMX hosts only ([`Activations::runs_here`]).
    Bf16,
}

impl Activations {
    /// The name `--activations` takes.
    pub fn name(self) -> &'static str {
        match self {
            Activations::Int8 => "int8",
            Activations::Int16 => "int16",
            Activations::F32 => "f32",
            Activations::Bf16 => "bf16",
        }
    }

    /// Whether this CPU runs this precision: all but bf16 run everywhere; bf16 needs
    /// the AMX-BF16 tiles.
    pub fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Activations::Bf16 => amx_bf16::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Activations::Bf16 => false,
            _ => true,
        }
    }
}

/// A weight matrix of `n` output rows × `k` inputs in a kernel-friendly layout.
pub struct QMatrix {
    format: WeightFormat,
    n: usize,
    k: usize,
    groups: usize,
    data: AlignedBytes,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}x{})", self.format, self.n, self.k)
    }
}

impl QMatrix {
    /// Repacks a 2-D Q4_1, Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K tensor; `None` for anything else
    /// (other dtypes, other ranks), which the caller leaves to candle's `QMatMul`.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<QMatrix>, KernelError> {
        let Some(format) = WeightFormat::ALL.into_iter().find(|f| f.ggml_dtype() == t.dtype()) else {
            return Ok(None);
        };
        let &[n, k] = t.shape().dims() else {
            return Ok(None);
        };
        let data = t.data()?;
        QMatrix::from_raw(format, n, k, &data).map(Some)
    }

    /// Repacks GGUF blocks: `n` rows of `k` values in blocks of `format`, row after row.
    pub fn from_raw(format: WeightFormat, n: usize, k: usize, gguf: &[u8]) -> Result<QMatrix, KernelError> {
        let block = format.gguf_block_values();
        if !k.is_multiple_of(block) {
            return Err(KernelError::RaggedRows { format, block, k });
        }
        let expected = n * format.gguf_row_bytes(k);
        if gguf.len() != expected {
            return Err(KernelError::SizeMismatch { format, n, k, expected, got: gguf.len() });
        }
        Ok(QMatrix { format, n, k, groups: n.div_ceil(GROUP), data: layout::repack(format, gguf, n, k) })
    }

    /// The matrices' rows one after another (e.g. q, k and v of a layer, or gate and
    /// up), so one call computes all their outputs: one thread dispatch and one long
    /// weight stream instead of several short ones. Every part but the last must have
    /// a multiple of 16 rows; all must share format and `k`.
    pub fn stack(parts: &[&QMatrix]) -> Result<QMatrix, KernelError> {
        let Some((first, _)) = parts.split_first() else {
            return Err(KernelError::CannotStack { what: "zero matrices".into() });
        };
        let mut n = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.format != first.format || p.k != first.k {
                return Err(KernelError::CannotStack { what: format!("{p:?} onto {first:?}") });
            }
            if i + 1 < parts.len() && !p.n.is_multiple_of(GROUP) {
                return Err(KernelError::CannotStack {
                    what: format!("{p:?}: rows not a multiple of {GROUP}"),
                });
            }
            n += p.n;
        }
        let mut data = AlignedBytes::zeroed(parts.iter().map(|p| p.data.as_slice().len()).sum());
        let mut at = 0;
        for p in parts {
            let bytes = p.data.as_slice();
            data.as_mut_slice()[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        }
        Ok(QMatrix { format: first.format, n, k: first.k, groups: n.div_ceil(GROUP), data })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn dtype(&self) -> GgmlDType {
        self.format.ggml_dtype()
    }

    /// Bytes of quantized weights one pass over the matrix streams: the file's bytes
    /// (K-quants: a few more, see `layout`).
    pub fn weight_bytes(&self) -> usize {
        self.n * self.format.group_bytes(self.k) / GROUP
    }

    /// `out[i * n + j] = Σ_c x[i * k + c] · W[j, c]` for `m` rows of `x`.
    ///
    /// # Panics
    /// If `x.len() != m * k` or `out.len() != m * n` (a caller bug, not a data error).
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(dispatch::selected(), x, m, out)
    }

    /// [`QMatrix::matmul`] with the activations as `activations` says: rounded to
    /// 8-bit blocks for integer multiply-adds, to 16 bits as two 8-bit passes
    /// (`remainder_acts`), or kept in f32 against weights widened in registers
    /// (`float_acts`).
    pub fn matmul_as(&self, activations: Activations, x: &[f32], m: usize, out: &mut [f32]) {
        match activations {
            Activations::Int8 => self.matmul(x, m, out),
            Activations::Int16 => self.matmul_int16_with(dispatch::selected(), x, m, out),
            Activations::F32 => self.matmul_f32_with(dispatch::selected(), x, m, out),
            Activations::Bf16 => self.matmul_bf16(x, m, out),
        }
    }

    /// `x · Wᵀ` on bf16 activations, on the AMX-BF16 tiles.
    ///
    /// # Panics
    /// As [`QMatrix::matmul_with`], and if this CPU cannot run bf16 activations
    /// ([`Activations::runs_here`]).
    pub fn matmul_bf16(&self, x: &[f32], m: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        amx_bf16::run(self, x, m, out);
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, m, out);
            panic!("bf16 activations need AMX-BF16 tiles");
        }
    }

    /// `x · Wᵀ` on activations rounded to 16-bit blocks, with an explicit kernel.
    ///
    /// # Panics
    /// As [`QMatrix::matmul_with`].
    pub fn matmul_int16_with(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "activations are not {m}x{}", self.k);
        assert_eq!(out.len(), m * self.n, "output is not {m}x{}", self.n);
        assert!(kernel.is_available(), "{} kernel unavailable", kernel.name());
        remainder_acts::run(kernel, self, x, m, out)
    }

    /// `x · Wᵀ` on f32 activations with an explicit kernel's instruction set.
    ///
    /// # Panics
    /// As [`QMatrix::matmul_with`].
    pub fn matmul_f32_with(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "activations are not {m}x{}", self.k);
        assert_eq!(out.len(), m * self.n, "output is not {m}x{}", self.n);
        assert!(kernel.is_available(), "{} kernel unavailable", kernel.name());
        float_acts::run(kernel, self, x, m, out)
    }

    /// [`QMatrix::matmul`] with an explicit kernel (tests, benchmarks).
    ///
    /// # Panics
    /// As `matmul`, and if `kernel` is not available on this CPU.
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "activations are not {m}x{}", self.k);
        assert_eq!(out.len(), m * self.n, "output is not {m}x{}", self.n);
        assert!(kernel.is_available(), "{} kernel unavailable", kernel.name());
        matmul::run(kernel, self, x, m, out)
    }

    /// For a stack of a gate and an up projection of `width` rows each (see
    /// [`QMatrix::stack`]): `out[i * width + j] = gate(g, u)` of row `i`'s gate and up
    /// outputs `j`, the same bits as [`QMatrix::matmul`] followed by `gate` over each
    /// row. Prefill chunks and large batches gate each register block as it is
    /// finished, so the `2 · width` outputs per row are never written to memory.
    ///
    /// # Panics
    /// If `n != 2 · width`, `width` is not a multiple of 16, or the slices are not
    /// `m × k` and `m × width`; and if `kernel` is not available on this CPU.
    pub fn matmul_gated_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        width: usize,
        gate: GateFn,
        out: &mut [f32],
    ) {
        self.check_gated(kernel, x, m, width, out);
        matmul::run_gated(kernel, self, x, m, width, gate, out)
    }

    /// The gated calls' contract: `self` a stack of two `width`-row projections
    /// (`width` a multiple of 16), `x` `m × k`, `out` `m × width`, `kernel` runnable.
    fn check_gated(&self, kernel: Kernel, x: &[f32], m: usize, width: usize, out: &[f32]) {
        assert!(
            self.n == 2 * width && width.is_multiple_of(GROUP),
            "{self:?} is not a gate and up stack of {width}"
        );
        assert_eq!(x.len(), m * self.k, "activations are not {m}x{}", self.k);
        assert_eq!(out.len(), m * width, "output is not {m}x{width}");
        assert!(kernel.is_available(), "{} kernel unavailable", kernel.name());
    }

    /// [`QMatrix::matmul_gated_with`] on this process's kernel.
    pub fn matmul_gated(&self, x: &[f32], m: usize, width: usize, gate: GateFn, out: &mut [f32]) {
        self.matmul_gated_with(dispatch::selected(), x, m, width, gate, out)
    }

    /// [`QMatrix::matmul_gated`] with the activations as `activations` says: the same
    /// bits as [`QMatrix::matmul_as`] followed by `gate` over each row.
    ///
    /// # Panics
    /// As [`QMatrix::matmul_gated_with`].
    pub fn matmul_gated_as(
        &self,
        activations: Activations,
        x: &[f32],
        m: usize,
        width: usize,
        gate: GateFn,
        out: &mut [f32],
    ) {
        let kernel = dispatch::selected();
        self.check_gated(kernel, x, m, width, out);
        match activations {
            Activations::Int8 => matmul::run_gated(kernel, self, x, m, width, gate, out),
            Activations::Int16 => remainder_acts::run_gated(kernel, self, x, m, width, gate, out),
            Activations::F32 => {
                let mut both = vec![0.0; m * self.n];
                float_acts::run(kernel, self, x, m, &mut both);
                matmul::gate_rows(&both, width, gate, out);
            }
            #[cfg(target_arch = "x86_64")]
            Activations::Bf16 => amx_bf16::run_gated(self, x, m, width, gate, out),
            #[cfg(not(target_arch = "x86_64"))]
            Activations::Bf16 => panic!("bf16 activations need AMX-BF16 tiles"),
        }
    }

    /// Row `row` of W as floats (an embedding lookup on a tied embedding matrix).
    ///
    /// # Panics
    /// If `row >= n` or `out.len() != k`.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.n, "row {row} out of {}", self.n);
        assert_eq!(out.len(), self.k);
        layout::dequantize_row(self.format, self.data.as_slice(), self.k, row, out)
    }
}
