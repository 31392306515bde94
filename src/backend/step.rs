//! One engine step as the scheduler plans it and every backend runs it: each
//! sequence's share of the step ([`SeqStep`], the one type from scheduler to
//! kernel), the batch of them ([`StepBatch`]), its token rows flattened in batch
//! order ([`PackedStep`], what a forward pass consumes), and the logits that come
//! back ([`Logits`]).
//!
//! A `SeqStep` borrows its tokens and block table from the scheduler's own state,
//! so planning a step copies no block table.

/// A sequence's id, unique for the engine's lifetime.
pub type SeqId = u64;

/// Index of one KV block in a backend's pool.
pub type BlockId = u32;

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqStep<'a> {
    pub id: SeqId,
    /// The new tokens to run: a prefill chunk, or one decode token.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in the sequence; tokens before it are already in KV.
    pub start_pos: usize,
    /// How many of `tokens`, from the first, are the sequence's prompt (prefill, also
    /// in a recompute after preemption); the rest are tokens it generated (a decode
    /// token, or the generated tail of a recompute). Backends may compute prompt rows
    /// one way and generated ones another, but never by how many rows a chunk has,
    /// which depends on the other traffic.
    pub prompt_rows: usize,
    /// The sequence's KV blocks in order; covers `start_pos + tokens.len()`.
    pub block_table: &'a [BlockId],
    /// Whether to return logits for the last token: true iff the chunk reaches the
    /// end of the sequence's known tokens (false for non-final prefill chunks, which
    /// saves the output projection).
    pub want_logits: bool,
    /// Whether to return logits for every token of this chunk, not only the last:
    /// a prompt whose tokens' logprobs were asked for (`echo` with `logprobs`).
    /// Off for everyone else, so the output projection runs on one row a sequence.
    pub all_logits: bool,
}

impl SeqStep<'_> {
    /// Position after the last token of this step.
    pub fn end(&self) -> usize {
        self.start_pos + self.tokens.len()
    }

    /// One token appended to a sequence that already has KV: what a decode graph
    /// runs. Everything else (a prompt, a chunk of one, a recompute) is prefill.
    pub fn is_decode(&self) -> bool {
        self.start_pos > 0 && self.tokens.len() == 1
    }

    /// Whether the chunk starts inside the sequence's prompt.
    pub fn starts_in_prompt(&self) -> bool {
        self.prompt_rows > 0
    }
}

/// All work of one engine step, in the scheduler's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch<'a> {
    pub seqs: Vec<SeqStep<'a>>,
}

impl<'a> StepBatch<'a> {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    /// The batch cut down to the rows that want logits ([`PackedStep::logit_rows`], in
    /// that order): a sequence that wants every row whole, one that wants its last row
    /// as that row alone (a prompt row stays one), the others gone. A forward pass runs
    /// its last layer past attention only for these: no other row's output is read.
    pub fn logit_rows_only(&self) -> StepBatch<'a> {
        let last_row = |s: &SeqStep<'a>| {
            let last = s.tokens.len() - 1;
            SeqStep {
                tokens: &s.tokens[last..],
                start_pos: s.start_pos + last,
                prompt_rows: usize::from(s.prompt_rows > last),
                ..*s
            }
        };
        let seqs = self.seqs.iter().filter(|s| !s.tokens.is_empty());
        StepBatch {
            seqs: seqs
                .filter_map(|s| match (s.all_logits, s.want_logits) {
                    (true, _) => Some(*s),
                    (false, true) => Some(last_row(s)),
                    (false, false) => None,
                })
                .collect(),
        }
    }
}

/// A step's token rows in batch order: what a forward pass embeds and positions, and
/// which rows reach the output projection. Device-neutral; a backend copies the
/// vectors to its device as it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedStep {
    pub ids: Vec<u32>,
    pub positions: Vec<usize>,
    /// The last row of every sequence that wants logits, and every row of one that
    /// wants them all, in batch order.
    pub logit_rows: Vec<usize>,
}

impl PackedStep {
    pub fn new(batch: &StepBatch) -> Self {
        let n = batch.num_tokens();
        let (mut ids, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut logit_rows = Vec::new();
        for s in &batch.seqs {
            ids.extend_from_slice(s.tokens);
            positions.extend(s.start_pos..s.end());
            if s.all_logits {
                logit_rows.extend(ids.len() - s.tokens.len()..ids.len());
            } else if s.want_logits && !s.tokens.is_empty() {
                logit_rows.push(ids.len() - 1);
            }
        }
        Self { ids, positions, logit_rows }
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }
}

/// Logits of `vocab_size` floats: one row for every sequence of the batch that set
/// `want_logits` (its last token), every row of one that set `all_logits`, in
/// batch order ([`PackedStep::logit_rows`]).
#[derive(Debug, Clone)]
pub struct Logits {
    pub vocab_size: usize,
    /// `rows[i]` is the row index into `data` of batch entry `i`'s last token, if
    /// it wants logits.
    pub rows: Vec<Option<usize>>,
    /// `all[i]`: the rows of every token of batch entry `i`, if it set `all_logits`.
    pub all: Vec<Option<std::ops::Range<usize>>>,
    pub data: Vec<f32>,
}

impl Logits {
    /// Wraps `data`, the rows of the batch's entries that want logits, in order.
    pub fn for_batch(batch: &StepBatch, vocab_size: usize, data: Vec<f32>) -> Self {
        let mut next = 0;
        let (mut rows, mut all) =
            (Vec::with_capacity(batch.seqs.len()), Vec::with_capacity(batch.seqs.len()));
        for s in &batch.seqs {
            if s.all_logits {
                let span = next..next + s.tokens.len();
                next = span.end;
                rows.push(s.want_logits.then(|| span.end - 1));
                all.push(Some(span));
            } else {
                rows.push(s.want_logits.then_some(next));
                next += usize::from(s.want_logits);
                all.push(None);
            }
        }
        Self { vocab_size, rows, all, data }
    }

