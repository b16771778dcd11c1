//! Process tasks: workers that are child processes, for isolation.
//!
//! Rust threads already run in parallel, so a process stage is not about speed. It is
//! about isolation: a native library that crashes, leaks or hangs takes down one worker
//! process, not the pipeline; an item that runs away can be killed; the memory of a worker
//! can be bounded by the operating system.
//!
//! # How it works
//!
//! * Each worker thread of a process stage owns one long-lived worker process: the
//!   program's own executable, started again (`/proc/self/exe` on Linux, the very file the
//!   parent runs even if its path was replaced since; `current_exe()` elsewhere) with a
//!   marker in its environment. [`init`] at the top of `main` turns such a process into a
//!   worker that never returns to `main`.
//! * The two talk over a Unix domain socket (a Linux abstract socket, or a socket file in
//!   the temporary directory elsewhere) whose address is in the marker. Items and outputs
//!   are serialized with serde in postcard's compact format, framed by their length (see
//!   `protocol.rs`; a message carries 256 MiB at most). The worker's stdin is closed; its
//!   stdout and stderr are the parent's, so what a worker prints shows up where the
//!   parent's output does.
//! * The worker thread takes a batch of ready items (as a thread worker does: one at a
//!   time while items are slow, growing while they are quick), sends it in one message,
//!   and reads one reply per item as each completes. Batching amortises the cost of the
//!   round trip; replying per item means that when a worker dies or overruns its
//!   [`timeout`](crate::Task::timeout), the parent knows exactly which item it was on:
//!   that item fails (or is retried, as `stage::policy::Attempts` rules for every kind of
//!   stage), the worker is killed, reaped and replaced, and the rest of the batch is sent
//!   to the replacement. A death is noticed even when the connection stays open (a worker
//!   that forked a child before it died): a wait for a reply checks the process every
//!   50 ms. A retried item is re-sent after the rest of its batch; when order is promised
//!   (an `ordered` stage, or one worker), the batch's outputs wait until every item of the
//!   batch is done, and leave in order.
//! * The worker calls only a function the program registered: `process_task!` puts the
//!   function in a table the linker gathers (`stage/wire/registry.rs`), and the parent
//!   names it by its place there and its name, never by an address. That is why a process
//!   task is built by a macro from a function's path or a closure that captures nothing.
//! * The socket's address holds no secret. The parent accepts a connection only from the
//!   process it started, as the kernel reports the peer (`SO_PEERCRED`); any other process
//!   that connects is hung up on before it is sent anything, and the wait goes on.
//!
//! # Lifetimes
//!
//! A worker process lives as long as its worker thread: it is started on the thread's
//! first batch, replaced when it dies or is killed, told to exit (by the end of its
//! connection) when the stage's input ends, and killed when the run is cancelled, fails or
//! is dropped; either way it is reaped before the thread ends, so no zombie is left. A
//! cancel shuts the stage's connections down (`Children`), which wakes a thread blocked on
//! a reply. A worker whose parent dies is killed with it on Linux (`PR_SET_PDEATHSIG`),
//! even in the middle of an item; elsewhere it sees its connection end and exits when it
//! next waits for an item. A worker whose parent hangs up mid-exchange (a cancel, a
//! dropped output) exits without a word.
//!
//! In a test binary, a worker is libtest running the one test that
//! [`process_test_support!`](crate::process_test_support) defines, so libtest's "running 1
//! test" line appears on stdout once per worker.
//!
//! # Why not `procspawn`
//!
//! [procspawn](https://docs.rs/procspawn) re-executes the binary the same way, and its
//! `Pool` keeps processes alive. But its unit of work is a job with one result: a batch
//! would be one job, so a crash or a kill on timeout would lose the whole batch's results
//! without saying which item caused it, and one job per item would pay a round trip per
//! item. Process stages need long-lived workers fed batches with per-item results streamed
//! back, and a per-item kill and replacement. procspawn also brings `ipc-channel` and a
//! dozen more dependencies; this module needs serde and postcard.
//!
//! # Not Pyper's `multiprocess`
//!
//! Pyper spells it `task(f, multiprocess=True)`. Here `task(f)` erases `f` into a boxed
//! closure, which cannot be found again in another process, so process tasks have their
//! own constructors, [`process_task!`](crate::process_task!) and
//! [`try_process_task!`](crate::try_process_task!), which register the function. What they
//! return is an ordinary [`Task`](crate::Task).

mod child;
mod launch;
mod protocol;
mod supervisor;
mod worker;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitStatus;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use child::init;
pub(crate) use child::may_spawn;
pub(crate) use launch::launch;
pub(crate) use supervisor::{work, ProcessStage};
pub(crate) use worker::Children;

use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::thread::EachFn;
use crate::stage::wire::codec;
use crate::stage::wire::registry::Registered;
use protocol::Setup;

/// The body of a process task calling the registered `function` in the worker processes,
/// or why it cannot (an entry made outside the table).
pub(crate) fn body<I, O>(function: &'static Registered) -> Result<ProcessFn<I, O>, String>
where
    I: Serialize + Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    Ok(ProcessFn {
        setup: Arc::new(Setup {
            function: function.reference()?,
        }),
        encode: encode::<I>,
        decode: Arc::new(|bytes: Vec<u8>, out: &mut dyn Emit<O>| {
            let output: O = postcard::from_bytes(&bytes).map_err(|error| {
                Fault::Failed(format!("cannot decode the worker's output: {error}").into())
            })?;
            out.emit(output).map_err(Fault::from)
        }),
    })
}

