//! Reliability regressions (issue 14): one test per repro of a hang, a crash, a leak or a
//! wrong error, each checking the behaviour the fix promises.
//!
//! * A blocking input iterator, or a blocking `branch` iterator, must not delay an error, a
//!   drop or a cancel: the blocked call is abandoned (it keeps running until its blocker
//!   lets go, as documented), and the run returns at once.
//! * Async retries that never yield end on a cancel, and do not starve other async runs
//!   (`async`).
//! * A panic in an item's `Drop` while a failed run closes its queues does not leave later
//!   queues or async tasks open (`async`).
//! * A worker count the system cannot give is an error, not an abort of the process.
//! * A worker process that dies is noticed even if it forked a grandchild that holds its
//!   connection (`process`).
//! * `Duration::MAX` is a valid timeout and backoff for every kind of stage.
//! * Retrying "forever" keeps a bounded number of causes.
//! * And smaller ones: input read-ahead bounded by the first stage's throttle, process
//!   timeouts below 1 ms, the user's message of a failed serialization, the name of a
//!   stage built from a tuple struct, no "Broken pipe" noise when a busy process stage is
//!   dropped, and a clear error for a blocking `next()` inside an async task.
//!
//! Every wait is bounded by a watchdog that runs the body on a thread of its own, so that
//! a hang fails the test (the hung thread is leaked) rather than stalling the suite. The
//! failures that take a whole process down (an abort) or eat memory without end run in a
//! child process: the test re-executes its own binary for just that test. Nothing asserts
//! on speed: each bound is far above what a correct run takes.

mod common;
mod reliability_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "process")]
use common::grandchild::{fork_then_abort_on_3, fork_then_abort_on_4, KillGrandchild};
use common::{with_timeout, Gate};
use pyper::{task, try_task, Backoff, RetriesExhausted};
use reliability_common::{child_memory_guard, child_watchdog, is_child, run_child, status_kb};

#[cfg(feature = "process")]
pyper::process_test_support!();

/// The watchdog of a run that must return promptly, in seconds: far above what a correct
/// run takes, even on a loaded machine.
const PROMPT: u64 = 20;

/// A bound for a child process as a whole.
const CHILD_BOUND: Duration = Duration::from_secs(90);

/// The error every failing stage of these tests returns.
fn fail_on_3(x: u64) -> Result<u64, &'static str> {
    if x == 3 {
        Err("boom")
    } else {
        Ok(x)
    }
}

// ---------------------------------------------------------------------------------------
// 1. A blocking input iterator, a blocking branch iterator

/// An input channel holding `0..5` whose sender is kept: reading past the fifth item
/// blocks until the sender is dropped, as in a feedback loop.
fn five_then_block() -> (mpsc::Sender<u64>, mpsc::Receiver<u64>) {
    let (sender, receiver) = mpsc::channel();
    for i in 0..5 {
        sender.send(i).unwrap();
    }
    (sender, receiver)
}

#[test]
fn an_error_is_not_delayed_by_a_blocking_input_iterator() {
    let (sender, inputs) = five_then_block();
    let result = with_timeout(PROMPT, move || {
        try_task(fail_on_3)
            .name("fails")
            .feed(inputs)
            .collect::<Result<Vec<u64>, _>>()
    });
    let err = result.expect_err("item 3 fails the run");
    assert_eq!(err.stage(), Some("fails"));
    assert_eq!(format!("{err:#}"), "stage `fails` failed on item 3: boom");
    // The input iterator's blocked call was abandoned: let it go now.
    drop(sender);
}

#[test]
fn a_drop_is_not_delayed_by_a_blocking_input_iterator() {
    let (sender, inputs) = five_then_block();
    let firsts = with_timeout(PROMPT, move || {
        let mut outputs = task(|x: u64| x).name("identity").feed(inputs);
        let firsts: Vec<u64> = outputs.by_ref().take(5).map(Result::unwrap).collect();
        // The input iterator is now blocked on the channel.
        drop(outputs);
        firsts
    });
    assert_eq!(firsts, [0, 1, 2, 3, 4]);
    drop(sender);
}

