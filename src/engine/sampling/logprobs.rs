//! Log-softmax pieces: logit clean-up (with the argmax) and the top-N alternatives.
//!
//! Logprobs are always taken from the penalised logits before temperature and
//! truncation, so they describe the model (plus penalties), not the sampling knobs.

/// Replaces NaN by -inf and +inf by the largest finite value (so `x - max` never
/// becomes NaN), and returns the first index holding the maximum with that maximum, or
/// None when nothing is finite.
pub(super) fn sanitize_and_argmax(logits: &mut [f32]) -> Option<(usize, f32)> {
    // Lane-wise maxima keep the clean-up pass vectorisable; the index is found after.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = logits.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = sanitize(*x);
            *lane = if *x > *lane { *x } else { *lane };
        }
    }
    for x in chunks.into_remainder() {
        *x = sanitize(*x);
        lanes[0] = if *x > lanes[0] { *x } else { lanes[0] };
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if max == f32::NEG_INFINITY {
        return None;
    }
    // First match = lowest id on ties.
    logits.iter().position(|&x| x == max).map(|i| (i, max))
}

#[inline(always)]
fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else if x > f32::MAX {
        f32::MAX
    } else {
        x
    }
}

/// Writes the `n` largest logits as `(id, logit)` into `out`, best first, lower id
/// first on ties; tokens at -inf have probability zero and are never listed.
/// One pass: almost every token fails the single comparison with the current n-th
/// best, so this is O(vocab) for the small n it is used with.
pub(super) fn top_n_into(logits: &[f32], n: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    if n == 0 {
        return;
    }
    out.reserve(n + 1);
    let mut floor = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x <= floor {
            continue;
        }
        let pos = out.partition_point(|&(_, y)| y >= x);
        out.insert(pos, (i as u32, x));
        if out.len() > n {
            out.pop();
        }
        if out.len() == n {
            floor = out[n - 1].1;
        }
    }
}

/// The log-softmax of raw `logits` at `token`, and the `top` most likely entries
/// with theirs: a prompt token's logprob as the model gives it (no penalties, which
/// belong to generation). The sum runs in f64 over the same clean-up as sampling.
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let mut clean = logits.to_vec();
    let Some((_, max)) = sanitize_and_argmax(&mut clean) else {
        return (f32::NEG_INFINITY, Vec::new());
    };
    let sum: f64 = clean.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    let lp = |x: f32| (x - max) - log_sum;
    let mut alternatives = Vec::new();
    top_n_into(&clean, top, &mut alternatives);
    for (_, x) in &mut alternatives {
        *x = lp(*x);
    }
    (lp(clean.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY)), alternatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_logprobs_are_a_log_softmax() {
        let logits = [1.0f32, 3.0, 2.0, f32::NAN];
        let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln() as f32;
        let (lp, top) = token_logprobs(&logits, 2, 2);
        assert!((lp - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(token_logprobs(&logits, 3, 0), (f32::NEG_INFINITY, Vec::new()), "NaN: probability 0");
    }

    fn top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
        let mut out = Vec::new();
        top_n_into(logits, n, &mut out);
        out
    }

    #[test]
    fn sanitize_maps_nan_and_inf_and_picks_lowest_tied_id() {
        let mut v = [1.0, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY];
        assert_eq!(sanitize_and_argmax(&mut v), Some((2, 3.0)));
        assert_eq!(v[1], f32::NEG_INFINITY);
        let mut w = [0.0, f32::INFINITY];
        assert_eq!(sanitize_and_argmax(&mut w), Some((1, f32::MAX)));
        assert_eq!(sanitize_and_argmax(&mut [f32::NAN, f32::NEG_INFINITY]), None);
        assert_eq!(sanitize_and_argmax(&mut []), None);
    }

    #[test]
    fn argmax_across_lane_boundaries_finds_the_first_maximum() {
        for len in [1usize, 7, 8, 9, 17, 100] {
            for at in [0, len / 2, len - 1] {
                let mut v: Vec<f32> = (0..len).map(|i| -(i as f32)).collect();
                v[at] = 5.0;
                if at + 3 < len {
                    v[at + 3] = 5.0;
                }
                assert_eq!(sanitize_and_argmax(&mut v), Some((at, 5.0)), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn top_n_orders_best_first_breaks_ties_by_id_and_skips_neg_inf() {
        let v = [1.0, 5.0, 3.0, 5.0, f32::NEG_INFINITY, 4.0, 5.0];
        assert_eq!(top_n(&v, 3), vec![(1, 5.0), (3, 5.0), (6, 5.0)]);
        assert_eq!(top_n(&v, 4), vec![(1, 5.0), (3, 5.0), (6, 5.0), (5, 4.0)]);
        assert_eq!(top_n(&v, 0), vec![]);
        assert_eq!(top_n(&v, 10).len(), 6);
    }
}
