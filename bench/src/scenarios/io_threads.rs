//! `io-threads`: items that wait (a 10 ms sleep standing for blocking IO) on 100 worker
//! threads, where the ideal is every batch of 100 waiting at once.

use pyper::task;

use super::common::{handwritten_chain, sum_output, wall_over_ideal};
use super::{Case, Impl, Sizes};
use crate::report::Results;
use crate::work::{triangle, wait_io};

const WORKERS: usize = 100;

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "io-threads",
        about: "items that each sleep 10 ms (blocking IO), 100 workers",
        items: Sizes::new(2_000, 200),
        expected: triangle,
        impls: vec![
            Impl::rust("pyper", "`feed(0..n) | task(wait_io).workers(100)`", pyper),
            Impl::rust(
                "handwritten",
                "a source thread, 100 threads sharing a `bounded(4096)` crossbeam channel, the \
                 main thread consuming",
                |n| Ok(handwritten_chain(n, &[WORKERS], wait_io)),
            ),
        ],
        notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    sum_output(task(wait_io).workers(WORKERS).feed(0..n))
}

fn notes(results: &Results) -> Vec<String> {
    wall_over_ideal(results, "io-threads", &["pyper", "handwritten"], WORKERS)
}
