//! `io-threads`: items that wait (a 10 ms sleep standing for blocking IO) on 100 worker
//! threads, where the ideal is every batch of 100 waiting at once.

use pyper::task;

use super::common::{handwritten_chain, sum_output};
use super::{Case, Impl, Sizes};
use crate::report::Results;
use crate::work::{triangle, wait_io, IO_WAIT};

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

/// The wall time of a perfect run: every group of 100 items waits at once.
fn ideal_s(items: u64) -> f64 {
    items.div_ceil(WORKERS as u64) as f64 * IO_WAIT.as_secs_f64()
}

fn notes(results: &Results) -> Vec<String> {
    ["pyper", "handwritten"]
        .into_iter()
        .filter_map(|name| {
            let row = results.get("io-threads", name)?;
            let ideal = ideal_s(row.items);
            Some(format!(
                "io-threads: {name} wall / ideal ({:.0} ms) = {:.2}x",
                ideal * 1e3,
                row.wall_s / ideal
            ))
        })
        .collect()
}
