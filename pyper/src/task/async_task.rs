//! Async tasks: a function returning a future, run as `workers(n)` futures in flight on
//! pyper's runtime. (Requires the `async` feature.) How they run is the business of
//! `stage/async_task`; this is what users call.

use std::future::Future;

use futures_core::Stream;
use futures_util::stream::StreamExt;

use crate::engine::async_upstream::UpstreamStream;
use crate::error::BoxError;
use crate::stage::async_task;
use crate::stage::Body;
use crate::task::{readable_name, Task};

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
    Task::new(Body::AsyncEach(async_task::each(f)), readable_name::<F>())
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
    Task::new(
        Body::AsyncEach(async_task::try_each(f)),
        readable_name::<F>(),
    )
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
