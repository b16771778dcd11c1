//! Work stealing: no item waits behind a slow one while a worker of its stage is idle.
//!
//! A worker takes up to a batch of ready items at once, for throughput. If one of them is
//! suddenly slow (it blocks), the rest of the batch would wait for it while the stage's
//! other workers have nothing to do. So a worker of a stage with several workers keeps its
//! batch on a *shelf* ([`Hands`]) that its siblings can reach: it takes one item at a time
//! from it (one uncontended lock per item), and puts each item's outputs back on it.
//!
//! A worker that finds its input queue empty, before it waits, *steals*: it takes the back
//! half of a sibling's unstarted items (a contiguous run of positions, so ordered stages
//! keep theirs), and hands on the outputs its siblings have gathered. The queue and the
//! shelves keep one invariant, under the queue's lock: a worker only waits for input when
//! every sibling's shelf is empty, and items only reach a shelf from the queue, so a push
//! wakes it before a sibling can hold unstarted items again (see `Receiver::refill`).

use std::collections::VecDeque;

use crate::engine::batch::{Emit, Pace, Stop};
use crate::engine::queue::{Sender, Shelf};
use crate::engine::run::RunState;
use crate::engine::sync::{self, Instant, Mutex};

/// A worker's batch in hand: the items it has not started, and the outputs it has not
/// handed on, both reachable by its idle siblings.
pub(crate) struct Hands<I, O> {
    state: Mutex<HandsState<I, O>>,
    /// Where the gathered outputs go, whoever hands them on.
    output: Sender<O>,
    /// Hand over once this many outputs are gathered.
    max: usize,
}

struct HandsState<I, O> {
    items: VecDeque<(u64, I)>,
    outputs: Vec<O>,
}

impl<I, O> Hands<I, O> {
    pub(crate) fn new(output: Sender<O>, max: usize) -> Self {
        Hands {
            state: Mutex::new(HandsState {
                items: VecDeque::new(),
                outputs: Vec::new(),
            }),
            output,
            max,
        }
    }

    /// Puts `outputs` (the last item's) with the gathered ones and takes the next item.
    ///
    /// Returns the outputs to hand over now, if any: a batch's worth gathered, or a hungry
    /// consumer (see `should_hand_over`). The caller pushes them outside the lock.
    #[inline]
    pub(crate) fn next(&self, outputs: &mut Vec<O>, ready: &mut Vec<O>) -> Option<(u64, I)> {
        let mut state = sync::lock(&self.state);
        if !outputs.is_empty() {
            state.outputs.append(outputs);
            if crate::engine::batch::should_hand_over(&state.outputs, self.max, &self.output) {
                std::mem::swap(&mut state.outputs, ready);
            }
        }
        state.items.pop_front()
    }

    /// Takes every gathered output, and `outputs`, to hand over now.
    pub(crate) fn take_outputs(&self, outputs: &mut Vec<O>, ready: &mut Vec<O>) {
        let mut state = sync::lock(&self.state);
        ready.append(&mut state.outputs);
        ready.append(outputs);
    }

    pub(crate) fn output(&self) -> &Sender<O> {
        &self.output
    }
}

impl<I: Send, O: Send> Shelf<I> for Hands<I, O> {
    fn deposit(&self, items: &mut Vec<(u64, I)>) {
        sync::lock(&self.state).items.extend(items.drain(..));
    }

    fn steal(&self, into: &mut Vec<(u64, I)>, max: usize) {
        let mut state = sync::lock(&self.state);
        let len = state.items.len();
        let keep = (len / 2).max(len.saturating_sub(max.max(1)));
        into.extend(state.items.drain(keep..));
    }

    fn hand_on(&self) {
        let mut outputs = std::mem::take(&mut sync::lock(&self.state).outputs);
        if outputs.is_empty() {
            self.output.announce();
        } else {
            // Refused only when nobody reads any more: the outputs are not needed then.
            let _ = self.output.push_all(&mut outputs);
        }
    }
}

/// Where a worker with a shared shelf emits: the current item's outputs gather here and
/// join the shelf when the worker takes its next item, or leave at once when a batch's
/// worth is gathered or the body's iterator may block.
pub(crate) struct Gather<'a, I, O> {
    pub(crate) hands: &'a Hands<I, O>,
    pub(crate) run: &'a RunState,
    /// The current item's outputs.
    pub(crate) outputs: Vec<O>,
    ready: Vec<O>,
    pace: Pace,
}

impl<'a, I, O> Gather<'a, I, O> {
    pub(crate) fn new(hands: &'a Hands<I, O>, run: &'a RunState) -> Self {
        Gather {
            hands,
            run,
            outputs: Vec::new(),
            ready: Vec::new(),
            pace: Pace::new(),
        }
    }

    /// Takes the next item off the shelf, after putting the last one's outputs on it.
    #[inline]
    pub(crate) fn next_item(&mut self) -> Result<Option<(u64, I)>, Stop> {
        let next = self.hands.next(&mut self.outputs, &mut self.ready);
        self.push_ready()?;
        Ok(next)
    }

