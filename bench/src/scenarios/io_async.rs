//! `io-async`: items that each await a 10 ms timer (non-blocking IO) with 1,000 in flight,
//! where the ideal is every group of 1,000 waiting at once.

use std::sync::OnceLock;

use futures_util::StreamExt;
use pyper::async_task;

use super::common::{sum_output, wall_over_ideal};
use super::{Case, Impl, Sizes};
use crate::report::Results;
use crate::work::{triangle, wait_io_async};

const IN_FLIGHT: usize = 1_000;

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "io-async",
        about: "items that each await a 10 ms timer (async IO), 1,000 in flight",
        items: Sizes::new(10_000, 2_000),
        expected: triangle,
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | async_task(wait_io_async).workers(1000)`, read as a blocking \
                 iterator",
                pyper,
            ),
            Impl::rust(
                "buffer_unordered",
                "`stream::iter(0..n).map(wait_io_async).buffer_unordered(1000)` summed on a \
                 multi-thread tokio runtime",
                buffer_unordered,
            ),
        ],
        notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    sum_output(async_task(wait_io_async).workers(IN_FLIGHT).feed(0..n))
}

fn buffer_unordered(n: u64) -> Result<u64, String> {
    // Built once per process, as pyper's own runtime is, so neither measured run pays
    // for starting one.
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("a runtime"));
    Ok(runtime.block_on(
        futures_util::stream::iter(0..n)
            .map(wait_io_async)
            .buffer_unordered(IN_FLIGHT)
            .fold(0, |sum, x| async move { sum + x }),
    ))
}

fn notes(results: &Results) -> Vec<String> {
    wall_over_ideal(
        results,
        "io-async",
        &["pyper", "buffer_unordered"],
        IN_FLIGHT,
    )
}
