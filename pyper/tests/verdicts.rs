//! The report's verdicts on the cases the guides describe: for each, one pipeline, and the
//! classification, bottleneck and advice the report must give.
//!
//! The guides (Pyper's user guide, and the guides on choosing Python's concurrency APIs)
//! ask one question, "which mode, how many workers?", and warn most about two mistakes:
//! a blocking call inside an async task, and more workers than cores for CPU-bound work.
//! Each case below is one of their examples, and each must get the right answer on an
//! idle machine and on a loaded one ([`Hogs`]: threads that spin on every core, and
//! more).
//!
//! A verdict may never depend on luck, so every case stands far from every threshold:
//! CPU work burns a fixed amount of its thread's *CPU time* (see [`burn`]), so it is
//! CPU-bound however crowded the machine is, and IO waits are sleeps, which use none. No
//! test asserts on a duration. The tests of this file run one at a time ([`serial`]), so
//! each measures only its own pipeline (and its hogs).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{serial, with_timeout};
use pyper::{task, Bound, Report, Upstream};

#[cfg(feature = "process")]
pyper::process_test_support!();

// ---------------------------------------------------------------------------------------
// Work that is certainly CPU-bound or certainly waiting

/// Computes until the calling thread has used `ms` milliseconds of CPU time: CPU-bound
/// work whose amount does not depend on the build, the machine, or how many other
/// threads share the cores (it just takes longer, in wall time, when it gets less).
fn burn(ms: u64) -> u64 {
    let target = Duration::from_millis(ms);
    let started = thread_cpu_time();
    let wall = Instant::now();
    let mut h = ms;
    loop {
        for i in 0..20_000u64 {
            h = std::hint::black_box(h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        let used = match (started, thread_cpu_time()) {
            (Some(started), Some(now)) => now.saturating_sub(started),
            _ => wall.elapsed(),
        };
        if used >= target {
            return h;
        }
    }
}

#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// A wait that uses no CPU: a request, say.
fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Threads that spin on the cores while they live: a loaded machine. One more than the
/// cores, so that every pipeline thread competes for a core with at least one of them.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Hogs {
    fn start() -> Hogs {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cores() + 1)
            .map(|n| {
                let stop = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name(format!("hog {n}"))
                    .spawn(move || {
                        let mut h = n as u64;
                        while !stop.load(Ordering::Relaxed) {
                            for i in 0..10_000u64 {
                                h = std::hint::black_box(h.wrapping_mul(31).wrapping_add(i));
                            }
                        }
                    })
                    .expect("spawn a hog")
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Runs `output` to its end and returns its report.
fn finish<T>(mut output: pyper::Output<T>, expected: usize) -> Report {
    let mut count = 0;
    for item in output.by_ref() {
        item.expect("no case fails");
        count += 1;
    }
    assert_eq!(count, expected);
    let report = output.report();
    eprintln!("{report}"); // shown when a test fails
    report
}

fn bottleneck(report: &Report) -> &str {
    report
        .bottleneck()
        .map_or("(none)", |stage| stage.metrics.name.as_str())
}

/// The report's line of advice about the stage called `name`.
fn advice_for(report: &Report, name: &str) -> String {
    let needle = format!("`{name}` ");
    report
        .advice()
        .into_iter()
        .find(|line| line.starts_with(&needle))
        .unwrap_or_else(|| panic!("no advice for `{name}`:\n{report}"))
}

// ---------------------------------------------------------------------------------------
// The cases

/// Items of 2 ms of CPU time per core in a CPU-bound case: 40 ms of work per case on an
/// idle machine, enough to dwarf starting and stopping the workers.
const ITEMS_PER_CORE: u64 = 20;

/// Items in a case that waits (3 or 4 ms per item).
const WAITS: u64 = 30;

/// The guide's `long_computation` with as many workers as cores: CPU-bound and the
/// bottleneck, and more workers won't help. (The guide's pipeline ends in a consumer,
/// `> print_sum`: here, the test's loop.)
fn cpu_bound_with_workers_up_to_the_cores() {
    let cores = cores();
    let pipeline = task(|x: u64| burn(2) ^ x)
        .name("long_computation")
        .workers(cores);
    let report = finish(
        pipeline.feed(0..ITEMS_PER_CORE * cores as u64),
        ITEMS_PER_CORE as usize * cores,
    );
    let stage = report.stage("long_computation").unwrap();
    assert_eq!(stage.bound, Bound::Cpu, "{report}");
    assert_eq!(bottleneck(&report), "long_computation", "{report}");
    assert_eq!(stage.suggested_workers, None, "{report}");
    let advice = advice_for(&report, "long_computation");
    assert!(advice.contains("more workers won't help"), "{report}");

    // With one worker on more than one core: raise it to the cores.
    if cores > 1 {
        let pipeline = task(|x: u64| burn(2) ^ x).name("long_computation");
        let report = finish(pipeline.feed(0..ITEMS_PER_CORE), ITEMS_PER_CORE as usize);
        let stage = report.stage("long_computation").unwrap();
        assert_eq!(stage.bound, Bound::Cpu, "{report}");
        assert_eq!(stage.suggested_workers, Some(cores), "{report}");
        let advice = advice_for(&report, "long_computation");
        assert!(
            advice.contains(&format!("raise workers to {cores}")),
            "{report}"
        );
    }
}

/// The guide's "Bad" example: `long_computation` with `workers(10)` on threads. More
/// workers than cores only take turns on them: CPU-bound, use fewer (as many as the
/// cores, on an idle machine). The same verdict with a trace recorded, which times the
/// waits for input that are otherwise inferred: waiting for a core is not waiting for
/// input.
fn cpu_bound_with_more_workers_than_cores() {
    let cores = cores();
    let workers = 5 * cores;
    for traced in [false, true] {
        let pipeline = task(|x: u64| burn(2) ^ x)
            .name("long_computation")
            .workers(workers);
        let mut output = pipeline.feed(0..ITEMS_PER_CORE * cores as u64);
        if traced {
            output = output.record_trace();
        }
        let report = finish(output, ITEMS_PER_CORE as usize * cores);
        let stage = report.stage("long_computation").unwrap();
        assert_eq!(stage.bound, Bound::Cpu, "traced: {traced}\n{report}");
        assert_eq!(bottleneck(&report), "long_computation", "{report}");
        // As many as the cores, or a few more if its workers also wait (on each other,
        // when a crowded machine preempts one holding a queue's lock): fewer than now.
        let suggested = stage.suggested_workers.expect("a number of workers");
        assert!((cores..workers).contains(&suggested), "{report}");
        let advice = advice_for(&report, "long_computation");
        assert!(advice.contains("CPU-bound (on a core"), "{report}");
        assert!(
            advice.contains(&format!(
                "{workers} workers on {cores} cores: use {suggested}"
            )),
            "{report}"
        );
    }
}

/// Blocking IO (a request, as a sleep) with too few workers: IO-bound, the bottleneck,
/// and told to raise its workers to a number the run computes.
fn blocking_io_with_too_few_workers() {
    let pipeline = task(|x: u64| {
        nap(4);
        x
    })
    .name("fetch")
    .workers(2)
        | task(|x: u64| x * 2).name("parse");
    let report = finish(pipeline.feed(0..WAITS), WAITS as usize);
    let fetch = report.stage("fetch").unwrap();
    assert_eq!(fetch.bound, Bound::Waiting, "{report}");
    assert_eq!(bottleneck(&report), "fetch", "{report}");
    let suggested = fetch.suggested_workers.expect("a number of workers");
    assert!(suggested > 2, "{report}");
    let advice = advice_for(&report, "fetch");
    assert!(advice.contains("IO-bound"), "{report}");
    assert!(
        advice.contains(&format!("raise workers to {suggested}")),
        "{report}"
    );
}

/// The guide's async examples side by side: `async def slow_func(): time.sleep(...)`
/// (here `std::thread::sleep` in an `async_task`) blocks the executor, and the report
/// says to use an async wait or a sync task; `await asyncio.sleep(...)` (here
/// `tokio::time::sleep`) is fine, and gets no such advice.
#[cfg(feature = "async")]
fn an_async_task_that_blocks_its_executor_next_to_one_that_awaits() {
    use pyper::async_task;

    let awaits = async_task(|x: u64| async move {
        tokio::time::sleep(Duration::from_millis(4)).await;
        x
    })
    .name("awaits")
    .workers(8);
    let blocks = async_task(|x: u64| async move {
        nap(4); // the guide's "Bad" example
        x
    })
    .name("slow_func")
    .workers(8);
    let report = finish((awaits | blocks).feed(0..WAITS), WAITS as usize);
    let slow = report.stage("slow_func").unwrap();
    assert_eq!(slow.bound, Bound::BlocksExecutor, "{report}");
    assert_eq!(bottleneck(&report), "slow_func", "{report}");
    let advice = advice_for(&report, "slow_func");
    assert!(advice.contains("blocks its executor"), "{report}");
    assert!(
        advice.contains("async wait") && advice.contains("`task()`"),
        "{report}"
    );
    assert!(!advice.contains("raise workers"), "{report}");
    // The task that awaits is slowed down by the other one, and may wait on its
    // neighbours, but it is told neither that it blocks nor to raise its workers.
    let awaits = report.stage("awaits").unwrap();
    assert_ne!(awaits.bound, Bound::BlocksExecutor, "{report}");
    assert!(
        report
            .advice()
            .iter()
            .all(|line| !line.starts_with("`awaits`")
                || !(line.contains("blocks") || line.contains("raise"))),
        "{report}"
    );

    // On its own, the task that awaits waits, and may only be told to keep more futures
    // in flight. (Or, on a crowded machine, its runtime threads may be so slow to poll
    // it when input arrives that it waits for input most: starved, and told nothing.)
    let awaits = async_task(|x: u64| async move {
        tokio::time::sleep(Duration::from_millis(4)).await;
        x
    })
    .name("awaits")
    .workers(8);
    let report = finish(awaits.feed(0..2 * WAITS), 2 * WAITS as usize);
    let stage = report.stage("awaits").unwrap();
    match stage.bound {
        Bound::Waiting => {
            assert_eq!(bottleneck(&report), "awaits", "{report}");
            let advice = advice_for(&report, "awaits");
            assert!(advice.contains("raise workers to"), "{report}");
            assert!(!advice.contains("blocks"), "{report}");
        }
        Bound::Starved => assert!(report.bottleneck().is_none(), "{report}"),
        _ => panic!("a task that awaits is waiting:\n{report}"),
    }
}

/// A fast stage behind a slow one is starved, and told that more workers won't help;
/// the slow one is the bottleneck.
fn a_stage_starved_by_a_slow_upstream() {
    let pipeline = task(|x: u64| {
        nap(3);
        x
    })
    .name("slow_source")
        | task(|x: u64| x + 1).name("fast").workers(2);
    let report = finish(pipeline.feed(0..WAITS), WAITS as usize);
    let fast = report.stage("fast").unwrap();
    assert_eq!(fast.bound, Bound::Starved, "{report}");
    assert_eq!(bottleneck(&report), "slow_source", "{report}");
    let advice = advice_for(&report, "fast");
    assert!(
        advice.contains("starved") && advice.contains("more workers here won't help"),
        "{report}"
    );
}

/// A fast stage read by a slow consumer is blocked, and the report puts the blame on
/// the code that reads the output.
fn a_stage_blocked_by_a_slow_consumer() {
    let pipeline = task(|x: u64| x + 1).name("produce").throttle(4);
    let mut output = pipeline.feed(0..WAITS);
    for item in output.by_ref() {
        item.unwrap();
        nap(3); // the consumer's own slow work
    }
    let report = output.report();
    eprintln!("{report}");
    let produce = report.stage("produce").unwrap();
    assert_eq!(produce.bound, Bound::Blocked, "{report}");
    assert!(report.bottleneck().is_none(), "{report}");
    assert!(report.consumer_bound(), "{report}");
    assert!(
        report.advice()[0].contains("waits on its consumer"),
        "{report}"
    );
}

/// A process stage, for the isolation processes give (a crashing or leaking native
/// library, say), doing CPU-bound work with a worker process per core: CPU-bound and the
/// bottleneck, measured in its worker processes; more workers won't help.
#[cfg(feature = "process")]
fn a_process_stage_used_for_isolation() {
    fn decode(frame: u64) -> u64 {
        burn(2) ^ frame
    }
    let cores = cores();
    let pipeline =
        pyper::process_task!(decode).name("decode").workers(cores) | task(|x: u64| x).name("store");
    let report = finish(
        pipeline.feed(0..ITEMS_PER_CORE * cores as u64),
        ITEMS_PER_CORE as usize * cores,
    );
    let decode = report.stage("decode").unwrap();
    assert_eq!(decode.metrics.kind, pyper::StageKind::Process);
    assert_eq!(decode.bound, Bound::Cpu, "{report}");
    assert_eq!(bottleneck(&report), "decode", "{report}");
    let advice = advice_for(&report, "decode");
    assert!(advice.contains("more workers won't help"), "{report}");
}

/// The README's crawl (`examples/crawl_report.rs`) in small: `fetch` waits 2 to 8 ms per
/// page with 32 workers, `analyse` computes with a worker per core, `summarise` joins.
/// `analyse` is CPU-bound and the bottleneck; `fetch` is blocked by it, and `summarise`
/// starved.
fn the_readme_crawl() {
    let cores = cores();
    let fetch = task(|page: u64| {
        nap(2 + page % 7);
        page
    })
    .name("fetch")
    .workers(32)
    .throttle(32);
    let analyse = task(|page: u64| burn(2) ^ page)
        .name("analyse")
        .workers(cores);
    let summarise = task(|pages: Upstream<u64>| pages.fold(0u64, |a, b| a ^ b))
        .name("summarise")
        .join();
    let pages = 2 * ITEMS_PER_CORE as usize * cores;
    let report = finish((fetch | analyse | summarise).feed(0..pages as u64), 1);
    let bound = |name| report.stage(name).unwrap().bound;
    assert_eq!(bound("analyse"), Bound::Cpu, "{report}");
    assert_eq!(bound("fetch"), Bound::Blocked, "{report}");
    assert_eq!(bound("summarise"), Bound::Starved, "{report}");
    assert_eq!(bottleneck(&report), "analyse", "{report}");
    assert!(
        advice_for(&report, "analyse").contains("more workers won't help"),
        "{report}"
    );
}

/// Every case, in order.
fn matrix() -> Vec<(&'static str, fn())> {
    #[allow(unused_mut)] // the async and process features add cases
    let mut cases: Vec<(&'static str, fn())> = vec![
        (
            "cpu_bound_with_workers_up_to_the_cores",
            cpu_bound_with_workers_up_to_the_cores,
        ),
        (
            "cpu_bound_with_more_workers_than_cores",
            cpu_bound_with_more_workers_than_cores,
        ),
        (
            "blocking_io_with_too_few_workers",
            blocking_io_with_too_few_workers,
        ),
        (
            "a_stage_starved_by_a_slow_upstream",
            a_stage_starved_by_a_slow_upstream,
        ),
        (
            "a_stage_blocked_by_a_slow_consumer",
            a_stage_blocked_by_a_slow_consumer,
        ),
        ("the_readme_crawl", the_readme_crawl),
    ];
    #[cfg(feature = "async")]
    cases.push((
        "an_async_task_that_blocks_its_executor_next_to_one_that_awaits",
        an_async_task_that_blocks_its_executor_next_to_one_that_awaits,
    ));
    #[cfg(feature = "process")]
    cases.push((
        "a_process_stage_used_for_isolation",
        a_process_stage_used_for_isolation,
    ));
    cases
}

/// Runs `case` alone (serially), on an idle machine or with hogs.
fn run(case: fn(), loaded: bool) {
    let _serial = serial();
    with_timeout(120, move || {
        let _hogs = loaded.then(Hogs::start);
        case();
    });
}

// ---------------------------------------------------------------------------------------
// The tests: each case on its own, the matrix on a loaded machine, and (in the stress
// run) the matrix on a loaded machine 20 times.

#[test]
fn verdict_cpu_bound_with_workers_up_to_the_cores() {
    run(cpu_bound_with_workers_up_to_the_cores, false);
}

#[test]
fn verdict_cpu_bound_with_more_workers_than_cores() {
    run(cpu_bound_with_more_workers_than_cores, false);
}

#[test]
fn verdict_blocking_io_with_too_few_workers() {
    run(blocking_io_with_too_few_workers, false);
}

#[cfg(feature = "async")]
#[test]
fn verdict_an_async_task_that_blocks_its_executor_next_to_one_that_awaits() {
    run(
        an_async_task_that_blocks_its_executor_next_to_one_that_awaits,
        false,
    );
}

#[test]
fn verdict_a_stage_starved_by_a_slow_upstream() {
    run(a_stage_starved_by_a_slow_upstream, false);
}

#[test]
fn verdict_a_stage_blocked_by_a_slow_consumer() {
    run(a_stage_blocked_by_a_slow_consumer, false);
}

#[cfg(feature = "process")]
#[test]
fn verdict_a_process_stage_used_for_isolation() {
    run(a_process_stage_used_for_isolation, false);
}

#[test]
fn verdict_the_readme_crawl() {
    run(the_readme_crawl, false);
}

/// Every case once more, each while threads spin on every core.
#[test]
fn verdicts_hold_on_a_loaded_machine() {
    for (name, case) in matrix() {
        eprintln!("under load: {name}");
        run(case, true);
    }
}

/// The stress run's loop: the whole matrix on a loaded machine, 20 times. Ignored in
/// the normal runs (it takes most of a minute); `scripts/test.sh` runs it.
#[test]
#[ignore = "stress: run by scripts/test.sh"]
fn verdicts_under_load_20_runs() {
    let started = Instant::now();
    for round in 1..=20 {
        for (name, case) in matrix() {
            let case_started = Instant::now();
            run(case, true);
            eprintln!(
                "round {round}, under load: {name} ({:.0?})",
                case_started.elapsed()
            );
        }
    }
    eprintln!("20 rounds in {:.1?}", started.elapsed());
}
