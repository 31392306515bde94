//! Where weights come from: a GGUF file (quantized or float tensors, llama.cpp
//! names) or a Hugging Face safetensors folder (float tensors, HF names). The
//! model asks for tensors by llama.cpp's names; this module maps the name and
//! checks the shape, so a bad file fails here with the file and tensor named.
//! Tensors are read onto the device the caller names; what a backend builds from
//! them (kernel layouts, device buffers) is the backend's business.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::ModelError;

/// Reads a GGUF header with candle's reader, which panics on some malformed headers
/// (a `general.alignment` of 0 divides by zero, found by fuzzing): a panic becomes
/// an error here, so a bad model file is a clear error at start-up, never a crash.
pub fn read_gguf<R: Read + Seek>(reader: &mut R) -> Result<gguf_file::Content, String> {
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gguf_file::Content::read(reader)));
    match read {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(format!("malformed header (the GGUF reader failed: {what})"))
        }
    }
}

pub enum WeightSource {
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        reader: RefCell<BufReader<File>>,
        /// Dequantize every matrix to f32 at load (for numerics checks against
        /// float references; slower and larger).
        dequantize: bool,
    },
    Safetensors {
        path: PathBuf,
        st: MmapedSafetensors,
    },
    /// Float tensors already in memory, by Hugging Face name (what a runtime that
    /// receives weights as buffers, like the libnrt emulator, has); `path` labels
    /// them in errors.
    Memory {
        path: PathBuf,
        tensors: std::collections::HashMap<String, Tensor>,
    },
}

/// A weight matrix as the file stores it: quantized blocks (GGUF) or a dense float
/// tensor (safetensors, float GGUF tensors, or anything when dequantizing).
pub enum MatrixWeight {
    Quantized(QTensor),
    Dense(Tensor),
}

impl WeightSource {
    /// Opens a GGUF file and reads its header (metadata and tensor index).
    pub fn open_gguf(path: &Path) -> Result<Self, ModelError> {
        let load_err = |message: String| ModelError::Load { path: path.into(), message };
        let file = File::open(path).map_err(|e| load_err(format!("cannot open: {e}")))?;
        let mut reader = BufReader::new(file);
        let content =
            read_gguf(&mut reader).map_err(|e| load_err(format!("not a readable GGUF file: {e}")))?;
        Ok(Self::Gguf { path: path.into(), content, reader: RefCell::new(reader), dequantize: false })
    }

    /// Loads quantized GGUF matrices as f32 instead (the model then computes in
    /// float32, as a float reference implementation would).
    pub fn with_dequantized_weights(mut self) -> Self {
        if let Self::Gguf { dequantize, .. } = &mut self {
            *dequantize = true;
        }
        self
    }

    /// Opens every `*.safetensors` file of a Hugging Face model folder.
    pub fn open_safetensors(dir: &Path) -> Result<Self, ModelError> {
        let load_err = |message: String| ModelError::Load { path: dir.into(), message };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| load_err(format!("cannot read folder: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(load_err("no *.safetensors files".into()));
        }
        // SAFETY: the files are memory-mapped read-only; like every mmap user we
        // rely on nobody truncating them while the server runs.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| load_err(format!("invalid safetensors: {e}")))?;
        Ok(Self::Safetensors { path: dir.into(), st })
    }

    /// One safetensors file (a compiled model's weights file, say).
    pub fn open_safetensors_file(path: &Path) -> Result<Self, ModelError> {
        // SAFETY: as in `open_safetensors`.
        let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Load {
            path: path.into(),
            message: format!("invalid safetensors: {e}"),
        })?;
        Ok(Self::Safetensors { path: path.into(), st })
    }

