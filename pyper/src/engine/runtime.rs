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

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::BoxError;

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
