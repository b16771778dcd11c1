//! `overhead-throttle-{1,10,100}`: `overhead` with every stage at `throttle(t)`, against
//! the same pipeline hand-written with crossbeam `bounded(t)` channels: what a user pays
//! who sets a small throttle to bound memory.

use pyper::task;

use super::common::{handwritten_chain_bounded, sum_output};
use super::{no_notes, Case, Impl, Sizes};
use crate::work::{step, stepped_sum};

pub fn cases() -> Vec<Case> {
    vec![
        case(
            "overhead-throttle-1",
            "`overhead` with `throttle(1)` on every stage",
            Sizes::new(50_000, 5_000),
            "`feed(0..n) | task(step).throttle(1)` three times",
            "as `handwritten` in `overhead`, with `bounded(1)` channels",
            |n| sum_output((stage(1) | stage(1) | stage(1)).feed(0..n)),
            |n| Ok(handwritten_chain_bounded(n, &[1, 1, 1], 1, step)),
        ),
        case(
            "overhead-throttle-10",
            "`overhead` with `throttle(10)` on every stage",
            Sizes::new(300_000, 30_000),
            "`feed(0..n) | task(step).throttle(10)` three times",
            "as `handwritten` in `overhead`, with `bounded(10)` channels",
            |n| sum_output((stage(10) | stage(10) | stage(10)).feed(0..n)),
            |n| Ok(handwritten_chain_bounded(n, &[1, 1, 1], 10, step)),
        ),
        case(
            "overhead-throttle-100",
            "`overhead` with `throttle(100)` on every stage",
            Sizes::new(2_000_000, 100_000),
            "`feed(0..n) | task(step).throttle(100)` three times",
            "as `handwritten` in `overhead`, with `bounded(100)` channels",
            |n| sum_output((stage(100) | stage(100) | stage(100)).feed(0..n)),
            |n| Ok(handwritten_chain_bounded(n, &[1, 1, 1], 100, step)),
        ),
    ]
}

fn stage(throttle: usize) -> pyper::Task<u64, u64> {
    task(step).throttle(throttle)
}

fn case(
    name: &'static str,
    about: &'static str,
    items: Sizes,
    pyper_about: &'static str,
    handwritten_about: &'static str,
    pyper: fn(u64) -> Result<u64, String>,
    handwritten: fn(u64) -> Result<u64, String>,
) -> Case {
    Case {
        name,
        about,
        items,
        expected: |n| stepped_sum(n, 3),
        impls: vec![
            Impl::rust("pyper", pyper_about, pyper),
            Impl::rust("handwritten", handwritten_about, handwritten),
        ],
        notes: no_notes,
    }
}
