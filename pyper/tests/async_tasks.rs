//! Async tasks (cargo feature `async`): the async half of pyper, tested end to end.
//!
//! * Pyper's own async scenarios (`tests/test_async.py` of pyper-dev/pyper), ported: branch
//!   over a generator, a list and a stream; join over a stream; the async consumer; the
//!   first-stage rules, as our documented behaviour; errors from async, thread and mixed
//!   stages; the "unified" pipeline mixing every kind of stage.
//! * Regression tests for Pyper's weak points 6 (a blocking sync generator stalls the async
//!   stages) and 7 (a sync join inside an async pipeline crashes).
//! * Concurrency (10,000 futures in flight), ordering, throttling, runtimes of every
//!   flavour, cancellation by drop, panics, the first error in time, and a property test
//!   over random mixes of sync and async stages.
//!
//! Every wait is bounded only to turn a hang into a failure; nothing asserts on speed.
//! Constructions that need an order of events get it from channels, gates and counters,
//! never from sleeps. The tests count pyper's threads, so they run one at a time.

#[path = "async_common/mod.rs"]
mod common;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use pyper::{
    async_task, task, try_async_task, try_task, Canceller, Error, ErrorKind, OutputStream,
    Pipeline, Upstream, UpstreamStream,
};

/// The error the test tasks fail with.
#[derive(Debug, PartialEq, Eq)]
struct TestError(u64);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test error {}", self.0)
    }
}

impl std::error::Error for TestError {}

/// The values of a run that must succeed.
fn values<O>(output: impl Iterator<Item = Result<O, Error>>) -> Vec<O> {
    output
        .map(|item| item.unwrap_or_else(|error| panic!("unexpected error: {error}")))
        .collect()
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// The error that ended a run: exactly one, and nothing after it.
fn the_error<O: fmt::Debug>(results: Vec<Result<O, Error>>) -> Error {
    let errors = results.iter().filter(|item| item.is_err()).count();
    assert_eq!(errors, 1, "exactly one error expected: {results:?}");
    match results.into_iter().last() {
        Some(Err(error)) => error,
        other => panic!("the error must come last, got {other:?}"),
    }
}

/// Collects a stream of results, failing the test on a hang.
async fn all<O: Send + 'static>(outputs: OutputStream<O>) -> Vec<Result<O, Error>> {
    within_async("the output stream", outputs.collect::<Vec<_>>()).await
}

/// A pipeline of every kind of each-stage: sync, async, async `branch_stream`, sync again.
fn mixed() -> Pipeline<u64, u64> {
    task(|x: u64| x + 1).workers(2).name("inc")
        | async_task(|x: u64| async move {
            tokio::task::yield_now().await;
            x * 2
        })
        .workers(8)
        .name("double")
        | async_task(|x: u64| async move { stream::iter([x, x + 1]) })
            .branch_stream()
            .workers(2)
            .name("pair")
        | task(|x: u64| x * 10).name("tens")
}

/// What [`mixed`] makes of `inputs`, sorted.
/// Takes ten outputs of `mixed()` fed an endless input, then drops the stream: the run
/// must stop (the caller's serial lock and the suite's thread checks catch it if not).
async fn take_some_of_an_endless_run_then_drop_it() {
    let mut endless = mixed().feed(0..).into_stream();
    for _ in 0..10 {
        within_async("an output", endless.next())
            .await
            .unwrap()
            .unwrap();
    }
    drop(endless);
}

