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
//!   marker in its environment. [`init`](crate::init) at the top of `main` turns such a process into a
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

mod body;
mod child;
mod died;
mod launch;
mod protocol;
mod socket;
mod supervisor;
mod worker;

pub(crate) use body::{body, ProcessFn};
pub(crate) use child::{may_spawn, serve_if_worker};
pub use died::WorkerDied;
pub(crate) use launch::{launch, one_by_one};

/// Defines the entry point that lets an integration test's binary serve as a worker of
/// its process tasks. Put it once at the root of the test crate (a file in `tests/`).
///
/// A test binary's `main` is libtest's, so [`init`](crate::init) cannot be its first line. A process
/// stage starts its workers with libtest arguments that run only the test this macro
/// defines, `__pyper_process_worker`, which calls [`init`](crate::init). In a normal test run that test
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
