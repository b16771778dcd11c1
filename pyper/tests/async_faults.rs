//! Timeouts and retries of async stages (cargo feature `async`), end to end.
//!
//! * A timeout drops the overrunning future (a drop guard in it says so) and reports
//!   `TimedOut` with the stage and the item.
//! * Retries re-create the future, or the stream of a `branch_stream` task, from a copy of
//!   the item: transient errors, panics and overruns succeed, with every output exactly
//!   once; exhausted retries list every cause in order; a stream that yielded outputs is
//!   not retried; ordered stages keep their order; a cancel ends a backoff and drops the
//!   copies of the items it held.
//! * A join task with a policy is a configuration error.
//! * A property test over random pipelines of sync and async stages with random failures
//!   per attempt: every item's outputs come out exactly once, or the run fails on an item
//!   whose every attempt failed.
//!
//! Every wait is bounded only to turn a hang into a failure; nothing asserts on speed.
//! The overrunning futures are pending forever, never merely slow.

#[path = "async_common/mod.rs"]
mod common;
mod fault_common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fault_common::{
    assert_panicked, check_random_run, outputs_and_error, quiet_panics, run_random, stage_spec,
    timed, values, Attempts, StageSpec, TestError, GENEROUS, SHORT,
};
use futures_util::stream::{self, StreamExt};
use pyper::{
    async_task, task, try_async_task, Backoff, ErrorKind, Panicked, RetriesExhausted, TimedOut,
    UpstreamStream,
};

/// Sets its flag when dropped: put in a future, it says the future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[test]
fn a_timeout_drops_the_future_and_names_the_stage_and_item() {
    let _serial = serial();
    within("a timed-out future", || {
        let dropped = Arc::new(AtomicBool::new(false));
        let fetch = async_task({
            let dropped = Arc::clone(&dropped);
            move |x: u64| {
                let guard = (x == 2).then(|| DropFlag(Arc::clone(&dropped)));
                async move {
                    if let Some(_guard) = guard {
                        std::future::pending::<()>().await;
                    }
                    x
                }
            }
        })
        .name("fetch")
        .timeout(Duration::from_secs(1));
        let mut outputs = fetch.feed(0..10);
        let (values, error) = outputs_and_error(outputs.by_ref());
        assert!(values.len() <= 9 && !values.contains(&2), "{values:?}");
        assert!(outputs.next().is_none(), "the run stopped");
        assert_eq!(error.kind(), ErrorKind::Failed);
        assert_eq!((error.stage(), error.item()), (Some("fetch"), Some(2)));
        let timed_out = error
            .downcast_ref::<TimedOut>()
            .expect("source is TimedOut");
        assert_eq!(timed_out.limit(), Duration::from_secs(1));
        // Dropped when the deadline passed, before the error was reported.
        assert!(dropped.load(SeqCst), "the overrunning future was dropped");
    });
}

#[test]
fn without_retries_a_timed_future_fails_as_it_would_untimed() {
    let _serial = serial();
    quiet_panics();
    within("timed failures", || {
        let failing = try_async_task(|x: u64| async move {
            match x {
                2 => Err(TestError(x)),
                _ => Ok(x),
            }
        })
        .timeout(GENEROUS);
        let (_, error) = outputs_and_error(failing.feed(0..5));
        assert_eq!(error.item(), Some(2));
        assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError(2)));

        let panicking = async_task(|x: u64| async move {
            if x == 1 {
                panic!("injected {x}");
            }
            x
        })
        .name("panicking")
        .timeout(GENEROUS);
        let (_, error) = outputs_and_error(panicking.feed(0..5));
        assert_panicked(&error, "panicking", 1, "injected 1");
    });
}

