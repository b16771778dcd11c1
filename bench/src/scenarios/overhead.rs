//! `overhead`: the cost of moving items, with next to no work. A source of integers and
//! three trivial stages, one worker each, default queues. 10M items: at 2M, pyper's and
//! the batched hand-written runs took 10 to 20 ms, and one run's median could be twice
//! the next one's.

use pyper::task;

use super::common::{handwritten_batched_chain, handwritten_chain, sum_output};
use super::{no_notes, Case, Impl, Sizes};
use crate::python;
use crate::work::{step, stepped_sum};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "overhead",
        about:
            "a source of integers, then 3 trivial stages (`x + 1`), 1 worker each, default queues",
        items: Sizes::new(10_000_000, 100_000),
        expected: |n| stepped_sum(n, 3),
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | task(step) | task(step) | task(step)`",
                pyper,
            ),
            Impl::rust(
                "handwritten",
                "std threads + crossbeam-channel, same topology and capacities: a source thread \
                 feeding a `bounded(4096)` channel, 3 stage threads with `bounded(4096)` between \
                 them, the main thread consuming; one item per send",
                |n| Ok(handwritten_chain(n, &[1, 1, 1], step)),
            ),
            Impl::rust(
                "handwritten-batched",
                "the same threads, each channel carrying `Vec`s of up to 256 items that each \
                 stage maps in place and sends on; `bounded(16)` channels, so each holds as \
                 many items as pyper's default throttle",
                |n| Ok(handwritten_batched_chain(n, 3, step)),
            ),
            Impl::python(
                "python-pyper",
                "python-pyper 0.4.4 (threads), the same pipeline: a generator source task and 3 \
                 trivial tasks, default options",
                &python::OVERHEAD,
                &[],
            )
            .with_items(Sizes::new(200_000, 10_000)),
        ],
        notes: no_notes,
    },
    Case {
        name: "overhead-nometrics",
        about: "the `overhead` pipeline, with metrics on (the default) and off: what \
                always-on metrics cost where items are cheapest",
        items: Sizes::new(10_000_000, 100_000),
        expected: |n| stepped_sum(n, 3),
        impls: vec![
            Impl::rust("pyper", "the `overhead` pipeline, metrics on (the default)", pyper),
            Impl::rust(
                "pyper-nometrics",
                "the same run with `Output::without_metrics()`",
                pyper_without_metrics,
            ),
        ],
        notes: no_notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    let pipeline = task(step) | task(step) | task(step);
    sum_output(pipeline.feed(0..n))
}

fn pyper_without_metrics(n: u64) -> Result<u64, String> {
    let pipeline = task(step) | task(step) | task(step);
    sum_output(pipeline.feed(0..n).without_metrics())
}
