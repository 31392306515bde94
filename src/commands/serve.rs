//! `inflight serve`: binds the port first (so health checks answer 503 while the
//! model loads), loads the model, starts the engine thread, serves until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{load_model, max_step, model_spec, scheduler_config};
use crate::cli::ServeArgs;
use inflight::api::tenants::{self, TenantTable};
use inflight::api::{self, AppState, Ready, ServerConfig};
use inflight::backend::Backend;
use inflight::engine::core::EngineCore;
use inflight::engine::service::EngineThread;
use inflight::metrics::Metrics;
use inflight::testing::faults::FaultInjectingBackend;

fn port(args: &ServeArgs) -> Result<u16> {
    match std::env::var("SAGEMAKER_BIND_TO_PORT") {
        Ok(p) => p.parse().with_context(|| format!("SAGEMAKER_BIND_TO_PORT={p} is not a port")),
        Err(_) => Ok(args.port),
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !(args.request_timeout > 0.0 && args.shutdown_timeout >= 0.0) {
        bail!("--request-timeout must be positive and --shutdown-timeout non-negative");
    }
    if args.max_queue_wait.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
        bail!("--max-queue-wait must be a positive number of seconds");
    }
    if args.stream_buffer_events == 0 {
        bail!("--stream-buffer-events must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

/// The tenants from `--tenants`, or one `default` tenant for `--api-key`, or none
/// (authentication off). clap refuses the two flags together.
fn tenant_table(args: &ServeArgs) -> Result<TenantTable> {
    if let Some(path) = &args.tenants {
        let table = tenants::file::load_table(path)?;
        tracing::info!(file = %path.display(), tenants = table.tenants().len(), "tenants loaded");
        return Ok(table);
    }
    Ok(match args.api_key.as_ref().map(|k| k.expose()).filter(|k| !k.is_empty()) {
        Some(key) => TenantTable::single_key(key),
        None => TenantTable::open(),
    })
}

async fn serve(args: ServeArgs) -> Result<()> {
    // A bad tenants file is a start-up error before the port is taken.
    let tenant_table = tenant_table(&args)?;
    let addr = format!("{}:{}", args.host, port(&args)?);
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    let metrics = Arc::new(Metrics::new());
    let config = ServerConfig {
        served_model: args.served_model_name.clone().unwrap_or_else(|| model_spec(&args.model)),
        max_request_bytes: args.max_request_bytes,
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        invocations_without_key: args.invocations_without_key,
        socket_send_buffer: args.socket_send_buffer,
    };
    let state = AppState::new(config, metrics.clone(), tenant_table);
    tenants::handle_sighup(state.tenants.clone(), args.tenants.clone());
    tracing::info!(%addr, model = %state.config.served_model, "listening (model loading)");

    let (tx, rx) = tokio::sync::oneshot::channel();
    let stdin_closed = stdin_eof(args.exit_on_stdin_eof);
    let server = tokio::spawn(api::server::serve(
        listener,
        state.clone(),
        async move {
            tokio::select! {
                _ = api::server::shutdown_signal() => {}
                _ = rx => {}
                _ = stdin_closed => {}
            }
        },
        Duration::from_secs_f64(args.shutdown_timeout),
    ));

    // Loading blocks for seconds: keep it off the async workers.
    let load_args = args.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_> {
        let (_, loaded) = load_model(&load_args.model, &load_args.scheduler)?;
        let (max_context, prompt_logprobs) =
            (loaded.backend.info().max_context, loaded.backend.info().prompt_logprobs);
        let tokenizer = loaded.tokenizer.clone();
        let backend = with_injected_faults(loaded.backend, &load_args.inject_step_faults);
        let core = EngineCore::new(backend, tokenizer.clone(), scheduler_config(&load_args.scheduler))?
            .with_max_queue_wait(load_args.max_queue_wait.map(Duration::from_secs_f64))
            .with_max_step(max_step(&load_args.scheduler));
        Ok((core, tokenizer, max_context, prompt_logprobs))
    })
    .await
    .context("model loading task")?;
    let (core, tokenizer, max_context, prompt_logprobs) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(());
            let _ = server.await;
            return Err(e);
        }
    };
    let engine = EngineThread::spawn_with_buffer(core, metrics, args.stream_buffer_events)
        .context("starting the engine thread")?;
    let _ = state.ready.set(Arc::new(Ready {
        engine: engine.handle.clone(),
        tokenizer,
        max_context,
        prompt_logprobs,
    }));
    tracing::info!("ready");

    let result = server.await.context("server task")?;
    drop(tx);
    // The HTTP side has drained; end the engine so the backend (and a device
    // runtime under it) shuts down in order.
    if !engine.stop(Duration::from_secs_f64(args.shutdown_timeout.max(1.0))) {
        tracing::warn!("the engine did not stop in time; exiting without closing the backend");
    }
    result.context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}

/// The backend, or the test-only wrapper failing the steps `--inject-step-faults`
/// names.
fn with_injected_faults(backend: Box<dyn Backend>, steps: &[u64]) -> Box<dyn Backend> {
    if steps.is_empty() {
        return backend;
    }
    tracing::warn!(?steps, "test-only fault injection: these backend steps will fail");
    Box::new(FaultInjectingBackend::new(backend, steps.iter().copied()))
}

/// Resolves when standard input reaches end-of-file, if asked to; never otherwise.
fn stdin_eof(enabled: bool) -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if enabled {
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = tx.send(());
        });
    } else {
        std::mem::forget(tx);
    }
    rx
}
