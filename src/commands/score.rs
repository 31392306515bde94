//! `inflight score`: teacher-forced logits of given token sequences, through the
//! backend's own step path (every prompt prefilled in one step where they fit,
//! then one decode step per continuation token, all sequences together), written
//! to files. It is how backends are compared on identical input: the GPU checks
//! (`benches/gpu/`) score the CPU backend's greedy continuation on `--backend
//! cuda` and compare with transformers.

use inflight::engine::sampling::argmax;
use std::io::Write;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;

use super::load_model;
use crate::cli::ScoreArgs;
use inflight::backend::{Backend, BlockId, SeqStep, StepBatch};

#[derive(Deserialize)]
struct Input {
    sequences: Vec<Sequence>,
}

#[derive(Deserialize)]
struct Sequence {
    prompt: Vec<u32>,
    #[serde(default)]
    continuation: Vec<u32>,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let mut input: Input =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", args.input.display()))?;
    let given = input.sequences.first().map_or(0, |s| s.continuation.len());
    let steps = if given > 0 { given } else { args.greedy };
    if input.sequences.is_empty() || steps == 0 {
        bail!("nothing to score: give sequences with continuations, or --greedy N");
    }
    if input.sequences.iter().any(|s| s.prompt.is_empty() || s.continuation.len() != given) {
        bail!("every sequence needs a prompt, and all continuations the same length");
    }
    let (_, loaded) = load_model(&args.model, &args.scheduler)?;
    let mut backend = loaded.backend;
    let rows = score(backend.as_mut(), &mut input.sequences, steps)?;

    let vocab = backend.info().vocab_size;
    let mut raw = std::io::BufWriter::new(
        std::fs::File::create(args.output.with_extension("f32")).context("creating the logits file")?,
    );
    for row in &rows {
        for v in row {
            raw.write_all(&v.to_le_bytes())?;
        }
    }
    raw.flush()?;
    let meta = json!({
        "device": backend.info().device,
        "shape": [input.sequences.len(), steps, vocab],
        "sequences": input.sequences.iter().map(|s| json!({"prompt": s.prompt, "continuation": s.continuation}))
            .collect::<Vec<_>>(),
    });
    std::fs::write(args.output.with_extension("json"), serde_json::to_string(&meta)?)?;
    Ok(())
}

/// Runs the sequences in lockstep; returns `[sequence][step]` logits rows, flattened
/// sequence-major. Continuations missing from the input are filled greedily.
fn score(backend: &mut dyn Backend, seqs: &mut [Sequence], steps: usize) -> Result<Vec<Vec<f32>>> {
    let info = backend.info().clone();
    let mut next_block: BlockId = 0;
    let tables: Vec<Vec<BlockId>> = seqs
        .iter()
        .map(|s| {
            let n = (s.prompt.len() + steps).div_ceil(info.block_size) as BlockId;
            next_block += n;
            (next_block - n..next_block).collect()
        })
        .collect();
    if next_block as usize > info.num_blocks {
        bail!("the sequences need {next_block} KV blocks; the backend has {}", info.num_blocks);
    }
    let mut rows: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(steps); seqs.len()];
    // Prefill: all prompts in one step where the backend takes them, else one each.
    let total: usize = seqs.iter().map(|s| s.prompt.len()).sum();
    let groups: Vec<Vec<usize>> = if total <= info.step.max_tokens && seqs.len() <= info.step.max_prefill_seqs
    {
        vec![(0..seqs.len()).collect()]
    } else {
        (0..seqs.len()).map(|i| vec![i]).collect()
    };
    for group in groups {
        let batch = StepBatch {
            seqs: group
                .iter()
                .map(|&i| SeqStep {
                    id: i as u64,
                    tokens: &seqs[i].prompt,
                    start_pos: 0,
                    prompt_rows: seqs[i].prompt.len(),
                    block_table: &tables[i],
                    want_logits: true,
                    all_logits: false,
                })
                .collect(),
        };
        let logits = backend.step(&batch)?;
        for (k, &i) in group.iter().enumerate() {
            rows[i].push(logits.row(k).context("missing logits row")?.to_vec());
        }
    }
    for step in 1..steps {
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.continuation.len() < step {
                let last = rows[i].last().context("missing logits row")?;
                s.continuation.push(argmax(last));
            }
        }
        let tokens: Vec<[u32; 1]> = seqs.iter().map(|s| [s.continuation[step - 1]]).collect();
        let batch = StepBatch {
            seqs: seqs
                .iter()
                .enumerate()
                .map(|(i, s)| SeqStep {
                    id: i as u64,
                    tokens: &tokens[i],
                    start_pos: s.prompt.len() + step - 1,
                    prompt_rows: 0,
                    block_table: &tables[i],
                    want_logits: true,
                    all_logits: false,
                })
                .collect(),
        };
        let logits = backend.step(&batch)?;
        for (i, r) in rows.iter_mut().enumerate() {
            r.push(logits.row(i).context("missing logits row")?.to_vec());
        }
    }
    for (i, s) in seqs.iter_mut().enumerate() {
        if s.continuation.len() < steps {
            let last = rows[i].last().context("missing logits row")?;
            s.continuation.push(argmax(last));
        }
    }
    Ok(rows.into_iter().flatten().collect())
}
