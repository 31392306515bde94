//! With the `cuda` feature, compiles the CUDA backend's own kernels
//! (`src/backend/cuda/kernels.cu`) to PTX with nvcc, for the compute capability
//! in `CUDA_COMPUTE_CAP` (default 90, as candle's kernels use). The driver turns
//! the PTX into machine code when the backend first loads it.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &str = "src/backend/cuda/kernels.cu";

fn main() {
    println!("cargo:rerun-if-changed={KERNELS}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("inflight_kernels.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg(KERNELS)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (the CUDA toolkit's compiler; see README): {e}"));
    assert!(status.success(), "{nvcc} failed on {KERNELS}");
}