    /// Hands on everything gathered, on the shelf and here, and wakes the consumer for
    /// it: the worker may not push again soon.
    pub(crate) fn flush(&mut self) -> Result<(), Stop> {
        self.hands.take_outputs(&mut self.outputs, &mut self.ready);
        self.push_ready()?;
        self.hands.output().announce();
        Ok(())
    }

    /// Pushes what is ready, lazily: the worker goes on with its batch, and announces
    /// before it waits (the queue's `refill` hands on every shelf before it parks).
    fn push_ready(&mut self) -> Result<(), Stop> {
        if self.ready.is_empty() {
            return Ok(());
        }
        self.hands
            .output()
            .push_all_lazy(&mut self.ready)
            .map_err(|_| Stop)
    }
}

impl<I, O> Emit<O> for Gather<'_, I, O> {
    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.outputs.push(item);
        if self.outputs.len() >= self.hands.max {
            self.flush()?;
        }
        Ok(())
    }

    fn before_next(&mut self, may_block: bool) -> Result<Option<Instant>, Stop> {
        if may_block || self.pace.slow() {
            self.flush()?;
        }
        Ok(self.pace.before())
    }

    fn after_next(&mut self, asked: Option<Instant>) {
        self.pace.after(asked);
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::engine::queue::{queue, Refill};
    use crate::engine::sync::Arc;

    fn out_queued(hands: &Hands<u32, u32>, value: u32) {
        hands.output().push_all(&mut vec![value]).unwrap();
    }

    /// Takes every item off `hands`, with its position.
    fn drain(hands: &Hands<u32, u32>) -> Vec<(u64, u32)> {
        let (mut none, mut ready) = (Vec::new(), Vec::new());
        std::iter::from_fn(|| hands.next(&mut none, &mut ready)).collect()
    }

    #[test]
    fn an_idle_worker_steals_the_back_half_of_a_busy_ones_batch_with_its_positions() {
        let (tx, rx) = queue::<u32>(0);
        let (out, _outputs) = queue::<u32>(0);
        let rx2 = rx.clone();
        let busy = Arc::new(Hands::new(out.clone(), 16));
        let idle = Arc::new(Hands::new(out, 16));
        let busy_shelf = rx.share_shelf(Arc::clone(&busy) as Arc<dyn Shelf<u32>>);
        let idle_shelf = rx2.share_shelf(Arc::clone(&idle) as Arc<dyn Shelf<u32>>);
        tx.push_all(&mut (10..18).collect()).unwrap();
        let mut scratch = Vec::new();
        // A fair share each: half of what is queued.
        assert_eq!(rx.refill(&busy_shelf, &mut scratch, 8), Refill::Items);
        assert_eq!(rx2.refill(&idle_shelf, &mut scratch, 8), Refill::Items);
        assert_eq!(drain(&idle), [(4, 14), (5, 15)]);
        for taken in [(6, 16), (7, 17)] {
            assert_eq!(rx2.refill(&idle_shelf, &mut scratch, 8), Refill::Items);
            assert_eq!(drain(&idle), [taken]);
        }
        // The queue is empty: the idle worker takes the back half of the busy one's items.
        assert_eq!(rx2.refill(&idle_shelf, &mut scratch, 8), Refill::Items);
        assert_eq!(drain(&idle), [(2, 12), (3, 13)]);
        // Once the stream has ended, the last unstarted item is taken too, then it is over.
        drop(tx);
        assert_eq!(rx2.refill(&idle_shelf, &mut scratch, 8), Refill::Items);
        assert_eq!(drain(&idle), [(1, 11)]);
        assert_eq!(drain(&busy), [(0, 10)]);
        assert_eq!(rx2.refill(&idle_shelf, &mut scratch, 8), Refill::Over);
        assert_eq!(rx.refill(&busy_shelf, &mut scratch, 8), Refill::Over);
    }

    #[test]
    fn a_worker_about_to_wait_hands_on_its_siblings_gathered_outputs() {
        let (tx, rx) = queue::<u32>(0);
        let (out, outputs) = queue::<u32>(0);
        let rx2 = rx.clone();
        let busy = Arc::new(Hands::new(out.clone(), 16));
        let idle = Arc::new(Hands::new(out, 16));
        let _busy_shelf = rx.share_shelf(Arc::clone(&busy) as Arc<dyn Shelf<u32>>);
        let idle_shelf = rx2.share_shelf(Arc::clone(&idle) as Arc<dyn Shelf<u32>>);
        // The consumer has an output queued, so the busy worker's next ones gather on
        // its shelf; then it is stuck in a call.
        out_queued(&busy, 0);
        let (mut gathered, mut ready) = (vec![1, 2], Vec::new());
        assert_eq!(busy.next(&mut gathered, &mut ready), None);
        assert!(ready.is_empty());
        // Its idle sibling finds nothing to do and, before it waits, hands them on.
        drop(tx);
        assert_eq!(rx2.refill(&idle_shelf, &mut Vec::new(), 8), Refill::Over);
        let mut handed_on = Vec::new();
        outputs.pop_batch(&mut handed_on, 8);
        assert_eq!(handed_on, [0, 1, 2]);
    }
}
