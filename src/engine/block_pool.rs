//! KV block accounting for one backend pool, with the bookkeeping prefix caching
//! needs. The pool hands out block ids; the backend owns the memory behind them.
//!
//! Operations:
//! - [`BlockPool::allocate`]: `n` fresh blocks, all or nothing. Plain free blocks go
//!   first, the most recently freed before those never used; then the least recently freed cached block is evicted (its hash dropped).
//! - [`BlockPool::free`]: drop one reference per listed block. A block whose count
//!   reaches 0 becomes evictable if it holds a registered hash (still findable by
//!   [`BlockPool::lookup`] until reused), plain free otherwise.
//! - [`BlockPool::register_full`]: a sequence declares a block full, with its KV
//!   computed, under a content hash from [`hash_block`].
//! - [`BlockPool::lookup`]: the longest run of cached blocks matching a chain of
//!   hashes, taking a reference on each (reviving evictable ones).
//!
//! Invariants (checked after every operation by the tests):
//! - every block is in exactly one state: in use (ref count > 0), cached-evictable
//!   (count 0, hash set, in the LRU list) or free (count 0, no hash, in the free list);
//! - a hash maps to at most one block and a block holds at most one hash; the map and
//!   the blocks' own hashes agree;
//! - ref counts never underflow: freeing a block that is not in use is reported as
//!   [`BlockPoolError::NotInUse`] and changes nothing for that block.
//!
//! With prefix caching disabled (the default) `register_full` and `lookup` do
//! nothing, so no block ever holds a hash and the pool is a plain free list.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::backend::BlockId;

/// Content hash of a full block, chained with its parent block's hash so equal
/// hashes mean equal whole prefixes, not just equal blocks.
pub type BlockHash = u64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockPoolError {
    #[error("block {0} is not in use; freeing it again would corrupt the pool")]
    NotInUse(BlockId),
    #[error("block {block} is outside the pool of {num_blocks}")]
    OutOfRange { block: BlockId, num_blocks: usize },
}

