//! Helpers shared by the integration tests: one lock that serializes a file's tests, hang
//! detection with generous bounds, and counters of live futures and of pyper's threads.
//!
//! Nothing here measures speed. A bound only turns a hang into a failure with a message.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod base;

pub use base::{wait_until, HANG};
// For `fault_common`, which the async fault tests share with the thread ones.
#[allow(unused_imports)]
pub use base::hide_panics_starting_with;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Serializes the tests of a file: some count the process's threads, which every test that
/// runs a pipeline changes. A tokio mutex, so async tests can hold it across `.await`s, and
/// a failing test does not poison it for the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the file-wide lock, from a sync test.
pub fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// Takes the file-wide lock, from an async test.
pub async fn serial_async() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Runs `body` on a thread of its own and returns its result, or fails the test if it has
/// not finished within twice [`HANG`] (so that a wait inside `body`, bounded by [`HANG`],
/// fails first and says what it was waiting for). A panic in `body` is the test's panic.
pub fn within<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    within_for(2 * HANG, what, body)
}

/// [`within`] with another bound.
pub fn within_for<T: Send + 'static>(
    bound: Duration,
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let _ = done.send(body());
        })
        .expect("spawn the test body");
    match result.recv_timeout(bound) {
        Ok(value) => {
            handle.join().expect("the body returned");
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("hang: {what} did not finish within {bound:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body sends its result before it returns"),
        },
    }
}

/// Awaits `future`, or fails the test if it has not completed within [`HANG`].
pub async fn within_async<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(value) => value,
        Err(_) => panic!("hang: {what} did not complete within {HANG:?}"),
    }
}

/// [`wait_until`] for async code: never blocks the runtime.
pub async fn wait_until_async(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < HANG,
            "hang: {what} still not true after {HANG:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The names of the process's threads, from `/proc/self/task/*/comm` (at most 15 bytes each).
pub fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            // A thread may end between the listing and the read: skip it.
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            Some(comm.trim_end().to_owned())
        })
        .collect()
}

/// How many worker threads of pipeline runs exist: thread stages and input iterators,
/// named `pyper:<stage>`. pyper's runtime threads (`pyper-async`) live for the whole process
/// and are not counted.
pub fn pyper_threads() -> usize {
    thread_names()
        .iter()
        .filter(|name| name.starts_with("pyper:"))
        .count()
}

/// Waits for the worker threads of earlier tests to be gone (a dropped stream lets its
/// workers wind down in the background), and returns the count to come back to.
pub fn thread_baseline() -> usize {
    let start = Instant::now();
    while pyper_threads() > 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    pyper_threads()
}

/// [`thread_baseline`] for async code.
pub async fn thread_baseline_async() -> usize {
    let start = Instant::now();
    while pyper_threads() > 0 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pyper_threads()
}

/// Counts live guards, and the most that were ever live at once: futures in flight, say.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// One more live guard, until the returned value is dropped.
    pub fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(Arc::clone(self))
    }

    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Held while something is live; see [`Gauge`].
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pseudo-random number below `modulo`, fixed by `seed`: random-looking delays that are
/// the same on every run.
pub fn scramble(seed: u64, modulo: u64) -> u64 {
    let mut h = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (h ^ (h >> 31)) % modulo
}
