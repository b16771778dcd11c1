//! Timeouts and retries of thread stages (`Task::timeout`, `Task::retries`,
//! `Task::backoff`), end to end.
//!
//! * A timeout reports `TimedOut` with the stage and the item, stops the run, and leaves
//!   the overrunning call to finish on its helper thread; helpers never outlive a run
//!   whose calls return.
//! * Retries: transient failures (errors, panics, overruns) succeed, with every output
//!   exactly once; exhausted retries list every cause in order; a branch that handed on
//!   outputs is not retried; ordered stages keep their order; a cancel cuts a backoff short.
//! * Configuration errors: a join task with a policy, a zero timeout.
//! * A property test over random pipelines with random failures per attempt: every item's
//!   outputs come out exactly once, or the run fails on an item whose every attempt failed.
//!
//! Every wait is bounded only to turn a hang into a failure; nothing asserts on speed.
//! The overruns are calls blocked on a gate that the test opens after the timeout was
//! reported, never calls that are merely slow. The tests count pyper's threads, so they
//! run one at a time.

mod common;
mod fault_common;

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mix, serial, wait_for_pyper_threads, wait_until, with_timeout, Gate};
use fault_common::{
    assert_panicked, check_random_run, outputs_and_error, quiet_panics, run_random, stage_spec,
    timed, values, Attempts, StageSpec, TestError, GENEROUS, SHORT,
};
use proptest::prelude::*;
use pyper::{
    task, try_task, Backoff, ErrorKind, Panicked, Pipeline, RetriesExhausted, TimedOut, Upstream,
};

#[test]
fn a_timeout_names_the_stage_and_item_and_abandons_the_call() {
    let _serial = serial();
    with_timeout(120, || {
        let gate = Arc::new(Gate::new());
        let finished = Arc::new(AtomicBool::new(false));
        let slow = task({
            let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
            move |x: u64| {
                if x == 3 {
                    gate.wait(); // until the test has seen the timeout
                    finished.store(true, SeqCst);
                }
                x
            }
        })
        .name("slow")
        .timeout(Duration::from_secs(1));
        let mut outputs = slow.feed(0..10);
        let (values, error) = outputs_and_error(outputs.by_ref());
        // Outputs not yet taken when the run failed are dropped with it.
        assert!([0, 1, 2].starts_with(&values), "{values:?}");
        assert!(outputs.next().is_none(), "the run stopped");
        assert_eq!(error.kind(), ErrorKind::Failed);
        assert_eq!(error.stage(), Some("slow"));
        assert_eq!(error.item(), Some(3));
        let timed_out = error
            .downcast_ref::<TimedOut>()
            .expect("source is TimedOut");
        assert_eq!(timed_out.limit(), Duration::from_secs(1));
        assert_eq!(
            format!("{error:#}"),
            "stage `slow` failed on item 3: timed out after 1s"
        );
        drop(outputs);

        // The run has returned, and the abandoned call is still running.
        assert!(!finished.load(SeqCst));
        gate.open();
        wait_until("the abandoned call returns", || finished.load(SeqCst));
        wait_for_pyper_threads(0); // its helper thread exits after it
    });
}

#[test]
fn timed_calls_reuse_one_helper_per_worker_and_leave_no_thread_behind() {
    let _serial = serial();
    with_timeout(120, || {
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let timed = task({
            let threads = Arc::clone(&threads);
            move |x: u64| {
                threads.lock().unwrap().insert(std::thread::current().id());
                x * 2
            }
        })
        .workers(3)
        .timeout(GENEROUS);
        let mut out = values(timed.feed(0..1_000));
        out.sort_unstable();
        assert_eq!(out, (0..1_000).map(|x| x * 2).collect::<Vec<_>>());
        let threads = threads.lock().unwrap().len();
        assert!((1..=3).contains(&threads), "{threads} helper threads");
        wait_for_pyper_threads(0);

        // Ordered, with a branch: the outputs of each call, in order.
        let timed = task(|x: u64| [x, x + 1_000])
            .branch()
            .workers(3)
            .ordered()
            .timeout(GENEROUS);
        let out = values(timed.feed(0..500));
        let expected: Vec<u64> = (0..500).flat_map(|x| [x, x + 1_000]).collect();
        assert_eq!(out, expected);
        wait_for_pyper_threads(0);
    });
}