fn mixed_expected(inputs: std::ops::Range<u64>) -> Vec<u64> {
    sorted(
        inputs
            .flat_map(|x| {
                let y = (x + 1) * 2;
                [y * 10, (y + 1) * 10]
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// Pyper's tests/test_async.py, ported. Its functions, in Rust:
// ---------------------------------------------------------------------------------------

/// `def f1(data): return data`
fn f1(data: u64) -> u64 {
    data
}

/// `def f2(data): yield data` (a generator: a lazy iterator).
fn f2(data: u64) -> std::iter::Once<u64> {
    std::iter::once(data)
}

/// `def f3(data): raise TestError`
fn f3(data: u64) -> Result<u64, TestError> {
    Err(TestError(data))
}

/// `def f4(data): return [data]`
fn f4(data: u64) -> Vec<u64> {
    vec![data]
}

/// `async def af1(data): return data`
async fn af1(data: u64) -> u64 {
    data
}

/// `async def af2(data): yield data` (an async generator: a stream).
async fn af2(data: u64) -> stream::Iter<std::array::IntoIter<u64, 1>> {
    stream::iter([data])
}

/// `async def af3(data): raise TestError`
async fn af3(data: u64) -> Result<u64, TestError> {
    Err(TestError(data))
}

/// `async def af4(data): async for row in data: yield row` (a join that re-emits its input).
async fn af4(data: UpstreamStream<u64>) -> UpstreamStream<u64> {
    data
}

/// `async def consumer(data)`: sums the outputs.
async fn consumer(data: OutputStream<u64>) -> Result<u64, Error> {
    data.try_fold(0, |total, item| async move { Ok(total + item) })
        .await
}

/// `task(af1) | task(f2, branch=True)`: an async task, then a sync generator.
#[tokio::test]
async fn port_branch_over_a_generator_after_an_async_task() {
    let _serial = serial_async().await;
    let pipeline = async_task(af1) | task(f2).branch();
    let mut outputs = pipeline.run(1).into_stream();
    let first = within_async("the first output", outputs.next()).await;
    assert_eq!(first.unwrap().unwrap(), 1);
    drop(outputs);

    let results = all(pipeline.feed(0..100).into_stream()).await;
    assert_eq!(
        sorted(values(results.into_iter())),
        (0..100).collect::<Vec<_>>()
    );
}

/// `task(af1) | task(f4, branch=True)`: a sync task returning a list.
#[tokio::test]
async fn port_branch_over_a_list_after_an_async_task() {
    let _serial = serial_async().await;
    let pipeline = async_task(af1) | task(f4).branch();
    let mut outputs = pipeline.run(1).into_stream();
    let first = within_async("the first output", outputs.next()).await;
    assert_eq!(first.unwrap().unwrap(), 1);
    assert!(within_async("the end", outputs.next()).await.is_none());

    // An async task can branch over a list too, and over a stream (`branch_stream`).
    let lists = async_task(|x: u64| async move { vec![x; (x % 3) as usize] }).branch();
    let streams = async_task(af2).branch_stream().workers(4);
    let results = all((lists | streams).feed(0..60).into_stream()).await;
    let expected: Vec<u64> = (0..60).flat_map(|x| vec![x; (x % 3) as usize]).collect();
    assert_eq!(sorted(values(results.into_iter())), expected);
}

/// `task(af1) | task(af2, branch=True)`: an async generator, Python's async `branch`.
#[tokio::test]
async fn port_branch_over_a_stream() {
    let _serial = serial_async().await;
    let pipeline = async_task(af1) | async_task(af2).branch_stream();
    let results = all(pipeline.run(1).into_stream()).await;
    assert_eq!(values(results.into_iter()), [1]);

    // A longer generator whose elements each await, with several workers.
    let pages = async_task(|n: u64| async move {
        stream::iter(0..n).then(move |page| async move {
            tokio::task::yield_now().await;
            n * 100 + page
        })
    })
    .branch_stream()
    .workers(4);
    let results = all(pages.feed(0..20).into_stream()).await;
    let expected: Vec<u64> = (0..20)
        .flat_map(|n| (0..n).map(move |p| n * 100 + p))
        .collect();
    assert_eq!(sorted(values(results.into_iter())), expected);
}

/// `task(af1) | task(af2, branch=True) | task(af4, branch=True, join=True)`: an async join
/// over the stream, itself a generator. Both orders of `join` and `branch_stream` compose.
#[tokio::test]
async fn port_join_over_a_stream() {
    let _serial = serial_async().await;
    let join_then_branch = async_task(af4).join().branch_stream();
    let branch_then_join = async_task(af4).branch_stream().join();
    for (what, joined) in [
        ("join().branch_stream()", join_then_branch),
        ("branch_stream().join()", branch_then_join),
    ] {
        let pipeline = async_task(af1) | async_task(af2).branch_stream() | joined;
        let results = all(pipeline.run(1).into_stream()).await;
        assert_eq!(values(results.into_iter()), [1], "{what}");
        // One join worker sees the whole stream, in arrival order.
        let results = all(pipeline.feed(0..1000).into_stream()).await;
        assert_eq!(
            values(results.into_iter()),
            (0..1000).collect::<Vec<_>>(),
            "{what}"
        );
    }

    // A join that reduces, as the crate docs show it.
    let total =
        async_task(|xs: UpstreamStream<u64>| xs.fold(0, |sum, x| async move { sum + x })).join();
    let pipeline = async_task(af1).workers(8) | total;
    let results = all(pipeline.feed(1..=100).into_stream()).await;
    assert_eq!(values(results.into_iter()), [5050]);
}

/// `task(af1) | task(af2, branch=True) > consumer`: Pyper's `>` with an async consumer.
#[tokio::test]
async fn port_async_consumer() {
    let _serial = serial_async().await;
    let run = (async_task(af1) | async_task(af2).branch_stream()).consume_async(consumer);
    assert_eq!(within_async("run", run.run(1)).await.unwrap(), 1);
    // Reusable, and `feed` streams many inputs.
    assert_eq!(within_async("feed", run.feed(0..100)).await.unwrap(), 4950);
    assert_eq!(within_async("run again", run.run(7)).await.unwrap(), 7);

    // The consumer may stop early: dropping the stream ends the run.
    let first_two = mixed().consume_async(|outputs: OutputStream<u64>| async move {
        outputs.take(2).collect::<Vec<_>>().await
    });
    let taken = within_async("take 2", first_two.feed(0..)).await;
    assert_eq!(taken.len(), 2);
    assert!(taken.iter().all(Result::is_ok));
}

/// Pyper: `task(af1, workers=2)` as the first task is a RuntimeError. Here the input comes
/// from a queue like every other stage's, so `run(x)` calls the first stage exactly once
/// whatever its workers.
#[test]
fn port_first_stage_with_many_workers_is_called_once_by_run() {
    let _serial = serial();
    within("run", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let first = async_task(move |x: u64| {
            counted.fetch_add(1, SeqCst);
            async move { x }
        })
        .workers(4);
        let pipeline = first | async_task(af2).branch_stream();
        let run = pipeline.consume(values);
        assert_eq!(run.run(7), [7]);
        assert_eq!(calls.load(SeqCst), 1);
    });
}

/// ...and a fed first stage with many workers processes its inputs concurrently: four
/// futures wait on a barrier of four, which only opens if all four are in flight at once.
#[test]
fn port_fed_first_stage_runs_its_workers_concurrently() {
    let _serial = serial();
    within("a barrier of four", || {
        let barrier = Arc::new(tokio::sync::Barrier::new(4));
        let first = async_task(move |x: u64| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                x
            }
        })
        .workers(4);
        // Four rounds: each opens the barrier only with four futures in flight.
        let out = values((first | task(f1)).feed(0..16));
        assert_eq!(sorted(out), (0..16).collect::<Vec<_>>());
    });
}

/// Pyper: `task(af1, join=True)` as the first task is a RuntimeError. Here a first join
/// task receives the whole input of `feed`, or the one input of `run`.
#[tokio::test]
async fn port_first_stage_join_receives_the_whole_input() {
    let _serial = serial_async().await;
    let collect = || {
        async_task(|xs: UpstreamStream<u64>| xs.collect::<Vec<u64>>()).join()
            | async_task(|xs: Vec<u64>| async move { xs })
    };
    let results = all(collect().feed(0..500).into_stream()).await;
    assert_eq!(values(results.into_iter()), [(0..500).collect::<Vec<_>>()]);
    let results = all(collect().run(7).into_stream()).await;
    assert_eq!(values(results.into_iter()), [vec![7]]);

    // A sync join first, in a pipeline with async stages.
    let sum = task(|xs: Upstream<u64>| xs.sum::<u64>()).join() | async_task(af1);
    let results = all(sum.feed(1..=100).into_stream()).await;
    assert_eq!(values(results.into_iter()), [5050]);
}

/// Pyper's `_try_catch_error`: `task(af1) | pipeline > consumer` must raise the original
/// error. Ours is the first error, naming the stage, with the original downcastable.
async fn catches_the_original_error(pipeline: Pipeline<u64, u64>, stage: &str) {
    let run = (async_task(af1) | pipeline).consume_async(consumer);
    let error = within_async("run", run.run(1)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Failed, "{error}");
    assert_eq!(error.stage(), Some(stage), "{error}");
    assert_eq!(
        error.downcast_ref::<TestError>(),
        Some(&TestError(1)),
        "{error}"
    );
    assert_eq!(error.item(), Some(0), "{error}");
    // The same through `feed`, where other items keep going until the failure.
    let error = within_async("feed", run.feed(0..1000)).await.unwrap_err();
    assert_eq!(error.stage(), Some(stage), "{error}");
    assert!(error.downcast_ref::<TestError>().is_some(), "{error}");
}

/// `task(af3)`: an async task's error.
#[tokio::test]
async fn port_async_error_handling() {
    let _serial = serial_async().await;
    catches_the_original_error(try_async_task(af3).into(), "af3").await;
    let named = try_async_task(af3).workers(4).name("failing async");
    catches_the_original_error(named.into(), "failing async").await;
}

/// `task(f3, workers=2)`: a thread stage's error, in an async pipeline.
#[tokio::test]
async fn port_threaded_error_handling() {
    let _serial = serial_async().await;
    catches_the_original_error(try_task(f3).workers(2).into(), "f3").await;
}

/// `task(f3, workers=2, multiprocess=True)` has no process stages to port to; mixed sync
/// and async stages around the failing one stand in for it.
#[tokio::test]
async fn port_mixed_error_handling() {
    let _serial = serial_async().await;
    let around_sync = async_task(af1).workers(3)
        | try_task(f3).workers(2).name("sync f3")
        | async_task(af2).branch_stream();
    catches_the_original_error(around_sync, "sync f3").await;
    let around_async =
        task(f1).workers(2) | try_async_task(af3).workers(2).name("async af3") | task(f2).branch();
    catches_the_original_error(around_async, "async af3").await;
}

/// `task(af1) | task(f1) | task(f2, branch=True, multiprocess=True) > consumer`.
#[tokio::test]
async fn port_unified_pipeline() {
    let _serial = serial_async().await;
    let run = (async_task(af1) | task(f1) | task(f2).branch()).consume_async(consumer);
    assert_eq!(within_async("run", run.run(1)).await.unwrap(), 1);
}

/// The unified pipeline in full: sync, sync branch, async, async `branch_stream`, sync join
/// and async join, against the same computation done sequentially.
#[test]
fn unified_pipeline_of_every_kind_of_stage() {
    let _serial = serial();
    within("the unified pipeline", || {
        let pipeline = task(|x: u64| x + 1).workers(3).name("sync")
            | task(|x: u64| (0..x % 4).map(move |k| x * 10 + k))
                .branch()
                .workers(2)
                .name("sync branch")
            | async_task(|y: u64| async move {
                tokio::task::yield_now().await;
                y * 3
            })
            .workers(16)
            .name("async")
            | async_task(|y: u64| async move {
                stream::iter([y, y + 1]).then(|v| async move {
                    tokio::task::yield_now().await;
                    v
                })
            })
            .branch_stream()
            .workers(4)
            .name("async branch_stream")
            | task(|xs: Upstream<u64>| sorted(xs.collect::<Vec<u64>>()))
                .join()
                .branch()
                .name("sync join")
            | async_task(|xs: UpstreamStream<u64>| xs.collect::<Vec<u64>>())
                .join()
                .name("async join");

        let expected: Vec<u64> = sorted(
            (0..300u64)
                .map(|x| x + 1)
                .flat_map(|x| (0..x % 4).map(move |k| x * 10 + k))
                .map(|y| y * 3)
                .flat_map(|y| [y, y + 1])
                .collect(),
        );
        assert!(expected.len() > 500);
        // The sync join sorts; its one worker emits in order, so the async join sees order.
        assert_eq!(
            values(pipeline.feed(0..300)),
            std::slice::from_ref(&expected)
        );

        // Consumed as a stream and by an async consumer, from a runtime of the caller's.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let streamed = runtime.block_on(all(pipeline.feed(0..300).into_stream()));
        assert_eq!(
            values(streamed.into_iter()),
            std::slice::from_ref(&expected)
        );
        let consumed = runtime.block_on(
            pipeline
                .clone()
                .consume_async(|outputs: OutputStream<Vec<u64>>| async move {
                    outputs.try_collect::<Vec<_>>().await
                })
                .feed(0..300),
        );
        assert_eq!(consumed.unwrap(), [expected]);
    });
}

// ---------------------------------------------------------------------------------------
// Pyper's failures with sync stages in async pipelines (ANCHORS.md §1, 6 and 7).
// ---------------------------------------------------------------------------------------

/// In Pyper a sync generator inside an async pipeline runs on the event loop, so
/// while it blocks between elements no async stage runs. Here more generators block at
/// once than pyper's runtime has threads, and each element must come out through the
/// async stages while every generator is blocked: the test lets a generator go on only
/// after it has received the previous element, so a stall is a hang.
#[test]
fn blocking_sync_generators_do_not_stall_async_stages() {
    let _serial = serial();
    within("lock-step generators", || {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let generators = cores as u64 + 1;
        const ELEMENTS: u64 = 8;
        // One permit per element, handed out by the test.
        let (permits, permit) = mpsc::channel::<()>();
        let permit = Arc::new(Mutex::new(permit));
        let generator = task(move |g: u64| {
            let permit = Arc::clone(&permit);
            (0..ELEMENTS).map(move |i| {
                permit
                    .lock()
                    .unwrap()
                    .recv()
                    .expect("the test hands out permits");
                g * 100 + i
            })
        })
        .branch()
        .workers(generators as usize)
        .name("blocking generator");
        let pipeline = async_task(af1).name("async before")
            | generator
            | async_task(|x: u64| async move {
                tokio::task::yield_now().await;
                x + 1_000_000
            })
            .workers(4)
            .name("async after")
            | async_task(af2).branch_stream().name("async branch");

        let (received, results) = mpsc::channel();
        let mut outputs = pipeline.feed(0..generators);
        let consumer = std::thread::spawn(move || {
            for item in outputs.by_ref() {
                received.send(item.unwrap()).unwrap();
            }
        });
        let mut seen = Vec::new();
        // Lock-step also keeps the queue after the generators empty whenever one yields,
        // so each element is handed on at once (see
        // `elements_of_a_blocking_sync_generator_flow_on_as_produced` for when it is not).
        for _ in 0..generators * ELEMENTS {
            // Every generator is blocked on a permit now, or about to be.
            permits.send(()).unwrap();
            seen.push(
                results
                    .recv_timeout(HANG)
                    .expect("an element through the async stages"),
            );
        }
        drop(permits);
        consumer.join().unwrap();
        let expected: Vec<u64> = (0..generators)
            .flat_map(|g| (0..ELEMENTS).map(move |i| g * 100 + i + 1_000_000))
            .collect();
        assert_eq!(sorted(seen), expected);
    });
}

/// The async stage's side of the same failure: a sync stage blocked in a long blocking call does not
/// delay an async stage. The sync stage blocks on its first item until the async stage
/// upstream of it has processed every item; the async stage's outputs queue up behind it
/// (unbounded), and everything flows once the test lets the sync stage go.
#[test]
fn a_blocked_sync_stage_does_not_delay_an_async_stage() {
    let _serial = serial();
    within("the blocked sync stage", || {
        const N: u64 = 500;
        let (processed, processed_rx) = mpsc::channel::<u64>();
        let (blocked, blocked_rx) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let first = AtomicBool::new(true);
        let pipeline = async_task(move |x: u64| {
            let processed = processed.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                processed.send(x).unwrap();
                x
            }
        })
        .workers(16)
        .throttle(0)
        .name("async")
            | task(move |x: u64| {
                if first.swap(false, SeqCst) {
                    blocked.send(()).unwrap();
                    let _ = released.lock().unwrap().recv();
                }
                x
            })
            .name("blocked sync");
        let mut outputs = pipeline.feed(0..N);
        let consumer = std::thread::spawn(move || values(outputs.by_ref()));

        blocked_rx
            .recv_timeout(HANG)
            .expect("the sync stage blocks");
        let mut done: Vec<u64> = (0..N)
            .map(|_| {
                processed_rx
                    .recv_timeout(HANG)
                    .expect("the async stage goes on")
            })
            .collect();
        done.sort_unstable();
        assert_eq!(done, (0..N).collect::<Vec<_>>());
        drop(release);
        assert_eq!(sorted(consumer.join().unwrap()), (0..N).collect::<Vec<_>>());
    });
}

