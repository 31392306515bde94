//! The random draw: temperature, then top-k → top-p → min-p, then one uniform number.
//!
//! Nothing sorts the vocabulary. Weights are `exp((logit - max) / temperature)`, so
//! the best token weighs exactly 1 and min-p is a plain `weight >= min_p` test.
//! - top-k: a one-pass scan for small k, a partial selection for large k;
//! - top-p: a weighted quickselect finds the smallest best-first set reaching the
//!   target mass in expected linear time. Without top-k it first drops tokens lighter
//!   than `(1 - top_p) * total / vocab`: together they weigh at most `(1 - top_p) *
//!   total`, so none of them can be in the nucleus, and peaked distributions shrink
//!   from the whole vocabulary to a few hundred candidates;
//! - the kept set is never ordered: drawing needs only its weights.

use std::cmp::Ordering;

use rand::Rng;

use super::logprobs::top_n_into;
use super::SamplingParams;
use crate::fastexp::{fill_weights, sum_f64};

/// Up to this k, top-k scans once keeping a sorted list; above it, selects.
const SCAN_TOP_K: usize = 64;
/// Below this many candidates the nucleus search just sorts.
const SORT_BELOW: usize = 32;

/// Buffers reused across draws.
#[derive(Debug, Default)]
pub(super) struct DrawScratch {
    /// Per vocabulary id.
    weights: Vec<f32>,
    /// Candidate ids.
    ids: Vec<u32>,
    top: Vec<(u32, f32)>,
}

impl DrawScratch {
    pub(super) fn weights_mut(&mut self) -> &mut Vec<f32> {
        &mut self.weights
    }
}

/// Draws one token id. `logits` must be sanitised (no NaN), `max` their finite
/// maximum and `argmax` its first index (the answer if every weight rounds to 0).
/// On entry `scratch.weights` must hold `exp(logit - max)` (the log normaliser's
/// pass) summing to `t1_total`, reused as is at temperature 1.
pub(super) fn draw(
    logits: &[f32],
    (argmax, max): (usize, f32),
    params: &SamplingParams,
    scratch: &mut DrawScratch,
    t1_total: f64,
    rng: &mut impl Rng,
) -> u32 {
    let DrawScratch { weights, ids, top } = scratch;
    let vocab = logits.len();
    let mut total = t1_total;
    if params.temperature != 1.0 {
        total = fill_weights(logits, max, 1.0 / params.temperature, weights);
    }
    let top_k = (params.top_k > 0 && params.top_k < vocab).then_some(params.top_k);
    let top_p = params.top_p < 1.0;
    let min_p = params.min_p;

    if top_k.is_none() && !top_p {
        if min_p > 0.0 {
            for w in weights.iter_mut() {
                *w = if *w >= min_p { *w } else { 0.0 };
            }
            total = sum_f64(weights);
        }
        return pick_dense(weights, total, rng).map_or(argmax as u32, |i| i as u32);
    }

    ids.clear();
    let total = match top_k {
        Some(k) if k <= SCAN_TOP_K => {
            top_n_into(logits, k, top);
            ids.extend(top.iter().map(|&(id, _)| id));
            ids.iter().map(|&i| f64::from(weights[i as usize])).sum()
        }
        Some(k) => {
            ids.extend(0..vocab as u32);
            ids.select_nth_unstable_by(k - 1, |&a, &b| best_first(logits, a, b));
            ids.truncate(k);
            ids.iter().map(|&i| f64::from(weights[i as usize])).sum()
        }
        None => {
            // Slightly under the bound, so rounding cannot drop a nucleus member.
            let floor = ((1.0 - f64::from(params.top_p)) * total / vocab as f64 * 0.999) as f32;
            ids.extend((0..vocab as u32).filter(|&i| weights[i as usize] >= floor));
            total
        }
    };
    if top_p {
        let n = nucleus_len(ids, logits, weights, f64::from(params.top_p) * total);
        ids.truncate(n);
    }
    let chosen = pick(ids.iter().map(|&i| (i, weights[i as usize])), min_p, rng);
    chosen.unwrap_or(argmax as u32)
}