#[test]
fn without_retries_a_timed_call_fails_as_it_would_untimed() {
    let _serial = serial();
    quiet_panics();
    with_timeout(120, || {
        let failing = try_task(|x: u64| if x == 2 { Err(TestError(x)) } else { Ok(x) })
            .name("failing")
            .timeout(GENEROUS);
        let (_, error) = outputs_and_error(failing.feed(0..5));
        assert_eq!(error.item(), Some(2));
        assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError(2)));

        let panicking = task(|x: u64| if x == 1 { panic!("injected {x}") } else { x })
            .name("panicking")
            .timeout(GENEROUS);
        let (_, error) = outputs_and_error(panicking.feed(0..5));
        assert_panicked(&error, "panicking", 1, "injected 1");
        wait_for_pyper_threads(0);
    });
}

#[test]
fn an_endless_branch_under_a_timeout_times_out_and_its_iterator_stops() {
    let _serial = serial();
    with_timeout(120, || {
        let endless = task(|x: u64| x..).branch().name("endless").timeout(SHORT);
        let (_, error) = outputs_and_error(endless.run(0));
        assert_eq!((error.stage(), error.item()), (Some("endless"), Some(0)));
        assert!(error.downcast_ref::<TimedOut>().is_some());
        // The abandoned iterator is refused its next element, so its helper exits.
        wait_for_pyper_threads(0);
    });
}

#[test]
fn transient_failures_succeed_with_retries_and_every_output_comes_once() {
    let _serial = serial();
    quiet_panics();
    with_timeout(120, || {
        for timeout in [None, Some(GENEROUS)] {
            for workers in [1, 4] {
                let attempts = Attempts::default();
                // Item x fails its first x % 3 attempts, by an error or a panic.
                let flaky = try_task({
                    let attempts = attempts.clone();
                    move |x: u64| {
                        let attempt = attempts.next(x);
                        if u64::from(attempt) < x % 3 {
                            if (x + u64::from(attempt)) % 2 == 0 {
                                panic!("injected panic on {x}");
                            }
                            return Err(TestError(x));
                        }
                        Ok(x * 10)
                    }
                })
                .workers(workers)
                .retries(2)
                .backoff(Backoff::none());
                let flaky = timed(flaky, timeout);
                let mut out = values(flaky.feed(0..300));
                out.sort_unstable();
                assert_eq!(out, (0..300).map(|x| x * 10).collect::<Vec<_>>());
                for x in 0..300 {
                    assert_eq!(attempts.of(x), (x % 3) as u32 + 1, "attempts at {x}");
                }
            }
        }
        wait_for_pyper_threads(0);
    });
}

#[test]
fn exhausted_retries_list_every_cause_in_order() {
    let _serial = serial();
    quiet_panics();
    with_timeout(120, || {
        let gate = Arc::new(Gate::new());
        let attempts = Attempts::default();
        // Item 5: an error, then a panic, then an overrun.
        let doomed = try_task({
            let (gate, attempts) = (Arc::clone(&gate), attempts.clone());
            move |x: u64| {
                if x != 5 {
                    return Ok(x);
                }
                match attempts.next(x) {
                    0 => Err(TestError(x)),
                    1 => panic!("injected panic on {x}"),
                    _ => {
                        gate.wait();
                        Ok(x)
                    }
                }
            }
        })
        .name("doomed")
        .retries(2)
        .backoff(Backoff::fixed(Duration::from_millis(1)))
        .timeout(Duration::from_secs(2));
        let (_, error) = outputs_and_error(doomed.feed(0..10));
        gate.open();
        assert_eq!(error.kind(), ErrorKind::Failed);
        assert_eq!((error.stage(), error.item()), (Some("doomed"), Some(5)));
        let exhausted = error
            .downcast_ref::<RetriesExhausted>()
            .expect("source is RetriesExhausted");
        let causes = exhausted.attempts();
        assert_eq!(causes.len(), 3);
        assert_eq!(causes[0].downcast_ref::<TestError>(), Some(&TestError(5)));
        let panicked = causes[1].downcast_ref::<Panicked>().expect("a panic");
        assert_eq!(panicked.message(), "injected panic on 5");
        assert!(causes[2].downcast_ref::<TimedOut>().is_some());
        assert_eq!(
            error.to_string(),
            "stage `doomed` failed on item 5",
            "the causes are left to source()"
        );
        assert_eq!(
            format!("{error:#}"),
            "stage `doomed` failed on item 5: all 3 attempts failed: #1 test error 5; \
             #2 panicked: injected panic on 5; #3 timed out after 2s: timed out after 2s"
        );
        assert_eq!(attempts.of(5), 3);
        wait_for_pyper_threads(0);

        // Without a timeout, on the worker's own thread.
        let attempts = Attempts::default();
        let doomed = try_task({
            let attempts = attempts.clone();
            move |x: u64| match attempts.next(x) {
                1 => panic!("injected panic on {x}"),
                _ => Err::<u64, _>(TestError(x)),
            }
        })
        .retries(3)
        .backoff(Backoff::none());
        let (outputs, error) = outputs_and_error(doomed.run(7));
        assert!(outputs.is_empty());
        assert_eq!(error.item(), Some(0));
        let causes = error.downcast_ref::<RetriesExhausted>().unwrap().attempts();
        let kinds: Vec<bool> = causes.iter().map(|c| c.is::<Panicked>()).collect();
        assert_eq!(kinds, [false, true, false, false]);
        assert_eq!(attempts.of(7), 4);
        assert_eq!(
            error.source().unwrap().source().unwrap().to_string(),
            "test error 7",
            "RetriesExhausted chains to the last cause"
        );
    });
}

