//! Process tasks: workers that are child processes of the same executable. (Requires the
//! `process` feature.) How they run is the business of `stage/process`; this is what users
//! call.
//!
//! Pyper spells it `task(f, multiprocess=True)`. Here `task(f)` erases `f` into a boxed
//! closure, which cannot be found again in another process, so process tasks have their
//! own constructors that take a function pointer. What they return is an ordinary
//! [`Task`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;
use crate::stage::process;
use crate::stage::Body;
use crate::task::Task;

/// Builds a task whose workers are child processes: see the crate's "Process tasks"
/// section in the README for when that is worth it.
///
/// `f` is a function pointer: a plain function, or a closure that captures nothing. The
/// worker process runs the same executable and finds `f` there, which a capturing
/// closure's state would not survive; a capturing closure does not compile. Items and
/// outputs cross the process boundary serialized, so they must be `Serialize +
/// DeserializeOwned`. A panic in `f` fails the run with [`ErrorKind::Panicked`](crate::ErrorKind)
/// and the worker process goes on. The program must call [`init`](crate::init) first thing in `main`.
///
/// The stage is named `stage N` unless [`named`](crate::Task::name): a function pointer
/// has no name. [`process_task!(f)`](crate::process_task!) names it after `f`.
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
///     let sums = pyper::process_task(checksum).workers(2).name("checksum");
///     let total: u32 = sums.feed((0..100u8).map(|n| vec![n; 3])).map(Result::unwrap).sum();
///     assert_eq!(total, (0..100u32).map(|n| 3 * n).sum::<u32>());
/// }
/// ```
///
/// A closure that captures something is refused at compile time:
///
/// ```compile_fail
/// let offset = 1u32;
/// let add = pyper::process_task(move |x: u32| x + offset);
/// ```
///
/// And so is an item type that cannot be serialized:
///
/// ```compile_fail
/// // An open file cannot be sent to another process.
/// let f: fn(std::fs::File) -> u64 = |file| file.metadata().unwrap().len();
/// let sizes = pyper::process_task(f);
/// ```
#[allow(clippy::needless_doctest_main)]
pub fn process_task<I, O>(f: fn(I) -> O) -> Task<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    Task::new(Body::Process(process::each(f)), None)
}

/// Builds a process task from a fallible function: [`process_task`] for functions that
/// return a `Result`.
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
///     let parse = try_process_task(parse).name("parse");
///     let err = parse.run("x".to_owned()).next().unwrap().unwrap_err();
///     assert_eq!(err.to_string(), "stage `parse` failed on item 0");
///     let remote = err.downcast_ref::<RemoteError>().unwrap();
///     assert_eq!(remote.message(), "invalid digit found in string");
/// }
/// ```
#[allow(clippy::needless_doctest_main)]
pub fn try_process_task<I, O, E>(f: fn(I) -> Result<O, E>) -> Task<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Into<BoxError> + 'static,
{
    Task::new(Body::Process(process::try_each(f)), None)
}

/// [`process_task`], with the stage named after the function, as a thread task's is.
///
/// A function pointer has no name at run time, so `process_task(parse)` is named
/// `stage N`. This macro reads the name where it is written: `process_task!(parse)` is
/// `process_task(parse).name("parse")`, and `process_task!(codec::parse)` is named
/// `parse` too. It takes a function's path; a closure, having no name, goes to
/// [`process_task`] itself.
///
/// ```no_run
/// // `no_run`: see `process_task`.
/// fn checksum(data: Vec<u8>) -> u32 {
///     data.iter().map(|&b| u32::from(b)).sum()
/// }
///
/// fn main() {
///     pyper::init();
///     let sums = pyper::process_task!(checksum).workers(2);
///     let mut output = sums.feed((0..10u8).map(|n| vec![n; 3]));
///     assert_eq!(output.by_ref().count(), 10);
///     assert!(output.metrics().stage("checksum").is_some());
/// }
/// ```
#[macro_export]
macro_rules! process_task {
    ($function:path) => {
        $crate::process_task($function).name($crate::__function_name(stringify!($function)))
    };
}

/// [`try_process_task`], with the stage named after the function: see
/// [`process_task!`](crate::process_task!).
#[macro_export]
macro_rules! try_process_task {
    ($function:path) => {
        $crate::try_process_task($function).name($crate::__function_name(stringify!($function)))
    };
}

/// The last segment of a stringified path (`codec :: parse` → `parse`), for the macros.
#[doc(hidden)]
pub fn __function_name(path: &str) -> String {
    let last = path.rsplit("::").next().unwrap_or(path);
    last.trim().to_owned()
}
