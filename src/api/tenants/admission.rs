//! Per-tenant concurrency: a count of requests being served, and a guard that
//! holds one unit of it until the response (stream included) is finished or
//! dropped, so a client that hangs up mid-stream frees its slot too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One admitted request; dropping it releases the slot.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// A slot if fewer than `limit` are taken (always, with no limit).
    pub fn try_acquire(&self, limit: Option<usize>) -> Option<InFlightGuard> {
        let admitted = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match limit {
            Some(max) if n >= max => None,
            _ => Some(n + 1),
        });
        admitted.ok().map(|_| InFlightGuard(self.0.clone()))
    }

    pub fn current(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_and_a_dropped_guard_frees_its_slot() {
        let count = InFlight::default();
        let first = count.try_acquire(Some(1)).expect("first admitted");
        assert!(count.try_acquire(Some(1)).is_none());
        drop(first);
        assert!(count.try_acquire(Some(1)).is_some());
        assert_eq!(count.current(), 0);
        let _a = count.try_acquire(None);
        let _b = count.try_acquire(None);
        assert_eq!(count.current(), 2);
    }
}