#[test]
fn a_cancel_is_not_delayed_by_a_blocking_input_iterator() {
    // A cancel from another thread while the consumer waits for the next output.
    let (sender, inputs) = five_then_block();
    let rest = with_timeout(PROMPT, move || {
        let mut outputs = task(|x: u64| x).name("identity").feed(inputs);
        let firsts: Vec<u64> = outputs.by_ref().take(5).map(Result::unwrap).collect();
        assert_eq!(firsts, [0, 1, 2, 3, 4]);
        let canceller = outputs.canceller();
        let cancel = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            canceller.cancel();
        });
        let rest = outputs.by_ref().count();
        cancel.join().unwrap();
        rest
    });
    assert_eq!(rest, 0, "nothing but the five inputs was ever sent");
    drop(sender);

    // `Output::cancel` itself, with the input iterator blocked.
    let (sender, inputs) = five_then_block();
    with_timeout(PROMPT, move || {
        let mut outputs = task(|x: u64| x).name("identity").feed(inputs);
        assert_eq!(outputs.by_ref().take(5).count(), 5);
        outputs.cancel();
        assert!(outputs.next().is_none(), "a cancelled run ends");
    });
    drop(sender);
}

/// A `branch` iterator that yields what its channel holds and then blocks until the
/// channel's sender is dropped.
struct Blocking(Arc<Mutex<mpsc::Receiver<u64>>>);

impl Iterator for Blocking {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.0.lock().unwrap().recv().ok()
    }
}

/// A first stage whose one call returns a [`Blocking`] iterator over `0..5` and then
/// blocks, and the sender that keeps it blocked.
fn blocking_branch() -> (mpsc::Sender<u64>, pyper::Task<u64, u64>) {
    let (sender, receiver) = five_then_block();
    let receiver = Arc::new(Mutex::new(receiver));
    let stage = task(move |_: u64| Blocking(Arc::clone(&receiver)))
        .branch()
        .name("blocking branch");
    (sender, stage)
}

#[test]
fn an_error_downstream_is_not_delayed_by_a_blocking_branch_iterator() {
    let (sender, branch) = blocking_branch();
    let result = with_timeout(PROMPT, move || {
        (branch | try_task(fail_on_3).name("fails"))
            .run(0)
            .collect::<Result<Vec<u64>, _>>()
    });
    let err = result.expect_err("element 3 fails the run");
    assert_eq!(err.stage(), Some("fails"));
    assert_eq!(format!("{err:#}"), "stage `fails` failed on item 3: boom");
    drop(sender);
}

#[test]
fn a_drop_is_not_delayed_by_a_blocking_branch_iterator() {
    let (sender, branch) = blocking_branch();
    let firsts = with_timeout(PROMPT, move || {
        let mut outputs = (branch | task(|x: u64| x).name("identity")).run(0);
        let firsts: Vec<u64> = outputs.by_ref().take(5).map(Result::unwrap).collect();
        drop(outputs);
        firsts
    });
    assert_eq!(firsts, [0, 1, 2, 3, 4]);
    drop(sender);
}

#[test]
fn a_cancel_is_not_delayed_by_a_blocking_branch_iterator() {
    let (sender, branch) = blocking_branch();
    let rest = with_timeout(PROMPT, move || {
        let mut outputs = (branch | task(|x: u64| x).name("identity")).run(0);
        assert_eq!(outputs.by_ref().take(5).count(), 5);
        let canceller = outputs.canceller();
        let cancel = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            canceller.cancel();
        });
        let rest = outputs.by_ref().count();
        cancel.join().unwrap();
        rest
    });
    assert_eq!(rest, 0);
    drop(sender);

    let (sender, branch) = blocking_branch();
    with_timeout(PROMPT, move || {
        let mut outputs = (branch | task(|x: u64| x).name("identity")).run(0);
        assert_eq!(outputs.by_ref().take(5).count(), 5);
        outputs.cancel();
        assert!(outputs.next().is_none(), "a cancelled run ends");
    });
    drop(sender);
}

// ---------------------------------------------------------------------------------------
// 2. Async retries that never yield (in a child process: today they eat memory without
// end, and a hung child is killed, which a hung thread cannot be)

