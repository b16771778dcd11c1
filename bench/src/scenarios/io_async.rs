//! `io-async`: items that each await a 10 ms timer (non-blocking IO) with 1,000 in flight,
//! where the ideal is every group of 1,000 waiting at once; `io-async-wide`, the same with
//! 100,000 in flight, where a driver of many futures shows what each costs it.

use std::sync::OnceLock;

use futures_util::StreamExt;
use pyper::async_task;

use super::common::{sum_output, wall_over_ideal};
use super::{Case, Impl, Sizes};
use crate::report::Results;
use crate::work::{triangle, wait_io_async};

const IN_FLIGHT: usize = 1_000;
const WIDE: usize = 100_000;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
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
        },
        Case {
            name: "io-async-wide",
            about: "items that each await a 10 ms timer (async IO), 100,000 in flight: one wave",
            items: Sizes::new(WIDE as u64, 20_000),
            expected: triangle,
            impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | async_task(wait_io_async).workers(100_000)`, read as a blocking \
                 iterator",
                |n| sum_output(async_task(wait_io_async).workers(WIDE).feed(0..n)),
            ),
            Impl::rust(
                "buffer_unordered",
                "`stream::iter(0..n).map(wait_io_async).buffer_unordered(100_000)` summed on a \
                 multi-thread tokio runtime",
                |n| Ok(summed_unordered(n, WIDE)),
            ),
        ],
            notes: |results| {
                wall_over_ideal(
                    results,
                    "io-async-wide",
                    &["pyper", "buffer_unordered"],
                    WIDE,
                )
            },
        },
    ]
}

fn pyper(n: u64) -> Result<u64, String> {
    sum_output(async_task(wait_io_async).workers(IN_FLIGHT).feed(0..n))
}

fn buffer_unordered(n: u64) -> Result<u64, String> {
    Ok(summed_unordered(n, IN_FLIGHT))
}

fn summed_unordered(n: u64, in_flight: usize) -> u64 {
    // Built once per process, as pyper's own runtime is, so neither measured run pays
    // for starting one.
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("a runtime"));
    runtime.block_on(
        futures_util::stream::iter(0..n)
            .map(wait_io_async)
            .buffer_unordered(in_flight)
            .fold(0, |sum, x| async move { sum + x }),
    )
}

fn notes(results: &Results) -> Vec<String> {
    wall_over_ideal(
        results,
        "io-async",
        &["pyper", "buffer_unordered"],
        IN_FLIGHT,
    )
}
