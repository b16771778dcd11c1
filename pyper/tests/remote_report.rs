//! What the metrics and the report say of a remote stage: its times are its workers'
//! (from their outcomes), its workers are the processes that serve it now, and it can be
//! the bottleneck. Against a real nats-server, as `tests/remote.rs` (see there).

mod common;
mod remote_common;

use std::time::{Duration, Instant};

use common::{serial, wait_until, with_timeout};
use pyper::{remote_task, task, Bound, Cluster};
use remote_common::{server_url, Workers};

pyper::process_test_support!();

/// Computes for about 2 ms: a stage that wants a core all the time.
fn spin(x: u64) -> u64 {
    let started = Instant::now();
    let mut n = x;
    while started.elapsed() < Duration::from_millis(2) {
        n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(n);
    x
}

#[test]
fn the_report_names_a_busy_remote_stage_as_the_bottleneck() {
    let _serial = serial();
    let url = server_url();
    with_timeout(180, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        let pipeline = task(|x: u64| x + 1).name("local")
            | remote_task!(&cluster, spin).name("spin")
            | task(|x: u64| x).name("after");
        let mut output = pipeline.feed(0..1_000u64);
        let total: u64 = output.by_ref().map(Result::unwrap).sum();
        assert_eq!(total, (1..=1_000).sum::<u64>());
        let report = output.report();
        println!("{report}");
        let remote = report.stage("spin").unwrap();
        let metrics = &remote.metrics;
        let seen = metrics.remote.as_ref().expect("a remote stage's metrics");
        assert_eq!(seen.live_workers, 1, "{seen:?}");
        assert_eq!(metrics.workers, 1, "one process of one thread serves it");
        // 1,000 items of 2 ms each: the calls' own time, whatever the machine's load.
        assert!(metrics.busy >= Duration::from_secs(2), "{metrics:?}");
        assert!(metrics.cpu.is_some_and(|cpu| !cpu.is_zero()), "{metrics:?}");
        assert_ne!(remote.bound, Bound::Idle);
        assert_eq!(
            report.bottleneck().map(|stage| &*stage.metrics.name),
            Some("spin")
        );
        // Its cores are its workers' hosts': the advice is about them.
        let advice = report.advice();
        assert!(
            advice[0].contains("`spin`") && advice[0].contains("remote worker process"),
            "{advice:?}"
        );
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}

/// Sleeps 5 ms: a run that lasts long enough for a worker to die in the middle.
fn nap(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x
}

#[test]
fn a_killed_worker_stops_counting_as_serving() {
    let _serial = serial();
    let url = server_url();
    with_timeout(180, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        let victim = workers.start();
        workers.start();
        let mut output = remote_task!(&cluster, nap).workers(2).feed(0..1_000_000u64);
        let live = |output: &pyper::Output<u64>| {
            let metrics = output.metrics();
            let stage = metrics.stage("nap").unwrap();
            let remote = stage.remote.clone().unwrap();
            (remote.live_workers, stage.workers)
        };
        let mut read = 0;
        // Both serve: two processes of two threads each.
        wait_until("both workers serve", || {
            read += output.by_ref().take(20).count();
            live(&output) == (2, 4)
        });
        workers.kill(victim);
        wait_until("the killed worker no longer counts", || {
            read += output.by_ref().take(20).count();
            live(&output) == (1, 2)
        });
        let metrics = output.metrics();
        let seen = metrics.stage("nap").unwrap().remote.clone().unwrap();
        let processes: usize = seen.workers_per_host.iter().map(|(_, n)| n).sum();
        assert_eq!(processes, 2, "every process seen is still listed: {seen:?}");
        assert!(read > 0);
        drop(output);
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}
