//! The default model's matmuls (30 layers of distinct synthetic Q4_1 weights and a Q8_0
//! lm_head, as `benches/kernels.rs` builds them) over `m` rows, the code before this
//! change ("base": the panel for every task, the row-tile walk below 8 rows) and the
//! change ("new") alternating step by step in one process, medians of 40 steps each.
//!
//! Run on an experiment build, not on main: at 951b640,
//! `git apply benches/results/2026-12-07-records-in-place/probe-switch.patch` (the change as
//! first written, with a runtime switch between it and the code before), then copy this
//! file to `examples/modelprobe.rs`, `cargo build --release --example modelprobe` and
//! `target/release/examples/modelprobe M` for each row count. `HOT=1` runs layer 0's
//! weights 30 times (from cache) instead.

use std::time::Instant;
use inflight::backend::cpu::kernels::{QMatrix, WeightFormat};

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 { self.0 ^= self.0 << 13; self.0 ^= self.0 >> 7; self.0 ^= self.0 << 17; self.0 }
    fn f32(&mut self) -> f32 { (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5 }
    fn vec(&mut self, len: usize) -> Vec<f32> { (0..len).map(|_| self.f32()).collect() }
}
fn synthetic(rng: &mut XorShift, format: WeightFormat, n: usize, k: usize) -> QMatrix {
    let block = format.gguf_block_bytes();
    let mut bytes = vec![0u8; n * format.gguf_row_bytes(k)];
    for b in bytes.chunks_mut(block) {
        b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        let start = match format {
            WeightFormat::Q4_1 => { b[2..4].copy_from_slice(&half::f16::from_f32(-0.08).to_le_bytes()); 4 }
            _ => 2,
        };
        for v in &mut b[start..] { *v = rng.next() as u8; }
    }
    QMatrix::from_raw(format, n, k, &bytes).expect("synthetic matrix")
}
fn product_gate(g: &[f32], u: &[f32], out: &mut [f32]) { for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) { *o = g * u; } }

fn main() { rayon::scope(|_| run()); }
fn run() {
    let mut rng = XorShift(7);
    let m: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    let q41 = WeightFormat::Q4_1;
    let stack = |parts: &[&QMatrix]| QMatrix::stack(parts).expect("stackable");
    let layers: Vec<[QMatrix; 4]> = (0..30).map(|_| {
        let (q, k, v) = (synthetic(&mut rng, q41, 576, 576), synthetic(&mut rng, q41, 192, 576), synthetic(&mut rng, q41, 192, 576));
        let o = synthetic(&mut rng, q41, 576, 576);
        let (gate, up) = (synthetic(&mut rng, q41, 1536, 576), synthetic(&mut rng, q41, 1536, 576));
        let down = synthetic(&mut rng, q41, 576, 1536);
        [stack(&[&q, &k, &v]), o, stack(&[&gate, &up]), down]
    }).collect();
    let lm = synthetic(&mut rng, WeightFormat::Q8_0, 49152, 576);
    let x576 = rng.vec(m * 576); let x1536 = rng.vec(m * 1536);
    let (mut o960, mut o576, mut o1536, mut logits) = (vec![0.0; m * 960], vec![0.0; m * 576], vec![0.0; m * 1536], vec![0.0; m * 49152]);
    let macs = [576.0 * 960.0, 576.0 * 576.0, 576.0 * 3072.0, 1536.0 * 576.0, 576.0 * 49152.0];
    let names = ["qkv", "o", "gate_up", "down", "lm_head"];
    let steps: usize = std::env::var("STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let mut per: Vec<Vec<f64>> = vec![vec![]; 6];
    let mut per_raw: Vec<Vec<f64>> = vec![vec![]; 6];
    for step in 0..2 * steps {
        let raw = step % 2 == 1;
        inflight::backend::cpu::kernels::set_raw_rows(if raw { 64 } else { 0 });
        let per = if raw { &mut per_raw } else { &mut per };
        let mut t = [0.0f64; 5];
        let s0 = Instant::now();
        let hot = std::env::var("HOT").is_ok();
        for li in 0..30 { let [qkv, o, gu, down] = &layers[if hot { 0 } else { li }];
            let s = Instant::now(); qkv.matmul(&x576, m, &mut o960); t[0] += s.elapsed().as_secs_f64();
            let s = Instant::now(); o.matmul(&x576, m, &mut o576); t[1] += s.elapsed().as_secs_f64();
            let s = Instant::now(); gu.matmul_gated(&x576, m, 1536, product_gate, &mut o1536); t[2] += s.elapsed().as_secs_f64();
            let s = Instant::now(); down.matmul(&x1536, m, &mut o576); t[3] += s.elapsed().as_secs_f64();
        }
        let s = Instant::now(); lm.matmul(&x576, m, &mut logits); t[4] += s.elapsed().as_secs_f64();
        per[5].push(s0.elapsed().as_secs_f64());
        for i in 0..5 { per[i].push(t[i]); }
    }
    let med = |v: &mut Vec<f64>| { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); v[v.len() / 2] };
    for i in 0..5 {
        let t = med(&mut per[i]);
        let t2 = med(&mut per_raw[i]);
        let layers_n = if i == 4 { 1.0 } else { 30.0 };
        println!("{:8} base {:7.3} ms {:6.1} GMAC/s   new {:7.3} ms {:6.1} GMAC/s  new/base {:.3}", names[i], t * 1e3, layers_n * macs[i] * m as f64 / t / 1e9, t2 * 1e3, layers_n * macs[i] * m as f64 / t2 / 1e9, t2 / t);
    }
    let (a, b) = (med(&mut per[5]), med(&mut per_raw[5]));
    println!("step     base {:7.3} ms  new {:7.3} ms  new/base {:.3}", a * 1e3, b * 1e3, b / a);
}
