//! Quantized matrix-multiplication kernels for the CPU backend.

/// Which kernel family runs on this CPU (for logs and `BackendInfo`).
pub fn kernel_name() -> &'static str {
    "candle"
}
