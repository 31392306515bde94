//! A linear layer `y = x · Wᵀ` over row-major f32 activations. Quantized weights
//! run on the project's own kernels where they cover the format, else on candle's
//! `QMatMul`; the model never knows which.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::ModelError;

pub struct Linear {
    out_features: usize,
    in_features: usize,
    imp: Imp,
}

enum Imp {
    Candle(QMatMul),
}

impl Linear {
    pub fn from_qtensor(t: QTensor) -> Result<Self, ModelError> {
        let (out_features, in_features) = t.shape().dims2()?;
        Ok(Self { out_features, in_features, imp: Imp::Candle(QMatMul::from_qtensor(t)?) })
    }

    /// A dense `[out, in]` f32 weight (safetensors checkpoints).
    pub fn from_dense(w: Tensor) -> Result<Self, ModelError> {
        let (out_features, in_features) = w.dims2()?;
        Ok(Self { out_features, in_features, imp: Imp::Candle(QMatMul::Tensor(w)) })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `x` holds `m` rows of `in_features`; returns `m` rows of `out_features`.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        debug_assert_eq!(x.len(), m * self.in_features);
        match &self.imp {
            Imp::Candle(mm) => {
                let xt = Tensor::from_slice(x, (m, self.in_features), &Device::Cpu)?;
                Ok(mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}
