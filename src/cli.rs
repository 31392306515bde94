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
    /// Benchmark an OpenAI-compatible server from the client side (latency
    /// percentiles, throughput, goodput, cost per token); `bench report` compares runs.
    Bench(Box<BenchArgs>),
    /// Teacher-forced logits of token sequences, written to files: for checking
    /// one backend against another (or against transformers) on identical input.
    Score(ScoreArgs),
    /// List or download models of the registry.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Internal: renders chat templates for a server, within an address space of
    /// `memory_bytes` (`tokenizer::template_sandbox`).
    #[command(hide = true)]
    ChatTemplateWorker { memory_bytes: u64 },
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
    /// Write a model's tokenizer as Hugging Face files (`tokenizer.json`,
    /// `tokenizer_config.json`), e.g. to pair a GGUF's tokenizer with safetensors.
    ExportTokenizer {
        /// A registry name, GGUF file or Hugging Face folder.
        model: String,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
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
pub enum ActivationPrecision {
    Int8,
    Int16,
    F32,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttentionPrecisionArg {
    Auto,
    F32,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheDtype {
    F16,
    F32,
    /// 8-bit floats, E4M3 (vLLM's `fp8`, also accepted as `fp8_e4m3`).
    #[value(alias = "fp8_e4m3")]
    Fp8,
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
    /// The Neuron runtime library for `--backend neuron` (default: `NEURON_RT_LIB`,
    /// else `libnrt.so.1`, else `/opt/aws/neuron/lib/libnrt.so.1`).
    #[arg(long, env = "INFLIGHT_NEURON_LIB")]
    pub neuron_lib: Option<std::path::PathBuf>,
    /// Compute threads (default: one per core).
    #[arg(long, env = "INFLIGHT_THREADS")]
    pub threads: Option<usize>,
    /// Which GPU `--backend cuda` runs on.
    #[arg(long, env = "INFLIGHT_CUDA_DEVICE", default_value_t = 0)]
    pub cuda_device: usize,
    /// Memory for the KV cache, in GiB (default: 2 on the CPU; on a GPU, most of
    /// the memory left free by the weights).
    #[arg(long, env = "INFLIGHT_KV_CACHE_GIB")]
    pub kv_cache_gib: Option<f64>,
    /// How the KV cache stores values: f16 (half the memory and the bytes attention
    /// reads), f32 (exact arithmetic) or fp8 (E4M3: a quarter of f32's memory and
    /// bytes, 3 mantissa bits a value; CPU only).
    #[arg(long, env = "INFLIGHT_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDtype::F16)]
    pub kv_cache_dtype: KvCacheDtype,
    /// CPU: how quantized weights meet the activations. int8: activations rounded to
    /// 8 bits per 32 values, integer multiply-adds (fastest; as accurate as llama.cpp).
    /// int16: rounded to about 16 bits (two 8-bit passes), as accurate as f32 at about
    /// half int8's prefill speed and most of its decode speed. f32: activations kept in
    /// f32 and the weights widened in registers, so the model computes what its
    /// dequantized weights compute in f32 (slowest). bf16: activations and widened
    /// weights rounded to bf16 and multiplied on AMX-BF16 tiles (CPUs with AMX only).
    #[arg(long, env = "INFLIGHT_ACTIVATIONS", value_enum, default_value_t = ActivationPrecision::Int8)]
    pub activations: ActivationPrecision,
    /// CPU: compute decode rows with exactly the arithmetic the tiled prefill kernel
    /// gives a row, so a generated position's outputs are the same bits a prefill of the
    /// same tokens gives (prompt logprobs equal generation's exactly); decode is 5-25%
    /// slower. Off: decode rows agree with the tiled kernel within float rounding.
    /// Either way prompt rows are always tiled, so chunking never changes them, and a
    /// sequence recomputed after preemption gets the bits it first had.
    #[arg(long, env = "INFLIGHT_CHUNK_INVARIANT_ATTENTION")]
    pub chunk_invariant_attention: bool,
    /// CPU: how prompt rows' attention multiplies. bf16: queries, K, the softmax
    /// weights and V rounded to bf16 and multiplied in pairs (AVX-512 BF16), with f32
    /// sums: faster prompt attention, with rounding small beside int8 activations'.
    /// f32: f32 products. auto: bf16 with int8 activations where the CPU has AVX-512
    /// BF16 and --chunk-invariant-attention is off, else f32. Decode rows always
    /// multiply in f32.
    #[arg(long, env = "INFLIGHT_ATTENTION_PRECISION", value_enum, default_value_t = AttentionPrecisionArg::Auto)]
    pub attention_precision: AttentionPrecisionArg,
    /// Tokens per KV block.
    #[arg(long, env = "INFLIGHT_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Longest sequence (prompt + output) served; default: the model's context length.
    #[arg(long, env = "INFLIGHT_MAX_CONTEXT")]
    pub max_context: Option<usize>,
    /// A Jinja chat template file to use instead of the model's own.
    #[arg(long, env = "INFLIGHT_CHAT_TEMPLATE")]
    pub chat_template: Option<std::path::PathBuf>,
}

/// `--max-step-ms`: how long a step that carries decode rows may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxStep {
    Off,
    /// A multiple of what the step's decode rows alone cost.
    Auto,
    Millis(u64),
}

impl std::str::FromStr for MaxStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(MaxStep::Auto),
            "0" | "off" => Ok(MaxStep::Off),
            ms => ms
                .parse()
                .map(MaxStep::Millis)
                .map_err(|_| format!("`{ms}` is not `auto`, `off` or milliseconds")),
        }
    }
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
    /// Time a step should stay within while sequences are decoding: prefill then
    /// takes only what the step's measured cost leaves (at least 64 tokens, 32 while
    /// fewer than 8 rows decode), so a new prompt barely raises the running streams'
    /// inter-token latency. `auto`: twice what the step's decode rows alone cost; a
    /// number: that many milliseconds; 0: no limit (prefill fills the token budget).
    #[arg(long, env = "INFLIGHT_MAX_STEP_MS", default_value = "auto", value_name = "auto|MS")]
    pub max_step_ms: MaxStep,
    /// Reuse the KV cache of shared prompt prefixes.
    #[arg(long, env = "INFLIGHT_PREFIX_CACHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_caching: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// JSON: `{"sequences": [{"prompt": [ids], "continuation": [ids]}]}`; every
    /// continuation has the same length, or none is given and `--greedy` makes them.
    #[arg(long)]
    pub input: PathBuf,
    /// Tokens to continue each prompt greedily, where the input gives none.
    #[arg(long, default_value_t = 0)]
    pub greedy: usize,
    /// Writes `OUTPUT.json` (the sequences and the logits' shape) and `OUTPUT.f32`
    /// (little-endian f32 logits, `[sequences, continuation, vocab]`: row i is what
    /// the model predicts after the prompt and the first i continuation tokens).
    #[arg(long)]
    pub output: PathBuf,
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
    /// Require `Authorization: Bearer <key>` on /v1/* and /invocations (one
    /// tenant, `default`).
    #[arg(long, env = "INFLIGHT_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Tenants, their API keys and limits (TOML; see the README). Re-read on
    /// SIGHUP. Replaces `--api-key`: give one or the other.
    #[arg(long, env = "INFLIGHT_TENANTS", value_name = "FILE", conflicts_with = "api_key")]
    pub tenants: Option<std::path::PathBuf>,
    /// Serve SageMaker's /invocations without a key (as the `anonymous` tenant)
    /// even when --api-key or --tenants is set, for endpoints where SageMaker
    /// authenticates callers and cannot pass on an `Authorization` header.
    #[arg(long, env = "INFLIGHT_INVOCATIONS_WITHOUT_KEY")]
    pub invocations_without_key: bool,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, env = "INFLIGHT_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    pub max_request_bytes: usize,
    /// Longest a request may run, in seconds.
    #[arg(long, env = "INFLIGHT_REQUEST_TIMEOUT", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Refuse a standard request at once (429, Retry-After) when its predicted
    /// wait in the queue exceeds this many seconds; reserved requests never are.
    /// Default: off.
    #[arg(long, env = "INFLIGHT_MAX_QUEUE_WAIT", value_name = "SECONDS")]
    pub max_queue_wait: Option<f64>,
    /// Shut down when standard input closes (lets a parent process, such as the
    /// test suite, tie the server's life to its own).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
    /// How long in-flight requests may finish after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "INFLIGHT_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Generated events a sequence may have waiting unread (its client not
    /// reading, the HTTP buffers and the socket full) before it is cancelled.
    #[arg(long, env = "INFLIGHT_STREAM_BUFFER_EVENTS", default_value_t = inflight::engine::service::DEFAULT_STREAM_BUFFER)]
    pub stream_buffer_events: usize,
    /// Each connection's kernel send buffer in bytes (SO_SNDBUF; Linux doubles
    /// it). Default: the kernel's autotuning, which lets a client that stops
    /// reading hold up to `net.ipv4.tcp_wmem`'s maximum (4 MiB) of its stream.
    #[arg(long, env = "INFLIGHT_SOCKET_SEND_BUFFER", value_name = "BYTES")]
    pub socket_send_buffer: Option<usize>,
    /// Test only: fail these backend steps (counted from 1, comma-separated)
    /// through `inflight::testing::faults`, to check how the server survives them.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub inject_step_faults: Vec<u64>,
}

