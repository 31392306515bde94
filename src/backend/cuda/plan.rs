//! The host side of one step on a tensor device: the rows in the order the device
//! computes them, each row's KV slot, and the attention groups with their key
//! slots and masks. Everything here is plain vectors, so it is tested without a
//! device; `llama` uploads them once per step and every layer reuses them.
//!
//! Row order: every one-token sequence first (one batched attention group, the
//! decodes), then each longer chunk on its own (one group per prefill, so a long
//! chunk never pads the decodes' attention to its length).

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
    /// The attention groups, covering the rows in order.
    pub groups: Vec<AttentionGroup>,
    /// For each batch entry that wants logits, in batch order, its last row.
    pub logit_rows: Vec<u32>,
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
        let decodes: Vec<usize> =
            (0..batch.seqs.len()).filter(|&i| batch.seqs[i].tokens.len() == 1).collect();
        let prefills: Vec<usize> =
            (0..batch.seqs.len()).filter(|&i| batch.seqs[i].tokens.len() > 1).collect();
        let n = batch.num_tokens();
        let mut plan = StepPlan {
            ids: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            slots: Vec::with_capacity(n),
            groups: Vec::with_capacity(prefills.len() + 1),
            logit_rows: Vec::new(),
        };
        let mut last_row = vec![0u32; batch.seqs.len()];
        if !decodes.is_empty() {
            let seqs: Vec<&SeqStep> = decodes.iter().map(|&i| &batch.seqs[i]).collect();
            plan.push_group(&seqs, 1, block_size);
            for (k, &i) in decodes.iter().enumerate() {
                last_row[i] = k as u32;
            }
        }
        for &i in &prefills {
            let s = &batch.seqs[i];
            plan.push_group(&[s], s.tokens.len(), block_size);
            last_row[i] = plan.ids.len() as u32 - 1;
        }
        plan.logit_rows =
            (0..batch.seqs.len()).filter(|&i| batch.seqs[i].want_logits).map(|i| last_row[i]).collect();
        plan
    }

    fn push_group(&mut self, seqs: &[&SeqStep], query_len: usize, block_size: usize) {
        let first_row = self.ids.len();
        let kv_len = seqs.iter().map(|s| s.end()).max().unwrap_or(0);
        let mut kv_slots = Vec::with_capacity(seqs.len() * kv_len);
        let mut mask = Vec::with_capacity(seqs.len() * query_len * kv_len);
        for s in seqs {
            self.ids.extend_from_slice(s.tokens);
            for pos in s.start_pos..s.end() {
                self.positions.push(pos as u32);
                self.slots.push(slot(s, pos, block_size));
            }
            kv_slots.extend((0..kv_len).map(|pos| if pos < s.end() { slot(s, pos, block_size) } else { 0 }));
            for q in s.start_pos..s.end() {
                mask.extend((0..kv_len).map(|key| if key <= q { 0.0 } else { MASKED }));
            }
        }
        self.groups.push(AttentionGroup { first_row, seqs: seqs.len(), query_len, kv_len, kv_slots, mask });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_come_first_in_one_group_and_each_prefill_alone() {
        let (a, b, c) = ([5u32, 6, 7], [9u32], [4u32]);
        let batch = StepBatch {
            seqs: vec![
                // A prefill chunk at positions 2..5 over blocks [3, 1] of 4 slots.
                SeqStep { id: 1, tokens: &a, start_pos: 2, block_table: &[3, 1], want_logits: true },
                SeqStep { id: 2, tokens: &b, start_pos: 5, block_table: &[0, 2], want_logits: true },
                SeqStep { id: 3, tokens: &c, start_pos: 1, block_table: &[7], want_logits: false },
            ],
        };
        let plan = StepPlan::new(&batch, 4);
        assert_eq!(plan.ids, vec![9, 4, 5, 6, 7]);
        assert_eq!(plan.positions, vec![5, 1, 2, 3, 4]);
        // Position 5 of [0, 2] is block 2 offset 1; position 4 of [3, 1] is block 1 offset 0.
        assert_eq!(plan.slots, vec![9, 29, 14, 15, 4]);
        // Entry 0's last row is row 4; entry 1 is row 0; entry 2 wants none.
        assert_eq!(plan.logit_rows, vec![4, 0]);

        let decode = &plan.groups[0];
        assert_eq!((decode.first_row, decode.seqs, decode.query_len, decode.kv_len), (0, 2, 1, 6));
        assert_eq!(decode.kv_slots, vec![0, 1, 2, 3, 8, 9, 28, 29, 0, 0, 0, 0]);
        let m = MASKED;
        assert_eq!(decode.mask, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, m, m, m, m]);

        let prefill = &plan.groups[1];
        assert_eq!((prefill.first_row, prefill.seqs, prefill.query_len, prefill.kv_len), (2, 1, 3, 5));
        assert_eq!(prefill.kv_slots, vec![12, 13, 14, 15, 4]);
        #[rustfmt::skip]
        assert_eq!(prefill.mask, vec![
            0.0, 0.0, 0.0, m, m,
            0.0, 0.0, 0.0, 0.0, m,
            0.0, 0.0, 0.0, 0.0, 0.0,
        ]);
        assert_eq!(plan.groups.iter().map(AttentionGroup::rows).sum::<usize>(), plan.ids.len());
    }
}
