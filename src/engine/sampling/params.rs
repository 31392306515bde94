//! Sampling parameters of one request and their range checks.
//!
//! `validate` is the only gate: the API calls it before a request reaches the engine,
//! and each error names the OpenAI field so the API can answer 400 with `param`.

use super::SamplingError;

/// Largest number of alternatives `logprobs` may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;
/// A `logit_bias` value's bound either way (OpenAI's): -100 bans a token in effect,
/// 100 forces it.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below 1e-5) means greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0 = off; keeps tokens whose probability is at least `min_p` times the best one's.
    pub min_p: f32,
    /// 1.0 = off; >1 discourages every token already in the prompt or output.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// None = seeded from OS randomness.
    pub seed: Option<u64>,
    /// How many top alternatives to report, 0..=20; Some(0) = only the chosen token's.
    pub logprobs: Option<usize>,
    /// `(token id, bias)` added to those tokens' logits before the penalties, by id
    /// and each id once; empty = off.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    /// Greedy decoding with every filter and penalty off.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Checks every range; comparisons are written so that NaN fails them.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(invalid("min_p", format!("must be in [0, 1], got {}", self.min_p)));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(invalid(
                "repetition_penalty",
                format!("must be a finite number > 0, got {}", self.repetition_penalty),
            ));
        }
        for (param, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return Err(invalid(param, format!("must be in [-2, 2], got {value}")));
            }
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return Err(invalid("logprobs", format!("must be at most {MAX_LOGPROBS}, got {n}")));
            }
        }
        if let Some(&(id, bias)) =
            self.logit_bias.iter().find(|(_, b)| !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(b))
        {
            return Err(invalid(
                "logit_bias",
                format!("token {id}'s bias must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], got {bias}"),
            ));
        }
        if self.logit_bias.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(invalid("logit_bias", "token ids must be sorted and distinct".to_string()));
        }
        Ok(())
    }

    pub(super) fn is_greedy(&self) -> bool {
        // NaN lands here too, so an unvalidated NaN temperature degrades to argmax.
        self.temperature.is_nan() || self.temperature < 1e-5
    }
}

fn invalid(param: &'static str, message: String) -> SamplingError {
    SamplingError::InvalidParam { param, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(p: SamplingParams) -> Option<&'static str> {
        p.validate().err().and_then(|e| e.param())
    }

    #[test]
    fn default_is_greedy_and_valid() {
        let p = SamplingParams::default();
        assert!(p.is_greedy());
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn each_bad_value_names_its_param() {
        let base = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: f32::NAN, ..base() }, "temperature"),
            (SamplingParams { temperature: -0.1, ..base() }, "temperature"),
            (SamplingParams { temperature: f32::INFINITY, ..base() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..base() }, "top_p"),
            (SamplingParams { top_p: 1.01, ..base() }, "top_p"),
            (SamplingParams { top_p: f32::NAN, ..base() }, "top_p"),
            (SamplingParams { min_p: -0.01, ..base() }, "min_p"),
            (SamplingParams { min_p: 1.5, ..base() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..base() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: -1.0, ..base() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: 2.5, ..base() }, "presence_penalty"),
            (SamplingParams { presence_penalty: f32::NAN, ..base() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: -2.01, ..base() }, "frequency_penalty"),
            (SamplingParams { logprobs: Some(21), ..base() }, "logprobs"),
            (SamplingParams { logit_bias: vec![(3, 100.5)], ..base() }, "logit_bias"),
            (SamplingParams { logit_bias: vec![(3, f32::NAN)], ..base() }, "logit_bias"),
            (SamplingParams { logit_bias: vec![(3, -101.0)], ..base() }, "logit_bias"),
            (SamplingParams { logit_bias: vec![(5, 1.0), (5, 2.0)], ..base() }, "logit_bias"),
        ];
        for (params, want) in cases {
            let err = params.validate().expect_err(want);
            assert_eq!(err.param(), Some(want), "{params:?}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let ok = SamplingParams {
            temperature: 2.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 1.0,
            repetition_penalty: 0.5,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            seed: Some(7),
            logprobs: Some(20),
            logit_bias: vec![(0, -100.0), (9, 100.0)],
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(param_of(SamplingParams { min_p: 0.0, logprobs: Some(0), ..ok }), None);
    }
}
