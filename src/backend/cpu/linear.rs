//! The CPU's weight-backed layers: a linear layer `y = x · Wᵀ` over row-major f32
//! activations, and the token embedding lookup. Quantized weights run on the
//! project's own kernels where they cover the format, else on candle's `QMatMul`;
//! the forward pass never knows which.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::elementwise::{swiglu, swiglu_rows};
use super::kernels::{Activations, QMatrix};
use crate::model::weights::{MatrixWeight, WeightSource};
use crate::model::ModelError;

pub struct Linear {
    out_features: usize,
    in_features: usize,
    imp: Imp,
}

enum Imp {
    /// The project's own kernels (Q4_0, Q4_1, Q8_0, Q4_K on the CPU).
    Kernel(QMatrix),
    /// Everything else: candle's quantized or dense matmul.
    Candle(QMatMul),
}

impl Linear {
    /// Reads the `[out_f, in_f]` matrix `name` and places it on the kernels that
    /// cover its format.
    pub fn load(w: &WeightSource, name: &str, out_f: usize, in_f: usize) -> Result<Self, ModelError> {
        match w.matrix(name, out_f, in_f, &Device::Cpu)? {
            MatrixWeight::Quantized(q) => Self::from_qtensor(q),
            MatrixWeight::Dense(t) => Self::from_dense(t),
        }
    }

    pub fn from_qtensor(t: QTensor) -> Result<Self, ModelError> {
        let (out_features, in_features) = t.shape().dims2()?;
        let kernel = QMatrix::from_qtensor(&t)
            .map_err(|e| ModelError::Compute(candle_core::Error::Msg(e.to_string())))?;
        let imp = match kernel {
            Some(q) => Imp::Kernel(q),
            None => Imp::Candle(QMatMul::from_qtensor(t)?),
        };
        Ok(Self { out_features, in_features, imp })
    }

    /// One layer computing several layers' outputs side by side (e.g. Q, K and V),
    /// so the activations are quantized once and the threads synchronise once.
    /// `None` when the parts cannot share a kernel matrix.
    pub fn stack(parts: &[&Linear]) -> Option<Linear> {
        let mats: Vec<&QMatrix> = parts
            .iter()
            .map(|l| match &l.imp {
                Imp::Kernel(q) => Some(q),
                Imp::Candle(_) => None,
            })
            .collect::<Option<_>>()?;
        let q = QMatrix::stack(&mats).ok()?;
        Some(Linear { out_features: q.n(), in_features: q.k(), imp: Imp::Kernel(q) })
    }

    /// A dense `[out, in]` f32 weight (safetensors checkpoints).
    pub fn from_dense(w: Tensor) -> Result<Self, ModelError> {
        let (out_features, in_features) = w.dims2()?;
        Ok(Self { out_features, in_features, imp: Imp::Candle(QMatMul::Tensor(w)) })
    }

    /// Which code computes this layer and on what weights, e.g. `inflight Q4_1` or
    /// `candle Q6K` (for the load-time summary and tests).
    pub fn implementation(&self) -> String {
        match &self.imp {
            Imp::Kernel(q) => format!("inflight {:?}", q.format()),
            Imp::Candle(QMatMul::QTensor(q)) => format!("candle {:?}", q.dtype()),
            Imp::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                format!("candle dense {:?}", t.dtype())
            }
        }
    }

    /// Whether the weights are quantized (4- or 8-bit records), so the matmul rounds
    /// its activations too: to 8 bits with `--activations int8`, and always on candle's
    /// quantized path.
    pub fn is_quantized(&self) -> bool {
        !matches!(&self.imp, Imp::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_)))
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `x` holds `m` rows of `in_features`; returns `m` rows of `out_features`.
    /// `activations` applies to the project's kernels; candle's matmuls compute as
    /// candle does.
    pub fn forward(&self, x: &[f32], m: usize, activations: Activations) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0; m * self.out_features];
        self.forward_into(x, m, activations, &mut out)?;
        Ok(out)
    }

    /// [`Linear::forward`] into `out` (`m` rows of `out_features`), every value of
    /// which it writes.
    pub fn forward_into(
        &self,
        x: &[f32],
        m: usize,
        activations: Activations,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        debug_assert_eq!(x.len(), m * self.in_features);
        debug_assert_eq!(out.len(), m * self.out_features);
        match &self.imp {
            Imp::Kernel(q) => q.matmul_as(activations, x, m, out),
            Imp::Candle(mm) => {
                let xt = Tensor::from_slice(x, (m, self.in_features), &Device::Cpu)?;
                out.copy_from_slice(&mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }

    /// For a stack of gate and up projections (`width` outputs each): into `out` (`m`
    /// rows of `width`, every value written), the rows of `silu(gate) · up`, as
    /// [`Linear::forward`] followed by `swiglu_rows`, to the bit. On the project's
    /// kernels the gate is applied inside the matmul (`QMatrix::matmul_gated_as`):
    /// with int8 activations as each register block is finished, so the stack's
    /// outputs never reach memory.
    pub fn forward_swiglu_into(
        &self,
        x: &[f32],
        m: usize,
        activations: Activations,
        width: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        debug_assert_eq!(out.len(), m * width);
        match &self.imp {
            Imp::Kernel(q) if q.n() == 2 * width && width.is_multiple_of(16) => {
                q.matmul_gated_as(activations, x, m, width, swiglu, out);
            }
            _ => swiglu_rows(&self.forward(x, m, activations)?, width, out),
        }
        Ok(())
    }
}

/// The token embedding table, looked up row by row (quantized rows are
/// dequantized on the fly, so a large vocabulary costs no f32 copy).
pub struct Embedding(MatrixWeight);

impl Embedding {
    pub fn load(w: &WeightSource, name: &str, rows: usize, cols: usize) -> Result<Self, ModelError> {
        Ok(Self(w.table(name, rows, cols, &Device::Cpu)?))
    }

    pub fn lookup(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let ids_t = Tensor::new(ids, &Device::Cpu)?;
        let rows = match &self.0 {
            MatrixWeight::Quantized(q) => q.embedding(&ids_t)?,
            MatrixWeight::Dense(t) => t.index_select(&ids_t, 0)?,
        };
        Ok(rows.flatten_all()?.to_vec1::<f32>()?)
    }
}
