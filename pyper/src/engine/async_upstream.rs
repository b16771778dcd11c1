//! The async side of a join task's input: [`UpstreamStream`], the `Stream` of an
//! [`Upstream`], and [`next_batch`], the wait for a queue's next batch that both it and an
//! `OutputStream` poll.
//!
//! `UpstreamStream` is a separate type rather than a `Stream` impl on `Upstream`, so that
//! code with both `Iterator` and `StreamExt` in scope never meets two `map`s. It waits
//! through a boxed future that owns the queue's receiver while it waits, so the stream
//! itself stays `Unpin`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::engine::next_batch::next_batch;
use crate::engine::upstream::Upstream;

/// The input of an async [`join`](crate::Task::join) task: a `Stream` over the items that
/// reach this worker, in arrival order. (Requires the `async` feature.)
///
/// Everything said of [`Upstream`] holds; only the reading is async.
///
/// ```
/// use futures_util::StreamExt;
/// use pyper::{async_task, UpstreamStream};
///
/// let total = async_task(|xs: UpstreamStream<u64>| xs.fold(0, |sum, x| async move { sum + x }))
///     .join();
/// assert_eq!(total.feed(1..=100).next().unwrap().unwrap(), 5050);
/// ```
pub struct UpstreamStream<I>(pub(crate) Upstream<I>);

impl<I> fmt::Debug for UpstreamStream<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UpstreamStream").field(&self.0).finish()
    }
}

impl<I: Send + 'static> Stream for UpstreamStream<I> {
    type Item = I;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<I>> {
        let this = &mut self.get_mut().0;
        loop {
            if this.run.is_cancelled() {
                this.end();
                return Poll::Ready(None);
            }
            if let Some(item) = this.ready.next() {
                return Poll::Ready(Some(item));
            }
            let waiting = match &mut this.waiting {
                Some(waiting) => waiting,
                None => match this.input.take() {
                    Some(input) => this.waiting.insert(next_batch(input)),
                    None => return Poll::Ready(None),
                },
            };
            let (input, batch, first) = std::task::ready!(waiting.as_mut().poll(cx));
            this.waiting = None;
            match first {
                Some(_) => {
                    this.input = Some(input);
                    this.ready = batch.into_iter();
                }
                None => this.end(),
            }
        }
    }
}
