//! Tasks with per-worker state: `task_per_worker` and `try_task_per_worker`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyper::{task, task_per_worker, try_task, try_task_per_worker, Backoff, ErrorKind};

/// Counts the setups and the drops of the state they build, and the threads they ran on.
#[derive(Default)]
struct Census {
    setups: AtomicUsize,
    drops: AtomicUsize,
    /// Calls made, counted by each state as it is dropped.
    calls: AtomicUsize,
    setup_threads: Mutex<Vec<(std::thread::ThreadId, Option<String>)>>,
    drop_threads: Mutex<Vec<std::thread::ThreadId>>,
}

struct State {
    census: Arc<Census>,
    calls: usize,
}

impl State {
    fn record_call(&mut self) {
        self.calls += 1;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.census.drops.fetch_add(1, SeqCst);
        self.census.calls.fetch_add(self.calls, SeqCst);
        self.census
            .drop_threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
    }
}

fn counting(census: &Arc<Census>) -> impl Fn() -> Box<dyn FnMut(u64) -> u64 + Send> {
    let census = Arc::clone(census);
    move || {
        census.setups.fetch_add(1, SeqCst);
        let current = std::thread::current();
        let seen = (current.id(), current.name().map(str::to_owned));
        census.setup_threads.lock().unwrap().push(seen);
        let mut state = State {
            census: Arc::clone(&census),
            calls: 0,
        };
        Box::new(move |x| {
            state.record_call();
            x * 2
        })
    }
}

#[test]
fn setup_runs_once_in_each_worker_on_its_own_thread_and_state_drops_there() {
    let census = Arc::new(Census::default());
    let double = task_per_worker(counting(&census)).workers(4).name("double");
    let mut out: Vec<u64> = double.feed(0..1000).map(Result::unwrap).collect();
    out.sort();
    assert_eq!(out, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(census.setups.load(SeqCst), 4);
    assert_eq!(
        census.drops.load(SeqCst),
        4,
        "every worker's state is dropped by the end"
    );
    assert_eq!(
        census.calls.load(SeqCst),
        1000,
        "the states saw every item between them"
    );
    let setups = census.setup_threads.lock().unwrap().clone();
    let threads: HashSet<_> = setups.iter().map(|(id, _)| *id).collect();
    assert_eq!(threads.len(), 4, "one setup per worker thread");
    assert!(setups
        .iter()
        .all(|(_, name)| name.as_deref() == Some("pyper:double")));
    assert!(!threads.contains(&std::thread::current().id()));
    let dropped: HashSet<_> = census
        .drop_threads
        .lock()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(
        dropped, threads,
        "each state is dropped on the thread that built it"
    );
}

#[test]
fn state_is_torn_down_when_the_run_fails_elsewhere() {
    let census = Arc::new(Census::default());
    let pipeline = task_per_worker(counting(&census)).workers(3)
        | try_task(|x: u64| if x == 200 { Err("boom") } else { Ok(x) });
    let error = pipeline.feed(0..).find_map(Result::err).unwrap();
    assert_eq!(error.source_string(), "boom");
    assert_eq!(census.drops.load(SeqCst), census.setups.load(SeqCst));
    assert_eq!(census.setups.load(SeqCst), 3);
}

#[test]
fn state_is_torn_down_when_the_output_is_dropped() {
    let census = Arc::new(Census::default());
    let pipeline = task_per_worker(counting(&census)).workers(2).throttle(1);
    let mut out = pipeline.feed(0..);
    out.next().unwrap().unwrap();
    drop(out);
    assert_eq!(census.drops.load(SeqCst), census.setups.load(SeqCst));
}

#[test]
fn mutable_state_sees_each_of_its_workers_items() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = task_per_worker({
        let calls = Arc::clone(&calls);
        move || {
            let calls = Arc::clone(&calls);
            let mut mine = 0usize;
            move |x: u64| {
                mine += 1;
                calls.fetch_add(1, SeqCst);
                (x, mine)
            }
        }
    })
    .workers(3);
    let outs: Vec<(u64, usize)> = count.feed(0..3000).map(Result::unwrap).collect();
    assert_eq!(outs.len(), 3000);
    assert_eq!(calls.load(SeqCst), 3000);
    // Each worker numbers its own calls 1, 2, 3...: every number is seen at most once per
    // worker, and a number is seen no more often than the one before it.
    let mut times_seen = vec![0usize; 3001];
    for &(_, n) in &outs {
        times_seen[n] += 1;
    }
    assert!(times_seen[1] >= 1 && times_seen[1] <= 3);
    assert!(times_seen.windows(2).skip(1).all(|pair| pair[0] >= pair[1]));
}

#[test]
fn a_panicking_setup_fails_the_run_naming_the_stage() {
    let broken = task_per_worker(|| -> fn(u64) -> u64 { panic!("no database") }).name("lookup");
    let error = broken.feed(0..10).find_map(Result::err).unwrap();
    assert_eq!(error.kind(), ErrorKind::Panicked);
    assert_eq!(error.stage(), Some("lookup"));
    assert_eq!(error.panic_message(), Some("no database"));
}

#[test]
fn a_failing_setup_fails_the_run_with_its_error() {
    type Call = fn(u64) -> Result<u64, String>;
    let refused =
        try_task_per_worker(|| -> Result<Call, String> { Err("connection refused".into()) })
            .workers(2)
            .name("connect");
    let error = refused.feed(0..10).find_map(Result::err).unwrap();
    assert_eq!(error.stage(), Some("connect"));
    assert_eq!(error.source_string(), "connection refused");
}

#[test]
fn per_worker_tasks_branch_keep_order_and_retry() {
    let tries = Arc::new(Mutex::new(HashSet::new()));
    let flaky = try_task_per_worker({
        let tries = Arc::clone(&tries);
        move || {
            let tries = Arc::clone(&tries);
            Ok::<_, String>(move |x: u64| match tries.lock().unwrap().insert(x) {
                true if x % 7 == 0 => Err(format!("{x}: first try fails")),
                _ => Ok(vec![x, x]),
            })
        }
    })
    .workers(4)
    .ordered()
    .retries(1)
    .backoff(Backoff::none())
    .branch();
    let out: Vec<u64> = flaky.feed(0..500).map(Result::unwrap).collect();
    assert_eq!(out, (0..500).flat_map(|x| [x, x]).collect::<Vec<_>>());
}

#[test]
fn a_timeout_on_a_per_worker_task_is_a_configuration_error() {
    let timed = task_per_worker(|| |x: u64| x).timeout(Duration::from_secs(1));
    let error = timed.feed(0..3).find_map(Result::err).unwrap();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("timeout"), "{error}");
}

#[test]
fn per_worker_tasks_compose_with_others() {
    let pipeline = task(|n: u64| 0..n).branch() | task_per_worker(|| |x: u64| x + 1).workers(2);
    let total: u64 = pipeline.run(100).map(Result::unwrap).sum();
    assert_eq!(total, (1..=100).sum::<u64>());
}

trait SourceString {
    fn source_string(&self) -> String;
}

impl SourceString for pyper::Error {
    fn source_string(&self) -> String {
        std::error::Error::source(self)
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}
