//! One module per subcommand, plus the flag-to-config glue they share.

pub mod bench;
pub mod generate;
pub mod models;
pub mod score;
pub mod serve;

use anyhow::{bail, Context, Result};

use crate::cli::{
    ActivationPrecision, AttentionPrecisionArg, BackendKind, KvCacheDtype, MaxStep, ModelArgs, ModelDirArgs,
    SchedulerArgs,
};
use inflight::backend::cpu::{Activations, AttentionPrecision, CpuConfig, KvDtype, KvFit};
use inflight::backend::cuda::CudaConfig;
use inflight::backend::StepLimits;
use inflight::engine::scheduler::{SchedulerConfig, StepTarget};
use inflight::hub::{self, FetchOptions, Registry, ResolvedModel};
use inflight::runtime::{BackendConfig, LoadedModel, NeuronConfig};
use inflight::tokenizer::{SandboxLimits, Tokenizer};

pub fn registry(dirs: &ModelDirArgs) -> Result<Registry> {
    Ok(Registry::load_with_user(dirs.registry.as_deref())?)
}

pub fn fetch_options(dirs: &ModelDirArgs) -> FetchOptions {
    FetchOptions { models_dir: dirs.models_dir.clone(), offline: dirs.offline, progress: true }
}

/// Sets the compute thread count once, before any parallel work starts.
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the compute thread pool")?;
    }
    Ok(())
}

/// The model to serve: `--model`, else SageMaker's artifact folder when present,
/// else the registry's default.
pub fn model_spec(args: &ModelArgs) -> String {
    model_spec_in(args, std::path::Path::new(SAGEMAKER_MODEL_DIR))
}

fn model_spec_in(args: &ModelArgs, sagemaker_dir: &std::path::Path) -> String {
    if let Some(m) = &args.model {
        return m.clone();
    }
    if sagemaker_dir.is_dir() {
        return sagemaker_dir.to_string_lossy().into_owned();
    }
    DEFAULT_MODEL.to_string()
}

/// The most the CPU backend's KV pool takes when `--kv-cache-gib` is not given (it
/// takes less when `--max-running` sequences of the context need less).
const CPU_KV_CACHE_BYTES: usize = 2 << 30;

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct-q4_1";
const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

/// Resolves (fetching if needed) and loads the model the flags name.
pub fn load_model(args: &ModelArgs, sched: &SchedulerArgs) -> Result<(ResolvedModel, LoadedModel)> {
    let (spec, resolved, config) = model_config(args, sched)?;
    let start = std::time::Instant::now();
    let mut loaded = inflight::runtime::load(&resolved, &config).context("loading the model")?;
    prepare_tokenizer(shared_tokenizer(&mut loaded)?, args)?;
    log_loaded(&spec, &loaded, start);
    Ok((resolved, loaded))
}

/// The freshly loaded tokenizer, still held only by `loaded`.
pub fn shared_tokenizer(loaded: &mut LoadedModel) -> Result<&mut Tokenizer> {
    std::sync::Arc::get_mut(&mut loaded.tokenizer).context("the tokenizer is already shared")
}

/// Applies `--chat-template` and moves chat template rendering into worker
/// processes bounded in memory and time: a template comes with the model file and
/// may be hostile (`tokenizer::template_sandbox`).
pub fn prepare_tokenizer(tok: &mut Tokenizer, args: &ModelArgs) -> Result<()> {
    if let Some(path) = &args.chat_template {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("reading --chat-template {}", path.display()))?;
        tok.set_chat_template(source);
    }
    let exe = std::env::current_exe().context("locating this binary to start chat template workers")?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    tok.isolate_chat_template(exe, SandboxLimits::default(), workers)
        .context("starting the chat template workers")
}

pub fn log_loaded(spec: &str, loaded: &LoadedModel, start: std::time::Instant) {
    tracing::info!(
        model = %spec,
        device = %loaded.backend.info().device,
        kv_blocks = loaded.backend.info().num_blocks,
        seconds = format!("{:.2}", start.elapsed().as_secs_f64()),
        "model loaded"
    );
}

