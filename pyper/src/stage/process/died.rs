//! [`WorkerDied`], the cause of an item's failure when its worker process died.

use std::fmt;
use std::process::ExitStatus;

/// A worker process died while it worked on an item: a crash (an abort, a segfault, a
/// panic with `panic = "abort"`), a kill from outside (the OOM killer, `kill -9`), or an
/// exit. The [`source`](std::error::Error::source) of the run's error naming the item, or
/// one of the causes in a [`RetriesExhausted`](crate::RetriesExhausted).
///
/// ```
/// use std::os::unix::process::ExitStatusExt;
/// use pyper::WorkerDied;
///
/// let died = WorkerDied::new(std::process::ExitStatus::from_raw(11)); // SIGSEGV
/// assert_eq!(died.signal(), Some(11));
/// assert_eq!(died.to_string(), "the worker process died: killed by signal 11 (SIGSEGV)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerDied {
    status: ExitStatus,
}

impl WorkerDied {
    /// A death with this exit status. Pyper makes these itself; this constructor is for
    /// tests.
    pub fn new(status: ExitStatus) -> Self {
        WorkerDied { status }
    }

    /// The worker's exit status.
    pub fn status(&self) -> ExitStatus {
        self.status
    }

    /// The signal that killed the worker, if one did.
    pub fn signal(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(&self.status)
    }

    /// The worker's exit code, if it exited rather than being killed.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for WorkerDied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the worker process died: ")?;
        match (self.signal(), self.code()) {
            (Some(signal), _) => {
                write!(f, "killed by signal {signal}")?;
                match signal_name(signal) {
                    Some(name) => write!(f, " ({name})"),
                    None => Ok(()),
                }
            }
            (None, Some(code)) => write!(f, "exited with code {code}"),
            (None, None) => write!(f, "{}", self.status),
        }
    }
}

impl std::error::Error for WorkerDied {}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => return None,
    })
}
