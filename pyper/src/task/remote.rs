//! Remote tasks: workers that are processes on any host, fed through NATS JetStream.
//! (Requires the `remote` feature.) How they run is the business of `stage/remote`; this
//! is what users call.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;
use crate::stage::remote::{self, Cluster};
use crate::stage::wire::registry::Registered;
use crate::stage::Body;
use crate::task::process::UNREGISTERED;
use crate::task::Task;

/// Builds a task whose items are run by worker processes on any host, through the NATS
/// JetStream server of `cluster`: see "When one machine is not enough" in the README.
///
/// As with [`process_task!`](crate::process_task!), `f` is the path of a function or a
/// closure that captures nothing, registered where the macro is written; the worker runs
/// the same build of the program (a worker of another build ignores the run), and calls
/// only registered functions, named by their place in its table. Start it on each host as
/// `my_program --pyper-worker nats://host:4222` (or with
/// [`WORKER_ENV`](crate::WORKER_ENV) set), with [`init`](crate::init) the first line of
/// its `main`. Items and outputs cross in postcard, so they must be `Serialize +
/// DeserializeOwned`.
///
/// The task's options keep their meaning: `workers(n)` is how many items each worker
/// process runs at once; `timeout` and `retries` apply to each item, in the worker;
/// `throttle(n)` also bounds the stage's streams on the server to `n` items. Each item is
/// delivered at least once, and each output reaches the pipeline exactly once. An item
/// whose workers keep dying on it fails the run with a [`DeadLetter`](crate::DeadLetter)
/// after [`Cluster::max_deliver`] deliveries. A remote task cannot be `ordered` (yet) or
/// `join`. The stage is named after the function; a closure's is `stage N` unless named.
///
/// ```no_run
/// // `no_run`: it needs a NATS server and workers; `tests/remote.rs` runs this for real.
/// fn checksum(data: Vec<u8>) -> u32 {
///     data.iter().map(|&b| u32::from(b)).sum()
/// }
///
/// fn main() -> Result<(), pyper::Error> {
///     pyper::init(); // a worker process never returns from here
///     let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?;
///     let sums = pyper::remote_task!(&cluster, checksum);
///     let total: u32 = sums.feed((0..100u8).map(|n| vec![n; 3])).map(Result::unwrap).sum();
///     assert_eq!(total, (0..100u32).map(|n| 3 * n).sum::<u32>());
///     Ok(())
/// }
/// ```
///
/// A closure that captures something is refused at compile time:
///
/// ```compile_fail
/// # fn cluster() -> pyper::Cluster { unimplemented!() }
/// let offset = 1u32;
/// let add = pyper::remote_task!(&cluster(), move |x: u32| x + offset);
/// ```
#[allow(clippy::needless_doctest_main)]
#[macro_export]
macro_rules! remote_task {
    ($cluster:expr, $function:path) => {
        $crate::__private::remote_task(
            $cluster,
            $crate::__register!(@path $crate::__private::call_each, $function),
            $function,
        )
        .name($crate::__private::function_name(stringify!($function)))
    };
    ($cluster:expr, $function:expr) => {
        $crate::__private::remote_task(
            $cluster,
            $crate::__register!($crate::__private::call_each, $function),
            $function,
        )
    };
}

/// Builds a remote task from a fallible function: [`remote_task!`](crate::remote_task!)
/// for functions that return a `Result`.
///
/// An `Err` (after the task's retries) fails the run, as a
/// [`try_process_task!`](crate::try_process_task!)'s does: the run's
/// [`Error`](crate::Error) has a [`RemoteError`](crate::RemoteError) with the error's
/// messages as its source, and the item goes to the
/// [`DEAD_LETTER_STREAM`](crate::DEAD_LETTER_STREAM).
///
/// ```no_run
/// use pyper::{try_remote_task, RemoteError};
///
/// fn parse(text: String) -> Result<u32, std::num::ParseIntError> {
///     text.parse()
/// }
///
/// fn main() -> Result<(), pyper::Error> {
///     pyper::init();
///     let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?;
///     let parse = try_remote_task!(&cluster, parse);
///     let err = parse.run("x".to_owned()).next().unwrap().unwrap_err();
///     assert_eq!(err.to_string(), "stage `parse` failed on item 0");
///     let remote = err.downcast_ref::<RemoteError>().unwrap();
///     assert_eq!(remote.message(), "invalid digit found in string");
///     Ok(())
/// }
/// ```
#[allow(clippy::needless_doctest_main)]
#[macro_export]
macro_rules! try_remote_task {
    ($cluster:expr, $function:path) => {
        $crate::__private::try_remote_task(
            $cluster,
            $crate::__register!(@path $crate::__private::call_try, $function),
            $function,
        )
        .name($crate::__private::function_name(stringify!($function)))
    };
    ($cluster:expr, $function:expr) => {
        $crate::__private::try_remote_task(
            $cluster,
            $crate::__register!($crate::__private::call_try, $function),
            $function,
        )
    };
}

/// What [`remote_task!`] expands to: a remote task of the registered `function`, whose
/// type `_f` gives.
pub fn remote_task<I, O>(
    cluster: &Cluster,
    function: &'static Registered,
    _f: fn(I) -> O,
) -> Task<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    let body = remote::body(cluster, function).map_or(Body::Invalid(UNREGISTERED), Body::Remote);
    Task::new(body, None)
}

/// What [`try_remote_task!`] expands to.
pub fn try_remote_task<I, O, E>(
    cluster: &Cluster,
    function: &'static Registered,
    _f: fn(I) -> Result<O, E>,
) -> Task<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let body = remote::body(cluster, function).map_or(Body::Invalid(UNREGISTERED), Body::Remote);
    Task::new(body, None)
}

/// A task whose items a Python function on remote workers runs: what the `pyperflow`
/// Python package's `task(f, remote=cluster)` builds (feature `python`). Its items and
/// outputs are Python objects, pickled on the way; Python workers
/// (`python -m pyper.worker URL`, [`serve_python_worker`](crate::serve_python_worker))
/// import `function` by module and qualified name, give up on a call after `timeout`,
/// and make `retries` more attempts of an item whose call raised or timed out.
#[cfg(feature = "python")]
pub fn python_remote_task(
    cluster: &Cluster,
    function: crate::PythonFunction,
    timeout: Option<std::time::Duration>,
    retries: u32,
) -> Task<crate::PyItem, crate::PyItem> {
    let mut task = Task::new(Body::Remote(remote::python_body(cluster, function)), None);
    // The worker applies both, on its own copy of the item: none is needed here.
    task.options.faults.timeout = timeout;
    task.options.faults.retries = retries;
    task
}
