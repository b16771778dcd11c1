//! Stopping a run: dropping the output at every point, cancelling from another thread,
//! cancelling while stages are blocked, daemon stages, and joins that stop reading early.
//!
//! "Non-daemon workers are joined before the drop (or the error) returns" is checked with
//! counters and flags that user code updates: once the drop has returned they must never
//! change again. Thread counts are awaited, since a joined thread can linger in /proc for
//! a moment. Every test holds the file's lock because they count threads.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use common::{serial, wait_for_pyper_threads, wait_until, with_timeout, Gate, RunProbe};
use pyper::{task, try_task, ErrorKind, Pipeline, Upstream};

/// A counter that user code bumps, to observe how far a run went.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl Counter {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An endless input that counts how many items were pulled.
fn counted_input(pulled: &Counter) -> impl Iterator<Item = u64> + Send + 'static {
    let pulled = pulled.clone();
    (0u64..).inspect(move |_| pulled.bump())
}

/// Three stages that count their calls, with small queues and several workers.
fn counted_pipeline(calls: &Counter) -> Pipeline<u64, u64> {
    let (a, b, c) = (calls.clone(), calls.clone(), calls.clone());
    task(move |x: u64| {
        a.bump();
        x + 1
    })
    .throttle(2)
        | task(move |x: u64| {
            b.bump();
            x * 2
        })
        .workers(3)
        .throttle(1)
        | task(move |x: u64| {
            c.bump();
            x
        })
        .workers(2)
        .ordered()
        .throttle(1)
}

/// After a drop (or a cancel, or an error) returned, no non-daemon user code runs any more:
/// the counters are final. Waiting for the threads to disappear gives any straggler every
/// chance to show up.
fn assert_final(counters: &[&Counter]) {
    let at_return: Vec<u64> = counters.iter().map(|c| c.get()).collect();
    wait_for_pyper_threads(0);
    let later: Vec<u64> = counters.iter().map(|c| c.get()).collect();
    assert_eq!(at_return, later, "user code ran after the run had returned");
}

#[test]
fn drop_before_start_runs_nothing() {
    let _serial = serial();
    let (pulled, calls) = (Counter::default(), Counter::default());
    let out = counted_pipeline(&calls).feed(counted_input(&pulled));
    drop(out);
    let out = counted_pipeline(&calls).run(1);
    drop(out);
    assert_eq!((pulled.get(), calls.get()), (0, 0));
    wait_for_pyper_threads(0);
}

#[test]
fn cancel_before_start_ends_the_output_without_calling_any_stage() {
    let _serial = serial();
    let (pulled, calls) = (Counter::default(), Counter::default());
    with_timeout(60, {
        let (pulled, calls) = (pulled.clone(), calls.clone());
        move || {
            let mut out = counted_pipeline(&calls).feed(counted_input(&pulled));
            let canceller = out.canceller();
            canceller.cancel();
            assert!(canceller.is_cancelled());
            assert!(
                out.next().is_none(),
                "a cancelled run ends without an error"
            );
            assert!(out.next().is_none());
            let mut out = counted_pipeline(&calls).run(1);
            out.canceller().cancel();
            assert!(out.next().is_none());
        }
    });
    assert_eq!(calls.get(), 0, "no stage was called after the cancel");
    // The source may have pulled one item before it noticed the cancel; never more.
    assert!(pulled.get() <= 1, "pulled {}", pulled.get());
    assert_final(&[&pulled, &calls]);
}

#[test]
fn drop_right_after_start_mid_stream_and_after_the_end() {
    let _serial = serial();
    let (pulled, calls) = (Counter::default(), Counter::default());
    for take in [1, 2, 10, 1000, 5000] {
        with_timeout(60, {
            let (pulled, calls) = (pulled.clone(), calls.clone());
            move || {
                let mut out = counted_pipeline(&calls).feed(counted_input(&pulled));
                for i in 0..take {
                    // The middle stage has three unordered workers, so only the shape of
                    // the values is fixed: (x + 1) * 2.
                    let x = out.next().unwrap().unwrap();
                    assert!(x % 2 == 0 && x >= 2, "item {i}: {x}");
                }
                drop(out);
            }
        });
        assert_final(&[&pulled, &calls]);
    }
    // After the end, and after an error: the drop has nothing left to stop.
    with_timeout(60, || {
        let mut out = task(|x: u64| x).feed(0..10);
        assert_eq!(out.by_ref().map(Result::unwrap).sum::<u64>(), 45);
        assert!(out.next().is_none());
        drop(out);
        let mut out = try_task(|x: u64| if x == 5 { Err("five") } else { Ok(x) }).feed(0..);
        assert!(out.find_map(Result::err).is_some());
        assert!(out.next().is_none());
        out.cancel(); // after the end: nothing to do, no error
        assert!(out.next().is_none());
        drop(out);
    });
    wait_for_pyper_threads(0);
}

