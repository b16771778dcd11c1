//! The wait for a queue's next batch without blocking a thread, which a join task's
//! `UpstreamStream` and an `OutputStream` poll, and an `Upstream` holds while it waits.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::engine::batch::MAX_BATCH;
use crate::engine::queue::Receiver;

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
