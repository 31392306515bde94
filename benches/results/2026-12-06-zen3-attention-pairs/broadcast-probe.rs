//! How many f32 multiply-adds a core issues when each one needs a broadcast from memory
//! beside it, as the AVX2 tiled attention's score and weighted-sum loops do, against
//! the register-only rate; one thread. A probe for the results' README, not part of
//! the build:
//!   rustc -O -C target-cpu=native broadcast-probe.rs -o /tmp/broadcast-probe && /tmp/broadcast-probe
use std::arch::x86_64::*;
use std::hint::black_box;
use std::time::Instant;

/// Sums the lanes of `acc` so the work cannot be dropped.
unsafe fn fold<const N: usize>(acc: [__m256; N]) -> f32 {
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    let mut o = [0f32; 8];
    _mm256_storeu_ps(o.as_mut_ptr(), s);
    o.iter().sum()
}

/// Ten independent chains, both operands in registers: the multiply-add peak.
#[target_feature(enable = "avx2,fma")]
unsafe fn registers(iters: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 10];
    let (x, y) = (_mm256_set1_ps(1.0001), _mm256_set1_ps(0.9999));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(x, y, *a);
        }
    }
    fold(acc)
}

/// `V` query vectors (heads) × `CB` key columns per step of `x`: `V` loads, `CB`
/// broadcasts, `V · CB` multiply-adds into as many chains; `64 / ...` steps a pass.
#[target_feature(enable = "avx2,fma")]
unsafe fn shared<const V: usize, const CB: usize, const N: usize>(passes: usize, q: &[f32], k: &[f32]) -> f32 {
    let mut total = [_mm256_setzero_ps(); N];
    for _ in 0..passes {
        for cb in 0..8 / CB {
            let mut acc = [_mm256_setzero_ps(); N];
            for x in 0..64 {
                let qx: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(q.as_ptr().add(v * 512 + x * 8)));
                for c in 0..CB {
                    let kb = _mm256_set1_ps(*k.get_unchecked(x * 8 + cb * CB + c));
                    for v in 0..V {
                        acc[v * CB + c] = _mm256_fmadd_ps(qx[v], kb, acc[v * CB + c]);
                    }
                }
            }
            for (t, a) in total.iter_mut().zip(acc) {
                *t = _mm256_add_ps(*t, a);
            }
        }
    }
    fold(total)
}

fn main() {
    assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
    let q: Vec<f32> = (0..4096).map(|i| (i % 7) as f32 * 0.01).collect();
    let k: Vec<f32> = (0..4096).map(|i| (i % 5) as f32 * 0.01).collect();
    let rate = |fmas: f64, t: Instant| fmas * 8.0 / t.elapsed().as_secs_f64() / 1e9;
    for round in 1..=3 {
        let n = black_box(20_000_000);
        let t = Instant::now();
        black_box(unsafe { registers(n) });
        let peak = rate(n as f64 * 10.0, t);
        let passes = black_box(400_000);
        let per_pass = 64.0 * 8.0;
        let t = Instant::now();
        black_box(unsafe { shared::<1, 8, 8>(passes, &q, &k) });
        let one = rate(passes as f64 * per_pass, t);
        let t = Instant::now();
        black_box(unsafe { shared::<2, 4, 8>(passes, &q, &k) });
        let two = rate(passes as f64 * per_pass * 2.0, t);
        let t = Instant::now();
        black_box(unsafe { shared::<3, 2, 6>(passes, &q, &k) });
        let three = rate(passes as f64 * per_pass * 3.0, t);
        println!(
            "round {round}: G lane multiply-adds/s: registers {peak:.1}, \
             1 head × 8 columns {one:.1}, 2 heads × 4 columns {two:.1}, 3 heads × 2 columns {three:.1}"
        );
    }
}
