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

/// Polls `condition` until it holds or [`WATCHDOG`] runs out. The tests go on either way
/// (to open their gates, so the run can end) and report what did not come.
fn wait_watched(started: Instant, condition: impl Fn() -> bool) {
    while !condition() && started.elapsed() < WATCHDOG {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reads `output` on a thread of its own, counting the outputs as they come.
fn read_counting(
    output: pyper::Output<u64>,
) -> (Arc<AtomicU64>, std::thread::JoinHandle<Vec<u64>>) {
    let seen = Arc::new(AtomicU64::new(0));
    let reader = std::thread::spawn({
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
    (seen, reader)
}

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
        let (seen, consumer) = read_counting(output);
        wait_watched(Instant::now(), || seen.load(Ordering::SeqCst) >= N - 1);
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

/// A worker of slow items hands each item's outputs on as it finishes it, even while the
/// consumer is busy: it does not keep them until a batch's worth is gathered.
///
/// The consumer blocks on its first item, so the queue in front of it is not empty when
/// the next outputs come. Then both workers of the stage block on their last items. Every
/// output of the items before must reach the consumer once it goes on. (Kept by their
/// workers, they would wait for those blocked items: `auto-mixed` and the main example
/// starved their second stage so while its workers had all it needed, and their tuner
/// read the outputs kept as a consumer falling behind.)
#[test]
fn a_worker_of_slow_items_hands_each_output_on_while_the_consumer_is_busy() {
    const QUICK: u64 = 6;
    let (stuck, outputs) = with_timeout(60, || {
        let (last_items, consumer_busy) = (Arc::new(Gate::new()), Arc::new(Gate::new()));
        let blocked = Arc::new(AtomicU64::new(0));
        let slow = task({
            let (last_items, blocked) = (Arc::clone(&last_items), Arc::clone(&blocked));
            move |x: u64| {
                if x >= QUICK {
                    blocked.fetch_add(1, Ordering::SeqCst);
                    last_items.wait();
                } else {
                    // Slow enough that each batch is one item.
                    std::thread::sleep(Duration::from_millis(1));
                }
                x
            }
        })
        .workers(2);
        let consumer = task({
            let consumer_busy = Arc::clone(&consumer_busy);
            move |x: u64| {
                if x == 0 {
                    consumer_busy.wait();
                }
                x
            }
        });
        let output = (slow | consumer).feed(0..QUICK + 2);
        let (seen, reader) = read_counting(output);
        let started = Instant::now();
        wait_watched(started, || blocked.load(Ordering::SeqCst) >= 2);
        consumer_busy.open();
        wait_watched(started, || seen.load(Ordering::SeqCst) >= QUICK);
        let stuck = QUICK - seen.load(Ordering::SeqCst).min(QUICK);
        last_items.open();
        (stuck, reader.join().unwrap())
    });
    assert_eq!(
        stuck, 0,
        "{stuck} outputs of quick items were kept by workers blocked on their next item"
    );
    let mut sorted = outputs;
    sorted.sort_unstable();
    assert_eq!(sorted, (0..QUICK + 2).collect::<Vec<_>>());
}
