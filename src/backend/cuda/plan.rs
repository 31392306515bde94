//! The host side of one step on a tensor device: the rows in the order the device
//! computes them, each row's KV slot, and the attention groups with their key
//! slots and masks. Everything here is plain vectors, so it is tested without a
//! device; `llama` uploads them once per step and every layer reuses them.
//!
//! Row order: every one-token sequence first (the decodes, whose attention reads
//! the pool through their block tables in one kernel), then each longer chunk on
//! its own (one attention group per prefill, with its keys gathered by slot, so
//! a long chunk never pads the decodes' work to its length).

use crate::backend::{SeqStep, StepBatch};

/// Added to the scores of keys a query must not see. Finite, so a row is never all
/// `-inf` (which softmax turns into NaN); `exp` of it is exactly zero in f32.
pub const MASKED: f32 = -1.0e30;

#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// Token ids in device row order.
    pub ids: Vec<u32>,
    /// Each row's position in its sequence.
    pub positions: Vec<u32>,
    /// Each row's KV slot (`block * block_size + offset`), where its K/V are written.
    pub slots: Vec<u32>,
    /// The one-token sequences, rows `0..decode.seqs`.
    pub decode: Option<DecodeGroup>,
    /// The prefill chunks, one group each, covering the remaining rows in order.
    pub prefills: Vec<AttentionGroup>,
    /// For each batch entry that wants logits, in batch order, its last row.
    pub logit_rows: Vec<u32>,
}

/// The decode rows' block tables (`[seqs, max_blocks]`, padded with block 0) and
/// how many positions each attends to (its own included).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeGroup {
    pub seqs: usize,
    pub max_blocks: usize,
    pub tables: Vec<u32>,
    pub lens: Vec<u32>,
}

/// Sequences whose attention runs as one batched computation: `seqs` sequences of
/// `query_len` rows each (contiguous from `first_row`), each attending to its first
/// `kv_len` positions' keys, padded to the longest.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGroup {
    pub first_row: usize,
    pub seqs: usize,
    pub query_len: usize,
    pub kv_len: usize,
    /// `seqs * kv_len` KV slots, sequence-major; padding repeats slot 0, masked.
    pub kv_slots: Vec<u32>,
    /// `seqs * query_len * kv_len` additive mask: 0 where the key is visible (at or
    /// before the query's position), [`MASKED`] elsewhere.
    pub mask: Vec<f32>,
}

impl AttentionGroup {
    pub fn rows(&self) -> usize {
        self.seqs * self.query_len
    }
}

fn slot(seq: &SeqStep, pos: usize, block_size: usize) -> u32 {
    seq.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32
}

impl StepPlan {
    /// Plans a validated batch (block tables cover every position).
    pub fn new(batch: &StepBatch, block_size: usize) -> Self {
        let is_decode = |s: &SeqStep| s.tokens.len() == 1;
        let n = batch.num_tokens();
        let mut plan = StepPlan {
            ids: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            slots: Vec::with_capacity(n),
            decode: None,
            prefills: Vec::new(),
            logit_rows: Vec::new(),
        };
        let mut last_row = vec![0u32; batch.seqs.len()];
        let mut first_row = vec![0u32; batch.seqs.len()];
        let decodes: Vec<(usize, &SeqStep)> =
            batch.seqs.iter().enumerate().filter(|(_, s)| is_decode(s)).collect();
        if !decodes.is_empty() {
            let max_blocks = decodes.iter().map(|(_, s)| s.end().div_ceil(block_size)).max().unwrap_or(0);
            let mut group =
                DecodeGroup { seqs: decodes.len(), max_blocks, tables: Vec::new(), lens: Vec::new() };
            for (row, &(i, s)) in decodes.iter().enumerate() {
                let used = s.end().div_ceil(block_size);
                group.tables.extend_from_slice(&s.block_table[..used]);
                group.tables.extend(std::iter::repeat_n(0, max_blocks - used));
                group.lens.push(s.end() as u32);
                plan.ids.push(s.tokens[0]);
                plan.positions.push(s.start_pos as u32);
                plan.slots.push(slot(s, s.start_pos, block_size));
                last_row[i] = row as u32;
                first_row[i] = row as u32;
            }
            plan.decode = Some(group);
        }
        for (i, s) in batch.seqs.iter().enumerate().filter(|(_, s)| !is_decode(s)) {
            first_row[i] = plan.ids.len() as u32;
            plan.push_group(s, block_size);
            last_row[i] = plan.ids.len() as u32 - 1;
        }
        // A chunk's rows are contiguous in device order, so one that wants every
        // row's logits gets them in its own order, as `Logits::for_batch` expects.
        for (i, s) in batch.seqs.iter().enumerate() {
            if s.all_logits {
                plan.logit_rows.extend(first_row[i]..=last_row[i]);
            } else if s.want_logits {
                plan.logit_rows.push(last_row[i]);
            }
        }
        plan
    }