/// Hash of a full block's tokens chained with its parent's hash.
///
/// SHA-256 (first 8 bytes) rather than a fast non-cryptographic hash: a collision
/// silently serves one prompt another prompt's KV, and prompts come from clients.
/// Deterministic across runs and platforms (explicit little-endian encoding).
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    match parent {
        // The tag byte keeps "no parent" distinct from a parent whose hash is 0.
        None => h.update([0u8]),
        Some(p) => {
            h.update([1u8]);
            h.update(p.to_le_bytes());
        }
    }
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    ref_count: u32,
    hash: Option<BlockHash>,
    /// Position in `evictable` while the block is cached-evictable.
    lru_stamp: Option<u64>,
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    prefix_caching: bool,
    blocks: Vec<BlockMeta>,
    free: VecDeque<BlockId>,
    /// Cached blocks with no users, oldest free first; keyed by a monotonically
    /// increasing stamp so reviving a block out of the middle is cheap.
    evictable: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool with prefix caching off; see [`BlockPool::with_prefix_caching`].
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Block ids are u32 on the wire; a larger pool cannot be addressed.
        let num_blocks = num_blocks.min(BlockId::MAX as usize);
        Self {
            block_size,
            prefix_caching: false,
            blocks: vec![BlockMeta::default(); num_blocks],
            free: (0..num_blocks as BlockId).collect(),
            evictable: BTreeMap::new(),
            next_stamp: 0,
            cached: HashMap::new(),
        }
    }

    pub fn with_prefix_caching(mut self, enabled: bool) -> Self {
        self.prefix_caching = enabled;
        self
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks an allocation can get: plain free plus cached-evictable.
    pub fn num_free(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    pub fn num_evictable(&self) -> usize {
        self.evictable.len()
    }

    /// Fraction of blocks in use (evictable blocks count as free).
    pub fn usage_ratio(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        (self.num_blocks() - self.num_free()) as f64 / self.num_blocks() as f64
    }

    pub fn ref_count(&self, block: BlockId) -> Option<u32> {
        self.blocks.get(block as usize).map(|m| m.ref_count)
    }

    /// The block cached under `hash`, in use or evictable.
    pub fn cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// `n` blocks with a ref count of 1 each, or `None` (and no change) if fewer
    /// than `n` can be had.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = match self.free.pop_front() {
                Some(id) => id,
                None => self.evict_oldest()?,
            };
            self.blocks[id as usize].ref_count = 1;
            out.push(id);
        }
        Some(out)
    }

    fn evict_oldest(&mut self) -> Option<BlockId> {
        let (_, id) = self.evictable.pop_first()?;
        let meta = &mut self.blocks[id as usize];
        meta.lru_stamp = None;
        if let Some(h) = meta.hash.take() {
            self.cached.remove(&h);
        }
        Some(id)
    }

    /// Drops one reference per entry (a block listed twice loses two). Callers
    /// should list a sequence's blocks tail first, so that its last blocks, the
    /// least likely to be shared, are evicted first.
    ///
    /// Every valid entry is applied even if another is invalid; the first invalid
    /// one is returned as the error.
    pub fn free(&mut self, blocks: &[BlockId]) -> Result<(), BlockPoolError> {
        let mut first_err = None;
        for &id in blocks {
            if let Err(e) = self.free_one(id) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn free_one(&mut self, id: BlockId) -> Result<(), BlockPoolError> {
        let num_blocks = self.blocks.len();
        let meta =
            self.blocks.get_mut(id as usize).ok_or(BlockPoolError::OutOfRange { block: id, num_blocks })?;
        if meta.ref_count == 0 {
            return Err(BlockPoolError::NotInUse(id));
        }
        meta.ref_count -= 1;
        if meta.ref_count > 0 {
            return Ok(());
        }
        if meta.hash.is_some() {
            let stamp = self.next_stamp;
            self.next_stamp += 1;
            meta.lru_stamp = Some(stamp);
            self.evictable.insert(stamp, id);
        } else {
            // Front: the next allocation reuses it, so a backend whose memory is
            // backed on first touch keeps touching the pages it already has.
            self.free.push_front(id);
        }
        Ok(())
    }

    /// Records that `block` is full and its KV computed, holding the content
    /// `hash`. Returns whether the block is now cached under `hash`.
    ///
    /// Does nothing (false) with prefix caching off, for a block not in use, or
    /// when another block already holds `hash` (two sequences computed the same
    /// prefix at once): block tables stay append-only, so the duplicate simply
    /// stays uncached and returns to the plain free list when released.
    pub fn register_full(&mut self, block: BlockId, hash: BlockHash) -> bool {
        if !self.prefix_caching {
            return false;
        }
        let Some(meta) = self.blocks.get_mut(block as usize) else {
            return false;
        };
        if meta.ref_count == 0 {
            return false;
        }
        if let Some(existing) = meta.hash {
            return existing == hash;
        }
        if self.cached.contains_key(&hash) {
            return false;
        }
        meta.hash = Some(hash);
        self.cached.insert(hash, block);
        true
    }

    /// The cached blocks of the longest prefix of `hashes` (a sequence's chain of
    /// full-block hashes), each with a reference taken for the caller.
    pub fn lookup(&mut self, hashes: &[BlockHash]) -> Vec<BlockId> {
        let mut out = Vec::new();
        if !self.prefix_caching {
            return out;
        }
        for h in hashes {
            let Some(&id) = self.cached.get(h) else { break };
            let meta = &mut self.blocks[id as usize];
            if let Some(stamp) = meta.lru_stamp.take() {
                self.evictable.remove(&stamp);
            }
            meta.ref_count += 1;
            out.push(id);
        }
        out
    }

    /// Checks every invariant of the module header; the error names the first
    /// broken one. Used by tests here and in the scheduler.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let n = self.blocks.len();
        let mut seen = vec![0u8; n];
        for &id in &self.free {
            let m = &self.blocks[id as usize];
            if m.ref_count != 0 || m.hash.is_some() || m.lru_stamp.is_some() {
                return Err(format!("free block {id} has state {m:?}"));
            }
            seen[id as usize] += 1;
        }
        for (&stamp, &id) in &self.evictable {
            let m = &self.blocks[id as usize];
            if m.ref_count != 0 || m.hash.is_none() || m.lru_stamp != Some(stamp) {
                return Err(format!("evictable block {id} has state {m:?}"));
            }
            seen[id as usize] += 1;
        }
        for (id, m) in self.blocks.iter().enumerate() {
            if m.ref_count > 0 {
                if m.lru_stamp.is_some() {
                    return Err(format!("block {id} in use but in the LRU list"));
                }
                seen[id] += 1;
            }
            if seen[id] != 1 {
                return Err(format!("block {id} is in {} states", seen[id]));
            }
            if let Some(h) = m.hash {
                if self.cached.get(&h) != Some(&(id as BlockId)) {
                    return Err(format!("block {id} holds hash {h:#x} the map does not"));
                }
            }
        }
        for (&h, &id) in &self.cached {
            if self.blocks[id as usize].hash != Some(h) {
                return Err(format!("map sends {h:#x} to block {id}, which lacks it"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn cached_pool(blocks: usize) -> BlockPool {
        BlockPool::new(blocks, 4).with_prefix_caching(true)
    }

    #[test]
    fn allocate_is_all_or_nothing() {
        let mut p = BlockPool::new(4, 16);
        let a = p.allocate(3).unwrap();
        assert_eq!(a, vec![0, 1, 2]);
        assert!(p.allocate(2).is_none());
        assert_eq!(p.num_free(), 1);
        assert_eq!(p.usage_ratio(), 0.75);
        p.free(&a).unwrap();
        assert_eq!(p.num_free(), 4);
        assert_eq!(p.usage_ratio(), 0.0);
        p.check_invariants().unwrap();
    }

    #[test]
    fn freeing_a_free_block_is_an_error_not_an_underflow() {
        let mut p = BlockPool::new(2, 16);
        let a = p.allocate(1).unwrap();
        p.free(&a).unwrap();
        assert_eq!(p.free(&a), Err(BlockPoolError::NotInUse(a[0])));
        assert_eq!(p.free(&[7]), Err(BlockPoolError::OutOfRange { block: 7, num_blocks: 2 }));
        assert_eq!(p.ref_count(a[0]), Some(0));
        assert_eq!(p.num_free(), 2);
        p.check_invariants().unwrap();
    }

    #[test]
    fn hash_is_stable_and_chained() {
        // A fixed value: block hashes must not change between runs or builds.
        assert_eq!(hash_block(None, &[1, 2, 3, 4]), hash_block(None, &[1, 2, 3, 4]));
        assert_eq!(hash_block(None, &[1, 2, 3, 4]), 0x256d_a376_4ae4_ed0e_u64);
        let root = hash_block(None, &[1, 2, 3, 4]);
        assert_ne!(hash_block(Some(root), &[5, 6]), hash_block(None, &[5, 6]));
        assert_ne!(hash_block(Some(0), &[5, 6]), hash_block(None, &[5, 6]));
        assert_ne!(hash_block(None, &[1, 2, 3, 5]), root);
    }

    #[test]
    fn disabled_pool_never_caches() {
        let mut p = BlockPool::new(2, 4);
        let a = p.allocate(1).unwrap();
        assert!(!p.register_full(a[0], 42));
        assert!(p.lookup(&[42]).is_empty());
        p.free(&a).unwrap();
        assert_eq!(p.num_evictable(), 0);
        p.check_invariants().unwrap();
    }

    #[test]
    fn cached_block_survives_free_and_is_revived_by_lookup() {
        let mut p = cached_pool(3);
        let a = p.allocate(2).unwrap();
        assert!(p.register_full(a[0], 10));
        assert!(p.register_full(a[1], 11));
        // Same hash on another block is refused: one block per hash.
        let b = p.allocate(1).unwrap();
        assert!(!p.register_full(b[0], 10));
        p.free(&[a[1], a[0]]).unwrap();
        p.free(&b).unwrap();
        assert_eq!(p.num_evictable(), 2);
        assert_eq!(p.num_free(), 3);
        // Longest prefix only: 12 is unknown, so 11 after it is not reached.
        assert_eq!(p.lookup(&[10, 12, 11]), vec![a[0]]);
        assert_eq!(p.ref_count(a[0]), Some(1));
        assert_eq!(p.num_evictable(), 1);
        assert_eq!(p.lookup(&[10, 11]), a);
        assert_eq!(p.ref_count(a[0]), Some(2));
        p.check_invariants().unwrap();
    }

    #[test]
    fn allocation_takes_plain_free_blocks_then_the_oldest_cached() {
        let mut p = cached_pool(3);
        let a = p.allocate(3).unwrap();
        for (i, &b) in a.iter().enumerate() {
            assert!(p.register_full(b, 100 + i as u64));
        }
        // Block 1 is freed before block 0, so it is the older eviction candidate.
        p.free(&[a[1]]).unwrap();
        p.free(&[a[0]]).unwrap();
        let extra = p.allocate(1).unwrap();
        assert_eq!(extra, vec![a[1]], "least recently freed cached block goes first");
        assert_eq!(p.cached_block(101), None);
        assert_eq!(p.cached_block(100), Some(a[0]));
        p.check_invariants().unwrap();

        let mut q = cached_pool(2);
        let c = q.allocate(2).unwrap();
        assert!(q.register_full(c[0], 1));
        q.free(&c).unwrap();
        assert_eq!(q.allocate(1).unwrap(), vec![c[1]], "plain free before cached");
        assert_eq!(q.cached_block(1), Some(c[0]));
        q.check_invariants().unwrap();
    }

    /// A small deterministic generator, so random tests (here and in the
    /// scheduler) need no crate and fail the same way every time.
    pub(crate) struct Lcg(pub(crate) u64);
    impl Lcg {
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    #[test]
    fn invariants_hold_under_random_operations() {
        let mut rng = Lcg(7);
        let mut p = cached_pool(12);
        // References held by simulated sequences, so frees are always legal.
        let mut held: Vec<BlockId> = Vec::new();
        for step in 0..5000 {
            match rng.below(5) {
                0 => {
                    if let Some(b) = p.allocate(rng.below(4)) {
                        held.extend(b);
                    }
                }
                1 if !held.is_empty() => {
                    let b = held.swap_remove(rng.below(held.len()));
                    p.free(&[b]).unwrap();
                }
                2 if !held.is_empty() => {
                    let b = held[rng.below(held.len())];
                    p.register_full(b, rng.below(16) as u64);
                }
                3 => {
                    let hashes: Vec<u64> = (0..rng.below(4)).map(|_| rng.below(16) as u64).collect();
                    held.extend(p.lookup(&hashes));
                }
                _ => {
                    // Freeing a block nobody holds must be refused and harmless.
                    let b = rng.below(12) as BlockId;
                    if !held.contains(&b) {
                        assert_eq!(p.free(&[b]), Err(BlockPoolError::NotInUse(b)));
                    }
                }
            }
            if let Err(e) = p.check_invariants() {
                panic!("step {step}: {e}");
            }
            for b in 0..12 {
                let want = held.iter().filter(|&&h| h == b).count() as u32;
                assert_eq!(p.ref_count(b), Some(want), "step {step}, block {b}");
            }
            assert_eq!(p.num_free(), 12 - (0..12).filter(|&b| p.ref_count(b) != Some(0)).count());
        }
    }
}
