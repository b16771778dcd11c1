//! Order: one worker per stage keeps the input order; `.ordered()` keeps it through
//! multi-worker stages, with branch outputs grouped per input, with throttle(1), and with
//! items finishing far out of order.
//!
//! Random shapes come from a seeded xorshift, so every failure names a reproducible seed.
//! Per-item pauses only shuffle completion order; no outcome depends on their length.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{jitter, mix, wait_until, with_timeout, XorShift};
use pyper::{task, Pipeline, Upstream};

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
