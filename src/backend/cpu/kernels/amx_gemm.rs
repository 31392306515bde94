//! The AMX-INT8 many-rows path (Sapphire Rapids and later), opt-in with `INFLIGHT_AMX=1`.
//!
//! One `tdpbusd` multiplies a 16 × 32 tile of unsigned weight bytes (a group's 16
//! columns × one block of 32 values) by an 8 × 64 tile of signed activation bytes (the
//! block's 32 values of 16 activation rows, four bytes of each row per tile row) into
//! a 16 × 16 tile of 32-bit sums: one block's integer dot products of 16 columns and 16
//! rows, the work of 128 `vpdpbusd`. The sums are exact, as the other kernels' are; the
//! tile is stored and each column's 16 sums take the block's scale and minimum term in
//! the portable kernel's order (AVX-512, a column per vector), so outputs are the same
//! bits as every other kernel's.
//!
//! **This path has never run on AMX hardware**: it was written on machines without AMX.
//! Everything but the tile instructions themselves (the packing of both operands, the
//! epilogue, the bookkeeping of rows and groups) is tested against the portable kernel
//! through [`Model`], a plain-Rust rendering of the instructions' defined results. On
//! a host with AMX the path is used only when asked for (`INFLIGHT_AMX=1`), and only
//! after the instructions themselves reproduce the portable kernel bit for bit on a
//! small problem at start-up ([`enabled`]); otherwise the AVX-512 VNNI path runs.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::activations::QActs;
use super::gemm_panel::{offset, Line, LINES_PER_BLOCK, MINS_LINE, SCALES_LINE};
use super::layout::{record_shape, FMT_Q4K, FMT_Q4_0, FMT_Q4_1, FMT_Q8_0, GROUP, QK};
use super::QMatrix;

/// Rows a task needs for the tiles: one tile holds 16 activation rows.
pub const MIN_ROWS: usize = 16;
/// Activation rows per tile.
const TILE_ROWS: usize = 16;
/// Bytes of one operand tile: 16 × 32 weight bytes, or 8 × 64 activation bytes.
const TILE_BYTES: usize = 512;

/// The tile operations the kernel uses, on three fixed tiles: `C` (16 rows × 16 i32),
/// `A` (16 rows × 32 u8: weights), `B` (8 rows × 64 i8: activations).
///
/// # Safety
/// Every pointer must be valid for the bytes the operation reads or writes, and
/// `configure` must precede the other operations on the same thread.
pub trait Tiles {
    unsafe fn configure(&mut self);
    unsafe fn zero_c(&mut self);
    /// `A` from 16 rows of 32 bytes, back to back.
    unsafe fn load_a(&mut self, p: *const u8);
    /// `B` from 8 rows of 64 bytes, back to back.
    unsafe fn load_b(&mut self, p: *const u8);
    /// `C[m][n] += Σₖ Σₜ A[m][4k + t] · B[k][4n + t]`, A unsigned and B signed.
    unsafe fn dot(&mut self);
    /// `C` to 16 rows of 16 i32, back to back.
    unsafe fn store_c(&mut self, p: *mut i32);
    unsafe fn release(&mut self);
}

/// The AMX instructions (tiles 0, 1 and 2 as `C`, `A` and `B`).
pub struct Hardware;

/// `ldtilecfg`'s 64-byte operand: palette 1; tile 0 is 16 rows of 64 bytes, tile 1 16
/// rows of 32 bytes, tile 2 8 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for (tile, (rows, bytes)) in [(16u8, 64u16), (16, 32), (8, 64)].into_iter().enumerate() {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&bytes.to_le_bytes());
            c[48 + tile] = rows;
        }
        TileConfig(c)
    }
}