/// Best logit first; lower id first on ties, so the order is fully determined.
fn best_first(logits: &[f32], a: u32, b: u32) -> Ordering {
    logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b))
}

/// Reorders `ids` so that its first n entries are the n best, for the smallest n
/// whose weight reaches `target` (at least 1 when `ids` is non-empty), and returns n.
///
/// Invariant of the loop: `ids[..lo]` are the `lo` best, weighing `kept < target`,
/// and the answer lies in `lo + 1 ..= hi`.
fn nucleus_len(ids: &mut [u32], logits: &[f32], weights: &[f32], target: f64) -> usize {
    let cmp = |a: &u32, b: &u32| best_first(logits, *a, *b);
    let weight = |i: u32| f64::from(weights[i as usize]);
    let (mut lo, mut hi, mut kept) = (0usize, ids.len(), 0.0f64);
    while hi - lo > SORT_BELOW {
        let mid = lo + (hi - lo) / 2;
        ids[lo..hi].select_nth_unstable_by(mid - lo, cmp);
        let upper: f64 = ids[lo..=mid].iter().map(|&i| weight(i)).sum();
        if kept + upper >= target {
            hi = mid + 1;
        } else {
            kept += upper;
            lo = mid + 1;
        }
    }
    ids[lo..hi].sort_unstable_by(cmp);
    for (j, &i) in ids.iter().enumerate().take(hi).skip(lo) {
        kept += weight(i);
        if kept >= target {
            return j + 1;
        }
    }
    // Summation order made the target just unreachable: keep all that is left.
    hi.max(1).min(ids.len())
}

/// One id drawn with probability proportional to its weight among those with
/// `weight >= min_p`; None if they all weigh 0.
fn pick(candidates: impl Iterator<Item = (u32, f32)> + Clone, min_p: f32, rng: &mut impl Rng) -> Option<u32> {
    let kept = |w: f32| if w >= min_p { w } else { 0.0 };
    let total: f64 = candidates.clone().map(|(_, w)| f64::from(kept(w))).sum();
    let u = rng.random::<f64>() * total;
    let mut cum = 0.0f64;
    let mut last = None;
    for (id, w) in candidates {
        let w = kept(w);
        if w > 0.0 {
            cum += f64::from(w);
            last = Some(id);
            if u < cum {
                return Some(id);
            }
        }
    }
    last
}

