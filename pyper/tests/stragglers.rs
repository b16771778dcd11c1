//! Stragglers: an item that is suddenly slow must not hold back the quick items a worker
//! took with it while the stage's other workers are idle.
//!
//! Nothing here measures speed: the blocked item waits on a gate, and the test only opens
//! it once every other item has come out, so it passes or hangs (a watchdog turns the hang
//! into a failure that says how many items were stuck).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{with_timeout, Gate};
use pyper::task;

/// How long the test waits for the items other than the blocked one: a hang detector.
const WATCHDOG: Duration = Duration::from_secs(30);

#[test]
fn quick_items_do_not_wait_behind_a_blocked_one_while_a_worker_is_free() {
    // Trivial items, so that workers take them in large batches; item 5,000 blocks until
    // the gate opens. Its worker is stuck, the other one is free: every other item must
    // reach the consumer meanwhile, whichever batch it was in.
    const N: u64 = 20_000;
    const BLOCKED: u64 = 5_000;
    let (stuck, outputs) = with_timeout(60, || {
        let gate = Arc::new(Gate::new());
        let stage = task({
            let gate = Arc::clone(&gate);
            move |x: u64| {
                if x == BLOCKED {
                    gate.wait();
                }
                x
            }
        })
        .workers(2);
        let output = stage.feed(0..N);
        let seen = Arc::new(AtomicU64::new(0));
        let consumer = std::thread::spawn({
            let seen = Arc::clone(&seen);
            move || {
                let mut outputs = Vec::new();
                for result in output {
                    outputs.push(result.unwrap());
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                outputs
            }
        });
        let started = Instant::now();
        while seen.load(Ordering::SeqCst) < N - 1 && started.elapsed() < WATCHDOG {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stuck = N - 1 - seen.load(Ordering::SeqCst).min(N - 1);
        gate.open();
        (stuck, consumer.join().unwrap())
    });
    assert_eq!(
        stuck, 0,
        "{stuck} quick items were still held back after {WATCHDOG:?} behind item {BLOCKED}, \
         which was blocked, while the stage's other worker was free"
    );
    assert_eq!(
        outputs.last(),
        Some(&BLOCKED),
        "the blocked item comes out last"
    );
    let mut sorted = outputs;
    sorted.sort_unstable();
    assert_eq!(sorted, (0..N).collect::<Vec<_>>());
}
