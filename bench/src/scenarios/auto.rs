//! `auto-io`, `auto-cpu`, `auto-mixed`: `auto_workers(max)` (the run tunes each stage's
//! worker count) against the best fixed counts, found by a sweep in the same run, and
//! against the default of one worker.
//!
//! The tuned run is the `pyper` row. The sweep's rows are `fixed-...`; the notes name the
//! best of them and give the tuned run's throughput over it, with what the tuner chose.
//! Ratios are of items/s, so a fixed row may run fewer items than the tuned one when a
//! full run at its count would take minutes (one worker on 10 ms waits): each fixed
//! row of `auto-io` runs 150 items per worker, about 1.5 s at any count.

use pyper::{task, Output, Upstream};

use super::common::sum_output;
use super::{Case, Impl, Sizes};
use crate::child::record;
use crate::report::Results;
use crate::work::{long_computation, long_computation_result, triangle, wait_io};

/// The most workers the tuned IO stages may have.
const IO_MAX: usize = 128;
/// The most workers the tuned CPU stages may have: far more than the cores, so that only
/// the tuner keeps the count down.
const CPU_MAX: usize = 16;
/// Steps of the CPU work: about 0.3 ms per item.
const STEPS: u64 = 1_000_000;

pub fn cases() -> Vec<Case> {
    vec![io_case(), cpu_case(), mixed_case()]
}

fn io_case() -> Case {
    /// A fixed row of `workers` workers, at 150 items per worker (15 in `--quick`).
    fn fixed(name: &'static str, workers: usize, run: fn(u64) -> Result<u64, String>) -> Impl {
        let per_worker = workers as u64;
        Impl::rust(name, "`task(wait_io).workers(n)`", run)
            .with_items(Sizes::new(150 * per_worker, 15 * per_worker))
            .with_warm_up(per_worker)
    }
    Case {
        name: "auto-io",
        about: "items that each sleep 10 ms (blocking IO): tuned (`auto_workers(128)`) \
                against a sweep of fixed counts",
        items: Sizes::new(20_000, 2_000),
        expected: triangle,
        impls: vec![
            Impl::rust("pyper", "`task(wait_io).auto_workers(128)`", io_auto).with_warm_up(128),
            fixed("fixed-1", 1, io_fixed::<1>),
            fixed("fixed-8", 8, io_fixed::<8>),
            fixed("fixed-32", 32, io_fixed::<32>),
            fixed("fixed-64", 64, io_fixed::<64>),
            fixed("fixed-128", 128, io_fixed::<128>),
        ],
        notes: |results| {
            let sweep = ["fixed-8", "fixed-32", "fixed-64", "fixed-128"];
            tuned_notes(results, "auto-io", &sweep, &["tuned-wait_io"])
        },
    }
}

fn io_auto(n: u64) -> Result<u64, String> {
    run_recording(task(wait_io).auto_workers(IO_MAX).feed(0..n), &["wait_io"])
}

fn io_fixed<const WORKERS: usize>(n: u64) -> Result<u64, String> {
    sum_output(task(wait_io).workers(WORKERS).feed(0..n))
}

fn cpu_case() -> Case {
    Case {
        name: "auto-cpu",
        about: "items of ~0.3 ms of CPU work each: tuned (`auto_workers(16)`) against a sweep \
                of fixed counts",
        items: Sizes::new(6_000, 600),
        expected: |n| {
            (0..n)
                .map(|x| long_computation_result(x, STEPS))
                .fold(0, u64::wrapping_add)
        },
        impls: vec![
            Impl::rust("pyper", "`task(compute).auto_workers(16)`", cpu_auto),
            Impl::rust("fixed-1", "`task(compute)`", cpu_fixed::<1>),
            Impl::rust("fixed-2", "`task(compute).workers(2)`", cpu_fixed::<2>),
            Impl::rust("fixed-4", "`task(compute).workers(4)`", cpu_fixed::<4>),
            Impl::rust("fixed-16", "`task(compute).workers(16)`", cpu_fixed::<16>),
        ],
        notes: |results| {
            let sweep = ["fixed-1", "fixed-2", "fixed-4", "fixed-16"];
            tuned_notes(results, "auto-cpu", &sweep, &["tuned-compute"])
        },
    }
}

#[inline(never)]
fn compute(x: u64) -> u64 {
    long_computation(x, STEPS)
}

fn cpu_auto(n: u64) -> Result<u64, String> {
    run_recording(task(compute).auto_workers(CPU_MAX).feed(0..n), &["compute"])
}

fn cpu_fixed<const WORKERS: usize>(n: u64) -> Result<u64, String> {
    sum_output(task(compute).workers(WORKERS).feed(0..n))
}

