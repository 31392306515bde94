//! What an engine step costs in wall time, learned from the steps the engine runs,
//! so the scheduler can bound how much prefill a step carries while sequences are
//! decoding (`--max-step-ms`).
//!
//! Model: step time is linear in four features of the step: a constant (weights
//! streamed once per step, sampling set-up), the prefill tokens, the decode rows
//! (each pays its own sampling, detokenizing and weight-tile walk), and the
//! query-key pairs attention visits (a prefill token at position 7,000 costs far
//! more than one at position 0). The coefficients are fitted by recursive least
//! squares with exponential forgetting, so they follow the host (other load, clock
//! changes) within a few hundred steps. A run of decode-only steps says nothing
//! about the prefill coefficient; the covariance is bounded so that coefficient
//! does not wind up and swing on the next prefill step.

use std::time::Duration;

/// How fast old steps are forgotten: the fit weighs about the last 200 steps.
const FORGETTING: f64 = 0.995;
/// Initial covariance: a weak prior, so the first steps set the coefficients.
const PRIOR: f64 = 1e3;
/// Past this covariance trace, forgetting stops (no wind-up without excitation).
const MAX_TRACE: f64 = 1e4;
/// Steps before the fit is trusted, and prefill steps among them.
const WARMUP_STEPS: u64 = 32;
const WARMUP_PREFILL_STEPS: u64 = 4;

/// Feature scales, so the fitted coefficients are of similar magnitude (ms).
const PREFILL_UNIT: f64 = 100.0;
const DECODE_UNIT: f64 = 10.0;
const PAIRS_UNIT: f64 = 1e5;

const N: usize = 4;

/// The shape of a step as the cost model sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    pub prefill_tokens: usize,
    pub decode_rows: usize,
    /// Query-key pairs attention visits over the step's rows.
    pub attention_pairs: u64,
}

impl StepShape {
    /// Adds a chunk of `n` tokens starting at position `start` (a decode row is
    /// a chunk of one).
    pub fn add(&mut self, n: usize, start: usize, decode: bool) {
        if decode {
            self.decode_rows += 1;
        } else {
            self.prefill_tokens += n;
        }
        self.attention_pairs += attention_pairs(n, start);
    }

    fn features(&self) -> [f64; N] {
        [
            1.0,
            self.prefill_tokens as f64 / PREFILL_UNIT,
            self.decode_rows as f64 / DECODE_UNIT,
            self.attention_pairs as f64 / PAIRS_UNIT,
        ]
    }
}

/// Query-key pairs for `n` query rows at positions `start..start + n`, each
/// attending to itself and everything before it.
fn attention_pairs(n: usize, start: usize) -> u64 {
    let (n, start) = (n as u64, start as u64);
    n * start + n * (n + 1) / 2
}

/// A fitted model's costs in seconds: what the scheduler charges each chunk it
/// plans against a step's time limit. Per-item costs are never negative; the
/// fixed cost may be, where the fit trades it against a per-item cost (steps
/// that always hold about as many decode rows make the two nearly collinear), and
/// clamping it alone would then over-predict every step by that much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCost {
    pub fixed: f64,
    pub per_prefill_token: f64,
    pub per_decode_row: f64,
    pub per_attention_pair: f64,
}

impl StepCost {
    /// Seconds a chunk of `n` tokens at `start` adds to a step.
    pub fn chunk(&self, n: usize, start: usize, decode: bool) -> f64 {
        let rows = if decode { self.per_decode_row } else { n as f64 * self.per_prefill_token };
        rows + attention_pairs(n, start) as f64 * self.per_attention_pair
    }

    /// The most prefill tokens starting at `start` that fit in `seconds`.
    pub fn prefill_tokens_within(&self, seconds: f64, start: usize) -> usize {
        if seconds <= 0.0 {
            return 0;
        }
        // cost(n) = a n² + b n with a = pair/2, b = token + pair (start + 1/2).
        let a = self.per_attention_pair / 2.0;
        let b = self.per_prefill_token + self.per_attention_pair * (start as f64 + 0.5);
        let n = if a > 0.0 {
            (-b + (b * b + 4.0 * a * seconds).sqrt()) / (2.0 * a)
        } else if b > 0.0 {
            seconds / b
        } else {
            f64::INFINITY
        };
        if n.is_finite() {
            n.max(0.0) as usize
        } else {
            usize::MAX
        }
    }
}

