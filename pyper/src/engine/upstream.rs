//! What a `join` task receives: an iterator over its share of the upstream stream.

use std::fmt;

use crate::engine::batch::MAX_BATCH;
use crate::engine::queue::Receiver;
use crate::engine::run::RunState;
use crate::engine::sync::Arc;

/// The input of a [`join`](crate::Task::join) task: an iterator over the items that reach
/// this worker, in arrival order, until the upstream stages have finished.
///
/// With one worker (the default) a join task sees the whole stream. With `workers(n)`,
/// each of the `n` calls gets an arbitrary share of it, and together they see every item
/// once.
///
/// An async join task reads an `UpstreamStream` instead (the `async` feature): this
/// iterator's blocking `next` would stall the runtime.
///
/// It ends early, without an error, if the run is cancelled; the run then reports why. A
/// join task may stop reading whenever it likes: dropping the `Upstream` tells the stages
/// above that nobody needs more items, and they stop.
///
/// ```
/// use pyper::{task, Upstream};
///
/// let total = task(|xs: Upstream<u64>| xs.sum::<u64>()).join();
/// let sums: Vec<u64> = total.feed(1..=100).map(Result::unwrap).collect();
/// assert_eq!(sums, [5050]);
/// ```
pub struct Upstream<I> {
    pub(crate) input: Option<Receiver<I>>,
    pub(crate) run: Arc<RunState>,
    pub(crate) ready: std::vec::IntoIter<I>,
    /// The batch a `Stream` consumer is waiting for; it holds `input` meanwhile.
    #[cfg(feature = "async")]
    pub(crate) waiting: Option<crate::engine::next_batch::NextBatch<I>>,
}

impl<I> Upstream<I> {
    pub(crate) fn new(input: Receiver<I>, run: Arc<RunState>) -> Self {
        Upstream {
            input: Some(input),
            run,
            ready: Vec::new().into_iter(),
            #[cfg(feature = "async")]
            waiting: None,
        }
    }

    /// Whether the input is gone for good (a `Stream` reader holds it while it waits).
    fn is_over(&self) -> bool {
        #[cfg(feature = "async")]
        if self.waiting.is_some() {
            return false;
        }
        self.input.is_none()
    }

    /// Lets go of the input, so the stages above stop.
    pub(crate) fn end(&mut self) {
        self.input = None;
        #[cfg(feature = "async")]
        {
            self.waiting = None;
        }
    }
}

// Never pinned in place: it only holds a queue handle and boxes.
impl<I> Unpin for Upstream<I> {}

impl<I> Iterator for Upstream<I> {
    type Item = I;

    fn next(&mut self) -> Option<I> {
        if self.run.is_cancelled() {
            self.end();
            return None;
        }
        if let Some(item) = self.ready.next() {
            return Some(item);
        }
        let input = self.input.as_ref()?;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if input.pop_batch(&mut batch, MAX_BATCH).is_none() {
            self.end();
            return None;
        }
        if let Some(meter) = input.meter() {
            meter.items_in.add(batch.len() as u64);
        }
        self.ready = batch.into_iter();
        self.ready.next()
    }
}

impl<I> fmt::Debug for Upstream<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("buffered", &self.ready.len())
            .field("ended", &self.is_over())
            .finish()
    }
}