impl Tiles for Hardware {
    unsafe fn configure(&mut self) {
        let config = TileConfig::new();
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    }
    unsafe fn zero_c(&mut self) {
        asm!("tilezero tmm0", options(nostack, nomem));
    }
    unsafe fn load_a(&mut self, p: *const u8) {
        asm!("tileloadd tmm1, [{} + {}*1]", in(reg) p, in(reg) 32usize, options(nostack, readonly));
    }
    unsafe fn load_b(&mut self, p: *const u8) {
        asm!("tileloadd tmm2, [{} + {}*1]", in(reg) p, in(reg) 64usize, options(nostack, readonly));
    }
    unsafe fn dot(&mut self) {
        asm!("tdpbusd tmm0, tmm1, tmm2", options(nostack, nomem));
    }
    unsafe fn store_c(&mut self, p: *mut i32) {
        asm!("tilestored [{} + {}*1], tmm0", in(reg) p, in(reg) 64usize, options(nostack));
    }
    unsafe fn release(&mut self) {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The tile instructions' defined results in plain Rust (Intel SDM, `TDPBUSD`): the
/// stand-in for AMX on machines without it, so the rest of the path is tested there.
#[cfg(test)]
#[derive(Default)]
pub struct Model {
    c: Vec<i32>,
    a: Vec<u8>,
    b: Vec<i8>,
}

#[cfg(test)]
impl Tiles for Model {
    unsafe fn configure(&mut self) {
        self.c = vec![0; 256];
        self.a = vec![0; TILE_BYTES];
        self.b = vec![0; TILE_BYTES];
    }
    unsafe fn zero_c(&mut self) {
        self.c.fill(0);
    }
    unsafe fn load_a(&mut self, p: *const u8) {
        std::ptr::copy_nonoverlapping(p, self.a.as_mut_ptr(), TILE_BYTES);
    }
    unsafe fn load_b(&mut self, p: *const u8) {
        std::ptr::copy_nonoverlapping(p.cast::<i8>(), self.b.as_mut_ptr(), TILE_BYTES);
    }
    unsafe fn dot(&mut self) {
        for m in 0..16 {
            for k in 0..8 {
                for n in 0..16 {
                    let sum: i32 = (0..4)
                        .map(|t| {
                            i32::from(self.a[32 * m + 4 * k + t]) * i32::from(self.b[64 * k + 4 * n + t])
                        })
                        .sum();
                    self.c[16 * m + n] += sum;
                }
            }
        }
    }
    unsafe fn store_c(&mut self, p: *mut i32) {
        std::ptr::copy_nonoverlapping(self.c.as_ptr(), p, 256);
    }
    unsafe fn release(&mut self) {}
}

/// Whether the many-rows path runs on AMX in this process: asked for with
/// `INFLIGHT_AMX=1`, the CPU has AMX-TILE and AMX-INT8 and AVX-512, the kernel lets
/// this process use the tile registers, and the instructions reproduce the portable
/// kernel on a small problem. Decided once, on first use.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        if std::env::var_os("INFLIGHT_AMX").is_none_or(|v| v != "1") {
            return false;
        }
        if !(cpu_has_amx_int8() && super::isa::avx512f_bw_vnni()) {
            tracing::warn!("INFLIGHT_AMX=1 but this CPU has no AMX-INT8 (or no AVX-512); using AVX-512 VNNI");
            return false;
        }
        if !request_tile_data() {
            tracing::warn!("the kernel refused this process the AMX tile registers; using AVX-512 VNNI");
            return false;
        }
        let ok = agrees_with_portable(|| Hardware);
        if ok {
            tracing::info!("AMX-INT8 tiles in use for prefill matmuls");
        } else {
            tracing::error!("AMX-INT8 tile kernel disagrees with the portable one; not using it");
        }
        ok
    })
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (bit 25).
fn cpu_has_amx_int8() -> bool {
    let leaf7 = __cpuid_count(7, 0);
    leaf7.edx & (0b11 << 24) == 0b11 << 24
}

/// Linux hands out the tile data state (XTILEDATA, feature 18) only on request, once
/// per process; without it the first tile instruction raises SIGILL.
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permissions.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Runs the formats this path takes through `tiles` and the portable kernel, with a
/// ragged last group and a ragged last tile of rows, and compares the results exactly.
pub fn agrees_with_portable<T: Tiles>(tiles: impl Fn() -> T) -> bool {
    use super::dispatch::{self_check_activations, self_check_matrix, Kernel, SELF_CHECK_K};
    use super::layout::WeightFormat;
    let m = TILE_ROWS + 7;
    let x = self_check_activations(m);
    [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q4K, WeightFormat::Q8_0].into_iter().all(
        |format| {
            let Some(w) = self_check_matrix(format) else {
                return false;
            };
            let mut want = vec![0.0; m * w.n];
            w.matmul_with(Kernel::Portable, &x, m, &mut want);
            let mut acts = QActs::default();
            acts.quantize(Kernel::Portable, &x, m, SELF_CHECK_K);
            let mut got = vec![f32::NAN; m * w.n];
            // SAFETY: AVX-512 is available (checked by the callers), `got` holds m × n.
            unsafe { run_task(&mut tiles(), &w, &acts, 0..m, 0..w.groups, got.as_mut_ptr()) };
            want == got
        },
    )
}

