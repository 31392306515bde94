//! What runs in each engine step, in the style of vLLM v1: no prefill and decode
//! phases, just every sequence's `num_computed` catching up with its token count
//! under a per-step token budget. That gives chunked prefill for free: a long
//! prompt is computed a budget-sized chunk per step while running sequences keep
//! getting their decode token first.
//!
//! Pure and synchronous: `add`, `schedule`, `update`, `finish` / `abort`. When KV
//! blocks run out, the most recently admitted running sequence is preempted (its
//! blocks freed, recomputed later from its prompt plus the tokens it generated).

use std::collections::{HashMap, VecDeque};

use thiserror::Error;

use super::block_pool::{hash_block, BlockHash, BlockPool};
use super::request::SeqId;
use crate::backend::{BlockId, SeqStep, StepBatch};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_batch_tokens: usize,
    pub max_running: usize,
    pub max_waiting: usize,
    pub block_size: usize,
    pub max_context: usize,
    pub prefix_caching: bool,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum AddError {
    #[error("too many requests waiting")]
    QueueFull,
    #[error("{0}")]
    TooLong(String),
}

#[derive(Debug)]
struct Seq {
    /// Prompt followed by every generated token.
    tokens: Vec<u32>,
    max_new_tokens: usize,
    prompt_len: usize,
    num_computed: usize,
    blocks: Vec<BlockId>,
    /// Hashes of the leading full blocks already registered with the pool.
    hashes: Vec<BlockHash>,
    cached_tokens: usize,
    /// Tokens scheduled in the current step, applied by `update`.
    in_flight: usize,
}

#[derive(Debug, Clone)]
pub struct ScheduledSeq {
    pub id: SeqId,
    pub tokens: Vec<u32>,
    pub start_pos: usize,
    pub block_table: Vec<BlockId>,
    /// True iff this chunk reaches the end of the known tokens (so its logits
    /// give the next token).
    pub want_logits: bool,
    /// Prompt tokens this sequence took from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Default)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    pub preempted: Vec<SeqId>,
}

impl SchedulerOutput {
    pub fn to_step_batch(&self) -> StepBatch {
        StepBatch {
            seqs: self
                .seqs
                .iter()
                .map(|s| SeqStep {
                    tokens: s.tokens.clone(),
                    start_pos: s.start_pos,
                    block_table: s.block_table.clone(),
                    want_logits: s.want_logits,
                })
                .collect(),
        }
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    /// In admission order: the last one is the first to be preempted.
    running: Vec<SeqId>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, num_blocks: usize) -> Self {
        let pool = BlockPool::new(num_blocks, cfg.block_size, cfg.prefix_caching);
        Self { cfg, pool, seqs: HashMap::new(), waiting: VecDeque::new(), running: Vec::new() }
    }

    pub fn max_context(&self) -> usize {
        self.cfg.max_context
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn kv_usage(&self) -> f64 {
        self.pool.usage_ratio()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, max_new_tokens: usize) -> Result<(), AddError> {
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AddError::QueueFull);
        }
        let total = prompt.len() + max_new_tokens;
        if prompt.is_empty() || total > self.cfg.max_context {
            return Err(AddError::TooLong(format!(
                "{} prompt tokens + {max_new_tokens} new tokens exceed the context of {} tokens",
                prompt.len(),
                self.cfg.max_context
            )));
        }
        let need = total.div_ceil(self.cfg.block_size);
        if need > self.pool.num_blocks() {
            return Err(AddError::TooLong(format!(
                "{total} tokens need {need} KV blocks but the cache has {}",
                self.pool.num_blocks()
            )));
        }
        let prompt_len = prompt.len();
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                max_new_tokens,
                prompt_len,
                num_computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                cached_tokens: 0,
                in_flight: 0,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Makes sure `id` has blocks for its first `upto` tokens.
    fn reserve(&mut self, id: SeqId, upto: usize) -> bool {
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get(&id) else { return false };
        let need = upto.div_ceil(bs).saturating_sub(seq.blocks.len());
        if need == 0 {
            return true;
        }
        match self.pool.allocate(need) {
            Some(b) => {
                if let Some(seq) = self.seqs.get_mut(&id) {
                    seq.blocks.extend(b);
                }
                true
            }
            None => false,
        }
    }

