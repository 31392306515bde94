//! An opt-in wall-time breakdown of forward passes by section: where a step's time
//! goes (matmuls by kind, attention, the per-element work), for diagnosing
//! performance without an instrumented build. The step bench prints it with
//! `INFLIGHT_PROFILE_STEP=1`. Switched off (the default), a section costs one relaxed
//! atomic load.
//!
//! The counters are process-wide: every forward pass that runs while profiling is on
//! adds to them, whichever model or thread runs it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A part of the forward pass, in the order a layer runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Embedding,
    /// RMS norms and residual adds.
    NormsResiduals,
    QkvMatmul,
    /// RoPE on queries and keys, and the KV cache write.
    RopeKvWrite,
    Attention,
    AttnOutMatmul,
    GateUpMatmul,
    Swiglu,
    DownMatmul,
    LmHead,
}

impl Section {
    pub const ALL: [Section; 10] = [
        Section::Embedding,
        Section::NormsResiduals,
        Section::QkvMatmul,
        Section::RopeKvWrite,
        Section::Attention,
        Section::AttnOutMatmul,
        Section::GateUpMatmul,
        Section::Swiglu,
        Section::DownMatmul,
        Section::LmHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Embedding => "embedding lookup",
            Section::NormsResiduals => "RMS norms, residual adds",
            Section::QkvMatmul => "QKV matmul",
            Section::RopeKvWrite => "RoPE, KV cache write",
            Section::Attention => "attention over the cache",
            Section::AttnOutMatmul => "attention output matmul",
            Section::GateUpMatmul => "gate + up matmul",
            Section::Swiglu => "SwiGLU",
            Section::DownMatmul => "down matmul",
            Section::LmHead => "lm_head (final norm + matmul)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static PASSES: AtomicU64 = AtomicU64::new(0);
static NANOS: [AtomicU64; Section::ALL.len()] = [const { AtomicU64::new(0) }; Section::ALL.len()];

/// Turns profiling on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f`, adding its wall time to `section` when profiling is on.
#[inline]
pub fn time<T>(section: Section, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    NANOS[section.index()].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

/// Counts one forward pass (the denominator of [`Profile`]'s per-pass figures).
pub(crate) fn count_pass() {
    if enabled() {
        PASSES.fetch_add(1, Ordering::Relaxed);
    }
}

/// The time spent per section since the last [`take`].
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub passes: u64,
    /// Nanoseconds per section, indexed as [`Section::ALL`].
    pub nanos: [u64; Section::ALL.len()],
}

impl Profile {
    /// Mean milliseconds per forward pass in `section`.
    pub fn ms_per_pass(&self, section: Section) -> f64 {
        self.nanos[section.index()] as f64 / 1e6 / self.passes.max(1) as f64
    }

    pub fn total_ms_per_pass(&self) -> f64 {
        Section::ALL.iter().map(|&s| self.ms_per_pass(s)).sum()
    }
}

/// Returns the counters and resets them.
pub fn take() -> Profile {
    Profile {
        passes: PASSES.swap(0, Ordering::Relaxed),
        nanos: std::array::from_fn(|i| NANOS[i].swap(0, Ordering::Relaxed)),
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total_ms_per_pass();
        writeln!(f, "| section | ms per pass | share |")?;
        writeln!(f, "|---|---:|---:|")?;
        for s in Section::ALL {
            let ms = self.ms_per_pass(s);
            writeln!(f, "| {} | {ms:.2} | {:.0}% |", s.name(), 100.0 * ms / total.max(f64::MIN_POSITIVE))?;
        }
        write!(f, "| **sections, summed** ({} passes) | **{total:.2}** | |", self.passes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_accumulate_only_while_enabled() {
        // Other tests may run forward passes meanwhile; only lower bounds hold.
        set_enabled(true);
        let _ = take();
        let slept = time(Section::Swiglu, || {
            std::thread::sleep(std::time::Duration::from_millis(3));
            7
        });
        count_pass();
        set_enabled(false);
        time(Section::LmHead, || std::thread::sleep(std::time::Duration::from_millis(3)));
        let p = take();
        assert_eq!(slept, 7);
        assert!(p.passes >= 1);
        assert!(p.nanos[Section::Swiglu.index()] >= 3_000_000, "{p:?}");
        assert!(p.to_string().contains("| SwiGLU |"), "{p}");
    }
}