/// Whether this path takes `format` for a task of `rows` rows (with [`enabled`]).
pub fn applies(format: u8, rows: usize) -> bool {
    rows >= MIN_ROWS && matches!(format, FMT_Q4_1 | FMT_Q4_0 | FMT_Q8_0 | FMT_Q4K)
}

thread_local! {
    static BUFFERS: Cell<Buffers> = Cell::new(Buffers::default());
}

/// What a task packs: its groups' weight tiles and its rows' activation tiles.
#[derive(Default)]
struct Buffers {
    /// One group: per block, the `A` tile (8 lines), then the scales and minimums lines.
    panel: Vec<Line>,
    /// Per tile of rows and block: the `B` tile (8 lines).
    acts: Vec<Line>,
    /// Per tile of rows and block, the 16 rows' scales, scaled sums and sums (zeros for
    /// rows past the task's last).
    d: Vec<f32>,
    s: Vec<f32>,
    isum: Vec<i32>,
}

/// Computes rows `rows` × the columns of `groups` of `out`, as `matmul::run_task`.
///
/// # Safety
/// As `matmul::run_task`; AVX-512 F, BW and VNNI must be available, and for
/// [`Hardware`], [`enabled`] must have returned true.
pub unsafe fn run_task<T: Tiles>(
    tiles: &mut T,
    w: &QMatrix,
    acts: &QActs,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    out: *mut f32,
) {
    let format = w.format.id();
    let mut buf = BUFFERS.with(Cell::take);
    pack_rows(acts, rows.clone(), &mut buf);
    tiles.configure();
    for g in groups {
        let group_bytes = w.format.group_bytes(w.k);
        let data = &w.data.as_slice()[g * group_bytes..(g + 1) * group_bytes];
        match format {
            FMT_Q4_1 => sweep::<FMT_Q4_1, T>(tiles, data, w, acts.nb, &rows, g, out, &mut buf),
            FMT_Q4_0 => sweep::<FMT_Q4_0, T>(tiles, data, w, acts.nb, &rows, g, out, &mut buf),
            FMT_Q4K => sweep::<FMT_Q4K, T>(tiles, data, w, acts.nb, &rows, g, out, &mut buf),
            _ => sweep::<FMT_Q8_0, T>(tiles, data, w, acts.nb, &rows, g, out, &mut buf),
        }
    }
    tiles.release();
    BUFFERS.with(|b| b.set(buf));
}

/// The task's rows as `B` tiles (tile row `j` of block `b` holds bytes `4j..4j + 4` of
/// the block in each of the 16 rows) and per-block vectors of their scales and sums.
fn pack_rows(acts: &QActs, rows: std::ops::Range<usize>, buf: &mut Buffers) {
    let (k, nb) = (acts.k, acts.nb);
    let tiles = rows.len().div_ceil(TILE_ROWS);
    buf.acts.clear();
    buf.acts.resize(tiles * nb * 8, Line([0; 64]));
    for v in [&mut buf.d, &mut buf.s] {
        v.clear();
        v.resize(tiles * nb * TILE_ROWS, 0.0);
    }
    buf.isum.clear();
    buf.isum.resize(tiles * nb * TILE_ROWS, 0);
    for (i, row) in rows.enumerate() {
        let (tile, n) = (i / TILE_ROWS, i % TILE_ROWS);
        for b in 0..nb {
            let at = (tile * nb + b) * TILE_ROWS + n;
            buf.d[at] = acts.d[row * nb + b];
            buf.s[at] = acts.s[row * nb + b];
            buf.isum[at] = acts.isum[row * nb + b];
            let block = &acts.qs[row * k + b * QK..][..QK];
            for (j, four) in block.chunks_exact(4).enumerate() {
                let line = &mut buf.acts[(tile * nb + b) * 8 + j].0;
                for (dst, &x) in line[4 * n..4 * n + 4].iter_mut().zip(four) {
                    *dst = x as u8;
                }
            }
        }
    }
}