fn encode<I: Serialize>(item: &I) -> Result<Vec<u8>, BoxError> {
    codec::encode(item, "the item").map_err(BoxError::from)
}

/// Defines the entry point that lets an integration test's binary serve as a worker of
/// its process tasks. Put it once at the root of the test crate (a file in `tests/`).
///
/// A test binary's `main` is libtest's, so [`init`] cannot be its first line. A process
/// stage starts its workers with libtest arguments that run only the test this macro
/// defines, `__pyper_process_worker`, which calls [`init`]. In a normal test run that test
/// does nothing and passes.
///
/// ```no_run
/// // tests/my_processes.rs (`no_run`: a doctest is no test crate)
/// pyper::process_test_support!();
///
/// #[test]
/// fn squares_in_a_process() {
///     let square = pyper::process_task!(|x: u64| x * x);
///     assert_eq!(square.run(7).next().unwrap().unwrap(), 49);
/// }
/// ```
#[macro_export]
macro_rules! process_test_support {
    () => {
        #[test]
        fn __pyper_process_worker() {
            $crate::init();
        }
    };
}

/// The arguments every worker process is started with. A program that calls [`init`] at
/// the top of `main` never sees them; a libtest binary runs only the test
/// [`process_test_support!`] defines.
const WORKER_ARGS: [&str; 5] = [
    "__pyper_process_worker",
    "--exact",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

/// The parent side of a process task's function: where the worker finds it, and how its
/// items and outputs cross.
pub(crate) struct ProcessFn<I, O> {
    setup: Arc<Setup>,
    encode: fn(&I) -> Result<Vec<u8>, BoxError>,
    /// Decodes one output and hands it on, through `branch` and the like.
    pub(crate) decode: EachFn<Vec<u8>, O>,
}

impl<I, O> ProcessFn<I, O> {
    /// The same function with another output decoder.
    pub(crate) fn with_decode<P>(self, decode: EachFn<Vec<u8>, P>) -> ProcessFn<I, P> {
        ProcessFn {
            setup: self.setup,
            encode: self.encode,
            decode,
        }
    }
}

impl<I, O> Clone for ProcessFn<I, O> {
    fn clone(&self) -> Self {
        ProcessFn {
            setup: Arc::clone(&self.setup),
            encode: self.encode,
            decode: Arc::clone(&self.decode),
        }
    }
}

/// An error returned by a [`try_process_task!`](crate::try_process_task!)'s function in the worker process: its
/// message, and its source's, down the chain. The error value itself stays behind, since
/// its type cannot cross the process boundary.
///
/// ```
/// use std::error::Error;
/// use pyper::RemoteError;
///
/// let remote = RemoteError::new(["cannot open config", "permission denied"]);
/// assert_eq!(remote.to_string(), "cannot open config");
/// assert_eq!(remote.source().unwrap().to_string(), "permission denied");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    message: String,
    source: Option<Box<RemoteError>>,
}

impl RemoteError {
    /// An error with the messages of an error chain, outermost first. Pyper makes these
    /// itself; this constructor is for tests and for wrappers that mimic a process task.
    ///
    /// # Panics
    ///
    /// If `chain` is empty.
    pub fn new<S: Into<String>>(chain: impl IntoIterator<Item = S>) -> Self {
        let mut messages: Vec<String> = chain.into_iter().map(Into::into).collect();
        assert!(!messages.is_empty(), "an error has at least one message");
        let mut error = RemoteError {
            message: messages.pop().expect("checked above"),
            source: None,
        };
        while let Some(message) = messages.pop() {
            error = RemoteError {
                message,
                source: Some(Box::new(error)),
            };
        }
        error
    }

    /// The error's own message (its `Display` in the worker).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

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

/// Binds a listener at a fresh address, and returns the address in the form [`connect`]
/// takes: `@name` for a Linux abstract socket, a path otherwise (a socket file in a new
/// directory that only this user may enter).
fn listen(unique: &str) -> io::Result<(UnixListener, OsString)> {
    let name = format!("pyper-{}-{unique}", std::process::id());
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&address)?;
        Ok((listener, format!("@{name}").into()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::unix::fs::DirBuilderExt;
        let directory = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&directory)?;
        let path = directory.join("socket");
        let listener = UnixListener::bind(&path)?;
        Ok((listener, path.into_os_string()))
    }
}

/// Removes what [`listen`] left in the file system, if anything.
fn unlisten(_address: &OsStr) {
    #[cfg(not(target_os = "linux"))]
    {
        let path = std::path::Path::new(_address);
        let _ = std::fs::remove_file(path);
        if let Some(directory) = path.parent() {
            let _ = std::fs::remove_dir(directory);
        }
    }
}

/// Connects to an address made by [`listen`].
fn connect(address: &OsStr) -> io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        if let Some(name) = address.as_bytes().strip_prefix(b"@") {
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return UnixStream::connect_addr(&address);
        }
    }
    UnixStream::connect(address)
}
