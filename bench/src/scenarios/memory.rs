//! `memory`: peak RSS of a long stream through throttled stages, at two sizes. With
//! bounded queues the peak must not grow with the stream: the two records compare
//! 10,000,000 items against 100,000.

use pyper::task;

use super::common::sum_output;
use super::{no_notes, Case, Impl, Sizes};
use crate::report::Results;
use crate::work::{step, stepped_sum};

const THROTTLE: usize = 1_000;

pub fn cases() -> Vec<Case> {
    let case = |name, items, notes: fn(&Results) -> Vec<String>| Case {
        name,
        about: "a source of integers through 3 trivial stages with `throttle(1000)`; \
                the figure that matters is peak RSS",
        items,
        expected: |n| stepped_sum(n, 3),
        impls: vec![Impl::rust(
            "pyper",
            "`feed(0..n) | task(step).throttle(1000)` x 3",
            pyper,
        )],
        notes,
    };
    vec![
        case("memory-10m", Sizes::new(10_000_000, 1_000_000), notes),
        case("memory-100k", Sizes::new(100_000, 10_000), no_notes),
    ]
}

fn pyper(n: u64) -> Result<u64, String> {
    let pipeline = task(step).throttle(THROTTLE)
        | task(step).throttle(THROTTLE)
        | task(step).throttle(THROTTLE);
    sum_output(pipeline.feed(0..n))
}

fn notes(results: &Results) -> Vec<String> {
    let (Some(big), Some(small)) = (
        results.get("memory-10m", "pyper"),
        results.get("memory-100k", "pyper"),
    ) else {
        return Vec::new();
    };
    vec![format!(
        "memory: peak RSS {} items {:.1} MiB vs {} items {:.1} MiB: ratio {:.2}x",
        big.items,
        big.peak_rss_kb as f64 / 1024.0,
        small.items,
        small.peak_rss_kb as f64 / 1024.0,
        big.peak_rss_kb as f64 / small.peak_rss_kb as f64
    )]
}
