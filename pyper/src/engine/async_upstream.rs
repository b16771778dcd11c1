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
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::engine::batch::MAX_BATCH;
use crate::engine::queue::Receiver;
use crate::engine::upstream::Upstream;

/// A wait for the next batch: the receiver, the batch, and the index of its first item
/// (`None` once the stream is over).
pub(crate) type NextBatch<T> = BoxFuture<'static, (Receiver<T>, Vec<T>, Option<u64>)>;

/// Waits for the next batch of `receiver` without blocking a thread.
///
/// The future owns the receiver and hands it back, rather than owning a clone: the queue
/// shares its items fairly among receivers, and a clone would count as a second consumer.
pub(crate) fn next_batch<T: Send + 'static>(receiver: Receiver<T>) -> NextBatch<T> {
    async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let first = receiver.pop_batch_async(&mut batch, MAX_BATCH).await;
        if let Some(meter) = receiver.meter() {
            meter.items_in.add(batch.len() as u64);
        }
        (receiver, batch, first)
    }
    .boxed()
}

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
