//! An ordered stage keeps to its throttle: with `throttle(t)` and `w` workers, it runs at
//! most about `t × (w + 1)` items ahead of a consumer that stalls, as an unordered one
//! does: `t` in its output queue, and up to `t` in each worker's hands (the batch it
//! works on, and the outputs it handed in to wait for their turn).
//!
//! The consumer is a stage that takes a millisecond per item, so the stage in front of it
//! is always held back by it. The lead is what the stage's function was called with
//! beyond what the consumer finished, sampled after each output. [`slack`] covers what
//! the consumer holds itself: the batch it took from the queue (at most the queue's `t`
//! items) and the item it is on. No assertion is on a duration.
//!
//! A process stage may have one more item per worker: see
//! [`an_ordered_process_stage_runs_at_most_its_throttle_per_worker_ahead`].

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::with_timeout;
use pyper::{task, Pipeline};

#[cfg(feature = "process")]
pyper::process_test_support!();

/// Outputs taken in each run: enough for every worker to have been held back many times.
const OUTPUTS: u64 = 500;

/// Beyond `t × (w + 1)`: the consumer's batch (at most `t`) and the item in its hands.
const fn slack(throttle: u64) -> u64 {
    throttle + 1
}

fn bound(throttle: u64, workers: u64) -> u64 {
    throttle * (workers + 1) + slack(throttle)
}

/// Feeds an endless input through `stage`, whose function counts its calls in
/// `started`, then through a stage that takes a millisecond per item. Returns the most
/// items `stage` started beyond those the slow stage finished, sampled after each output.
fn lead(stage: Pipeline<u64, u64>, started: &AtomicU64) -> u64 {
    let finished = Arc::new(AtomicU64::new(0));
    let slow = task({
        let finished = Arc::clone(&finished);
        move |x: u64| {
            std::thread::sleep(Duration::from_millis(1));
            finished.fetch_add(1, Ordering::SeqCst);
            x
        }
    });
    let mut output = (stage | slow).feed(0..);
    let mut worst = 0;
    for expected in 0..OUTPUTS {
        assert_eq!(output.next().unwrap().unwrap(), expected, "in order");
        let lead = started
            .load(Ordering::SeqCst)
            .saturating_sub(finished.load(Ordering::SeqCst));
        worst = worst.max(lead);
    }
    worst
}

/// Runs `make(started, throttle, workers)` at throttle 1 and 2, with 2 and 4 workers, and
/// asserts each ran no further ahead than [`bound`] plus `beyond(throttle, workers)`.
fn assert_bounded(
    kind: &str,
    beyond: impl Fn(u64, u64) -> u64,
    make: impl Fn(Arc<AtomicU64>, usize, usize) -> Pipeline<u64, u64>,
) {
    for throttle in [1, 2] {
        for workers in [2, 4] {
            let started = Arc::new(AtomicU64::new(0));
            let stage = make(Arc::clone(&started), throttle, workers);
            let worst = lead(stage, &started);
            let (t, w) = (throttle as u64, workers as u64);
            let bound = bound(t, w) + beyond(t, w);
            assert!(
                worst <= bound,
                "an ordered {kind} stage with throttle({throttle}) and {workers} workers ran \
                 {worst} items ahead of its stalled consumer (bound {bound})"
            );
        }
    }
}

#[test]
fn an_ordered_thread_stage_runs_at_most_its_throttle_per_worker_ahead() {
    with_timeout(120, || {
        assert_bounded(
            "thread",
            |_, _| 0,
            |started, throttle, workers| {
                task(move |x: u64| {
                    started.fetch_add(1, Ordering::SeqCst);
                    x
                })
                .workers(workers)
                .throttle(throttle)
                .ordered()
                .into()
            },
        );
    });
}

#[cfg(feature = "async")]
#[test]
fn an_ordered_async_stage_runs_at_most_its_throttle_per_worker_ahead() {
    with_timeout(120, || {
        assert_bounded(
            "async",
            |_, _| 0,
            |started, throttle, workers| {
                pyper::async_task(move |x: u64| {
                    started.fetch_add(1, Ordering::SeqCst);
                    async move { x }
                })
                .workers(workers)
                .throttle(throttle)
                .ordered()
                .into()
            },
        );
    });
}

#[cfg(feature = "process")]
fn identity(x: u64) -> u64 {
    x
}

/// A process function cannot count in the test's memory, so a one-worker thread stage
/// with `throttle(1)` counts the items in front of it: it holds two of its own (one in
/// its queue, one in its hands), and the process stage's input queue holds one item, so
/// each worker process has at most one item beyond `t × (w + 1)`: the batch it was sent
/// before its supervisor hands in and waits. (A supervisor that took no more than the
/// room its sequencer leaves would not have it; that choice lives in `stage/process/`.)
#[cfg(feature = "process")]
#[test]
fn an_ordered_process_stage_runs_at_most_its_throttle_per_worker_ahead() {
    with_timeout(120, || {
        assert_bounded(
            "process",
            |_, workers| workers + 2,
            |started, throttle, workers| {
                let count = task(move |x: u64| {
                    started.fetch_add(1, Ordering::SeqCst);
                    x
                })
                .throttle(1);
                count
                    | pyper::process_task!(identity)
                        .workers(workers)
                        .throttle(throttle)
                        .ordered()
            },
        );
    });
}
