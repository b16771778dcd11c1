//! Pyper's own test scenarios (pyper-dev/pyper `tests/test_sync.py`, `tests/test_task.py`,
//! and the thread-worker cases of `tests/test_async.py`), ported to the Rust API.
//!
//! Each test is named after the Pyper test it ports. Pyper's tests that check run-time type
//! errors (a non-iterable branch result, `task(1)`, `task(f) | 1`, `task(f) > 1`, a string
//! `workers`) have no run-time counterpart: those are compile errors here, and the crate's
//! `compile_fail` doctests cover them. The multiprocess and asyncio variants have no
//! counterpart either. The first-stage rules are ported as tests of this crate's documented
//! departure (see the crate docs, "The first stage").

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use common::pyper_helpers::{consumer, f1, f5, TestError};
use common::with_timeout;
use pyper::{task, try_task, ErrorKind, Pipeline, Upstream};

// Pyper's helper functions, one for one.

/// `def f2(data): yield data`
fn f2(data: u32) -> std::iter::Once<u32> {
    std::iter::once(data)
}

/// `def f3(data): for row in data: yield row` (a join task that re-emits its input)
fn f3(data: Upstream<u32>) -> Upstream<u32> {
    data
}

/// `def f4(a1, a2, a3, data, k1, k2): return data`, returning every argument so that the
/// order of the bound arguments is visible.
fn f4(a1: u32, a2: u32, a3: u32, data: u32, k1: u32, k2: u32) -> [u32; 6] {
    [a1, a2, a3, data, k1, k2]
}

// test_sync.py

// Ports test_sync.py::test_pipeline (Pyper 0.1): task(f1) | task(f2).
#[test]
fn test_pipeline() {
    let p = task(f1) | task(|x: u32| x);
    assert_eq!(p.run(1).next().unwrap().unwrap(), 1);
}

// Ports test_sync.py::test_branched_pipeline: task(f1) | task(f2, branch=True).
#[test]
fn test_branched_pipeline() {
    let p = task(f1) | task(f2).branch();
    let mut out = p.run(1);
    assert_eq!(out.next().unwrap().unwrap(), 1);
    assert!(out.next().is_none());
}

// Ports test_async.py::test_iterable_branched_pipeline: a branch over a list, not a generator.
#[test]
fn test_iterable_branched_pipeline() {
    let p = task(f1) | task(|data: u32| vec![data]).branch();
    assert_eq!(p.run(1).next().unwrap().unwrap(), 1);
    // Any IntoIterator branches: an Option is a filter, a lazy iterator streams.
    let filter = task(|x: u32| (x % 2 == 0).then_some(x)).branch();
    let evens: Vec<u32> = filter.feed(0..10).map(Result::unwrap).collect();
    assert_eq!(evens, [0, 2, 4, 6, 8]);
    let lazy = task(|n: u32| (0..n).map(|i| i * i)).branch();
    let squares: Vec<u32> = lazy.run(5).map(Result::unwrap).collect();
    assert_eq!(squares, [0, 1, 4, 9, 16]);
}

// Ports test_sync.py::test_joined_pipeline: task(f1) | task(f2, branch) | task(f3, branch, join).
#[test]
fn test_joined_pipeline() {
    let p = task(f1) | task(f2).branch() | task(f3).join().branch();
    let out: Vec<u32> = p.run(1).map(Result::unwrap).collect();
    assert_eq!(out, [1]);
    // The same shape over a real stream: the join re-emits every item, in order.
    let p = task(|n: u32| 0..n).branch() | task(f3).join().branch();
    let out: Vec<u32> = p.run(100).map(Result::unwrap).collect();
    assert_eq!(out, (0..100).collect::<Vec<_>>());
}

// Ports test_sync.py::test_joined_pipeline (Pyper 0.1 shape): a plain join task, no branch.
#[test]
fn test_joined_pipeline_without_branch() {
    let sum = task(|xs: Upstream<u32>| xs.sum::<u32>()).join();
    let p = task(|n: u32| 1..=n).branch() | task(|x: u32| x * 2) | sum;
    let out: Vec<u32> = p.run(10).map(Result::unwrap).collect();
    assert_eq!(out, [110]);
}

