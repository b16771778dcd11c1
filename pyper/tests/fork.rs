//! `fork`: several tasks called at once on each item, their outputs handed on together.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use common::with_timeout;
use proptest::prelude::*;
use pyper::{fork, task, task_per_worker, try_task, Backoff, ErrorKind, TimedOut};

#[test]
fn outputs_are_tuples_in_the_tasks_order() {
    let both = fork((
        task(|x: u64| x * 2),
        task(|x: u64| x.to_string()),
        task(|x: u64| x % 2 == 0),
    ))
    .workers(4);
    let mut out: Vec<(u64, String, bool)> = both.feed(0..200).map(Result::unwrap).collect();
    out.sort();
    let expected: Vec<_> = (0..200)
        .map(|x| (x * 2, x.to_string(), x % 2 == 0))
        .collect();
    assert_eq!(out, expected);
}

#[test]
fn tuples_of_two_to_six_tasks_compose_with_the_pipe() {
    let six = fork((
        task(|x: u8| x),
        task(|x: u8| x + 1),
        task(|x: u8| x + 2),
        task(|x: u8| x + 3),
        task(|x: u8| x + 4),
        task(|x: u8| x + 5),
    ));
    let pipeline = task(|x: u8| x * 10) | six | task(|t: (u8, u8, u8, u8, u8, u8)| t.5 - t.0);
    let out: Vec<u8> = pipeline.feed([1, 2]).map(Result::unwrap).collect();
    assert_eq!(out, [5, 5]);
}

#[test]
fn the_tasks_of_one_item_run_at_the_same_time() {
    // Each call waits for the other task's call on the same item: run one after the
    // other, they would never return.
    with_timeout(60, || {
        let meet = Arc::new(Barrier::new(2));
        let (left, right) = (Arc::clone(&meet), meet);
        let pair = fork((
            task(move |x: u32| {
                left.wait();
                x
            }),
            task(move |x: u32| {
                right.wait();
                x + 1
            }),
        ));
        let out: Vec<(u32, u32)> = pair.feed(0..20).map(Result::unwrap).collect();
        assert_eq!(out.len(), 20);
    });
}

