//! The serving engine: scheduling, KV block accounting, sampling, detokenizing
//! and stop handling. `core` is the synchronous step loop every front end drives.

pub mod block_pool;
pub mod core;
pub mod fair_queue;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod service;
pub mod step_cost;
pub mod stop;
pub mod throughput;
