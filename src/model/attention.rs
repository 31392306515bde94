//! Causal grouped-query attention over the paged KV cache, for every token of a
//! step at once. Each token attends to its own sequence's positions `0..=pos`,
//! read through that sequence's block table, so sequences at different positions
//! share one call. Work is spread over tokens with rayon.

use rayon::prelude::*;

use super::kv_cache::{LayerKv, PagedKvCache};

/// One sequence's tokens inside the flattened step.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan<'a> {
    /// Index of the sequence's first token in the step's token rows.
    pub first_row: usize,
    pub len: usize,
    pub start_pos: usize,
    pub block_table: &'a [u32],
}

pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Stores the step's K and V rows (`kv_dim` values per token) in the cache.
pub fn write_kv(cache: &mut PagedKvCache, layer: usize, spans: &[SeqSpan], k: &[f32], v: &[f32]) {
    let kv_dim = cache.kv_dim();
    let slots: Vec<usize> = spans
        .iter()
        .flat_map(|s| (0..s.len).map(move |i| (s, i)))
        .map(|(s, i)| cache.slot(s.block_table, s.start_pos + i))
        .collect();
    let LayerKv { k: kc, v: vc } = cache.layer_mut(layer);
    for (row, slot) in slots.into_iter().enumerate() {
        let (src, dst) = (row * kv_dim..(row + 1) * kv_dim, slot * kv_dim..(slot + 1) * kv_dim);
        kc[dst.clone()].copy_from_slice(&k[src.clone()]);
        vc[dst].copy_from_slice(&v[src]);
    }
}

/// `out[row]` = softmax(q·Kᵀ / √d) · V for every token row of the step.
pub fn attend(
    cache: &PagedKvCache,
    layer: usize,
    spans: &[SeqSpan],
    shape: &AttentionShape,
    q: &[f32],
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let q_dim = shape.num_heads * d;
    let kv_dim = shape.num_kv_heads * d;
    let group = shape.num_heads / shape.num_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let kv = cache.layer(layer);
    // (span, position) of every row, so rows can be processed independently.
    let rows: Vec<(&SeqSpan, usize)> =
        spans.iter().flat_map(|s| (0..s.len).map(move |i| (s, s.start_pos + i))).collect();

    out.par_chunks_mut(q_dim).zip(q.par_chunks(q_dim)).zip(rows.par_iter()).for_each_init(
        || (Vec::new(), Vec::new()),
        |(scores, slots), ((out_row, q_row), &(span, pos))| {
            slots.clear();
            slots.extend((0..=pos).map(|p| cache.slot(span.block_table, p)));
            let geo = RowGeometry { head_dim: d, kv_dim, group, num_heads: shape.num_heads, scale };
            attend_row(&kv.k, &kv.v, slots, &geo, q_row, out_row, scores);
        },
    );
}

struct RowGeometry {
    head_dim: usize,
    kv_dim: usize,
    group: usize,
    num_heads: usize,
    scale: f32,
}

/// One query row (all heads) against its sequence's cached positions. Compiled for
/// AVX-512 and AVX2 as well as the baseline, picked at run time; the arithmetic is
/// the same in every version (no reassociation), so results do not depend on it.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn attend_row(
    k: &[f32],
    v: &[f32],
    slots: &[usize],
    geo: &RowGeometry,
    q_row: &[f32],
    out_row: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = geo.head_dim;
    scores.resize(slots.len(), 0.0);
    for h in 0..geo.num_heads {
        let kvh = h / geo.group;
        let qh = &q_row[h * d..(h + 1) * d];
        let mut max = f32::NEG_INFINITY;
        for (s, &slot) in scores.iter_mut().zip(slots) {
            let off = slot * geo.kv_dim + kvh * d;
            *s = dot(qh, &k[off..off + d]) * geo.scale;
            max = max.max(*s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let oh = &mut out_row[h * d..(h + 1) * d];
        oh.fill(0.0);
        let inv = 1.0 / sum;
        for (&w, &slot) in scores.iter().zip(slots) {
            let off = slot * geo.kv_dim + kvh * d;
            axpy(oh, w * inv, &v[off..off + d]);
        }
    }
}

/// Dot product with eight independent accumulators, so the compiler can keep
/// them in one vector register without reordering a single float sum.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{LlamaConfig, RopeLayout, RopeScaling};

    fn cfg() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            vocab_size: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_layout: RopeLayout::Halves,
            max_position: 64,
        }
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Dense attention for one sequence, the textbook way.
    fn reference(q: &[f32], k: &[f32], v: &[f32], t: usize, c: &LlamaConfig) -> Vec<f32> {
        let (d, qd, kd) = (c.head_dim, c.q_dim(), c.kv_dim());
        let group = c.num_heads / c.num_kv_heads;
        let mut out = vec![0.0; t * qd];
        for i in 0..t {
            for h in 0..c.num_heads {
                let kvh = h / group;
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d).map(|x| (q[i * qd + h * d + x] * k[j * kd + kvh * d + x]) as f64).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    out[i * qd + h * d + x] =
                        (0..=i).map(|j| e[j] / z * v[j * kd + kvh * d + x] as f64).sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn paged_attention_matches_dense_in_chunks_and_scattered_blocks() {
        let c = cfg();
        let (t, bs) = (11, 4);
        let (q, k, v) = (pseudo(t * c.q_dim(), 1), pseudo(t * c.kv_dim(), 2), pseudo(t * c.kv_dim(), 3));
        let want = reference(&q, &k, &v, t, &c);
        let shape = AttentionShape { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        let mut cache = PagedKvCache::new(&c, bs, 8);
        // Non-contiguous, out-of-order blocks; prefill 7 tokens then 4 more.
        let table = [5u32, 0, 6];
        let mut got = vec![0.0; t * c.q_dim()];
        for (lo, hi) in [(0, 7), (7, 11)] {
            let span = SeqSpan { first_row: 0, len: hi - lo, start_pos: lo, block_table: &table };
            let (kd, qd) = (c.kv_dim(), c.q_dim());
            write_kv(&mut cache, 0, &[span], &k[lo * kd..hi * kd], &v[lo * kd..hi * kd]);
            attend(&cache, 0, &[span], &shape, &q[lo * qd..hi * qd], &mut got[lo * qd..hi * qd]);
        }
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn sequences_in_one_step_do_not_see_each_other() {
        let c = cfg();
        let shape = AttentionShape { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        let (q, k, v) = (pseudo(3 * c.q_dim(), 4), pseudo(3 * c.kv_dim(), 5), pseudo(3 * c.kv_dim(), 6));
        let mut cache = PagedKvCache::new(&c, 4, 4);
        let (ta, tb) = ([0u32], [1u32]);
        let spans = [
            SeqSpan { first_row: 0, len: 2, start_pos: 0, block_table: &ta },
            SeqSpan { first_row: 2, len: 1, start_pos: 0, block_table: &tb },
        ];
        write_kv(&mut cache, 0, &spans, &k, &v);
        let mut out = vec![0.0; 3 * c.q_dim()];
        attend(&cache, 0, &spans, &shape, &q, &mut out);
        // A one-token sequence attends only to itself: output = its own V per head.
        let (qd, kd) = (c.q_dim(), c.kv_dim());
        for h in 0..4 {
            let kvh = h / 2;
            for x in 0..8 {
                assert!((out[2 * qd + h * 8 + x] - v[2 * kd + kvh * 8 + x]).abs() < 1e-6);
            }
        }
    }
}
