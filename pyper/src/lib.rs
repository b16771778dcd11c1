//! Concurrent and parallel data pipelines, in the style of Python's
//! [Pyper](https://pyper-dev.github.io/pyper/): `task(f).workers(n)`, `|` to chain, and
//! branch, join, throttle, ordering and cancellation, all behind one small API.
//!
//! ```
//! use pyper::{task, Upstream};
//!
//! fn get_data(limit: u64) -> impl Iterator<Item = u64> {
//!     0..limit
//! }
//!
//! fn long_computation(mut data: u64) -> u64 {
//!     for i in 0..1_000 {
//!         data = std::hint::black_box(data + i);
//!     }
//!     data
//! }
//!
//! fn sum(data: Upstream<u64>) -> u64 {
//!     data.sum()
//! }
//!
//! let pipeline = task(get_data).branch()
//!     | task(long_computation).workers(2)
//!     | task(sum).join();
//! let total = pipeline.run(40).next().unwrap().unwrap();
//! assert_eq!(total, (0..40).map(|x| x + 499_500).sum::<u64>());
//! ```
//!
//! # Concepts
//!
//! * A [`Task`] is a function plus its options: [`workers`](Task::workers),
//!   [`throttle`](Task::throttle), [`branch`](Task::branch), [`join`](Task::join),
//!   [`ordered`](Task::ordered), [`daemon`](Task::daemon), [`name`](Task::name), and per
//!   item a [`timeout`](Task::timeout) and [`retries`](Task::retries). It runs nothing by
//!   itself. [`task_per_worker`] builds a task whose workers each build their own function
//!   (a connection per worker, say), dropped when the worker exits.
//! * A [`Pipeline`] is tasks composed with `|`. Its type, `Pipeline<I, O>`, is checked at
//!   every joint, so a mismatched stage does not compile.
//! * A run starts from [`Pipeline::run`] (one input, as Pyper's `pipeline(args)`) or
//!   [`Pipeline::feed`] (an iterator of inputs), and yields an [`Output`]: a lazy iterator
//!   of `Result<O, Error>`. [`Pipeline::consume`] is Pyper's `>`.
//! * Every run measures itself: [`Output::metrics`] (live, per stage: items, queue depth,
//!   busy workers, wall and CPU time, time starved and blocked), [`Output::report`] (each
//!   stage classified as CPU-bound, waiting, starved or blocked, the bottleneck, and
//!   advice), [`Output::progress`] (progress bars) and [`Output::record_trace`] (a Chrome
//!   trace timeline). See the README's "Finding the bottleneck".
//!
//! # How it runs
//!
//! Every worker of a sync task is an OS thread of its own: `workers(n)` means exactly `n`
//! threads, started with the run and joined when it ends, so there is no shared pool to
//! exhaust (Pyper deadlocks when its pool runs out). A fed run adds one thread that drives
//! the input iterator. Stages are connected by bounded queues, and items move between them
//! in batches of whatever is ready, so the per-item cost stays in the nanoseconds.
//!
//! With the `async` feature, `async_task` builds tasks from async functions: `workers(n)`
//! is then `n` futures in flight, polled on pyper's own tokio runtime, and any mix of sync
//! and async tasks is one pipeline. `Output::into_stream` reads a run from async code.
//!
//! The first failure in time, an `Err` or a panic, in any stage or in the input iterator,
//! stops every stage and reaches you as an [`Error`] naming the stage, after the workers
//! have stopped. Dropping the [`Output`] stops the run the same way. See
//! `engine/run.rs` for the protocol that guarantees it, and `ARCHITECTURE.md` for the
//! layers and the invariants.
//!
//! # Where this departs from Pyper
//!
//! * **`bind`** becomes closure capture. A shared resource is captured by reference
//!   counting:
//!
//!   ```
//!   use std::sync::Arc;
//!   use pyper::task;
//!
//!   struct Client { base: String }
//!   impl Client {
//!       fn fetch(&self, id: u32) -> String { format!("{}/users/{id}", self.base) }
//!   }
//!
//!   let client = Arc::new(Client { base: "http://localhost".into() });
//!   let fetch = task({
//!       let client = Arc::clone(&client);
//!       move |id: u32| client.fetch(id)
//!   })
//!   .workers(10);
//!   assert_eq!(fetch.run(7).next().unwrap().unwrap(), "http://localhost/users/7");
//!   ```
//!
//!   and a reusable sub-pipeline is a function that returns a [`Pipeline`], the factory
//!   pattern of Pyper's "Resource Management" guide.
//! * **The first stage.** Pyper calls its first task with the run's arguments, so that task
//!   must have one worker and cannot join. Here the input comes from a queue like every
//!   other stage's: [`run`](Pipeline::run) puts one item on it, so the first task is called
//!   once, as in Pyper; [`feed`](Pipeline::feed) streams many, and then a first stage with
//!   several workers processes them in parallel and a first `join` task receives the whole
//!   input. Neither is an error, because neither can go wrong.
//! * **`throttle` defaults to [`DEFAULT_THROTTLE`]** rather than unbounded, so memory does
//!   not depend on the data. `throttle(0)` is Pyper's unbounded queue.
//! * **Errors** come back as values, never as panics: the first failure *in time* (Pyper
//!   reports the first-submitted worker's).
//! * **Ordering** can be kept through multi-worker stages with [`Task::ordered`].
//! * **The GIL.** Pyper needs processes for CPU-bound work; Rust threads run in parallel,
//!   so `workers(n)` on a CPU-bound task uses `n` cores.
//! * **Processes** are for isolation, not speed. With the `process` feature,
//!   `process_task!(f)` runs `f` in worker processes of the same executable, so a crash, an
//!   abort or a hang (with a `timeout`) costs one worker process, not the program. `f` is a
//!   registered function (a path, or a closure that captures nothing) rather than Pyper's
//!   `multiprocess=True` on any task, because a boxed closure cannot be found again in
//!   another process, and a worker runs only what the program registered; the program
//!   calls `pyper::init()` first thing in `main`.
// None: the crate has no `unsafe` code of its own. (The one `allow` is on the statics that
// `process_task!` and `remote_task!` register, which linkme places in a link section.)
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

