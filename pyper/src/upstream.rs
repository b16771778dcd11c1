//! What a `join` task receives: an iterator over its share of the upstream stream.

use std::fmt;

use crate::queue::Receiver;
use crate::run::RunState;
use crate::sync::Arc;
use crate::worker::MAX_BATCH;

/// The input of a [`join`](crate::Task::join) task: an iterator over the items that reach
/// this worker, in arrival order, until the upstream stages have finished.
///
/// With one worker (the default) a join task sees the whole stream. With `workers(n)`,
/// each of the `n` calls gets an arbitrary share of it, and together they see every item
/// once.
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
    input: Option<Receiver<I>>,
    run: Arc<RunState>,
    ready: std::vec::IntoIter<I>,
}

impl<I> Upstream<I> {
    pub(crate) fn new(input: Receiver<I>, run: Arc<RunState>) -> Self {
        Upstream {
            input: Some(input),
            run,
            ready: Vec::new().into_iter(),
        }
    }
}

impl<I> Iterator for Upstream<I> {
    type Item = I;

    fn next(&mut self) -> Option<I> {
        if self.run.is_cancelled() {
            self.input = None;
            return None;
        }
        if let Some(item) = self.ready.next() {
            return Some(item);
        }
        let input = self.input.as_ref()?;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if input.pop_batch(&mut batch, MAX_BATCH).is_none() {
            self.input = None;
            return None;
        }
        self.ready = batch.into_iter();
        self.ready.next()
    }
}

impl<I> fmt::Debug for Upstream<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("buffered", &self.ready.len())
            .field("ended", &self.input.is_none())
            .finish()
    }
}
