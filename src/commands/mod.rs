//! One module per subcommand, plus the flag-to-config glue they share.

pub mod bench;
pub mod generate;
pub mod models;
pub mod score;
pub mod serve;

use anyhow::{bail, Context, Result};

use crate::cli::{BackendKind, KvCacheDtype, ModelArgs, ModelDirArgs, SchedulerArgs};
use inflight::backend::cpu::{CpuConfig, KvDtype};
use inflight::backend::cuda::CudaConfig;
use inflight::backend::StepLimits;
use inflight::engine::scheduler::SchedulerConfig;
use inflight::hub::{self, FetchOptions, Registry, ResolvedModel};
use inflight::runtime::{BackendConfig, LoadedModel, NeuronConfig};

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
    if let Some(m) = &args.model {
        return m.clone();
    }
    if std::path::Path::new(SAGEMAKER_MODEL_DIR).is_dir() {
        return SAGEMAKER_MODEL_DIR.to_string();
    }
    DEFAULT_MODEL.to_string()
}

/// The CPU backend's KV pool when `--kv-cache-gib` is not given.
const CPU_KV_CACHE_BYTES: usize = 2 << 30;

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct-q4_1";
const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

/// Resolves (fetching if needed) and loads the model the flags name.
pub fn load_model(args: &ModelArgs, sched: &SchedulerArgs) -> Result<(ResolvedModel, LoadedModel)> {
    init_threads(args.threads)?;
    if args.kv_cache_gib.is_some_and(|g| !(g > 0.0 && g.is_finite())) {
        bail!("--kv-cache-gib must be a positive number");
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
            kv_dtype: match args.kv_cache_dtype {
                KvCacheDtype::F16 => KvDtype::F16,
                KvCacheDtype::F32 => KvDtype::F32,
            },
            threads: args.threads,
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
    let start = std::time::Instant::now();
    let loaded = inflight::runtime::load(&resolved, &config).context("loading the model")?;
    tracing::info!(
        model = %spec,
        device = %loaded.backend.info().device,
        kv_blocks = loaded.backend.info().num_blocks,
        seconds = format!("{:.2}", start.elapsed().as_secs_f64()),
        "model loaded"
    );
    Ok((resolved, loaded))
}

pub fn scheduler_config(sched: &SchedulerArgs) -> SchedulerConfig {
    SchedulerConfig::dynamic(
        sched.max_batch_tokens,
        sched.max_running,
        sched.max_waiting,
        sched.prefix_caching,
    )
}
