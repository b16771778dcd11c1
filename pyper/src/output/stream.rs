//! The async side of a run's output: [`OutputStream`], the `Stream` of an [`Output`].
//!
//! It is a separate type rather than a `Stream` impl on the iterator, so that code with
//! both `Iterator` and `StreamExt` in scope never meets two `map`s. It waits on its queue
//! through a boxed future that owns the queue's receiver while it waits (see
//! [`next_batch`]), so the stream itself stays `Unpin` and can be polled from any runtime,
//! the caller's included. Waiting for the run's workers at the end, which means joining
//! threads, happens on a blocking task of pyper's runtime, never on the caller's.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::engine::next_batch::{next_batch, NextBatch};
use crate::error::Error;
use crate::output::Output;

/// What an `Output` polled as a `Stream` is waiting for.
pub(crate) enum Waiting<O> {
    Items(NextBatch<O>),
    Workers(BoxFuture<'static, Option<Error>>),
}

/// Waits for the workers of a finished output on pyper's runtime's blocking pool.
fn wait_for_workers<O>(output: &mut Output<O>) -> BoxFuture<'static, Option<Error>> {
    let Some(ending) = output.begin_finish() else {
        return std::future::ready(None).boxed();
    };
    let runtime = match crate::engine::runtime::handle() {
        Ok(runtime) => runtime,
        // Without a runtime there is no blocking pool: wait here, as the iterator would.
        Err(_) => return std::future::ready(ending.wait()).boxed(),
    };
    let waiting = runtime.spawn_blocking(move || ending.wait());
    async move { waiting.await.unwrap_or(None) }.boxed()
}

impl<O> Drop for OutputStream<O> {
    fn drop(&mut self) {
        if !self.0.finished {
            // Async code must not block: the workers are told to stop, and a blocking task
            // of pyper's runtime waits for them.
            self.0.run.cancel();
            drop(wait_for_workers(&mut self.0));
        }
    }
}

/// The outputs of a run as a `Stream`, for async code: made by [`Output::into_stream`].
/// (Requires the `async` feature.)
///
/// It behaves as the [`Output`] iterator does (lazy start, the first error last, cancel
/// on drop) but never blocks the task that polls it, whatever runtime that is. Dropping it
/// cancels the run and returns at once; the workers wind down in the background: async
/// workers are aborted, thread workers stop after their current item.
///
/// ```
/// use futures_util::StreamExt;
/// use pyper::{async_task, task};
///
/// #[tokio::main]
/// async fn main() {
///     let pipeline = async_task(|x: u64| async move { x * 2 }).workers(8) | task(|x: u64| x + 1);
///     let mut total = 0;
///     let mut outputs = pipeline.feed(0..100).into_stream();
///     while let Some(item) = outputs.next().await {
///         total += item.unwrap();
///     }
///     assert_eq!(total, (0..100).map(|x| x * 2 + 1).sum::<u64>());
/// }
/// ```
#[must_use = "a run does nothing until its stream is polled"]
pub struct OutputStream<O>(Output<O>);

impl<O> Output<O> {
    /// Turns the output into a `Stream`. (Requires the `async` feature.)
    pub fn into_stream(self) -> OutputStream<O> {
        OutputStream(self)
    }
}

impl<O> OutputStream<O> {
    /// A handle that cancels this run from anywhere.
    pub fn canceller(&self) -> crate::Canceller {
        self.0.canceller()
    }
}

impl<O> fmt::Debug for OutputStream<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OutputStream").field(&self.0).finish()
    }
}

impl<O: Send + 'static> Stream for OutputStream<O> {
    type Item = Result<O, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut self.get_mut().0;
        loop {
            if let Some(item) = this.ready.next() {
                return Poll::Ready(Some(Ok(item)));
            }
            match &mut this.waiting {
                Some(Waiting::Items(items)) => {
                    let (receiver, batch, first) = std::task::ready!(items.as_mut().poll(cx));
                    this.waiting = None;
                    match first {
                        Some(_) => {
                            this.receiver = Some(receiver);
                            this.ready = batch.into_iter();
                        }
                        None => this.waiting = Some(Waiting::Workers(wait_for_workers(this))),
                    }
                }
                Some(Waiting::Workers(workers)) => {
                    let error = std::task::ready!(workers.as_mut().poll(cx));
                    this.waiting = None;
                    return Poll::Ready(error.map(Err));
                }
                None if this.finished => return Poll::Ready(None),
                None => {
                    let waiting = match (this.ensure_started(), this.receiver.take()) {
                        (true, Some(receiver)) => Waiting::Items(next_batch(receiver)),
                        _ => Waiting::Workers(wait_for_workers(this)),
                    };
                    this.waiting = Some(waiting);
                }
            }
        }
    }
}
