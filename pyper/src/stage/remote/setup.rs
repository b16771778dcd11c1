//! What names a run on the server: its setup (the input stream's description), the
//! subjects and stream names made from its id, and the protocol's version. A leaf: every
//! file of the remote kind uses it, and it uses none of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::stage::wire::registry::FunctionRef;

/// The subject on which a coordinator announces a new run (the input stream's name).
pub(super) const ANNOUNCE: &str = "pyper.runs";

/// The subject on which a coordinator announces the end of a run (its id).
pub(super) const STOP: &str = "pyper.stop";

/// The prefix of every stream a run makes.
pub(super) const STREAM_PREFIX: &str = "PYPER_";

/// The name of the consumer on each stream.
pub(super) const CONSUMER: &str = "work";

/// The version of the setup and envelopes this build speaks.
pub(super) const VERSION: u32 = 2;

/// Which function a worker serves, and how: the input stream's description, in JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Setup {
    pub(super) version: u32,
    /// The run's id: the streams are `PYPER_<id>_IN` and `PYPER_<id>_OUT`.
    pub(super) id: String,
    /// The stage's name, for messages.
    pub(super) stage: String,
    /// The build of the coordinator's executable: only a worker of the same build serves
    /// the run.
    pub(super) build: String,
    /// The function to call.
    pub(super) function: Callee,
    /// Items each worker process runs at once (the stage's `workers`).
    pub(super) slots: usize,
    pub(super) timeout_nanos: Option<u64>,
    pub(super) retries: u32,
    pub(super) backoff: crate::stage::policy::Backoff,
    /// How long an unacknowledged item waits before redelivery: progress acks are sent
    /// well within it.
    pub(super) ack_wait_nanos: u64,
    /// How long the run's coordinator may go unheard before its streams are deleted.
    pub(super) lease_nanos: u64,
}

/// The function a run's workers call on its items.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Callee {
    /// A Rust function the program registered: only a worker of the same build serves it.
    Registered(FunctionRef),
    /// A Python function (the `pyperflow` package's `task(f, remote=...)`), which a Python
    /// worker (`python -m pyper.worker`) imports by module and qualified name. Its items
    /// and outputs are pickles.
    Python(PythonFunction),
}

/// A Python function as a run names it, and how it is called.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonFunction {
    /// The module the worker imports.
    pub module: String,
    /// The function's qualified name in the module (`Class.method` for a static one).
    pub qualname: String,
    /// Whether the function's result is iterated into several outputs.
    pub branch: bool,
    /// Whether each item is an `(args, kwargs)` pair to call it with (a pipeline's first
    /// stage).
    pub star_args: bool,
}

/// What a Python run's workers must match in place of a build fingerprint: the package's
/// version (its pickles and its helper's calling convention), not the interpreter's
/// executable, which differs from host to host.
pub(super) fn python_fingerprint() -> String {
    format!("python:pyperflow-{}", env!("CARGO_PKG_VERSION"))
}

impl fmt::Display for Callee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Callee::Registered(reference) => reference.fmt(f),
            Callee::Python(function) => {
                write!(
                    f,
                    "Python function `{}:{}`",
                    function.module, function.qualname
                )
            }
        }
    }
}

impl Setup {
    pub(super) fn in_stream(&self) -> String {
        in_stream(&self.id)
    }

    pub(super) fn out_subject(&self) -> String {
        out_subject(&self.id)
    }
}

pub(super) fn in_stream(id: &str) -> String {
    format!("{STREAM_PREFIX}{id}_IN")
}

pub(super) fn out_stream(id: &str) -> String {
    format!("{STREAM_PREFIX}{id}_OUT")
}

pub(super) fn in_subject(id: &str) -> String {
    format!("pyper.{id}.in")
}

pub(super) fn out_subject(id: &str) -> String {
    format!("pyper.{id}.out")
}

/// The dedup id of item `seq` of run `id` in a message of its own, split from a message
/// of several (`tag` "solo") or sent again (`tag` "again<n>").
pub(super) fn solo_id(id: &str, seq: u64, tag: &str) -> String {
    format!("{id}.in.{seq}.{tag}")
}

/// The subject on which workers say they start an item on a redelivery.
pub(super) fn starts_subject(id: &str) -> String {
    format!("pyper.{id}.started")
}
