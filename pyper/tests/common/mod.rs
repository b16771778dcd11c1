//! Helpers shared by the integration tests: hang detection, counting the engine's threads,
//! serialising the tests that count them, a tiny seeded RNG, this process's children, and
//! the panic hook that hides deliberate panics.
//!
//! Nothing here measures speed. Every bound is a generous hang detector: a test that hits
//! one has found a deadlock or a leak, not a slow machine.
#![allow(dead_code)]

pub mod grandchild;
pub mod pyper_helpers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before we call it a hang.
pub const HANG: Duration = Duration::from_secs(60);

/// Runs `f` on a thread of its own and returns its result, or panics with "hang detected"
/// if it has not finished after `secs` seconds. A panic in `f` is propagated as is.
///
/// This only detects hangs: the bound is generous and never a speed assertion.
pub fn with_timeout<T, F>(secs: u64, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done, result) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("hang-guarded".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(outcome);
        })
        .expect("spawn the guarded thread");
    match result.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(value)) => {
            let _ = handle.join();
            value
        }
        Ok(Err(payload)) => {
            let _ = handle.join();
            std::panic::resume_unwind(payload)
        }
        Err(_) => panic!(
            "hang detected: the test body did not finish within {secs} s; live pyper threads: {:?}",
            pyper_thread_names()
        ),
    }
}

/// The names of the live threads of this process whose name starts with `pyper:` (Linux
/// truncates thread names to 15 bytes).
pub fn pyper_thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("comm");
            // A thread may exit between the listing and the read: skip it.
            let name = std::fs::read_to_string(path).ok()?;
            let name = name.trim_end_matches('\n').to_owned();
            name.starts_with("pyper:").then_some(name)
        })
        .collect()
}

/// How many live threads of this process are the engine's (named `pyper:...`).
pub fn pyper_threads() -> usize {
    pyper_thread_names().len()
}

/// Waits until exactly `expected` engine threads are alive, polling, and panics with the
/// names of the survivors if that does not happen within [`HANG`].
///
/// A joined thread can linger in `/proc` for a moment after `join` returned, and a
/// detached daemon worker exits on its own schedule, so counts are always awaited, never
/// read once.
pub fn wait_for_pyper_threads(expected: usize) {
    let start = Instant::now();
    loop {
        let names = pyper_thread_names();
        if names.len() == expected {
            return;
        }
        if start.elapsed() > HANG {
            panic!(
                "leaked threads: expected {expected} pyper threads, still {} alive after {:?}: {names:?}",
                names.len(),
                HANG
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls `condition` until it holds; panics with "hang detected: {what}" after [`HANG`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > HANG {
            panic!("hang detected: {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises the tests of one file. Every test of a file that counts threads takes it,
/// since cargo runs the tests of one file on parallel threads of one process.
/// Poison-tolerant: one failed test must not fail the others.
pub fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lets a stage's code wait until the run it belongs to was cancelled (by a failure, a
/// cancel or a drop of the output): attach the output's canceller before the first `next`.
///
/// Waiting for the cancel is how a test makes one event certainly come *after* the run's
/// first failure was recorded, or after a drop began, without sleeping.
#[derive(Default, Clone)]
pub struct RunProbe(Arc<OnceLock<pyper::Canceller>>);

impl RunProbe {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn attach(&self, canceller: pyper::Canceller) {
        assert!(self.0.set(canceller).is_ok(), "attached twice");
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.get().is_some_and(pyper::Canceller::is_cancelled)
    }

    /// Cancels the run, as a stage's code may through the canceller.
    pub fn cancel(&self) {
        self.0
            .get()
            .expect("attached before the first output")
            .cancel();
    }

    pub fn wait_cancelled(&self) {
        wait_until("the run was never cancelled", || self.is_cancelled());
    }
}

/// A one-shot latch: `wait` blocks until `open` was called (or panics after [`HANG`]).
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    pub fn is_open(&self) -> bool {
        *self.open.lock().unwrap()
    }

    pub fn wait(&self) {
        let guard = self.open.lock().unwrap();
        let (guard, timeout) = self
            .opened
            .wait_timeout_while(guard, HANG, |open| !*open)
            .unwrap();
        drop(guard);
        assert!(!timeout.timed_out(), "hang detected: a gate never opened");
    }
}

/// Counts how many callers are inside a section at once, and the most there ever were.
#[derive(Default)]
pub struct Concurrency {
    inside: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn enter(&self) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    pub fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// A tiny xorshift64* generator, so the random tests are reproducible without a crate.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Zero is a fixed point of xorshift; mix the seed so small seeds differ a lot.
        XorShift(mix(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A stateless hash of one value (splitmix64's finaliser), for per-item "random" choices
/// that every thread computes the same way.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A short, item-dependent pause (0 to `max_micros` µs) that shuffles completion order.
/// Never what a test's outcome depends on.
pub fn jitter(item: u64, salt: u64, max_micros: u64) {
    let micros = mix(item ^ salt.rotate_left(17)) % (max_micros + 1);
    if micros > 0 {
        std::thread::sleep(Duration::from_micros(micros));
    }
}

/// The pids of this process's children (processes only: `/proc` lists no threads), alive
/// or zombie.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let pid: u32 = name.to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: the name may hold spaces and parentheses.
            let after_name = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == me).then_some(pid)
        })
        .collect()
}

/// Hides the panic messages (and backtraces) of deliberate panics, whose message starts
/// with `prefix`; every other panic is reported as usual. Installed once per process.
pub fn hide_panics_starting_with(prefix: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with(prefix) {
                default(info);
            }
        }));
    });
}

/// The message of a panic's payload: its `&str` or `String`, else a placeholder.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| {
            payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
        })
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
