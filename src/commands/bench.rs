//! `inflight bench`: turns the flags into a sweep over an OpenAI-compatible
//! server, shows progress and the per-level results, writes the results file; and
//! `inflight bench report`: results files side by side in markdown plus a plot.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BenchArgs, BenchCommand, BenchEndpoint, BenchReportArgs, BenchRunArgs};
use inflight::bench::client::{Client, Target};
use inflight::bench::cost::{PriceTable, PriceUsed};
use inflight::bench::driver::{LoadLevel, Progress};
use inflight::bench::endpoint::Endpoint;
use inflight::bench::record::RequestRecord;
use inflight::bench::results::{self, BenchResults, LevelResult, LoadInfo, TargetInfo, WorkloadInfo};
use inflight::bench::stats::{self, Slo};
use inflight::bench::sweep::{self, Observer, SweepConfig};
use inflight::bench::workload::{SyntheticSpec, TokenCount, Workload};
use inflight::bench::{plot, report, table};
use inflight::tokenizer::Tokenizer;

pub fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        Some(BenchCommand::Report(r)) => report_command(r),
        None => bench(args.run),
    }
}

fn report_command(args: BenchReportArgs) -> Result<()> {
    let runs = args.files.iter().map(|f| BenchResults::read(f)).collect::<Result<Vec<_>, _>>()?;
    let md = report::markdown(&runs);
    print!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    plot::write_svg(&runs, &args.plot)?;
    eprintln!("plot written to {}", args.plot.display());
    Ok(())
}

fn levels(args: &BenchRunArgs) -> Result<Vec<LoadLevel>> {
    if !args.request_rate.is_empty() {
        if !(args.burstiness > 0.0 && args.burstiness.is_finite()) {
            bail!("--burstiness must be positive");
        }
        return Ok(args
            .request_rate
            .iter()
            .map(|r| LoadLevel::Rate {
                rate: r.0,
                burstiness: args.burstiness,
                max_concurrency: args.max_concurrency,
            })
            .collect());
    }
    let list = if args.concurrency.is_empty() { vec![1] } else { args.concurrency.clone() };
    if list.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    Ok(list.into_iter().map(|concurrency| LoadLevel::Concurrency { concurrency }).collect())
}

/// The percentiles shown, and those computed (50 and 99 added for reports).
fn percentiles(shown: &[f64]) -> Result<Vec<f64>> {
    if shown.iter().any(|p| !(0.0..=100.0).contains(p)) {
        bail!("--percentiles must lie in 0..=100");
    }
    let mut all: Vec<f64> = shown.iter().copied().chain([50.0, 99.0]).collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    Ok(all)
}

fn price(args: &BenchRunArgs) -> Result<Option<PriceUsed>> {
    if let Some(p) = args.price_per_hour {
        if !(p > 0.0 && p.is_finite()) {
            bail!("--price-per-hour must be a positive number");
        }
        return Ok(Some(PriceUsed::manual(p)));
    }
    let Some(instance) = &args.instance_type else { return Ok(None) };
    let table = match &args.prices {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            PriceTable::parse(&text, &path.display().to_string())?
        }
        None => PriceTable::builtin()?,
    };
    Ok(Some(PriceUsed::from_table(instance, table.get(instance)?)))
}

/// A tokenizer from a .gguf file, a tokenizer.json, or a Hugging Face folder.
fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let ctx = || format!("loading the tokenizer from {}", path.display());
    if path.is_dir() {
        return Tokenizer::from_hf_dir(path).with_context(ctx);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        let mut f = std::fs::File::open(path).with_context(ctx)?;
        let content =
            inflight::model::weights::read_gguf(&mut f).map_err(anyhow::Error::msg).with_context(ctx)?;
        return Tokenizer::from_gguf(&content).with_context(ctx);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Tokenizer::from_hf_dir(dir).with_context(ctx)
}

fn default_label(model: &str, url: &str) -> String {
    let host = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or(url);
    format!("{model} @ {host}")
}

fn default_output(started: &str) -> PathBuf {
    let stamp: String = started.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    PathBuf::from(format!("bench-{}.json", stamp.replace('T', "-")))
}

fn bench(args: BenchRunArgs) -> Result<()> {
    let (Some(url), Some(model)) = (args.url.clone(), args.model.clone()) else {
        bail!("--url and --model are required");
    };
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let cfg = sweep_config(&args)?;
    let endpoint = match args.endpoint {
        BenchEndpoint::Completions => Endpoint::Completions,
        BenchEndpoint::Chat => Endpoint::Chat,
    };

    let tokenizer = args.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    let spec = synthetic_spec(&args);
    let workload = match &args.dataset {
        Some(path) => Workload::from_jsonl(path, endpoint, args.output_tokens)?,
        None => Workload::synthetic(spec.clone(), tokenizer.as_ref().map(|t| t as &dyn TokenCount))?,
    };
    let target = Target {
        url: url.clone(),
        model: model.clone(),
        endpoint,
        api_key: args.api_key.as_ref().map(|k| k.expose().to_string()).filter(|k| !k.is_empty()),
        timeout: Duration::from_secs_f64(args.timeout),
        keep_alive: !args.no_keep_alive,
        ignore_eos: !args.no_ignore_eos,
        temperature: Some(args.temperature),
        extra_body: extra_body(args.extra_body.as_deref())?,
    };
    let header = results_header(&args, TargetInfo { url, model, endpoint }, spec, &cfg);
    let output = args.output.clone().unwrap_or_else(|| default_output(&header.started_at));

    // The client must not compete with a server on the same machine for cores:
    // one thread drives every stream.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = Client::new(target)?;
    println!("inflight bench: {} → {} (model {})", header.label, client.url(), header.target.model);
    let display = Display { bar: Mutex::new(None), header: header.clone() };
    let sweep = runtime.block_on(sweep::run(&client, &workload, &cfg, &display))?;
    display.finish_bar();
    if sweep.warmup_failed > 0 {
        eprintln!("warning: {} of {} warmup requests failed", sweep.warmup_failed, args.warmup);
    }
    let mut results = header;
    let summaries: Vec<_> = sweep.levels.iter().map(|l| l.summary.clone()).collect();
    results.best_level = stats::best_level(&summaries).map(|i| summaries[i].load.clone());
    results.levels = sweep.levels;
    results.skipped_levels = sweep.skipped;
    println!();
    print!("{}", table::summary_table(&results));
    results.write(&output)?;
    println!("results written to {}", output.display());
    if results.levels.iter().all(|l| l.summary.completed == 0) {
        bail!("no request succeeded; the errors are listed above");
    }
    Ok(())
}

