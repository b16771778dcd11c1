//! [`init`]: the one entry point of worker processes, above the kinds that start them.

/// Makes this process serve as a process-task worker if it was started as one; returns at
/// once otherwise. Call it as the first line of `main` in any program that runs
/// [`process_task!`](crate::process_task!)s.
///
/// A process stage starts its workers by running the program's own executable again, with
/// a marker in the environment. In such a worker, `init` connects to the parent, runs the
/// task's function on the items it is sent, and ends the process when the parent is done
/// with it (or gone): it never returns. Whatever `main` does before `init` is done by every
/// worker too, so nothing should come before it.
///
/// Integration tests have no `main` of their own: put
/// [`process_test_support!()`](crate::process_test_support) at the root of the test crate
/// instead. Without either, a process stage fails with an [`Error`](crate::Error) that
/// names the missing line; it never hangs and never starts workers of workers.
///
/// ```
/// fn main() {
///     pyper::init();
///     // The program itself starts here.
/// }
/// ```
// The example is about `main` itself.
#[allow(clippy::needless_doctest_main)]
pub fn init() {
    #[cfg(feature = "remote")]
    crate::stage::remote::serve_if_worker();
    crate::stage::process::serve_if_worker();
}