/// Resolves (fetching if needed) the model the flags name, and the backend
/// configuration to load it with: the model's name, where it is, how to load it.
pub fn model_config(
    args: &ModelArgs,
    sched: &SchedulerArgs,
) -> Result<(String, ResolvedModel, BackendConfig)> {
    init_threads(args.threads)?;
    if args.kv_cache_gib.is_some_and(|g| !(g > 0.0 && g.is_finite())) {
        bail!("--kv-cache-gib must be a positive number");
    }
    if args.kv_cache_dtype == KvCacheDtype::Fp8 && args.backend != BackendKind::Cpu {
        bail!("--kv-cache-dtype fp8 is built for the CPU backend only");
    }
    if args.attention_precision != AttentionPrecisionArg::Auto && args.backend != BackendKind::Cpu {
        bail!("--attention-precision is built for the CPU backend only");
    }
    let kv_cache_bytes = args.kv_cache_gib.map(|g| (g * (1u64 << 30) as f64) as usize);
    let registry = registry(&args.dirs)?;
    let spec = model_spec(args);
    let resolved = hub::resolve(&spec, &registry, &fetch_options(&args.dirs))
        .with_context(|| format!("resolving model `{spec}`"))?;
    let limits = StepLimits {
        max_batch_tokens: sched.max_batch_tokens,
        max_batch_seqs: sched.max_running,
        max_context: args.max_context,
    };
    let config = match args.backend {
        BackendKind::Cpu => BackendConfig::Cpu(CpuConfig {
            limits,
            block_size: args.block_size,
            kv_cache_bytes: kv_cache_bytes.unwrap_or(CPU_KV_CACHE_BYTES),
            kv_fit: if kv_cache_bytes.is_some() { KvFit::Memory } else { KvFit::Sequences },
            kv_dtype: match args.kv_cache_dtype {
                KvCacheDtype::F16 => KvDtype::F16,
                KvCacheDtype::F32 => KvDtype::F32,
                KvCacheDtype::Fp8 => KvDtype::Fp8,
            },
            threads: args.threads,
            chunk_invariant_attention: args.chunk_invariant_attention,
            attention_precision: match args.attention_precision {
                AttentionPrecisionArg::Auto => AttentionPrecision::Auto,
                AttentionPrecisionArg::F32 => AttentionPrecision::F32,
                AttentionPrecisionArg::Bf16 => AttentionPrecision::Bf16,
            },
            activations: match args.activations {
                ActivationPrecision::Int8 => Activations::Int8,
                ActivationPrecision::Int16 => Activations::Int16,
                ActivationPrecision::F32 => Activations::F32,
                ActivationPrecision::Bf16 => Activations::Bf16,
            },
        }),
        BackendKind::Cuda => BackendConfig::Cuda(CudaConfig {
            limits,
            ordinal: args.cuda_device,
            block_size: args.block_size,
            kv_cache_bytes,
        }),
        BackendKind::Neuron => {
            BackendConfig::Neuron(NeuronConfig { limits, runtime_lib: args.neuron_lib.clone() })
        }
    };
    Ok((spec, resolved, config))
}

/// What a step carrying decode rows may take under `--max-step-ms` (`auto`: twice its
/// decode rows' cost, `benches/results/2026-12-05-auto-step-limit/`); `None` when off.
pub fn max_step(sched: &SchedulerArgs) -> Option<StepTarget> {
    match sched.max_step_ms {
        MaxStep::Off => None,
        MaxStep::Auto => Some(StepTarget::DecodeMultiple(AUTO_DECODE_MULTIPLE)),
        MaxStep::Millis(ms) => Some(StepTarget::Seconds(ms as f64 / 1e3)),
    }
}

/// `--max-step-ms auto`: a step carrying decode rows may take this many times what the
/// decode rows alone cost.
pub const AUTO_DECODE_MULTIPLE: f64 = 2.0;

pub fn scheduler_config(sched: &SchedulerArgs) -> SchedulerConfig {
    SchedulerConfig::dynamic(
        sched.max_batch_tokens,
        sched.max_running,
        sched.max_waiting,
        sched.prefix_caching,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        model: ModelArgs,
    }

    fn model_args(flags: &[&str]) -> ModelArgs {
        Flags::try_parse_from(std::iter::once("inflight").chain(flags.iter().copied())).expect("flags").model
    }

    #[test]
    fn sagemaker_model_folder_is_served_when_no_model_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sagemaker = dir.path().join("opt/ml/model");
        let none = model_args(&[]);
        assert_eq!(model_spec_in(&none, &sagemaker), DEFAULT_MODEL, "no SageMaker folder: the default");
        std::fs::create_dir_all(&sagemaker).expect("mkdir");
        assert_eq!(model_spec_in(&none, &sagemaker), sagemaker.to_string_lossy());
        let named = model_args(&["--model", "other.gguf"]);
        assert_eq!(model_spec_in(&named, &sagemaker), "other.gguf", "--model wins");
    }
}
