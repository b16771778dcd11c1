//! Helpers shared by the reliability tests (`reliability.rs`) and the chaos suite
//! (`chaos.rs`): running one test of the binary in a child process (for the failures that
//! take a whole process down, or that eat memory without end), and counting what a run may
//! leave behind (threads, file descriptors, child processes).
//!
//! Nothing here measures speed: every bound only turns a hang into a failure.
// Each test binary compiles this module on its own and need not use every item in it.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells a re-executed test binary it is the child of
/// [`run_child`], and which test it is the child of.
pub const CHILD_ENV: &str = "PYPER_RELIABILITY_CHILD";

/// Whether this process is the child that [`run_child`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|value| value == test)
}

/// What a child process did.
#[derive(Debug)]
pub struct Child {
    /// Its exit status, or `None` if it overran the bound and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Child {
    /// Whether it exited on its own, with status 0.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// A description for assertion messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(status) => format!("{status}"),
            None => "killed after overrunning its bound (a hang)".to_owned(),
        };
        format!(
            "child status: {status}\n--- child stdout ---\n{}\n--- child stderr ---\n{}",
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// The last few kilobytes of `text`, so that a runaway child cannot flood a message.
fn tail(text: &str) -> &str {
    const KEEP: usize = 8_000;
    if text.len() <= KEEP {
        return text;
    }
    let mut start = text.len() - KEEP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs the test `test` of this very binary in a child process (`--exact test
/// --nocapture`), with [`CHILD_ENV`] set to `test` so that the test knows it is the child,
/// plus `env`. Waits until it exits, or kills it after `bound`, then waits (at most `bound`
/// again) until its stdout and stderr are closed: worker processes it started share them.
pub fn run_child(test: &str, env: &[(&str, &str)], bound: Duration) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start the child test process");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for the child") {
            Some(status) => break Some(status),
            None if started.elapsed() > bound => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let collect = |reader: std::sync::mpsc::Receiver<Vec<u8>>| {
        let bytes = reader.recv_timeout(bound).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Child {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

/// Reads `pipe` to its end on a thread of its own; the bytes arrive on the channel.
fn drain(mut pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = sender.send(bytes);
    });
    receiver
}

/// In a child of [`run_child`]: ends the process with `code` after `bound`, printing why,
/// so that a hang in the child is reported as one rather than as the parent's kill.
pub fn child_watchdog(bound: Duration) {
    std::thread::Builder::new()
        .name("child-watchdog".into())
        .spawn(move || {
            std::thread::sleep(bound);
            println!("CHILD-HANG: the child's body did not finish within {bound:?}");
            eprintln!("CHILD-HANG: the child's body did not finish within {bound:?}");
            std::process::exit(3);
        })
        .expect("start the child's watchdog");
}

/// In a child of [`run_child`]: ends the process with code 4 once its resident memory
/// passes `limit_mb`, printing why, so that a run whose memory grows without end fails
/// before it takes the machine's memory.
pub fn child_memory_guard(limit_mb: u64) {
    std::thread::Builder::new()
        .name("child-memory".into())
        .spawn(move || loop {
            let rss = status_kb("VmRSS") / 1024;
            if rss > limit_mb {
                println!("CHILD-MEMORY: resident memory reached {rss} MB (limit {limit_mb} MB)");
                eprintln!("CHILD-MEMORY: resident memory reached {rss} MB (limit {limit_mb} MB)");
                std::process::exit(4);
            }
            std::thread::sleep(Duration::from_millis(20));
        })
        .expect("start the child's memory guard");
}

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`, `VmSize`...), 0 if absent.
pub fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

/// How many threads this process has, whatever their names.
pub fn all_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count())
}

/// How many file descriptors this process has open.
pub fn open_fds() -> usize {
    // The listing itself opens one descriptor, which it counts: subtract it.
    std::fs::read_dir("/proc/self/fd").map_or(0, |fds| fds.count().saturating_sub(1))
}

/// Polls `condition` every few milliseconds until it holds or `bound` passed; returns
/// whether it held. For waits whose failure the caller reports with its own message.
pub fn eventually(bound: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if started.elapsed() > bound {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