// Ports test_sync.py::test_bind: bind=task.bind(1, 1, 1, k1=1, k2=2) becomes closure capture;
// the bound positional arguments come before the piped value.
#[test]
fn test_bind() {
    let (a1, a2, a3, k1, k2) = (10, 20, 30, 40, 50);
    let p = task(f1) | task(move |data: u32| f4(a1, a2, a3, data, k1, k2));
    assert_eq!(p.run(1).next().unwrap().unwrap(), [10, 20, 30, 1, 40, 50]);
    // A bound shared resource is captured by reference counting and used from many workers.
    let offset = Arc::new(1000u32);
    let p = task({
        let offset = Arc::clone(&offset);
        move |data: u32| data + *offset
    })
    .workers(4);
    let mut out: Vec<u32> = p.feed(0..8).map(Result::unwrap).collect();
    out.sort_unstable();
    assert_eq!(out, (1000..1008).collect::<Vec<_>>());
    assert_eq!(
        Arc::strong_count(&offset),
        2,
        "the pipeline still holds its capture"
    );
    drop(p);
    assert_eq!(
        Arc::strong_count(&offset),
        1,
        "the run released its capture"
    );
}

// Ports test_sync.py::test_redundant_bind_ok: task(f2, branch=True, bind=task.bind()).
#[test]
fn test_redundant_bind_ok() {
    let p = task(f1) | task(move |data: u32| f2(data)).branch();
    assert_eq!(p.run(1).next().unwrap().unwrap(), 1);
}

// Ports test_sync.py::test_consumer: (task(f1) | task(f2, branch=True)) > consumer.
#[test]
fn test_consumer() {
    let run = (task(f1) | task(f2).branch()).consume(consumer);
    assert_eq!(run.run(1).unwrap(), 1);
    // The consumer is reusable, and can be fed a stream too.
    assert_eq!(run.run(7).unwrap(), 7);
    assert_eq!(run.feed(1..=10).unwrap(), 55);
}

// Ports test_sync.py::test_invalid_first_stage_workers as this crate's documented behaviour:
// `run(x)` calls a multi-worker first stage exactly once.
#[test]
fn test_invalid_first_stage_workers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let first = task({
        let calls = Arc::clone(&calls);
        move |data: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            data
        }
    })
    .workers(4);
    let run = (first | task(f2).branch()).consume(consumer);
    assert_eq!(run.run(1).unwrap(), 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "run(x) calls the first stage once"
    );
}

// Ports test_sync.py::test_invalid_first_stage_workers, `feed` side: with a fed iterator the
// first stage's workers really run in parallel (four calls meet at a barrier).
#[test]
fn test_invalid_first_stage_workers_fed() {
    with_timeout(60, || {
        let barrier = Arc::new(Barrier::new(4));
        let first = task(move |data: u32| {
            barrier.wait();
            data
        })
        .workers(4);
        let run = (first | task(f2).branch()).consume(consumer);
        assert_eq!(run.feed(1..=4).unwrap(), 10);
    });
}

