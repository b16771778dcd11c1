//! Remote tasks: a stage whose workers are processes on any number of hosts, fed through
//! NATS JetStream.
//!
//! # How it works
//!
//! * The program that runs the pipeline (the *coordinator*) makes, per remote stage and
//!   per run, two work-queue streams on the server: `PYPER_<id>_IN` for the stage's items
//!   and `PYPER_<id>_OUT` for its outcomes, each with one durable pull consumer. `<id>`
//!   is unique to the stage's run. The input stream's description carries the run's
//!   [`Setup`]: the build of the executable (`build.rs`), which registered function to
//!   call, by its place in the table of registered functions (`stage/wire/registry.rs`),
//!   and the stage's fault policy.
//! * A worker process is the same executable started with `--pyper-worker <url>` (or
//!   with [`WORKER_ENV`] set): [`init`](crate::init) turns it into a worker that never
//!   returns to `main` (`worker.rs`). It looks for input streams on the server (at once
//!   when a run is announced, and every second), serves every run whose build is its own,
//!   ignores the others (saying so once each), and leaves a run when its streams go.
//! * Items and outcomes travel in versioned envelopes, in postcard (`envelope.rs`). A
//!   worker takes a few items at a time from the consumer, calls the function on each,
//!   publishes each outcome with the dedup id `<id>.<item>.0` (`Nats-Msg-Id`), waits for
//!   the server to acknowledge the publishes, and only then acknowledges the items. A
//!   worker that dies leaves its items unacknowledged, and the server delivers them to
//!   another worker after `ack_wait`: delivery is at least once. The server drops an
//!   outcome published twice within its duplicate window, and the coordinator keeps one
//!   bit per item and drops any outcome after the first: the outputs the program sees are
//!   exactly once.
//! * An item whose worker keeps dying on it is delivered at most
//!   [`Cluster::max_deliver`] times; then the server tells the coordinator (an advisory),
//!   which copies the item to the dead-letter stream [`DEAD_LETTER_STREAM`] and fails the
//!   run with [`DeadLetter`]. An item whose function fails (after its retries, applied by
//!   the worker) goes to the same stream, and its error is the run's.
//! * The coordinator (`coordinator.rs`) pumps the stage's input into the input stream and
//!   collects outcomes into its output queue. The stream holds at most `throttle` items:
//!   a full stream refuses a publish (error 10077), and the coordinator backs off and
//!   publishes again. The run is complete when every item it published has an outcome.
//!   However the run ends (complete, failed, cancelled, the output dropped), the
//!   coordinator deletes both streams, with their consumers, and announces the stop, so
//!   the workers drop that run's work.

mod body;
mod build;
mod cluster;
mod coordinator;
mod envelope;
mod lease;
mod nats;
#[cfg(feature = "python")]
mod python;
mod security;
mod setup;
mod worker;

pub(crate) use body::{body, RemoteFn};
pub use cluster::{Cluster, ClusterBuilder, DeadLetter, WORKER_ENV};
pub(crate) use coordinator::launch;
pub use nats::DEAD_LETTER_STREAM;
#[cfg(feature = "python")]
pub(crate) use python::body as python_body;
pub use security::{
    CREDS_ENV, NKEY_ENV, PASSWORD_ENV, TLS_CA_ENV, TLS_CLIENT_ENV, TLS_REQUIRED_ENV, TOKEN_ENV,
    USER_ENV,
};
pub use setup::PythonFunction;
pub(crate) use worker::serve_if_worker;
#[cfg(feature = "python")]
pub use worker::serve_python_worker;
