//! Token buckets: a tenant's per-minute token rate as a level that refills
//! continuously. Capacity is one minute of rate, so a tenant idle for a minute
//! may spend its whole minute at once (a burst of at most one minute's tokens)
//! and no more; refilling is computed from the time elapsed whenever the bucket
//! is read, so no background task exists. Every method takes `now` — the clock is
//! injected, which keeps the arithmetic testable without sleeping.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: u64,
    /// Tokens available; may be negative after an output overshoot, and then
    /// refills from there.
    level: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens (above 0; the tenants file checks).
    pub fn full(per_minute: u64, now: Instant) -> Self {
        Self { per_minute, level: per_minute as f64, refilled_at: now }
    }

    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    fn capacity(&self) -> f64 {
        self.per_minute as f64
    }

    fn per_second(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    /// Adds what `now - refilled_at` earned, up to capacity. A clock read that
    /// goes backwards (it cannot, with `Instant`, but a caller may pass one)
    /// adds nothing.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second()).min(self.capacity());
        self.refilled_at = self.refilled_at.max(now);
    }

    /// Tokens available at `now` (negative while repaying an overshoot).
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    /// Takes `tokens` if the bucket holds them all; otherwise takes nothing.
    pub fn try_take(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        if self.level >= tokens as f64 {
            self.level -= tokens as f64;
            true
        } else {
            false
        }
    }

    /// Takes `tokens` whatever the level: output already produced is charged even
    /// if it overshoots, and the bucket refills from below zero.
    pub fn charge(&mut self, tokens: u64, now: Instant) {
        self.refill(now);
        self.level -= tokens as f64;
    }

    /// How long until the bucket holds `tokens`: zero if it does now, `None` if it
    /// never can (more than its capacity).
    pub fn time_to_hold(&mut self, tokens: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        if tokens as f64 > self.capacity() {
            return None;
        }
        let missing = tokens as f64 - self.level;
        if missing <= 0.0 {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_secs_f64(missing / self.per_second()))
    }

    /// How long until the bucket is full again.
    pub fn time_to_full(&mut self, now: Instant) -> Duration {
        self.refill(now);
        Duration::from_secs_f64(((self.capacity() - self.level) / self.per_second()).max(0.0))
    }

    /// The same bucket at a new rate (a reloaded tenants file): the level is kept
    /// but never above the new capacity, so a lowered rate takes effect at once.
    pub fn retuned(mut self, per_minute: u64, now: Instant) -> Self {
        self.refill(now);
        self.per_minute = per_minute;
        self.level = self.level.min(self.capacity());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn refills_at_the_rate_up_to_one_minute_of_it() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(600, t0);
        assert!(b.try_take(600, t0));
        assert_eq!(b.level(t0), 0.0);
        assert!((b.level(t0 + SEC) - 10.0).abs() < 1e-9, "600/min is 10/s");
        assert!((b.level(t0 + 30 * SEC) - 300.0).abs() < 1e-9);
        assert_eq!(b.level(t0 + 3600 * SEC), 600.0, "capped at one minute of rate");
    }

    #[test]
    fn try_take_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(60, t0);
        assert!(!b.try_take(61, t0));
        assert_eq!(b.level(t0), 60.0);
        assert!(b.try_take(50, t0));
        assert!(!b.try_take(11, t0));
        assert!(b.try_take(10, t0));
    }

    #[test]
    fn an_overshoot_goes_negative_and_refills_from_there() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(60, t0);
        b.charge(90, t0);
        assert_eq!(b.level(t0), -30.0);
        assert!((b.level(t0 + 30 * SEC)).abs() < 1e-9, "1/s repays 30 in 30 s");
        assert_eq!(b.time_to_full(t0 + 30 * SEC), 60 * SEC);
    }

    #[test]
    fn time_to_hold_n_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(120, t0);
        assert_eq!(b.time_to_hold(120, t0), Some(Duration::ZERO));
        assert!(b.try_take(120, t0));
        assert_eq!(b.time_to_hold(10, t0), Some(5 * SEC), "2/s");
        assert_eq!(b.time_to_hold(121, t0), None, "beyond capacity: never");
        b.charge(20, t0);
        assert_eq!(b.time_to_hold(10, t0), Some(15 * SEC), "repays 20, then gathers 10");
    }

    #[test]
    fn a_lowered_rate_caps_the_level_at_once() {
        let t0 = Instant::now();
        let b = TokenBucket::full(600, t0).retuned(60, t0 + SEC);
        let mut b = b;
        assert_eq!(b.level(t0 + SEC), 60.0);
        assert_eq!(b.per_minute(), 60);
    }
}
