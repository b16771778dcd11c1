//! Model checks of the queue and shutdown protocol under shuttle.
//!
//! Built with `--features shuttle`, every lock, condition variable, atomic and thread of
//! the engine is shuttle's, so these tests run the *real* engine under thousands of
//! randomly chosen schedules (and PCT, which favours the rare ones). Shuttle fails a test
//! on a deadlock, including a worker left blocked when the run returns, so "nothing
//! hangs and every thread is gone" is checked on every schedule, not only the outcome.
//!
//! The pipelines are tiny on purpose (a three-item source, one stage, a consumer,
//! capacity 1): end of stream, a failure, a cancel from another thread and a drop of the
//! output race each other, and each outcome must be one of the allowed ones.
//!
//! Run with `cargo test -p pyperflow --features shuttle --test model_check --release`.
#![cfg(feature = "shuttle")]

use pyper::{task, try_task, ErrorKind, Output, Pipeline, Upstream};

const ITEMS: u64 = 3;
const SCHEDULES: usize = 2000;

#[derive(Clone, Copy, Debug)]
struct Race {
    workers: usize,
    ordered: bool,
    /// The stage fails on this input.
    fail_on: Option<u64>,
    /// The consumer drops the output after this many items.
    take: Option<usize>,
    /// Another thread cancels the run while it goes.
    cancel: bool,
}

fn stage(race: Race) -> Pipeline<u64, u64> {
    let fail_on = race.fail_on;
    let mut stage = try_task(move |x: u64| {
        if Some(x) == fail_on {
            Err(format!("item {x} is bad"))
        } else {
            Ok(x + 1)
        }
    })
    .name("add")
    .workers(race.workers)
    .throttle(1);
    if race.ordered {
        stage = stage.ordered();
    }
    stage | task(|x: u64| x).throttle(1)
}

/// Runs one race and checks that its outcome is allowed.
fn check(race: Race) {
    let mut output: Output<u64> = stage(race).feed(0..ITEMS);
    if race.cancel {
        let canceller = output.canceller();
        shuttle::thread::spawn(move || canceller.cancel());
    }
    let mut values = Vec::new();
    let mut error = None;
    for item in output.by_ref() {
        match item {
            Ok(value) => values.push(value),
            Err(e) => {
                assert!(error.is_none(), "{race:?}: a second error");
                error = Some(e);
            }
        }
        if error.is_none() && Some(values.len()) == race.take {
            break;
        }
    }
    if let Some(e) = &error {
        assert_eq!(e.kind(), ErrorKind::Failed, "{race:?}");
        assert_eq!(e.stage(), Some("add"), "{race:?}");
        assert_eq!(e.item(), race.fail_on, "{race:?}");
    }
    // Nothing after an error: the iterator has ended.
    if error.is_some() {
        assert!(output.next().is_none(), "{race:?}: an item after the error");
    }
    drop(output);

    let in_order = race.workers == 1 || race.ordered;
    let mut seen = values.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        values.len(),
        "{race:?}: a duplicate in {values:?}"
    );
    for value in &values {
        assert!(
            (1..=ITEMS).contains(value),
            "{race:?}: unknown value {value}"
        );
        assert_ne!(
            Some(*value - 1),
            race.fail_on,
            "{race:?}: the failed item came out"
        );
    }
    if in_order {
        let prefix: Vec<u64> = (1..=ITEMS)
            .filter(|v| Some(v - 1) != race.fail_on)
            .take(values.len())
            .collect();
        assert_eq!(values, prefix, "{race:?}: out of order");
    }
    let interrupted = race.cancel || race.take.is_some();
    match (race.fail_on, interrupted) {
        // Nothing stops the run: every item, and no error.
        (None, false) => {
            assert!(error.is_none(), "{race:?}");
            assert_eq!(
                values.len() as u64,
                ITEMS,
                "{race:?}: lost items {values:?}"
            );
        }
        // The failure is always reached, and must never look like a clean end.
        (Some(_), false) => assert!(error.is_some(), "{race:?}: error swallowed"),
        // A cancel or a drop may come first; whatever comes out must still be right.
        (_, true) => {}
    }
}