/// Group `g` (its records `data`) against every tile of the task's rows.
///
/// # Safety
/// As [`run_task`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn sweep<const F: u8, T: Tiles>(
    tiles: &mut T,
    data: &[u8],
    w: &QMatrix,
    nb: usize,
    rows: &std::ops::Range<usize>,
    g: usize,
    out: *mut f32,
    buf: &mut Buffers,
) {
    buf.panel.resize(nb * LINES_PER_BLOCK, Line([0; 64]));
    super::avx512_gemm::pack::<F>(data, nb, &mut buf.panel);
    for b in 0..nb {
        to_tile_rows(&mut buf.panel[b * LINES_PER_BLOCK..][..8]);
    }
    let off = offset(F);
    let has_mins = record_shape(F).has_mins;
    let cols = (w.n - g * GROUP).min(GROUP);
    let mut sums = [0i32; 256];
    let mut result = [[0.0f32; TILE_ROWS]; GROUP];
    for tile in 0..rows.len().div_ceil(TILE_ROWS) {
        let mut acc = [_mm512_setzero_ps(); GROUP];
        for b in 0..nb {
            let blk = buf.panel.as_ptr().add(b * LINES_PER_BLOCK);
            tiles.zero_c();
            tiles.load_a(blk.cast());
            tiles.load_b(buf.acts.as_ptr().add((tile * nb + b) * 8).cast());
            tiles.dot();
            tiles.store_c(sums.as_mut_ptr());
            let at = (tile * nb + b) * TILE_ROWS;
            let dx = _mm512_loadu_ps(buf.d.as_ptr().add(at));
            let sx = _mm512_loadu_ps(buf.s.as_ptr().add(at));
            let corr = _mm512_mullo_epi32(
                _mm512_loadu_si512(buf.isum.as_ptr().add(at).cast()),
                _mm512_set1_epi32(off),
            );
            let (dw, mw) = (blk.add(SCALES_LINE).cast::<f32>(), blk.add(MINS_LINE).cast::<f32>());
            for (col, acc) in acc.iter_mut().enumerate() {
                let mut d = _mm512_loadu_si512(sums.as_ptr().add(16 * col).cast());
                if off != 0 {
                    d = _mm512_sub_epi32(d, corr);
                }
                *acc = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(d),
                    _mm512_mul_ps(_mm512_set1_ps(*dw.add(col)), dx),
                    *acc,
                );
                if has_mins {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*mw.add(col)), sx, *acc);
                }
            }
        }
        for (col, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(result[col].as_mut_ptr(), *acc);
        }
        let first = rows.start + tile * TILE_ROWS;
        for n in 0..(rows.end - first).min(TILE_ROWS) {
            let dst = out.add((first + n) * w.n + g * GROUP);
            for (col, values) in result.iter().enumerate().take(cols) {
                *dst.add(col) = values[n];
            }
        }
    }
}

/// A block's eight quant lines from the VNNI panel's order (line `j`, bytes `4r..4r + 4`:
/// values `4j..4j + 4` of column `r`) to an `A` tile (row `r`, bytes `4j..4j + 4`).
fn to_tile_rows(lines: &mut [Line]) {
    let mut tile = [0u8; TILE_BYTES];
    for (j, line) in lines.iter().enumerate() {
        for r in 0..GROUP {
            tile[32 * r + 4 * j..][..4].copy_from_slice(&line.0[4 * r..4 * r + 4]);
        }
    }
    for (line, bytes) in lines.iter_mut().zip(tile.chunks_exact(64)) {
        line.0.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything but the instructions, through the model: the same bits as the
    /// portable kernel for every format this path takes.
    #[test]
    fn the_tile_path_matches_the_portable_kernel_through_the_model() {
        if !super::super::isa::avx512f_bw_vnni() {
            return; // the epilogue is AVX-512
        }
        assert!(agrees_with_portable(Model::default));
    }

    #[test]
    fn amx_detection_agrees_with_the_kernels_cpu_flags() {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
        let listed = |f: &str| flags.split_whitespace().any(|x| x == f);
        assert_eq!(cpu_has_amx_int8(), listed("amx_tile") && listed("amx_int8"), "{flags}");
    }

    #[test]
    fn the_tile_configuration_names_the_three_tiles() {
        let c = TileConfig::new().0;
        assert_eq!(c[0], 1, "palette");
        assert_eq!(&c[16..22], &[64, 0, 32, 0, 64, 0], "bytes per row of C, A, B");
        assert_eq!(&c[48..51], &[16, 16, 8], "rows of C, A, B");
        assert!(c[22..48].iter().chain(&c[51..]).all(|&b| b == 0));
    }
}