/// Recursive least-squares fit of step time against [`StepShape`].
#[derive(Debug, Clone)]
pub struct StepCostModel {
    theta: [f64; N],
    covariance: [[f64; N]; N],
    steps: u64,
    prefill_steps: u64,
}

impl Default for StepCostModel {
    fn default() -> Self {
        let mut covariance = [[0.0; N]; N];
        for (i, row) in covariance.iter_mut().enumerate() {
            row[i] = PRIOR;
        }
        Self { theta: [0.0; N], covariance, steps: 0, prefill_steps: 0 }
    }
}

impl StepCostModel {
    /// Records that a step of `shape` took `took`.
    pub fn observe(&mut self, shape: &StepShape, took: Duration) {
        if shape.prefill_tokens == 0 && shape.decode_rows == 0 {
            return;
        }
        let x = shape.features();
        let y = took.as_secs_f64() * 1e3;
        let p = &self.covariance;
        let px: [f64; N] = std::array::from_fn(|i| (0..N).map(|j| p[i][j] * x[j]).sum());
        let denom = FORGETTING + (0..N).map(|i| x[i] * px[i]).sum::<f64>();
        let gain: [f64; N] = std::array::from_fn(|i| px[i] / denom);
        let error = y - (0..N).map(|i| x[i] * self.theta[i]).sum::<f64>();
        for (t, g) in self.theta.iter_mut().zip(gain) {
            *t += g * error;
        }
        // P ← (P − k (Px)ᵀ) / λ, with P symmetric so xᵀP = (Px)ᵀ.
        let trace: f64 = (0..N).map(|i| p[i][i]).sum();
        let forget = if trace < MAX_TRACE { FORGETTING } else { 1.0 };
        let next: [[f64; N]; N] =
            std::array::from_fn(|i| std::array::from_fn(|j| (p[i][j] - gain[i] * px[j]) / forget));
        self.covariance = next;
        self.steps += 1;
        if shape.prefill_tokens > 0 {
            self.prefill_steps += 1;
        }
    }

    /// Predicted duration of a step of `shape`; `None` while warming up.
    /// The fit itself, not the clamped [`StepCost`]: collinear features (prefill
    /// tokens and their attention pairs) may share the time with one coefficient
    /// negative, and clamping it alone would over-predict by seconds.
    pub fn predict(&self, shape: &StepShape) -> Option<Duration> {
        self.cost()?;
        let x = shape.features();
        let ms: f64 = (0..N).map(|i| x[i] * self.theta[i]).sum();
        Duration::try_from_secs_f64(ms.max(0.0) / 1e3).ok()
    }