fn all_races() -> Vec<Race> {
    let mut races = Vec::new();
    for workers in [1, 2] {
        for ordered in [false, true] {
            for fail_on in [None, Some(0), Some(2)] {
                for take in [None, Some(0), Some(1)] {
                    for cancel in [false, true] {
                        if ordered && workers == 1 {
                            continue;
                        }
                        races.push(Race {
                            workers,
                            ordered,
                            fail_on,
                            take,
                            cancel,
                        });
                    }
                }
            }
        }
    }
    races
}

fn quiet_panics() {
    // The engine catches the panics these tests provoke; don't print each of thousands.
    std::panic::set_hook(Box::new(|_| {}));
}

#[test]
fn end_error_cancel_and_drop_race_randomly() {
    for race in all_races() {
        shuttle::check_random(move || check(race), SCHEDULES);
    }
}

#[test]
fn end_error_cancel_and_drop_race_under_pct() {
    for race in all_races() {
        shuttle::check_pct(move || check(race), SCHEDULES, 3);
    }
}

#[test]
fn a_panic_is_the_error_and_never_a_clean_end() {
    quiet_panics();
    shuttle::check_random(
        || {
            let boom = task(|x: u64| if x == 1 { panic!("boom {x}") } else { x })
                .name("boom")
                .throttle(1);
            let results: Vec<_> = boom.feed(0..ITEMS).collect();
            let last = results.last().expect("at least the error");
            let error = last.as_ref().expect_err("a panic must end with an error");
            assert_eq!(error.kind(), ErrorKind::Panicked);
            assert_eq!(error.panic_message(), Some("boom 1"));
            assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        },
        SCHEDULES,
    );
}

#[test]
fn a_join_that_stops_reading_ends_the_run_cleanly() {
    shuttle::check_random(
        || {
            let first_two = task(|xs: Upstream<u64>| xs.take(2).sum::<u64>()).join();
            let pipeline = task(|x: u64| x).throttle(1) | first_two;
            let results: Vec<u64> = pipeline.feed(0..).map(Result::unwrap).collect();
            assert_eq!(results, [1]);
        },
        SCHEDULES,
    );
}

#[test]
fn branch_outputs_race_a_drop() {
    shuttle::check_random(
        || {
            let fan = task(|x: u64| 0..x).branch().throttle(1).workers(2);
            let mut output = fan.feed(0..ITEMS + 1);
            let first = output.next();
            assert!(matches!(first, Some(Ok(_))));
            drop(output);
        },
        SCHEDULES,
    );
}

/// Queues of more than one place (throttle 4), where a producer parks on a full queue
/// and a pop that leaves room wakes it: every schedule must deliver every item, or end
/// cleanly at a drop, with nobody left parked. (The races above all use capacity 1.)
#[test]
fn a_producer_parked_on_a_full_queue_of_four_is_woken() {
    const MANY: u64 = 10;
    for workers in [1, 2] {
        for take in [None, Some(3)] {
            let race = move || {
                let stage = task(|x: u64| x + 1).workers(workers).throttle(4)
                    | task(|x: u64| x).throttle(4);
                let mut output = stage.feed(0..MANY);
                let mut values = Vec::new();
                for item in output.by_ref() {
                    values.push(item.expect("no stage fails"));
                    if Some(values.len()) == take {
                        break;
                    }
                }
                drop(output);
                values.sort_unstable();
                let expected: Vec<u64> = (1..=MANY).take(take.unwrap_or(usize::MAX)).collect();
                match take {
                    None => assert_eq!(values, expected, "lost or repeated items"),
                    Some(n) => assert_eq!(values.len(), n),
                }
            };
            shuttle::check_random(race, SCHEDULES);
            shuttle::check_pct(race, SCHEDULES, 3);
        }
    }
}
