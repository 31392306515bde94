//! One engine step of the default model on the CPU backend: prefill of 128 and
//! 512 tokens, the last 512-token chunk of a 7,500-token prompt (where attention
//! dominates), and decode steps at batch 1, 8, 16 and 32 (one token per sequence, each
//! sequence 128 tokens deep). Throughput is in tokens per second of the step.
//!
//! `cargo bench --bench step` (model: `INFLIGHT_BENCH_MODEL` or the registry's
//! download location; fetch it first with `inflight models pull`; threads:
//! `INFLIGHT_THREADS`, default one per core; `INFLIGHT_KV_CACHE_DTYPE=f32` for an f32
//! KV cache; `INFLIGHT_ACTIVATIONS=f32|int16|bf16` for other activation precisions;
//! `INFLIGHT_CHUNK_INVARIANT_ATTENTION=1` for decode rows with the tile's arithmetic; `INFLIGHT_BENCH_DECODE_DEPTH`
//! for the decode steps' depth, default 128; `INFLIGHT_BLOCK_SIZE` for the KV blocks'
//! positions, default 16; `INFLIGHT_WORKERS_POLL=0` to let idle workers sleep within a
//! step).
//!
//! With `INFLIGHT_PROFILE_STEP=1` each benchmark is followed by 20 more steps with the
//! model's section timers on (`inflight::backend::cpu::profile`), and their breakdown printed.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inflight::backend::cpu::{
    profile, Activations, AttentionPrecision, CpuBackend, CpuConfig, KvDtype, Llama,
};
use inflight::backend::{Backend, SeqStep, StepBatch, StepLimits};
use inflight::model::{LlamaConfig, WeightSource};

// The allocator the `inflight` binary uses (see src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn model_path() -> PathBuf {
    std::env::var("INFLIGHT_BENCH_MODEL").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/cache/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

fn backend() -> CpuBackend {
    let path = model_path();
    let w = WeightSource::open_gguf(&path).expect("model file (run `inflight models pull` first)");
    let cfg = LlamaConfig::from_gguf(w.gguf_content().expect("gguf"), &path).expect("config");
    let model = Llama::load(&w, cfg).expect("load");
    // INFLIGHT_THREADS, INFLIGHT_KV_CACHE_DTYPE, INFLIGHT_ACTIVATIONS,
    // INFLIGHT_ATTENTION_PRECISION and INFLIGHT_BLOCK_SIZE as for the CLI.
    let threads = std::env::var("INFLIGHT_THREADS").ok().and_then(|t| t.parse().ok());
    let kv_dtype = match std::env::var("INFLIGHT_KV_CACHE_DTYPE").as_deref() {
        Ok("f32") => KvDtype::F32,
        Ok("fp8") => KvDtype::Fp8,
        _ => KvDtype::default(),
    };
    let activations = match std::env::var("INFLIGHT_ACTIVATIONS").as_deref() {
        Ok("f32") => Activations::F32,
        Ok("int16") => Activations::Int16,
        Ok("bf16") => Activations::Bf16,
        _ => Activations::default(),
    };
    let attention_precision = match std::env::var("INFLIGHT_ATTENTION_PRECISION").as_deref() {
        Ok("f32") => AttentionPrecision::F32,
        Ok("bf16") => AttentionPrecision::Bf16,
        _ => AttentionPrecision::Auto,
    };
    let chunk_invariant_attention =
        std::env::var("INFLIGHT_CHUNK_INVARIANT_ATTENTION").is_ok_and(|v| v == "1");
    let block_size = std::env::var("INFLIGHT_BLOCK_SIZE").ok().and_then(|b| b.parse().ok());
    let cfg = CpuConfig {
        block_size: block_size.unwrap_or(CpuConfig::default().block_size),
        limits: StepLimits { max_batch_tokens: 4096, ..Default::default() },
        chunk_invariant_attention,
        kv_cache_bytes: 2 << 30,
        threads,
        kv_dtype,
        activations,
        attention_precision,
        ..Default::default()
    };
    CpuBackend::new(model, &cfg).expect("backend")
}

/// With `INFLIGHT_PROFILE_STEP` set, prints where `batch`'s steps spend their time.
/// Outside criterion's timed loop, so the timers never touch the benchmark's figures.
fn print_profile(be: &mut CpuBackend, batch: &StepBatch, label: &str) {
    let Some(wanted) = std::env::var_os("INFLIGHT_PROFILE_STEP") else {
        return;
    };
    // `1` profiles every case; any other value only the cases whose name contains it
    // (the criterion filter does not reach here).
    let wanted = wanted.to_string_lossy();
    if wanted != "1" && !label.contains(wanted.as_ref()) {
        return;
    }
    let steps = 20;
    be.step(batch).expect("warm-up step");
    profile::set_enabled(true);
    let _ = profile::take();
    let (mut total, mut fastest) = (0.0f64, f64::INFINITY);
    for _ in 0..steps {
        let start = std::time::Instant::now();
        be.step(batch).expect("step");
        let ms = start.elapsed().as_secs_f64() * 1e3;
        (total, fastest) = (total + ms, fastest.min(ms));
    }
    let wall_ms = total / steps as f64;
    profile::set_enabled(false);
    // The fastest step is the steadier figure on a shared host, whose neighbours slow
    // whole runs by a quarter or more.
    println!("\n{label}: {wall_ms:.2} ms per step (wall), fastest {fastest:.2} ms\n{}\n", profile::take());
}