// Ports test_sync.py::test_invalid_first_stage_join as this crate's documented behaviour:
// a join first stage receives the single `run` input, or the whole fed iterator.
#[test]
fn test_invalid_first_stage_join() {
    let sum = task(|xs: Upstream<u32>| xs.sum::<u32>()).join();
    let run = (sum | task(f2).branch()).consume(consumer);
    assert_eq!(run.run(1).unwrap(), 1);
    assert_eq!(run.feed(1..=100).unwrap(), 5050);
    // It is called once per worker, whatever the number of inputs.
    let calls = Arc::new(AtomicUsize::new(0));
    let count = task({
        let calls = Arc::clone(&calls);
        move |xs: Upstream<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            xs.count() as u32
        }
    })
    .join();
    let out: Vec<u32> = count.feed(0..1000).map(Result::unwrap).collect();
    assert_eq!(out, [1000]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Ports test_sync.py::test_threaded_error_handling: task(f1) | task(f5, workers=2) > consumer
// raises the original TestError.
#[test]
fn test_threaded_error_handling() {
    let run = (task(f1) | try_task(f5).workers(2)).consume(consumer);
    let err = with_timeout(60, move || run.run(1).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Failed);
    assert_eq!(err.stage(), Some("f5"));
    assert_eq!(err.downcast_ref::<TestError>(), Some(&TestError));
    let source = std::error::Error::source(&err).expect("the original error is the source");
    assert!(source.is::<TestError>());
    let original = err.into_source().unwrap().downcast::<TestError>().unwrap();
    assert_eq!(*original, TestError);
}

// Ports test_sync.py::test_threaded_error_handling for a panic: the message comes through.
#[test]
fn test_threaded_error_handling_panic() {
    let boom = task(|data: u32| -> u32 { panic!("f5 failed on {data}") })
        .workers(2)
        .name("f5");
    let run = (task(f1) | boom).consume(consumer);
    let err = with_timeout(60, move || run.run(1).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.stage(), Some("f5"));
    assert_eq!(err.panic_message(), Some("f5 failed on 1"));
    assert!(err.downcast_ref::<TestError>().is_none());
}

// Ports test_sync.py::test_error_handling (Pyper 0.1): task(f1) | task(f2) | task(f5) > consumer.
#[test]
fn test_error_handling() {
    let run = (task(f1) | task(f2).branch() | try_task(f5)).consume(consumer);
    let err = with_timeout(60, move || run.run(1).unwrap_err());
    assert!(err.downcast_ref::<TestError>().is_some());
    assert_eq!(err.item(), Some(0));
}

// Ports test_sync.py::test_error_handling_in_daemon: task(f5, daemon=True) | task(f2) > consumer.
#[test]
fn test_error_handling_in_daemon() {
    let run = (try_task(f5).daemon() | task(f2).branch()).consume(consumer);
    let err = with_timeout(60, move || run.run(1).unwrap_err());
    assert!(err.downcast_ref::<TestError>().is_some());
    assert_eq!(err.stage(), Some("f5"));
}

// Ports test_async.py::test_unified_pipeline: plain functions, closures and a branch in one
// pipeline, into a consumer.
#[test]
fn test_unified_pipeline() {
    let p = task(f1) | task(|x: u32| x) | task(f2).branch().workers(2);
    assert_eq!(p.consume(consumer).run(1).unwrap(), 1);
}

// No test in Pyper's suite: its user guide's "a pipeline is a function" — calling it again
// starts an independent run. Runs of one pipeline may overlap and do not share state.
#[test]
fn test_pipeline_reuse() {
    let p = task(|n: u64| 0..n).branch() | task(|x: u64| x * 2).workers(3);
    for n in [0, 1, 10, 100] {
        let total: u64 = p.run(n).map(Result::unwrap).sum();
        assert_eq!(total, n * n.saturating_sub(1));
    }
    // Two runs alive at once, interleaved.
    let mut a = p.run(50);
    let mut b = p.clone().run(60);
    let (mut sa, mut sb) = (0, 0);
    loop {
        let (x, y) = (a.next(), b.next());
        if x.is_none() && y.is_none() {
            break;
        }
        sa += x.map_or(0, Result::unwrap);
        sb += y.map_or(0, Result::unwrap);
    }
    assert_eq!((sa, sb), (50 * 49, 60 * 59));
    // A failed run does not poison the next one.
    let fragile = try_task(|x: u64| if x == 3 { Err("three") } else { Ok(x) });
    assert!(fragile.feed(0..5).any(|r| r.is_err()));
    assert_eq!(
        fragile.feed(4..6).map(Result::unwrap).collect::<Vec<_>>(),
        [4, 5]
    );
}

// No test in Pyper's suite: its user guide's composition of pipelines, `p1 | p2`, and the
// "Resource Management" factory pattern (a function returning a sub-pipeline).
#[test]
fn test_nested_pipelines() {
    fn double() -> Pipeline<u32, u32> {
        task(|x: u32| x * 2).into()
    }
    fn spread() -> Pipeline<u32, u32> {
        task(|n: u32| 0..n).branch() | double()
    }
    let inner = spread() | task(|x: u32| x + 1);
    let outer = task(f1) | inner.clone() | (double() | double());
    let mut out: Vec<u32> = outer.run(4).map(Result::unwrap).collect();
    out.sort_unstable();
    // 0..4 → ×2 → +1 → ×4
    assert_eq!(out, [4, 12, 20, 28]);
    // The sub-pipeline still works on its own after being nested.
    assert_eq!(inner.run(2).map(Result::unwrap).collect::<Vec<_>>(), [1, 3]);
    // Nesting keeps default stage names positional across the whole pipeline.
    let failing = (task(|x: u32| x) | (task(|x: u32| x) | try_task(|_: u32| Err::<u32, _>("no"))))
        | task(|x: u32| x);
    let err = failing.run(0).find_map(Result::err).unwrap();
    assert_eq!(err.stage(), Some("stage 3"));
}

// test_task.py

// Ports test_task.py::test_as_wrapper_with_params: task(func, join=True, workers=2, throttle=2).
#[test]
fn test_as_wrapper_with_params() {
    let p: Pipeline<u32, usize> = task(|xs: Upstream<u32>| xs.count())
        .join()
        .workers(2)
        .throttle(2)
        .into();
    let total: usize = p.feed(0..100).map(Result::unwrap).sum();
    assert_eq!(total, 100, "two join workers share the stream");
}

// Ports test_task.py::test_as_decorator_with_params: task(branch=True, workers=2, throttle=2).
#[test]
fn test_as_decorator_with_params() {
    let p: Pipeline<u32, u32> = task(|x: u32| [x, x]).branch().workers(2).throttle(2).into();
    let total: u32 = p.feed(0..10).map(Result::unwrap).sum();
    assert_eq!(total, 90);
}

// Ports test_task.py::test_raise_for_invalid_workers: workers=0 is a configuration error
// naming the stage (negative or non-integer values do not compile).
#[test]
fn test_raise_for_invalid_workers() {
    let p = task(f1) | task(|x: u32| x).workers(0);
    let mut out = p.run(1);
    let err = out.next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.stage(), Some("stage 2"));
    assert!(out.next().is_none());
    let named = task(f1).workers(0).name("first");
    let err = named.feed(0..3).next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.stage(), Some("first"));
    let err = task(f1).workers(0).run(1).next().unwrap().unwrap_err();
    assert_eq!(err.stage(), Some("f1"));
}