/// The same, downstream: one worker of a sync stage blocked in user code does not hold up
/// the async stage after it, which keeps delivering what the other worker hands on.
#[test]
fn an_async_stage_keeps_delivering_past_a_blocked_sync_worker() {
    let _serial = serial();
    within("the blocked sync worker", || {
        const N: u64 = 200;
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let blocked_item = Arc::new(OnceLock::new());
        let first = Arc::clone(&blocked_item);
        let pipeline = task(move |x: u64| {
            // The first item any worker sees: a worker's first batch is that one item.
            if first.set(x).is_ok() {
                let _ = released.lock().unwrap().recv();
            }
            x
        })
        .workers(2)
        .name("sync")
            | async_task(|x: u64| async move {
                tokio::task::yield_now().await;
                x * 2
            })
            .workers(4)
            .name("async");
        let (received, results) = mpsc::channel();
        let mut outputs = pipeline.feed(0..N);
        let consumer = std::thread::spawn(move || {
            for item in outputs.by_ref() {
                received.send(item.unwrap()).unwrap();
            }
        });
        let mut seen: Vec<u64> = (0..N - 1)
            .map(|_| {
                results
                    .recv_timeout(HANG)
                    .expect("outputs while a worker is blocked")
            })
            .collect();
        let blocked = *blocked_item.get().unwrap();
        assert!(!seen.contains(&(blocked * 2)));
        drop(release);
        seen.push(
            results
                .recv_timeout(HANG)
                .expect("the blocked item, once released"),
        );
        consumer.join().unwrap();
        assert_eq!(sorted(seen), (0..N).map(|x| x * 2).collect::<Vec<_>>());
    });
}

/// In Pyper a sync `join` inside an async pipeline receives an async generator and
/// crashes. Here it runs on a thread of its own and sees every item, with one worker or
/// several (which share the stream between them).
#[test]
fn a_sync_join_inside_an_async_pipeline_sees_every_item() {
    let _serial = serial();
    within("the sync join", || {
        const N: u64 = 10_000;
        let thread = Arc::new(Mutex::new(String::new()));
        let name = Arc::clone(&thread);
        let join = task(move |xs: Upstream<u64>| {
            *name.lock().unwrap() = std::thread::current().name().unwrap_or("").to_owned();
            sorted(xs.collect::<Vec<u64>>())
        })
        .join()
        .name("sync join");
        let pipeline = async_task(|x: u64| async move {
            tokio::task::yield_now().await;
            x
        })
        .workers(8)
            | join
            | async_task(|xs: Vec<u64>| async move { xs });
        assert_eq!(values(pipeline.feed(0..N)), [(0..N).collect::<Vec<_>>()]);
        assert_eq!(*thread.lock().unwrap(), "pyper:sync join");

        // Three join workers: three calls, which together see every item once.
        let shares = task(|xs: Upstream<u64>| xs.collect::<Vec<u64>>())
            .join()
            .workers(3);
        let pipeline = async_task(af1).workers(8) | shares | async_task(af1_vec);
        let calls = values(pipeline.feed(0..N));
        assert_eq!(calls.len(), 3);
        assert_eq!(sorted(calls.concat()), (0..N).collect::<Vec<_>>());
    });
}

async fn af1_vec(data: Vec<u64>) -> Vec<u64> {
    data
}

// ---------------------------------------------------------------------------------------
// Concurrency and placement.
// ---------------------------------------------------------------------------------------

/// 10,000 items, each awaiting a 50 ms timer, with `workers(10_000)`: thousands of futures
/// must be in flight at once. One at a time would take 500 s; the bound only catches that
/// pathology.
#[test]
fn ten_thousand_timers_in_flight_at_once() {
    let _serial = serial();
    within("10,000 timers", || {
        const N: u64 = 10_000;
        let in_flight = Gauge::new();
        let gauge = Arc::clone(&in_flight);
        let pipeline = async_task(move |x: u64| {
            let gauge = Arc::clone(&gauge);
            async move {
                let _in_flight = gauge.enter();
                tokio::time::sleep(Duration::from_millis(50)).await;
                x
            }
        })
        .workers(N as usize)
        .name("timers");
        let start = Instant::now();
        let out = values(pipeline.feed(0..N));
        let elapsed = start.elapsed();
        assert_eq!(sorted(out), (0..N).collect::<Vec<_>>());
        assert!(
            elapsed < Duration::from_secs(30),
            "10,000 timers took {elapsed:?}"
        );
        assert!(
            in_flight.max() >= 1_000,
            "at most {} in flight",
            in_flight.max()
        );
        assert_eq!(in_flight.now(), 0);
    });
}

/// An item's work begins as the item starts, not once the driver has handed on every
/// item that is ready: three items are released at once, and the item that replaces the
/// first to end must have begun before the last has ended. (A driver that left new items
/// behind the ready ones started a wave of timers late enough to miss their tick.)
#[test]
fn an_item_begins_its_work_as_it_starts_not_behind_the_ready_ones() {
    let _serial = serial();
    within("a released wave", || {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (open, opened) = tokio::sync::watch::channel(false);
        let logged = Arc::clone(&log);
        let stage = async_task(move |x: u64| {
            let (log, mut opened) = (Arc::clone(&logged), opened.clone());
            async move {
                log.lock().unwrap().push(format!("start {x}"));
                opened
                    .wait_for(|open| *open)
                    .await
                    .expect("the test holds the sender");
                log.lock().unwrap().push(format!("end {x}"));
                x
            }
        })
        .workers(3);
        // A run starts at its output's first read: read on a thread of its own.
        let output = stage.feed(0..6u64);
        let monitor = output.monitor();
        let reader = std::thread::spawn(move || values(output));
        wait_until("three items started", || log.lock().unwrap().len() >= 3);
        // The replacements must be queued before the three end.
        wait_until("the source queued every input", || {
            let metrics = monitor.metrics();
            let input = metrics.stages.iter().find(|stage| stage.name == "input");
            input.is_some_and(|input| input.items_out == 6)
        });
        open.send(true).expect("the stage holds receivers");
        let outputs = reader.join().expect("the reader does not panic");
        assert_eq!(sorted(outputs), (0..6).collect::<Vec<_>>());
        let log = log.lock().unwrap();
        let at = |entry: &str| log.iter().position(|logged| logged == entry).unwrap();
        let last_end = ["end 0", "end 1", "end 2"]
            .map(at)
            .into_iter()
            .max()
            .unwrap();
        assert!(at("start 3") < last_end, "{log:?}");
    });
}