    /// The fitted per-item costs, once enough steps (some of them prefilling)
    /// have been seen.
    pub fn cost(&self) -> Option<StepCost> {
        if self.steps < WARMUP_STEPS || self.prefill_steps < WARMUP_PREFILL_STEPS {
            return None;
        }
        let per = |i: usize, unit: f64| self.theta[i].max(0.0) / unit / 1e3;
        Some(StepCost {
            fixed: self.theta[0] / 1e3,
            per_prefill_token: per(1, PREFILL_UNIT),
            per_decode_row: per(2, DECODE_UNIT),
            per_attention_pair: per(3, PAIRS_UNIT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host where a step costs 4 ms + 1 ms per prefill token + 3 ms per decode
    /// row + 10 ns per attention pair.
    fn true_time(s: &StepShape) -> Duration {
        let ms = 4.0 + s.prefill_tokens as f64 + 3.0 * s.decode_rows as f64 + 1e-5 * s.attention_pairs as f64;
        Duration::from_secs_f64(ms / 1e3)
    }

    fn shape(chunks: &[(usize, usize, bool)]) -> StepShape {
        let mut s = StepShape::default();
        for &(n, start, decode) in chunks {
            s.add(n, start, decode);
        }
        s
    }

    fn mixed_steps(i: usize) -> StepShape {
        let decodes = i % 17;
        let mut chunks: Vec<(usize, usize, bool)> = (0..decodes).map(|d| (1, 100 + 37 * d, true)).collect();
        if i.is_multiple_of(3) {
            chunks.push((16 + (i * 7) % 400, (i * 131) % 3000, false));
        }
        shape(&chunks)
    }

    #[test]
    fn attention_pairs_count_the_causal_triangle() {
        assert_eq!(attention_pairs(1, 0), 1);
        assert_eq!(attention_pairs(1, 99), 100, "a decode row at position 99 sees 100 keys");
        assert_eq!(attention_pairs(4, 0), 1 + 2 + 3 + 4);
        assert_eq!(attention_pairs(2, 10), 11 + 12);
    }

    #[test]
    fn the_fit_recovers_a_linear_host_and_predicts_unseen_shapes() {
        let mut m = StepCostModel::default();
        for i in 0..20 {
            m.observe(&mixed_steps(i), true_time(&mixed_steps(i)));
        }
        assert!(m.cost().is_none(), "not trusted before the warm-up");
        for i in 20..400 {
            m.observe(&mixed_steps(i), true_time(&mixed_steps(i)));
        }
        let c = m.cost().expect("warm");
        assert!((c.per_prefill_token - 1e-3).abs() < 2e-5, "{c:?}");
        assert!((c.per_decode_row - 3e-3).abs() < 1e-4, "{c:?}");
        let unseen = shape(&[(1, 50, true), (1, 60, true), (512, 6000, false)]);
        let (want, got) = (true_time(&unseen).as_secs_f64(), m.predict(&unseen).unwrap().as_secs_f64());
        assert!((got - want).abs() / want < 0.02, "predicted {got} s, true {want} s");
    }

    #[test]
    fn decode_only_stretches_do_not_wind_up_the_prefill_coefficient() {
        let mut m = StepCostModel::default();
        for i in 0..300 {
            m.observe(&mixed_steps(i), true_time(&mixed_steps(i)));
        }
        // A long quiet spell of decode-only steps with a little noise...
        for i in 0..5000 {
            let s = shape(&[(1, 100 + i % 50, true), (1, 300, true)]);
            let jitter = Duration::from_micros((i % 7) as u64 * 50);
            m.observe(&s, true_time(&s) + jitter);
        }
        let before = m.cost().unwrap().per_prefill_token;
        // ...then one noisy prefill step must not swing the estimate wildly.
        let s = shape(&[(256, 0, false)]);
        m.observe(&s, true_time(&s) * 2);
        let after = m.cost().unwrap().per_prefill_token;
        assert!(after < 3.0 * before && after > before / 3.0, "{before} -> {after}");
    }

    #[test]
    fn the_prefill_that_fits_a_time_left_solves_the_quadratic() {
        let c =
            StepCost { fixed: 0.0, per_prefill_token: 1e-3, per_decode_row: 0.0, per_attention_pair: 1e-6 };
        for (seconds, start) in [(0.1, 0), (0.05, 4000), (0.3, 100)] {
            let n = c.prefill_tokens_within(seconds, start);
            assert!(c.chunk(n, start, false) <= seconds + 1e-12, "{n} tokens overrun {seconds} s");
            assert!(c.chunk(n + 1, start, false) > seconds, "{n} + 1 tokens still fit {seconds} s");
        }
        assert_eq!(c.prefill_tokens_within(0.0, 0), 0);
        assert_eq!(c.prefill_tokens_within(-1.0, 0), 0);
        let free = StepCost { per_prefill_token: 0.0, per_attention_pair: 0.0, ..c };
        assert_eq!(free.prefill_tokens_within(0.1, 0), usize::MAX);
    }
}

#[cfg(test)]
mod collinear_tests {
    use super::*;

    #[test]
    fn steady_steps_with_collinear_features_are_predicted_as_fitted() {
        // Every step holds 60 decode rows, so the constant and the per-row cost are
        // collinear; the host's true cost: 100 ms + prefill at 1 ms a token.
        let mut m = StepCostModel::default();
        for i in 0..400 {
            let mut s = StepShape::default();
            for _ in 0..60 {
                s.add(1, 200, true);
            }
            if i % 2 == 0 {
                s.add(64 + i % 50, 0, false);
            }
            let ms = 100.0 + s.prefill_tokens as f64;
            m.observe(&s, Duration::from_secs_f64(ms / 1e3));
        }
        let mut steady = StepShape::default();
        for _ in 0..60 {
            steady.add(1, 200, true);
        }
        let predicted = m.predict(&steady).unwrap().as_secs_f64();
        assert!((predicted - 0.1).abs() < 0.005, "predicted {predicted} s for a 100 ms step");
    }
}