#[cfg(feature = "async")]
#[test]
fn async_retries_that_never_yield_end_on_a_cancel() {
    const TEST: &str = "async_retries_that_never_yield_end_on_a_cancel";
    if is_child(TEST) {
        child_watchdog(Duration::from_secs(PROMPT));
        child_memory_guard(1024);
        let mut outputs =
            pyper::try_async_task(|x: u64| async move { Err::<u64, _>(format!("{x}")) })
                .retries(u32::MAX)
                .backoff(Backoff::none())
                .feed(0..1u64);
        let canceller = outputs.canceller();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            canceller.cancel();
        });
        let results = outputs.by_ref().count();
        println!("CHILD-DONE: the output ended after the cancel, with {results} results");
        return;
    }
    let child = run_child(TEST, &[], CHILD_BOUND);
    assert!(
        child.succeeded() && child.stdout.contains("CHILD-DONE"),
        "the output of a run that retries forever must end after a cancel\n{}",
        child.describe()
    );
}

#[cfg(feature = "async")]
#[test]
fn async_retries_that_never_yield_do_not_starve_another_async_run() {
    const TEST: &str = "async_retries_that_never_yield_do_not_starve_another_async_run";
    if is_child(TEST) {
        child_watchdog(Duration::from_secs(PROMPT));
        // Higher than elsewhere: today every failed attempt's cause is kept (see
        // `exhausted_retries_keep_a_bounded_number_of_causes`), and this test is about
        // starvation, not memory.
        child_memory_guard(2560);
        let attempts = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&attempts);
        // One failing item per thread of pyper's runtime (one per core), and slots enough
        // for one driver per runtime thread (a driver takes 4,096), so that every driver
        // of the stage retries without end.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let spinning = pyper::try_async_task(move |x: u64| {
            counted.fetch_add(1, SeqCst);
            async move { Err::<u64, _>(format!("{x}")) }
        })
        .workers(cores as usize * 4096)
        .retries(u32::MAX)
        .backoff(Backoff::none())
        .feed(0..cores);
        // Runs (and never ends) on a thread of its own; the process exits around it.
        std::thread::spawn(move || spinning.count());
        while attempts.load(SeqCst) < 1_000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        println!("CHILD-SPINNING: the other run retries");
        let other = pyper::async_task(|x: u64| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            x + 1
        })
        .workers(4)
        .name("other")
        .feed(0..100u64);
        let total: u64 = other.map(Result::unwrap).sum();
        assert_eq!(total, (1..=100).sum::<u64>());
        println!("CHILD-DONE: the other async run completed");
        return;
    }
    let child = run_child(TEST, &[], CHILD_BOUND);
    assert!(
        child.succeeded() && child.stdout.contains("CHILD-DONE"),
        "an async run must complete while another retries forever\n{}",
        child.describe()
    );
}

// ---------------------------------------------------------------------------------------
// 3. A panic in an item's `Drop` while a failed run closes its queues

/// The cancel of the run whose [`Bomb`]s are watched.
#[cfg(feature = "async")]
static BOMB_RUN: std::sync::OnceLock<pyper::Canceller> = std::sync::OnceLock::new();
/// Whether a [`Bomb`] went off.
#[cfg(feature = "async")]
static BOMB_FIRED: AtomicBool = AtomicBool::new(false);
/// How many [`Bomb`]s the first stage made.
#[cfg(feature = "async")]
static BOMBS_MADE: AtomicU64 = AtomicU64::new(0);

/// An item whose `Drop` panics once: the first time one is dropped, after the run was
/// stopped, on the thread of the stage `check` (which fails the run, and so is the one that
/// closes the queues).
#[cfg(feature = "async")]
struct Bomb(u64);

#[cfg(feature = "async")]
impl Drop for Bomb {
    fn drop(&mut self) {
        let stopped = BOMB_RUN.get().is_some_and(pyper::Canceller::is_cancelled);
        let on_check = std::thread::current().name() == Some("pyper:check");
        if stopped && on_check && !std::thread::panicking() && !BOMB_FIRED.swap(true, SeqCst) {
            panic!("bomb {} went off in its drop", self.0);
        }
    }
}

