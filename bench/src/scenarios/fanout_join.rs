//! `fanout-join`: every item branches into 1,000 elements, and one join stage sums the
//! whole stream: a million elements through a branch queue and a join.

use pyper::{task, Upstream};

use super::common::sum_output;
use super::{no_notes, Case, Impl, Sizes};
use crate::work::{fan_out, sum_all, triangle, FAN};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "fanout-join",
        about: "each item branches into 1,000 integers, then a join stage sums them all \
                (`items` counts the source items)",
        items: Sizes::new(1_000, 100),
        expected: |n| triangle(n * FAN),
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | task(fan_out).branch() | task(sum_all).join()`",
                pyper,
            ),
            Impl::rust(
                "sequential",
                "`sum_all((0..n).flat_map(fan_out))` on one thread",
                |n| Ok(sum_all((0..n).flat_map(fan_out))),
            ),
        ],
        notes: no_notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    let pipeline = task(fan_out).branch() | task(|all: Upstream<u64>| sum_all(all)).join();
    sum_output(pipeline.feed(0..n))
}
