//! Open-loop arrival times. Gaps between requests are gamma-distributed with shape
//! `burstiness` and mean `1 / rate`, as in vLLM's `bench serve`: burstiness 1 is a
//! Poisson process (exponential gaps), below 1 burstier, above 1 more regular.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

use super::BenchError;

/// Send offsets, in seconds after the level starts, for `n` requests. The first
/// request goes at 0. `rate = None` means infinite: everything at once.
pub fn schedule(n: usize, rate: Option<f64>, burstiness: f64, seed: u64) -> Result<Vec<f64>, BenchError> {
    let Some(rate) = rate else { return Ok(vec![0.0; n]) };
    if !(rate > 0.0 && rate.is_finite() && burstiness > 0.0 && burstiness.is_finite()) {
        return Err(BenchError::Config(format!(
            "request rate ({rate}) and burstiness ({burstiness}) must be positive"
        )));
    }
    let gaps =
        Gamma::new(burstiness, 1.0 / (rate * burstiness)).map_err(|e| BenchError::Config(e.to_string()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    Ok((0..n)
        .map(|i| {
            if i > 0 {
                t += gaps.sample(&mut rng);
            }
            t
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(times: &[f64]) -> Vec<f64> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_and_cv(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        (mean, sd / mean)
    }

    #[test]
    fn poisson_arrivals_have_the_asked_rate_and_exponential_spread() {
        let t = schedule(20_001, Some(4.0), 1.0, 7).unwrap();
        assert_eq!(t[0], 0.0);
        assert!(t.windows(2).all(|w| w[1] >= w[0]), "non-decreasing");
        let (mean, cv) = mean_and_cv(&gaps(&t));
        // 20,000 exponential gaps: the sample mean's relative error is ≈ 0.7 %.
        assert!((mean - 0.25).abs() < 0.25 * 0.03, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "exponential gaps have CV 1, got {cv}");
    }

    #[test]
    fn burstiness_changes_the_spread_not_the_rate() {
        for (burstiness, want_cv) in [(0.25, 2.0), (4.0, 0.5)] {
            let t = schedule(40_001, Some(10.0), burstiness, 3).unwrap();
            let (mean, cv) = mean_and_cv(&gaps(&t));
            assert!((mean - 0.1).abs() < 0.1 * 0.05, "burstiness {burstiness}: mean gap {mean}");
            // Gamma with shape k has CV 1/√k.
            assert!((cv - want_cv).abs() < want_cv * 0.08, "burstiness {burstiness}: CV {cv}");
        }
    }

    #[test]
    fn infinite_rate_sends_all_at_once_and_bad_input_is_an_error() {
        assert_eq!(schedule(3, None, 1.0, 0).unwrap(), vec![0.0; 3]);
        assert!(schedule(3, Some(0.0), 1.0, 0).is_err());
        assert!(schedule(3, Some(1.0), 0.0, 0).is_err());
        assert_eq!(
            schedule(5, Some(2.0), 1.0, 9).unwrap(),
            schedule(5, Some(2.0), 1.0, 9).unwrap(),
            "seeded"
        );
    }
}
