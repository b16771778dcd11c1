//! Stress loops: thousands of small runs with random shapes, drop points, failures and
//! cancels, from a seeded xorshift. Each loop checks that nothing hangs (a hang guard
//! around the loop), that no item is lost or invented (counts and sums against a
//! sequential reference), that an error is always the single last item, and that no
//! engine thread survives the loop.
//!
//! The tests count threads, so each holds the file's lock.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{serial, wait_for_pyper_threads, with_timeout, XorShift};
use pyper::{task, try_task, Error, ErrorKind, Pipeline};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Add(u64),
    /// x → [x, x + 1]
    Dup,
    /// keeps even x only
    Even,
}

#[derive(Clone, Copy, Debug)]
struct Stage {
    kind: Kind,
    workers: usize,
    throttle: usize,
    ordered: bool,
    daemon: bool,
}

impl Kind {
    fn apply(self, x: u64) -> Vec<u64> {
        match self {
            Kind::Add(k) => vec![x + k],
            Kind::Dup => vec![x, x + 1],
            Kind::Even => (x % 2 == 0).then_some(x).into_iter().collect(),
        }
    }
}

#[derive(Clone, Debug)]
struct Shape {
    stages: Vec<Stage>,
    inputs: u64,
}

impl Shape {
    fn random(rng: &mut XorShift) -> Shape {
        let count = 1 + rng.below(3) as usize;
        let stages = (0..count)
            .map(|_| Stage {
                kind: match rng.below(4) {
                    0 => Kind::Dup,
                    1 => Kind::Even,
                    _ => Kind::Add(rng.below(100)),
                },
                workers: 1 + rng.below(3) as usize,
                throttle: rng.below(4) as usize,
                ordered: rng.one_in(3),
                daemon: rng.one_in(4),
            })
            .collect();
        Shape {
            stages,
            inputs: rng.below(200),
        }
    }

    /// Every stage's input stream and the final output, sequentially.
    fn reference(&self) -> (Vec<Vec<u64>>, Vec<u64>) {
        let mut streams = Vec::new();
        let mut items: Vec<u64> = (0..self.inputs).collect();
        for stage in &self.stages {
            let next = items.iter().flat_map(|&x| stage.kind.apply(x)).collect();
            streams.push(std::mem::replace(&mut items, next));
        }
        (streams, items)
    }

    /// The pipeline; `fault` = (stage, value, panic) makes that stage fail on that value.
    fn build(&self, fault: Option<(usize, u64, bool)>) -> Pipeline<u64, u64> {
        let mut pipeline: Option<Pipeline<u64, u64>> = None;
        for (index, stage) in self.stages.iter().enumerate() {
            let fault = fault.filter(|&(at, _, _)| at == index);
            let kind = stage.kind;
            let mut task = try_task(move |x: u64| {
                if let Some((_, value, panic)) = fault {
                    if x == value {
                        assert!(!panic, "planned panic");
                        return Err("planned error");
                    }
                }
                Ok(kind.apply(x))
            })
            .branch()
            .workers(stage.workers)
            .throttle(stage.throttle)
            .name(format!("s{index}"));
            if stage.ordered {
                task = task.ordered();
            }
            if stage.daemon {
                task = task.daemon();
            }
            pipeline = Some(match pipeline {
                None => task.into(),
                Some(p) => p | task,
            });
        }
        pipeline.expect("at least one stage")
    }
}

/// Removes every item of `taken` from the sorted multiset `all`; false if one is missing.
fn is_sub_multiset(taken: &[u64], all: &[u64]) -> bool {
    let mut all = all.to_vec();
    all.sort_unstable();
    let mut taken = taken.to_vec();
    taken.sort_unstable();
    let mut at = 0;
    for x in taken {
        while at < all.len() && all[at] < x {
            at += 1;
        }
        if at == all.len() || all[at] != x {
            return false;
        }
        at += 1;
    }
    true
}

/// Splits a run's results into its outputs and its error, checking that there is at most
/// one error and that it comes last.
fn split(results: Vec<Result<u64, Error>>) -> (Vec<u64>, Option<Error>) {
    let mut outputs = Vec::with_capacity(results.len());
    let mut error = None;
    for result in results {
        assert!(error.is_none(), "nothing may follow an error");
        match result {
            Ok(x) => outputs.push(x),
            Err(e) => error = Some(e),
        }
    }
    (outputs, error)
}

#[test]
fn complete_runs_lose_and_invent_nothing() {
    let _serial = serial();
    with_timeout(120, || {
        let mut rng = XorShift::new(1);
        for run in 0..1500 {
            let shape = Shape::random(&mut rng);
            let (_, expected) = shape.reference();
            let (outputs, error) = split(shape.build(None).feed(0..shape.inputs).collect());
            assert!(error.is_none(), "run {run}: {shape:?}: {error:?}");
            assert_eq!(outputs.len(), expected.len(), "run {run}: {shape:?}");
            assert_eq!(
                outputs.iter().sum::<u64>(),
                expected.iter().sum::<u64>(),
                "run {run}: {shape:?}"
            );
            if shape.stages.iter().all(|s| s.workers == 1 || s.ordered) {
                assert_eq!(outputs, expected, "run {run}: {shape:?}");
            }
        }
    });
    wait_for_pyper_threads(0);
}

#[test]
fn random_drop_points() {
    let _serial = serial();
    with_timeout(120, || {
        let mut rng = XorShift::new(2);
        for run in 0..1000 {
            let shape = Shape::random(&mut rng);
            let (_, expected) = shape.reference();
            let take = rng.below(expected.len() as u64 + 2) as usize;
            let mut out = shape.build(None).feed(0..shape.inputs);
            let taken: Vec<u64> = out.by_ref().take(take).map(Result::unwrap).collect();
            assert_eq!(
                taken.len(),
                take.min(expected.len()),
                "run {run}: {shape:?}"
            );
            assert!(is_sub_multiset(&taken, &expected), "run {run}: {shape:?}");
            drop(out);
        }
    });
    wait_for_pyper_threads(0);
}