/// A value kept out of `Debug` output (logs, panics): API keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = inflight::bench::METRIC_DEFINITIONS
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: BenchRunArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Put results files side by side: markdown tables on stdout and an SVG plot of
    /// TTFT and TPOT against output throughput, one line per run.
    Report(BenchReportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchReportArgs {
    /// Results files written by `inflight bench`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also write the markdown to this file.
    #[arg(long, env = "INFLIGHT_BENCH_MARKDOWN")]
    pub markdown: Option<PathBuf>,
    /// Where the plot goes (SVG).
    #[arg(long, env = "INFLIGHT_BENCH_PLOT", default_value = "bench-report.svg")]
    pub plot: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchEndpoint {
    /// `/v1/completions`
    Completions,
    /// `/v1/chat/completions`
    Chat,
}

/// A request rate: a positive number per second, or `inf` (all at once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub Option<f64>);

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        if s.eq_ignore_ascii_case("inf") {
            return Ok(Rate(None));
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate(Some(r))),
            _ => Err(format!("`{s}` is not a positive rate or `inf`")),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchRunArgs {
    /// The server: a base URL (`http://127.0.0.1:8080`, with or without `/v1`) or a
    /// full endpoint URL ending in `/completions`.
    #[arg(long, env = "INFLIGHT_BENCH_URL", required = true, help_heading = "Target")]
    pub url: Option<String>,
    /// The model name to put in requests (as the server knows it).
    #[arg(long, env = "INFLIGHT_BENCH_MODEL_NAME", required = true, help_heading = "Target")]
    pub model: Option<String>,
    #[arg(
        long,
        env = "INFLIGHT_BENCH_ENDPOINT",
        value_enum,
        default_value = "completions",
        help_heading = "Target"
    )]
    pub endpoint: BenchEndpoint,
    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "INFLIGHT_BENCH_API_KEY", hide_env_values = true, help_heading = "Target")]
    pub api_key: Option<Secret>,
    /// Longest one request may take, in seconds.
    #[arg(long, env = "INFLIGHT_BENCH_TIMEOUT", default_value_t = 600.0, help_heading = "Target")]
    pub timeout: f64,
    /// Open a new connection for every request (for servers that close them).
    #[arg(long, env = "INFLIGHT_BENCH_NO_KEEP_ALIVE", help_heading = "Target")]
    pub no_keep_alive: bool,

    /// Closed loop: requests kept in flight; a list sweeps the levels in turn.
    /// Default 1 unless --request-rate is given.
    #[arg(
        long,
        env = "INFLIGHT_BENCH_CONCURRENCY",
        value_delimiter = ',',
        conflicts_with = "request_rate",
        help_heading = "Load"
    )]
    pub concurrency: Vec<usize>,
    /// Open loop: requests per second (`inf`: all at once); a list sweeps the levels.
    #[arg(long, env = "INFLIGHT_BENCH_REQUEST_RATE", value_delimiter = ',', help_heading = "Load")]
    pub request_rate: Vec<Rate>,
    /// Open loop: shape of the gamma-distributed gaps between arrivals; 1 is Poisson,
    /// smaller is burstier (as vLLM's --burstiness).
    #[arg(
        long,
        env = "INFLIGHT_BENCH_BURSTINESS",
        default_value_t = 1.0,
        requires = "request_rate",
        help_heading = "Load"
    )]
    pub burstiness: f64,
    /// Open loop: at most this many requests in flight (later arrivals wait).
    #[arg(long, env = "INFLIGHT_BENCH_MAX_CONCURRENCY", requires = "request_rate", help_heading = "Load")]
    pub max_concurrency: Option<usize>,
    /// Requests per load level.
    #[arg(long, env = "INFLIGHT_BENCH_NUM_REQUESTS", default_value_t = 100, help_heading = "Load")]
    pub num_requests: usize,
    /// Stop sending new requests this many seconds into a level (the ones in flight
    /// finish).
    #[arg(long, env = "INFLIGHT_BENCH_DURATION", help_heading = "Load")]
    pub duration: Option<f64>,
    /// Requests sent before the first level and not counted.
    #[arg(long, env = "INFLIGHT_BENCH_WARMUP", default_value_t = 1, help_heading = "Load")]
    pub warmup: usize,
    /// Seeds prompts and arrival times: the same seed sends the same workload.
    #[arg(long, env = "INFLIGHT_BENCH_SEED", default_value_t = 0, help_heading = "Load")]
    pub seed: u64,

    /// Synthetic prompt length in tokens (including any shared prefix).
    #[arg(long, env = "INFLIGHT_BENCH_INPUT_TOKENS", default_value_t = 256, help_heading = "Workload")]
    pub input_tokens: usize,
    /// Output length in tokens (`max_tokens`; exact with ignore_eos).
    #[arg(long, env = "INFLIGHT_BENCH_OUTPUT_TOKENS", default_value_t = 128, help_heading = "Workload")]
    pub output_tokens: usize,
    /// Draw input lengths uniformly from ±this fraction of --input-tokens (0: fixed).
    #[arg(long, env = "INFLIGHT_BENCH_INPUT_RANGE_RATIO", default_value_t = 0.0, help_heading = "Workload")]
    pub input_range_ratio: f64,
    /// Draw output lengths uniformly from ±this fraction of --output-tokens (0: fixed).
    #[arg(long, env = "INFLIGHT_BENCH_OUTPUT_RANGE_RATIO", default_value_t = 0.0, help_heading = "Workload")]
    pub output_range_ratio: f64,
    /// The first N prompt tokens are the same in every request (measures prefix
    /// caching); the rest stays unique.
    #[arg(long, env = "INFLIGHT_BENCH_SHARED_PREFIX_TOKENS", default_value_t = 0, help_heading = "Workload")]
    pub shared_prefix_tokens: usize,
    /// JSONL prompts instead of synthetic ones: `{"prompt": ...}` or
    /// `{"messages": [...]}` per line, optional `"max_tokens"`.
    #[arg(long, env = "INFLIGHT_BENCH_DATASET", help_heading = "Workload")]
    pub dataset: Option<PathBuf>,
    /// The served model's tokenizer (a .gguf file, tokenizer.json, or a Hugging Face
    /// folder): makes synthetic prompt lengths exact.
    #[arg(long, env = "INFLIGHT_BENCH_TOKENIZER", help_heading = "Workload")]
    pub tokenizer: Option<PathBuf>,
    /// Do not send `ignore_eos` (for servers that reject it); outputs may then stop early.
    #[arg(long, env = "INFLIGHT_BENCH_NO_IGNORE_EOS", help_heading = "Workload")]
    pub no_ignore_eos: bool,
    #[arg(long, env = "INFLIGHT_BENCH_TEMPERATURE", default_value_t = 0.0, help_heading = "Workload")]
    pub temperature: f32,
    /// A JSON object whose fields are added to every request body, over the
    /// bench's own (e.g. '{"priority": 0}' for vLLM's priority scheduling).
    #[arg(long, env = "INFLIGHT_BENCH_EXTRA_BODY", value_name = "JSON", help_heading = "Workload")]
    pub extra_body: Option<String>,

    /// Percentiles to show (linear interpolation between closest ranks, as numpy's
    /// default; 50 and 99 are always computed for reports).
    #[arg(
        long,
        env = "INFLIGHT_BENCH_PERCENTILES",
        value_delimiter = ',',
        default_value = "50,90,99",
        help_heading = "Metrics"
    )]
    pub percentiles: Vec<f64>,
    /// SLO on time to first token, in ms.
    #[arg(long, env = "INFLIGHT_BENCH_SLO_TTFT_MS", help_heading = "Metrics")]
    pub slo_ttft_ms: Option<f64>,
    /// SLO on time per output token, in ms.
    #[arg(long, env = "INFLIGHT_BENCH_SLO_TPOT_MS", help_heading = "Metrics")]
    pub slo_tpot_ms: Option<f64>,
    /// SLO on end-to-end latency, in ms.
    #[arg(long, env = "INFLIGHT_BENCH_SLO_E2E_MS", help_heading = "Metrics")]
    pub slo_e2e_ms: Option<f64>,
    /// A level meets the SLOs when at least this percentage of its requests did.
    #[arg(long, env = "INFLIGHT_BENCH_SLO_ATTAINMENT", default_value_t = 90.0, help_heading = "Metrics")]
    pub slo_attainment: f64,

    /// The instance type this benchmark's server runs on, priced from the prices file.
    #[arg(
        long,
        env = "INFLIGHT_BENCH_INSTANCE_TYPE",
        conflicts_with = "price_per_hour",
        help_heading = "Cost"
    )]
    pub instance_type: Option<String>,
    /// The hourly price of the server's hardware, in USD, instead of --instance-type.
    #[arg(long, env = "INFLIGHT_BENCH_PRICE_PER_HOUR", help_heading = "Cost")]
    pub price_per_hour: Option<f64>,
    /// A prices file (TOML) replacing the built-in deploy/instance-prices.toml.
    #[arg(long, env = "INFLIGHT_BENCH_PRICES", help_heading = "Cost")]
    pub prices: Option<PathBuf>,
    /// What the server runs on, in words (stored with the results).
    #[arg(long, env = "INFLIGHT_BENCH_HARDWARE", help_heading = "Cost")]
    pub hardware: Option<String>,

    /// The run's name in reports (default: `MODEL @ HOST:PORT`).
    #[arg(long, env = "INFLIGHT_BENCH_LABEL", help_heading = "Output")]
    pub label: Option<String>,
    /// The results file (JSON; default: bench-<UTC time>.json).
    #[arg(long, short, env = "INFLIGHT_BENCH_OUTPUT", help_heading = "Output")]
    pub output: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_redacted_in_debug_output() {
        let key = "sk-very-secret-key-123";
        let cli = Cli::try_parse_from(["inflight", "serve", "--api-key", key]).expect("flags");
        let Command::Serve(serve) = &cli.command else { panic!("not serve: {cli:?}") };
        assert_eq!(serve.api_key.as_ref().map(Secret::expose), Some(key));
        let shown = format!("{cli:?} {serve:#?}");
        assert!(!shown.contains(key), "the key leaks in {shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let bench =
            Cli::try_parse_from(["inflight", "bench", "--url", "http://x", "--model", "m", "--api-key", key])
                .expect("bench flags");
        assert!(!format!("{bench:?}").contains(key));
    }

    /// `--max-step-ms`: `auto` by default, `0`/`off` for no limit, milliseconds, and
    /// anything else refused with the accepted forms named.
    #[test]
    fn max_step_ms_takes_auto_off_or_milliseconds() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["inflight", "serve"], args].concat())?;
            let Command::Serve(serve) = cli.command else { panic!("not serve") };
            Ok::<_, clap::Error>(serve.scheduler.max_step_ms)
        };
        assert_eq!(parse(&[]).expect("default"), MaxStep::Auto);
        assert_eq!(parse(&["--max-step-ms", "0"]).expect("0"), MaxStep::Off);
        assert_eq!(parse(&["--max-step-ms", "off"]).expect("off"), MaxStep::Off);
        assert_eq!(parse(&["--max-step-ms", "25"]).expect("25"), MaxStep::Millis(25));
        let err = parse(&["--max-step-ms", "fast"]).expect_err("not a limit").to_string();
        assert!(err.contains("`fast` is not `auto`, `off` or milliseconds"), "{err}");
    }
}
