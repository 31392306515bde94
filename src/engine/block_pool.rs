//! KV block accounting for one backend pool. Operations: `allocate` (all or
//! nothing), `free`, and for prefix caching `register_full` / `lookup`.
//!
//! Invariants: every block is in exactly one state — in use (ref count > 0),
//! cached-evictable (count 0, content hash kept, findable by `lookup`), or free;
//! ref counts never underflow (freeing a free block is ignored and logged).

use std::collections::{HashMap, VecDeque};

use crate::backend::BlockId;

pub type BlockHash = u64;

/// Chain hash of a full block's tokens with its parent block's hash (FNV-1a), so
/// equal hashes mean equal prefixes, deterministically across runs.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&parent.unwrap_or(0).to_le_bytes());
    for t in tokens {
        eat(&t.to_le_bytes());
    }
    h
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    ref_counts: Vec<u32>,
    hash_of: Vec<Option<BlockHash>>,
    free: Vec<BlockId>,
    /// Cached blocks nobody uses, least recently freed first.
    evictable: VecDeque<BlockId>,
    cached: HashMap<BlockHash, BlockId>,
    enabled: bool,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self {
            block_size,
            ref_counts: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: VecDeque::new(),
            cached: HashMap::new(),
            enabled: prefix_caching,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that can be handed out now (plain free plus evictable cached ones).
    pub fn num_free(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    pub fn usage_ratio(&self) -> f64 {
        let n = self.num_blocks();
        if n == 0 {
            return 0.0;
        }
        (n - self.num_free()) as f64 / n as f64
    }

    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = match self.free.pop() {
                Some(b) => b,
                None => {
                    let b = self.evictable.pop_front()?;
                    if let Some(h) = self.hash_of[b as usize].take() {
                        self.cached.remove(&h);
                    }
                    b
                }
            };
            self.ref_counts[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    pub fn free(&mut self, blocks: &[BlockId]) {
        // Free in reverse so a sequence's tail blocks are evicted before its head.
        for &b in blocks.iter().rev() {
            let i = b as usize;
            match self.ref_counts.get(i) {
                Some(0) | None => {
                    tracing::error!(block = b, "freeing a block that is not in use");
                    continue;
                }
                _ => {}
            }
            self.ref_counts[i] -= 1;
            if self.ref_counts[i] == 0 {
                if self.hash_of[i].is_some() {
                    self.evictable.push_back(b);
                } else {
                    self.free.push(b);
                }
            }
        }
    }

    /// Records that `block` is full and holds the content `hash` describes.
    pub fn register_full(&mut self, block: BlockId, hash: BlockHash) {
        if !self.enabled || self.hash_of[block as usize].is_some() {
            return;
        }
        if self.cached.contains_key(&hash) {
            return; // an identical block is already cached; keep that one
        }
        self.hash_of[block as usize] = Some(hash);
        self.cached.insert(hash, block);
    }

    /// The longest run of cached blocks matching `hashes` from the start; takes a
    /// reference on each.
    pub fn lookup(&mut self, hashes: &[BlockHash]) -> Vec<BlockId> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        for h in hashes {
            let Some(&b) = self.cached.get(h) else { break };
            let i = b as usize;
            if self.ref_counts[i] == 0 {
                if let Some(pos) = self.evictable.iter().position(|&x| x == b) {
                    self.evictable.remove(pos);
                }
            }
            self.ref_counts[i] += 1;
            out.push(b);
        }
        out
    }

    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.ref_counts.get(b as usize).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut seen = vec![0u8; self.num_blocks()];
        for &b in &self.free {
            seen[b as usize] += 1;
            assert_eq!(self.ref_counts[b as usize], 0);
            assert!(self.hash_of[b as usize].is_none());
        }
        for &b in &self.evictable {
            seen[b as usize] += 1;
            assert_eq!(self.ref_counts[b as usize], 0);
            assert!(self.hash_of[b as usize].is_some());
        }
        for (i, &c) in self.ref_counts.iter().enumerate() {
            if c > 0 {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "every block in exactly one state");
        for (h, &b) in &self.cached {
            assert_eq!(self.hash_of[b as usize], Some(*h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_is_all_or_nothing_and_free_returns_blocks() {
        let mut p = BlockPool::new(4, 16, false);
        let a = p.allocate(3).expect("3 of 4");
        assert!(p.allocate(2).is_none());
        assert_eq!(p.num_free(), 1);
        p.free(&a);
        assert_eq!(p.num_free(), 4);
        assert_eq!(p.usage_ratio(), 0.0);
        p.free(&a); // double free is ignored, not an underflow
        p.check_invariants();
    }

    #[test]
    fn cached_blocks_are_shared_then_evicted_lru() {
        let mut p = BlockPool::new(3, 2, true);
        let a = p.allocate(2).expect("alloc");
        let h0 = hash_block(None, &[1, 2]);
        let h1 = hash_block(Some(h0), &[3, 4]);
        p.register_full(a[0], h0);
        p.register_full(a[1], h1);
        assert_eq!(p.lookup(&[h0, h1, 99]), a);
        assert_eq!(p.ref_count(a[0]), 2);
        p.free(&a);
        p.free(&a);
        assert_eq!(p.num_free(), 3);
        p.check_invariants();
        // Still findable while nobody needs the space.
        assert_eq!(p.lookup(&[h0]), vec![a[0]]);
        p.free(&[a[0]]);
        // Needing all three blocks evicts the cached ones.
        let all = p.allocate(3).expect("alloc all");
        assert_eq!(all.len(), 3);
        assert!(p.lookup(&[h0]).is_empty());
        p.check_invariants();
    }

    #[test]
    fn invariants_hold_under_random_operations() {
        let mut p = BlockPool::new(16, 4, true);
        let mut held: Vec<Vec<BlockId>> = Vec::new();
        let mut x = 12345u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..2000 {
            match rnd(4) {
                0 => {
                    if let Some(b) = p.allocate(1 + rnd(4) as usize) {
                        held.push(b);
                    }
                }
                1 if !held.is_empty() => {
                    let i = rnd(held.len() as u64) as usize;
                    let b = held.swap_remove(i);
                    p.free(&b);
                }
                2 if !held.is_empty() => {
                    let i = rnd(held.len() as u64) as usize;
                    let b = held[i][0];
                    p.register_full(b, rnd(8) + step * 0);
                }
                _ => {
                    let got = p.lookup(&[rnd(8), rnd(8)]);
                    if !got.is_empty() {
                        held.push(got);
                    }
                }
            }
            p.check_invariants();
        }
    }
}
