//! A tenant's running account: its token buckets (if it has rates), the tokens
//! and responses served to it since start, and the tokens it drew from its
//! buckets over the last minute. One `Ledger` lives as long as the tenant's name:
//! a reloaded tenants file hands it on, so a reload neither refills a bucket nor
//! resets a count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::buckets::TokenBucket;

/// Tokens per minute in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input_tokens_per_minute: u64,
    pub output_tokens_per_minute: u64,
}

/// The input and output buckets of a tenant with rates.
#[derive(Debug, Clone)]
pub struct Buckets {
    pub input: TokenBucket,
    pub output: TokenBucket,
}

impl Buckets {
    pub fn full(rates: Rates, now: Instant) -> Self {
        Self {
            input: TokenBucket::full(rates.input_tokens_per_minute, now),
            output: TokenBucket::full(rates.output_tokens_per_minute, now),
        }
    }
}

/// What the `x-ratelimit-*-tokens` headers and `/v1/usage` report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketLevels {
    pub rates: Rates,
    pub input: f64,
    pub output: f64,
    /// Until both buckets are full again.
    pub until_full: Duration,
}

/// Tokens drawn per second over the last `WINDOW_SECS` seconds, in a ring.
const WINDOW_SECS: usize = 60;

#[derive(Debug)]
struct RecentDraws {
    origin: Instant,
    /// (second since `origin`, tokens drawn in it).
    slots: [(u64, u64); WINDOW_SECS],
}

impl RecentDraws {
    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn add(&mut self, tokens: u64, now: Instant) {
        let s = self.second_of(now);
        let slot = &mut self.slots[(s % WINDOW_SECS as u64) as usize];
        if slot.0 != s {
            *slot = (s, 0);
        }
        slot.1 += tokens;
    }

    fn last_minute(&self, now: Instant) -> u64 {
        let s = self.second_of(now);
        self.slots.iter().filter(|(at, _)| s.saturating_sub(*at) < WINDOW_SECS as u64).map(|(_, n)| n).sum()
    }
}

/// Everything `/v1/usage` shows of a tenant, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSnapshot {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub responses_by_status: BTreeMap<u16, u64>,
    pub buckets: Option<BucketLevels>,
}

#[derive(Debug)]
pub struct Ledger {
    buckets: Mutex<Option<Buckets>>,
    recent: Mutex<RecentDraws>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    responses: Mutex<BTreeMap<u16, u64>>,
}

/// A poisoned lock still holds consistent numbers (every update is one
/// assignment), so it is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    pub fn new(rates: Option<Rates>, now: Instant) -> Self {
        Self {
            buckets: Mutex::new(rates.map(|r| Buckets::full(r, now))),
            recent: Mutex::new(RecentDraws { origin: now, slots: [(u64::MAX, 0); WINDOW_SECS] }),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            responses: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `f` on the buckets (`None`: the tenant has no rates) under their lock.
    pub fn with_buckets<R>(&self, f: impl FnOnce(&mut Option<Buckets>) -> R) -> R {
        f(&mut lock(&self.buckets))
    }

    /// Puts the buckets at `rates` (a reloaded file): levels are kept, capped at
    /// the new capacity; a tenant that gains rates starts full, one that loses
    /// them has none.
    pub fn retune(&self, rates: Option<Rates>, now: Instant) {
        let mut slot = lock(&self.buckets);
        *slot = match (slot.take(), rates) {
            (Some(b), Some(r)) => Some(Buckets {
                input: b.input.retuned(r.input_tokens_per_minute, now),
                output: b.output.retuned(r.output_tokens_per_minute, now),
            }),
            (None, Some(r)) => Some(Buckets::full(r, now)),
            (_, None) => None,
        };
    }

    /// Output tokens produced for a request that drew on the buckets at
    /// admission; the output bucket may go below zero.
    pub fn charge_output(&self, tokens: u64, now: Instant) {
        if tokens == 0 {
            return;
        }
        if let Some(b) = lock(&self.buckets).as_mut() {
            b.output.charge(tokens, now);
        }
        self.note_drawn(tokens, now);
    }

    /// Tokens taken from the buckets, for the reservation usage ratio.
    pub fn note_drawn(&self, tokens: u64, now: Instant) {
        lock(&self.recent).add(tokens, now);
    }

    /// Tokens taken from the buckets in the last minute.
    pub fn drawn_last_minute(&self, now: Instant) -> u64 {
        lock(&self.recent).last_minute(now)
    }

    pub fn note_served(&self, prompt_tokens: u64, completion_tokens: u64) {
        self.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        self.completion_tokens.fetch_add(completion_tokens, Ordering::Relaxed);
    }

    pub fn note_response(&self, status: u16) {
        *lock(&self.responses).entry(status).or_default() += 1;
    }

    pub fn levels(&self, now: Instant) -> Option<BucketLevels> {
        lock(&self.buckets).as_mut().map(|b| BucketLevels {
            rates: Rates {
                input_tokens_per_minute: b.input.per_minute(),
                output_tokens_per_minute: b.output.per_minute(),
            },
            input: b.input.level(now),
            output: b.output.level(now),
            until_full: b.input.time_to_full(now).max(b.output.time_to_full(now)),
        })
    }

    pub fn snapshot(&self, now: Instant) -> UsageSnapshot {
        UsageSnapshot {
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            responses_by_status: lock(&self.responses).clone(),
            buckets: self.levels(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const RATES: Rates = Rates { input_tokens_per_minute: 60, output_tokens_per_minute: 120 };

    #[test]
    fn draws_count_for_one_minute_then_age_out() {
        let t0 = Instant::now();
        let l = Ledger::new(Some(RATES), t0);
        l.note_drawn(10, t0);
        l.charge_output(5, t0 + 30 * SEC);
        assert_eq!(l.drawn_last_minute(t0 + 30 * SEC), 15);
        assert_eq!(l.drawn_last_minute(t0 + 61 * SEC), 5);
        assert_eq!(l.drawn_last_minute(t0 + 200 * SEC), 0);
    }

    #[test]
    fn levels_and_a_retune_keep_what_was_used() {
        let t0 = Instant::now();
        let l = Ledger::new(Some(RATES), t0);
        l.charge_output(150, t0);
        let lv = l.levels(t0).expect("has rates");
        assert_eq!((lv.input, lv.output), (60.0, -30.0));
        assert_eq!(lv.until_full, 75 * SEC, "150 tokens at 2/s");
        l.retune(Some(Rates { input_tokens_per_minute: 30, output_tokens_per_minute: 120 }), t0);
        let lv = l.levels(t0).expect("has rates");
        assert_eq!((lv.input, lv.output), (30.0, -30.0));
        l.retune(None, t0);
        assert_eq!(l.levels(t0), None);
    }
}
