//! Process tasks: workers that are child processes of the same executable. (Requires the
//! `process` feature.) How they run is the business of `stage/process`; this is what users
//! call.
//!
//! Pyper spells it `task(f, multiprocess=True)`. Here `task(f)` erases `f` into a boxed
//! closure, which cannot be found again in another process, so process tasks have their
//! own constructors: macros that register the function where they are written (see
//! `stage/wire/registry.rs`), so that a worker calls only what the program registered.
//! What they return is an ordinary [`Task`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;
use crate::stage::process;
use crate::stage::wire::registry::Registered;
use crate::stage::Body;
use crate::task::Task;

/// Why a process or remote task cannot be built from an entry made by hand.
pub(crate) const UNREGISTERED: &str =
    "the function is not registered: build process and remote tasks with the \
     `process_task!` and `remote_task!` macros";

/// Builds a task whose workers are child processes: see the crate's "Process tasks"
/// section in the README for when that is worth it.
///
/// `f` is the path of a function, or a closure that captures nothing. The macro registers
/// it in the program's table of functions that workers may run, where it is written: the
/// worker process runs the same executable, and calls the function the parent names by
/// its place in that table, never by an address. A capturing closure's state would not
/// survive the crossing, so it does not compile. Items and outputs cross the process
/// boundary serialized, so they must be `Serialize + DeserializeOwned`. A panic in `f`
/// fails the run with [`ErrorKind::Panicked`](crate::ErrorKind) and the worker process
/// goes on. The program must call [`init`](crate::init) first thing in `main`.
///
/// The stage is named after the function (`process_task!(codec::parse)` is `parse`); a
/// closure's stage is `stage N` unless [`named`](crate::Task::name).
///
/// ```no_run
/// // `no_run`: a doctest's `main` is generated, so it cannot call `pyper::init()` first;
/// // the `process_isolation` example runs this for real.
/// fn checksum(data: Vec<u8>) -> u32 {
///     data.iter().map(|&b| u32::from(b)).sum()
/// }
///
/// fn main() {
///     pyper::init();
///     let sums = pyper::process_task!(checksum).workers(2);
///     let total: u32 = sums.feed((0..100u8).map(|n| vec![n; 3])).map(Result::unwrap).sum();
///     assert_eq!(total, (0..100u32).map(|n| 3 * n).sum::<u32>());
/// }
/// ```
///
/// A closure that captures something is refused at compile time:
///
/// ```compile_fail
/// let offset = 1u32;
/// let add = pyper::process_task!(move |x: u32| x + offset);
/// ```
///
/// And so is an item type that cannot be serialized:
///
/// ```compile_fail
/// // An open file cannot be sent to another process.
/// let sizes = pyper::process_task!(|file: std::fs::File| file.metadata().unwrap().len());
/// ```
#[allow(clippy::needless_doctest_main)]
#[macro_export]
macro_rules! process_task {
    ($function:path) => {
        $crate::__private::process_task(
            $crate::__register!(@path $crate::__private::call_each, $function),
            $function,
        )
        .name($crate::__private::function_name(stringify!($function)))
    };
    ($function:expr) => {
        $crate::__private::process_task(
            $crate::__register!($crate::__private::call_each, $function),
            $function,
        )
    };
}

/// Builds a process task from a fallible function: [`process_task!`](crate::process_task!)
/// for functions that return a `Result`.
///
/// An `Err` fails the run like [`try_task`](crate::try_task)'s, but the error's type
/// cannot cross the process boundary: the run's [`Error`](crate::Error) has a
/// [`RemoteError`](crate::RemoteError) as its [`source`](std::error::Error::source), with the error's message,
/// and its own source the message of the error's source, and so on down the chain.
///
/// ```no_run
/// // `no_run`: see `process_task`.
/// use pyper::{try_process_task, RemoteError};
///
/// fn parse(text: String) -> Result<u32, std::num::ParseIntError> {
///     text.parse()
/// }
///
/// fn main() {
///     pyper::init();
///     let parse = try_process_task!(parse);
///     let err = parse.run("x".to_owned()).next().unwrap().unwrap_err();
///     assert_eq!(err.to_string(), "stage `parse` failed on item 0");
///     let remote = err.downcast_ref::<RemoteError>().unwrap();
///     assert_eq!(remote.message(), "invalid digit found in string");
/// }
/// ```
#[allow(clippy::needless_doctest_main)]
#[macro_export]
macro_rules! try_process_task {
    ($function:path) => {
        $crate::__private::try_process_task(
            $crate::__register!(@path $crate::__private::call_try, $function),
            $function,
        )
        .name($crate::__private::function_name(stringify!($function)))
    };
    ($function:expr) => {
        $crate::__private::try_process_task(
            $crate::__register!($crate::__private::call_try, $function),
            $function,
        )
    };
}

/// What [`process_task!`] expands to: a process task of the registered `function`, whose
/// type `_f` gives.
pub fn process_task<I, O>(function: &'static Registered, _f: fn(I) -> O) -> Task<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    let body = process::body(function).map_or(Body::Invalid(UNREGISTERED), Body::Process);
    Task::new(body, None)
}

/// What [`try_process_task!`] expands to.
pub fn try_process_task<I, O, E>(
    function: &'static Registered,
    _f: fn(I) -> Result<O, E>,
) -> Task<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let body = process::body(function).map_or(Body::Invalid(UNREGISTERED), Body::Process);
    Task::new(body, None)
}

/// The last segment of a stringified path (`codec :: parse` → `parse`), for the macros.
pub fn function_name(path: &str) -> String {
    let last = path.rsplit("::").next().unwrap_or(path);
    last.trim().to_owned()
}
