//! `process`: the cost of process workers. One trivial stage on 2 worker processes, the
//! same stage on 2 threads, and python-pyper's `multiprocess=True` stage.

use pyper::{process_task, task};

use super::common::sum_output;
use super::{no_notes, Case, Impl, Sizes};
use crate::python;
use crate::report::Results;
use crate::work::{step, stepped_sum};

const SCENARIO: &str = "process";
const STARTUP: &str = "process-startup";

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: SCENARIO,
            about: "a source of integers, then 1 trivial stage (`x + 1`) on 2 workers: worker \
                processes, or threads",
            items: Sizes::new(1_000_000, 50_000),
            expected: |n| stepped_sum(n, 1),
            impls: vec![
                Impl::rust(
                    "pyper",
                    "`feed(0..n) | process_task!(step).workers(2)`: 2 worker processes, items in \
                 batches over Unix sockets with postcard; the measured run includes starting \
                 the 2 processes",
                    pyper,
                ),
                Impl::rust(
                    "pyper-threads",
                    "`feed(0..n) | task(step).workers(2)`: the same stage on 2 threads",
                    threads,
                ),
                Impl::python(
                    "python-pyper",
                    "python-pyper 0.4.4, `task(step, workers=2, multiprocess=True)` after a \
                 generator source task",
                    &python::PROCESS,
                    &[],
                )
                .with_items(Sizes::new(10_000, 2_000)),
            ],
            notes,
        },
        Case {
            name: STARTUP,
            about: "`process` with 1 item: the cost of starting and stopping 2 worker processes",
            items: Sizes::new(1, 1),
            expected: |n| stepped_sum(n, 1),
            impls: vec![Impl::rust(
                "pyper",
                "`feed(0..1) | process_task!(step).workers(2)`",
                pyper,
            )],
            notes: no_notes,
        },
    ]
}

fn pyper(n: u64) -> Result<u64, String> {
    sum_output(process_task!(step).workers(2).feed(0..n))
}

fn threads(n: u64) -> Result<u64, String> {
    sum_output(task(step).workers(2).feed(0..n))
}

/// The time per item of each row, and what a process worker adds to a thread's.
fn notes(results: &Results) -> Vec<String> {
    let per_item_us = |name: &str| {
        let row = results.get(SCENARIO, name)?;
        Some(row.wall_s / row.items as f64 * 1e6)
    };
    let mut notes = Vec::new();
    if let (Some(process), Some(threads)) = (per_item_us("pyper"), per_item_us("pyper-threads")) {
        notes.push(format!(
            "process: {process:.2} µs per item on 2 worker processes vs {threads:.3} µs on 2 \
             threads: a process worker adds {:.2} µs per item (startup included)",
            process - threads
        ));
    }
    if let Some(startup) = results.get(STARTUP, "pyper") {
        notes.push(format!(
            "process: starting and stopping 2 worker processes takes {:.1} ms",
            startup.wall_s * 1e3
        ));
    }
    if let Some(python) = per_item_us("python-pyper") {
        notes.push(format!(
            "process: python-pyper's multiprocess stage takes {python:.0} µs per item"
        ));
    }
    notes
}
