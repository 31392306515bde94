//! Fault injection for tests, never for serving: [`FaultInjectingBackend`] wraps
//! a real backend and fails the steps it is told to, so the tests can check what
//! a failed step does to the engine and the API on the real model. The server
//! reaches it only through the hidden, test-only `--inject-step-faults` flag.

use std::collections::BTreeSet;

use crate::backend::{Backend, BackendError, BackendInfo, Logits, StepBatch};

pub struct FaultInjectingBackend {
    inner: Box<dyn Backend>,
    /// Step numbers (counted from 1 over the backend's life) that fail.
    fail_at: BTreeSet<u64>,
    steps: u64,
}

impl FaultInjectingBackend {
    pub fn new(inner: Box<dyn Backend>, fail_at: impl IntoIterator<Item = u64>) -> Self {
        Self { inner, fail_at: fail_at.into_iter().collect(), steps: 0 }
    }
}

impl Backend for FaultInjectingBackend {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    /// A chosen step fails before the inner backend sees it, as a device error
    /// would; the log line says how many sequences it held, which is how many
    /// requests a test should see fail.
    fn step(&mut self, batch: &StepBatch) -> Result<Logits, BackendError> {
        self.steps += 1;
        if self.fail_at.contains(&self.steps) {
            tracing::warn!(step = self.steps, seqs = batch.seqs.len(), "injected step fault");
            return Err(BackendError::Unavailable(format!("injected fault at step {}", self.steps)));
        }
        self.inner.step(batch)
    }
}
