//! A worker process that dies after forking a grandchild, which holds its connection open:
//! the fixture of the process and reliability tests that check such a death is noticed.

use std::path::PathBuf;
use std::time::Duration;

/// Where a worker that forks writes its grandchild's pid: named after the test process
/// (the worker's parent) and the item.
pub fn grandchild_file(test_process: u32, item: u64) -> PathBuf {
    std::env::temp_dir().join(format!("pyper-grandchild-{test_process}-{item}"))
}

/// On item `trigger`, forks a grandchild that sleeps a minute (holding the worker's
/// connection), then aborts.
pub fn fork_then_abort_on(x: u64, trigger: u64) -> u64 {
    if x == trigger {
        // SAFETY: the forked child only sleeps and `_exit`s, both async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::thread::sleep(Duration::from_secs(60));
            // SAFETY: ends the forked child without running the worker's exit handlers.
            unsafe { libc::_exit(0) }
        }
        let file = grandchild_file(std::os::unix::process::parent_id(), x);
        let _ = std::fs::write(file, pid.to_string());
        std::process::abort();
    }
    x
}

pub fn fork_then_abort_on_3(x: u64) -> u64 {
    fork_then_abort_on(x, 3)
}

pub fn fork_then_abort_on_4(x: u64) -> u64 {
    fork_then_abort_on(x, 4)
}

/// Kills the grandchild forked on item `.0`, if any, when dropped (also when the test
/// fails).
pub struct KillGrandchild(pub u64);

impl Drop for KillGrandchild {
    fn drop(&mut self) {
        let file = grandchild_file(std::process::id(), self.0);
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
        {
            // SAFETY: sends a signal to the grandchild, which only sleeps.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(file);
    }
}
