//! `auto_workers(max)`: the run tunes a stage's worker count from its own measurements.
//!
//! Every assertion is about a decision that stands far from its threshold: sleeping work
//! doubles its throughput with each doubling of workers (a gain of 100% against the 10%
//! the tuner asks for), CPU work burns a fixed amount of its thread's CPU time without
//! ever giving up its core, a stage behind a throttle of 4 finds its output full
//! nearly every time it looks, and a stage that waits 1 ms per item in front of one that
//! waits 10 ms makes ten times what its consumer takes. No assertion is on a duration.

mod common;

use std::time::Duration;

use common::{serial, wait_for_pyper_threads, with_timeout};
use pyper::{task, ErrorKind, Tuned};

#[cfg(feature = "process")]
pyper::process_test_support!();

/// A wait that uses no CPU: a request, say.
fn nap(item: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    item
}

/// Computes until the calling thread has used `ms` milliseconds of CPU time, so the work
/// is CPU-bound however crowded the machine is.
fn burn(ms: u64) -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let cpu = || Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap());
    let (started, mut h) = (cpu(), ms);
    while cpu() - started < Duration::from_millis(ms) {
        for i in 0..5_000u64 {
            h = std::hint::black_box(h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    h
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn tuned(output: &pyper::Output<u64>, stage: &str) -> Tuned {
    let metrics = output.metrics();
    let stage = metrics.stage(stage).expect("the stage is in the metrics");
    stage.tuned.clone().expect("the stage was tuned")
}

#[test]
fn a_stage_that_waits_grows_while_throughput_grows() {
    let _serial = serial();
    with_timeout(120, || {
        let mut output = task(nap).auto_workers(32).feed(0..2_000u64);
        let mut seen: Vec<u64> = output.by_ref().map(Result::unwrap).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..2_000).collect::<Vec<_>>(), "every item, once");
        let tuned = tuned(&output, "nap");
        assert!(tuned.peak >= 8, "{tuned:?}");
        assert!(tuned.workers <= 32 && tuned.max == 32, "{tuned:?}");
    });
}

#[test]
fn a_stage_that_computes_gets_no_more_workers_than_cores() {
    let _serial = serial();
    with_timeout(120, || {
        let mut output = task(|item: u64| burn(1) ^ item)
            .name("burn")
            .auto_workers(16)
            .feed(0..400u64);
        assert_eq!(output.by_ref().map(Result::unwrap).count(), 400);
        let tuned = tuned(&output, "burn");
        assert!(tuned.peak <= cores(), "{tuned:?} on {} cores", cores());
        let report = output.report().to_string();
        assert!(
            report.contains("`burn`: the run tuned it to")
                && report.contains("The run stopped there because its work computes"),
            "{report}"
        );
    });
}

#[test]
fn a_stage_blocked_downstream_does_not_grow() {
    let _serial = serial();
    with_timeout(120, || {
        let pipeline = task(|item: u64| item)
            .name("quick")
            .auto_workers(16)
            .throttle(4)
            | task(nap);
        let mut output = pipeline.feed(0..300u64);
        assert_eq!(output.by_ref().map(Result::unwrap).count(), 300);
        let tuned = tuned(&output, "quick");
        // It starts with one worker per core (at most its 16), and never goes above.
        assert!(tuned.peak <= cores().min(16), "{tuned:?}");
    });
}

/// The stage waits, so it would climb if it were alone; its consumer, busy all the time,
/// takes a tenth of what it makes. The queue between them (the default throttle) never
/// fills in this run, so the stage is never blocked, and only its consumer's pace can
/// hold it: it stays at the count it started with, one worker per core.
#[test]
fn a_fast_stage_in_front_of_a_slow_consumer_stays_where_it_started() {
    let _serial = serial();
    with_timeout(120, || {
        let fast = task(|item: u64| {
            std::thread::sleep(Duration::from_millis(1));
            item
        })
        .name("fast")
        .auto_workers(64);
        let slow = task(|item: u64| {
            std::thread::sleep(Duration::from_millis(10));
            item
        })
        .name("slow");
        let mut output = (fast | slow).feed(0..200u64);
        assert_eq!(output.by_ref().map(Result::unwrap).count(), 200);
        let tuned = tuned(&output, "fast");
        assert!(tuned.peak <= cores().min(64), "{tuned:?}");
        let report = output.report().to_string();
        assert!(
            report.contains("the stage after it could not keep up"),
            "{report}"
        );
    });
}

#[test]
fn parked_workers_leave_when_the_output_is_dropped() {
    let _serial = serial();
    with_timeout(120, || {
        let mut output = task(nap).auto_workers(64).feed(0..);
        let first: Vec<u64> = output.by_ref().take(50).map(Result::unwrap).collect();
        assert_eq!(first.len(), 50);
        drop(output);
        wait_for_pyper_threads(0);
    });
}

#[test]
fn a_failure_in_a_tuned_stage_names_it_and_stops_every_worker() {
    let _serial = serial();
    with_timeout(120, || {
        let failing = pyper::try_task(|item: u64| {
            std::thread::sleep(Duration::from_millis(1));
            match item {
                300 => Err("item 300 is bad"),
                _ => Ok(item),
            }
        })
        .name("check")
        .auto_workers(32);
        let results: Vec<_> = failing.feed(0..).collect();
        let error = results.last().unwrap().as_ref().unwrap_err();
        assert_eq!(error.stage(), Some("check"));
        let cause = std::error::Error::source(error).expect("the original error");
        assert_eq!(cause.to_string(), "item 300 is bad");
        wait_for_pyper_threads(0);
    });
}

#[test]
fn a_tuned_join_is_a_configuration_error() {
    let join = task(|items: pyper::Upstream<u64>| items.sum::<u64>())
        .join()
        .auto_workers(4);
    let error = join.feed(0..10u64).next().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("auto_workers"), "{error}");
}