/// `workers(n)` means n futures in flight, also once a stage has seen fast items: 64 items
/// each wait on a barrier of 64 after 20,000 instant ones, so the barrier opens only if all
/// 64 are in flight at once. (A worker that had grown its batches on the fast items and
/// then awaited a batch of slow ones one after another would hang here.)
#[test]
fn async_workers_stay_concurrent_after_a_fast_phase() {
    let _serial = serial();
    within("the barrier after a fast phase", || {
        const FAST: u64 = 20_000;
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let pipeline = async_task(move |x: u64| {
            let barrier = Arc::clone(&barrier);
            async move {
                if x >= FAST {
                    barrier.wait().await;
                }
                x
            }
        })
        .workers(64);
        assert_eq!(values(pipeline.feed(0..FAST + 64)).len() as u64, FAST + 64);
    });
}

/// Async stages run on pyper's runtime (`pyper-async` threads), never the caller's, and
/// sync stages on threads of their own named after the stage, even when the caller is a
/// current-thread runtime.
#[tokio::test(flavor = "current_thread")]
async fn stages_run_on_their_own_threads_never_the_callers() {
    let _serial = serial_async().await;
    let caller = std::thread::current().id();
    let names = Arc::new(Mutex::new(Vec::new()));
    let (in_async, in_sync, in_join) = (Arc::clone(&names), Arc::clone(&names), Arc::clone(&names));
    let record = move |names: &Mutex<Vec<(String, bool)>>, stage: &str| {
        let thread = std::thread::current();
        let name = format!("{stage} on {}", thread.name().unwrap_or("?"));
        names.lock().unwrap().push((name, thread.id() == caller));
    };
    let (r1, r2, r3) = (record, record, record);
    let pipeline = async_task(move |x: u64| {
        r1(&in_async, "async");
        async move { x }
    })
    .workers(4)
        | task(move |x: u64| {
            r2(&in_sync, "sync");
            x
        })
        .name("square")
        | async_task(move |xs: UpstreamStream<u64>| {
            r3(&in_join, "async join");
            xs.count()
        })
        .join();
    let results = all(pipeline.feed(0..100).into_stream()).await;
    assert_eq!(values(results.into_iter()), [100]);
    let names = names.lock().unwrap();
    assert_eq!(names.len(), 201);
    for (name, on_caller) in names.iter() {
        assert!(!on_caller, "{name}: ran on the caller's thread");
        assert!(
            name == "async on pyper-async"
                || name == "async join on pyper-async"
                || name == "sync on pyper:square",
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Elements flow on as they are produced.
// ---------------------------------------------------------------------------------------

/// `branch` says "elements flow on as they are produced". A sync generator yields three
/// elements and then blocks until the test has received all three: they must not wait in
/// the worker's hand-over buffer for the generator's next element. (The async stage after
/// it holds on to the first element until the test lets it go, so the third element, at
/// least, is emitted while the queue between them is not empty.)
fn elements_flow_while_the_generator_blocks<It>(
    generator: impl Fn(Box<dyn Fn(u64) + Send>) -> It + Send + Sync + 'static,
) where
    It: Iterator<Item = u64> + Send + 'static,
{
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let generator = task(move |_: ()| {
        let released = Arc::clone(&released);
        // Called before each element: blocks before the fourth.
        generator(Box::new(move |i| {
            if i == 4 {
                let _ = released.lock().unwrap().recv();
            }
        }))
    })
    .branch()
    .name("generator");
    let first_held = Arc::new(tokio::sync::Notify::new());
    let hold = Arc::clone(&first_held);
    let after = async_task(move |x: u64| {
        let hold = Arc::clone(&hold);
        async move {
            if x == 1 {
                hold.notified().await;
            }
            x
        }
    });
    let mut outputs = (generator | after).run(());
    let (received, results) = mpsc::channel();
    let consumer = std::thread::spawn(move || {
        for item in outputs.by_ref() {
            received.send(item.unwrap()).unwrap();
        }
    });
    first_held.notify_one();
    let seen: Vec<u64> = (0..3)
        .map(|_| {
            results
                .recv_timeout(HANG)
                .expect("an element the generator has yielded")
        })
        .collect();
    assert_eq!(seen, [1, 2, 3]);
    drop(release);
    assert_eq!(results.recv_timeout(HANG).unwrap(), 4);
    consumer.join().unwrap();
}

/// ...for a generator of unknown length, which may block before any element.
#[test]
fn elements_of_a_blocking_sync_generator_flow_on_as_produced() {
    let _serial = serial();
    within("elements of a blocked generator", || {
        elements_flow_while_the_generator_blocks(|before| {
            let mut i = 0;
            std::iter::from_fn(move || {
                i += 1;
                (i <= 4).then(|| {
                    before(i);
                    i
                })
            })
        });
    });
}

/// ...and for the commonest generator of all, a range mapped through a blocking call
/// (`(0..pages).map(fetch)`), whose exact `size_hint` says nothing about blocking.
#[test]
fn elements_of_a_blocking_mapped_range_flow_on_as_produced() {
    let _serial = serial();
    within("elements of a blocked mapped range", || {
        elements_flow_while_the_generator_blocks(|before| (1..=4u64).inspect(move |&i| before(i)));
    });
}

/// The same for an async generator (`branch_stream`) that awaits between elements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_of_a_waiting_async_generator_flow_on_as_produced() {
    let _serial = serial_async().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let generator = async_task(move |_: ()| {
        let gate = Arc::clone(&gate);
        async move {
            stream::iter(1..=4u64).then(move |i| {
                let gate = Arc::clone(&gate);
                async move {
                    if i == 4 {
                        gate.notified().await;
                    }
                    i
                }
            })
        }
    })
    .branch_stream()
    .name("async generator");
    let first_held = Arc::new(tokio::sync::Notify::new());
    let hold = Arc::clone(&first_held);
    let after = async_task(move |x: u64| {
        let hold = Arc::clone(&hold);
        async move {
            if x == 1 {
                hold.notified().await;
            }
            x
        }
    });
    let mut outputs = (generator | after).run(()).into_stream();
    let mut seen = Vec::new();
    first_held.notify_one();
    for _ in 0..3 {
        seen.push(within_async("an element the generator has yielded", outputs.next()).await);
    }
    assert_eq!(values(seen.into_iter().flatten()), [1, 2, 3]);
    release.notify_one();
    let rest = all(outputs).await;
    assert_eq!(values(rest.into_iter()), [4]);
}

// ---------------------------------------------------------------------------------------
// Running from inside a runtime of the caller's.
// ---------------------------------------------------------------------------------------

/// From a current-thread runtime: no "runtime within a runtime" panic, no deadlock, with
/// the stream, the async consumer, and a drop mid-run.
#[tokio::test(flavor = "current_thread")]
async fn runs_from_a_current_thread_runtime() {
    let _serial = serial_async().await;
    let results = all(mixed().feed(0..500).into_stream()).await;
    assert_eq!(sorted(values(results.into_iter())), mixed_expected(0..500));

    let total = mixed().consume_async(|outputs: OutputStream<u64>| async move {
        outputs
            .try_fold(0, |sum, x| async move { Ok(sum + x) })
            .await
    });
    let sum = within_async("the consumer", total.feed(0..500))
        .await
        .unwrap();
    assert_eq!(sum, mixed_expected(0..500).iter().sum::<u64>());

    take_some_of_an_endless_run_then_drop_it().await;
}

/// From a multi-thread runtime, with the stream moved into a task of the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_a_multi_thread_runtime() {
    let _serial = serial_async().await;
    let outputs = mixed().feed(0..500).into_stream();
    let collected = tokio::spawn(async move { outputs.collect::<Vec<_>>().await });
    let results = within_async("the spawned consumer", collected)
        .await
        .unwrap();
    assert_eq!(sorted(values(results.into_iter())), mixed_expected(0..500));

    take_some_of_an_endless_run_then_drop_it().await;
}

/// The blocking iterator of a sync + async pipeline, from `spawn_blocking` inside a
/// multi-thread runtime: consumed in full, and dropped half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_iterator_from_spawn_blocking() {
    let _serial = serial_async().await;
    let consumed = tokio::task::spawn_blocking(|| values(mixed().feed(0..500)));
    let out = within_async("spawn_blocking", consumed).await.unwrap();
    assert_eq!(sorted(out), mixed_expected(0..500));

    let dropped = tokio::task::spawn_blocking(|| {
        let mut outputs = mixed().feed(0..);
        let first: Vec<u64> = values(outputs.by_ref().take(10));
        drop(outputs);
        first.len()
    });
    assert_eq!(
        within_async("drop in spawn_blocking", dropped)
            .await
            .unwrap(),
        10
    );
}

