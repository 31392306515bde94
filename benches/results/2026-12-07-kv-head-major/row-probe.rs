// The single-thread probe behind the layout figures in README.md. It is not part of
// the crate and not a test (it asserts nothing; it prints timings). To run it, append it
// to src/backend/cpu/attention/tile_row.rs, call `probe_timing::run()` from a scratch
// `#[test]` in that file, and run that test with
//
//   PROBE_LAYOUT=strided|contig|random [PROBE_NEXT=1] \
//     cargo test --release --lib <the scratch test's name> -- --nocapture
//
// It times the two-pass decode row kernel (f16 cache, one row x one KV head of
// SmolLM2-135M: 3 query heads, head size 64, 320 positions in blocks of 16) over 1,440
// units (a batch-16 step's 16 x 3 KV heads x 30 layers), each reading its own blocks of
// a 200 MB pool ("cold": from DRAM), and then 1,440 times over one unit's blocks
// ("hot": from L1/L2). The layouts place a unit's 20 regions as the pool places one KV
// head's consecutive blocks: `strided` every third region (heads inside blocks, the
// old layout), `contig` back to back (head-major), `random` anywhere. With PROBE_NEXT
// each unit asks for the next unit's runs while it computes (`Upcoming`).
#[cfg(test)]
mod probe_timing {
    use super::*;
    use half::f16;

    pub fn run() {
        let (g, d, bs, len) = (3usize, 64usize, 16usize, 320usize);
        let geo = HeadGeometry { head_dim: d, group: g, scale: 0.125 };
        let blocks_per = len / bs;
        let region = bs * d;
        let nblocks = 200_000_000 / (3 * region * 2);
        let n = nblocks * 3 * region;
        let make = || (0..n).map(|i| f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5)).collect::<Vec<_>>();
        let (k, v) = (make(), make());
        let q: Vec<f32> = (0..g * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let row = row_kernel::<f16>(false);
        let mut out = vec![0.0f32; g * d];
        let mut s = RowScratch::default();
        let units = 1440usize;
        let layout = std::env::var("PROBE_LAYOUT").unwrap_or_default();
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as usize
        };
        let tables: Vec<Vec<usize>> = (0..units)
            .map(|_| {
                let base = next() % (nblocks - blocks_per);
                match layout.as_str() {
                    "strided" => (0..blocks_per).map(|b| (base + b) * 3 * region + region).collect(),
                    "contig" => (0..blocks_per).map(|b| (base * 3 + b) * region).collect(),
                    _ => (0..blocks_per).map(|_| (next() % nblocks) * 3 * region + region).collect(),
                }
            })
            .collect();
        for pass in 0..3 {
            let t0 = std::time::Instant::now();
            for (j, t) in tables.iter().enumerate() {
                s.upcoming.clear();
                if std::env::var("PROBE_NEXT").is_ok() && j + 1 < tables.len() {
                    for &r in &tables[j + 1] {
                        s.upcoming.push(k.as_ptr().wrapping_add(r), region * 2);
                        s.upcoming.push(v.as_ptr().wrapping_add(r), region * 2);
                    }
                }
                let kv = PagedRows { k: &k, v: &v, regions: t, block_size: bs, len };
                row(&kv, &geo, &q, &mut out, &mut s);
            }
            let cold = t0.elapsed().as_secs_f64() / units as f64;
            s.upcoming.clear();
            let t0 = std::time::Instant::now();
            for _ in 0..units {
                let kv = PagedRows { k: &k, v: &v, regions: &tables[0], block_size: bs, len };
                row(&kv, &geo, &q, &mut out, &mut s);
            }
            let hot = t0.elapsed().as_secs_f64() / units as f64;
            eprintln!("pass {pass}: cold {:.2} us/unit, hot {:.2} us/unit", cold * 1e6, hot * 1e6);
        }
    }
}
