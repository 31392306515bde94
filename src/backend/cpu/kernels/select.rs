//! Which monomorphised tile kernel runs a call: the tile height each instruction set
//! runs a format at, and the table from (kernel, format, rows) to a [`TileFn`].
//!
//! The per-ISA modules implement the contract in `tile` and know nothing of each other
//! (but for AVX-512 handing some formats to AVX2); this is the one file that names
//! them all, so the dependencies point from here down.

use super::dispatch::Kernel;
use super::layout::{FMT_Q4K, FMT_Q4_0, FMT_Q4_1, FMT_Q5K, FMT_Q5_0, FMT_Q5_1, FMT_Q6K, FMT_Q8_0};
use super::tile::TileFn;

/// Largest tile height each kernel is instantiated for.
pub fn max_rows(kernel: Kernel) -> usize {
    match kernel {
        Kernel::Avx512Vnni => 8,
        Kernel::Avx2 => 8,
        Kernel::Portable => 4,
    }
}

/// The tile height `kernel` runs `format` at when there are enough rows: the tallest
/// that keeps the kernel's live values in registers. On AVX2 the kernels that walk a
/// block chunk by chunk with one sum per row (the 4-bit formats, see `avx2::q4_dots`,
/// and Q8_0) go eight rows at a time, where each weight load serves twice the rows;
/// Q5 and Q6_K, which hold more per row, spill at eight and stay at four, also on
/// AVX-512 hosts, where those two run the AVX2 kernel (`avx512::tile`). The A/B of
/// eight against four per format is in `benches/results/2026-12-04-architecture/`.
pub fn rows_for(kernel: Kernel, format: u8) -> usize {
    let one_sum_per_row = matches!(format, FMT_Q4_0 | FMT_Q4_1 | FMT_Q4K | FMT_Q8_0);
    match kernel {
        Kernel::Avx2 | Kernel::Avx512Vnni if !one_sum_per_row => 4,
        _ => max_rows(kernel),
    }
}

macro_rules! by_rows {
    ($m:ident, $fmt:expr, $mr:expr) => {
        match $mr {
            1 => super::$m::tile::<$fmt, 1> as TileFn,
            2 => super::$m::tile::<$fmt, 2> as TileFn,
            3 => super::$m::tile::<$fmt, 3> as TileFn,
            4 => super::$m::tile::<$fmt, 4> as TileFn,
            5 => super::$m::tile::<$fmt, 5> as TileFn,
            6 => super::$m::tile::<$fmt, 6> as TileFn,
            7 => super::$m::tile::<$fmt, 7> as TileFn,
            _ => super::$m::tile::<$fmt, 8> as TileFn,
        }
    };
}

macro_rules! by_format {
    ($m:ident, $fmt:expr, $mr:expr) => {
        match $fmt {
            FMT_Q4_1 => by_rows!($m, FMT_Q4_1, $mr),
            FMT_Q4_0 => by_rows!($m, FMT_Q4_0, $mr),
            FMT_Q4K => by_rows!($m, FMT_Q4K, $mr),
            FMT_Q5K => by_rows!($m, FMT_Q5K, $mr),
            FMT_Q6K => by_rows!($m, FMT_Q6K, $mr),
            FMT_Q5_0 => by_rows!($m, FMT_Q5_0, $mr),
            FMT_Q5_1 => by_rows!($m, FMT_Q5_1, $mr),
            _ => by_rows!($m, FMT_Q8_0, $mr),
        }
    };
}

/// The kernel for `format` (a `layout::FMT_*` id) and `rows` (1..=`max_rows`).
pub fn select(kernel: Kernel, format: u8, rows: usize) -> TileFn {
    debug_assert!((1..=max_rows(kernel)).contains(&rows));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => by_format!(avx512, format, rows),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => by_format!(avx2, format, rows),
        _ => by_format!(portable, format, rows),
    }
}

/// Whether [`select_keeping`] has kernels for `format` on `kernel`: Q6_K on AVX2, whose
/// two scales per block cost most to form again for every row tile, so keeping them
/// pays off as soon as a group has several tiles; Q4_K's are cheaper to form and gained
/// nothing (figures in `benches/results/2026-12-04-architecture/`).
pub fn keeps_block_scales(kernel: Kernel, format: u8) -> bool {
    cfg!(target_arch = "x86_64") && kernel == Kernel::Avx2 && format == FMT_Q6K
}

/// For a group computed in several row tiles, when [`keeps_block_scales`]: the kernel
/// for its first tile (`write`: forms the block scales and keeps them in
/// `Tile::kept_scales`) or for a later one (loads them).
pub fn select_keeping(kernel: Kernel, format: u8, rows: usize, write: bool) -> TileFn {
    // Instantiated up to Q6_K's tile height on AVX2 (`rows_for`), not the kernel's maximum.
    debug_assert!(keeps_block_scales(kernel, format) && (1..=rows_for(kernel, format)).contains(&rows));
    #[cfg(target_arch = "x86_64")]
    {
        use super::avx2::{tile_keeping, KEEP_READ, KEEP_WRITE};
        macro_rules! keeping {
            ($keep:expr) => {
                match rows {
                    1 => tile_keeping::<FMT_Q6K, 1, $keep> as TileFn,
                    2 => tile_keeping::<FMT_Q6K, 2, $keep> as TileFn,
                    3 => tile_keeping::<FMT_Q6K, 3, $keep> as TileFn,
                    _ => tile_keeping::<FMT_Q6K, 4, $keep> as TileFn,
                }
            };
        }
        if write {
            keeping!(KEEP_WRITE)
        } else {
            keeping!(KEEP_READ)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    select(kernel, format, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 tile hands Q5 and Q6_K to the AVX2 one, so they must be cut into
    /// tiles the AVX2 kernel holds in registers; and no format exceeds its kernel's
    /// largest instantiated height.
    #[test]
    fn delegated_formats_run_at_the_avx2_height() {
        for format in [FMT_Q5_0, FMT_Q5_1, FMT_Q5K, FMT_Q6K] {
            assert_eq!(rows_for(Kernel::Avx512Vnni, format), rows_for(Kernel::Avx2, format));
        }
        for kernel in [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Portable] {
            for format in [FMT_Q4_0, FMT_Q4_1, FMT_Q4K, FMT_Q5_0, FMT_Q5_1, FMT_Q5K, FMT_Q6K, FMT_Q8_0] {
                assert!((1..=max_rows(kernel)).contains(&rows_for(kernel, format)));
            }
        }
    }
}
