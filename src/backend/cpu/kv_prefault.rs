//! Backs the KV pool's pages ahead of use, on a background thread.
//!
//! The pool is allocated untouched, so a page is backed when a row is first stored
//! in it. The allocator asks for transparent huge pages, so the first store into each
//! 2 MiB stretch of a layer's K or V array makes the kernel clear all of it, and
//! every layer's arrays cross such a boundary in the same step: that step stalls
//! while the kernel clears 2 MiB for each of them (a quarter of a second for the
//! default model on the development VM, once every ~15 requests at concurrency 1:
//! `benches/results/2026-12-05-kv-prefault/`). This thread keeps the pages of the
//! blocks just past the highest one used so far backed (`MADV_POPULATE_WRITE`: the
//! kernel backs them without the data changing, so no row is ever written here),
//! which takes that work off the steps. The pool's memory still grows only with use.
//! A kernel without `MADV_POPULATE_WRITE` (before Linux 5.14) leaves the pool backed
//! on first store, as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How far past the highest block in use the pages are kept backed, in bytes of one
/// layer's K (or V) blocks, all KV heads: one huge page, and at least one block.
const AHEAD_BYTES: usize = 2 << 20;

/// Blocks kept backed past the highest in use, for blocks of `block_bytes` in each of
/// one layer's K and V (all KV heads).
pub fn blocks_ahead(block_bytes: usize) -> usize {
    AHEAD_BYTES.div_ceil(block_bytes.max(1)).max(1)
}

/// One array of the pool: where it starts and how long it is, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct PoolArray {
    pub addr: usize,
    pub bytes: usize,
}

pub struct Prefaulter {
    shared: Arc<Shared>,
    /// The block count last asked for, to skip the lock when nothing changes.
    asked: AtomicUsize,
    ahead_blocks: usize,
    num_blocks: usize,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// (blocks to have backed, stop).
    target: Mutex<(usize, bool)>,
    wake: Condvar,
}

impl std::fmt::Debug for Prefaulter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefaulter")
            .field("asked", &self.asked)
            .field("ahead_blocks", &self.ahead_blocks)
            .finish()
    }
}

impl Prefaulter {
    /// Starts the thread for `arrays`, each `num_blocks` blocks of `block_bytes`, and
    /// has it back the first blocks at once; it keeps `ahead_blocks` past the highest
    /// block in use backed.
    ///
    /// # Safety
    /// Every array must stay allocated until the returned value is dropped (its drop
    /// joins the thread).
    pub unsafe fn spawn(
        arrays: Vec<PoolArray>,
        block_bytes: usize,
        num_blocks: usize,
        ahead_blocks: usize,
    ) -> Option<Prefaulter> {
        if arrays.is_empty() || block_bytes == 0 || num_blocks == 0 {
            return None;
        }
        for a in &arrays {
            // Small pages: a huge page would be cleared whole at its first use (2 MiB
            // per array at once, however far ahead this thread is), small ones a
            // block's worth at a time. Best effort: the pool works either way.
            let _ = advise(a.addr, a.addr + a.bytes, a.addr + a.bytes, libc::MADV_NOHUGEPAGE);
        }
        let ahead_blocks = ahead_blocks.max(1);
        let shared = Arc::new(Shared { target: Mutex::new((0, false)), wake: Condvar::new() });
        let thread = std::thread::Builder::new()
            .name("inflight-kv-prefault".into())
            .spawn({
                let shared = shared.clone();
                move || populate_loop(&shared, &arrays, block_bytes)
            })
            .ok()?;
        let p =
            Prefaulter { shared, asked: AtomicUsize::new(0), ahead_blocks, num_blocks, thread: Some(thread) };
        p.note_highest_block(0);
        Some(p)
    }