#[test]
fn random_failures_are_reported_once_and_last() {
    let _serial = serial();
    with_timeout(120, || {
        let mut rng = XorShift::new(3);
        let mut runs = 0;
        while runs < 1000 {
            let shape = Shape::random(&mut rng);
            let (streams, expected) = shape.reference();
            let stage = rng.below(shape.stages.len() as u64) as usize;
            if streams[stage].is_empty() {
                continue; // the fault could not be reached
            }
            runs += 1;
            let value = streams[stage][rng.below(streams[stage].len() as u64) as usize];
            let panic = rng.one_in(2);
            let (outputs, error) = split(
                shape
                    .build(Some((stage, value, panic)))
                    .feed(0..shape.inputs)
                    .collect(),
            );
            let error = error.unwrap_or_else(|| panic!("run {runs}: {shape:?}: no error"));
            let name = format!("s{stage}");
            assert_eq!(error.stage(), Some(name.as_str()), "run {runs}: {shape:?}");
            let kind = if panic {
                ErrorKind::Panicked
            } else {
                ErrorKind::Failed
            };
            assert_eq!(error.kind(), kind);
            assert!(
                is_sub_multiset(&outputs, &expected),
                "run {runs}: {shape:?}"
            );
        }
    });
    wait_for_pyper_threads(0);
}

#[test]
fn random_cancels_from_another_thread() {
    let _serial = serial();
    with_timeout(120, || {
        let mut rng = XorShift::new(4);
        for run in 0..600 {
            let shape = Shape::random(&mut rng);
            let (_, expected) = shape.reference();
            let cancel_after = rng.below(expected.len() as u64 + 2) as usize;
            let read = Arc::new(AtomicUsize::new(0));
            let mut out = shape.build(None).feed(0..shape.inputs);
            let canceller = out.canceller();
            let cancel = std::thread::spawn({
                let read = Arc::clone(&read);
                move || {
                    // Cancels once the consumer has read `cancel_after` items, or when the
                    // run is over (the count cannot reach it).
                    while read.load(Ordering::SeqCst) < cancel_after
                        && read.load(Ordering::SeqCst) != usize::MAX
                    {
                        std::thread::yield_now();
                    }
                    canceller.cancel();
                }
            });
            let mut taken = Vec::new();
            for result in out.by_ref() {
                let x = result.unwrap_or_else(|e| panic!("run {run}: a cancel is no error: {e}"));
                taken.push(x);
                read.fetch_add(1, Ordering::SeqCst);
            }
            read.store(usize::MAX, Ordering::SeqCst);
            cancel.join().unwrap();
            assert!(out.next().is_none());
            assert!(is_sub_multiset(&taken, &expected), "run {run}: {shape:?}");
            // Everything read before the cancel was delivered: a cut-short run has at
            // least `cancel_after` items.
            assert!(taken.len() >= cancel_after.min(expected.len()), "run {run}");
        }
    });
    wait_for_pyper_threads(0);
}

#[test]
fn failures_cancels_and_drops_racing_each_other() {
    let _serial = serial();
    with_timeout(120, || {
        let mut rng = XorShift::new(5);
        for run in 0..600 {
            let shape = Shape::random(&mut rng);
            let (streams, expected) = shape.reference();
            let stage = rng.below(shape.stages.len() as u64) as usize;
            let fault = (!streams[stage].is_empty() && rng.one_in(2)).then(|| {
                let value = streams[stage][rng.below(streams[stage].len() as u64) as usize];
                (stage, value, rng.one_in(2))
            });
            let drop_after = rng.below(expected.len() as u64 + 2) as usize;
            let cancel_now = rng.one_in(3);
            let mut out = shape.build(fault).feed(0..shape.inputs);
            let canceller = out.canceller();
            let mut results = Vec::new();
            for result in out.by_ref() {
                results.push(result);
                if results.len() == drop_after / 2 && cancel_now {
                    std::thread::spawn({
                        let canceller = canceller.clone();
                        move || canceller.cancel()
                    });
                }
                if results.len() >= drop_after {
                    break;
                }
            }
            drop(out);
            let (outputs, error) = split(results);
            if let Some(error) = error {
                let (stage, _, _) = fault.expect("an error only where one was planned");
                assert_eq!(
                    error.stage(),
                    Some(format!("s{stage}").as_str()),
                    "run {run}"
                );
            }
            assert!(is_sub_multiset(&outputs, &expected), "run {run}: {shape:?}");
        }
    });
    wait_for_pyper_threads(0);
}

#[test]
fn many_runs_of_one_pipeline_at_once() {
    let _serial = serial();
    let total = with_timeout(120, || {
        let p = task(|x: u64| x + 1).workers(2).throttle(1)
            | task(|x: u64| [x, x]).branch().workers(2).ordered()
            | task(|x: u64| x * 3).throttle(2);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut sum = 0;
                    for n in 0..60 {
                        sum += p.feed(0..n + t).map(Result::unwrap).sum::<u64>();
                    }
                    sum
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum::<u64>()
    });
    let expected: u64 = (0..8u64)
        .flat_map(|t| (0..60).map(move |n| n + t))
        .map(|len| (0..len).map(|x| 6 * (x + 1)).sum::<u64>())
        .sum();
    assert_eq!(total, expected);
    wait_for_pyper_threads(0);
}