#[cfg(feature = "async")]
#[test]
fn a_panicking_drop_while_queues_close_does_not_stop_the_cancel_part_way() {
    let err = with_timeout(PROMPT, || {
        let make = task(|x: u64| {
            BOMBS_MADE.fetch_add(1, SeqCst);
            Bomb(x)
        })
        .throttle(64)
        .name("make");
        // Item 3 stays in flight for an hour; a small output queue makes `make`'s queue
        // fill up once `check` stops taking items.
        let forward = pyper::async_task(|b: Bomb| async move {
            let v = b.0;
            std::mem::forget(b);
            if v == 3 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            v
        })
        .workers(2)
        .throttle(1)
        .name("forward");
        let check = try_task(|x: u64| {
            if x == 20 {
                // Before failing, wait until `make` is blocked on its full queue (the
                // count of bombs made stops moving), so that the failure's cancel finds
                // bombs in it. This only sets the scene up: it asserts nothing.
                let mut last = BOMBS_MADE.load(SeqCst);
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(50));
                    let now = BOMBS_MADE.load(SeqCst);
                    if now == last && now > 64 {
                        break;
                    }
                    last = now;
                }
                Err("fail")
            } else {
                Ok(x)
            }
        })
        .name("check");
        let mut outputs = (make | forward | check).feed(0..);
        assert!(BOMB_RUN.set(outputs.canceller()).is_ok(), "one run only");
        outputs.find_map(Result::err)
    });
    let err = err.expect("the run fails");
    assert_eq!(err.stage(), Some("check"));
    assert!(format!("{err:#}").ends_with(": fail"), "{err:#}");
    assert!(
        BOMB_FIRED.load(SeqCst),
        "the scene was not set: no bomb was dropped on the `check` stage's thread after the \
         failure, so this test did not exercise a panic while the queues close"
    );
}

// ---------------------------------------------------------------------------------------
// 4. More workers than the system can start

/// Uses up this (child) process's memory mappings (`vm.max_map_count`, 65,530 by default)
/// but `headroom` of them, so that thread stacks run out after a few hundred threads: the
/// limit the repro hits at some 16,000 threads, without taking the process ids that a
/// shared machine's other programs need.
fn use_up_memory_mappings(headroom: usize) {
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|max| max.trim().parse().ok())
        .unwrap_or(65_530);
    let mapped =
        || std::fs::read_to_string("/proc/self/maps").map_or(0, |maps| maps.lines().count());
    let page = 4096;
    let pages = 2 * max;
    // SAFETY: a fresh private mapping that nothing else uses; it is never unmapped, and only
    // its protection changes.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * page,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(
        base,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // Every other page readable: each one splits the region, one mapping more.
    let target = max.saturating_sub(headroom);
    let mut next = 1;
    while next < pages {
        let missing = target.saturating_sub(mapped()) / 2;
        if missing == 0 {
            break;
        }
        for _ in 0..missing.max(1) {
            if next >= pages {
                break;
            }
            // SAFETY: a page inside the mapping made above.
            let result = unsafe {
                libc::mprotect(
                    base.cast::<u8>().add(next * page).cast(),
                    page,
                    libc::PROT_READ,
                )
            };
            if result != 0 {
                break;
            }
            next += 2;
        }
    }
    println!("CHILD-MAPPINGS: {} of {max}", mapped());
}