/// Sequence `i` owns blocks `[i * per_seq, (i + 1) * per_seq)`.
fn table(i: usize, per_seq: usize) -> Vec<u32> {
    ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect()
}

fn tokens(n: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + salt * 104_729) % 40_000 + 100) as u32).collect()
}

/// One sequence's prompt chunk `tokens` at `start_pos`, alone in a step.
fn prompt_chunk<'a>(
    tokens: &'a [u32],
    start_pos: usize,
    block_table: &'a [u32],
    want_logits: bool,
) -> StepBatch<'a> {
    let seq = SeqStep {
        id: 0,
        tokens,
        start_pos,
        prompt_rows: tokens.len(),
        block_table,
        want_logits,
        all_logits: false,
    };
    StepBatch { seqs: vec![seq] }
}

fn bench_step(c: &mut Criterion) {
    let mut be = backend();
    let bs = be.info().block_size;
    let mut g = c.benchmark_group("step");
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));

    for n in [128usize, 256, 512] {
        let (prompt, blocks) = (tokens(n, 1), table(0, n.div_ceil(bs)));
        let batch = prompt_chunk(&prompt, 0, &blocks, true);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("prefill_{n}"), |b| b.iter(|| be.step(&batch).expect("step")));
        print_profile(&mut be, &batch, &format!("step/prefill_{n}"));
    }

    // A scored prompt (`echo` with `logprobs`, as evaluation harnesses send it): the
    // output projection runs over every prompt row, not only the last.
    {
        let n = 512;
        let (prompt, blocks) = (tokens(n, 2), table(0, n.div_ceil(bs)));
        let mut batch = prompt_chunk(&prompt, 0, &blocks, true);
        batch.seqs[0].all_logits = true;
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("prefill_512_scored", |b| b.iter(|| be.step(&batch).expect("step")));
        print_profile(&mut be, &batch, "step/prefill_512_scored");
    }

    // A long prompt's last chunk: positions 6,988..7,500, after the rest was prefilled
    // in 512-token chunks as the server's default budget does.
    {
        let (n, chunk) = (7500usize, 512usize);
        let (prompt, blocks) = (tokens(n, 3), table(0, n.div_ceil(bs)));
        let last = n - chunk;
        for lo in (0..last).step_by(chunk) {
            let hi = (lo + chunk).min(last);
            be.step(&prompt_chunk(&prompt[lo..hi], lo, &blocks, false)).expect("prefill");
        }
        let batch = prompt_chunk(&prompt[last..], last, &blocks, true);
        g.throughput(Throughput::Elements(chunk as u64));
        g.bench_function("prefill_512_at_7k", |b| b.iter(|| be.step(&batch).expect("step")));
        print_profile(&mut be, &batch, "step/prefill_512_at_7k");

        // A short turn after a long cached history (a chat's next message, the history
        // from the prefix cache): positions 7,484..7,500, one tile of attention rows.
        let turn = 16;
        let batch = prompt_chunk(&prompt[n - turn..], n - turn, &blocks, true);
        g.throughput(Throughput::Elements(turn as u64));
        g.bench_function("prefill_16_at_7k", |b| b.iter(|| be.step(&batch).expect("step")));
        print_profile(&mut be, &batch, "step/prefill_16_at_7k");
    }

    let depth: usize =
        std::env::var("INFLIGHT_BENCH_DECODE_DEPTH").ok().and_then(|d| d.parse().ok()).unwrap_or(128);
    let per_seq = (depth + 1).div_ceil(bs);
    for batch_size in [1usize, 8, 16, 32] {
        // Fill each sequence's KV to `depth` tokens once, then time decode steps.
        let tables: Vec<Vec<u32>> = (0..batch_size).map(|i| table(i, per_seq)).collect();
        for (i, blocks) in tables.iter().enumerate() {
            let prompt = tokens(depth, i);
            let prefill = prompt_chunk(&prompt, 0, blocks, false);
            be.step(&prefill).expect("prefill");
        }
        let next: Vec<Vec<u32>> = (0..batch_size).map(|i| tokens(1, i + 7)).collect();
        let batch = StepBatch {
            seqs: (0..batch_size)
                .map(|i| SeqStep {
                    id: i as u64,
                    tokens: &next[i],
                    start_pos: depth,
                    prompt_rows: 0,
                    block_table: &tables[i],
                    want_logits: true,
                    all_logits: false,
                })
                .collect(),
        };
        g.throughput(Throughput::Elements(batch_size as u64));
        let name = format!("decode_batch_{batch_size}");
        g.bench_function(&name, |b| b.iter(|| be.step(&batch).expect("step")));
        print_profile(&mut be, &batch, &format!("step/{name}"));
    }
    g.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
