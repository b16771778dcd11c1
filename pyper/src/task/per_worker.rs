//! Tasks with per-worker state: a setup function runs once in each worker, on the
//! worker's own thread, and builds the function that worker calls for its items (pypeln's
//! `on_start`, the standard pools' `initializer`).

use std::sync::Mutex;

use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::{lock_std, Arc};
use crate::error::BoxError;
use crate::stage::func::{EachFn, SetupFn};
use crate::stage::Body;
use crate::task::Task;

/// Builds a task whose workers each build their own function: `setup` runs once in every
/// worker, on that worker's thread, before its first item, and the function it returns
/// handles that worker's items. The function is dropped on the same thread when the
/// worker exits, whether the run completed, failed or was dropped, so teardown belongs
/// in its state's `Drop`.
///
/// Use it for a resource that must not be shared between workers: a connection per
/// worker, a scratch buffer, a parser with internal state. The function may mutate its
/// state (`FnMut`), and the state must be `Send`, not `Sync`.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use pyper::task_per_worker;
///
/// /// A connection that is opened once per worker and closed when the worker exits.
/// struct Connection { closed: Arc<AtomicUsize>, queries: u32 }
/// impl Connection {
///     fn query(&mut self, id: u32) -> String { self.queries += 1; format!("row {id}") }
/// }
/// impl Drop for Connection {
///     fn drop(&mut self) { self.closed.fetch_add(1, Ordering::SeqCst); }
/// }
///
/// let closed = Arc::new(AtomicUsize::new(0));
/// let lookup = task_per_worker({
///     let closed = Arc::clone(&closed);
///     move || {
///         let mut conn = Connection { closed: Arc::clone(&closed), queries: 0 };
///         move |id: u32| conn.query(id)
///     }
/// })
/// .workers(3);
/// let rows: Vec<String> = lookup.feed(0..10).map(Result::unwrap).collect();
/// assert_eq!(rows.len(), 10);
/// assert_eq!(closed.load(Ordering::SeqCst), 3); // one connection per worker, all closed
/// ```
///
/// A panic in `setup` fails the run like a panic in a task. A per-worker task cannot
/// have a [`timeout`](Task::timeout): an abandoned call would keep the worker's state.
pub fn task_per_worker<I, O, S, F>(setup: S) -> Task<I, O>
where
    S: Fn() -> F + Send + Sync + 'static,
    F: FnMut(I) -> O + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let setup: SetupFn<I, O> = Arc::new(move || {
        let call = Mutex::new(setup());
        let each: EachFn<I, O> = Arc::new(move |item, out: &mut dyn Emit<O>| {
            let output = (lock_std(&call))(item);
            out.emit(output).map_err(Fault::from)
        });
        Ok(each)
    });
    Task::new(Body::PerWorker(setup), None)
}

/// Builds a task with per-worker state whose setup and calls may fail: [`task_per_worker`]
/// for a setup that returns a `Result` (a connection that may be refused) and a function
/// that returns one. Either `Err` fails the run, as with [`try_task`](crate::try_task).
///
/// ```
/// use pyper::try_task_per_worker;
///
/// fn open(url: &str) -> Result<Vec<u32>, String> {
///     if url.is_empty() { Err("no address to connect to".into()) } else { Ok(Vec::new()) }
/// }
///
/// let refused = try_task_per_worker(|| {
///     let mut seen = open("")?;
///     Ok::<_, String>(move |x: u32| -> Result<u32, String> { seen.push(x); Ok(x) })
/// });
/// let error = refused.run(1).next().unwrap().unwrap_err();
/// assert_eq!(std::error::Error::source(&error).unwrap().to_string(), "no address to connect to");
/// ```
pub fn try_task_per_worker<I, O, S, F, E1, E2>(setup: S) -> Task<I, O>
where
    S: Fn() -> Result<F, E1> + Send + Sync + 'static,
    F: FnMut(I) -> Result<O, E2> + Send + 'static,
    E1: Into<BoxError>,
    E2: Into<BoxError>,
    I: Send + 'static,
    O: Send + 'static,
{
    let setup: SetupFn<I, O> = Arc::new(move || {
        let call = Mutex::new(setup().map_err(Into::into)?);
        let each: EachFn<I, O> = Arc::new(move |item, out: &mut dyn Emit<O>| {
            let output = (lock_std(&call))(item).map_err(|error| Fault::Failed(error.into()))?;
            out.emit(output).map_err(Fault::from)
        });
        Ok(each)
    });
    Task::new(Body::PerWorker(setup), None)
}
