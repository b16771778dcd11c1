//! Remote tasks against a real nats-server with JetStream.
//!
//! `scripts/test.sh` starts the server (`scripts/nats-server.sh`, which installs it if
//! missing) and passes its URL in `PYPER_NATS_URL`; without it these tests fail and say
//! how to run them. The restart test starts a server of its own with the same script.
//! The workers are this test binary again, started with `PYPER_WORKER` set (their `init`
//! comes from `process_test_support!`). The tests take turns ([`common::serial`]): the
//! workers of one test would otherwise also serve the runs of another.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{serial, wait_until, with_timeout};
use pyper::{remote_task, try_remote_task, Cluster, DeadLetter, Error, RemoteError};

pyper::process_test_support!();

/// The URL of the server `scripts/test.sh` started.
fn server_url() -> String {
    std::env::var("PYPER_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "PYPER_NATS_URL is not set: run these tests with `bash scripts/test.sh`, or start \
             a server with `scripts/nats-server.sh start DIR` and set PYPER_NATS_URL to the \
             URL it prints"
        )
    })
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-server.sh")
}

/// Worker processes of this test binary, killed when dropped.
struct Workers {
    url: String,
    env: Vec<(String, String)>,
    children: Arc<Mutex<Vec<Child>>>,
}

impl Workers {
    fn new(url: &str) -> Self {
        Workers {
            url: url.to_owned(),
            env: Vec::new(),
            children: Arc::default(),
        }
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts one more worker; returns its pid.
    fn start(&self) -> u32 {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "__pyper_process_worker",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(pyper::WORKER_ENV, &self.url)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a worker");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    fn kill(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        let child = children.iter_mut().find(|child| child.id() == pid).unwrap();
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
    }

    /// Restarts, as a supervisor would, every worker that died; returns how many.
    fn restart_dead(&self) -> usize {
        let mut dead = 0;
        {
            let mut children = self.children.lock().unwrap();
            children.retain_mut(|child| match child.try_wait() {
                Ok(Some(_)) => {
                    dead += 1;
                    false
                }
                _ => true,
            });
        }
        for _ in 0..dead {
            self.start();
        }
        dead
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An item's output, with the worker process that made it.
fn tagged(x: u64) -> (u64, u32) {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15), std::process::id())
}

fn expected_checksum(n: u64) -> u64 {
    (0..n).fold(0u64, |sum, x| {
        sum.wrapping_add(x.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    })
}

#[test]
fn a_killed_worker_loses_nothing_and_duplicates_nothing() {
    let _serial = serial();
    const N: u64 = 100_000;
    let url = server_url();
    with_timeout(300, move || {
        let cluster = Cluster::connect(&url)
            .unwrap()
            .ack_wait(Duration::from_secs(2));
        let workers = Workers::new(&url);
        let victim = workers.start();
        workers.start();
        workers.start();
        let stage = remote_task(&cluster, tagged).name("tagged");
        let mut output = stage.feed(0..N);
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let (mut count, mut checksum) = (0u64, 0u64);
        let mut killed = false;
        for result in output.by_ref() {
            let (value, pid) = result.unwrap();
            count += 1;
            checksum = checksum.wrapping_add(value);
            *seen.entry(u64::from(pid)).or_default() += 1;
            if !killed && count == N / 5 {
                workers.kill(victim);
                killed = true;
            }
        }
        assert!(killed);
        assert_eq!(count, N, "every input's output, once");
        assert_eq!(checksum, expected_checksum(N));
        assert!(
            seen.len() >= 2,
            "the items spread over the workers: {seen:?}"
        );
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}