    /// The tensor the file itself names `name` (no name mapping, no shape check),
    /// as dense `dtype` on `device`.
    pub fn file_tensor(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor, ModelError> {
        let load_err = |message: String| ModelError::Load { path: self.path().into(), message };
        let t = match self {
            Self::Safetensors { st, .. } => {
                st.load(name, device).map_err(|e| load_err(format!("reading tensor `{name}`: {e}")))?
            }
            Self::Memory { tensors, .. } => {
                tensors.get(name).ok_or_else(|| load_err(format!("no tensor `{name}`")))?.clone()
            }
            Self::Gguf { .. } => return Err(load_err("file_tensor reads float files only".into())),
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf { path, .. } | Self::Safetensors { path, .. } | Self::Memory { path, .. } => path,
        }
    }

    pub fn gguf_content(&self) -> Option<&gguf_file::Content> {
        match self {
            Self::Gguf { content, .. } => Some(content),
            Self::Safetensors { .. } | Self::Memory { .. } => None,
        }
    }

    /// Maps a llama.cpp tensor name to this file's name for it.
    fn file_name(&self, name: &str) -> String {
        match self {
            Self::Gguf { .. } => name.to_string(),
            Self::Safetensors { .. } | Self::Memory { .. } => hf_name(name),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        let n = self.file_name(name);
        match self {
            Self::Gguf { content, .. } => content.tensor_infos.contains_key(&n),
            Self::Safetensors { st, .. } => st.get(&n).is_ok(),
            Self::Memory { tensors, .. } => tensors.contains_key(&n),
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { path: self.path().into(), name: self.file_name(name) }
    }

    fn check_shape(&self, name: &str, actual: &[usize], expected: &[usize]) -> Result<(), ModelError> {
        if actual != expected {
            return Err(ModelError::BadShape {
                path: self.path().into(),
                name: self.file_name(name),
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            });
        }
        Ok(())
    }

    fn qtensor(&self, name: &str, expected: &[usize], device: &Device) -> Result<QTensor, ModelError> {
        let Self::Gguf { content, reader, path, .. } = self else {
            return Err(ModelError::Load {
                path: self.path().into(),
                message: format!("tensor `{name}`: quantized tensors exist only in GGUF files"),
            });
        };
        if !content.tensor_infos.contains_key(name) {
            return Err(self.missing(name));
        }
        let t = content.tensor(&mut *reader.borrow_mut(), name, device).map_err(|e| ModelError::Load {
            path: path.clone(),
            message: format!("reading tensor `{name}`: {e} (truncated or corrupt file?)"),
        })?;
        self.check_shape(name, t.shape().dims(), expected)?;
        Ok(t)
    }

    fn dense(&self, name: &str, expected: &[usize], device: &Device) -> Result<Tensor, ModelError> {
        self.dense_as(name, expected, device, DType::F32)
    }

    /// The tensor `name` as dense `dtype` on `device`. Quantized GGUF tensors are
    /// dequantized on the host first (candle's device-side dequantization is not
    /// relied on); float tensors are converted on the device.
    fn dense_as(
        &self,
        name: &str,
        expected: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor, ModelError> {
        let t = match self {
            Self::Gguf { .. } => self
                .qtensor(name, expected, &Device::Cpu)?
                .dequantize(&Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
            Self::Memory { tensors, .. } => {
                let n = self.file_name(name);
                tensors.get(&n).ok_or_else(|| self.missing(name))?.to_dtype(dtype)?.to_device(device)?
            }
            Self::Safetensors { st, path } => {
                let n = self.file_name(name);
                if st.get(&n).is_err() {
                    return Err(self.missing(name));
                }
                st.load(&n, device)
                    .map_err(|e| ModelError::Load {
                        path: path.clone(),
                        message: format!("reading tensor `{n}`: {e}"),
                    })?
                    .to_dtype(dtype)?
            }
        };
        self.check_shape(name, t.dims(), expected)?;
        Ok(t)
    }

    /// The `[out_f, in_f]` matrix `name`: quantized as stored, or dense f32 for float
    /// tensors and when the source dequantizes.
    pub fn matrix(
        &self,
        name: &str,
        out_f: usize,
        in_f: usize,
        device: &Device,
    ) -> Result<MatrixWeight, ModelError> {
        match self {
            Self::Gguf { dequantize, .. } => {
                let q = self.qtensor(name, &[out_f, in_f], device)?;
                match q.dtype() {
                    _ if *dequantize => Ok(MatrixWeight::Dense(q.dequantize(device)?)),
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        Ok(MatrixWeight::Dense(q.dequantize(device)?))
                    }
                    _ => Ok(MatrixWeight::Quantized(q)),
                }
            }
            Self::Safetensors { .. } | Self::Memory { .. } => {
                Ok(MatrixWeight::Dense(self.dense(name, &[out_f, in_f], device)?))
            }
        }
    }

    /// A `[rows, cols]` lookup table (the token embeddings): kept quantized as stored,
    /// whatever the dequantize setting, because rows are dequantized when looked up.
    pub fn table(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<MatrixWeight, ModelError> {
        match self {
            Self::Gguf { .. } => Ok(MatrixWeight::Quantized(self.qtensor(name, &[rows, cols], device)?)),
            Self::Safetensors { .. } | Self::Memory { .. } => {
                Ok(MatrixWeight::Dense(self.dense(name, &[rows, cols], device)?))
            }
        }
    }

    /// The `[rows, cols]` tensor `name` as dense `dtype` on `device`, whatever the
    /// file stores: what a backend that computes in one float type loads.
    pub fn dense_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor, ModelError> {
        self.dense_as(name, &[rows, cols], device, dtype)
    }

    /// A 1-D f32 weight (norms, RoPE frequency factors), on the host.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self.dense(name, &[len], &Device::Cpu)?.to_vec1::<f32>()?)
    }
}

/// A float tensor's elements as little-endian bytes, in its own dtype (f32, f16 or
/// bf16): what a runtime that takes raw buffers is given.
pub fn le_bytes(t: &Tensor) -> Result<Vec<u8>, ModelError> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => {
            return Err(ModelError::Compute(candle_core::Error::Msg(format!(
                "{other:?} is not a float dtype"
            ))))
        }
    })
}

/// llama.cpp tensor names → Hugging Face transformers names.
pub fn hf_name(name: &str) -> String {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return f.to_string();
    }
    let Some(rest) = name.strip_prefix("blk.") else {
        return name.to_string();
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return name.to_string();
    };
    let hf_part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => other,
    };
    format!("model.layers.{layer}.{hf_part}")
}

#[cfg(test)]
mod header_tests {
    use super::*;

    /// A GGUF v3 header with no tensors and one key, `general.alignment` = 0.
    fn zero_alignment_header() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes()); // tensors
        b.extend(1u64.to_le_bytes()); // metadata keys
        let key = b"general.alignment";
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key);
        b.extend(4u32.to_le_bytes()); // UINT32
        b.extend(0u32.to_le_bytes());
        b
    }

    #[test]
    fn a_zero_alignment_is_an_error_not_a_panic() {
        let err = read_gguf(&mut std::io::Cursor::new(zero_alignment_header())).expect_err("malformed");
        assert!(err.contains("malformed header"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, zero_alignment_header()).unwrap();
        let Err(ModelError::Load { path: named, message }) = WeightSource::open_gguf(&path) else {
            panic!("expected a load error");
        };
        assert_eq!(named, path);
        assert!(message.contains("not a readable GGUF file"), "{message}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_llama_cpp_names_to_hf() {
        assert_eq!(super::hf_name("blk.3.ffn_gate.weight"), "model.layers.3.mlp.gate_proj.weight");
        assert_eq!(super::hf_name("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(super::hf_name("output.weight"), "lm_head.weight");
    }
}
