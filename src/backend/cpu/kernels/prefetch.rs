//! Software prefetch of memory a kernel will read soon: the hardware prefetcher follows
//! long sequential streams, but the short runs these kernels jump between (a weight
//! group, a KV block of 16 positions) end before it has ramped up.

/// Where a prefetched line should land.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// L1 and everything below: for data read within the next few microseconds that
    /// fits beside what is being computed.
    L1,
    /// L2 and below: for data read a little later, or too large for L1 next to the
    /// working set.
    L2,
}

/// Asks for every cache line of `data` to be loaded into `level`. A hint only: it
/// never faults and changes no result.
#[inline]
pub fn prefetch<T>(data: &[T], level: Level) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        let (start, bytes) = (data.as_ptr().cast::<i8>(), std::mem::size_of_val(data));
        for at in (0..bytes).step_by(64) {
            // SAFETY: `at` is inside `data`; prefetching has no other requirement.
            unsafe {
                match level {
                    Level::L1 => _mm_prefetch::<_MM_HINT_T0>(start.add(at)),
                    Level::L2 => _mm_prefetch::<_MM_HINT_T1>(start.add(at)),
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, level);
}

/// Asks for the cache line holding `p` to be loaded into `level`. A hint only: `p`
/// need not be valid, as prefetching never faults.
#[inline(always)]
pub fn prefetch_line<T>(p: *const T, level: Level) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching has no requirement on the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        match level {
            Level::L1 => _mm_prefetch::<_MM_HINT_T0>(p.cast()),
            Level::L2 => _mm_prefetch::<_MM_HINT_T1>(p.cast()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, level);
}
