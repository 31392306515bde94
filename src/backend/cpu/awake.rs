//! Keeps a step's worker threads awake between its parallel loops.
//!
//! A step is a few hundred parallel loops (every matmul, every attention call) with
//! short serial stretches between them (norms, RoPE, a one-sequence attention).
//! Rayon's idle workers go to sleep after a few dozen fruitless rounds, and waking
//! one costs more than a small loop's share of the work: a decode step's attention
//! output matmul ran slower on two threads than on one. So for the length of a step
//! the pool's other threads poll for its work instead, as llama.cpp's and oneDNN's
//! thread pools spin between operations; between steps they sleep as usual.
//! `INFLIGHT_WORKERS_POLL=0` turns it off (for a host whose cores are shared with
//! other busy processes, where a polling thread only takes time from them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a poller goes on finding no work before it leaves: longer than the serial
/// stretches between a step's parallel loops, short enough that a poller stuck above
/// the work it interrupted (see below) holds the step up only this long.
const MAX_IDLE: Duration = Duration::from_millis(1);

/// Runs `f` on this thread (one of a rayon pool's) while the pool's other threads poll
/// for the parallel work it hands out.
pub fn with_workers_polling<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let Some(me) = rayon::current_thread_index() else {
        return f();
    };
    if rayon::current_num_threads() < 2 || !enabled() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|s| {
        s.spawn_broadcast(|_, ctx| {
            // This thread's own copy returns at once: it is the one running `f`.
            if ctx.index() == me {
                return;
            }
            let mut idle_since = None;
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle_since = None;
                    continue;
                }
                // A thread may start this job while it waits inside a piece of `f`'s
                // work it took (rayon runs pending jobs there), and that piece cannot
                // finish under it: so a poller that finds nothing for a while leaves.
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > MAX_IDLE {
                    return;
                }
                // Awake, but not holding the core from a runnable thread.
                std::thread::yield_now();
            }
        });
        // Set however `f` ends: the scope waits for the pollers, which wait for this.
        let _stop = SetOnDrop(&done);
        f()
    })
}

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("INFLIGHT_WORKERS_POLL").map_or(true, |v| v != "0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool")
    }

    /// The work `f` hands out is done (by every thread), its result comes back, and the
    /// pollers stop: the call returns, step after step.
    #[test]
    fn parallel_work_inside_is_done_and_the_pollers_stop() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            for step in 0..50u64 {
                let sum = pool.install(|| {
                    with_workers_polling(|| (0..10_000u64).into_par_iter().map(|i| i * step).sum::<u64>())
                });
                assert_eq!(sum, step * 10_000 * 9_999 / 2);
            }
        }
    }

    /// Nested parallel loops on three threads, many steps: a thread that takes a piece of
    /// the step's work and starts its poller while waiting inside it must not hold the
    /// step up for good (it did before pollers left when idle).
    #[test]
    fn nested_parallel_work_never_deadlocks_under_the_pollers() {
        let pool = pool(3);
        for step in 0..2_000u64 {
            let sum = pool.install(|| {
                with_workers_polling(|| {
                    (0..8u64)
                        .into_par_iter()
                        .map(|i| (0..64u64).into_par_iter().map(|j| i * j + step).sum::<u64>())
                        .sum::<u64>()
                })
            });
            assert_eq!(sum, 28 * 2016 + 512 * step);
        }
    }

    /// A panic in `f` reaches the caller instead of leaving the pollers waiting.
    #[test]
    fn a_panic_inside_reaches_the_caller() {
        let pool = pool(2);
        let result = pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_workers_polling(|| {
                    (0..100).into_par_iter().for_each(|i| assert!(i < 1_000));
                    panic!("step failed")
                })
            }))
        });
        assert!(result.is_err());
        // The pool still runs work afterwards.
        assert_eq!(pool.install(|| with_workers_polling(|| (0..10u32).into_par_iter().sum::<u32>())), 45);
    }
}