/// `Output` works from anywhere, async code included (where it blocks the caller's
/// thread, which is why the stream is preferred): the pipeline does not need that thread.
#[tokio::test(flavor = "current_thread")]
async fn blocking_iterator_directly_in_async_code() {
    let _serial = serial_async().await;
    let out = values(mixed().feed(0..200));
    assert_eq!(sorted(out), mixed_expected(0..200));
    let mut endless = mixed().feed(0..);
    assert!(endless.next().unwrap().is_ok());
    drop(endless);
}

/// The stream never blocks the task that polls it, neither while it waits for items nor
/// while it waits for the run's threads at the end. On a current-thread runtime, the work
/// only finishes once another task of that runtime has ticked, so blocking is a hang.
#[test]
fn the_stream_never_blocks_its_poller() {
    let _serial = serial();
    within("the ticking runtime", || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            async fn tick(ticks: Arc<AtomicUsize>) {
                loop {
                    ticks.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }

            // Waiting for items: the async stage waits for the caller's ticker.
            let ticks = Arc::new(AtomicUsize::new(0));
            let seen = Arc::clone(&ticks);
            let waits = async_task(move |x: u64| {
                let seen = Arc::clone(&seen);
                async move {
                    while seen.load(SeqCst) < 5 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    x
                }
            });
            let ticker = tokio::spawn(tick(Arc::clone(&ticks)));
            let out: Vec<u64> = waits.feed(0..10).into_stream().try_collect().await.unwrap();
            assert_eq!(sorted(out), (0..10).collect::<Vec<_>>());
            ticker.abort();

            // Waiting for threads: the join ends the stream after two items, while the
            // generator's thread is still blocked until the ticker, started only then,
            // has ticked.
            let ticks = Arc::new(AtomicUsize::new(0));
            let seen = Arc::clone(&ticks);
            let generator = task(move |_: ()| {
                let seen = Arc::clone(&seen);
                (1..=3u64).inspect(move |&i| {
                    if i == 3 {
                        while seen.load(SeqCst) < 5 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .branch()
            .throttle(1)
            .name("generator");
            let first_two = task(|xs: Upstream<u64>| xs.take(2).collect::<Vec<u64>>()).join();
            let mut outputs = (generator | first_two).run(()).into_stream();
            assert_eq!(outputs.next().await.unwrap().unwrap(), [1, 2]);
            let ticker = tokio::spawn(tick(Arc::clone(&ticks)));
            assert!(outputs.next().await.is_none());
            ticker.abort();
        });
    });
}

/// A resource made on the caller's runtime (a TCP connection) keeps working inside async
/// tasks, which run on pyper's runtime, while the caller's runtime drives its IO; and an
/// async task can make connections of its own.
#[tokio::test(flavor = "current_thread")]
async fn resources_of_the_callers_runtime_work_inside_async_tasks() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    let _serial = serial_async().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // An echo server of lines, on the caller's runtime.
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });

    let connection = TcpStream::connect(address).await.unwrap();
    let shared = Arc::new(tokio::sync::Mutex::new(BufReader::new(connection)));
    let echo_shared = async_task(move |x: u64| {
        let shared = Arc::clone(&shared);
        async move {
            let mut connection = shared.lock().await;
            connection
                .get_mut()
                .write_all(format!("{x}\n").as_bytes())
                .await
                .unwrap();
            let mut line = String::new();
            connection.read_line(&mut line).await.unwrap();
            line.trim().parse::<u64>().unwrap() + 1000
        }
    })
    .workers(4)
    .name("shared connection");
    let echo_own = async_task(move |x: u64| async move {
        let mut connection = BufReader::new(TcpStream::connect(address).await.unwrap());
        connection
            .get_mut()
            .write_all(format!("{x}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        connection.read_line(&mut line).await.unwrap();
        line.trim().parse::<u64>().unwrap()
    })
    .workers(8)
    .name("own connection");
    let results = all((echo_shared | echo_own).feed(0..50).into_stream()).await;
    assert_eq!(
        sorted(values(results.into_iter())),
        (1000..1050).collect::<Vec<_>>()
    );
}

/// A nested pipeline consumed as a stream from inside an async task: pyper's runtime runs
/// both, and the inner runs end cleanly.
#[test]
fn a_nested_pipeline_inside_an_async_task() {
    let _serial = serial();
    within("nested pipelines", || {
        let inner = mixed();
        let outer = async_task(move |n: u64| {
            let inner = inner.clone();
            async move {
                let out: Vec<u64> = inner.feed(0..n).into_stream().try_collect().await.unwrap();
                out.len() as u64
            }
        })
        .workers(8);
        let out = values(outer.feed(0..20));
        assert_eq!(sorted(out), (0..20).map(|n| 2 * n).collect::<Vec<_>>());
    });
}

// ---------------------------------------------------------------------------------------
// Cancellation by drop.
// ---------------------------------------------------------------------------------------

/// Shared by the drop tests: an endless run whose async stages hold futures that never
/// finish (each holding a guard of `in_flight`), and whose sync stage, if the run is
/// gated, blocks on its tenth call until the test lets it go.
struct Endless {
    in_flight: Arc<Gauge>,
    sync_calls: Arc<AtomicUsize>,
    gated: bool,
    /// Dropping it lets the blocked sync call go (gated runs).
    release: Option<mpsc::Sender<()>>,
    /// Receives once the sync stage's tenth call blocks (gated runs).
    blocked: Option<mpsc::Receiver<()>>,
}

impl Endless {
    fn new(gated: bool) -> Self {
        Endless {
            in_flight: Gauge::new(),
            sync_calls: Arc::new(AtomicUsize::new(0)),
            gated,
            release: None,
            blocked: None,
        }
    }

    /// The stages after the input: parked async futures, a sync stage, an async generator.
    fn stages(&mut self) -> Pipeline<u64, u64> {
        let gauge = Arc::clone(&self.in_flight);
        let parked = async_task(move |x: u64| {
            let gauge = Arc::clone(&gauge);
            async move {
                let _in_flight = gauge.enter();
                if x % 3 == 0 {
                    std::future::pending::<()>().await;
                }
                tokio::task::yield_now().await;
                x
            }
        })
        .workers(64)
        .name("parked");
        let gate = self.gated.then(|| {
            let (release, released) = mpsc::channel::<()>();
            let (blocked, blocked_rx) = mpsc::channel::<()>();
            self.release = Some(release);
            self.blocked = Some(blocked_rx);
            (Mutex::new(released), blocked)
        });
        let calls = Arc::clone(&self.sync_calls);
        let sync = task(move |x: u64| {
            if calls.fetch_add(1, SeqCst) == 9 {
                if let Some((released, blocked)) = &gate {
                    blocked.send(()).unwrap();
                    let _ = released.lock().unwrap().recv();
                }
            }
            x
        })
        .workers(2)
        .name("sync");
        let gauge = Arc::clone(&self.in_flight);
        let pairs = async_task(move |x: u64| {
            let in_flight = gauge.enter();
            async move {
                stream::iter([x, x]).map(move |v| {
                    let _alive = &in_flight;
                    v
                })
            }
        })
        .branch_stream()
        .workers(4)
        .name("pairs");
        parked | sync | pairs
    }
}

/// Dropping the stream mid-run returns at once, even with a sync worker blocked in user
/// code; the async workers are aborted (every in-flight future is dropped) while that
/// worker is still blocked, and once it is let go every `pyper:` thread ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_mid_run_leaves_nothing_behind() {
    let _serial = serial_async().await;
    let baseline = thread_baseline_async().await;
    let mut endless = Endless::new(true);
    // An endless sync generator first: it must stop too.
    let pipeline = task(|start: u64| start..).branch().name("numbers") | endless.stages();
    let mut outputs = pipeline.run(0).into_stream();
    for _ in 0..30 {
        within_async("an output", outputs.next())
            .await
            .unwrap()
            .unwrap();
    }
    let blocked = endless.blocked.take().unwrap();
    blocked
        .recv_timeout(HANG)
        .expect("the sync stage's tenth call blocks");
    assert!(endless.in_flight.now() > 0, "futures are parked in flight");
    // A new thread names itself once it first runs, which may take a while under load.
    wait_until_async("the generator and two sync workers run", || {
        pyper_threads() >= baseline + 3
    })
    .await;

    drop(outputs); // Returns although a sync worker cannot stop yet: no hang here.
    let calls_at_drop = endless.sync_calls.load(SeqCst);
    let in_flight = Arc::clone(&endless.in_flight);
    wait_until_async("every in-flight future is dropped", || in_flight.now() == 0).await;

    drop(endless.release.take()); // Lets the blocked sync worker go.
    wait_until_async("the run's threads end", || pyper_threads() <= baseline).await;
    // Each sync worker stops after its current item: at most one more call began.
    assert!(endless.sync_calls.load(SeqCst) <= calls_at_drop + 1);
    assert_eq!(endless.in_flight.now(), 0);
}

/// Dropping the blocking iterator mid-run waits for the workers, then nothing is left: no
/// future in flight, no `pyper:` thread (the input iterator's included).
#[test]
fn dropping_the_iterator_mid_run_leaves_nothing_behind() {
    let _serial = serial();
    within("the dropped iterator", || {
        let baseline = thread_baseline();
        let mut endless = Endless::new(false);
        let pipeline = task(f1).name("first") | endless.stages();
        let mut outputs = pipeline.feed(0..);
        assert_eq!(values(outputs.by_ref().take(30)).len(), 30);
        assert!(endless.in_flight.now() > 0, "futures are parked in flight");
        // A new thread names itself once it first runs, which may take a while under load.
        wait_until("input, first and two sync workers run", || {
            pyper_threads() >= baseline + 4
        });
        drop(outputs);
        // The drop waited for the workers: their futures are gone already.
        assert_eq!(endless.in_flight.now(), 0);
        wait_until("the run's threads end", || pyper_threads() <= baseline);
    });
}

// ---------------------------------------------------------------------------------------
// Errors and panics.
// ---------------------------------------------------------------------------------------

/// An async task's panic surfaces as a sync one's does: `Panicked`, with its message, the
/// stage and the item; through the iterator and the stream alike. So do panics while an
/// async generator is polled and inside an async join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_panic_surfaces_with_its_message_and_stage() {
    let _serial = serial_async().await;
    let explode = || {
        async_task(|x: u64| async move {
            tokio::task::yield_now().await;
            if x == 5 {
                panic!("boom at {x}");
            }
            x
        })
        .name("explode")
    };
    let check = |error: Error| {
        assert_eq!(error.kind(), ErrorKind::Panicked, "{error}");
        assert_eq!(error.stage(), Some("explode"));
        assert_eq!(error.panic_message(), Some("boom at 5"));
        assert_eq!(error.item(), Some(5));
        assert_eq!(
            error.to_string(),
            "stage `explode` panicked on item 5: boom at 5"
        );
    };
    let pipeline = task(f1) | explode() | task(f1);
    check(the_error(all(pipeline.feed(0..100).into_stream()).await));
    let blocking = tokio::task::spawn_blocking(move || pipeline.feed(0..100).collect::<Vec<_>>());
    check(the_error(
        within_async("the iterator", blocking).await.unwrap(),
    ));

    let generator = async_task(|x: u64| async move {
        stream::iter(0..3u64).map(move |k| {
            if x == 2 && k == 1 {
                panic!("the stream broke");
            }
            x * 10 + k
        })
    })
    .branch_stream()
    .name("generator");
    let error = the_error(all(generator.feed(0..10).into_stream()).await);
    assert_eq!(error.kind(), ErrorKind::Panicked);
    assert_eq!((error.stage(), error.item()), (Some("generator"), Some(2)));
    assert_eq!(error.panic_message(), Some("the stream broke"));

    let join = async_task(|xs: UpstreamStream<u64>| async move {
        let items = xs.collect::<Vec<_>>().await;
        if items.len() > 10 {
            panic!("too many: {}", items.len());
        }
        items
    })
    .join()
    .name("join");
    let error = the_error(all((async_task(af1) | join).feed(0..50).into_stream()).await);
    assert_eq!(error.kind(), ErrorKind::Panicked);
    assert_eq!((error.stage(), error.item()), (Some("join"), None));
    assert_eq!(error.panic_message(), Some("too many: 50"));

    // A sync panic in the same pipeline shape reads the same.
    let sync = task(|x: u64| if x == 5 { panic!("boom at {x}") } else { x }).name("explode");
    check(the_error(
        all((async_task(af1) | sync).feed(0..100).into_stream()).await,
    ));
}

