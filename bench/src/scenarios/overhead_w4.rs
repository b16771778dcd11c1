//! `overhead-w4`: `overhead` with 4 workers on stages 1 and 2 of the 3, so items cross
//! queues with several producers and consumers.

use pyper::task;

use super::common::{handwritten_chain, sum_output};
use super::{no_notes, Case, Impl, Sizes};
use crate::work::{step, stepped_sum};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "overhead-w4",
        about: "`overhead` with 4 workers on stages 1 and 2 of the 3 (stage 3 keeps 1)",
        items: Sizes::new(2_000_000, 100_000),
        expected: |n| stepped_sum(n, 3),
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | task(step).workers(4) | task(step).workers(4) | task(step)`",
                pyper,
            ),
            Impl::rust(
                "handwritten",
                "as in `overhead`, with 4 threads sharing each of stages 1 and 2's input channels",
                |n| Ok(handwritten_chain(n, &[4, 4, 1], step)),
            ),
        ],
        notes: no_notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    let pipeline = task(step).workers(4) | task(step).workers(4) | task(step);
    sum_output(pipeline.feed(0..n))
}