#[test]
fn cancel_from_another_thread_while_the_consumer_is_blocked_in_next() {
    let _serial = serial();
    let probe = RunProbe::new();
    let entered = Arc::new(Gate::new());
    let finished = Arc::new(AtomicBool::new(false));
    // The stage holds item 0 until the run is cancelled, so no output can exist before the
    // cancel: the consumer's first `next` (which started the run) is certainly blocked when
    // the other thread cancels.
    let stuck = task({
        let (probe, entered, finished) =
            (probe.clone(), Arc::clone(&entered), Arc::clone(&finished));
        move |x: u64| {
            entered.open();
            probe.wait_cancelled();
            finished.store(true, Ordering::SeqCst);
            x
        }
    });
    let p = stuck | task(|x: u64| x);
    let out = p.feed(0..);
    let canceller = out.canceller();
    probe.attach(canceller.clone());
    let cancel = std::thread::spawn({
        let entered = Arc::clone(&entered);
        move || {
            entered.wait();
            canceller.cancel();
        }
    });
    let rest: Vec<_> = with_timeout(60, move || out.collect());
    assert!(
        rest.is_empty(),
        "a cancel yields neither an item nor an error"
    );
    assert!(
        finished.load(Ordering::SeqCst),
        "the non-daemon stage's call ended before the output did"
    );
    cancel.join().unwrap();
    wait_for_pyper_threads(0);
}

#[test]
fn cancel_while_stages_are_blocked_on_full_queues() {
    let _serial = serial();
    for from_another_thread in [false, true] {
        let (pulled, calls) = (Counter::default(), Counter::default());
        with_timeout(60, {
            let (pulled, calls) = (pulled.clone(), calls.clone());
            move || {
                let counted = task({
                    let calls = calls.clone();
                    move |x: u64| {
                        calls.bump();
                        x
                    }
                })
                .throttle(1);
                let mut out = counted.feed(counted_input(&pulled));
                assert_eq!(out.next().unwrap().unwrap(), 0);
                // Item 1 fills the stage's one-item queue and the call for item 2 waits to
                // hand it over: the stage can make no more calls, and the source fills its
                // own queue (one item, as the stage's throttle) with item 3 and blocks
                // handing over item 4.
                wait_until("the stage reached its full queue", || calls.get() == 3);
                wait_until("the source filled its queue", || pulled.get() >= 5);
                if from_another_thread {
                    let canceller = out.canceller();
                    std::thread::spawn(move || canceller.cancel())
                        .join()
                        .unwrap();
                    // What was already handed over may still come; then the output ends.
                    assert!(out.all(|r| r.is_ok()));
                } else {
                    out.cancel();
                    assert!(out.next().is_none());
                }
                assert_eq!(calls.get(), 3, "the blocked stage made no further call");
            }
        });
        assert_final(&[&pulled, &calls]);
    }
}

#[test]
fn a_stuck_daemon_stage_does_not_delay_the_error_or_the_drop() {
    let _serial = serial();
    for drop_instead_of_error in [false, true] {
        let daemon_entered = Arc::new(Gate::new());
        let daemon_finished = Arc::new(AtomicBool::new(false));
        let (release, released) = mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        // The daemon stage passes item 0, then blocks in its call for item 1 until the test
        // releases it: a call the run cannot interrupt.
        let daemon = task({
            let (entered, finished) = (Arc::clone(&daemon_entered), Arc::clone(&daemon_finished));
            move |x: u64| {
                if x == 1 {
                    entered.open();
                    let _ = released.lock().unwrap().recv();
                    finished.store(true, Ordering::SeqCst);
                }
                x
            }
        })
        .daemon()
        .name("stuck");
        // The other stage fails on item 2, once the daemon is stuck and the consumer has
        // item 0 (an error drops the outputs not yet taken).
        let got_first = Arc::new(Gate::new());
        let fail = try_task({
            let (entered, got_first) = (Arc::clone(&daemon_entered), Arc::clone(&got_first));
            move |x: u64| {
                if x == 2 && !drop_instead_of_error {
                    got_first.wait();
                    entered.wait();
                    return Err("failed while the daemon was stuck");
                }
                Ok(x)
            }
        })
        .throttle(1)
        .name("fail");
        let mut out = (fail | daemon).feed(0..);
        let outcome = with_timeout(60, move || {
            assert_eq!(out.next().unwrap().unwrap(), 0);
            got_first.open();
            if drop_instead_of_error {
                daemon_entered.wait();
                drop(out);
                None
            } else {
                out.find_map(Result::err).map(|e| e.to_string())
            }
        });
        if !drop_instead_of_error {
            assert_eq!(outcome.as_deref(), Some("stage `fail` failed on item 2"));
        }
        assert!(
            !daemon_finished.load(Ordering::SeqCst),
            "the run returned while the daemon was still stuck"
        );
        // The detached daemon is still alive; once released it finishes and exits.
        wait_for_pyper_threads(1);
        release.send(()).unwrap();
        wait_for_pyper_threads(0);
        assert!(daemon_finished.load(Ordering::SeqCst));
    }
}