    fn push_group(&mut self, s: &SeqStep, block_size: usize) {
        let first_row = self.ids.len();
        let kv_len = s.end();
        let query_len = s.tokens.len();
        self.ids.extend_from_slice(s.tokens);
        for pos in s.start_pos..s.end() {
            self.positions.push(pos as u32);
            self.slots.push(slot(s, pos, block_size));
        }
        let kv_slots = (0..kv_len).map(|pos| slot(s, pos, block_size)).collect();
        let mut mask = Vec::with_capacity(query_len * kv_len);
        for q in s.start_pos..s.end() {
            mask.extend((0..kv_len).map(|key| if key <= q { 0.0 } else { MASKED }));
        }
        self.prefills.push(AttentionGroup { first_row, seqs: 1, query_len, kv_len, kv_slots, mask });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_that_wants_every_row_gets_its_rows_in_its_own_order() {
        let (a, b, c) = ([5u32, 6, 7], [9u32], [1u32, 2]);
        let seq = |id, tokens, start_pos, want_logits, all_logits| SeqStep {
            id,
            tokens,
            start_pos,
            prompt_rows: if start_pos == 0 { tokens.len() } else { 0 },
            block_table: &[0, 1],
            want_logits,
            all_logits,
        };
        let batch = StepBatch {
            seqs: vec![
                seq(1, &a[..], 0, true, true),
                seq(2, &b[..], 5, true, false),
                seq(3, &c[..], 0, false, true),
            ],
        };
        let plan = StepPlan::new(&batch, 4);
        // Device order: the decode (row 0), then chunk 1 (rows 1..4), then chunk 3 (4..6);
        // logits come back in batch order, as `Logits::for_batch` reads them.
        assert_eq!(plan.ids, vec![9, 5, 6, 7, 1, 2]);
        assert_eq!(plan.logit_rows, vec![1, 2, 3, 0, 4, 5]);
    }

    #[test]
    fn decodes_come_first_in_one_group_and_each_prefill_alone() {
        let (a, b, c) = ([5u32, 6, 7], [9u32], [4u32]);
        let batch = StepBatch {
            seqs: vec![
                // A prefill chunk at positions 2..5 over blocks [3, 1] of 4 slots.
                SeqStep {
                    id: 1,
                    tokens: &a,
                    start_pos: 2,
                    prompt_rows: 3,
                    block_table: &[3, 1],
                    want_logits: true,
                    all_logits: false,
                },
                SeqStep {
                    id: 2,
                    tokens: &b,
                    start_pos: 5,
                    prompt_rows: 0,
                    block_table: &[0, 2],
                    want_logits: true,
                    all_logits: false,
                },
                SeqStep {
                    id: 3,
                    tokens: &c,
                    start_pos: 1,
                    prompt_rows: 0,
                    block_table: &[7],
                    want_logits: false,
                    all_logits: false,
                },
            ],
        };
        let plan = StepPlan::new(&batch, 4);
        assert_eq!(plan.ids, vec![9, 4, 5, 6, 7]);
        assert_eq!(plan.positions, vec![5, 1, 2, 3, 4]);
        // Position 5 of [0, 2] is block 2 offset 1; position 4 of [3, 1] is block 1 offset 0.
        assert_eq!(plan.slots, vec![9, 29, 14, 15, 4]);
        // Entry 0's last row is row 4; entry 1 is row 0; entry 2 wants none.
        assert_eq!(plan.logit_rows, vec![4, 0]);

        let decode = plan.decode.as_ref().expect("decode group");
        assert_eq!((decode.seqs, decode.max_blocks), (2, 2));
        // Entry 1 reaches position 6 over blocks [0, 2]; entry 2 position 2 in block 7.
        assert_eq!(decode.tables, vec![0, 2, 7, 0]);
        assert_eq!(decode.lens, vec![6, 2]);

        let m = MASKED;
        let prefill = &plan.prefills[0];
        assert_eq!((prefill.first_row, prefill.seqs, prefill.query_len, prefill.kv_len), (2, 1, 3, 5));
        assert_eq!(prefill.kv_slots, vec![12, 13, 14, 15, 4]);
        #[rustfmt::skip]
        assert_eq!(prefill.mask, vec![
            0.0, 0.0, 0.0, m, m,
            0.0, 0.0, 0.0, 0.0, m,
            0.0, 0.0, 0.0, 0.0, 0.0,
        ]);
        assert_eq!(plan.prefills.len(), 1);
        assert_eq!(decode.seqs + prefill.rows(), plan.ids.len());
    }
}