#[test]
fn more_workers_than_the_system_can_start_is_an_error_not_an_abort() {
    const TEST: &str = "more_workers_than_the_system_can_start_is_an_error_not_an_abort";
    if is_child(TEST) {
        child_watchdog(Duration::from_secs(60));
        use_up_memory_mappings(1_000);
        let result = task(|x: u64| x)
            .workers(100_000)
            .name("many")
            .feed(0..)
            .take(10)
            .collect::<Result<Vec<u64>, _>>();
        match result {
            Ok(outputs) => println!("CHILD-OK: {} outputs", outputs.len()),
            Err(err) => println!("CHILD-ERR: {err:#}"),
        }
        return;
    }
    let child = run_child(TEST, &[], CHILD_BOUND);
    assert!(
        child.succeeded(),
        "the run must end with an error, not take the process down\n{}",
        child.describe()
    );
    let line = child
        .stdout
        .lines()
        .find_map(|line| Some(line.split_once("CHILD-ERR: ")?.1))
        .unwrap_or_else(|| panic!("the run must yield an Err\n{}", child.describe()));
    assert!(line.contains("many"), "the error names the stage: {line}");
    let lower = line.to_lowercase();
    assert!(
        [
            "could not start",
            "cannot start",
            "100000",
            "100,000",
            "100_000"
        ]
        .iter()
        .any(|clue| lower.contains(clue)),
        "the error says what could not be started: {line}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. A worker process that dies after forking a grandchild

/// Checks that `err` reports item `item`'s worker as killed by SIGABRT.
#[cfg(feature = "process")]
fn assert_died_of_abort(err: &pyper::Error, item: u64) {
    assert_eq!(err.kind(), pyper::ErrorKind::Failed, "{err:#}");
    assert_eq!(err.stage(), Some("forks"), "{err:#}");
    assert_eq!(err.item(), Some(item), "{err:#}");
    assert!(
        err.downcast_ref::<pyper::TimedOut>().is_none(),
        "a death is not a timeout: {err:#}"
    );
    let died = err
        .downcast_ref::<pyper::WorkerDied>()
        .unwrap_or_else(|| panic!("a WorkerDied: {err:#}"));
    assert_eq!(died.signal(), Some(libc::SIGABRT), "{err:#}");
}

#[cfg(feature = "process")]
#[test]
fn a_dead_worker_is_noticed_even_if_its_grandchild_holds_the_connection() {
    let _kill = KillGrandchild(3);
    // The grandchild sleeps 60 s: an error that waits for it is a hang.
    let err = with_timeout(10, || {
        pyper::process_task!(fork_then_abort_on_3)
            .name("forks")
            .feed(0..10u64)
            .find_map(Result::err)
    });
    let err = err.expect("item 3's worker died");
    assert_died_of_abort(&err, 3);
}

#[cfg(feature = "process")]
#[test]
fn a_dead_worker_with_a_grandchild_is_a_death_not_a_timeout() {
    let _kill = KillGrandchild(4);
    // Longer than the timeout, so that a death mistaken for a timeout shows as one.
    let err = with_timeout(45, || {
        pyper::process_task!(fork_then_abort_on_4)
            .name("forks")
            .timeout(Duration::from_secs(30))
            .feed(0..10u64)
            .find_map(Result::err)
    });
    let err = err.expect("item 4's worker died");
    assert_died_of_abort(&err, 4);
}

// ---------------------------------------------------------------------------------------
// 6. `Duration::MAX` as a timeout and as a backoff

fn square(x: u64) -> u64 {
    x * x
}

/// Runs `stage` over `0..20`, which must complete with every square.
fn assert_squares(what: &str, stage: pyper::Task<u64, u64>) {
    let mut out = with_timeout(PROMPT, move || stage.feed(0..20).collect::<Vec<_>>())
        .into_iter()
        .map(|result| result.unwrap_or_else(|err| panic!("{what}: {err:#}")))
        .collect::<Vec<_>>();
    out.sort_unstable();
    assert_eq!(out, (0..20).map(square).collect::<Vec<_>>(), "{what}");
}

/// Runs `stage`, whose every attempt fails and whose backoff is endless, on one item;
/// cancels it once `attempts` shows the first attempt failed (or, without a count, after a
/// moment): the run must end promptly, with no result (it was cancelled, not failed).
fn assert_cancel_ends_the_backoff(
    what: &str,
    stage: pyper::Task<u64, u64>,
    attempts: Option<Arc<AtomicU64>>,
) {
    let what = what.to_owned();
    with_timeout(PROMPT, move || {
        let mut outputs = stage.run(7);
        let canceller = outputs.canceller();
        let cancel = std::thread::spawn(move || {
            match attempts {
                Some(attempts) => {
                    while attempts.load(SeqCst) == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                None => std::thread::sleep(Duration::from_millis(500)),
            }
            canceller.cancel();
        });
        let results: Vec<_> = outputs.by_ref().collect();
        cancel.join().unwrap();
        assert!(
            results.is_empty(),
            "{what}: a run cancelled during its backoff yields nothing: {results:?}"
        );
    });
}

#[test]
fn a_thread_stage_takes_duration_max_as_timeout_and_backoff() {
    assert_squares("thread, timeout(MAX)", task(square).timeout(Duration::MAX));
    assert_squares(
        "thread, backoff(fixed(MAX))",
        task(square)
            .retries(1)
            .backoff(Backoff::fixed(Duration::MAX)),
    );
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&attempts);
    let failing = try_task(move |_: u64| {
        counted.fetch_add(1, SeqCst);
        Err::<u64, _>("nope")
    })
    .retries(1)
    .backoff(Backoff::fixed(Duration::MAX));
    assert_cancel_ends_the_backoff("thread", failing, Some(attempts));
}

#[cfg(feature = "async")]
#[test]
fn an_async_stage_takes_duration_max_as_timeout_and_backoff() {
    let square_async = || pyper::async_task(|x: u64| async move { square(x) });
    assert_squares("async, timeout(MAX)", square_async().timeout(Duration::MAX));
    assert_squares(
        "async, backoff(fixed(MAX))",
        square_async()
            .retries(1)
            .backoff(Backoff::fixed(Duration::MAX)),
    );
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&attempts);
    let failing = pyper::try_async_task(move |_: u64| {
        counted.fetch_add(1, SeqCst);
        async move { Err::<u64, _>("nope") }
    })
    .retries(1)
    .backoff(Backoff::fixed(Duration::MAX));
    assert_cancel_ends_the_backoff("async", failing, Some(attempts));
}

#[cfg(feature = "process")]
fn always_fails(_: u64) -> Result<u64, String> {
    Err("nope".to_owned())
}

#[cfg(feature = "process")]
#[test]
fn a_process_stage_takes_duration_max_as_timeout_and_backoff() {
    assert_squares(
        "process, timeout(MAX)",
        pyper::process_task!(square).timeout(Duration::MAX),
    );
    assert_squares(
        "process, backoff(fixed(MAX))",
        pyper::process_task!(square)
            .retries(1)
            .backoff(Backoff::fixed(Duration::MAX)),
    );
    let failing = pyper::try_process_task!(always_fails)
        .retries(1)
        .backoff(Backoff::fixed(Duration::MAX));
    assert_cancel_ends_the_backoff("process", failing, None);
}

// ---------------------------------------------------------------------------------------
// 7. Retrying (nearly) forever keeps a bounded number of causes

#[test]
fn exhausted_retries_keep_a_bounded_number_of_causes() {
    const TEST: &str = "exhausted_retries_keep_a_bounded_number_of_causes";
    const RETRIES: u32 = 200_000;
    if is_child(TEST) {
        child_watchdog(Duration::from_secs(60));
        child_memory_guard(2048);
        let before = status_kb("VmRSS");
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        // About 1 kB per cause: 200,001 causes kept would be some 200 MB.
        let padding = "x".repeat(1_000);
        let stage = try_task(move |x: u64| {
            let attempt = counted.fetch_add(1, SeqCst) + 1;
            Err::<u64, _>(format!("attempt {attempt} of item {x} {padding}"))
        })
        .retries(RETRIES)
        .backoff(Backoff::none())
        .name("forever");
        let err = stage.run(7).next().unwrap().unwrap_err();
        let grown_mb = status_kb("VmHWM").saturating_sub(before) / 1024;
        let total = u64::from(RETRIES) + 1;
        assert_eq!(calls.load(SeqCst), total, "every attempt was made");
        assert_eq!(err.stage(), Some("forever"));
        let exhausted = err
            .downcast_ref::<RetriesExhausted>()
            .expect("a RetriesExhausted");
        // Every check, so that one run reports all that is wrong.
        let mut wrong = Vec::new();
        let kept = exhausted.attempts();
        if kept.len() > 16 {
            wrong.push(format!(
                "RetriesExhausted keeps {} causes; a bounded few (the first and the last) \
                 expected",
                kept.len()
            ));
        }
        let first = "attempt 1 of item 7 ";
        let last = format!("attempt {total} of item 7 ");
        if !kept.first().unwrap().to_string().starts_with(first) {
            wrong.push("attempts()[0] is not the first attempt's cause".to_owned());
        }
        if !kept.last().unwrap().to_string().starts_with(&last) {
            wrong.push("attempts().last() is not the last attempt's cause".to_owned());
        }
        let source = std::error::Error::source(exhausted).expect("a source");
        if !source.to_string().starts_with(&last) {
            wrong.push("source() is not the last attempt's cause".to_owned());
        }
        let display = exhausted.to_string();
        if !display.starts_with(&format!("all {total} attempts failed")) {
            wrong.push(format!(
                "the message does not report the total count of attempts: {}",
                &display[..display.len().min(100)]
            ));
        }
        if display.len() > 64 * 1024 {
            wrong.push(format!("the message takes {} bytes", display.len()));
        }
        if grown_mb > 100 {
            wrong.push(format!(
                "peak resident memory grew by {grown_mb} MB over {total} attempts"
            ));
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        println!("CHILD-DONE");
        return;
    }
    let child = run_child(TEST, &[], CHILD_BOUND);
    assert!(
        child.succeeded() && child.stdout.contains("CHILD-DONE"),
        "{}",
        child.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Smaller ones

#[test]
fn the_input_is_not_read_far_ahead_of_a_throttled_first_stage() {
    let pulled = Arc::new(AtomicU64::new(0));
    let entered = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Gate::new());
    let stage = {
        let (entered, gate) = (Arc::clone(&entered), Arc::clone(&gate));
        task(move |x: u64| {
            entered.store(true, SeqCst);
            gate.wait();
            x
        })
        .throttle(1)
        .name("gated")
    };
    let inputs = {
        let pulled = Arc::clone(&pulled);
        (0u64..).inspect(move |_| {
            pulled.fetch_add(1, SeqCst);
        })
    };
    let outputs = stage.feed(inputs);
    let consumer = std::thread::spawn(move || {
        let mut outputs = outputs;
        outputs.next().map(|first| first.unwrap())
    });
    let read_ahead = with_timeout(PROMPT, {
        let pulled = Arc::clone(&pulled);
        move || {
            while !entered.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Give the input every chance to run ahead: wait until the count stops moving.
            let mut last = pulled.load(SeqCst);
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(25));
                let now = pulled.load(SeqCst);
                if now == last {
                    break;
                }
                last = now;
            }
            pulled.load(SeqCst)
        }
    });
    gate.open();
    assert_eq!(
        with_timeout(PROMPT, move || consumer.join().unwrap()),
        Some(0)
    );
    assert!(
        read_ahead <= 8,
        "{read_ahead} inputs were pulled while the first stage (throttle 1) was blocked on \
         its first item"
    );
}

#[cfg(feature = "process")]
fn sleep_200us(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    x
}

/// A timeout below a millisecond is honoured (an item that sleeps 200 µs never finishes in
/// 100 µs, however often it is retried) or refused as a configuration error; it must not
/// silently become 1 ms (under which, retried 50 times, it finishes).
#[cfg(feature = "process")]
#[test]
fn a_process_timeout_below_a_millisecond_is_honoured_or_refused() {
    let limit = Duration::from_micros(100);
    let result = with_timeout(60, move || {
        pyper::process_task!(sleep_200us)
            .name("sub-ms")
            .timeout(limit)
            .retries(50)
            .backoff(Backoff::none())
            .run(1)
            .collect::<Result<Vec<u64>, _>>()
    });
    let err = match result {
        Ok(outputs) => panic!(
            "an item that sleeps 200 µs finished within a 100 µs limit ({outputs:?}): the \
             limit was not honoured"
        ),
        Err(err) => err,
    };
    match err.kind() {
        pyper::ErrorKind::Config => assert!(err.to_string().contains("sub-ms"), "{err:#}"),
        _ => {
            let exhausted = err
                .downcast_ref::<RetriesExhausted>()
                .unwrap_or_else(|| panic!("every attempt timed out: {err:#}"));
            for cause in exhausted.attempts() {
                let timed_out = cause
                    .downcast_ref::<pyper::TimedOut>()
                    .unwrap_or_else(|| panic!("a timeout: {cause}"));
                assert_eq!(timed_out.limit(), limit);
            }
        }
    }
}

/// An item (or output) whose serialization fails with the user's message.
#[cfg(feature = "process")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Unserializable(u64);

#[cfg(feature = "process")]
impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("my message"))
    }
}