/// What the sweep runs (load levels, requests, percentiles, SLOs, price), from the
/// load and reporting flags.
fn sweep_config(args: &BenchRunArgs) -> Result<SweepConfig> {
    let duration = match args.duration {
        Some(d) if !(d > 0.0 && d.is_finite()) => bail!("--duration must be a positive number of seconds"),
        d => d.map(Duration::from_secs_f64),
    };
    if !(0.0..=100.0).contains(&args.slo_attainment) {
        bail!("--slo-attainment is a percentage (0..=100)");
    }
    let levels = levels(args)?;
    let percentiles = percentiles(&args.percentiles)?;
    let price = price(args)?;
    let slo = Slo {
        ttft_ms: args.slo_ttft_ms,
        tpot_ms: args.slo_tpot_ms,
        e2e_ms: args.slo_e2e_ms,
        attainment_pct: args.slo_attainment,
    };
    Ok(SweepConfig {
        levels,
        num_requests: args.num_requests,
        duration,
        warmup: args.warmup,
        seed: args.seed,
        percentiles,
        slo,
        price,
    })
}

fn synthetic_spec(args: &BenchRunArgs) -> SyntheticSpec {
    SyntheticSpec {
        input_tokens: args.input_tokens,
        output_tokens: args.output_tokens,
        input_range_ratio: args.input_range_ratio,
        output_range_ratio: args.output_range_ratio,
        shared_prefix_tokens: args.shared_prefix_tokens,
        seed: args.seed,
    }
}

/// The results file as it stands before the first level runs: what is measured,
/// against what, and how. `spec` is recorded only when no dataset replaces it.
fn results_header(
    args: &BenchRunArgs,
    target: TargetInfo,
    spec: SyntheticSpec,
    cfg: &SweepConfig,
) -> BenchResults {
    let started_at = results::utc_timestamp(SystemTime::now());
    let label = args.label.clone().unwrap_or_else(|| default_label(&target.model, &target.url));
    BenchResults {
        schema_version: results::SCHEMA_VERSION,
        tool: format!("inflight {}", env!("CARGO_PKG_VERSION")),
        label,
        started_at,
        target,
        hardware: args.hardware.clone(),
        price: cfg.price.clone(),
        workload: WorkloadInfo {
            synthetic: args.dataset.is_none().then_some(spec),
            dataset: args.dataset.as_ref().map(|p| p.display().to_string()),
            tokenizer: args.tokenizer.as_ref().map(|p| p.display().to_string()),
            ignore_eos: !args.no_ignore_eos,
            temperature: Some(args.temperature),
        },
        load: LoadInfo {
            num_requests: args.num_requests,
            duration_s: args.duration,
            warmup: args.warmup,
            timeout_s: args.timeout,
        },
        slo: cfg.slo.clone(),
        percentiles: args.percentiles.clone(),
        levels: Vec::new(),
        best_level: None,
        skipped_levels: Vec::new(),
    }
}

/// Progress bar while a level runs, its block when it ends.
struct Display {
    bar: Mutex<Option<ProgressBar>>,
    /// The run's settings, for rendering a level's block.
    header: BenchResults,
}

impl Display {
    fn start_bar(&self, message: String, len: usize) {
        let bar = ProgressBar::new(len as u64);
        if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        if let Some(old) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).replace(bar) {
            old.finish_and_clear();
        }
    }

    fn finish_bar(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn request_done(&self, _: &RequestRecord) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.inc(1);
        }
    }
}

impl Observer for Display {
    fn warmup_started(&self, requests: usize) {
        self.start_bar("warmup".into(), requests);
    }

    fn level_started(&self, label: &str, requests: usize) {
        self.start_bar(label.to_string(), requests);
    }

    fn level_finished(&self, result: &LevelResult) {
        self.finish_bar();
        print!("{}", table::level_block(&self.header, result));
    }
}

/// `--extra-body`: a JSON object, or nothing.
fn extra_body(text: Option<&str>) -> Result<serde_json::Map<String, serde_json::Value>> {
    match text {
        None => Ok(Default::default()),
        Some(t) => match serde_json::from_str(t) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => bail!("--extra-body must be a JSON object, e.g. '{{\"priority\": 1}}'"),
            Err(e) => bail!("--extra-body is not JSON: {e}"),
        },
    }
}