// Ports test_task.py::test_raise_for_invalid_throttle: no throttle value is invalid here
// (usize), and throttle(0) is Pyper's unbounded queue.
#[test]
fn test_raise_for_invalid_throttle() {
    let p = task(f1).throttle(0) | task(|x: u32| x).throttle(1);
    let total: u32 = p.feed(0..1000).map(Result::unwrap).sum();
    assert_eq!(total, 999 * 500);
}

// Ports the join validation of Pyper's task(): join applied twice is a configuration error.
#[test]
fn test_raise_for_double_join() {
    let twice = task(|xs: Upstream<Upstream<u32>>| xs.count()).join().join();
    let err = twice.feed(0..3).next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.stage(), Some("stage 1"));
    assert!(err.to_string().contains("join"), "{err}");
    let p = task(f1)
        | task(|xs: Upstream<Upstream<u32>>| xs.count())
            .join()
            .join()
            .name("j");
    let err = p.run(1).next().unwrap().unwrap_err();
    assert_eq!((err.kind(), err.stage()), (ErrorKind::Config, Some("j")));
}

// Ports test_task.py::test_repr: a pipeline and a task have a readable Debug form.
#[test]
fn test_repr() {
    let t = task(f1).workers(3).name("f1");
    let repr = format!("{t:?}");
    assert!(
        repr.contains("Task") && repr.contains("workers: 3"),
        "{repr}"
    );
    let p: Pipeline<u32, u32> = t.into();
    assert!(format!("{p:?}").contains("Pipeline"));
}