#[cfg(all(feature = "process", not(unix)))]
compile_error!("the `process` feature needs a Unix system (it uses Unix domain sockets)");

mod engine;
mod error;
mod observe;
mod output;
mod pipeline;
mod stage;
mod task;

#[cfg(feature = "async")]
pub use task::{async_task, try_async_task};

// The examples of the README and of `docs/` are compiled and run as doc tests, each file
// with the features its examples need. A module per file names its tests after it (a
// `--doc remote` filter picks `docs/remote.md`'s), and the package README's too.
#[cfg(doctest)]
mod doc_examples {
    #[cfg(feature = "async")]
    #[doc = include_str!("../../README.md")]
    mod readme {}
    #[doc = include_str!("../README.md")]
    mod package_readme {}
    #[doc = include_str!("../../docs/errors.md")]
    mod errors {}
    #[cfg(feature = "async")]
    #[doc = include_str!("../../docs/observing.md")]
    mod observing {}
    #[doc = include_str!("../../docs/pyper.md")]
    mod from_pyper {}
    #[cfg(feature = "process")]
    #[doc = include_str!("../../docs/process.md")]
    mod process {}
    #[cfg(feature = "remote")]
    #[doc = include_str!("../../docs/remote.md")]
    mod remote {}
}
#[cfg(feature = "async")]
pub use engine::async_upstream::UpstreamStream;
pub use engine::queue::DEFAULT_THROTTLE;
pub use engine::upstream::Upstream;
pub use error::{BoxError, Error, ErrorKind};
pub use observe::metrics::{Metrics, RemoteMetrics, StageKind, StageMetrics, Tuned, METRICS_ENV};
pub use observe::progress::PROGRESS_ENV;
pub use observe::report::{Bound, Report, StageReport};
pub use observe::trace::TRACE_ENV;
#[cfg(feature = "async")]
pub use output::OutputStream;
pub use output::{Canceller, Monitor, Output};
#[cfg(feature = "async")]
pub use pipeline::AsyncConsumer;
pub use pipeline::{Consumer, IntoPipeline, Pipeline};
#[cfg(feature = "process")]
pub use stage::init::init;
pub use stage::policy::{Backoff, Panicked, RetriesExhausted, TimedOut};
#[cfg(feature = "process")]
pub use stage::process::WorkerDied;
#[cfg(feature = "python")]
pub use stage::python::{PyItem, PyShape};
#[cfg(all(feature = "remote", feature = "python"))]
pub use stage::remote::serve_python_worker;
#[cfg(feature = "remote")]
pub use stage::remote::{
    Cluster, ClusterBuilder, DeadLetter, PythonFunction, DEAD_LETTER_STREAM, WORKER_ENV,
};
#[cfg(feature = "process")]
pub use stage::wire::RemoteError;
#[cfg(all(feature = "remote", feature = "python"))]
pub use task::remote::python_remote_task;
/// The `PYPER_NATS_*` environment variables that give remote workers (and, for what a
/// [`ClusterBuilder`] leaves unset, coordinators) their credentials and TLS settings.
#[cfg(feature = "remote")]
pub mod nats_env {
    pub use crate::stage::remote::{
        CREDS_ENV, NKEY_ENV, PASSWORD_ENV, TLS_CA_ENV, TLS_CLIENT_ENV, TLS_REQUIRED_ENV, TOKEN_ENV,
        USER_ENV,
    };
}
/// What the process and remote task macros expand to; not part of the API.
#[cfg(feature = "process")]
#[doc(hidden)]
pub mod __private {
    pub use crate::stage::wire::registry::{Registered, FUNCTIONS};
    pub use crate::stage::wire::{call_each, call_try, Reply};
    pub use crate::task::process::{function_name, process_task, try_process_task};
    #[cfg(feature = "remote")]
    pub use crate::task::remote::{remote_task, try_remote_task};
    pub use linkme;
}
#[cfg(feature = "python")]
pub use task::python_task;
pub use task::{fork, ForkParts, ForkTasks};
pub use task::{task, task_per_worker, try_task, try_task_per_worker, Task};