#[test]
fn a_completed_run_waits_for_its_daemon_stages() {
    let _serial = serial();
    let calls = Counter::default();
    let daemon = task({
        let calls = calls.clone();
        move |x: u64| {
            calls.bump();
            x
        }
    })
    .daemon()
    .workers(3);
    let total: u64 = with_timeout(60, move || daemon.feed(0..1000).map(Result::unwrap).sum());
    assert_eq!(total, 999 * 500);
    assert_eq!(calls.get(), 1000);
    wait_for_pyper_threads(0);
}

#[test]
fn a_non_daemon_in_flight_call_finishes_before_drop_cancel_or_error_returns() {
    let _serial = serial();
    // 0: drop, 1: Output::cancel, 2: another stage's error.
    for how in 0..3 {
        let probe = RunProbe::new();
        let entered = Arc::new(Gate::new());
        let finished = Arc::new(AtomicBool::new(false));
        // Item 0 passes; the call for item 1 lasts until the run is cancelled, then marks
        // its end. The drop (or cancel, or error) happens while it is in flight.
        let slow = task({
            let (probe, entered, finished) =
                (probe.clone(), Arc::clone(&entered), Arc::clone(&finished));
            move |x: u64| {
                if x == 1 {
                    entered.open();
                    probe.wait_cancelled();
                    finished.store(true, Ordering::SeqCst);
                }
                x
            }
        })
        .throttle(1);
        let got_first = Arc::new(Gate::new());
        let fail = try_task({
            let (entered, got_first) = (Arc::clone(&entered), Arc::clone(&got_first));
            move |x: u64| {
                if how == 2 && x == 2 {
                    // An error drops outputs not yet taken: fail only once item 0 is out.
                    got_first.wait();
                    entered.wait();
                    Err("other stage failed")
                } else {
                    Ok(x)
                }
            }
        })
        // One-item batches out: item 1 must reach `slow` before the call for item 2 waits
        // (see `pyper_failures.rs`, "items already produced").
        .throttle(1);
        // With how == 2 the failing stage is upstream of `slow`, and gets item 2 while
        // `slow` is busy with item 1.
        let p = fail | slow;
        let mut out = p.feed(0..);
        probe.attach(out.canceller());
        let finished_at_return = with_timeout(60, {
            let finished = Arc::clone(&finished);
            move || {
                assert_eq!(out.next().unwrap().unwrap(), 0);
                got_first.open();
                entered.wait();
                match how {
                    0 => drop(out),
                    1 => {
                        out.cancel();
                        assert!(out.next().is_none());
                    }
                    _ => {
                        let err = out.find_map(Result::err).unwrap();
                        assert_eq!(err.to_string(), "stage `stage 1` failed on item 2");
                    }
                }
                finished.load(Ordering::SeqCst)
            }
        });
        assert!(
            finished_at_return,
            "case {how}: returned before the call ended"
        );
        wait_for_pyper_threads(0);
    }
}

#[test]
fn a_join_that_stops_reading_ends_the_run_cleanly_with_an_endless_upstream() {
    let _serial = serial();
    let pulled = Counter::default();
    with_timeout(60, {
        let pulled = pulled.clone();
        move || {
            let first3 = task(|xs: Upstream<u64>| xs.take(3).sum::<u64>()).join();
            let p = task(|x: u64| x + 1).throttle(1) | task(|x: u64| x * 10).workers(2) | first3;
            let mut out = p.feed(counted_input(&pulled));
            let sum = out.next().unwrap().unwrap();
            // Two unordered workers in the middle: the first three values are 10..=30 in
            // some order, or a little further along.
            assert!(sum >= 60, "{sum}");
            assert!(out.next().is_none(), "then a clean end");
            // Pyper's shape: the endless generator is the first task's.
            let first3 = task(|xs: Upstream<u64>| xs.take(3).collect::<Vec<_>>()).join();
            let p = task(|start: u64| start..).branch().throttle(1) | first3;
            let out: Vec<Vec<u64>> = p.run(5).map(Result::unwrap).collect();
            assert_eq!(out, [vec![5, 6, 7]]);
            // Two join workers, each reading three items of its share.
            let take3 = task(|xs: Upstream<u64>| xs.take(3).count())
                .join()
                .workers(2);
            let out: Vec<usize> = take3.feed(0..).map(Result::unwrap).collect();
            assert_eq!(out, [3, 3]);
        }
    });
    assert_final(&[&pulled]);
}