#[test]
fn workers_is_how_many_items_are_in_flight() {
    with_timeout(60, || {
        // Three items must be in flight together to pass the barrier, and no more may be.
        let barrier = Arc::new(Barrier::new(3));
        let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (now, high) = (Arc::clone(&in_flight), Arc::clone(&most));
        let gather = task(move |x: u32| {
            let count = now.fetch_add(1, Ordering::SeqCst) + 1;
            high.fetch_max(count, Ordering::SeqCst);
            barrier.wait();
            now.fetch_sub(1, Ordering::SeqCst);
            x
        });
        let stage = fork((gather, task(|x: u32| x * 2))).workers(3);
        let out: Vec<(u32, u32)> = stage.feed(0..30).map(Result::unwrap).collect();
        assert_eq!(out.len(), 30);
        assert_eq!(most.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn an_ordered_fork_keeps_the_input_order() {
    let slow_first = task(|x: u64| {
        std::thread::sleep(Duration::from_millis(5 * (x % 3)));
        x
    });
    let stage = fork((slow_first, task(|x: u64| x + 1)))
        .workers(4)
        .ordered();
    let out: Vec<(u64, u64)> = stage.feed(0..40).map(Result::unwrap).collect();
    assert_eq!(out, (0..40).map(|x| (x, x + 1)).collect::<Vec<_>>());
}

#[test]
fn an_error_names_the_failing_task_and_the_item() {
    let check = try_task(|x: u32| if x == 5 { Err("five") } else { Ok(x) }).name("check");
    let stage = fork((task(|x: u32| x), check)).workers(2);
    let error = stage.feed(0..100).find_map(Result::err).unwrap();
    assert_eq!(error.kind(), ErrorKind::Failed);
    assert_eq!((error.stage(), error.item()), (Some("check"), Some(5)));
    assert_eq!(format!("{error:#}"), "stage `check` failed on item 5: five");
}

#[test]
fn a_panic_names_the_task_by_its_place_when_it_has_no_name() {
    let stage = fork((task(|x: u32| x), task(|x: u32| assert!(x != 3, "three"))));
    let error = stage.feed(0..10).find_map(Result::err).unwrap();
    assert_eq!(error.kind(), ErrorKind::Panicked);
    assert_eq!(error.stage(), Some("stage 1, task 2"));
    assert_eq!(
        (error.item(), error.panic_message()),
        (Some(3), Some("three"))
    );
}

#[test]
fn the_fork_is_named_after_its_tasks_and_keeps_a_name_it_is_given() {
    fn double(x: u32) -> u32 {
        x * 2
    }
    fn fail(_: u32) -> Result<u32, String> {
        Err("no".into())
    }
    let named = fork((task(double), try_task(fail)));
    let mut output = named.run(1);
    assert!(output.next().unwrap().is_err());
    assert!(output.metrics().stage("double & fail").is_some());
    let renamed = fork((task(double), try_task(fail))).name("both");
    let mut output = renamed.run(1);
    assert_eq!(output.next().unwrap().unwrap_err().stage(), Some("fail"));
    assert!(output.metrics().stage("both").is_some());
}

#[test]
fn the_first_failure_is_reported_while_a_daemon_fork_still_waits_on_another_task() {
    with_timeout(60, || {
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let waits = task(move |x: u32| {
            let _ = released.lock().unwrap().recv();
            x
        });
        let fails = try_task(|_: u32| Err::<u32, _>("at once")).name("fails");
        let stage = fork((waits, fails)).daemon();
        let error = stage.run(0).find_map(Result::err).unwrap();
        assert_eq!(error.stage(), Some("fails"));
        release.send(()).unwrap();
    });
}

#[test]
fn each_task_keeps_its_own_timeout_and_retries() {
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&tries);
    let flaky = try_task(
        move |x: u32| match counted.fetch_add(1, Ordering::SeqCst) % 2 {
            0 => Err("flaky"),
            _ => Ok(x),
        },
    )
    .retries(1)
    .backoff(Backoff::none());
    let out: Vec<(u32, u32)> = fork((flaky, task(|x: u32| x)))
        .feed(0..10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out.len(), 10);
    assert_eq!(tries.load(Ordering::SeqCst), 20);

    let sleepy = task(|ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    })
    .name("sleepy")
    .timeout(Duration::from_millis(50));
    let error = fork((task(|ms: u64| ms), sleepy))
        .feed([0, 5_000])
        .find_map(Result::err)
        .unwrap();
    assert_eq!((error.stage(), error.item()), (Some("sleepy"), Some(1)));
    assert!(error.downcast_ref::<TimedOut>().is_some());
}

#[test]
fn a_task_per_worker_gets_its_state_in_each_fork_worker() {
    let setups = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&setups);
    let numbered = task_per_worker(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        // A buffer of the worker's own, reused from call to call.
        let mut digits = String::new();
        move |x: u32| {
            digits.clear();
            digits.push_str(&x.to_string());
            digits.parse::<u32>().unwrap()
        }
    });
    let stage = fork((numbered, task(|x: u32| x))).workers(3);
    let out: Vec<(u32, u32)> = stage.feed(0..50).map(Result::unwrap).collect();
    assert!(out.iter().all(|(a, b)| a == b));
    assert_eq!(setups.load(Ordering::SeqCst), 3);
}

#[test]
fn what_does_not_combine_is_a_configuration_error_naming_the_task() {
    let error = |stage: pyper::Task<u32, (u32, u32)>| stage.run(1).next().unwrap().unwrap_err();

    let inner_workers = fork((task(|x: u32| x).name("wide").workers(2), task(|x: u32| x)));
    let err = error(inner_workers);
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("task `wide` of the fork"), "{err}");
    assert!(err.to_string().contains("set them on the fork"), "{err}");

    let retried = fork((task(|x: u32| x), task(|x: u32| x))).retries(2);
    assert!(error(retried)
        .to_string()
        .contains("set them on the tasks inside it"));
    let tuned = fork((task(|x: u32| x), task(|x: u32| x))).auto_workers(4);
    assert_eq!(error(tuned).kind(), ErrorKind::Config);

    let joined = task(|xs: pyper::Upstream<u32>| xs.count() as u32).join();
    let err = error(fork((joined, task(|x: u32| x))));
    assert!(
        err.to_string().contains("a join task cannot be forked"),
        "{err}"
    );
}

#[test]
fn a_branch_task_in_a_fork_fails_when_it_makes_other_than_one_output() {
    let split = task(|x: u32| 0..x).branch().name("split");
    let stage = fork((split, task(|x: u32| x)));
    let error = stage.feed([1, 2]).find_map(Result::err).unwrap();
    assert_eq!((error.stage(), error.item()), (Some("split"), Some(1)));
    let message = format!("{error:#}");
    assert!(message.contains("exactly one output"), "{message}");
}

#[test]
fn dropping_the_output_stops_the_fork() {
    with_timeout(60, || {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let slow = task(move |x: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            x
        });
        let stage = fork((slow, task(|x: u64| x))).workers(2).throttle(2);
        let mut output = stage.feed(0..);
        for _ in 0..5 {
            output.next().unwrap().unwrap();
        }
        drop(output);
        let after_drop = calls.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), after_drop);
    });
}

