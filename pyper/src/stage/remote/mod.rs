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

mod build;
mod cluster;
mod coordinator;
mod envelope;
mod lease;
mod security;
mod worker;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use cluster::{Cluster, DeadLetter, DEAD_LETTER_STREAM, WORKER_ENV};
pub(crate) use coordinator::launch;
pub use security::{
    ClusterBuilder, CREDS_ENV, NKEY_ENV, PASSWORD_ENV, TLS_CA_ENV, TLS_CLIENT_ENV,
    TLS_REQUIRED_ENV, TOKEN_ENV, USER_ENV,
};
pub(crate) use worker::serve_if_worker;

use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::EachFn;
use crate::stage::wire::codec;
use crate::stage::wire::registry::{FunctionRef, Registered};

/// The subject on which a coordinator announces a new run (the input stream's name).
const ANNOUNCE: &str = "pyper.runs";
/// The subject on which a coordinator announces the end of a run (its id).
const STOP: &str = "pyper.stop";
/// The prefix of every stream a run makes.
const STREAM_PREFIX: &str = "PYPER_";
/// The name of the consumer on each stream.
const CONSUMER: &str = "work";
/// The version of the setup and envelopes this build speaks.
const VERSION: u32 = 2;

/// Which function a worker serves, and how: the input stream's description, in JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Setup {
    version: u32,
    /// The run's id: the streams are `PYPER_<id>_IN` and `PYPER_<id>_OUT`.
    id: String,
    /// The stage's name, for messages.
    stage: String,
    /// The build of the coordinator's executable: only a worker of the same build serves
    /// the run.
    build: String,
    /// The registered function to call.
    function: FunctionRef,
    /// Items each worker process runs at once (the stage's `workers`).
    slots: usize,
    timeout_nanos: Option<u64>,
    retries: u32,
    backoff: crate::stage::policy::Backoff,
    /// How long an unacknowledged item waits before redelivery: progress acks are sent
    /// well within it.
    ack_wait_nanos: u64,
    /// How long the run's coordinator may go unheard before its streams are deleted.
    lease_nanos: u64,
}

impl Setup {
    fn in_stream(&self) -> String {
        in_stream(&self.id)
    }

    fn out_subject(&self) -> String {
        out_subject(&self.id)
    }
}

fn in_stream(id: &str) -> String {
    format!("{STREAM_PREFIX}{id}_IN")
}

fn out_stream(id: &str) -> String {
    format!("{STREAM_PREFIX}{id}_OUT")
}

fn in_subject(id: &str) -> String {
    format!("pyper.{id}.in")
}

fn out_subject(id: &str) -> String {
    format!("pyper.{id}.out")
}

/// The coordinator's side of a remote task's function: where workers find it, the
/// cluster it runs on, and how its items and outputs cross.
pub(crate) struct RemoteFn<I, O> {
    cluster: Cluster,
    function: FunctionRef,
    encode: fn(&I) -> Result<Vec<u8>, BoxError>,
    /// Decodes one output and hands it on, through `branch` and the like.
    pub(crate) decode: EachFn<Vec<u8>, O>,
}

/// The body of a remote task calling the registered `function` on the cluster's workers,
/// or why it cannot (an entry made outside the table).
pub(crate) fn body<I, O>(
    cluster: &Cluster,
    function: &'static Registered,
) -> Result<RemoteFn<I, O>, String>
where
    I: Serialize + Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    Ok(RemoteFn {
        cluster: cluster.clone(),
        function: function.reference()?,
        encode: |item| codec::encode(item, "the item").map_err(BoxError::from),
        decode: Arc::new(|bytes: Vec<u8>, out: &mut dyn Emit<O>| {
            let output: O = postcard::from_bytes(&bytes).map_err(|error| {
                Fault::Failed(format!("cannot decode the worker's output: {error}").into())
            })?;
            out.emit(output).map_err(Fault::from)
        }),
    })
}

impl<I, O> RemoteFn<I, O> {
    /// The same function with another output decoder.
    pub(crate) fn with_decode<P>(self, decode: EachFn<Vec<u8>, P>) -> RemoteFn<I, P> {
        RemoteFn {
            cluster: self.cluster,
            function: self.function,
            encode: self.encode,
            decode,
        }
    }
}

impl<I, O> Clone for RemoteFn<I, O> {
    fn clone(&self) -> Self {
        RemoteFn {
            cluster: self.cluster.clone(),
            function: self.function.clone(),
            encode: self.encode,
            decode: Arc::clone(&self.decode),
        }
    }
}
