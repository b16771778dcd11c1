//! A remote run's life on the server: its streams go when its program dies, however it
//! dies, and a run that no worker serves says so (or fails, if asked to). Needs the server
//! `scripts/test.sh` starts, as `tests/remote.rs` does.

mod common;
mod remote_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{serial, with_timeout};
use pyper::{remote_task, Cluster};
use remote_common::{server_url, Workers};

pyper::process_test_support!();

fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x
}

fn quick(x: u64) -> u64 {
    x + 1
}

/// Run as a process of its own by the test below: a program that runs a remote stage
/// with a lease of `PYPER_TEST_LEASE_MS`, until it is killed.
#[test]
fn __coordinator() {
    let Ok(url) = std::env::var("PYPER_TEST_COORDINATE") else {
        return;
    };
    let lease: u64 = std::env::var("PYPER_TEST_LEASE_MS")
        .unwrap()
        .parse()
        .unwrap();
    let cluster = Cluster::connect(&url)
        .unwrap()
        .lease(Duration::from_millis(lease));
    for (n, result) in remote_task!(&cluster, slow).feed(0..).enumerate() {
        result.unwrap();
        if n == 10 {
            println!("pyper-test: coordinating");
        }
    }
}

#[test]
fn a_killed_program_leaves_no_streams_and_the_workers_go_on() {
    let _serial = serial();
    with_timeout(120, || {
        let url = server_url();
        let cluster = Cluster::connect(&url).unwrap();
        let before = cluster.run_streams().unwrap();
        let new_streams = || -> Vec<String> {
            let now = cluster.run_streams().unwrap();
            now.into_iter()
                .filter(|name| !before.contains(name))
                .collect()
        };
        let workers = Workers::new(&url);
        workers.start();
        let lease = Duration::from_secs(2);
        let mut program = Command::new(std::env::current_exe().unwrap())
            .args(["__coordinator", "--exact", "--nocapture", "-q"])
            .env("PYPER_TEST_COORDINATE", &url)
            .env("PYPER_TEST_LEASE_MS", lease.as_millis().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        let stdout = program.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        while !said.contains("pyper-test: coordinating") {
            said = lines.next().expect("the program runs").unwrap();
        }
        let streams = new_streams();
        assert_eq!(streams.len(), 2, "its two streams: {streams:?}");
        program.kill().unwrap(); // SIGKILL: no chance to clean up
        program.wait().unwrap();
        let killed = Instant::now();
        while !new_streams().is_empty() {
            assert!(killed.elapsed() < Duration::from_secs(60), "stray streams");
            std::thread::sleep(Duration::from_millis(50));
        }
        // For the record (the bound is the lease, twice over, with a sweep's second).
        println!(
            "the streams went {:.1} s after the kill (lease {:.0} s)",
            killed.elapsed().as_secs_f64(),
            lease.as_secs_f64()
        );
        // The same worker serves a new run.
        let total: u64 = remote_task!(&cluster, quick)
            .feed(0..100)
            .map(Result::unwrap)
            .sum();
        assert_eq!(total, (1..=100).sum::<u64>());
        assert!(new_streams().is_empty());
    });
}

#[test]
fn a_run_without_workers_says_so_and_can_fail() {
    let _serial = serial();
    with_timeout(120, || {
        let url = server_url();
        let cluster = Cluster::connect(&url)
            .unwrap()
            .no_worker_notice(Duration::from_millis(500))
            .fail_without_workers(Duration::from_secs(3));
        let before = cluster.run_streams().unwrap();
        let mut output = remote_task!(&cluster, quick).feed(0..10);
        let monitor = output.monitor();
        let watcher = std::thread::spawn(move || {
            let started = Instant::now();
            loop {
                let metrics = monitor.metrics();
                let unserved = metrics
                    .stage("quick")
                    .and_then(|stage| stage.remote.as_ref())
                    .and_then(|remote| remote.unserved);
                if unserved.is_some() {
                    return unserved;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let error = output
            .by_ref()
            .find_map(Result::err)
            .expect("the run fails");
        assert_eq!(error.stage(), Some("quick"));
        let why = std::error::Error::source(&error).unwrap().to_string();
        assert!(why.contains("no worker took an item"), "{why}");
        assert!(why.contains("--pyper-worker"), "{why}");
        assert!(watcher.join().unwrap().is_some(), "the metrics said so");
        let after = cluster.run_streams().unwrap();
        assert!(after.iter().all(|name| before.contains(name)), "{after:?}");
    });
}