#[test]
fn a_cancel_cuts_a_backoff_short() {
    let _serial = serial();
    with_timeout(120, || {
        let forever = Backoff::fixed(Duration::from_secs(24 * 3600));
        // Item 0 goes through; every later item fails, then waits a day to be retried.
        let make = |attempts: &Attempts| {
            let attempts = attempts.clone();
            try_task(move |x: u64| {
                attempts.next(x);
                if x == 0 {
                    Ok(x)
                } else {
                    Err(TestError(x))
                }
            })
            .retries(1)
            .backoff(forever)
        };

        // Dropping the output.
        for timeout in [None, Some(GENEROUS)] {
            let attempts = Attempts::default();
            let stage = make(&attempts);
            let stage = timed(stage, timeout);
            let mut outputs = stage.feed(0..10);
            assert_eq!(outputs.next().unwrap().unwrap(), 0);
            wait_until("the first attempt at item 1", || attempts.of(1) == 1);
            drop(outputs); // waits for the worker, which is in its backoff
            assert_eq!(attempts.of(1), 1, "no retry after the cancel");
            wait_for_pyper_threads(0);
        }

        // A canceller, from another thread, while the output is read.
        let attempts = Attempts::default();
        let mut outputs = make(&attempts).workers(2).feed(0..10);
        let canceller = outputs.canceller();
        let cancel = std::thread::spawn({
            let attempts = attempts.clone();
            move || {
                wait_until("both workers in a backoff", || {
                    (1..10).filter(|&x| attempts.of(x) == 1).count() == 2
                });
                canceller.cancel();
            }
        });
        assert!(
            outputs.all(|output| output.is_ok()),
            "a cancelled run ends without error"
        );
        cancel.join().unwrap();
        wait_for_pyper_threads(0);
    });
}

