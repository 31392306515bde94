//! The serving engine: scheduling, KV block accounting, sampling and stop handling.

pub mod block_pool;
pub mod sampling;
pub mod stop;
