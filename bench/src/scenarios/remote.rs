//! `remote` and `remote-1ms`: a stage whose 2 workers are processes fed through NATS
//! JetStream, against the same stage on 2 worker processes over Unix sockets and on 2
//! threads, for trivial items and for items of about 1 ms of CPU work.
//!
//! It needs a nats-server with JetStream: the harness runs these scenarios only when
//! `PYPER_NATS_URL` names one (`scripts/nats-server.sh start DIR` prints it), and says so
//! when it skips them.

use std::process::{Child, Command, Stdio};

use pyper::{process_task, remote_task, task, Cluster};

use super::common::sum_output;
use super::{Case, Impl, Sizes};
use crate::report::Results;
use crate::work::{long_computation, long_computation_result, step, stepped_sum, CPU_STEPS};

/// The environment variable naming the server.
pub const URL_ENV: &str = "PYPER_NATS_URL";

pub const TRIVIAL: &str = "remote";
pub const MS: &str = "remote-1ms";

/// Steps of [`long_computation`] in a `remote-1ms` item: twice the `cpu` scenario's, about
/// 1 ms.
const MS_STEPS: u64 = 2 * CPU_STEPS;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: TRIVIAL,
            about: "a source of integers, then 1 trivial stage (`x + 1`) on 2 workers: \
                    remote workers through NATS JetStream, worker processes, or threads",
            items: Sizes::new(50_000, 5_000),
            expected: |n| stepped_sum(n, 1),
            impls: impls(remote_trivial, process_trivial, threads_trivial),
            notes,
        },
        Case {
            name: MS,
            about: "`remote` with items of ~1 ms of CPU work each (`long_computation`, 3.2M \
                    steps)",
            items: Sizes::new(2_000, 200),
            expected: |n| {
                (0..n)
                    .map(|x| long_computation_result(x, MS_STEPS))
                    .fold(0, u64::wrapping_add)
            },
            impls: impls(remote_ms, process_ms, threads_ms),
            notes: |_| Vec::new(),
        },
    ]
}

fn impls(
    remote: fn(u64) -> Result<u64, String>,
    process: fn(u64) -> Result<u64, String>,
    threads: fn(u64) -> Result<u64, String>,
) -> Vec<Impl> {
    vec![
        Impl::rust(
            "pyper",
            "`feed(0..n) | remote_task!(&cluster, f)`, 2 local worker processes (`--pyper-worker \
             URL`) on a loopback nats-server 2.9 with JetStream (file storage); the measured \
             run includes starting the 2 workers and making and deleting the run's streams",
            remote,
        ),
        Impl::rust(
            "pyper-process",
            "`feed(0..n) | process_task!(f).workers(2)`: 2 worker processes over Unix sockets; \
             the measured run includes starting them",
            process,
        ),
        Impl::rust(
            "pyper-threads",
            "`feed(0..n) | task(f).workers(2)`: the same stage on 2 threads",
            threads,
        ),
    ]
}

#[inline(never)]
fn ms_item(x: u64) -> u64 {
    long_computation(x, MS_STEPS)
}

fn remote_trivial(n: u64) -> Result<u64, String> {
    with_workers(|cluster| sum_output(remote_task!(cluster, step).feed(0..n)))
}

fn process_trivial(n: u64) -> Result<u64, String> {
    sum_output(process_task!(step).workers(2).feed(0..n))
}

fn threads_trivial(n: u64) -> Result<u64, String> {
    sum_output(task(step).workers(2).feed(0..n))
}

fn remote_ms(n: u64) -> Result<u64, String> {
    with_workers(|cluster| sum_output(remote_task!(cluster, ms_item).feed(0..n)))
}

fn process_ms(n: u64) -> Result<u64, String> {
    sum_output(process_task!(ms_item).workers(2).feed(0..n))
}

fn threads_ms(n: u64) -> Result<u64, String> {
    sum_output(task(ms_item).workers(2).feed(0..n))
}

/// Runs `run` with 2 worker processes of this binary serving the server of [`URL_ENV`];
/// they are killed and reaped before it returns.
fn with_workers(run: impl FnOnce(&Cluster) -> Result<u64, String>) -> Result<u64, String> {
    let url = std::env::var(URL_ENV).map_err(|_| format!("{URL_ENV} is not set"))?;
    let cluster = Cluster::connect(&url).map_err(|error| error.to_string())?;
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut workers: Vec<Child> = Vec::new();
    for _ in 0..2 {
        let worker = Command::new(&exe)
            .args(["--pyper-worker", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start a worker: {error}"))?;
        workers.push(worker);
    }
    let result = run(&cluster);
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    result
}

/// The ratio of the remote stage to the process stage, per item kind.
fn notes(results: &Results) -> Vec<String> {
    let per_item_us = |scenario: &str, name: &str| {
        let row = results.get(scenario, name)?;
        Some(row.wall_s / row.items as f64 * 1e6)
    };
    let mut notes = Vec::new();
    for scenario in [TRIVIAL, MS] {
        let (Some(remote), Some(process), Some(threads)) = (
            per_item_us(scenario, "pyper"),
            per_item_us(scenario, "pyper-process"),
            per_item_us(scenario, "pyper-threads"),
        ) else {
            continue;
        };
        notes.push(format!(
            "{scenario}: {:.0} items/s through NATS vs {:.0} on 2 worker processes and {:.0} \
             on 2 threads: the remote stage runs at {:.2}× the process stage's throughput",
            1e6 / remote,
            1e6 / process,
            1e6 / threads,
            process / remote
        ));
    }
    notes
}
