//! The CPU backend: the model on host memory with a paged KV pool. It is the
//! reference every test runs on.
//!
//! Everything under this module is the CPU's own forward pass: the llama decoder
//! over host `f32` rows (`llama`), its linear layers and embedding (`linear`),
//! attention over paged blocks (`attention`), the host KV pool (`kv_cache`), the
//! per-element steps (`elementwise`), the quantized matmul kernels (`kernels`),
//! the pool threads kept polling for a step's work (`awake`), the buffers a step's
//! layers write into (`scratch`) and an opt-in per-section timer (`profile`). A new
//! backend reuses `crate::model` (config, weights, RoPE) and `backend::PackedStep`,
//! not these.

pub mod attention;
mod awake;
pub mod e4m3;
mod elementwise;
pub mod kernels;
pub mod kv_cache;
mod kv_prefault;
pub mod linear;
pub mod llama;
pub mod profile;
mod scratch;

pub use attention::AttentionPrecision;
pub use kernels::Activations;
pub use kv_cache::{KvDtype, PagedKvCache};
pub use llama::Llama;
pub use scratch::Scratch;

use super::{validate_step, Backend, BackendError, BackendInfo, Logits, StepBatch, StepLimits, StepShapes};

/// How the CPU backend is sized.
#[derive(Debug, Clone)]
pub struct CpuConfig {
    pub limits: StepLimits,
    /// Tokens per KV block.
    pub block_size: usize,
    /// The most memory the KV pool may take; how much of it follows from `kv_fit`.
    pub kv_cache_bytes: usize,
    /// What the KV pool is sized for, within `kv_cache_bytes`.
    pub kv_fit: KvFit,
    /// How cached K/V values are stored.
    pub kv_dtype: KvDtype,
    /// Compute threads (default: one per core).
    pub threads: Option<usize>,
    /// How the quantized matmuls treat the activations.
    pub activations: Activations,
    /// Decode rows' attention computed bit for bit as a prefill tile would, so a
    /// generated position gets what a prefill of the same tokens gives (slower decode).
    pub chunk_invariant_attention: bool,
    /// How prompt tiles multiply in attention.
    pub attention_precision: AttentionPrecision,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            limits: StepLimits::default(),
            block_size: 16,
            kv_cache_bytes: 2 << 30,
            kv_fit: KvFit::Memory,
            kv_dtype: KvDtype::default(),
            threads: None,
            activations: Activations::default(),
            chunk_invariant_attention: false,
            attention_precision: AttentionPrecision::default(),
        }
    }
}

/// What the KV pool is made to hold. Whatever it is, the pool holds at least one
/// step's worth of tokens (`max_batch_tokens`, or one whole context if shorter),
/// and never takes more than `kv_cache_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KvFit {
    /// All of `kv_cache_bytes` (`--kv-cache-gib` given).
    #[default]
    Memory,
    /// What `max_batch_seqs` sequences of `max_context` tokens can use: more is
    /// never used at once (`serve` without `--kv-cache-gib`).
    Sequences,
    /// These sequences' lengths, all at once (`generate`: its prompts plus their
    /// outputs).
    Lengths(Vec<usize>),
}

/// The KV pool's block count for `fit`, given `bytes_per_block` and the step
/// limits it serves (`max_context` already capped by the model's).
pub fn pool_blocks(
    fit: &KvFit,
    limits: &StepLimits,
    max_context: usize,
    block_size: usize,
    bytes_per_block: usize,
    cap_bytes: usize,
) -> usize {
    let cap = cap_bytes / bytes_per_block.max(1);
    let blocks = |tokens: usize| tokens.div_ceil(block_size);
    let wanted = match fit {
        KvFit::Memory => return cap,
        KvFit::Sequences => limits.max_batch_seqs.saturating_mul(blocks(max_context)),
        KvFit::Lengths(lens) => lens.iter().map(|&n| blocks(n.min(max_context))).sum(),
    };
    wanted.max(blocks(max_context.min(limits.max_batch_tokens))).min(cap)
}

pub struct CpuBackend {
    model: Llama,
    kv: PagedKvCache,
    info: BackendInfo,
    /// The step runs inside this pool, so the calling (engine) thread's work is done
    /// by pool workers that join in on every parallel loop, instead of the engine
    /// thread blocking while the pool works.
    pool: rayon::ThreadPool,
    /// The forward pass's intermediate rows, kept between steps.
    scratch: Scratch,
}