#[cfg(feature = "process")]
fn take_unserializable(x: Unserializable) -> u64 {
    x.0
}

#[cfg(feature = "process")]
fn make_unserializable(x: u64) -> Unserializable {
    Unserializable(x)
}

#[cfg(feature = "process")]
#[test]
fn a_failed_serialization_reports_the_users_message() {
    let err = with_timeout(PROMPT, || {
        pyper::process_task!(take_unserializable)
            .name("encode")
            .run(Unserializable(1))
            .find_map(Result::err)
    })
    .expect("the item cannot be sent");
    assert_eq!(err.stage(), Some("encode"));
    assert!(
        format!("{err:#}").contains("my message"),
        "an item's serialization error: {err:#}"
    );
    let err = with_timeout(PROMPT, || {
        pyper::process_task!(make_unserializable)
            .name("decode")
            .run(1)
            .find_map(Result::err)
    })
    .expect("the output cannot be sent back");
    assert_eq!(err.stage(), Some("decode"));
    assert!(
        format!("{err:#}").contains("my message"),
        "an output's serialization error: {err:#}"
    );
}

/// A tuple struct, whose constructor is used as a task's function.
#[derive(Debug)]
struct Wrapped(#[allow(dead_code)] u64);

#[test]
fn a_stage_built_from_a_tuple_struct_is_named_after_it() {
    let names = with_timeout(PROMPT, || {
        let mut outputs = task(Wrapped).feed(0..3u64);
        assert_eq!(outputs.by_ref().count(), 3);
        outputs
            .metrics()
            .stages
            .iter()
            .map(|stage| stage.name.clone())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        names.last().map(String::as_str),
        Some("Wrapped"),
        "{names:?}"
    );
}

#[cfg(feature = "process")]
fn busy(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x
}

#[cfg(feature = "process")]
#[test]
fn dropping_a_busy_process_stage_prints_nothing() {
    const TEST: &str = "dropping_a_busy_process_stage_prints_nothing";
    if is_child(TEST) {
        child_watchdog(Duration::from_secs(60));
        // Each drop is one chance for a worker to finish its item after its connection
        // was shut down, and before it was killed.
        for _ in 0..20 {
            let mut outputs = pyper::process_task!(busy).workers(4).name("busy").feed(0..);
            assert_eq!(outputs.by_ref().take(50).filter(Result::is_ok).count(), 50);
            drop(outputs);
        }
        println!("CHILD-DONE");
        return;
    }
    let child = run_child(TEST, &[], CHILD_BOUND);
    assert!(
        child.succeeded() && child.stdout.contains("CHILD-DONE"),
        "{}",
        child.describe()
    );
    for noise in ["Broken pipe", "cannot write to the parent"] {
        assert!(
            !child.stderr.contains(noise),
            "a dropped run's workers printed {noise:?}\n{}",
            child.describe()
        );
    }
}

#[cfg(feature = "async")]
#[test]
fn blocking_on_an_inner_output_inside_an_async_task_is_a_clear_error() {
    let result = with_timeout(PROMPT, || {
        let outer = pyper::async_task(|x: u64| async move {
            let inner = pyper::async_task(|y: u64| async move { y + 1 }).name("inner");
            // Wrong: a blocking wait on the runtime the inner run needs.
            inner.run(x).next().map(|r| r.unwrap()).unwrap_or(0)
        })
        .workers(8)
        .name("outer");
        outer.feed(0..16u64).collect::<Result<Vec<u64>, _>>()
    });
    let err = result.expect_err("blocking inside an async task must be refused");
    let message = format!("{err:#}").to_lowercase();
    assert_eq!(err.stage(), Some("outer"), "{message}");
    assert!(
        message.contains("block") && message.contains("async"),
        "the error says why: {message}"
    );
}