#[test]
fn a_cancel_ends_a_fork_mid_stream() {
    with_timeout(60, || {
        let slow = task(|x: u64| {
            std::thread::sleep(Duration::from_millis(2));
            x
        });
        let stage = fork((slow, task(|x: u64| x))).workers(2);
        let mut output = stage.feed(0..);
        output.next().unwrap().unwrap();
        output.canceller().cancel();
        // What was already handed on may still come; then the output ends, without error.
        assert!(output.all(|item| item.is_ok()));
    });
}

#[cfg(feature = "async")]
mod with_async {
    use super::*;
    use pyper::{async_task, try_async_task};

    #[test]
    fn thread_async_and_per_worker_tasks_mix_in_one_fork() {
        let fetch = async_task(|x: u64| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            x * 10
        });
        let per_worker = task_per_worker(|| |x: u64| x + 1);
        let stage = fork((fetch, task(|x: u64| x * x), per_worker)).workers(8);
        let mut out: Vec<(u64, u64, u64)> = stage.feed(0..100).map(Result::unwrap).collect();
        out.sort();
        let expected: Vec<_> = (0..100).map(|x| (x * 10, x * x, x + 1)).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn an_async_task_keeps_its_timeout_and_names_its_failure() {
        let pending = async_task(|x: u32| async move {
            std::future::pending::<()>().await;
            x
        })
        .name("pending")
        .timeout(Duration::from_millis(20));
        let error = fork((task(|x: u32| x), pending))
            .run(7)
            .find_map(Result::err);
        let error = error.unwrap();
        assert_eq!((error.stage(), error.item()), (Some("pending"), Some(0)));
        assert!(error.downcast_ref::<TimedOut>().is_some());

        let fails = try_async_task(|x: u32| async move { Err::<u32, _>(format!("{x} failed")) });
        let error = fork((fails, task(|x: u32| x))).run(4).find_map(Result::err);
        let error = error.unwrap();
        assert_eq!(error.stage(), Some("stage 1, task 1"));
        assert_eq!(
            format!("{error:#}"),
            "stage `stage 1, task 1` failed on item 0: 4 failed"
        );
    }

    #[test]
    fn a_cancel_drops_an_async_task_that_never_ends() {
        with_timeout(60, || {
            let never = async_task(|x: u32| async move {
                std::future::pending::<()>().await;
                x
            });
            let stage = fork((task(|x: u32| x), never)).workers(4);
            let mut output = stage.feed(0..100);
            let canceller = output.canceller();
            let stopper = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                canceller.cancel();
            });
            assert!(output.next().is_none());
            stopper.join().unwrap();
            drop(output);
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_fork_matches_calling_its_tasks_in_turn(
        items in proptest::collection::vec(any::<i32>(), 0..60),
        workers in 1usize..5,
        failing in proptest::option::of(0usize..60),
    ) {
        let bad = failing.and_then(|at| items.get(at).copied());
        let check = try_task(move |x: i32| if Some(x) == bad { Err("bad") } else { Ok(x) })
            .name("check");
        let stage = fork((task(|x: i32| i64::from(x) * 3), check, task(|x: i32| x.count_ones())))
            .workers(workers)
            .ordered();
        let out: Result<Vec<_>, _> = stage.feed(items.clone()).collect();
        match bad {
            None => {
                let expected: Vec<_> = items
                    .iter()
                    .map(|&x| (i64::from(x) * 3, x, x.count_ones()))
                    .collect();
                prop_assert_eq!(out.unwrap(), expected);
            }
            Some(bad) => {
                let error = out.unwrap_err();
                prop_assert_eq!(error.stage(), Some("check"));
                let at = error.item().unwrap() as usize;
                prop_assert_eq!(items[at], bad);
            }
        }
    }
}

#[cfg(feature = "process")]
pyper::process_test_support!();

/// Process tasks in a fork: each fork worker calls a worker process of its own, one item
/// at a time, under the task's own timeout and retries.
#[cfg(feature = "process")]
mod with_process {
    use std::sync::MutexGuard;

    use super::*;
    use common::{children, wait_until};
    use pyper::{process_task, try_process_task, RemoteError, RetriesExhausted};