/// A panic in the synchronous part of an async task's function, before it returns its
/// future, is a panic of the task like any other: an error, never a silent end of stream
/// with items missing.
#[test]
fn a_panic_before_the_future_is_an_error_not_a_truncation() {
    let _serial = serial();
    within("the eager panic", || {
        for workers in [1, 4] {
            let eager = async_task(|x: u64| {
                if x == 5 {
                    panic!("eager {x}");
                }
                async move { x }
            })
            .workers(workers)
            .name("eager");
            let results: Vec<_> = (task(f1) | eager | task(f1)).feed(0..100).collect();
            let outputs = results.iter().filter(|item| item.is_ok()).count();
            let errors: Vec<String> = results
                .iter()
                .filter_map(|item| item.as_ref().err().map(ToString::to_string))
                .collect();
            assert_eq!(
                errors,
                ["stage `eager` panicked on item 5: eager 5"],
                "workers({workers}): {outputs} outputs"
            );
        }
    });
}

/// An async task's `Err`, from `try_async_task` and from `try_branch` over a list of
/// results: the original error, the stage and the item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_errors_keep_the_original_error_and_the_stage() {
    let _serial = serial_async().await;
    let check = try_async_task(|x: u64| async move {
        if x == 7 {
            Err(TestError(x))
        } else {
            Ok(x)
        }
    })
    .name("check");
    let error = the_error(all((task(f1) | check).feed(0..20).into_stream()).await);
    assert_eq!(error.kind(), ErrorKind::Failed);
    assert_eq!((error.stage(), error.item()), (Some("check"), Some(7)));
    assert_eq!(error.to_string(), "stage `check` failed on item 7");
    assert_eq!(
        std::error::Error::source(&error).unwrap().to_string(),
        "test error 7"
    );
    assert_eq!(
        *error
            .into_source()
            .unwrap()
            .downcast::<TestError>()
            .unwrap(),
        TestError(7)
    );

    let results = async_task(|x: u64| async move {
        vec![
            Ok(x),
            if x == 3 {
                Err(TestError(x))
            } else {
                Ok(x + 100)
            },
        ]
    })
    .try_branch()
    .name("results");
    let error = the_error(all((async_task(af1) | results).feed(0..10).into_stream()).await);
    assert_eq!((error.stage(), error.item()), (Some("results"), Some(3)));
    assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError(3)));
}

/// The first error in time wins, not the first stage's: the async stage (second) fails
/// first; the sync stage (first) fails afterwards, once the run has already stopped.
#[test]
fn first_error_in_time_wins_async_before_sync() {
    let _serial = serial();
    within("two failures", || {
        let canceller: Arc<OnceLock<Canceller>> = Arc::default();
        let entered = Arc::new(tokio::sync::Notify::new());
        let late_failed = Arc::new(AtomicBool::new(false));
        let (run, in_item_1, failed) = (
            Arc::clone(&canceller),
            Arc::clone(&entered),
            Arc::clone(&late_failed),
        );
        let late_sync = try_task(move |x: u64| {
            if x == 1 {
                in_item_1.notify_one();
                let run = run.get().expect("set before the run starts");
                wait_until("the run stops", || run.is_cancelled());
                failed.store(true, SeqCst);
                return Err(TestError(1));
            }
            Ok(x)
        })
        .name("late sync");
        let early_async = try_async_task(move |x: u64| {
            let entered = Arc::clone(&entered);
            async move {
                // Fails once the sync stage is inside its own failing call.
                entered.notified().await;
                Err::<u64, _>(TestError(100 + x))
            }
        })
        .name("early async");
        let mut outputs = (late_sync | early_async).feed(0..10);
        canceller.set(outputs.canceller()).unwrap();
        let error = the_error(outputs.by_ref().collect());
        assert_eq!(error.stage(), Some("early async"), "{error}");
        assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError(100)));
        assert!(late_failed.load(SeqCst), "the sync stage failed too, later");
    });
}

/// ...and the other way round: the sync stage (second) fails first, while the async
/// stage (first) waits to fail until the run has stopped.
#[test]
fn first_error_in_time_wins_sync_before_async() {
    let _serial = serial();
    within("two failures", || {
        let canceller: Arc<OnceLock<Canceller>> = Arc::default();
        let (entered, in_item_1) = mpsc::channel::<()>();
        let in_item_1 = Mutex::new(in_item_1);
        let run = Arc::clone(&canceller);
        let late_async = try_async_task(move |x: u64| {
            let (run, entered) = (Arc::clone(&run), entered.clone());
            async move {
                if x == 1 {
                    entered.send(()).unwrap();
                    let run = run.get().expect("set before the run starts");
                    wait_until_async("the run stops", || run.is_cancelled()).await;
                    return Err(TestError(1));
                }
                Ok(x)
            }
        })
        .name("late async");
        let early_sync = try_task(move |x: u64| {
            // Fails once the async stage is inside its own failing call.
            in_item_1.lock().unwrap().recv().unwrap();
            Err::<u64, _>(TestError(100 + x))
        })
        .name("early sync");
        let mut outputs = (late_async | early_sync).feed(0..10);
        canceller.set(outputs.canceller()).unwrap();
        let error = the_error(outputs.by_ref().collect());
        assert_eq!(error.stage(), Some("early sync"), "{error}");
        assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError(100)));
    });
}