    /// Every token's logits row of batch entry `i` (one after another), if it set
    /// `all_logits`.
    pub fn all_rows(&self, i: usize) -> Option<&[f32]> {
        let span = self.all.get(i)?.as_ref()?;
        self.data.get(span.start * self.vocab_size..span.end * self.vocab_size)
    }

    /// The logits row of batch entry `i`, if it asked for one.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let r = (*self.rows.get(i)?)?;
        self.data.get(r * self.vocab_size..(r + 1) * self.vocab_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_batch_order_and_finds_the_rows_that_want_logits() {
        let (a, b, c) = ([5u32, 6, 7], [9u32], [1u32, 2]);
        let batch = StepBatch {
            seqs: vec![
                SeqStep {
                    id: 1,
                    tokens: &a,
                    start_pos: 0,
                    prompt_rows: 3,
                    block_table: &[0],
                    want_logits: false,
                    all_logits: false,
                },
                SeqStep {
                    id: 2,
                    tokens: &b,
                    start_pos: 40,
                    prompt_rows: 0,
                    block_table: &[1, 2, 3],
                    want_logits: true,
                    all_logits: false,
                },
                SeqStep {
                    id: 3,
                    tokens: &c,
                    start_pos: 3,
                    prompt_rows: 2,
                    block_table: &[4],
                    want_logits: true,
                    all_logits: false,
                },
            ],
        };
        let p = PackedStep::new(&batch);
        assert_eq!(p.ids, vec![5, 6, 7, 9, 1, 2]);
        assert_eq!(p.positions, vec![0, 1, 2, 40, 3, 4]);
        assert_eq!(p.logit_rows, vec![3, 5]);
        assert!(!batch.seqs[0].is_decode() && batch.seqs[1].is_decode() && !batch.seqs[2].is_decode());

        let logits = Logits::for_batch(&batch, 2, vec![0.5, 1.5, 2.5, 3.5]);
        assert_eq!(logits.row(0), None);
        assert_eq!(logits.row(1), Some(&[0.5, 1.5][..]));
        assert_eq!(logits.row(2), Some(&[2.5, 3.5][..]));
        assert_eq!(logits.row(3), None);
        assert_eq!(logits.all_rows(1), None);

        // Only the logit rows: the chunk's last prompt row alone, the decode as it is.
        let kept = batch.logit_rows_only();
        assert_eq!(kept.seqs.len(), 2);
        assert_eq!(kept.seqs[0], batch.seqs[1]);
        let last = &kept.seqs[1];
        assert_eq!((last.id, last.tokens, last.start_pos, last.prompt_rows), (3, &[2u32][..], 4, 1));
        assert_eq!(PackedStep::new(&kept).positions, vec![40, 4], "the logit rows' positions");
    }

    #[test]
    fn a_generated_last_row_stays_generated_when_cut_to_the_logit_rows() {
        // A recompute after preemption: two prompt rows, then two generated ones.
        let tokens = [1u32, 2, 3, 4];
        let s = SeqStep {
            id: 7,
            tokens: &tokens,
            start_pos: 30,
            prompt_rows: 2,
            block_table: &[0, 1, 2],
            want_logits: true,
            all_logits: false,
        };
        let kept = StepBatch { seqs: vec![s] }.logit_rows_only();
        assert_eq!(
            (kept.seqs[0].tokens, kept.seqs[0].start_pos, kept.seqs[0].prompt_rows),
            (&[4u32][..], 33, 0)
        );
    }

    #[test]
    fn a_sequence_that_wants_every_row_gets_them_in_place() {
        let (a, b, c) = ([5u32, 6, 7], [9u32], [1u32, 2]);
        let seq = |id, tokens, start_pos, want_logits, all_logits| SeqStep {
            id,
            tokens,
            start_pos,
            prompt_rows: if start_pos == 0 { tokens.len() } else { 0 },
            block_table: &[0, 1, 2, 3],
            want_logits,
            all_logits,
        };
        let batch = StepBatch {
            seqs: vec![
                seq(1, &a[..], 0, false, true),
                seq(2, &b[..], 40, true, false),
                seq(3, &c[..], 3, true, true),
            ],
        };
        let p = PackedStep::new(&batch);
        assert_eq!(p.logit_rows, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(batch.logit_rows_only(), batch, "every row is a logit row");
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let logits = Logits::for_batch(&batch, 2, data);
        // A non-final chunk: every row, but none to sample from.
        assert_eq!(logits.row(0), None);
        assert_eq!(logits.all_rows(0), Some(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0][..]));
        assert_eq!(logits.row(1), Some(&[6.0, 7.0][..]));
        assert_eq!(logits.all_rows(1), None);
        // A final chunk: its last row is also the one to sample from.
        assert_eq!(logits.all_rows(2), Some(&[8.0, 9.0, 10.0, 11.0][..]));
        assert_eq!(logits.row(2), Some(&[10.0, 11.0][..]));
    }
}