    /// The process tests run one at a time, so that each can check at its end that no
    /// worker process is left (the other tests of this file start none).
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn no_worker_process_is_left() {
        wait_until("every worker process is reaped", || children().is_empty());
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    fn refuse_3(x: u64) -> Result<u64, String> {
        match x {
            3 => Err("3 is refused".to_string()),
            x => Ok(x),
        }
    }

    fn panic_on_2(x: u64) -> u64 {
        assert_ne!(x, 2, "2 panics");
        x
    }

    fn sleep_for_ever(x: u64) -> u64 {
        std::thread::sleep(Duration::from_secs(600));
        x
    }

    fn sleep_unless_0(x: u64) -> u64 {
        if x != 0 {
            std::thread::sleep(Duration::from_secs(600));
        }
        x
    }

    fn pid(_: u64) -> u32 {
        std::process::id()
    }

    #[test]
    fn a_process_task_runs_in_worker_processes_next_to_a_thread_task() {
        let _serial = serial();
        with_timeout(120, || {
            let stage = fork((process_task!(square), task(|x: u64| x + 1))).workers(3);
            let mut out: Vec<(u64, u64)> = stage.feed(0..200).map(Result::unwrap).collect();
            out.sort();
            let expected: Vec<_> = (0..200).map(|x| (x * x, x + 1)).collect();
            assert_eq!(out, expected);
        });
        no_worker_process_is_left();
    }

    #[test]
    fn each_fork_worker_keeps_one_worker_process_of_its_own() {
        let _serial = serial();
        with_timeout(120, || {
            let stage = fork((process_task!(pid), task(|x: u64| x))).workers(2);
            let pids: std::collections::HashSet<u32> =
                stage.feed(0..100).map(|out| out.unwrap().0).collect();
            assert!(!pids.contains(&std::process::id()));
            assert!(
                (1..=2).contains(&pids.len()),
                "{} worker processes for 2 fork workers",
                pids.len()
            );
        });
        no_worker_process_is_left();
    }

    #[test]
    fn a_process_tasks_error_and_panic_name_the_task_and_the_item() {
        let _serial = serial();
        with_timeout(120, || {
            let refuse = try_process_task!(refuse_3).name("refuse");
            let error = fork((task(|x: u64| x), refuse))
                .feed(0..10)
                .find_map(Result::err)
                .unwrap();
            assert_eq!((error.stage(), error.item()), (Some("refuse"), Some(3)));
            let remote = error.downcast_ref::<RemoteError>().unwrap();
            assert_eq!(remote.to_string(), "3 is refused");

            let panics = process_task!(panic_on_2);
            let error = fork((panics, task(|x: u64| x)))
                .feed(0..10)
                .find_map(Result::err)
                .unwrap();
            assert_eq!((error.stage(), error.item()), (Some("panic_on_2"), Some(2)));
            let message = error.panic_message().unwrap_or_default();
            assert!(message.contains("2 panics"), "{error:#}");
        });
        no_worker_process_is_left();
    }

    #[test]
    fn a_process_task_keeps_its_own_timeout_and_retries() {
        let _serial = serial();
        with_timeout(120, || {
            let stuck = process_task!(sleep_for_ever)
                .name("stuck")
                .timeout(Duration::from_millis(200))
                .retries(1)
                .backoff(Backoff::fixed(Duration::from_millis(1)));
            let error = fork((stuck, task(|x: u64| x)))
                .run(5)
                .find_map(Result::err)
                .unwrap();
            assert_eq!((error.stage(), error.item()), (Some("stuck"), Some(0)));
            let exhausted = error.downcast_ref::<RetriesExhausted>().unwrap();
            assert_eq!(exhausted.attempts().len(), 2);
            assert!(exhausted.attempts()[1].downcast_ref::<TimedOut>().is_some());
        });
        no_worker_process_is_left();
    }

    #[test]
    fn dropping_the_output_kills_the_process_calls_in_progress() {
        let _serial = serial();
        with_timeout(120, || {
            let stage = fork((process_task!(sleep_unless_0), task(|x: u64| x))).workers(2);
            let mut output = stage.feed(0..4);
            assert_eq!(output.next().unwrap().unwrap(), (0, 0));
            // The other calls never end on their own: the drop must not wait for them.
            drop(output);
        });
        no_worker_process_is_left();
    }

    #[test]
    fn a_cancel_kills_the_process_calls_in_progress() {
        let _serial = serial();
        with_timeout(120, || {
            let stage = fork((process_task!(sleep_unless_0), task(|x: u64| x))).workers(2);
            let mut output = stage.feed(0..4);
            assert_eq!(output.next().unwrap().unwrap(), (0, 0));
            output.canceller().cancel();
            assert!(output.all(|item| item.is_ok()), "a cancel is not an error");
        });
        no_worker_process_is_left();
    }

    #[cfg(feature = "async")]
    #[test]
    fn process_thread_and_async_tasks_mix_in_one_fork() {
        let _serial = serial();
        with_timeout(120, || {
            let fetch = pyper::async_task(|x: u64| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                x * 10
            });
            let stage = fork((process_task!(square), fetch, task(|x: u64| x + 1))).workers(4);
            let mut out: Vec<(u64, u64, u64)> = stage.feed(0..100).map(Result::unwrap).collect();
            out.sort();
            let expected: Vec<_> = (0..100).map(|x| (x * x, x * 10, x + 1)).collect();
            assert_eq!(out, expected);
        });
        no_worker_process_is_left();
    }
}
