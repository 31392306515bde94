//! Logit bias, then repetition, presence and frequency penalties, applied to a copy of
//! the logits.
//!
//! Logit bias (OpenAI): each listed token's bias is added to its logit.
//! Repetition (HF / llama.cpp): every distinct token of prompt + output has its logit
//! divided by the penalty if positive, multiplied if negative, once however often it
//! occurs. Presence and frequency (OpenAI): over output tokens only,
//! `logit -= frequency * count + presence`. Token ids outside the vocabulary are
//! ignored rather than trusted.

use super::SamplingParams;

/// Scratch space kept between calls so penalising allocates nothing in steady state.
#[derive(Debug, Default)]
pub(super) struct Penalizer {
    /// One bit per vocabulary entry: "already penalised for repetition in this call".
    seen: Vec<u64>,
    sorted_output: Vec<u32>,
}

impl Penalizer {
    pub(super) fn apply(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) {
        for &(id, bias) in &params.logit_bias {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit += bias;
            }
        }
        if params.repetition_penalty != 1.0 {
            self.repetition(logits, params.repetition_penalty, prompt_ids, output_ids);
        }
        if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
            self.presence_frequency(logits, params.presence_penalty, params.frequency_penalty, output_ids);
        }
    }

    fn repetition(&mut self, logits: &mut [f32], penalty: f32, prompt: &[u32], output: &[u32]) {
        let words = logits.len().div_ceil(64);
        self.seen.clear();
        self.seen.resize(words, 0);
        for &id in prompt.iter().chain(output) {
            let i = id as usize;
            let Some(logit) = logits.get_mut(i) else {
                continue;
            };
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if self.seen[word] & bit != 0 {
                continue;
            }
            self.seen[word] |= bit;
            *logit = if *logit > 0.0 { *logit / penalty } else { *logit * penalty };
        }
    }

    fn presence_frequency(&mut self, logits: &mut [f32], presence: f32, frequency: f32, output: &[u32]) {
        // Output is at most max_tokens long, so sorting it is cheaper than a
        // vocabulary-sized count table per sequence.
        self.sorted_output.clear();
        self.sorted_output.extend(output.iter().copied().filter(|&id| (id as usize) < logits.len()));
        self.sorted_output.sort_unstable();
        for run in self.sorted_output.chunk_by(|a, b| a == b) {
            let logit = &mut logits[run[0] as usize];
            *logit -= frequency * run.len() as f32 + presence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn penalise(logits: &[f32], params: &SamplingParams, prompt: &[u32], out: &[u32]) -> Vec<f32> {
        let mut v = logits.to_vec();
        Penalizer::default().apply(&mut v, params, prompt, out);
        v
    }

    #[test]
    fn repetition_divides_positive_multiplies_negative_once_per_token() {
        let params = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        // Token 0 occurs three times: still divided only once.
        let got = penalise(&[4.0, -1.0, 3.0, 0.5], &params, &[0, 1, 0], &[0]);
        assert_eq!(got, vec![2.0, -2.0, 3.0, 0.5]);
    }

    #[test]
    fn repetition_below_one_encourages() {
        let params = SamplingParams { repetition_penalty: 0.5, ..Default::default() };
        let got = penalise(&[4.0, -1.0], &params, &[], &[0, 1]);
        assert_eq!(got, vec![8.0, -0.5]);
    }

    #[test]
    fn presence_and_frequency_by_hand() {
        let params = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() };
        // Prompt tokens are not penalised; token 1 occurs 3x, token 3 once.
        let got = penalise(&[1.0, 1.0, 1.0, 1.0], &params, &[0, 2], &[1, 3, 1, 1]);
        let want = [1.0, 1.0 - (0.25 * 3.0 + 0.5), 1.0, 1.0 - (0.25 + 0.5)];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn negative_presence_raises_and_out_of_vocab_ids_are_ignored() {
        let params = SamplingParams { presence_penalty: -1.0, repetition_penalty: 1.5, ..Default::default() };
        let got = penalise(&[3.0, 0.0], &params, &[99], &[1, 1, 7]);
        assert_eq!(got, vec![3.0, 1.0]);
    }

    #[test]
    fn logit_bias_is_added_before_the_repetition_penalty_and_out_of_vocab_ids_are_ignored() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            logit_bias: vec![(0, 2.0), (1, -100.0), (9, 5.0)],
            ..Default::default()
        };
        // Token 0 (in the prompt): (4 + 2) / 2; token 1: -100 alone; token 2 untouched.
        let got = penalise(&[4.0, 1.0, 3.0], &params, &[0], &[]);
        assert_eq!(got, vec![3.0, -99.0, 3.0]);
    }

    #[test]
    fn scratch_reuse_does_not_leak_between_calls() {
        let params = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        let mut p = Penalizer::default();
        let mut a = vec![2.0; 130];
        p.apply(&mut a, &params, &[129], &[]);
        let mut b = vec![2.0; 130];
        p.apply(&mut b, &params, &[129], &[3]);
        assert_eq!(b[129], 1.0, "bit from the first call must not skip the penalty");
        assert_eq!(b[3], 1.0);
    }
}
