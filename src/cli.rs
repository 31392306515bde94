//! Command-line interface: every flag can also be set through an `INFLIGHT_*`
//! environment variable. Flags are parsed here and turned into the typed
//! configurations the library takes; nothing below this module sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "inflight", version, about = "A local LLM inference server with continuous batching")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `inflight=debug`.
    #[arg(long, global = true, env = "INFLIGHT_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible HTTP API (and SageMaker's /ping and /invocations).
    Serve(ServeArgs),
    /// Generate text offline, without a server: one prompt, or many batched together.
    Generate(GenerateArgs),
    /// List or download models of the registry.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Show the registry's models and which are present locally.
    List(ModelDirArgs),
    /// Download (or verify) a model of the registry.
    Pull {
        /// Registry name, e.g. `smollm2-135m-instruct-q4_1`.
        name: String,
        #[command(flatten)]
        dirs: ModelDirArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ModelDirArgs {
    /// Where downloaded models live.
    #[arg(long, env = "INFLIGHT_MODELS_DIR", default_value = "models/cache")]
    pub models_dir: PathBuf,
    /// Extra registry file (TOML) whose entries add to the built-in ones.
    #[arg(long, env = "INFLIGHT_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// Never download: use only files already present.
    #[arg(long, env = "INFLIGHT_OFFLINE")]
    pub offline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Cpu,
    Cuda,
    Neuron,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A registry name, a path to a .gguf file or a safetensors folder, or a Hugging
    /// Face repo id (`owner/repo` or `owner/repo/file.gguf`). Default: the model in
    /// `/opt/ml/model` when present (SageMaker), else `smollm2-135m-instruct-q4_1`.
    #[arg(long, short, env = "INFLIGHT_MODEL")]
    pub model: Option<String>,
    #[command(flatten)]
    pub dirs: ModelDirArgs,
    /// Which hardware runs the model.
    #[arg(long, env = "INFLIGHT_BACKEND", value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Compute threads (default: one per core).
    #[arg(long, env = "INFLIGHT_THREADS")]
    pub threads: Option<usize>,
    /// Memory for the KV cache, in GiB.
    #[arg(long, env = "INFLIGHT_KV_CACHE_GIB", default_value_t = 2.0)]
    pub kv_cache_gib: f64,
    /// Tokens per KV block.
    #[arg(long, env = "INFLIGHT_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Longest sequence (prompt + output) served; default: the model's context length.
    #[arg(long, env = "INFLIGHT_MAX_CONTEXT")]
    pub max_context: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Most tokens (prefill chunks + decode tokens) in one engine step.
    #[arg(long, env = "INFLIGHT_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Most sequences decoding at once.
    #[arg(long, env = "INFLIGHT_MAX_RUNNING", default_value_t = 64)]
    pub max_running: usize,
    /// Most requests waiting for a slot; beyond it new requests get 429.
    #[arg(long, env = "INFLIGHT_MAX_WAITING", default_value_t = 1024)]
    pub max_waiting: usize,
    /// Reuse the KV cache of shared prompt prefixes.
    #[arg(long, env = "INFLIGHT_PREFIX_CACHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_caching: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// The prompt.
    #[arg(long, short, conflicts_with = "prompts_file", required_unless_present = "prompts_file")]
    pub prompt: Option<String>,
    /// A file with one prompt per line (`.jsonl`: one JSON string or {"prompt": …}
    /// per line); all run together through the batched path.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Render each prompt as a user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for `--chat`.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 means off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object per prompt instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    #[arg(long, env = "INFLIGHT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port; SageMaker's `SAGEMAKER_BIND_TO_PORT` wins when set.
    #[arg(long, env = "INFLIGHT_PORT", default_value_t = 8080)]
    pub port: u16,
    /// The model name clients pass in `model` (default: the `--model` value).
    #[arg(long, env = "INFLIGHT_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "INFLIGHT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, env = "INFLIGHT_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    pub max_request_bytes: usize,
    /// Longest a request may run, in seconds.
    #[arg(long, env = "INFLIGHT_REQUEST_TIMEOUT", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Shut down when standard input closes (lets a parent process, such as the
    /// test suite, tie the server's life to its own).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
    /// How long in-flight requests may finish after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "INFLIGHT_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
}