    /// Block `highest` is about to be written: keep the blocks after it backed.
    pub fn note_highest_block(&self, highest: usize) {
        let want = (highest + 1 + self.ahead_blocks).min(self.num_blocks);
        if want <= self.asked.load(Ordering::Relaxed) {
            return;
        }
        self.asked.fetch_max(want, Ordering::Relaxed);
        let mut target = self.shared.target.lock().unwrap_or_else(|e| e.into_inner());
        if want > target.0 {
            target.0 = want;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.shared.target.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn populate_loop(shared: &Shared, arrays: &[PoolArray], block_bytes: usize) {
    let mut backed = 0usize;
    loop {
        let want = {
            let mut target = shared.target.lock().unwrap_or_else(|e| e.into_inner());
            while !target.1 && target.0 <= backed {
                target = shared.wake.wait(target).unwrap_or_else(|e| e.into_inner());
            }
            if target.1 {
                return;
            }
            target.0
        };
        for a in arrays {
            let from = a.addr + backed * block_bytes;
            let to = a.addr + (want * block_bytes).min(a.bytes);
            if let Err(e) = advise(from, to, a.addr + a.bytes, libc::MADV_POPULATE_WRITE) {
                tracing::debug!(error = %e, "KV pool prefaulting is off: pages are backed on first use");
                return;
            }
        }
        backed = want;
    }
}

/// `madvise(advice)` on the pages of `[from, to)`, widened to whole pages but not
/// past `limit` (the array's end, beyond which the memory is not the pool's).
fn advise(from: usize, to: usize, limit: usize, advice: libc::c_int) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    let start = from & !(PAGE - 1);
    let end = to.next_multiple_of(PAGE).min(limit & !(PAGE - 1));
    if end <= start {
        return Ok(());
    }
    // SAFETY: the range lies within an array the caller keeps allocated (see
    // `spawn`); the advice used here (POPULATE_WRITE, NOHUGEPAGE) never changes the
    // memory's contents.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of `bytes` at `addr`, by `mincore`.
    fn resident_pages(addr: usize, bytes: usize) -> usize {
        let pages = bytes / 4096;
        let mut v = vec![0u8; pages];
        // SAFETY: `addr` is page-aligned and the range mapped (the test's own allocation).
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, pages * 4096, v.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn pages_past_the_highest_block_are_backed_and_the_rest_is_not() {
        // A fresh anonymous mapping: untouched pages are not resident.
        let bytes = 64 << 20;
        // SAFETY: a private anonymous mapping, unmapped at the end of the test.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let addr = addr as usize;
        // SAFETY: NOHUGEPAGE on our own mapping, so residency is counted in small pages.
        unsafe { libc::madvise(addr as *mut libc::c_void, bytes, libc::MADV_NOHUGEPAGE) };
        let block_bytes = 64 << 10;
        let blocks = bytes / block_bytes;
        let array = PoolArray { addr, bytes };
        // SAFETY: the mapping outlives the prefaulter (dropped before munmap).
        let ahead = blocks_ahead(block_bytes);
        let p = unsafe { Prefaulter::spawn(vec![array], block_bytes, blocks, ahead) }.expect("spawned");
        let wait_for = |pages: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while resident_pages(addr, bytes) < pages {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {pages} pages",
                    resident_pages(addr, bytes)
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        wait_for(ahead * block_bytes / 4096);
        p.note_highest_block(100);
        wait_for((101 + ahead) * block_bytes / 4096);
        drop(p);
        // Nothing past what was asked for, and every byte still zero.
        assert_eq!(resident_pages(addr, bytes), (101 + ahead) * block_bytes / 4096);
        // SAFETY: the mapping is ours and `bytes` long.
        let data = unsafe { std::slice::from_raw_parts(addr as *const u8, (101 + ahead) * block_bytes) };
        assert!(data.iter().all(|&b| b == 0));
        // SAFETY: unmapping our own mapping, nothing refers to it any more.
        unsafe { libc::munmap(addr as *mut libc::c_void, bytes) };
    }
}