    fn release(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            let blocks = std::mem::take(&mut seq.blocks);
            seq.hashes.clear();
            seq.num_computed = 0;
            seq.in_flight = 0;
            self.pool.free(&blocks);
        }
    }

    fn preempt_newest(&mut self, out: &mut SchedulerOutput) -> Option<SeqId> {
        let victim = self.running.pop()?;
        self.release(victim);
        out.seqs.retain(|s| s.id != victim);
        self.waiting.push_front(victim);
        out.preempted.push(victim);
        Some(victim)
    }

    fn emit(&mut self, id: SeqId, chunk: usize, out: &mut SchedulerOutput) {
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        let start = seq.num_computed;
        seq.in_flight = chunk;
        out.seqs.push(ScheduledSeq {
            id,
            tokens: seq.tokens[start..start + chunk].to_vec(),
            start_pos: start,
            block_table: seq.blocks.clone(),
            want_logits: start + chunk == seq.tokens.len(),
            cached_tokens: seq.cached_tokens,
        });
    }

    /// Prefix-cache lookup for a sequence about to be admitted: every full block
    /// of known tokens except one holding the last token (which must be computed
    /// to produce logits).
    fn take_cached_prefix(&mut self, id: SeqId) {
        if !self.cfg.prefix_caching {
            return;
        }
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get(&id) else { return };
        let full = (seq.tokens.len() - 1) / bs;
        let mut hashes = Vec::with_capacity(full);
        let mut parent = None;
        for b in 0..full {
            let h = hash_block(parent, &seq.tokens[b * bs..(b + 1) * bs]);
            hashes.push(h);
            parent = Some(h);
        }
        let blocks = self.pool.lookup(&hashes);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_computed = blocks.len() * bs;
            seq.cached_tokens = seq.cached_tokens.max(seq.num_computed.min(seq.prompt_len));
            seq.hashes = hashes[..blocks.len()].to_vec();
            seq.blocks = blocks;
        }
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_batch_tokens;

        // Running sequences first, oldest first: decode tokens and unfinished prefills.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                i += 1;
                continue;
            };
            let chunk = (seq.tokens.len() - seq.num_computed).min(budget);
            if chunk == 0 {
                i += 1;
                continue;
            }
            let upto = seq.num_computed + chunk;
            let mut fits = self.reserve(id, upto);
            while !fits {
                match self.preempt_newest(&mut out) {
                    Some(v) if v == id => break,
                    Some(_) => fits = self.reserve(id, upto),
                    None => break,
                }
            }
            if !fits {
                break;
            }
            self.emit(id, chunk, &mut out);
            budget -= chunk;
            i += 1;
        }

        // Then waiting sequences in arrival order; stop at the first that does not
        // fit, so nobody is overtaken.
        while budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(&id) = self.waiting.front() else { break };
            if self.seqs.get(&id).is_some_and(|s| s.num_computed == 0 && s.blocks.is_empty()) {
                self.take_cached_prefix(id);
            }
            let Some(seq) = self.seqs.get(&id) else {
                self.waiting.pop_front();
                continue;
            };
            let chunk = (seq.tokens.len() - seq.num_computed).min(budget);
            let upto = seq.num_computed + chunk;
            if !self.reserve(id, upto) {
                self.release(id);
                break;
            }
            self.waiting.pop_front();
            self.running.push(id);
            self.emit(id, chunk, &mut out);
            budget -= chunk;
        }
        out
    }

    /// Applies a step's result to one sequence: its scheduled tokens are now in
    /// KV, and `sampled` (if any) is appended as its next input.
    pub fn update(&mut self, id: SeqId, sampled: Option<u32>) {
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        seq.num_computed += std::mem::take(&mut seq.in_flight);
        if let Some(t) = sampled {
            seq.tokens.push(t);
        }
        if self.cfg.prefix_caching {
            let full = seq.num_computed / bs;
            while seq.hashes.len() < full && seq.hashes.len() < seq.blocks.len() {
                let b = seq.hashes.len();
                let h = hash_block(seq.hashes.last().copied(), &seq.tokens[b * bs..(b + 1) * bs]);
                self.pool.register_full(seq.blocks[b], h);
                seq.hashes.push(h);
            }
        }
    }

    fn remove(&mut self, id: SeqId) {
        self.release(id);
        self.seqs.remove(&id);
        self.running.retain(|&x| x != id);
        self.waiting.retain(|&x| x != id);
    }

    pub fn finish(&mut self, id: SeqId) {
        self.remove(id);
    }

    pub fn abort(&mut self, id: SeqId) {
        self.remove(id);
    }

    /// How many new tokens a sequence may still produce.
    pub fn remaining(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| (s.prompt_len + s.max_new_tokens).saturating_sub(s.tokens.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(blocks: usize, block_size: usize, budget: usize) -> Scheduler {
        scheduler_with(blocks, block_size, budget, true)
    }

    fn scheduler_with(blocks: usize, block_size: usize, budget: usize, prefix_caching: bool) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_batch_tokens: budget,
                max_running: 64,
                max_waiting: 64,
                block_size,
                max_context: 4096,
                prefix_caching,
            },
            blocks,
        )
    }

    fn prompt(len: usize, salt: u32) -> Vec<u32> {
        (0..len as u32).map(|i| i * 7 + salt).collect()
    }

    /// Runs one step, sampling token 1 for every sequence that gets logits.
    fn step(s: &mut Scheduler) -> SchedulerOutput {
        let out = s.schedule();
        for x in &out.seqs {
            s.update(x.id, x.want_logits.then_some(1));
        }
        out
    }

    #[test]
    fn budget_is_respected_and_long_prompts_are_chunked_while_decode_continues() {
        let mut s = scheduler(64, 16, 32);
        s.add(1, prompt(10, 0), 50).expect("add");
        let first = step(&mut s);
        assert_eq!(first.seqs.len(), 1);
        assert!(first.seqs[0].want_logits);
        s.add(2, prompt(100, 1), 5).expect("add");
        let mut chunks = Vec::new();
        for _ in 0..4 {
            let out = step(&mut s);
            let total: usize = out.seqs.iter().map(|x| x.tokens.len()).sum();
            assert!(total <= 32, "budget exceeded: {total}");
            let decode = out.seqs.iter().find(|x| x.id == 1).expect("seq 1 decodes every step");
            assert_eq!(decode.tokens.len(), 1);
            let pre = out.seqs.iter().find(|x| x.id == 2).expect("seq 2 prefills");
            chunks.push((pre.start_pos, pre.tokens.len(), pre.want_logits));
        }
        assert_eq!(chunks, vec![(0, 31, false), (31, 31, false), (62, 31, false), (93, 7, true)]);
    }

    #[test]
    fn fifo_admission_and_max_running() {
        let mut s = scheduler(64, 16, 1000);
        s.cfg.max_running = 2;
        for id in 0..4 {
            s.add(id, prompt(5, id as u32), 10).expect("add");
        }
        let out = step(&mut s);
        let ids: Vec<SeqId> = out.seqs.iter().map(|x| x.id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(s.num_waiting(), 2);
        s.finish(0);
        let out = step(&mut s);
        let ids: Vec<SeqId> = out.seqs.iter().map(|x| x.id).collect();
        assert_eq!(ids, vec![1, 2], "the earliest waiting request gets the free slot");
    }

    #[test]
    fn newest_sequence_is_preempted_when_blocks_run_out_and_recomputed_later() {
        // 4 blocks of 4 tokens: two sequences of 7 prompt tokens take 2 blocks each.
        let mut s = scheduler_with(4, 4, 100, false);
        s.add(1, prompt(7, 0), 8).expect("add");
        s.add(2, prompt(7, 1), 8).expect("add");
        step(&mut s); // both prefilled, each has 8 tokens known, 7 computed
        let out = step(&mut s); // position 7 still fits in block 2 of each
        assert!(out.preempted.is_empty());
        let out = step(&mut s); // position 8 needs a third block each: pool is full
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(out.seqs.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.num_waiting(), 1);
        s.finish(1);
        let out = step(&mut s);
        let re = out.seqs.iter().find(|x| x.id == 2).expect("re-admitted");
        assert_eq!(re.start_pos, 0, "recomputed from the start");
        assert_eq!(re.tokens.len(), 9, "prompt plus the two generated tokens");
        assert!(re.want_logits);
    }

    #[test]
    fn queue_full_and_too_long_are_refused() {
        let mut s = scheduler(4, 4, 100);
        s.cfg.max_waiting = 1;
        assert!(matches!(s.add(1, prompt(20, 0), 1), Err(AddError::TooLong(_))), "needs 6 blocks of 4");
        s.add(2, prompt(3, 0), 1).expect("add");
        assert_eq!(s.add(3, prompt(3, 0), 1), Err(AddError::QueueFull));
        s.cfg.max_context = 10;
        s.cfg.max_waiting = 10;
        assert!(matches!(s.add(4, prompt(8, 0), 5), Err(AddError::TooLong(_))));
    }

    #[test]
    fn abort_and_finish_free_all_blocks_from_any_state() {
        let mut s = scheduler(16, 4, 8);
        s.add(1, prompt(30, 0), 4).expect("add");
        s.add(2, prompt(3, 1), 4).expect("add");
        step(&mut s); // seq 1 partially prefilled, seq 2 still waiting
        assert!(s.kv_usage() > 0.0);
        s.abort(2);
        s.abort(1);
        assert_eq!(s.kv_usage(), 0.0);
        assert!(!s.has_work());
    }

    #[test]
    fn shared_prompt_prefix_reuses_cached_blocks() {
        let mut s = scheduler(32, 16, 1000);
        let p = prompt(40, 3);
        s.add(1, p.clone(), 4).expect("add");
        step(&mut s);
        s.add(2, p.clone(), 4).expect("add");
        let out = step(&mut s);
        let second = out.seqs.iter().find(|x| x.id == 2).expect("seq 2");
        assert_eq!(second.cached_tokens, 32);
        assert_eq!(second.start_pos, 32);
        let first_blocks = &out.seqs.iter().find(|x| x.id == 1).expect("seq 1").block_table;
        assert_eq!(&second.block_table[..2], &first_blocks[..2]);
        assert_eq!(s.pool.ref_count(first_blocks[0]), 2);
        s.finish(1);
        s.finish(2);
        assert_eq!(s.kv_usage(), 0.0, "cached blocks are evictable, not in use");
        s.add(3, p, 4).expect("add");
        let out = step(&mut s);
        assert_eq!(out.seqs[0].cached_tokens, 32, "reused after both finished");
    }
}
