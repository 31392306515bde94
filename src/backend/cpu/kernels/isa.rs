//! Run-time checks for the x86-64 extensions the hand-written kernels are compiled for:
//! one function per `#[target_feature(enable = …)]` set in use, so a kernel's check and
//! the attribute on its body name the same extensions. The matmul tiles, the activation
//! quantization and attention all ask here. The standard library caches the answers.
//! AMX also needs the process's permission ([`amx_tiles_granted`]).

use std::arch::is_x86_feature_detected;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

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

/// `avx512f,avx512bw,avx512vl,avx512bf16,f16c,fma`: the bf16 attention tiles.
#[inline]
pub fn avx512_bf16_f16c_fma() -> bool {
    avx512f()
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// CPUID leaf 7, EDX: AMX-BF16 (bit 22), AMX-TILE (bit 24), AMX-INT8 (bit 25). The
/// standard library's detection macro has no stable names for them. Read once: in a
/// VM every `cpuid` traps to the hypervisor, and the bf16 path asks on every call.
fn cpu_has_amx(bits: u32) -> bool {
    static LEAF7_EDX: OnceLock<u32> = OnceLock::new();
    *LEAF7_EDX.get_or_init(|| __cpuid_count(7, 0).edx) & bits == bits
}

const AMX_BF16: u32 = 1 << 22;
const AMX_TILE: u32 = 1 << 24;
const AMX_INT8: u32 = 1 << 25;

/// AMX-TILE and AMX-INT8, with AVX-512 VNNI for the epilogue: the int8 tiles.
pub fn amx_int8() -> bool {
    cpu_has_amx(AMX_TILE | AMX_INT8) && avx512f_bw_vnni()
}

/// `avx512f,avx512bw,avx512vl,avx512bf16` and AMX-TILE and AMX-BF16: the bf16 tiles,
/// with the activations rounded and the weights widened in AVX-512.
pub fn amx_bf16() -> bool {
    cpu_has_amx(AMX_TILE | AMX_BF16)
        && avx512f()
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
}

/// Whether this process may use the tiles: not kept off them with `INFLIGHT_AMX=0`,
/// and granted the tile data state, which Linux hands out only on request, once per
/// process (for all its threads); without it the first tile instruction raises SIGILL.
/// The kernel is asked once per process; ask only where [`amx_int8`] or [`amx_bf16`]
/// holds (elsewhere the request fails, with a warning).
pub fn amx_tiles_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        if std::env::var_os("INFLIGHT_AMX").is_some_and(|v| v == "0") {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes this process's permissions.
        let granted =
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 };
        if !granted {
            tracing::warn!("the kernel refused this process the AMX tile registers; not using them");
        }
        granted
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amx_detection_agrees_with_the_kernels_cpu_flags() {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
        let listed = |f: &str| flags.split_whitespace().any(|x| x == f);
        assert_eq!(cpu_has_amx(AMX_TILE | AMX_INT8), listed("amx_tile") && listed("amx_int8"), "{flags}");
        assert_eq!(cpu_has_amx(AMX_TILE | AMX_BF16), listed("amx_tile") && listed("amx_bf16"), "{flags}");
    }
}
