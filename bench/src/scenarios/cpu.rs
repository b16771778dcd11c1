//! `cpu`: CPU-bound items on 2 workers, against the parallel baselines and the sequential
//! loop, all calling the same `long_computation`.

use pyper::task;

use super::common::sum_output;
use super::{Case, Impl, Sizes};
use crate::child::extra;
use crate::report::Results;
use crate::work::{long_computation, long_computation_result, CPU_STEPS};

const WORKERS: usize = 2;

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "cpu",
        about: "items of ~0.5 ms of real CPU work each (the seeds' `long_computation`, a \
                `black_box` loop of 1.6M steps), 2 workers",
        items: Sizes::new(2_000, 200),
        expected: |n| (0..n).map(work_result).fold(0, u64::wrapping_add),
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | task(long_computation).workers(2)`",
                pyper,
            ),
            Impl::rust(
                "rayon",
                "`(0..n).par_bridge().map(long_computation)` on a 2-thread rayon pool",
                rayon,
            ),
            Impl::rust(
                "handwritten",
                "2 scoped std threads, each computing one half of the items",
                |n| Ok(handwritten(n)),
            ),
            Impl::rust("sequential", "a plain loop on one thread", |n| {
                Ok((0..n).map(work).fold(0, u64::wrapping_add))
            }),
        ],
        notes,
    }]
}

fn work(x: u64) -> u64 {
    long_computation(x, CPU_STEPS)
}

fn work_result(x: u64) -> u64 {
    long_computation_result(x, CPU_STEPS)
}

fn pyper(n: u64) -> Result<u64, String> {
    sum_output(task(work).workers(WORKERS).feed(0..n))
}

fn rayon(n: u64) -> Result<u64, String> {
    use rayon::iter::{ParallelBridge, ParallelIterator};

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .map_err(|error| error.to_string())?;
    Ok(pool.install(|| {
        (0..n)
            .par_bridge()
            .map(work)
            .reduce(|| 0, u64::wrapping_add)
    }))
}

fn handwritten(n: u64) -> u64 {
    let half = n / 2;
    std::thread::scope(|scope| {
        let halves = [0..half, half..n]
            .map(|items| scope.spawn(move || items.map(work).fold(0, u64::wrapping_add)));
        halves
            .into_iter()
            .map(|half| half.join().expect("`work` does not panic"))
            .fold(0, u64::wrapping_add)
    })
}

fn notes(results: &Results) -> Vec<String> {
    let Some(sequential) = results.get("cpu", "sequential") else {
        return Vec::new();
    };
    let speedups: Vec<String> = ["pyper", "rayon", "handwritten"]
        .into_iter()
        .filter_map(|name| {
            let row = results.get("cpu", name)?;
            Some(format!(
                "{name} {:.2}x",
                row.items_per_s / sequential.items_per_s
            ))
        })
        .collect();
    let switches: Vec<String> = ["pyper", "rayon", "handwritten", "sequential"]
        .into_iter()
        .filter_map(|name| {
            let row = results.get("cpu", name)?;
            Some(format!(
                "{name} {:.0} + {:.0} ({:.0})",
                row.extra(extra::VOLUNTARY)?,
                row.extra(extra::INVOLUNTARY)?,
                row.extra(extra::CALLER_VOLUNTARY)?
            ))
        })
        .collect();
    vec![
        format!(
            "cpu: speedup over sequential with {WORKERS} workers: {}",
            speedups.join(", ")
        ),
        format!(
            "cpu: one item took {:.3} ms of CPU in the sequential baseline",
            sequential.wall_s / sequential.items as f64 * 1e3
        ),
        format!(
            "cpu: context switches of the measured run, voluntary + involuntary over all \
             threads (the calling thread's voluntary ones), medians: {}",
            switches.join(", ")
        ),
    ]
}