#[test]
fn workers_after_auto_workers_fixes_the_count() {
    let _serial = serial();
    let mut output = task(nap).auto_workers(8).workers(2).feed(0..20u64);
    assert_eq!(output.by_ref().count(), 20);
    let metrics = output.metrics();
    let stage = metrics.stage("nap").unwrap();
    assert_eq!((stage.workers, stage.tuned.clone()), (2, None));
}

#[cfg(feature = "async")]
#[test]
fn an_async_stage_tunes_its_futures_in_flight() {
    let _serial = serial();
    with_timeout(120, || {
        let fetch = pyper::async_task(|item: u64| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            item
        })
        .name("fetch")
        .auto_workers(64);
        let mut output = fetch.feed(0..3_000u64);
        let mut seen: Vec<u64> = output.by_ref().map(Result::unwrap).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..3_000).collect::<Vec<_>>());
        let tuned = tuned(&output, "fetch");
        assert!(tuned.peak >= 8, "{tuned:?}");
    });
}

#[cfg(feature = "process")]
#[test]
fn a_tuned_process_stage_is_a_configuration_error() {
    fn double(item: u64) -> u64 {
        item * 2
    }
    let stage = pyper::process_task!(double).auto_workers(4);
    let error = stage.feed(0..10u64).next().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("auto_workers"), "{error}");
}

/// A stage that computes, in front of a join that folds what it makes at once: the join
/// waits for input nearly all the time, so nothing holds the stage back, and the report
/// says the count is the cores', not that "the stage after it could not keep up". (The
/// join takes its input in batches, so within a window it may have taken only half of
/// what the stage finished: that alone is not a consumer falling behind.)
#[test]
fn a_stage_in_front_of_a_waiting_join_is_not_held_back_by_it() {
    let _serial = serial();
    with_timeout(120, || {
        let pipeline = task(|item: u64| burn(1) ^ item)
            .name("burn")
            .auto_workers(16)
            | task(|items: pyper::Upstream<u64>| items.fold(0u64, |a, b| a ^ b)).join();
        for _ in 0..3 {
            let mut output = pipeline.clone().feed(0..400u64);
            assert_eq!(output.by_ref().map(Result::unwrap).count(), 1);
            let report = output.report().to_string();
            assert!(
                report.contains("`burn`: the run tuned it to")
                    && !report.contains("the stage after it could not keep up"),
                "{report}"
            );
        }
    });
}
