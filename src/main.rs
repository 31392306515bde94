//! The `inflight` binary: parses the command line and runs a subcommand.

mod cli;
mod commands;

use anyhow::Result;
use clap::Parser;

/// mimalloc instead of glibc's malloc: a step runs on rayon's worker threads, whose glibc
/// arenas hand freed step buffers (activations, the 3 MB logits of a batch-16 step) back
/// to the kernel and fault them in again on the next step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        cli::Command::Serve(args) => commands::serve::run(args),
        cli::Command::Generate(args) => commands::generate::run(args),
        cli::Command::Bench(args) => commands::bench::run(*args),
        cli::Command::Score(args) => commands::score::run(args),
        cli::Command::Models { command } => commands::models::run(command),
        cli::Command::ChatTemplateWorker { memory_bytes } => {
            Ok(inflight::tokenizer::template_sandbox::run_worker(memory_bytes)?)
        }
    }
}