#[test]
fn a_branch_that_handed_on_outputs_is_not_retried() {
    let _serial = serial();
    with_timeout(120, || {
        let attempts = Attempts::default();
        // Item 0 yields 1 and 2, then fails.
        let partial = task({
            let attempts = attempts.clone();
            move |x: u64| {
                attempts.next(x);
                vec![Ok(1), Ok(2), Err(TestError(x))]
            }
        })
        .try_branch()
        .name("partial")
        .retries(3)
        .backoff(Backoff::none());
        let (partial_outputs, error) = outputs_and_error(partial.run(0));
        assert!(
            partial_outputs.len() <= 2,
            "at most once: {partial_outputs:?}"
        );
        assert_eq!(attempts.of(0), 1, "not retried");
        assert_eq!((error.stage(), error.item()), (Some("partial"), Some(0)));
        assert_eq!(
            error.downcast_ref::<TestError>(),
            Some(&TestError(0)),
            "the attempt's own cause, as without retries"
        );

        // A failure before the first output is retried.
        let attempts = Attempts::default();
        let late = task({
            let attempts = attempts.clone();
            move |x: u64| match attempts.next(x) {
                0 => vec![Err(TestError(x))],
                _ => vec![Ok(x), Ok(x + 1)],
            }
        })
        .try_branch()
        .retries(1)
        .backoff(Backoff::none());
        assert_eq!(values(late.run(5)), [5, 6]);

        // Under a timeout the outputs wait for the call to return, so an attempt that
        // failed part-way handed nothing on and is retried.
        let attempts = Attempts::default();
        let timed = task({
            let attempts = attempts.clone();
            move |x: u64| match attempts.next(x) {
                0 => vec![Ok(1), Ok(2), Err(TestError(x))],
                _ => vec![Ok(1), Ok(2), Ok(3)],
            }
        })
        .try_branch()
        .retries(1)
        .backoff(Backoff::none())
        .timeout(GENEROUS);
        assert_eq!(values(timed.run(0)), [1, 2, 3]);
        assert_eq!(attempts.of(0), 2);
        wait_for_pyper_threads(0);
    });
}

#[test]
fn ordered_stages_keep_their_order_through_retries() {
    let _serial = serial();
    quiet_panics();
    with_timeout(120, || {
        for timeout in [None, Some(GENEROUS)] {
            let attempts = Attempts::default();
            let flaky = try_task({
                let attempts = attempts.clone();
                move |x: u64| {
                    let attempt = attempts.next(x);
                    common::jitter(x, u64::from(attempt), 200);
                    match u64::from(attempt) < mix(x) % 3 {
                        true => Err(TestError(x)),
                        false => Ok(x),
                    }
                }
            })
            .workers(4)
            .ordered()
            .retries(2)
            .backoff(Backoff::fixed(Duration::from_micros(100)));
            let flaky = timed(flaky, timeout);
            let pipeline = flaky | task(|x: u64| x + 1);
            assert_eq!(values(pipeline.feed(0..400)), (1..=400).collect::<Vec<_>>());
        }
        wait_for_pyper_threads(0);
    });
}

#[test]
fn stopped_items_are_never_retried() {
    let _serial = serial();
    with_timeout(120, || {
        let attempts = Attempts::default();
        let counted = task({
            let attempts = attempts.clone();
            move |x: u64| {
                attempts.next(x);
                x
            }
        })
        .retries(5)
        .backoff(Backoff::none());
        let first: Vec<u64> = values(counted.feed(0..).take(3));
        assert_eq!(first, [0, 1, 2]);
        let counts = attempts.0.lock().unwrap();
        assert!(counts.values().all(|&count| count == 1), "{counts:?}");
    });
}

#[test]
fn a_join_task_or_a_zero_timeout_is_a_configuration_error() {
    let _serial = serial();
    let check = |pipeline: Pipeline<u32, u32>, expected: &str| {
        let error = pipeline.run(1).next().unwrap().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains(expected), "{error}");
    };
    let per_item = "timeout and retries apply per item; a join task receives the whole stream";
    let sum = || task(|xs: Upstream<u32>| xs.sum::<u32>());
    check(sum().join().retries(2).into(), per_item);
    check(sum().timeout(SHORT).join().into(), per_item);
    check(
        task(|x: u32| x).timeout(Duration::ZERO).into(),
        "timeout must be longer than zero",
    );
    wait_for_pyper_threads(0);
}

// ---------------------------------------------------------------------------------------
// The property: random pipelines, random failures per attempt (see `fault_common`).

/// A thread stage of the random pipelines.
fn thread_stage(spec: &StageSpec, attempts: Attempts) -> Pipeline<u64, u64> {
    spec.stage(try_task(spec.body(attempts)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_item_comes_out_once_or_is_named_in_the_error(
        stages in prop::collection::vec(stage_spec(4, mix), 1..=3),
        inputs in 1u64..60,
    ) {
        let _serial = serial();
        quiet_panics();
        let counters: Vec<Attempts> = stages.iter().map(|_| Attempts::default()).collect();
        let (outputs, error) = with_timeout(60, {
            let (stages, counters) = (stages.clone(), counters.clone());
            move || run_random(&stages, &counters, inputs, thread_stage)
        });
        check_random_run(&stages, &counters, inputs, &outputs, error)?;
    }
}
