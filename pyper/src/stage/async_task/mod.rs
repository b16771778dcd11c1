//! Async tasks: a function returning a future, run as `workers(n)` futures in flight on
//! pyper's runtime ([`crate::engine::runtime`]).
//!
//! An async task's body turns one input into a stream of outputs: one for a plain task,
//! any number after `branch`. That one shape lets `branch` over an iterator, `branch` over
//! a `Stream` (Python's async generator) and `join` over a `Stream` share one worker loop
//! ([`crate::stage::async_task::driver`]).

use std::future::Future;

use futures_core::Stream;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use futures_util::FutureExt;

use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stream::UpstreamStream;
use crate::task::{readable_name, Body, Task};

/// An async task's body: the outputs of one input, as a stream.
pub(crate) type AsyncFn<I, O> =
    Arc<dyn Fn(I) -> BoxStream<'static, Result<O, BoxError>> + Send + Sync + 'static>;

/// Turns one output of an async body into a stream of outputs of another type.
pub(crate) type StreamAdapter<O, P> = fn(O) -> BoxStream<'static, Result<P, BoxError>>;

/// Builds a task from an async function: `workers(n)` runs up to `n` of its futures at
/// once, on pyper's own tokio runtime. (Requires the `async` feature.)
///
/// Async tasks suit work that waits: thousands of requests in flight cost little, where
/// thousands of threads would not. They mix freely with sync tasks in one pipeline; sync
/// stages keep threads of their own, so a blocking call there never stalls an async
/// stage. Never block inside an async task (no `std::thread::sleep`, no heavy CPU work):
/// that stalls the runtime. Put such work in a sync task.
///
/// ```
/// use std::time::Duration;
/// use pyper::{async_task, task};
///
/// let fetch = async_task(|id: u64| async move {
///     tokio::time::sleep(Duration::from_millis(10)).await; // a request, say
///     id * 10
/// })
/// .workers(100);
/// let parse = task(|body: u64| body + 1).workers(2);
///
/// let mut out: Vec<u64> = (fetch | parse).feed(0..100).map(Result::unwrap).collect();
/// out.sort();
/// assert_eq!(out, (0..100).map(|id| id * 10 + 1).collect::<Vec<_>>());
/// ```
pub fn async_task<I, O, F, Fut>(f: F) -> Task<I, O>
where
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let name = readable_name::<F>();
    let body: AsyncFn<I, O> = Arc::new(move |item| stream::once(f(item).map(Ok)).boxed());
    Task::new(Body::AsyncEach(body), name)
}

/// Builds a task from a fallible async function: an `Err` stops the run, as with
/// [`try_task`](crate::try_task). (Requires the `async` feature.)
///
/// ```
/// use pyper::try_async_task;
///
/// let check = try_async_task(|x: i32| async move {
///     if x < 0 { Err(format!("{x} is negative")) } else { Ok(x) }
/// });
/// let err = check.feed([1, -2, 3]).find_map(Result::err).unwrap();
/// assert_eq!(err.item(), Some(1));
/// assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "-2 is negative");
/// ```
pub fn try_async_task<I, O, E, F, Fut>(f: F) -> Task<I, O>
where
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let name = readable_name::<F>();
    let body: AsyncFn<I, O> = Arc::new(move |item| {
        stream::once(f(item).map(|result| result.map_err(Into::into))).boxed()
    });
    Task::new(Body::AsyncEach(body), name)
}

impl<I, O> Task<I, O>
where
    I: Send + 'static,
    O: Stream + Send + 'static,
    O::Item: Send + 'static,
{
    /// Hands on every element of each output `Stream`, as it is produced: `branch` for
    /// async generators. Only async tasks can return a stream; on a sync task this is a
    /// configuration error at run start. (Requires the `async` feature.)
    ///
    /// ```
    /// use futures_util::stream::{self, StreamExt};
    /// use pyper::async_task;
    ///
    /// let pages = async_task(|n: u32| async move {
    ///     stream::iter(1..=n).then(|page| async move { format!("page {page}") })
    /// })
    /// .branch_stream();
    /// let out: Vec<String> = Iterator::map(pages.run(3), Result::unwrap).collect();
    /// assert_eq!(out, ["page 1", "page 2", "page 3"]);
    /// ```
    pub fn branch_stream(self) -> Task<I, O::Item> {
        self.adapt_async(
            |output| output.map(Ok).boxed(),
            "branch_stream() needs an async task",
        )
    }
}

impl<I, O> Task<UpstreamStream<I>, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Makes an async task receive the whole upstream stream at once, as an
    /// [`UpstreamStream`]: the async form of [`join`](Task::join). (Requires the `async`
    /// feature.)
    pub fn join(self) -> Task<I, O> {
        Task::from_parts(self.body.join_stream(), self.options, None)
    }
}

/// Wraps an async body so that each of its outputs becomes the stream `adapter` makes.
pub(crate) fn adapt<In, O, P>(body: AsyncFn<In, O>, adapter: StreamAdapter<O, P>) -> AsyncFn<In, P>
where
    In: 'static,
    O: Send + 'static,
    P: Send + 'static,
{
    Arc::new(move |input| body(input).map_ok(adapter).try_flatten().boxed())
}

/// `branch` for async bodies.
pub(crate) fn branch_iter<O>(output: O) -> BoxStream<'static, Result<O::Item, BoxError>>
where
    O: IntoIterator,
    O::IntoIter: Send + 'static,
    O::Item: Send + 'static,
{
    stream::iter(output.into_iter().map(Ok)).boxed()
}

/// `try_branch` for async bodies.
pub(crate) fn try_branch_iter<O, T, E>(output: O) -> BoxStream<'static, Result<T, BoxError>>
where
    O: IntoIterator<Item = Result<T, E>>,
    O::IntoIter: Send + 'static,
    T: Send + 'static,
    E: Into<BoxError> + 'static,
{
    stream::iter(output.into_iter().map(|item| item.map_err(Into::into))).boxed()
}

pub(crate) mod driver;
mod launch;
pub(crate) mod retry;

pub(crate) use launch::{launch_each, launch_join};
