//! Order: one worker per stage keeps the input order; `.ordered()` keeps it through
//! multi-worker stages, with branch outputs grouped per input, with throttle(1), and with
//! items finishing far out of order. And what order must not cost: an ordered branch
//! streams an endless fan-out within bounded memory, and an ordered stage keeps to its
//! throttle.
//!
//! Random shapes come from a seeded xorshift, so every failure names a reproducible seed.
//! Per-item pauses only shuffle completion order; no outcome depends on their length.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{jitter, mix, wait_until, with_timeout, Gate, XorShift};
use pyper::{task, Output, Pipeline, Upstream};

/// One stage of a random pipeline, and the same stage applied sequentially.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// x → a·x + b
    Map(u64, u64),
    /// x → x % m elements (0 to m-1 of them), a filter when that is 0 or 1.
    Branch(u64),
    /// A join that re-emits its stream lazily, mapped (only valid with one worker).
    JoinMap(u64),
}

impl Kind {
    fn apply(self, x: u64) -> Vec<u64> {
        match self {
            Kind::Map(a, b) => vec![x.wrapping_mul(a).wrapping_add(b) % 1_000_003],
            Kind::Branch(m) => (0..x % m).map(|i| x * 8 + i).collect(),
            Kind::JoinMap(a) => vec![(x ^ a) % 1_000_003],
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Stage {
    kind: Kind,
    workers: usize,
    throttle: usize,
    ordered: bool,
    /// Salt for the per-item pause; 0 means no pause.
    jitter: u64,
}

impl Stage {
    fn build(self) -> Pipeline<u64, u64> {
        let Stage {
            kind,
            workers,
            throttle,
            ordered,
            jitter: salt,
        } = self;
        let pause = move |x: u64| {
            if salt != 0 {
                jitter(x, salt, 150);
            }
        };
        let task = match kind {
            Kind::JoinMap(_) => {
                return task(move |xs: Upstream<u64>| {
                    xs.map(move |x| {
                        pause(x);
                        kind.apply(x)[0]
                    })
                })
                .join()
                .branch()
                .throttle(throttle)
                .into();
            }
            Kind::Map(..) => task(move |x: u64| {
                pause(x);
                kind.apply(x)[0]
            }),
            Kind::Branch(_) => task(move |x: u64| {
                pause(x);
                kind.apply(x)
            })
            .branch(),
        };
        let task = task.workers(workers).throttle(throttle);
        if ordered {
            task.ordered().into()
        } else {
            task.into()
        }
    }
}

fn random_stages(rng: &mut XorShift, multi_worker: bool) -> Vec<Stage> {
    let count = 1 + rng.below(5) as usize;
    let mut branches = 0;
    (0..count)
        .map(|_| {
            let kind = match rng.below(6) {
                0 | 1 if branches < 2 => {
                    branches += 1;
                    Kind::Branch(1 + rng.below(4))
                }
                2 if !multi_worker => Kind::JoinMap(rng.next_u64() % 1000),
                _ => Kind::Map(1 + rng.below(1000), rng.below(1000)),
            };
            Stage {
                kind,
                workers: if multi_worker {
                    1 + rng.below(6) as usize
                } else {
                    1
                },
                throttle: rng.below(5) as usize,
                ordered: multi_worker,
                jitter: if rng.one_in(2) { rng.next_u64() | 1 } else { 0 },
            }
        })
        .collect()
}

fn reference(stages: &[Stage], inputs: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut items: Vec<u64> = inputs.collect();
    for stage in stages {
        items = items
            .into_iter()
            .flat_map(|x| stage.kind.apply(x))
            .collect();
    }
    items
}

fn build(stages: &[Stage]) -> Pipeline<u64, u64> {
    let mut stages = stages.iter();
    let first = stages.next().expect("at least one stage").build();
    stages.fold(first, |pipeline, stage| pipeline | stage.build())
}

#[test]
fn one_worker_per_stage_keeps_the_input_order() {
    with_timeout(60, || {
        for seed in 0..40 {
            let mut rng = XorShift::new(seed);
            let stages = random_stages(&mut rng, false);
            let n = 50 + rng.below(250);
            let expected = reference(&stages, 0..n);
            let out: Vec<u64> = build(&stages).feed(0..n).map(Result::unwrap).collect();
            assert_eq!(out, expected, "seed {seed}: {stages:?}");
        }
    });
}

#[test]
fn ordered_keeps_the_input_order_through_multi_worker_stages() {
    with_timeout(60, || {
        for seed in 100..130 {
            let mut rng = XorShift::new(seed);
            let stages = random_stages(&mut rng, true);
            let n = 50 + rng.below(250);
            let expected = reference(&stages, 0..n);
            let out: Vec<u64> = build(&stages).feed(0..n).map(Result::unwrap).collect();
            assert_eq!(out, expected, "seed {seed}: {stages:?}");
        }
    });
}

#[test]
fn branch_outputs_of_an_ordered_stage_stay_grouped_per_input() {
    with_timeout(60, || {
        // Eager branch: each input's three elements leave together, inputs in order.
        let triple = task(|x: u64| {
            jitter(x, 7, 300);
            [x * 10, x * 10 + 1, x * 10 + 2]
        })
        .branch()
        .workers(4)
        .ordered();
        let out: Vec<u64> = triple.feed(0..200).map(Result::unwrap).collect();
        let expected: Vec<u64> = (0..200)
            .flat_map(|x| [x * 10, x * 10 + 1, x * 10 + 2])
            .collect();
        assert_eq!(out, expected);
        // Lazy branch pausing between elements, varying fan-out (including none).
        let lazy = task(|x: u64| {
            (0..x % 5).map(move |i| {
                jitter(x * 5 + i, 11, 100);
                (x, i)
            })
        })
        .branch()
        .workers(5)
        .ordered();
        let out: Vec<(u64, u64)> = lazy.feed(0..200).map(Result::unwrap).collect();
        let expected: Vec<(u64, u64)> = (0..200)
            .flat_map(|x| (0..x % 5).map(move |i| (x, i)))
            .collect();
        assert_eq!(out, expected);
    });
}

#[test]
fn ordered_with_throttle_1_everywhere() {
    with_timeout(60, || {
        let p = task(|x: u64| {
            jitter(x, 3, 200);
            x * 2
        })
        .workers(4)
        .ordered()
        .throttle(1)
            | task(|x: u64| [x, x + 1])
                .branch()
                .workers(3)
                .ordered()
                .throttle(1)
            | task(|x: u64| {
                jitter(x, 5, 100);
                x
            })
            .workers(2)
            .ordered()
            .throttle(1);
        let out: Vec<u64> = p.feed(0..500).map(Result::unwrap).collect();
        assert_eq!(out, (0..1000).collect::<Vec<_>>());
    });
}

#[test]
fn ordered_holds_back_items_that_finish_far_ahead_of_a_slow_one() {
    with_timeout(60, || {
        // Item 0 does not finish before 1000 later items have: the reorder buffer must
        // hold them all back, and release them in order.
        let done = Arc::new(AtomicU64::new(0));
        let slow_head = task({
            let done = Arc::clone(&done);
            move |x: u64| {
                if x == 0 {
                    wait_until("1000 later items finished", || {
                        done.load(Ordering::SeqCst) >= 1000
                    });
                }
                done.fetch_add(1, Ordering::SeqCst);
                x
            }
        })
        .workers(3)
        .ordered();
        let out: Vec<u64> = slow_head.feed(0..5000).map(Result::unwrap).collect();
        assert_eq!(out, (0..5000).collect::<Vec<_>>());
    });
}

#[test]
fn ordered_runs_are_independent_and_repeatable() {
    with_timeout(60, || {
        let p = task(|x: u64| {
            jitter(x, 13, 50);
            mix(x) % 1000
        })
        .workers(6)
        .ordered();
        let expected: Vec<u64> = (0..300).map(|x| mix(x) % 1000).collect();
        for _ in 0..5 {
            let out: Vec<u64> = p.feed(0..300).map(Result::unwrap).collect();
            assert_eq!(out, expected);
        }
        // Two overlapping runs of the same pipeline, read alternately.
        let (mut a, mut b) = (p.feed(0..300), p.feed(0..300));
        for x in &expected {
            assert_eq!(a.next().unwrap().unwrap(), *x);
            assert_eq!(b.next().unwrap().unwrap(), *x);
        }
        assert!(a.next().is_none() && b.next().is_none());
    });
}

// ---------------------------------------------------------------------------------------
// Order within bounded memory

/// The most items a worker takes, or hands over, at once (see `Task::workers` and
/// `Task::throttle`): the "one batch per worker" that a stage may hold beyond its throttle.
const MAX_BATCH: u64 = 1024;

/// How far into its fan-out an endless branch may get before the test calls it a runaway:
/// far beyond any bounded buffer, and small enough that a stage which buffers the whole
/// fan-out fails in a moment instead of eating the machine's memory.
const RUNAWAY: u64 = 1_000_000;

/// `start..`, endless, but it panics (failing the run, with a message) once it has produced
/// [`RUNAWAY`] elements, and counts every element it produces in `produced`.
fn endless_from(start: u64, produced: Arc<AtomicU64>) -> impl Iterator<Item = u64> {
    (start..).inspect(move |x| {
        produced.fetch_add(1, Ordering::SeqCst);
        assert!(
            x - start < RUNAWAY,
            "the fan-out of input {start} ran {RUNAWAY} elements ahead of its consumer: \
             the stage buffers it whole"
        );
    })
}

/// The first three outputs of an ordered branch stage fed `[0, 1_000_000]`, each input
/// fanning out to an endless iterator: `[0, 1, 2]`, from input 0, as soon as they are made.
fn first_three(output: Output<u64>) -> Vec<u64> {
    output
        .take(3)
        .map(|result| result.unwrap_or_else(|error| panic!("{error:#}")))
        .collect()
}

#[test]
fn an_ordered_branch_streams_an_endless_fan_out() {
    // Each input's fan-out is endless: an ordered stage must hand on input 0's elements
    // as they come (they are next in line), not wait for input 0 to finish.
    let first = with_timeout(30, || {
        let produced = Arc::new(AtomicU64::new(0));
        let endless = task(move |start: u64| endless_from(start, Arc::clone(&produced)))
            .branch()
            .workers(2)
            .ordered();
        first_three(endless.feed([0, 1_000_000]))
    });
    assert_eq!(first, [0, 1, 2]);
}

#[cfg(feature = "async")]
#[test]
fn an_ordered_async_branch_streams_an_endless_fan_out() {
    let first = with_timeout(30, || {
        let produced = Arc::new(AtomicU64::new(0));
        let endless = pyper::async_task(move |start: u64| {
            let elements = endless_from(start, Arc::clone(&produced));
            async move { elements }
        })
        .branch()
        .workers(2)
        .ordered();
        first_three(endless.feed([0, 1_000_000]))
    });
    assert_eq!(first, [0, 1, 2]);
}

#[test]
fn an_ordered_branch_produces_a_bounded_lead_over_a_stalled_consumer() {
    // Takes `TAKEN` outputs, then stops reading, and watches the elements produced: the
    // stage may run ahead of its consumer by its throttle (in its queue, and once more in
    // the output's hands) plus one batch per worker, as `Task::throttle` documents, and
    // no further. One more batch of slack covers the in-flight elements. A stage that
    // buffers the whole fan-out of input 1_000_000 while input 0's is endless, or that
    // waits for input 0 to end before handing anything on, breaks the bound at once.
    const THROTTLE: usize = 16;
    const WORKERS: usize = 2;
    const TAKEN: u64 = 100;
    const BOUND: u64 = 2 * THROTTLE as u64 + WORKERS as u64 * MAX_BATCH + MAX_BATCH;
    let (worst, took) = with_timeout(30, || {
        let produced = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(AtomicU64::new(0));
        let endless = task({
            let produced = Arc::clone(&produced);
            move |start: u64| endless_from(start, Arc::clone(&produced))
        })
        .branch()
        .workers(WORKERS)
        .throttle(THROTTLE)
        .ordered();
        let output = endless.feed([0, 1_000_000]);
        let canceller = output.canceller();
        let release = Arc::new(Gate::new());
        let consumer = std::thread::spawn({
            let (taken, release) = (Arc::clone(&taken), Arc::clone(&release));
            move || {
                let mut output = output;
                for expected in 0..TAKEN {
                    match output.next() {
                        Some(Ok(value)) => assert_eq!(value, expected),
                        // Cancelled by the sampler, which says why; or failed.
                        Some(Err(error)) => return Err(format!("{error:#}")),
                        None => return Err("the output ended".to_owned()),
                    }
                    taken.fetch_add(1, Ordering::SeqCst);
                }
                // Stalled: holds the output without reading until released.
                release.wait();
                Ok(())
            }
        });
        // Samples the lead from the start of the run, and for a while once the consumer
        // has stalled: a bounded stage stops producing, so the lead stops growing.
        let mut worst = 0;
        let mut samples_after_stall = 0;
        while samples_after_stall < 300 {
            if taken.load(Ordering::SeqCst) == TAKEN {
                samples_after_stall += 1;
            }
            let lead = produced
                .load(Ordering::SeqCst)
                .saturating_sub(taken.load(Ordering::SeqCst));
            worst = worst.max(lead);
            if worst > BOUND || consumer.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        canceller.cancel();
        release.open();
        (worst, consumer.join().unwrap())
    });
    assert!(
        worst <= BOUND,
        "an ordered branch stage (throttle {THROTTLE}, {WORKERS} workers) produced {worst} or \
         more elements beyond what its consumer took; the bound is {BOUND}"
    );
    assert_eq!(took, Ok(()), "the consumer took its {TAKEN} outputs");
}

/// Feeds an endless input through `fast`, whose function counts its calls in `entered`,
/// and then through a stage that takes a millisecond per item, for `outputs` outputs.
/// Returns the most items `fast` was ever called with beyond those the slow stage had
/// finished, sampled after each output (and stops early once that exceeds `bound`).
fn lead_over_a_slow_stage(
    fast: Pipeline<u64, u64>,
    entered: &AtomicU64,
    outputs: u64,
    bound: u64,
) -> u64 {
    let finished = Arc::new(AtomicU64::new(0));
    let slow = task({
        let finished = Arc::clone(&finished);
        move |x: u64| {
            std::thread::sleep(Duration::from_millis(1));
            finished.fetch_add(1, Ordering::SeqCst);
            x
        }
    });
    let mut output = (fast | slow).feed(0..);
    let mut worst = 0;
    for _ in 0..outputs {
        output.next().unwrap().unwrap();
        let lead = entered
            .load(Ordering::SeqCst)
            .saturating_sub(finished.load(Ordering::SeqCst));
        worst = worst.max(lead);
        if worst > bound {
            break;
        }
    }
    worst
}

/// What a stage of `workers` with `throttle(throttle)` may run ahead of a slow stage after
/// it: its throttle, one batch per worker (as `Task::throttle` documents), and a batch of
/// slack for the items in the slow stage's hands and in flight.
fn throttle_bound(throttle: u64, workers: u64) -> u64 {
    throttle + workers * MAX_BATCH + MAX_BATCH
}

/// A thread stage whose function counts its calls in `entered`.
fn counted(entered: &Arc<AtomicU64>) -> pyper::Task<u64, u64> {
    let entered = Arc::clone(entered);
    task(move |x: u64| {
        entered.fetch_add(1, Ordering::SeqCst);
        x
    })
}

#[test]
fn an_ordered_stage_keeps_to_its_throttle() {
    const OUTPUTS: u64 = 1_000;
    let bound = throttle_bound(2, 4);
    let (unordered, ordered) = with_timeout(30, move || {
        let entered = Arc::new(AtomicU64::new(0));
        let fast = counted(&entered).workers(4).throttle(2);
        let unordered = lead_over_a_slow_stage(fast.into(), &entered, OUTPUTS, bound);
        let entered = Arc::new(AtomicU64::new(0));
        let fast = counted(&entered).workers(4).throttle(2).ordered();
        let ordered = lead_over_a_slow_stage(fast.into(), &entered, OUTPUTS, bound);
        (unordered, ordered)
    });
    assert!(
        unordered <= bound,
        "workers(4).throttle(2) ran {unordered} items ahead (bound {bound})"
    );
    assert!(
        ordered <= bound,
        "workers(4).throttle(2).ordered() ran {ordered} or more items ahead of the slow \
         stage after it (bound {bound}; without ordered(): {unordered})"
    );
}

#[cfg(feature = "async")]
#[test]
fn an_ordered_async_stage_keeps_to_its_throttle() {
    const OUTPUTS: u64 = 1_000;
    let bound = throttle_bound(2, 4);
    let counted_async = |entered: &Arc<AtomicU64>| {
        let entered = Arc::clone(entered);
        pyper::async_task(move |x: u64| {
            entered.fetch_add(1, Ordering::SeqCst);
            async move { x }
        })
    };
    let (unordered, ordered) = with_timeout(30, move || {
        let entered = Arc::new(AtomicU64::new(0));
        let fast = counted_async(&entered).workers(4).throttle(2);
        let unordered = lead_over_a_slow_stage(fast.into(), &entered, OUTPUTS, bound);
        let entered = Arc::new(AtomicU64::new(0));
        let fast = counted_async(&entered).workers(4).throttle(2).ordered();
        let ordered = lead_over_a_slow_stage(fast.into(), &entered, OUTPUTS, bound);
        (unordered, ordered)
    });
    assert!(
        unordered <= bound,
        "async workers(4).throttle(2) ran {unordered} items ahead (bound {bound})"
    );
    assert!(
        ordered <= bound,
        "async workers(4).throttle(2).ordered() ran {ordered} or more items ahead of the \
         slow stage after it (bound {bound}; without ordered(): {unordered})"
    );
}