impl CpuBackend {
    pub fn new(model: Llama, cfg: &CpuConfig) -> Result<Self, BackendError> {
        let bf16_tiles = cfg
            .attention_precision
            .resolve(
                cfg.activations == Activations::Int8 && model.quantized_layers(),
                cfg.chunk_invariant_attention,
                model.config().head_dim,
            )
            .map_err(BackendError::Unavailable)?;
        tracing::info!(
            asked = cfg.attention_precision.name(),
            products = if bf16_tiles { "bf16" } else { "f32" },
            "prompt attention tiles"
        );
        let model = model
            .with_activations(cfg.activations)
            .with_chunk_invariant_attention(cfg.chunk_invariant_attention)
            .with_bf16_tiles(bf16_tiles);
        let mcfg = model.config();
        if !cfg.activations.runs_here() {
            return Err(BackendError::Unavailable(format!(
                "{} activations need AMX-BF16 tiles, which this CPU does not have (or the kernel did not grant); \
                 use --activations int8, int16 or f32",
                cfg.activations.name()
            )));
        }
        if cfg.block_size == 0 {
            return Err(BackendError::Unavailable("block size must be at least 1".into()));
        }
        let per_block = PagedKvCache::bytes_per_block(mcfg, cfg.block_size, cfg.kv_dtype);
        let limits = &cfg.limits;
        let max_context = limits.max_context.unwrap_or(mcfg.max_position).min(mcfg.max_position);
        let num_blocks =
            pool_blocks(&cfg.kv_fit, limits, max_context, cfg.block_size, per_block, cfg.kv_cache_bytes);
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
            device: format!(
                "cpu ({}{}, {} threads)",
                kernels::kernel_name(),
                if cfg.activations == Activations::Int8 {
                    String::new()
                } else {
                    format!(", {} activations", cfg.activations.name())
                },
                pool.current_num_threads()
            ),
            block_size: cfg.block_size,
            num_blocks,
            max_context,
            vocab_size: mcfg.vocab_size,
            step: StepShapes::dynamic(limits.max_batch_tokens, limits.max_batch_seqs),
            prefix_caching: true,
            prompt_logprobs: true,
        };
        let kv = pool.install(|| PagedKvCache::new(mcfg, cfg.block_size, num_blocks, cfg.kv_dtype));
        Ok(Self { model, kv, info, pool, scratch: Scratch::default() })
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
        if let Some(highest) = batch.seqs.iter().filter_map(|s| s.block_table.iter().max()).max() {
            self.kv.note_highest_block(*highest);
        }
        let (model, kv, scratch) = (&self.model, &mut self.kv, &mut self.scratch);
        let data = self.pool.install(|| awake::with_workers_polling(|| model.forward(batch, kv, scratch)))?;
        Ok(Logits::for_batch(batch, self.info.vocab_size, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tokens: usize, seqs: usize) -> StepLimits {
        StepLimits { max_batch_tokens: tokens, max_batch_seqs: seqs, max_context: None }
    }

    #[test]
    fn pool_is_sized_for_its_fit_within_the_memory_cap() {
        // 1000 bytes a block of 16 tokens; a 1 MB cap holds 1000 blocks.
        let size = |fit: &KvFit, l: &StepLimits, ctx: usize| pool_blocks(fit, l, ctx, 16, 1000, 1_000_000);
        let l = limits(512, 4);
        assert_eq!(size(&KvFit::Memory, &l, 2048), 1000, "--kv-cache-gib: all of it");
        assert_eq!(size(&KvFit::Sequences, &l, 2048), 4 * 128, "4 running sequences of 2048 tokens");
        assert_eq!(size(&KvFit::Sequences, &l, 2000), 4 * 125);
        assert_eq!(size(&KvFit::Sequences, &l, 2001), 4 * 126, "a partial block is a block");
        assert_eq!(size(&KvFit::Sequences, &limits(512, 64), 8192), 1000, "capped by the memory");
        // Lengths: each sequence's blocks, a length over the context counting as the context.
        assert_eq!(size(&KvFit::Lengths(vec![600, 17, 5000]), &l, 2048), 38 + 2 + 128);
        // Never under one step's tokens, or one context when that is shorter.
        assert_eq!(size(&KvFit::Lengths(vec![3]), &l, 2048), 32, "a 512-token step");
        assert_eq!(size(&KvFit::Lengths(vec![3]), &l, 100), 7, "a 100-token context");
        assert_eq!(size(&KvFit::Sequences, &limits(512, 1), 64), 4);
        assert_eq!(pool_blocks(&KvFit::Lengths(vec![3]), &l, 2048, 16, 1000, 10_000), 10, "the cap wins");
    }
}