/// Misuse is a configuration error at run start, naming the stage, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_is_a_config_error_at_run_start() {
    let _serial = serial_async().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let before = move || {
        let counted = Arc::clone(&counted);
        async_task(move |x: u64| {
            counted.fetch_add(1, SeqCst);
            async move { x }
        })
    };
    let cases: Vec<(Pipeline<u64, u64>, &str, &str)> = vec![
        (
            before()
                | async_task(|xs: Upstream<u64>| async move { xs.count() as u64 })
                    .join()
                    .name("async over Upstream"),
            "async over Upstream",
            "UpstreamStream",
        ),
        (
            before()
                | task(|_: UpstreamStream<u64>| 0u64)
                    .join()
                    .name("sync over UpstreamStream"),
            "sync over UpstreamStream",
            "sync join",
        ),
        (
            before()
                | task(|n: u64| stream::iter(0..n))
                    .branch_stream()
                    .name("sync branch_stream"),
            "sync branch_stream",
            "needs an async task",
        ),
        (
            before() | async_task(af1).workers(0).name("no workers"),
            "no workers",
            "workers",
        ),
    ];
    for (pipeline, stage, mentions) in cases {
        for results in [
            all(pipeline.feed(0..10).into_stream()).await,
            all(pipeline.run(1).into_stream()).await,
            tokio::task::spawn_blocking({
                let pipeline = pipeline.clone();
                move || pipeline.feed(0..10).collect::<Vec<_>>()
            })
            .await
            .unwrap(),
        ] {
            let error = the_error(results);
            assert_eq!(error.kind(), ErrorKind::Config, "{error}");
            assert_eq!(error.stage(), Some(stage), "{error}");
            assert!(error.to_string().contains(mentions), "{error}");
        }
    }
    assert_eq!(calls.load(SeqCst), 0, "nothing ran");
}

// ---------------------------------------------------------------------------------------
// Ordering and throttling.
// ---------------------------------------------------------------------------------------

/// An ordered async stage keeps the input order through random per-item delays, for plain
/// outputs and for generators (whose elements stay together, in order), and chained with
/// an ordered sync stage.
#[test]
fn ordered_async_stages_keep_order_with_random_delays() {
    let _serial = serial();
    within("ordered stages", || {
        let delay = |x: u64| Duration::from_micros(scramble(x, 3000));
        let shuffled = async_task(move |x: u64| async move {
            tokio::time::sleep(delay(x)).await;
            x
        })
        .workers(32)
        .ordered();
        assert_eq!(
            values(shuffled.feed(0..2000)),
            (0..2000).collect::<Vec<_>>()
        );

        let generator = async_task(move |x: u64| async move {
            tokio::time::sleep(delay(x + 7)).await;
            stream::iter(0..x % 4).then(move |k| async move {
                tokio::time::sleep(delay(x * 4 + k)).await;
                x * 10 + k
            })
        })
        .branch_stream()
        .workers(16)
        .ordered();
        let chain = task(move |x: u64| {
            std::thread::sleep(delay(x) / 10);
            x
        })
        .workers(4)
        .ordered()
            | generator
            | async_task(|x: u64| async move { x + 1 })
                .workers(8)
                .ordered();
        let expected: Vec<u64> = (0..1000)
            .flat_map(|x| (0..x % 4).map(move |k| x * 10 + k + 1))
            .collect();
        assert_eq!(values(chain.feed(0..1000)), expected);
    });
}

/// `throttle(1)` everywhere, on async stages of one and many workers, ordered or not, with
/// a generator and joins: no deadlock, nothing lost.
#[test]
fn throttle_1_on_async_stages_does_not_deadlock() {
    let _serial = serial();
    within("throttle(1)", || {
        let single = async_task(af1).throttle(1)
            | async_task(af1).throttle(1)
            | task(f1).throttle(1)
            | async_task(af1).throttle(1);
        assert_eq!(values(single.feed(0..2000)), (0..2000).collect::<Vec<_>>());

        let many = async_task(|x: u64| async move {
            tokio::task::yield_now().await;
            x
        })
        .workers(8)
        .throttle(1)
            | async_task(af1).workers(4).ordered().throttle(1)
            | async_task(|x: u64| async move { stream::iter([x, x]) })
                .branch_stream()
                .workers(3)
                .throttle(1)
            | task(f1).workers(3).throttle(1)
            | task(|xs: Upstream<u64>| xs.collect::<Vec<u64>>())
                .join()
                .branch()
                .throttle(1)
            | async_task(|xs: UpstreamStream<u64>| xs.collect::<Vec<u64>>())
                .join()
                .throttle(1);
        let out = values(many.feed(0..2000));
        assert_eq!(out.len(), 1);
        let expected: Vec<u64> = (0..2000).flat_map(|x| [x, x]).collect();
        assert_eq!(sorted(out[0].clone()), expected);
    });
}

// ---------------------------------------------------------------------------------------
// Random mixes of sync and async stages.
// ---------------------------------------------------------------------------------------

