//! The Neuron backend (AWS Inferentia2, through libnrt). Built so far: the runtime's
//! C ABI (`ffi`: the functions, enum values and struct layouts the backend binds,
//! checked by tests), the library's loading at run time from the paths a user can
//! name (`library`), its status codes as errors (`status`), owners of its handles
//! (`runtime`), and the reader of the compiled artifacts' manifest with the step
//! shapes it implies (`manifest`, specified in `neuron/README.md`). The tests run
//! these on the libnrt emulator (`neuron/emulator`). Planned: `NeuronBackend` itself.
//!
//! Nothing here links against libnrt: the binary builds and runs anywhere, and
//! `--backend neuron` without the library is a clear error naming every path tried.

mod backend;
pub mod ffi;
pub mod library;
pub mod manifest;
pub mod runtime;
pub mod status;

pub use backend::NeuronBackend;
