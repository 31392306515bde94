//! The buffers a forward pass writes its layers' intermediate rows into, kept from one
//! step to the next.
//!
//! Allocated fresh, each of a step's intermediates (norm outputs, Q/K/V, attention
//! outputs, projections: about 19 KB a token per layer for the default model) was
//! zero-filled by the allocator and, past its size threshold, faulted in page by page
//! after the previous step handed it back, only to be overwritten by the kernel that
//! computes it. Kept here, a buffer grows to the largest step once and is then reused
//! as it is: every writer fills all of the rows it is given.

/// One forward pass's intermediate rows (`rows × width` f32 each), reused by every
/// layer of every step.
#[derive(Default)]
pub struct Scratch {
    /// RMS norm outputs: the inputs of the QKV and gate/up matmuls.
    pub normed: Vec<f32>,
    /// The fused QKV matmul's rows, before they are split.
    pub qkv: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Attention outputs: the input of the output projection.
    pub attended: Vec<f32>,
    /// The attention output projection's rows, then the down projection's.
    pub projected: Vec<f32>,
    /// `silu(gate) · up`: the input of the down projection.
    pub hidden: Vec<f32>,
}

/// The first `len` values of `buf`, grown (zero-filled) if it is shorter. What the
/// values are is unspecified: the caller writes all of them before reading any. Debug
/// builds fill them with NaN, so a writer that leaves values out fails the tests
/// instead of reading the previous step's rows.
pub fn rows(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = &mut buf[..len];
    if cfg!(debug_assertions) {
        out.fill(f32::NAN);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_grow_once_and_keep_their_allocation() {
        let mut buf = Vec::new();
        assert_eq!(rows(&mut buf, 64).len(), 64);
        let at = buf.as_ptr();
        assert_eq!(rows(&mut buf, 16).len(), 16, "a shorter step takes a prefix");
        assert_eq!(rows(&mut buf, 64).len(), 64);
        assert_eq!(buf.as_ptr(), at, "no reallocation within the largest size");
        assert_eq!(buf.len(), 64);
    }

    #[test]
    fn debug_builds_hand_out_nan_so_unwritten_values_show() {
        let mut buf = vec![1.0; 8];
        let out = rows(&mut buf, 8);
        if cfg!(debug_assertions) {
            assert!(out.iter().all(|v| v.is_nan()));
        }
    }
}
