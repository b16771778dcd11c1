//! The tokio runtime that async tasks run on.
//!
//! pyper runs async tasks on a runtime of its own: one per process, started on first use,
//! with one worker thread per core. It never spawns onto, or blocks, the caller's runtime.
//! That choice is what lets a pipeline be run and consumed from anywhere:
//!
//! * from plain sync code, with no runtime at all;
//! * from inside a caller's runtime, of either flavour, without "cannot start a runtime
//!   from within a runtime" and without deadlocking a current-thread runtime;
//! * with sync stages that block, which live on threads of their own and never on this
//!   runtime's workers.
//!
//! Resources made on the caller's runtime (a socket, a client) keep working inside async
//! tasks for as long as the caller's runtime is running, as with any two tokio runtimes.
//!
//! One thing cannot work: blocking a thread of this runtime on a run that needs it, as a
//! blocking `next()` on an `Output` inside an async task does. Like tokio's `block_on`
//! inside a runtime, that is refused with a clear error ([`blocking_refused`]) rather
//! than left to deadlock once every thread of the runtime waits so.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::{BoxError, Error};

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// How many worker threads pyper's runtime has: one per core.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The handle of pyper's runtime, starting it on first use.
pub(crate) fn handle() -> Result<Handle, BoxError> {
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(threads())
            .thread_name("pyper-async")
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start pyper's async runtime: {error}"))
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(message) => Err(message.clone().into()),
    }
}

std::thread_local! {
    /// Whether this thread is polling one of pyper's async workers, and so the user's
    /// futures: a thread of pyper's runtime that must never block.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// An async worker's future, marking its thread as [`IN_TASK`] while it is polled.
pub(crate) struct InTask<F>(Pin<Box<F>>);

impl<F: Future> InTask<F> {
    pub(crate) fn new(work: F) -> Self {
        InTask(Box::pin(work))
    }
}

impl<F: Future> Future for InTask<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let outer = IN_TASK.replace(true);
        // Restored even if the poll panics: the thread goes on polling other tasks.
        let _restore = Restore(outer);
        self.0.as_mut().poll(cx)
    }
}

/// Puts [`IN_TASK`] back as it was.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        IN_TASK.set(self.0);
    }
}

/// Why a blocking read is refused inside an async task.
const BLOCKING_INSIDE_A_TASK: &str = "a pyper Output was read with blocking next() on pyper's \
     async runtime, inside an async task, where it would block a thread the runs need (a \
     deadlock once every thread waits so); use into_stream() instead";

/// The error for a blocking wait on an `Output` made inside one of pyper's async tasks, or
/// `None` where blocking is fine.
///
/// Checked once per blocking wait, not per item: a thread-local read.
pub(crate) fn blocking_refused() -> Option<Error> {
    IN_TASK
        .get()
        .then(|| Error::config(None, BLOCKING_INSIDE_A_TASK))
}
