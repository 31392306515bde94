//! Run-time checks for the x86-64 extensions the hand-written kernels are compiled for:
//! one function per `#[target_feature(enable = …)]` set in use, so a kernel's check and
//! the attribute on its body name the same extensions. The matmul tiles, the activation
//! quantization and attention all ask here. The standard library caches the answers.

use std::arch::is_x86_feature_detected;

/// `avx2,fma,f16c`: the AVX2 matmul tiles and attention kernel.
#[inline]
pub fn avx2_fma_f16c() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// `avx512f`: the AVX-512 attention kernel and activation quantization.
#[inline]
pub fn avx512f() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `avx512f,avx512bw,avx512vnni`: the AVX-512 VNNI matmul tiles.
#[inline]
pub fn avx512f_bw_vnni() -> bool {
    avx512f() && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
}
