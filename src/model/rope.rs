//! Rotary position embeddings: the per-frequency table (with llama3, linear or
//! file-provided scaling) and its application to query/key heads in place.

use rayon::prelude::*;

use super::config::{LlamaConfig, RopeLayout, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    layout: RopeLayout,
    head_dim: usize,
    position_scale: f32,
}

/// cos/sin of every token's angles, computed once per step and shared by all layers.
pub struct RopeAngles {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAngles {
    /// The `(cos, sin)` tables, `[positions, head_dim / 2]` row-major: what a
    /// device-side rotation kernel takes.
    pub fn into_tables(self) -> (Vec<f32>, Vec<f32>) {
        (self.cos, self.sin)
    }
}

impl Rope {
    pub fn new(cfg: &LlamaConfig) -> Self {
        let d = cfg.head_dim;
        let mut inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / d as f64) as f32)
            .collect();
        let mut position_scale = 1.0;
        match &cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear(factor) => position_scale = 1.0 / factor.max(f32::MIN_POSITIVE),
            RopeScaling::FreqFactors(factors) => {
                for (f, div) in inv_freq.iter_mut().zip(factors) {
                    *f /= div;
                }
            }
            RopeScaling::Llama3(s) => {
                let old = s.original_max_position as f32;
                let low_wavelen = old / s.low_freq_factor;
                let high_wavelen = old / s.high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= s.factor;
                    } else if wavelen >= high_wavelen {
                        let smooth =
                            (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                    }
                }
            }
        }
        Self { inv_freq, layout: cfg.rope_layout, head_dim: d, position_scale }
    }

    pub fn angles(&self, positions: &[usize]) -> RopeAngles {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let p = p as f32 * self.position_scale;
            for &f in &self.inv_freq {
                let (s, c) = (p * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        RopeAngles { half, cos, sin }
    }

    /// Rotates every head of `rows` (one row of `num_heads * head_dim` per token).
    /// A prefill chunk's rows are spread over the thread pool; each row's arithmetic
    /// is the same wherever it runs.
    pub fn apply(&self, rows: &mut [f32], num_heads: usize, angles: &RopeAngles) {
        let (d, half, layout) = (self.head_dim, angles.half, self.layout);
        let width = num_heads * d;
        let rotate = |(t, row): (usize, &mut [f32])| {
            let at = t * half..(t + 1) * half;
            rotate_token(layout, row, d, &angles.cos[at.clone()], &angles.sin[at]);
        };
        if rows.len() < 2 * PARALLEL_ROWS * width {
            rows.chunks_exact_mut(width).enumerate().for_each(rotate);
        } else {
            rows.par_chunks_exact_mut(width).enumerate().with_min_len(PARALLEL_ROWS).for_each(rotate);
        }
    }
}

/// Token rows below which [`Rope::apply`] stays on the calling thread: a decode
/// batch's rows take less time than waking another thread.
const PARALLEL_ROWS: usize = 32;

/// Rotates the heads of one token's row (`head_dim` values each) by its angles.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn rotate_token(layout: RopeLayout, row: &mut [f32], d: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in row.chunks_exact_mut(d) {
        match layout {
            RopeLayout::Interleaved => {
                for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * c - x1 * s;
                    pair[1] = x0 * s + x1 * c;
                }
            }
            RopeLayout::Halves => {
                let (lo, hi) = head.split_at_mut(half);
                for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                    let (a, b) = (*x0, *x1);
                    *x0 = a * c - b * s;
                    *x1 = a * s + b * c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(layout: RopeLayout) -> LlamaConfig {
        LlamaConfig {
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 4,
            vocab_size: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
            rope_layout: layout,
            max_position: 16,
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for layout in [RopeLayout::Interleaved, RopeLayout::Halves] {
            let rope = Rope::new(&cfg(layout));
            let mut x = vec![1.0, 2.0, 3.0, 4.0];
            rope.apply(&mut x, 1, &rope.angles(&[0]));
            assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
            let mut y = vec![1.0, 2.0, 3.0, 4.0];
            rope.apply(&mut y, 1, &rope.angles(&[7]));
            let norm: f32 = y.iter().map(|v| v * v).sum();
            assert!((norm - 30.0).abs() < 1e-4);
            assert_ne!(y, vec![1.0, 2.0, 3.0, 4.0]);
        }
    }

    #[test]
    fn a_chunk_rotates_each_row_as_it_would_alone() {
        for layout in [RopeLayout::Interleaved, RopeLayout::Halves] {
            let mut c = cfg(layout);
            c.head_dim = 16;
            let rope = Rope::new(&c);
            let (heads, tokens) = (3, 2 * PARALLEL_ROWS + 5);
            let positions: Vec<usize> = (0..tokens).map(|t| 3 * t + 1).collect();
            let rows: Vec<f32> =
                (0..tokens * heads * 16).map(|i| ((i * 31 % 97) as f32 - 48.0) / 9.0).collect();
            let mut chunk = rows.clone();
            rope.apply(&mut chunk, heads, &rope.angles(&positions));
            for (t, want) in chunk.chunks(heads * 16).enumerate() {
                let mut alone = rows[t * heads * 16..(t + 1) * heads * 16].to_vec();
                rope.apply(&mut alone, heads, &rope.angles(&positions[t..t + 1]));
                assert_eq!(alone, want, "{layout:?}, token {t}");
            }
        }
    }

    #[test]
    fn interleaved_pairs_adjacent_dims() {
        let rope = Rope::new(&cfg(RopeLayout::Interleaved));
        // First pair has frequency 1: rotating (1, 0) by position 1 gives (cos 1, sin 1).
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 1, &rope.angles(&[1]));
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let rope = Rope::new(&cfg(RopeLayout::Halves));
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 1, &rope.angles(&[1]));
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn llama3_scaling_slows_low_frequencies_only() {
        let mut c = cfg(RopeLayout::Halves);
        c.head_dim = 64;
        let plain = Rope::new(&c);
        c.rope_scaling = RopeScaling::Llama3(crate::model::config::Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        });
        let scaled = Rope::new(&c);
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] - plain.inv_freq[last] / 8.0).abs() < 1e-12);
    }
}