mod mixes {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        Sync,
        Async,
    }

    #[derive(Clone, Debug)]
    struct StageSpec {
        kind: Kind,
        workers: usize,
        throttle: usize,
        /// Each input becomes `(x + position) % (fan_out + 1)` outputs.
        branch: Option<u64>,
        /// An async generator branches with `branch_stream` rather than over a list.
        as_stream: bool,
        ordered: bool,
        /// Async functions yield to the runtime before they answer.
        yields: bool,
    }

    #[derive(Clone, Copy, Debug)]
    enum Failure {
        Err,
        Panic,
    }

    #[derive(Clone, Debug)]
    struct Mix {
        stages: Vec<StageSpec>,
        /// A final join of this kind, with this many workers.
        join: Option<(Kind, usize)>,
        inputs: u64,
        /// Stage, call number and kind of an injected failure.
        failure: Option<(usize, usize, Failure)>,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Sync), Just(Kind::Async)]
    }

    fn stage() -> impl Strategy<Value = StageSpec> {
        (
            kind(),
            1usize..=8,
            0usize..=4,
            proptest::option::of(0u64..=4),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(kind, workers, throttle, branch, as_stream, ordered, yields)| StageSpec {
                    kind,
                    workers,
                    throttle,
                    branch,
                    as_stream,
                    ordered,
                    yields,
                },
            )
    }

    fn mix(with_failures: bool) -> impl Strategy<Value = Mix> {
        let failure = (
            0usize..5,
            0usize..40,
            prop_oneof![Just(Failure::Err), Just(Failure::Panic)],
        );
        (
            proptest::collection::vec(stage(), 1..=5),
            proptest::option::of((kind(), 1usize..=3)),
            0u64..120,
            proptest::option::weighted(0.9, failure),
        )
            .prop_map(move |(stages, join, inputs, failure)| {
                let failure = failure
                    .filter(|_| with_failures)
                    .map(|(stage, call, how)| (stage % stages.len(), call, how));
                Mix {
                    stages,
                    join,
                    inputs,
                    failure,
                }
            })
    }

    fn step(position: usize, x: u64) -> u64 {
        (x * 7 + position as u64 * 13 + 1) % 1009
    }

    fn outputs_of(position: usize, spec: &StageSpec, x: u64) -> Vec<u64> {
        match spec.branch {
            None => vec![step(position, x)],
            Some(fan_out) => {
                let count = (x + position as u64) % (fan_out + 1);
                (0..count).map(|k| step(position, x) + k).collect()
            }
        }
    }

    /// Counts the calls of a stage and fails the one the mix says.
    #[derive(Clone)]
    struct Injector {
        position: usize,
        calls: Arc<AtomicUsize>,
        failure: Option<(usize, Failure)>,
    }

    impl Injector {
        fn call(&self) -> Result<(), TestError> {
            let call = self.calls.fetch_add(1, SeqCst);
            match self.failure {
                Some((at, Failure::Err)) if at == call => Err(TestError(self.position as u64)),
                Some((at, Failure::Panic)) if at == call => {
                    panic!("injected panic in s{}", self.position)
                }
                _ => Ok(()),
            }
        }
    }

    fn build_stage(position: usize, spec: &StageSpec, injector: Injector) -> Pipeline<u64, u64> {
        let spec_ = spec.clone();
        let mut task = match (spec.kind, spec.branch) {
            (Kind::Sync, None) => try_task(move |x: u64| {
                injector.call()?;
                Ok::<_, TestError>(step(position, x))
            }),
            (Kind::Sync, Some(_)) => try_task(move |x: u64| {
                injector.call()?;
                Ok::<_, TestError>(outputs_of(position, &spec_, x).into_iter())
            })
            .branch(),
            (Kind::Async, None) => try_async_task(move |x: u64| {
                let injector = injector.clone();
                let yields = spec_.yields;
                async move {
                    if yields {
                        tokio::task::yield_now().await;
                    }
                    injector.call()?;
                    Ok::<_, TestError>(step(position, x))
                }
            }),
            (Kind::Async, Some(_)) if spec.as_stream => try_async_task(move |x: u64| {
                let injector = injector.clone();
                let outputs = outputs_of(position, &spec_, x);
                let yields = spec_.yields;
                async move {
                    injector.call()?;
                    Ok::<_, TestError>(stream::iter(outputs).then(move |v| async move {
                        if yields {
                            tokio::task::yield_now().await;
                        }
                        v
                    }))
                }
            })
            .branch_stream(),
            (Kind::Async, Some(_)) => try_async_task(move |x: u64| {
                let injector = injector.clone();
                let outputs = outputs_of(position, &spec_, x);
                let yields = spec_.yields;
                async move {
                    if yields {
                        tokio::task::yield_now().await;
                    }
                    injector.call()?;
                    Ok::<_, TestError>(outputs)
                }
            })
            .branch(),
        }
        .workers(spec.workers)
        .throttle(spec.throttle)
        .name(format!("s{position}"));
        if spec.ordered {
            task = task.ordered();
        }
        task.into()
    }

    /// Runs one mix and checks it against the sequential reference.
    fn check(mix: &Mix) {
        // The reference, stage by stage, and how many calls each stage gets.
        let mut items: Vec<u64> = (0..mix.inputs).collect();
        let mut calls = Vec::new();
        for (position, spec) in mix.stages.iter().enumerate() {
            calls.push(items.len());
            items = items
                .iter()
                .flat_map(|&x| outputs_of(position, spec, x))
                .collect();
        }
        let expected_failure = mix.failure.filter(|&(stage, call, _)| call < calls[stage]);

        let mut pipeline: Option<Pipeline<u64, u64>> = None;
        for (position, spec) in mix.stages.iter().enumerate() {
            let injector = Injector {
                position,
                calls: Arc::default(),
                failure: mix
                    .failure
                    .filter(|&(stage, _, _)| stage == position)
                    .map(|(_, call, how)| (call, how)),
            };
            let stage = build_stage(position, spec, injector);
            pipeline = Some(match pipeline {
                None => stage,
                Some(before) => before | stage,
            });
        }
        let pipeline = pipeline.expect("at least one stage");
        let inputs = 0..mix.inputs;
        let (results, shares): (Vec<Result<u64, Error>>, Option<usize>) = match mix.join {
            None => (pipeline.feed(inputs).collect(), None),
            Some((kind, workers)) => {
                let joined = match kind {
                    Kind::Sync => {
                        pipeline
                            | task(|xs: Upstream<u64>| xs.collect::<Vec<u64>>())
                                .join()
                                .workers(workers)
                                .name("join")
                    }
                    Kind::Async => {
                        pipeline
                            | async_task(|xs: UpstreamStream<u64>| xs.collect::<Vec<u64>>())
                                .join()
                                .workers(workers)
                                .name("join")
                    }
                };
                let results: Vec<Result<Vec<u64>, Error>> = joined.feed(inputs).collect();
                let shares = results.iter().filter(|item| item.is_ok()).count();
                let flat = results
                    .into_iter()
                    .flat_map(|item| match item {
                        Ok(share) => share.into_iter().map(Ok).collect::<Vec<_>>(),
                        Err(error) => vec![Err(error)],
                    })
                    .collect();
                (flat, Some(shares))
            }
        };

        match expected_failure {
            None => {
                let out = values(results.into_iter());
                let every_multi_worker_stage_ordered = mix
                    .stages
                    .iter()
                    .all(|spec| spec.workers == 1 || spec.ordered);
                if mix.join.is_none() && every_multi_worker_stage_ordered {
                    assert_eq!(out, items, "{mix:?}: the order is kept");
                } else {
                    assert_eq!(sorted(out), sorted(items), "{mix:?}");
                }
                if let (Some((_, workers)), Some(shares)) = (mix.join, shares) {
                    assert_eq!(shares, workers, "{mix:?}: one output per join worker");
                }
            }
            Some((stage, _, how)) => {
                let errors = results.iter().filter(|item| item.is_err()).count();
                assert_eq!(errors, 1, "{mix:?}: exactly one error");
                assert!(
                    matches!(results.last(), Some(Err(_))),
                    "{mix:?}: the error comes last"
                );
                // What came out before the error is part of the full result.
                let mut rest = sorted(items);
                let mut error = None;
                for item in results {
                    match item {
                        Ok(value) => match rest.binary_search(&value) {
                            Ok(at) => {
                                rest.remove(at);
                            }
                            Err(_) => panic!("{mix:?}: {value} is not a result"),
                        },
                        Err(e) => error = Some(e),
                    }
                }
                let error = error.expect("counted above");
                let name = format!("s{stage}");
                assert_eq!(error.stage(), Some(name.as_str()), "{mix:?}: {error}");
                match how {
                    Failure::Err => {
                        assert_eq!(error.kind(), ErrorKind::Failed, "{mix:?}: {error}");
                        let original = error.downcast_ref::<TestError>();
                        assert_eq!(original, Some(&TestError(stage as u64)), "{mix:?}");
                    }
                    Failure::Panic => {
                        assert_eq!(error.kind(), ErrorKind::Panicked, "{mix:?}: {error}");
                        let message = format!("injected panic in s{stage}");
                        assert_eq!(error.panic_message(), Some(message.as_str()), "{mix:?}");
                    }
                }
            }
        }
    }

    fn run_mixes(cases: u32, with_failures: bool) {
        let config = Config {
            cases,
            max_shrink_iters: 64,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        runner
            .run(&mix(with_failures), |mix| {
                let case = mix.clone();
                within_for(Duration::from_secs(20), "a random mix", move || {
                    check(&case)
                });
                Ok(())
            })
            .unwrap();
    }

    /// Random mixes of 1 to 5 sync and async stages (1 to 8 workers, throttle 0 to 4,
    /// branches of fan-out 0 to 4, ordered or not) and an optional final sync or async join:
    /// the outputs are those of the sequential reference.
    #[test]
    fn random_mixes_match_the_sequential_reference() {
        let _serial = serial();
        run_mixes(128, false);
    }

    /// The same mixes, with a failure (an `Err` or a panic) injected in one stage's n-th
    /// call: if that call happens, the run reports exactly that stage's failure, and
    /// nothing hangs.
    #[test]
    fn random_failures_name_the_failing_stage() {
        let _serial = serial();
        run_mixes(128, true);
    }
}

/// A driver polls each item's stream right after an output, to hand on a one-output item's
/// output and its end as one event. Whatever that second poll finds must be handed on in
/// order: the next output, or a panic. (A failure after an output comes from the retry
/// guard's stream: `async_faults.rs`.)
mod an_items_stream {
    use super::*;

    #[test]
    fn outputs_that_come_together_all_arrive_in_order() {
        let three =
            async_task(|x: u64| async move { stream::iter([x, x + 1, x + 2]) }).branch_stream();
        let out: Vec<u64> = three.run(10).map(Result::unwrap).collect();
        assert_eq!(out, [10, 11, 12]);
    }

    #[test]
    fn an_output_then_a_panic_names_the_panic_after_any_output() {
        let panicking = async_task(|x: u64| async move {
            stream::iter([x, x + 1]).map(|y| {
                assert!(y == 0, "{y} panics after the first output");
                y
            })
        })
        .branch_stream();
        let out: Vec<Result<u64, Error>> = panicking.run(0).collect();
        // The output may reach the caller before the run's error or not (the error stops
        // the run at once), but never after it, nor in its place.
        let (error, before) = out.split_last().unwrap();
        let before: Vec<u64> = before.iter().map(|x| *x.as_ref().unwrap()).collect();
        assert!(before.is_empty() || before == [0], "{before:?}");
        let error = error.as_ref().unwrap_err();
        assert_eq!(error.item(), Some(0));
        let message = error.panic_message().unwrap_or_default();
        assert!(
            message.contains("1 panics after the first output"),
            "{error}"
        );
    }

    #[test]
    fn a_hundred_thousand_items_in_flight_all_complete() {
        // Far past tokio's budget of 128 operations per poll (see the driver).
        let total = within("100,000 timers in flight", || {
            let wait = async_task(|x: u64| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                x
            })
            .workers(100_000);
            wait.feed(0..100_000).map(Result::unwrap).sum::<u64>()
        });
        assert_eq!(total, (0..100_000).sum::<u64>());
    }
}
