//! How many f32 multiply-adds a core issues when each one needs a broadcast from memory
//! beside it, as the AVX2 tiled attention's score and weighted-sum loops did, against
//! the register-only rate; one thread. A session later (`../2026-12-06-zen3-gemm-rows/`)
//! two shapes were added that take a lone head's column values from registers (a
//! 128-bit broadcast and in-lane `vshufps`, or one load and `vpermps`); `probe.txt`
//! here predates them. A probe for the results' READMEs, not part of the build:
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

/// One head × 8 columns, the column values taken from registers: `MODE` 0 = two 128-bit
/// broadcasts and in-lane `vshufps`, 1 = one 256-bit load and `vpermps`.
#[target_feature(enable = "avx2,fma")]
unsafe fn shuffled<const MODE: u8>(passes: usize, q: &[f32], k: &[f32]) -> f32 {
    let mut total = [_mm256_setzero_ps(); 8];
    let idx: [__m256i; 8] = std::array::from_fn(|c| _mm256_set1_epi32(c as i32));
    for _ in 0..passes {
        let mut acc = [_mm256_setzero_ps(); 8];
        for x in 0..64 {
            let qx = _mm256_loadu_ps(q.as_ptr().add(x * 8));
            let kp = k.as_ptr().add(x * 8);
            let kb: [__m256; 8] = if MODE == 0 {
                let lo = _mm256_broadcast_ps(&*(kp as *const __m128));
                let hi = _mm256_broadcast_ps(&*(kp.add(4) as *const __m128));
                [
                    _mm256_shuffle_ps::<0x00>(lo, lo), _mm256_shuffle_ps::<0x55>(lo, lo),
                    _mm256_shuffle_ps::<0xaa>(lo, lo), _mm256_shuffle_ps::<0xff>(lo, lo),
                    _mm256_shuffle_ps::<0x00>(hi, hi), _mm256_shuffle_ps::<0x55>(hi, hi),
                    _mm256_shuffle_ps::<0xaa>(hi, hi), _mm256_shuffle_ps::<0xff>(hi, hi),
                ]
            } else {
                let all = _mm256_loadu_ps(kp);
                std::array::from_fn(|c| _mm256_permutevar8x32_ps(all, idx[c]))
            };
            for c in 0..8 {
                acc[c] = _mm256_fmadd_ps(qx, kb[c], acc[c]);
            }
        }
        for (t, a) in total.iter_mut().zip(acc) {
            *t = _mm256_add_ps(*t, a);
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
        let t = Instant::now();
        black_box(unsafe { shuffled::<0>(passes, &q, &k) });
        let shuf = rate(passes as f64 * per_pass, t);
        let t = Instant::now();
        black_box(unsafe { shuffled::<1>(passes, &q, &k) });
        let perm = rate(passes as f64 * per_pass, t);
        println!("round {round}: 1 head × 8 columns from vshufps {shuf:.1}, from vpermps {perm:.1}");
        println!(
            "round {round}: G lane multiply-adds/s: registers {peak:.1}, \
             1 head × 8 columns {one:.1}, 2 heads × 4 columns {two:.1}, 3 heads × 2 columns {three:.1}"
        );
    }
}
