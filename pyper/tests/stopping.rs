//! How a run stops when something in it will not (issue 14), beyond the one-per-repro
//! tests of `reliability.rs`:
//!
//! * a `branch` iterator that blocks inside a timed call (which runs on a helper thread)
//!   does not delay a cancel either;
//! * items whose `Drop` panics every time, even while a panic unwinds, are dropped one by
//!   one when a stopped run lets go of them, so the process is not aborted and the run's
//!   own error comes back;
//! * a blocking read inside an async task is refused only for a run that needs pyper's
//!   runtime: a sync run read so still works.
//!
//! Every wait is bounded by a watchdog; nothing asserts on speed.

mod common;
mod reliability_common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{hide_panics_starting_with, with_timeout};
use pyper::{task, try_task};
use reliability_common::{child_watchdog, is_child, run_child};

/// The watchdog of a run that must return promptly, in seconds: far above what a correct
/// run takes, even on a loaded machine.
const PROMPT: u64 = 20;

/// An iterator over what its channel holds, which then blocks until the channel's sender
/// is dropped.
struct Blocking(Arc<Mutex<mpsc::Receiver<u64>>>);

impl Iterator for Blocking {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.0.lock().unwrap().recv().ok()
    }
}

#[test]
fn a_cancel_is_not_delayed_by_a_blocking_branch_iterator_in_a_timed_call() {
    let (sender, receiver) = mpsc::channel::<u64>();
    sender.send(1).unwrap();
    let receiver = Arc::new(Mutex::new(receiver));
    let entered = Arc::new(AtomicU64::new(0));
    let stage = {
        let entered = Arc::clone(&entered);
        task(move |_: u64| {
            entered.fetch_add(1, SeqCst);
            Blocking(Arc::clone(&receiver))
        })
        .branch()
        .timeout(Duration::from_secs(3600))
        .name("timed branch")
    };
    let outputs = with_timeout(PROMPT, move || {
        let mut outputs = stage.run(0);
        let canceller = outputs.canceller();
        let cancel = std::thread::spawn(move || {
            while entered.load(SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // The helper thread is now blocked in the iterator, after its one element.
            std::thread::sleep(Duration::from_millis(100));
            canceller.cancel();
        });
        // A timed call hands its outputs on once it has returned: none came.
        let outputs: Vec<_> = outputs.by_ref().collect();
        cancel.join().unwrap();
        outputs.len()
    });
    assert_eq!(outputs, 0, "a cancelled timed call hands nothing on");
    drop(sender);
}

/// The cancel of the run whose [`Grenade`]s are watched.
static GRENADE_RUN: OnceLock<pyper::Canceller> = OnceLock::new();
/// How many [`Grenade`]s went off.
static GRENADES_FIRED: AtomicU64 = AtomicU64::new(0);
/// How many [`Grenade`]s the first stage made.
static GRENADES_MADE: AtomicU64 = AtomicU64::new(0);

/// An item whose `Drop` panics whenever it runs on one of the engine's threads after its
/// run stopped, even while another panic unwinds: a second panic during an unwind aborts
/// the process, unless the engine drops such items one at a time.
struct Grenade(#[allow(dead_code)] u64);

impl Drop for Grenade {
    fn drop(&mut self) {
        let stopped = GRENADE_RUN
            .get()
            .is_some_and(pyper::Canceller::is_cancelled);
        let on_engine = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("pyper"));
        if stopped && on_engine {
            GRENADES_FIRED.fetch_add(1, SeqCst);
            panic!("grenade went off in its drop");
        }
    }
}

#[test]
fn items_whose_drop_always_panics_do_not_abort_a_stopping_run() {
    const TEST: &str = "items_whose_drop_always_panics_do_not_abort_a_stopping_run";
    if is_child(TEST) {
        child_watchdog(Duration::from_secs(60));
        hide_panics_starting_with("grenade");
        let make = task(|x: u64| {
            GRENADES_MADE.fetch_add(1, SeqCst);
            Grenade(x)
        })
        .throttle(32)
        .name("make");
        let check = try_task(|grenade: Grenade| {
            let value = grenade.0;
            std::mem::forget(grenade);
            if value == 3 {
                // Let `make` fill its queue (the count of grenades made stops moving), so
                // that the failure's cancel finds grenades in it.
                let mut last = GRENADES_MADE.load(SeqCst);
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(20));
                    let now = GRENADES_MADE.load(SeqCst);
                    if now == last && now > 32 {
                        break;
                    }
                    last = now;
                }
                Err("fail")
            } else {
                Ok(value)
            }
        })
        .name("check");
        let mut outputs = (make | check).feed(0..);
        assert!(GRENADE_RUN.set(outputs.canceller()).is_ok(), "one run only");
        let err = outputs.find_map(Result::err).expect("the run fails");
        assert_eq!(err.stage(), Some("check"), "{err:#}");
        assert!(format!("{err:#}").ends_with(": fail"), "{err:#}");
        drop(outputs);
        println!(
            "CHILD-DONE: {} grenades went off",
            GRENADES_FIRED.load(SeqCst)
        );
        return;
    }
    let child = run_child(TEST, &[], Duration::from_secs(90));
    assert!(
        child.succeeded() && child.stdout.contains("CHILD-DONE"),
        "a stopping run must contain every panicking drop\n{}",
        child.describe()
    );
    let fired: u64 = child
        .stdout
        .lines()
        .find_map(|line| Some(line.split_once("CHILD-DONE: ")?.1))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        fired >= 2,
        "the scene was not set: {fired} grenades went off, so this test did not exercise a \
         second panicking drop\n{}",
        child.describe()
    );
}

#[cfg(feature = "async")]
#[test]
fn a_blocking_read_of_a_sync_run_inside_an_async_task_still_works() {
    let result = with_timeout(PROMPT, || {
        pyper::async_task(|x: u64| async move {
            // Blocking, but on threads of the inner run's own: nothing it needs waits.
            let inner = task(|y: u64| y + 1).name("inner");
            inner.run(x).next().map(|r| r.unwrap()).unwrap_or(0)
        })
        .workers(4)
        .name("outer")
        .feed(0..8u64)
        .collect::<Result<Vec<u64>, _>>()
    });
    let mut outputs = result.expect("a sync inner run is not refused");
    outputs.sort_unstable();
    assert_eq!(outputs, (1..=8).collect::<Vec<_>>());
}
