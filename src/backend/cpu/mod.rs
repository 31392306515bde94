//! The CPU backend: the model on host memory with a paged KV pool. It is the
//! reference every test runs on.
//!
//! Everything under this module is the CPU's own forward pass: the llama decoder
//! over host `f32` rows (`llama`), its linear layers and embedding (`linear`),
//! attention over paged blocks (`attention`), the host KV pool (`kv_cache`), the
//! per-element steps (`elementwise`), the quantized matmul kernels (`kernels`) and
//! an opt-in per-section timer (`profile`). A new backend reuses `crate::model`
//! (config, weights, RoPE) and `backend::PackedStep`, not these.

pub mod attention;
mod elementwise;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod profile;

pub use kv_cache::{KvDtype, PagedKvCache};
pub use llama::Llama;

use super::{validate_step, Backend, BackendError, BackendInfo, Logits, StepBatch, StepLimits, StepShapes};

/// How the CPU backend is sized.
#[derive(Debug, Clone)]
pub struct CpuConfig {
    pub limits: StepLimits,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory for the KV pool; the block count follows from it.
    pub kv_cache_bytes: usize,
    /// How cached K/V values are stored.
    pub kv_dtype: KvDtype,
    /// Compute threads (default: one per core).
    pub threads: Option<usize>,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            limits: StepLimits::default(),
            block_size: 16,
            kv_cache_bytes: 2 << 30,
            kv_dtype: KvDtype::default(),
            threads: None,
        }
    }
}

pub struct CpuBackend {
    model: Llama,
    kv: PagedKvCache,
    info: BackendInfo,
    /// The step runs inside this pool, so the calling (engine) thread's work is done
    /// by pool workers that join in on every parallel loop, instead of the engine
    /// thread blocking while the pool works.
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    pub fn new(model: Llama, cfg: &CpuConfig) -> Result<Self, BackendError> {
        let mcfg = model.config();
        if cfg.block_size == 0 {
            return Err(BackendError::Unavailable("block size must be at least 1".into()));
        }
        let per_block = PagedKvCache::bytes_per_block(mcfg, cfg.block_size, cfg.kv_dtype);
        let num_blocks = cfg.kv_cache_bytes / per_block;
        let limits = &cfg.limits;
        let max_context = limits.max_context.unwrap_or(mcfg.max_position).min(mcfg.max_position);
        if num_blocks * cfg.block_size < max_context.min(limits.max_batch_tokens) {
            return Err(BackendError::Unavailable(format!(
                "a KV cache of {} MiB holds only {} tokens ({} blocks of {}); raise --kv-cache-gib",
                cfg.kv_cache_bytes >> 20,
                num_blocks * cfg.block_size,
                num_blocks,
                cfg.block_size
            )));
        }
        let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("inflight-cpu-{i}"));
        if let Some(n) = cfg.threads {
            builder = builder.num_threads(n);
        }
        let pool = builder
            .build()
            .map_err(|e| BackendError::Unavailable(format!("cannot start compute threads: {e}")))?;
        let info = BackendInfo {
            device: format!("cpu ({}, {} threads)", kernels::kernel_name(), pool.current_num_threads()),
            block_size: cfg.block_size,
            num_blocks,
            max_context,
            vocab_size: mcfg.vocab_size,
            step: StepShapes::dynamic(limits.max_batch_tokens, limits.max_batch_seqs),
            prefix_caching: true,
        };
        let kv = pool.install(|| PagedKvCache::new(mcfg, cfg.block_size, num_blocks, cfg.kv_dtype));
        Ok(Self { model, kv, info, pool })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn step(&mut self, batch: &StepBatch) -> Result<Logits, BackendError> {
        validate_step(&self.info, batch)?;
        let (model, kv) = (&self.model, &mut self.kv);
        let data = self.pool.install(|| model.forward(batch, kv))?;
        Ok(Logits::for_batch(batch, self.info.vocab_size, data))
    }
}
