//! Quantized matrix-multiplication kernels for the CPU backend.
