//! `Sampler`: one per sequence, owning its parameters and its random generator.
//!
//! Randomness: a seeded sampler uses `StdRng::seed_from_u64(seed)` and consumes one
//! uniform number per non-greedy token (none when greedy), so a seeded request is
//! reproducible on the same build (rand does not promise the stream across versions).
//!
//! Scratch memory (about 12 bytes per vocabulary entry) lives in a thread-local, not
//! in each `Sampler`: a few hundred running sequences would otherwise hold hundreds of
//! megabytes of buffers at a 128k vocabulary, and a per-thread set stays right if the
//! engine ever samples sequences in parallel.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::logprobs::{sanitize_and_argmax, top_n_into};
use super::penalties::Penalizer;
use super::truncate::{draw, DrawScratch};
use super::{SamplingError, SamplingParams};
use crate::fastexp::fill_weights;

/// One sampled token with its log-probability under the penalised distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// The `logprobs` best alternatives as `(id, logprob)`, best first; may include
    /// `token` itself; empty when `logprobs` is None or Some(0). Tokens with
    /// probability 0 (logit -inf) are never listed.
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

#[derive(Debug, Default)]
struct Scratch {
    /// Penalised, sanitised copy of the logits of the current call.
    work: Vec<f32>,
    penalizer: Penalizer,
    draw: DrawScratch,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Sampler {
    /// `params` should have passed `SamplingParams::validate`; out-of-range values do
    /// not panic here but give unspecified (if harmless) sampling.
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => os_seeded_rng(),
        };
        Sampler { params: params.clone(), rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` (one per vocabulary entry), given the
    /// prompt and the tokens generated so far (for penalties).
    pub fn sample(
        &mut self,
        logits: &[f32],
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) -> Result<Sampled, SamplingError> {
        self.sample_banning(logits, prompt_ids, output_ids, &[])
    }

    /// [`Sampler::sample`] with the tokens `banned` given probability 0 (stop tokens
    /// before `min_tokens`): never chosen, never listed among the alternatives, and
    /// the logprobs are those of the distribution without them.
    pub fn sample_banning(
        &mut self,
        logits: &[f32],
        prompt_ids: &[u32],
        output_ids: &[u32],
        banned: &[u32],
    ) -> Result<Sampled, SamplingError> {
        // `sample` never re-enters itself, so the borrow cannot already be taken.
        SCRATCH.with_borrow_mut(|scratch| self.sample_with(scratch, logits, prompt_ids, output_ids, banned))
    }

    fn sample_with(
        &mut self,
        scratch: &mut Scratch,
        logits: &[f32],
        prompt_ids: &[u32],
        output_ids: &[u32],
        banned: &[u32],
    ) -> Result<Sampled, SamplingError> {
        let work = &mut scratch.work;
        work.clear();
        work.extend_from_slice(logits);
        scratch.penalizer.apply(work, &self.params, prompt_ids, output_ids);
        for &id in banned {
            if let Some(logit) = work.get_mut(id as usize) {
                *logit = f32::NEG_INFINITY;
            }
        }
        let (argmax, max) = sanitize_and_argmax(work).ok_or(SamplingError::NoFiniteLogits)?;

        // Fills the draw's weights at temperature 1 on the way.
        let t1_total = fill_weights(work, max, 1.0, scratch.draw.weights_mut());
        // log p = (x - max) - ln(sum): subtracting `max` first keeps precision when
        // the logits are huge (max + ln(sum) would round back to max).
        let log_sum = t1_total.ln() as f32;
        let token = if self.params.is_greedy() {
            argmax as u32
        } else {
            let draw_scratch = &mut scratch.draw;
            draw(work, (argmax, max), &self.params, draw_scratch, t1_total, &mut self.rng)
        };

        let mut top_logprobs = Vec::new();
        if let Some(n) = self.params.logprobs {
            top_n_into(work, n, &mut top_logprobs);
            for (_, x) in &mut top_logprobs {
                *x = (*x - max) - log_sum;
            }
        }
        Ok(Sampled { token, logprob: (work[token as usize] - max) - log_sum, top_logprobs })
    }
}

/// OS randomness, or, should the OS refuse, a seed from the clock and the address of
/// a local: worse randomness beats failing a request.
fn os_seeded_rng() -> StdRng {
    StdRng::try_from_os_rng().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        StdRng::seed_from_u64(nanos ^ (&local as *const u8 as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn seeded(params: SamplingParams, seed: u64) -> Sampler {
        Sampler::new(&SamplingParams { seed: Some(seed), ..params })
    }

    fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..vocab).map(|_| rng.random_range(-10.0..10.0)).collect()
    }

    fn argmax(v: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best as u32
    }

    fn softmax(v: &[f32], temperature: f32) -> Vec<f64> {
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = v.iter().map(|&x| f64::from((x - m) / temperature).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    fn frequencies(sampler: &mut Sampler, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(logits, &[], &[]).unwrap().token as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// ln of [0.5, 0.3, 0.15, 0.05]: easy to reason about by hand.
    fn four_probs() -> Vec<f32> {
        [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(&SamplingParams::default());
        for seed in 0..20 {
            let logits = random_logits(1000, seed);
            assert_eq!(s.sample(&logits, &[], &[]).unwrap().token, argmax(&logits));
        }
        assert_eq!(s.sample(&[1.0, 3.0, 0.0, 3.0], &[], &[]).unwrap().token, 1);
    }

    #[test]
    fn tiny_temperature_behaves_as_argmax() {
        let mut logits = random_logits(500, 9);
        let want = argmax(&logits);
        // Random logits can nearly tie; a 0.1 gap is e^-100 at T = 1e-3.
        logits[want as usize] += 0.1;
        for temperature in [1e-6, 1e-3] {
            let mut s = seeded(SamplingParams { temperature, ..Default::default() }, 5);
            for _ in 0..200 {
                assert_eq!(s.sample(&logits, &[], &[]).unwrap().token, want, "{temperature}");
            }
        }
    }

    #[test]
    fn top_k_one_is_argmax_whatever_the_seed() {
        let logits = random_logits(2000, 1);
        let want = argmax(&logits);
        for seed in 0..50 {
            let params = SamplingParams { temperature: 1.5, top_k: 1, ..Default::default() };
            assert_eq!(seeded(params, seed).sample(&logits, &[], &[]).unwrap().token, want);
        }
    }

    #[test]
    fn tiny_top_p_is_argmax() {
        let logits = random_logits(2000, 2);
        let want = argmax(&logits);
        let params = SamplingParams { temperature: 2.0, top_p: 1e-6, ..Default::default() };
        let mut s = seeded(params, 0);
        for _ in 0..100 {
            assert_eq!(s.sample(&logits, &[], &[]).unwrap().token, want);
        }
    }

    #[test]
    fn seed_reproduces_and_different_seeds_differ() {
        let logits = random_logits(100, 4).iter().map(|x| x * 0.2).collect::<Vec<_>>();
        let params = SamplingParams { temperature: 1.0, top_p: 0.95, ..Default::default() };
        let run = |seed| {
            let mut s = seeded(params.clone(), seed);
            (0..50).map(|_| s.sample(&logits, &[], &[]).unwrap().token).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn temperature_one_matches_softmax_and_temperature_sharpens() {
        let logits = [1.0f32, 0.0, 2.0, -1.0, 0.5];
        for temperature in [1.0f32, 0.5] {
            let mut s = seeded(SamplingParams { temperature, ..Default::default() }, 11);
            let got = frequencies(&mut s, &logits, 20_000);
            let want = softmax(&logits, temperature);
            assert!(max_abs_diff(&got, &want) < 0.02, "T={temperature}: {got:?} vs {want:?}");
        }
    }

    #[test]
    fn top_k_top_p_min_p_renormalise_over_survivors() {
        let logits = four_probs();
        let cases = [
            (SamplingParams { top_k: 2, ..Default::default() }, [0.625, 0.375, 0.0, 0.0]),
            // Nucleus 0.7: 0.5 is not enough, 0.5 + 0.3 is.
            (SamplingParams { top_p: 0.7, ..Default::default() }, [0.625, 0.375, 0.0, 0.0]),
            // After top-k 3 renormalises, 0.5 + 0.3 is 0.842 >= 0.83 (unnormalised 0.8
            // would keep a third token).
            (SamplingParams { top_p: 0.83, top_k: 3, ..Default::default() }, [0.625, 0.375, 0.0, 0.0]),
            // min_p 0.5 keeps p >= 0.25; 0.25 keeps p >= 0.125.
            (SamplingParams { min_p: 0.5, ..Default::default() }, [0.625, 0.375, 0.0, 0.0]),
            (
                SamplingParams { min_p: 0.25, ..Default::default() },
                [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
            ),
            (
                SamplingParams { min_p: 0.25, top_k: 3, top_p: 0.99, ..Default::default() },
                [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
            ),
        ];
        for (params, want) in cases {
            let mut s = seeded(SamplingParams { temperature: 1.0, ..params.clone() }, 21);
            let got = frequencies(&mut s, &logits, 20_000);
            assert!(max_abs_diff(&got, &want) < 0.02, "{params:?}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!(w > 0.0 || *g == 0.0, "{params:?} drew a filtered token: {got:?}");
            }
        }
    }

    #[test]
    fn repetition_penalty_moves_the_argmax() {
        let logits = [2.0f32, 1.9, -3.0];
        let mut plain = Sampler::new(&SamplingParams::default());
        assert_eq!(plain.sample(&logits, &[0], &[]).unwrap().token, 0);
        let params = SamplingParams { repetition_penalty: 1.1, ..Default::default() };
        let mut s = Sampler::new(&params);
        assert_eq!(s.sample(&logits, &[0], &[]).unwrap().token, 1);
        assert_eq!(s.sample(&logits, &[], &[0, 0]).unwrap().token, 1);
    }

    #[test]
    fn presence_frequency_change_choice_and_logprob_by_hand() {
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logprobs: Some(2),
            ..Default::default()
        };
        let mut s = Sampler::new(&params);
        // Token 0: 1.0 - (0.25 * 2 + 0.5) = 0.0; token 1 stays 1.0, and the prompt's
        // token 1 is not penalised.
        let got = s.sample(&[1.0, 1.0], &[1, 1], &[0, 0]).unwrap();
        assert_eq!(got.token, 1);
        let lse = (0f32.exp() + 1f32.exp()).ln();
        assert!((got.logprob - (1.0 - lse)).abs() < 1e-6);
        assert_eq!(got.top_logprobs[1].0, 0);
        assert!((got.top_logprobs[1].1 - (0.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn logprobs_are_log_softmax_before_temperature_and_truncation() {
        let logits = random_logits(16, 8);
        let want = softmax(&logits, 1.0);
        let params = SamplingParams {
            temperature: 0.3,
            top_k: 3,
            top_p: 0.9,
            logprobs: Some(16),
            ..Default::default()
        };
        let mut s = seeded(params, 2);
        for _ in 0..20 {
            let got = s.sample(&logits, &[], &[]).unwrap();
            assert!((f64::from(got.logprob) - want[got.token as usize].ln()).abs() < 1e-5);
            assert_eq!(got.top_logprobs.len(), 16);
            let mass: f64 = got.top_logprobs.iter().map(|&(_, lp)| f64::from(lp).exp()).sum();
            assert!((mass - 1.0).abs() < 1e-5, "{mass}");
            assert!(got.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
            for &(id, lp) in &got.top_logprobs {
                assert!((f64::from(lp) - want[id as usize].ln()).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn banned_tokens_are_never_chosen_nor_listed_and_the_rest_renormalise() {
        let logits = [3.0f32, 1.0, 1.0, 2.0];
        let params = SamplingParams { logprobs: Some(4), ..Default::default() };
        let got = Sampler::new(&params).sample_banning(&logits, &[], &[], &[0, 9]).unwrap();
        assert_eq!(got.token, 3, "the best allowed token");
        let lse = (1.0f32.exp() * 2.0 + 2.0f32.exp()).ln();
        assert!((got.logprob - (2.0 - lse)).abs() < 1e-6, "{got:?}");
        assert_eq!(got.top_logprobs.iter().map(|&(id, _)| id).collect::<Vec<_>>(), [3, 1, 2]);
        for seed in 0..20 {
            let hot = SamplingParams { temperature: 5.0, ..Default::default() };
            assert_ne!(seeded(hot, seed).sample_banning(&logits, &[], &[], &[0]).unwrap().token, 0);
        }
    }

    #[test]
    fn logprobs_zero_reports_only_the_chosen_token() {
        let params = SamplingParams { logprobs: Some(0), ..Default::default() };
        let got = Sampler::new(&params).sample(&[0.0, 0.0], &[], &[]).unwrap();
        assert!(got.top_logprobs.is_empty());
        assert!((got.logprob - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn nan_and_inf_logits_do_not_panic() {
        let nan_mixed = [f32::NAN, 1.0, f32::NAN, 0.0];
        for temperature in [0.0, 1.0] {
            let params = SamplingParams { temperature, top_k: 3, ..Default::default() };
            let mut s = seeded(params, 0);
            for _ in 0..50 {
                let got = s.sample(&nan_mixed, &[], &[]).unwrap();
                assert!(got.token == 1 || got.token == 3, "{got:?}");
                assert!(got.logprob.is_finite());
            }
            let got = s.sample(&[0.0, f32::INFINITY, 5.0], &[], &[]).unwrap();
            assert_eq!((got.token, got.logprob), (1, 0.0));
            for bad in [&[f32::NAN, f32::NEG_INFINITY][..], &[]] {
                assert_eq!(s.sample(bad, &[], &[]), Err(SamplingError::NoFiniteLogits));
            }
        }
    }

    #[test]
    fn huge_logits_do_not_overflow_the_normaliser() {
        let params = SamplingParams { logprobs: Some(1), ..Default::default() };
        let got = Sampler::new(&params).sample(&[1e30, 1e30, -1e30], &[], &[]).unwrap();
        assert_eq!(got.token, 0);
        assert!((got.logprob - 0.5f32.ln()).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn unseeded_samplers_are_independent() {
        let logits = vec![0.0f32; 1000];
        let params = SamplingParams { temperature: 1.0, ..Default::default() };
        let draw = || {
            let mut s = Sampler::new(&params);
            (0..8).map(|_| s.sample(&logits, &[], &[]).unwrap().token).collect::<Vec<_>>()
        };
        assert_ne!(draw(), draw());
    }
}
