//! Property tests over random pipelines: 1–6 stages, each with 1–8 workers (fixed, or tuned
//! by the run in 30% of the stages), throttle 0–4,
//! an optional branch with fan-out 0–5 per item, ordered or not, and an optional final
//! join.
//!
//! 1. The output multiset equals that of the same stage functions applied sequentially
//!    (and the exact sequence, when every multi-worker stage is ordered).
//! 2. An error or a panic injected at an item that certainly reaches its stage gives
//!    exactly one `Err`, last, naming that stage; everything before it is a real output.
//!
//! Every case runs under a hang guard.

mod common;

use common::{mix, with_timeout};
use proptest::prelude::*;
use proptest::sample::Index;
use pyper::{task, ErrorKind, Pipeline, Upstream};

const MODULUS: u64 = 1_000_003;

#[derive(Clone, Debug)]
struct StageSpec {
    workers: usize,
    throttle: usize,
    /// `Some(m)`, m in 1..=5: a branch giving 0 to m elements per item (so also a filter).
    fanout: Option<u64>,
    ordered: bool,
    /// `workers` is a most, and the run tunes the count (`auto_workers`): the workers
    /// beyond it park, and must leave with the stage however the run ends.
    auto: bool,
    mul: u64,
    add: u64,
}

impl StageSpec {
    /// The stage's function, applied to one item.
    fn apply(&self, x: u64) -> Vec<u64> {
        let y = (x.wrapping_mul(self.mul).wrapping_add(self.add)) % MODULUS;
        match self.fanout {
            None => vec![y],
            Some(m) => {
                let n = mix(x ^ self.add) % (m + 1);
                (0..n).map(|i| (y + i * 7919) % MODULUS).collect()
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Fault {
    stage: usize,
    /// Which of the failing stage's inputs (in the sequential reference) triggers it.
    at: Index,
    panic: bool,
}

#[derive(Clone, Debug)]
struct PipelineSpec {
    stages: Vec<StageSpec>,
    /// `Some(workers)`: a final join that sorts its share and re-emits it.
    join: Option<usize>,
    inputs: u64,
}

impl PipelineSpec {
    /// The input stream of every stage, and the final output, computed sequentially.
    fn reference(&self) -> (Vec<Vec<u64>>, Vec<u64>) {
        let mut streams = Vec::new();
        let mut items: Vec<u64> = (0..self.inputs).collect();
        for stage in &self.stages {
            let next = items.iter().flat_map(|&x| stage.apply(x)).collect();
            streams.push(std::mem::replace(&mut items, next));
        }
        (streams, items)
    }

    /// Whether the pipeline promises the sequential order.
    fn keeps_order(&self) -> bool {
        self.join.is_none() && self.stages.iter().all(|s| s.workers == 1 || s.ordered)
    }

    fn build(&self, fault: Option<(usize, u64, bool)>) -> Pipeline<u64, u64> {
        let mut pipeline: Option<Pipeline<u64, u64>> = None;
        for (index, spec) in self.stages.iter().enumerate() {
            let stage_fault = fault.filter(|&(stage, _, _)| stage == index);
            let apply = {
                let spec = spec.clone();
                move |x: u64| -> Result<Vec<u64>, String> {
                    if let Some((_, value, panic)) = stage_fault {
                        if x == value {
                            if panic {
                                panic!("injected panic at {x}");
                            }
                            return Err(format!("injected error at {x}"));
                        }
                    }
                    Ok(spec.apply(x))
                }
            };
            let task = match spec.fanout {
                Some(_) => pyper::try_task(apply).branch(),
                None => pyper::try_task(move |x: u64| apply(x).map(|v| v[0])),
            };
            let task = match spec.auto {
                true => task.auto_workers(spec.workers),
                false => task.workers(spec.workers),
            };
            let mut task = task.throttle(spec.throttle).name(format!("s{index}"));
            if spec.ordered {
                task = task.ordered();
            }
            pipeline = Some(match pipeline {
                None => task.into(),
                Some(p) => p | task,
            });
        }
        let pipeline = pipeline.expect("at least one stage");
        match self.join {
            None => pipeline,
            Some(workers) => {
                let join = task(|xs: Upstream<u64>| {
                    let mut share: Vec<u64> = xs.collect();
                    share.sort_unstable();
                    share
                })
                .join()
                .branch()
                .workers(workers)
                .name("join");
                pipeline | join
            }
        }
    }
}

fn stage_spec() -> impl Strategy<Value = StageSpec> {
    (
        1usize..=8,
        0usize..=4,
        // A branch in 40% of the stages; each item then gives 0 to m elements.
        prop::option::weighted(0.4, 1u64..=5),
        any::<bool>(),
        prop::bool::weighted(0.3),
        1u64..1000,
        0u64..1000,
    )
        .prop_map(
            |(workers, throttle, fanout, ordered, auto, mul, add)| StageSpec {
                workers,
                throttle,
                fanout,
                ordered,
                auto,
                mul,
                add,
            },
        )
}

fn pipeline_spec() -> impl Strategy<Value = PipelineSpec> {
    (
        prop::collection::vec(stage_spec(), 1..=6),
        prop::option::of(1usize..=3),
        0u64..=200,
    )
        .prop_map(|(stages, join, inputs)| PipelineSpec {
            stages,
            join,
            inputs,
        })
}

/// Keeps the cases small enough for a debug build on two cores.
const MAX_ITEMS: usize = 5_000;

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_global_rejects: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn outputs_match_the_sequential_reference(spec in pipeline_spec()) {
        let (streams, expected) = spec.reference();
        prop_assume!(streams.iter().map(Vec::len).sum::<usize>() + expected.len() <= MAX_ITEMS);
        let run_spec = spec.clone();
        let out: Vec<u64> = with_timeout(60, move || {
            run_spec.build(None).feed(0..run_spec.inputs).map(Result::unwrap).collect()
        });
        if spec.keeps_order() {
            prop_assert_eq!(&out, &expected);
        }
        prop_assert_eq!(sorted(out), sorted(expected));
    }

    #[test]
    fn an_injected_failure_is_the_one_error_and_names_its_stage(
        spec in pipeline_spec(),
        stage in any::<Index>(),
        at in any::<Index>(),
        panic in any::<bool>(),
    ) {
        let fault = Fault { stage: stage.index(spec.stages.len()), at, panic };
        let (streams, expected) = spec.reference();
        prop_assume!(streams.iter().map(Vec::len).sum::<usize>() + expected.len() <= MAX_ITEMS);
        // The failing item must reach its stage: pick it from that stage's input stream.
        let inputs = &streams[fault.stage];
        prop_assume!(!inputs.is_empty());
        let value = inputs[fault.at.index(inputs.len())];
        let run_spec = spec.clone();
        let results = with_timeout(60, move || {
            run_spec
                .build(Some((fault.stage, value, fault.panic)))
                .feed(0..run_spec.inputs)
                .collect::<Vec<_>>()
        });
        let errors = results.iter().filter(|r| r.is_err()).count();
        prop_assert_eq!(errors, 1, "exactly one error");
        let (last, before) = results.split_last().unwrap();
        let err = last.as_ref().expect_err("the error comes last");
        let name = format!("s{}", fault.stage);
        prop_assert_eq!(err.stage(), Some(name.as_str()));
        if fault.panic {
            prop_assert_eq!(err.kind(), ErrorKind::Panicked);
            let message = format!("injected panic at {value}");
            prop_assert_eq!(err.panic_message(), Some(message.as_str()));
        } else {
            prop_assert_eq!(err.kind(), ErrorKind::Failed);
            prop_assert_eq!(
                std::error::Error::source(err).unwrap().to_string(),
                format!("injected error at {value}")
            );
        }
        prop_assert!(err.item().is_some());
        // Whatever came out before the error is a sub-multiset of the real output.
        let mut remaining = sorted(expected);
        for item in before {
            let x = *item.as_ref().unwrap();
            match remaining.binary_search(&x) {
                Ok(at) => {
                    remaining.remove(at);
                }
                Err(_) => prop_assert!(false, "{} is not an output of this pipeline", x),
            }
        }
    }
}