/// An iterator that reports when it is dropped.
struct DropFlag<I>(I, Arc<Gate>);

impl<I: Iterator> Iterator for DropFlag<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
}

impl<I> Drop for DropFlag<I> {
    fn drop(&mut self) {
        self.1.open();
    }
}

#[test]
fn dropping_the_upstream_releases_the_stages_above_while_the_join_goes_on() {
    let _serial = serial();
    let source_dropped = Arc::new(Gate::new());
    let join = task({
        let source_dropped = Arc::clone(&source_dropped);
        move |xs: Upstream<u64>| {
            let first: Vec<u64> = xs.take(3).collect();
            // `xs` is gone: the source must stop and drop its iterator while this call is
            // still running.
            source_dropped.wait();
            first
        }
    })
    .join();
    let p = task(|x: u64| x).throttle(1) | join;
    let input = DropFlag(0u64.., Arc::clone(&source_dropped));
    let out: Vec<Vec<u64>> = with_timeout(60, move || p.feed(input).map(Result::unwrap).collect());
    assert_eq!(out, [vec![0, 1, 2]]);
    wait_for_pyper_threads(0);
}

#[test]
fn canceller_reports_cancels_failures_and_drops_but_not_a_clean_end() {
    let _serial = serial();
    with_timeout(60, || {
        let mut out = task(|x: u64| x).feed(0..3);
        let canceller = out.canceller();
        assert!(!canceller.is_cancelled());
        assert_eq!(out.by_ref().count(), 3);
        assert!(!canceller.is_cancelled(), "a clean end is not a cancel");
        canceller.cancel(); // after the end: harmless
        assert!(out.next().is_none());

        let mut out = try_task(|_: u64| Err::<u64, _>("no")).feed(0..3);
        let canceller = out.canceller();
        let err = out.next().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(canceller.is_cancelled(), "a failure cancels the run");

        let mut out = task(|x: u64| x).feed(0..);
        let canceller = out.canceller();
        out.next().unwrap().unwrap();
        drop(out);
        assert!(canceller.is_cancelled(), "a drop cancels the run");
        canceller.cancel();
        canceller.clone().cancel(); // twice, from a clone: harmless
    });
    wait_for_pyper_threads(0);
}

#[test]
fn an_output_can_be_moved_to_and_dropped_on_another_thread() {
    let _serial = serial();
    let calls = Counter::default();
    with_timeout(60, {
        let calls = calls.clone();
        move || {
            let mut out = counted_pipeline(&calls).feed(0..);
            out.next().unwrap().unwrap();
            std::thread::spawn(move || {
                out.next().unwrap().unwrap();
                drop(out);
            })
            .join()
            .unwrap();
        }
    });
    assert_final(&[&calls]);
}

#[test]
fn a_stage_that_drops_its_own_runs_output_ends_the_run_without_waiting_for_itself() {
    let _serial = serial();
    // What Python's garbage collection can do: finalize a run on one of its own workers.
    with_timeout(60, || {
        let slot: Arc<std::sync::Mutex<Option<pyper::Output<u64>>>> = Arc::default();
        let dropped = Arc::new(AtomicBool::new(false));
        let pipeline = task({
            let (slot, dropped) = (slot.clone(), dropped.clone());
            move |x: u64| {
                let own_output = slot.lock().unwrap().take();
                if let Some(own_output) = own_output {
                    drop(own_output);
                    dropped.store(true, Ordering::SeqCst);
                }
                x
            }
        })
        .workers(2);
        let mut out = pipeline.feed(0..);
        out.next().unwrap().unwrap();
        let canceller = out.canceller();
        *slot.lock().unwrap() = Some(out);
        wait_until("the stage dropped the output", || {
            dropped.load(Ordering::SeqCst)
        });
        assert!(canceller.is_cancelled());
    });
    wait_for_pyper_threads(0);
}
