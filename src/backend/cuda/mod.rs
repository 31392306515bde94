//! The CUDA backend: the llama decoder as candle tensor operations on an NVIDIA
//! GPU (cuBLAS GEMMs in bf16, candle's fused kernels), with a paged KV pool in
//! device memory and attention over block tables.
//!
//! The same code runs on candle's CPU device: that is the backend's *twin*, which
//! the tests (and CI, which has no GPU) run to check everything but the device
//! itself: the step's plan, the KV pool's block tables, the forward pass's
//! arithmetic against the CPU backend. Only `device` knows whether candle was
//! built with CUDA.
//!
//! - `plan`: the step's rows, KV slots and attention groups, as host vectors;
//! - `kv_pool`: the K/V tensors per layer: writes by slot, decode attention
//!   through block tables, a prefill's keys gathered by slot;
//! - `ops`: the backend's own operations (KV write, paged decode attention), each
//!   a CUDA kernel (`kernels.cu`, compiled by the `build.rs` beside it) with a CPU twin;
//! - `llama`: the forward pass;
//! - `device`: opening the GPU, its name and free memory.

pub mod device;
mod kv_pool;
mod llama;
mod ops;
pub mod plan;

use candle_core::{DType, Device};

pub use kv_pool::DeviceKvPool;
pub use llama::TensorLlama;
use plan::StepPlan;

use super::{validate_step, Backend, BackendError, BackendInfo, Logits, StepBatch, StepLimits, StepShapes};

/// How the CUDA backend is sized.
#[derive(Debug, Clone)]
pub struct CudaConfig {
    pub limits: StepLimits,
    /// Which GPU (`--cuda-device`).
    pub ordinal: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory for the KV pool; `None`: most of what is free once the weights are in.
    pub kv_cache_bytes: Option<usize>,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self { limits: StepLimits::default(), ordinal: 0, block_size: 16, kv_cache_bytes: None }
    }
}

/// Share of the device memory left free after weights, KV pool and step
/// activations, for cuBLAS workspaces and allocator slack.
const FREE_MEMORY_KEPT: f64 = 0.10;

pub struct CudaBackend {
    model: TensorLlama,
    kv: DeviceKvPool,
    info: BackendInfo,
    device: Device,
    timings: StepTimings,
}

/// Where a step's time goes, summed and logged (at debug level) every
/// [`StepTimings::EVERY`] steps: planning on the host, and the forward pass up to
/// the logits' arrival on the host (which waits for the GPU).
#[derive(Default)]
struct StepTimings {
    steps: u32,
    rows: usize,
    plan: std::time::Duration,
    forward: std::time::Duration,
}

impl StepTimings {
    const EVERY: u32 = 256;

    fn record(&mut self, rows: usize, plan: std::time::Duration, forward: std::time::Duration) {
        self.steps += 1;
        self.rows += rows;
        self.plan += plan;
        self.forward += forward;
        if self.steps == Self::EVERY {
            let per_step =
                |d: std::time::Duration| format!("{:.3}", d.as_secs_f64() * 1e3 / self.steps as f64);
            tracing::debug!(
                steps = self.steps,
                rows_per_step = self.rows as f64 / self.steps as f64,
                plan_ms = per_step(self.plan),
                forward_ms = per_step(self.forward),
                "cuda step timings"
            );
            *self = Self::default();
        }
    }
}

impl CudaBackend {
    /// Sizes the KV pool on the model's device and describes the backend.
    pub fn new(model: TensorLlama, device: Device, cfg: &CudaConfig) -> Result<Self, BackendError> {
        let mcfg = model.config().clone();
        if cfg.block_size == 0 {
            return Err(BackendError::Unavailable("block size must be at least 1".into()));
        }
        let limits = &cfg.limits;
        let max_context = limits.max_context.unwrap_or(mcfg.max_position).min(mcfg.max_position);
        let per_block = DeviceKvPool::bytes_per_block(&mcfg, cfg.block_size, model.dtype());
        let facts = device::facts(&device);
        let kv_bytes = match (cfg.kv_cache_bytes, facts.free_bytes) {
            (Some(bytes), _) => bytes,
            (None, Some(free)) => {
                // The largest step's attention scores and probabilities (f32, and
                // the compute dtype) stay free beside the pool.
                let activations = 3 * mcfg.num_heads * limits.max_batch_tokens * max_context * 4 + (1 << 30);
                let usable = (free as f64 * (1.0 - FREE_MEMORY_KEPT)) as usize;
                usable.saturating_sub(activations)
            }
            (None, None) => {
                return Err(BackendError::Unavailable(
                    "the device reports no free memory; give the KV cache size (--kv-cache-gib)".into(),
                ))
            }
        };
        let num_blocks = kv_bytes / per_block;
        if num_blocks * cfg.block_size < max_context.min(limits.max_batch_tokens) {
            return Err(BackendError::Unavailable(format!(
                "a KV cache of {} MiB holds only {} tokens ({} blocks of {}); raise --kv-cache-gib or free device \
                 memory",
                kv_bytes >> 20,
                num_blocks * cfg.block_size,
                num_blocks,
                cfg.block_size
            )));
        }
        let slots = num_blocks * cfg.block_size;
        if slots > u32::MAX as usize {
            return Err(BackendError::Unavailable(format!("{slots} KV slots exceed the u32 slot index")));
        }
        let kv = DeviceKvPool::new(&mcfg, cfg.block_size, num_blocks, model.dtype(), &device)
            .map_err(compute_error)?;
        device.synchronize().map_err(compute_error)?;
        let info = BackendInfo {
            device: format!("{} ({:?})", facts.name, model.dtype()).to_lowercase(),
            block_size: cfg.block_size,
            num_blocks,
            max_context,
            vocab_size: mcfg.vocab_size,
            step: StepShapes::dynamic(limits.max_batch_tokens, limits.max_batch_seqs),
            prefix_caching: true,
            prompt_logprobs: true,
        };
        Ok(Self { model, kv, info, device, timings: StepTimings::default() })
    }

    /// The compute dtype a device gets: bf16 on a GPU, f32 on the CPU twin (candle's
    /// CPU bf16 matmul is slow and the twin checks arithmetic, not speed).
    pub fn dtype_for(device: &Device) -> DType {
        if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

fn compute_error(e: candle_core::Error) -> BackendError {
    BackendError::Model(e.into())
}

impl Backend for CudaBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn step(&mut self, batch: &StepBatch) -> Result<Logits, BackendError> {
        validate_step(&self.info, batch)?;
        let start = std::time::Instant::now();
        let plan = StepPlan::new(batch, self.info.block_size);
        let planned = start.elapsed();
        let data = self.model.forward(&plan, &self.kv)?;
        self.timings.record(plan.ids.len(), planned, start.elapsed() - planned);
        Ok(Logits::for_batch(batch, self.info.vocab_size, data))
    }
}