/// Index drawn with probability proportional to `weights[i]` over the whole
/// vocabulary (`total` their sum). Walks 64-entry blocks by their vectorised sums and
/// only the block holding the draw one entry at a time; None if all weigh 0.
fn pick_dense(weights: &[f32], total: f64, rng: &mut impl Rng) -> Option<usize> {
    const BLOCK: usize = 64;
    let u = rng.random::<f64>() * total;
    let mut cum = 0.0f64;
    for (b, block) in weights.chunks(BLOCK).enumerate() {
        let block_sum = sum_f64(block);
        if cum + block_sum > u {
            let mut inner = cum;
            for (j, &w) in block.iter().enumerate() {
                inner += f64::from(w);
                if w > 0.0 && u < inner {
                    return Some(b * BLOCK + j);
                }
            }
        }
        // Also reached when the block's two sums round differently: carry on.
        cum += block_sum;
    }
    weights.iter().rposition(|&w| w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The reference definition: sort everything, take the shortest prefix.
    fn nucleus_by_sorting(logits: &[f32], weights: &[f32], target: f64) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        ids.sort_by(|&a, &b| best_first(logits, a, b));
        let mut cum = 0.0;
        let n = ids
            .iter()
            .position(|&i| {
                cum += f64::from(weights[i as usize]);
                cum >= target
            })
            .map_or(ids.len(), |j| j + 1);
        let mut kept = ids[..n].to_vec();
        kept.sort_unstable();
        kept
    }

    #[test]
    fn nucleus_len_agrees_with_sorting() {
        let mut rng = StdRng::seed_from_u64(7);
        for trial in 0..200 {
            let len = [1, 5, 33, 100, 1000][trial % 5];
            // Coarse logits make many ties, which the id tie-break must settle alike.
            let logits: Vec<f32> = (0..len).map(|_| rng.random_range(0..40) as f32 * 0.25).collect();
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut weights = Vec::new();
            let total = fill_weights(&logits, max, 1.0, &mut weights);
            let target = rng.random_range(0.0..1.0) * total;
            let want = nucleus_by_sorting(&logits, &weights, target);
            let mut ids: Vec<u32> = (0..len as u32).collect();
            let n = nucleus_len(&mut ids, &logits, &weights, target);
            let mut got = ids[..n].to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "trial {trial} len {len}");
        }
    }

    #[test]
    fn pick_respects_min_p_and_zero_weights() {
        let mut rng = StdRng::seed_from_u64(1);
        let cands = [(10u32, 0.0f32), (11, 1.0), (12, 0.0), (13, 0.6), (14, 0.3)];
        for _ in 0..300 {
            let id = pick(cands.iter().copied(), 0.5, &mut rng).unwrap();
            assert!(id == 11 || id == 13, "{id}");
        }
        assert_eq!(pick([(1u32, 0.0f32)].iter().copied(), 0.0, &mut rng), None);
    }

    #[test]
    fn pick_dense_matches_weights_across_blocks() {
        // Mass sits in three blocks; block 2 entirely zero must never be hit.
        let mut weights = vec![0.0f32; 300];
        weights[5] = 1.0;
        weights[70] = 2.0;
        weights[299] = 1.0;
        let total = sum_f64(&weights);
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = [0usize; 300];
        for _ in 0..20_000 {
            counts[pick_dense(&weights, total, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[5] + counts[70] + counts[299], 20_000);
        for (i, p) in [(5, 0.25), (70, 0.5), (299, 0.25)] {
            assert!((counts[i] as f64 / 20_000.0 - p).abs() < 0.02, "{i}: {}", counts[i]);
        }
        assert_eq!(pick_dense(&[0.0; 10], 0.0, &mut rng), None);
    }

    /// A nearly flat 5000-token distribution: the nucleus is thousands of tokens, the
    /// pre-filter keeps nearly everything, and the draws must stay inside the cut.
    #[test]
    fn top_p_on_a_flat_distribution_stays_inside_the_reference_cut() {
        let vocab = 5000usize;
        // Token i has logit -i * 1e-4: best-first order is id order.
        let logits: Vec<f32> = (0..vocab).map(|i| -(i as f32) * 1e-4).collect();
        let top_p = 0.5f32;
        let mut weights = Vec::new();
        let total = fill_weights(&logits, 0.0, 1.0, &mut weights);
        let cut = nucleus_by_sorting(&logits, &weights, f64::from(top_p) * total).len();

        let params = SamplingParams { temperature: 1.0, top_p, ..Default::default() };
        let mut scratch = DrawScratch { weights, ..Default::default() };
        let mut rng = StdRng::seed_from_u64(3);
        let draws: Vec<u32> =
            (0..3000).map(|_| draw(&logits, (0, 0.0), &params, &mut scratch, total, &mut rng)).collect();
        let max_drawn = *draws.iter().max().unwrap() as usize;
        assert!(max_drawn < cut, "drew {max_drawn}, nucleus ends at {cut}");
        assert!(max_drawn + 20 > cut, "never reached the nucleus tail: {max_drawn} vs {cut}");
    }

    #[test]
    fn large_top_k_uses_selection_and_keeps_exactly_k() {
        let vocab = 1000usize;
        let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7919) % vocab) as f32 * -0.001).collect();
        let k = 300;
        // The best 300 are the ids whose (i * 7919) % 1000 < 300.
        // Temperature 2 makes `draw` compute its own weights.
        let params = SamplingParams { temperature: 2.0, top_k: k, ..Default::default() };
        let mut scratch = DrawScratch::default();
        let mut rng = StdRng::seed_from_u64(5);
        let argmax = (0, 0.0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            let id = draw(&logits, argmax, &params, &mut scratch, 0.0, &mut rng) as usize;
            assert!((id * 7919) % vocab < k, "{id} is outside the top {k}");
            seen.insert(id);
        }
        assert!(seen.len() > 250, "only {} distinct of {k}", seen.len());
    }
}
