//! Helpers shared by the timeout and retry tests of thread stages (`faults.rs`) and of async
//! stages (`async_faults.rs`): the time limits, the error the test tasks fail with, a panic
//! hook that hides the deliberate panics, a call counter per item, readers of a run's
//! outputs and error, and the random stages of the property test with its sequential
//! reference.
//!
//! Nothing here measures speed. Every limit only turns a hang into a failure.
// Each test binary compiles this module on its own and need not use every item in it.
#![allow(dead_code)]

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use pyper::{Backoff, Error, ErrorKind, Panicked, Pipeline, RetriesExhausted, Task};

/// Long enough that a call or future that is not held up on purpose never overruns it, even
/// on a loaded machine.
pub const GENEROUS: Duration = Duration::from_secs(30);

/// The limit for calls that block, and futures that stay pending, on purpose: they overrun
/// it whatever the machine.
pub const SHORT: Duration = Duration::from_millis(50);

/// `stage` with the time limit `timeout`, or without one.
pub fn timed<I, O>(stage: Task<I, O>, timeout: Option<Duration>) -> Task<I, O> {
    match timeout {
        Some(limit) => stage.timeout(limit),
        None => stage,
    }
}

/// The error the test tasks fail with.
#[derive(Debug, PartialEq, Eq)]
pub struct TestError(pub u64);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test error {}", self.0)
    }
}

impl std::error::Error for TestError {}

/// Keeps the deliberate panics of these tests (whose messages start with "injected") out
/// of the test output.
pub fn quiet_panics() {
    crate::common::hide_panics_starting_with("injected");
}

/// Counts the calls per item.
#[derive(Clone, Default)]
pub struct Attempts(pub Arc<Mutex<HashMap<u64, u32>>>);

impl Attempts {
    /// Records a call for `item`; returns its 0-based attempt number.
    pub fn next(&self, item: u64) -> u32 {
        let mut counts = self.0.lock().unwrap();
        let count = counts.entry(item).or_insert(0);
        *count += 1;
        *count - 1
    }

    /// How many calls `item` has had so far.
    pub fn of(&self, item: u64) -> u32 {
        self.0.lock().unwrap().get(&item).copied().unwrap_or(0)
    }
}

/// The outputs of a run that must not fail; panics on the first error.
pub fn values<O>(output: impl Iterator<Item = Result<O, Error>>) -> Vec<O> {
    output
        .map(|item| item.unwrap_or_else(|error| panic!("unexpected error: {error:#}")))
        .collect()
}

/// The outputs before the run's error, and the error, which must be the last item.
pub fn outputs_and_error<O>(output: impl Iterator<Item = Result<O, Error>>) -> (Vec<O>, Error) {
    let mut values = Vec::new();
    let mut error = None;
    for item in output {
        assert!(error.is_none(), "an output came after the error");
        match item {
            Ok(value) => values.push(value),
            Err(failure) => error = Some(failure),
        }
    }
    (values, error.expect("the run fails"))
}

/// Asserts that `error` is the panic `message` of stage `stage` on item `item`.
#[track_caller]
pub fn assert_panicked(error: &Error, stage: &str, item: u64, message: &str) {
    assert_eq!(error.kind(), ErrorKind::Panicked);
    assert_eq!((error.stage(), error.item()), (Some(stage), Some(item)));
    assert_eq!(error.panic_message(), Some(message));
}

// ---------------------------------------------------------------------------------------
// The property: random pipelines, random failures per attempt.

/// One stage of a random pipeline: its policy, and the failures it injects per attempt.
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub workers: usize,
    pub ordered: bool,
    pub retries: u32,
    pub timeout: bool,
    /// Each item becomes two (`2v`, `2v + 1`), through a branch.
    pub branch: bool,
    /// An attempt fails with probability 1 / `fail_one_in`.
    pub fail_one_in: u64,
    pub salt: u64,
    /// The stateless hash that decides which attempts fail: each test file passes the one
    /// its own helpers have (`mix`, `scramble`).
    pub hash: fn(u64) -> u64,
}

impl StageSpec {
    /// Whether attempt `attempt` at value `v` fails, and whether by a panic.
    pub fn fails(&self, v: u64, attempt: u32) -> Option<bool> {
        let h = (self.hash)(v ^ self.salt ^ (u64::from(attempt) << 40));
        (h % self.fail_one_in == 0).then_some(h & (1 << 20) != 0)
    }

    /// The values one value becomes.
    pub fn apply(&self, v: u64) -> Vec<u64> {
        match self.branch {
            true => vec![2 * v, 2 * v + 1],
            false => vec![v + 1_000_000_000],
        }
    }

    /// How many attempts the value needs, or `None` if every attempt fails.
    pub fn attempts_needed(&self, v: u64) -> Option<u32> {
        (0..=self.retries).find(|&attempt| self.fails(v, attempt).is_none())
    }

    /// The body of the stage's task: counts its calls in `attempts`, and each call panics,
    /// fails with a `TestError` or returns the values its value becomes, as `fails` says.
    pub fn body(
        &self,
        attempts: Attempts,
    ) -> impl Fn(u64) -> Result<Vec<u64>, TestError> + Clone + Send + Sync + 'static {
        let spec = self.clone();
        move |v: u64| {
            let attempt = attempts.next(v);
            match spec.fails(v, attempt) {
                Some(true) => panic!("injected panic at {v}"),
                Some(false) => Err(TestError(v)),
                None => Ok(spec.apply(v)),
            }
        }
    }

    /// The stage: `task`, a task made of `body`, with this policy.
    pub fn stage(&self, task: Task<u64, Vec<u64>>) -> Pipeline<u64, u64> {
        let stage = task
            .branch()
            .workers(self.workers)
            .retries(self.retries)
            .backoff(Backoff::none());
        let stage = if self.ordered { stage.ordered() } else { stage };
        timed(stage, self.timeout.then_some(GENEROUS)).into()
    }
}

