//! The synchronisation primitives the engine is built on.
//!
//! Every lock, condition variable, atomic and thread of the shutdown protocol (the queue,
//! the run, the sequencer, the shelf, the launcher) comes from here, the way tokio routes
//! its primitives through `src/loom/`. The meters, the tuner and the async-only parts stay
//! on `std`; ARCHITECTURE.md ("What `sync.rs` covers") says why. With the `shuttle` feature they are
//! shuttle's, so `tests/model_check.rs` can explore the interleavings of the *real* queue
//! and shutdown code rather than of a hand-written model of it.

#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::thread;
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::thread_local;

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::thread;
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::thread_local;

pub(crate) use std::sync::Arc;

#[cfg(not(feature = "shuttle"))]
pub(crate) use std::time::Instant;

/// Under shuttle a clock would make schedules unrepeatable, so every interval is zero.
#[cfg(feature = "shuttle")]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant;

#[cfg(feature = "shuttle")]
impl std::ops::Add<std::time::Duration> for Instant {
    type Output = Instant;

    fn add(self, _: std::time::Duration) -> Instant {
        Instant
    }
}

#[cfg(feature = "shuttle")]
impl Instant {
    pub(crate) fn now() -> Self {
        Instant
    }

    pub(crate) fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    pub(crate) fn saturating_duration_since(&self, _earlier: Instant) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Locks `mutex`, ignoring poison.
///
/// Poison is irrelevant here: user code never runs while one of the engine's locks is held,
/// and a panic inside the engine is caught and reported by the worker that owns it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for a `std` mutex that stays `std`'s under shuttle too: state outside the
/// model-checked protocol (metrics, timed calls), which shuttle's threads never touch.
pub(crate) fn lock_std<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar`, ignoring poison (see [`lock`]).
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar` for at most `timeout`, ignoring poison (see [`lock`]); also says
/// whether it timed out. (Shuttle's never times out.)
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> (MutexGuard<'a, T>, bool) {
    let (guard, result) = condvar
        .wait_timeout(guard, timeout)
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    (guard, result.timed_out())
}