#[test]
fn transient_failures_succeed_with_retries_and_every_output_comes_once() {
    let _serial = serial();
    quiet_panics();
    within("flaky futures", || {
        for timeout in [None, Some(Duration::from_secs(2))] {
            let attempts = Attempts::default();
            // Item x fails its first x % 4 attempts: by an error, a panic in the future,
            // a panic in the function before any future exists, or (for a few items, with
            // a timeout) an overrun.
            let flaky = try_async_task({
                let attempts = attempts.clone();
                move |x: u64| {
                    let attempt = attempts.next(x);
                    let fails = u64::from(attempt) < x % 4;
                    let how = (x + u64::from(attempt)) % 4;
                    if fails && how == 0 {
                        panic!("injected panic in the call on {x}");
                    }
                    async move {
                        tokio::time::sleep(Duration::from_micros(x % 7 * 100)).await;
                        match (fails, how) {
                            (false, _) => Ok(x * 10),
                            (true, 1) => panic!("injected panic in the future on {x}"),
                            (true, 2) if timeout.is_some() && x < 40 => {
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                            (true, _) => Err(TestError(x)),
                        }
                    }
                }
            })
            .workers(16)
            .retries(3)
            .backoff(Backoff::fixed(Duration::from_micros(50)));
            let flaky = timed(flaky, timeout);
            let mut out = values(flaky.feed(0..300));
            out.sort_unstable();
            assert_eq!(out, (0..300).map(|x| x * 10).collect::<Vec<_>>());
            for x in 0..300 {
                assert_eq!(attempts.of(x), (x % 4) as u32 + 1, "attempts at {x}");
            }
        }
    });
}

#[test]
fn exhausted_retries_list_every_cause_in_order() {
    let _serial = serial();
    quiet_panics();
    within("doomed futures", || {
        let attempts = Attempts::default();
        let dropped = Arc::new(AtomicBool::new(false));
        // Item 4: an error, then a panic, then an overrun.
        let doomed = try_async_task({
            let (attempts, dropped) = (attempts.clone(), Arc::clone(&dropped));
            move |x: u64| {
                let attempt = attempts.next(x);
                let guard = (x == 4 && attempt == 2).then(|| DropFlag(Arc::clone(&dropped)));
                async move {
                    match (x, attempt) {
                        (4, 0) => Err(TestError(x)),
                        (4, 1) => panic!("injected panic on {x}"),
                        (4, _) => {
                            let _guard = guard; // dropped with the overrunning future
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                        _ => Ok(x),
                    }
                }
            }
        })
        .name("doomed")
        .retries(2)
        .backoff(Backoff::none())
        .timeout(Duration::from_secs(1));
        let (_, error) = outputs_and_error(doomed.feed(0..10));
        assert_eq!((error.stage(), error.item()), (Some("doomed"), Some(4)));
        let causes = error
            .downcast_ref::<RetriesExhausted>()
            .expect("source is RetriesExhausted")
            .attempts();
        assert_eq!(causes.len(), 3);
        assert_eq!(causes[0].downcast_ref::<TestError>(), Some(&TestError(4)));
        let panicked = causes[1].downcast_ref::<Panicked>().expect("a panic");
        assert_eq!(panicked.message(), "injected panic on 4");
        assert_eq!(
            causes[2].downcast_ref::<TimedOut>().map(TimedOut::limit),
            Some(Duration::from_secs(1))
        );
        assert_eq!(attempts.of(4), 3);
        wait_until("the overrunning attempt is dropped", || {
            dropped.load(SeqCst)
        });
    });
}

#[test]
fn branch_streams_are_retried_until_they_yield() {
    let _serial = serial();
    quiet_panics();
    within("flaky streams", || {
        // Item 0 yields 1 and 2, then fails: not retried, the error is its own.
        let attempts = Attempts::default();
        let partial = async_task({
            let attempts = attempts.clone();
            move |x: u64| {
                attempts.next(x);
                async move { vec![Ok(1), Ok(2), Err(TestError(x))] }
            }
        })
        .try_branch()
        .name("partial")
        .retries(3)
        .backoff(Backoff::none());
        let (out, error) = outputs_and_error(partial.run(0));
        assert!(out.len() <= 2, "at most once: {out:?}");
        assert_eq!((error.stage(), error.item()), (Some("partial"), Some(0)));
        assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError(0)));
        assert_eq!(attempts.of(0), 1);

        // The same with a stream that panics after its first element.
        let attempts = Attempts::default();
        let partial = async_task({
            let attempts = attempts.clone();
            move |x: u64| {
                attempts.next(x);
                async move {
                    stream::iter(0..3).map(|i| match i {
                        2 => panic!("injected panic in a stream"),
                        i => i,
                    })
                }
            }
        })
        .branch_stream()
        .retries(3)
        .backoff(Backoff::none());
        let (out, error) = outputs_and_error(partial.run(0));
        assert!(out.len() <= 2, "at most once: {out:?}");
        assert_eq!(error.kind(), ErrorKind::Panicked);
        assert_eq!(error.panic_message(), Some("injected panic in a stream"));
        assert_eq!(attempts.of(0), 1);

        // A stream that fails before its first element is retried; one that yielded
        // and then overran is not.
        let attempts = Attempts::default();
        let pages = try_async_task({
            let attempts = attempts.clone();
            move |x: u64| {
                let attempt = attempts.next(x);
                async move {
                    if attempt == 0 {
                        return Err(TestError(x));
                    }
                    let pages = stream::iter(0..).then(move |page| async move {
                        if page == 3 {
                            std::future::pending::<()>().await;
                        }
                        x * 100 + page
                    });
                    Ok(pages)
                }
            }
        })
        .branch_stream()
        .name("pages")
        .retries(2)
        .backoff(Backoff::none())
        .timeout(Duration::from_secs(1));
        let (out, error) = outputs_and_error(pages.run(7));
        assert!(
            out.len() <= 3 && out.iter().all(|&v| v / 100 == 7),
            "{out:?}"
        );
        assert_eq!((error.stage(), error.item()), (Some("pages"), Some(0)));
        assert!(
            error.downcast_ref::<TimedOut>().is_some(),
            "not retried after it yielded: {error:#}"
        );
        assert_eq!(attempts.of(7), 2);
    });
}

