//! All integration tests, compiled into one binary to keep link time down.
//! They run the real default model (fetched by `.ci/run`, or by
//! `inflight models pull`) on the CPU backend.

mod support;

mod api;
mod bench;
mod cli;
mod cuda_twin;
mod deploy;
mod faults;
mod fidelity;
mod layers;
mod neuron;
mod neuron_compile;
mod neuron_runtime;
mod openapi;
mod prompt_logprobs;
mod score;
mod startup;
mod template_sandbox;
mod tenants;
