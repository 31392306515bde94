//! The engine's estimate of its own speed, from which it predicts how long a new
//! request would wait to be admitted.
//!
//! Model: tokens computed per second of step time, as the ratio of two
//! exponentially weighted moving averages (tokens per step and seconds per step),
//! so a long prefill step weighs in proportion to its duration rather than as one
//! sample among many one-token decode steps. A prediction is the tokens that must
//! be prefilled before the request could start (the scheduler's `queued_tokens`)
//! over that rate. It leaves out the decode steps of running sequences that share
//! the engine meanwhile and the tokens of requests that arrive later but go first
//! (reserved ones, lighter share keys), so it errs short under heavy decoding.

use std::time::Duration;

/// Each step's weight in the moving averages: about the last 20 steps count.
const STEP_WEIGHT: f64 = 0.05;

#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Moving averages of tokens per step and seconds per step; `None` before
    /// the first step with tokens.
    averages: Option<(f64, f64)>,
}

impl Throughput {
    /// Records a step that computed `tokens` tokens in `took`.
    pub fn observe(&mut self, tokens: usize, took: Duration) {
        let secs = took.as_secs_f64();
        if tokens == 0 || secs <= 0.0 {
            return;
        }
        let tokens = tokens as f64;
        self.averages = Some(match self.averages {
            None => (tokens, secs),
            Some((t, s)) => (t + STEP_WEIGHT * (tokens - t), s + STEP_WEIGHT * (secs - s)),
        });
    }

    /// Tokens per second, once a step has been seen.
    pub fn tokens_per_second(&self) -> Option<f64> {
        self.averages.map(|(t, s)| t / s)
    }

    /// How long computing `tokens` tokens should take; `None` before any step
    /// (nothing to predict from).
    pub fn time_for(&self, tokens: usize) -> Option<Duration> {
        let rate = self.tokens_per_second()?;
        Duration::try_from_secs_f64(tokens as f64 / rate).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_rate_follows_step_time_not_step_count() {
        let mut t = Throughput::default();
        assert_eq!(t.time_for(100), None, "no guess before the first step");
        // 1000 tokens per second, whatever the mix of step sizes.
        for _ in 0..50 {
            t.observe(1, ms(1));
            t.observe(100, ms(100));
        }
        let rate = t.tokens_per_second().unwrap();
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
        assert_eq!(t.time_for(500).unwrap().as_millis(), 500);
        assert_eq!(t.time_for(1000).unwrap().as_millis(), 2 * t.time_for(500).unwrap().as_millis());
        t.observe(0, ms(5));
        t.observe(5, Duration::ZERO);
        assert!((t.tokens_per_second().unwrap() - rate).abs() < 1e-9, "empty steps are ignored");
    }

    #[test]
    fn the_rate_moves_to_a_new_speed_within_tens_of_steps() {
        let mut t = Throughput::default();
        for _ in 0..100 {
            t.observe(100, ms(100)); // 1000/s
        }
        for _ in 0..60 {
            t.observe(100, ms(50)); // now 2000/s
        }
        let rate = t.tokens_per_second().unwrap();
        assert!((1900.0..=2000.0).contains(&rate), "{rate}");
    }
}