#[tokio::test]
async fn ordered_async_stages_keep_their_order_through_retries() {
    let _serial = serial_async().await;
    let attempts = Attempts::default();
    let flaky = try_async_task({
        let attempts = attempts.clone();
        move |x: u64| {
            let attempt = attempts.next(x);
            async move {
                tokio::time::sleep(Duration::from_micros(scramble(x, 300))).await;
                if u64::from(attempt) < scramble(x ^ 0xfeed, 3) {
                    return Err(TestError(x));
                }
                Ok(x)
            }
        }
    })
    .workers(32)
    .ordered()
    .retries(2)
    .backoff(Backoff::fixed(Duration::from_micros(100)));
    let outputs = (flaky | task(|x: u64| x + 1)).feed(0..500).into_stream();
    let results = within_async("ordered retries", outputs.collect::<Vec<_>>()).await;
    assert_eq!(values(results.into_iter()), (1..=500).collect::<Vec<_>>());
}

/// An item that counts its live copies, so a test can see that none is left behind.
struct Tracked {
    id: u64,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(id: u64, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, SeqCst);
        Tracked {
            id,
            live: Arc::clone(live),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Tracked::new(self.id, &self.live)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

#[test]
fn a_cancel_ends_a_backoff_and_drops_the_items_it_held() {
    let _serial = serial();
    within("a cancelled backoff", || {
        let live = Arc::new(AtomicUsize::new(0));
        let attempts = Attempts::default();
        // Item 0 goes through; every later item fails, then waits a day to be retried.
        let stage = try_async_task({
            let attempts = attempts.clone();
            move |item: Tracked| {
                attempts.next(item.id);
                async move {
                    match item.id {
                        0 => Ok(item.id),
                        id => Err(TestError(id)),
                    }
                }
            }
        })
        .workers(4)
        .retries(1)
        .backoff(Backoff::fixed(Duration::from_secs(24 * 3600)));
        let inputs: Vec<Tracked> = (0..10).map(|id| Tracked::new(id, &live)).collect();
        let mut outputs = stage.feed(inputs);
        assert_eq!(outputs.next().unwrap().unwrap(), 0);
        wait_until("an item in its backoff", || attempts.of(1) == 1);
        drop(outputs); // returns: the backoff does not hold the run
        wait_until("every copy of every item dropped", || {
            live.load(SeqCst) == 0
        });
        assert_eq!(attempts.of(1), 1, "no retry after the cancel");
    });
}

#[test]
fn an_async_join_with_a_policy_is_a_configuration_error() {
    let _serial = serial();
    let join = async_task(|xs: UpstreamStream<u32>| xs.collect::<Vec<u32>>())
        .join()
        .timeout(SHORT);
    let error = join.run(1).next().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error
            .to_string()
            .contains("timeout and retries apply per item; a join task receives the whole stream"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// The property: random pipelines of sync and async stages, random failures per attempt (see
// `fault_common`).

/// A stage of the random pipelines: a thread stage or an async one.
#[derive(Clone, Debug)]
struct MixedStage {
    asynchronous: bool,
    spec: StageSpec,
}

impl MixedStage {
    /// The stage, counting its calls in `attempts`.
    fn task(&self, attempts: Attempts) -> pyper::Pipeline<u64, u64> {
        let body = self.spec.body(attempts);
        let task = match self.asynchronous {
            false => pyper::try_task(body),
            true => try_async_task(move |v: u64| {
                let body = body.clone();
                async move {
                    tokio::task::yield_now().await;
                    body(v)
                }
            }),
        };
        self.spec.stage(task)
    }
}

impl std::borrow::Borrow<StageSpec> for MixedStage {
    fn borrow(&self) -> &StageSpec {
        &self.spec
    }
}

/// Random stages of the property, a thread or an async stage each.
fn mixed_stage() -> impl proptest::strategy::Strategy<Value = MixedStage> {
    use proptest::prelude::*;
    (any::<bool>(), stage_spec(8, |x| scramble(x, u64::MAX)))
        .prop_map(|(asynchronous, spec)| MixedStage { asynchronous, spec })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    #[test]
    fn every_item_comes_out_once_or_is_named_in_the_error(
        stages in proptest::collection::vec(mixed_stage(), 1..=3),
        inputs in 1u64..60,
    ) {
        let _serial = serial();
        quiet_panics();
        let counters: Vec<Attempts> = stages.iter().map(|_| Attempts::default()).collect();
        let (outputs, error) = within("a random pipeline", {
            let (stages, counters) = (stages.clone(), counters.clone());
            move || run_random(&stages, &counters, inputs, MixedStage::task)
        });
        check_random_run(&stages, &counters, inputs, &outputs, error)?;
    }
}
