//! The CPU backend: the model on host memory with a paged KV pool. It is the
//! reference every test runs on.

use super::{validate_step, Backend, BackendConfig, BackendError, BackendInfo, Logits, StepBatch};
use crate::model::{Llama, PagedKvCache, SeqInput};

pub struct CpuBackend {
    model: Llama,
    kv: PagedKvCache,
    info: BackendInfo,
    /// The step runs inside this pool, so the calling (engine) thread's work is done
    /// by pool workers that join in on every parallel loop, instead of the engine
    /// thread blocking while the pool works (measured: decode 96 → 121+ tok/s).
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    pub fn new(model: Llama, cfg: &BackendConfig) -> Result<Self, BackendError> {
        let mcfg = model.config();
        if cfg.block_size == 0 {
            return Err(BackendError::Unavailable("block size must be at least 1".into()));
        }
        let per_block = PagedKvCache::bytes_per_block(mcfg, cfg.block_size, cfg.kv_dtype);
        let num_blocks = cfg.kv_cache_bytes / per_block;
        let max_context = cfg.max_context.unwrap_or(mcfg.max_position).min(mcfg.max_position);
        if num_blocks * cfg.block_size < max_context.min(cfg.max_batch_tokens) {
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
            device: format!(
                "cpu ({}, {} threads)",
                crate::kernels::kernel_name(),
                pool.current_num_threads()
            ),
            block_size: cfg.block_size,
            num_blocks,
            max_batch_tokens: cfg.max_batch_tokens,
            max_batch_seqs: cfg.max_batch_seqs,
            max_context,
            vocab_size: mcfg.vocab_size,
            supports_prefix_caching: true,
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
        let inputs: Vec<SeqInput> = batch
            .seqs
            .iter()
            .map(|s| SeqInput {
                tokens: &s.tokens,
                start_pos: s.start_pos,
                block_table: &s.block_table,
                want_logits: s.want_logits,
            })
            .collect();
        let (model, kv) = (&self.model, &mut self.kv);
        let data = self.pool.install(|| model.forward(&inputs, kv))?;
        let mut next = 0;
        let rows = batch
            .seqs
            .iter()
            .map(|s| {
                s.want_logits.then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        Ok(Logits { vocab_size: self.info.vocab_size, rows, data })
    }
}