/// Random stages with 1 to `max_workers` workers, whose failures `hash` decides.
pub fn stage_spec(max_workers: usize, hash: fn(u64) -> u64) -> impl Strategy<Value = StageSpec> {
    (
        1..=max_workers,
        any::<bool>(),
        prop_oneof![1 => Just(0u32), 4 => 1u32..=3],
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::sample::select(vec![3u64, 6, 12, 50]),
        any::<u64>(),
    )
        .prop_map(
            move |(workers, ordered, retries, timeout, branch, fail_one_in, salt)| StageSpec {
                workers,
                ordered,
                retries,
                timeout,
                branch,
                fail_one_in,
                salt,
                hash,
            },
        )
}

/// Feeds `0..inputs` to the pipeline of one stage per element of `stages`, each made by
/// `stage` with the matching counter of `counters`; returns the outputs and the run's
/// error, if any, which must be the last item.
pub fn run_random<S>(
    stages: &[S],
    counters: &[Attempts],
    inputs: u64,
    stage: impl Fn(&S, Attempts) -> Pipeline<u64, u64>,
) -> (Vec<u64>, Option<Error>) {
    let mut pipeline = stage(&stages[0], counters[0].clone());
    for (spec, counter) in stages.iter().zip(counters).skip(1) {
        pipeline = pipeline | stage(spec, counter.clone());
    }
    let mut outputs = Vec::new();
    let mut error = None;
    for item in pipeline.feed(0..inputs) {
        assert!(error.is_none(), "an output after the error");
        match item {
            Ok(value) => outputs.push(value),
            Err(failure) => error = Some(failure),
        }
    }
    (outputs, error)
}

/// Checks the run of a random pipeline (see `run_random`) against a sequential reference:
/// every item's outputs come out exactly once, and each value took exactly the attempts
/// the reference says; or the run fails on an item whose every attempt failed.
pub fn check_random_run<S: Borrow<StageSpec>>(
    stages: &[S],
    counters: &[Attempts],
    inputs: u64,
    outputs: &[u64],
    error: Option<Error>,
) -> Result<(), TestCaseError> {
    let specs: Vec<&StageSpec> = stages.iter().map(Borrow::borrow).collect();

    // The sequential reference: what each stage receives, and which values no attempt
    // gets through.
    let mut received: Vec<Vec<u64>> = Vec::new();
    let mut doomed: Vec<Vec<u64>> = Vec::new();
    let mut values: Vec<u64> = (0..inputs).collect();
    for spec in &specs {
        received.push(values.clone());
        let (through, failed): (Vec<u64>, Vec<u64>) = values
            .iter()
            .partition(|&&v| spec.attempts_needed(v).is_some());
        doomed.push(failed);
        values = through.iter().flat_map(|&v| spec.apply(v)).collect();
    }

    let mut sorted = outputs.to_vec();
    sorted.sort_unstable();
    let mut unique = sorted.clone();
    unique.dedup();
    prop_assert_eq!(unique.len(), sorted.len(), "an output came twice");
    let mut expected = values.clone();
    expected.sort_unstable();
    for value in &sorted {
        prop_assert!(
            expected.binary_search(value).is_ok(),
            "{} is no output",
            value
        );
    }

    match error {
        None => {
            prop_assert!(
                doomed.iter().all(Vec::is_empty),
                "a doomed item got through"
            );
            prop_assert_eq!(&sorted, &expected);
            if specs.iter().all(|spec| spec.workers == 1 || spec.ordered) {
                prop_assert_eq!(outputs, &values[..], "in order");
            }
            // Every value took exactly the attempts the reference says.
            for ((spec, counter), seen) in specs.iter().zip(counters).zip(&received) {
                for &v in seen {
                    prop_assert_eq!(Some(counter.of(v)), spec.attempts_needed(v).map(|a| a + 1));
                }
            }
        }
        Some(error) => {
            // The error names a stage and a value that every attempt failed on.
            let stage: usize = error
                .stage()
                .and_then(|name| name.strip_prefix("stage "))
                .and_then(|n| n.parse().ok())
                .expect("a stage name");
            let spec = specs[stage - 1];
            let value = failed_value(&error, spec.retries);
            prop_assert!(
                doomed[stage - 1].contains(&value),
                "{:#} names {}",
                error,
                value
            );
            prop_assert_eq!(counters[stage - 1].of(value), spec.retries + 1);
        }
    }
    Ok(())
}

/// The value an error failed on, from its last cause: a `TestError` or an injected panic.
fn failed_value(error: &Error, retries: u32) -> u64 {
    let from_panic = |message: &str| -> u64 {
        message
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("an injected panic")
    };
    if retries == 0 {
        if let Some(message) = error.panic_message() {
            return from_panic(message);
        }
        return error.downcast_ref::<TestError>().expect("a TestError").0;
    }
    let exhausted = error.downcast_ref::<RetriesExhausted>().expect("exhausted");
    assert_eq!(exhausted.attempts().len() as u32, retries + 1);
    let last = exhausted.attempts().last().unwrap();
    match last.downcast_ref::<TestError>() {
        Some(TestError(v)) => *v,
        None => from_panic(last.downcast_ref::<Panicked>().expect("a panic").message()),
    }
}