fn mixed_case() -> Case {
    Case {
        name: "auto-mixed",
        about: "fetch (10 ms of blocking IO) → parse (~0.3 ms of CPU) → join (a sum), like the \
                main example: tuned (`auto_workers` on fetch and parse) against a sweep",
        items: Sizes::new(8_000, 800),
        expected: |n| {
            (0..n)
                .map(|x| long_computation_result(x, STEPS))
                .fold(0, u64::wrapping_add)
        },
        impls: vec![
            Impl::rust(
                "pyper",
                "`task(fetch).auto_workers(128) | task(parse).auto_workers(16) | task(sum).join()`",
                mixed_auto,
            )
            .with_warm_up(256),
            Impl::rust("fixed-1x1", "fetch 1, parse 1", mixed_fixed::<1, 1>)
                .with_items(Sizes::new(150, 15))
                .with_warm_up(1),
            Impl::rust("fixed-32x2", "fetch 32, parse 2", mixed_fixed::<32, 2>).with_warm_up(64),
            Impl::rust("fixed-64x2", "fetch 64, parse 2", mixed_fixed::<64, 2>).with_warm_up(128),
            Impl::rust("fixed-128x2", "fetch 128, parse 2", mixed_fixed::<128, 2>)
                .with_warm_up(256),
            Impl::rust("fixed-64x1", "fetch 64, parse 1", mixed_fixed::<64, 1>).with_warm_up(128),
            Impl::rust("fixed-64x4", "fetch 64, parse 4", mixed_fixed::<64, 4>).with_warm_up(128),
        ],
        notes: |results| {
            let sweep = [
                "fixed-32x2",
                "fixed-64x2",
                "fixed-128x2",
                "fixed-64x1",
                "fixed-64x4",
            ];
            tuned_notes(
                results,
                "auto-mixed",
                &sweep,
                &["tuned-fetch", "tuned-parse"],
            )
        },
    }
}

#[inline(never)]
fn fetch(x: u64) -> u64 {
    wait_io(x)
}

#[inline(never)]
fn parse(x: u64) -> u64 {
    long_computation(x, STEPS)
}

fn sum(items: Upstream<u64>) -> u64 {
    items.fold(0, u64::wrapping_add)
}

fn mixed_auto(n: u64) -> Result<u64, String> {
    let pipeline =
        task(fetch).auto_workers(IO_MAX) | task(parse).auto_workers(CPU_MAX) | task(sum).join();
    run_recording(pipeline.feed(0..n), &["fetch", "parse"])
}

fn mixed_fixed<const FETCH: usize, const PARSE: usize>(n: u64) -> Result<u64, String> {
    let pipeline = task(fetch).workers(FETCH) | task(parse).workers(PARSE) | task(sum).join();
    sum_output(pipeline.feed(0..n))
}

/// Sums a tuned run's outputs, then records the worker count the tuner chose for each of
/// `stages`, as `tuned-<stage>` (and its peak, as `peak-<stage>`).
fn run_recording(mut output: Output<u64>, stages: &[&str]) -> Result<u64, String> {
    let mut total = 0u64;
    for item in output.by_ref() {
        total = total.wrapping_add(item.map_err(|error| error.to_string())?);
    }
    let metrics = output.metrics();
    for name in stages {
        let tuned = metrics.stage(name).and_then(|stage| stage.tuned.clone());
        if let Some(tuned) = tuned {
            record(&format!("tuned-{name}"), tuned.workers as f64);
            record(&format!("peak-{name}"), tuned.peak as f64);
        }
    }
    Ok(total)
}

/// The best row of the sweep, the tuned run's throughput over it, and what the tuner chose.
fn tuned_notes(
    results: &Results,
    scenario: &str,
    sweep: &[&str],
    recorded: &[&str],
) -> Vec<String> {
    let Some(tuned) = results.get(scenario, "pyper") else {
        return Vec::new();
    };
    let rows: Vec<_> = sweep
        .iter()
        .filter_map(|name| results.get(scenario, name))
        .collect();
    let Some(best) = rows
        .iter()
        .max_by(|a, b| a.items_per_s.total_cmp(&b.items_per_s))
    else {
        return Vec::new();
    };
    let swept: Vec<String> = rows
        .iter()
        .map(|row| format!("{} {:.0}/s", row.impl_name, row.items_per_s))
        .collect();
    let chose: Vec<String> = recorded
        .iter()
        .filter_map(|name| {
            let stage = name.trim_start_matches("tuned-");
            let workers = tuned.extra(name)?;
            let peak = tuned.extra(&format!("peak-{stage}"))?;
            Some(format!("{stage} {workers:.0} (peak {peak:.0})"))
        })
        .collect();
    let mut notes = vec![
        format!("{scenario}: sweep: {}", swept.join(", ")),
        format!(
            "{scenario}: tuned / best fixed ({}) = {:.2}x; the tuner chose {}",
            best.impl_name,
            tuned.items_per_s / best.items_per_s,
            chose.join(", ")
        ),
    ];
    let default = results
        .get(scenario, "fixed-1")
        .or_else(|| results.get(scenario, "fixed-1x1"));
    if let Some(default) = default {
        notes.push(format!(
            "{scenario}: tuned / default of 1 worker = {:.1}x",
            tuned.items_per_s / default.items_per_s
        ));
    }
    notes
}
