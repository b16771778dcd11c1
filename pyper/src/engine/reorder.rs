//! An async driver's side of an ordered stage: the rule of [`crate::engine::sequencer`]
//! for one driver that runs many items at once. An ordered async stage has a single
//! driver, so there is no turn to pass between threads: the oldest item not yet released
//! is the head, its outputs stream on as they come; every other item collects its
//! outputs, [`COLLECT_BOUND`] at most, and is then paused (its [`Gate`] closes) until it
//! is the oldest. An endless fan-out so streams in bounded memory, as in a thread stage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Waker};

use crate::engine::batch::MAX_BATCH;
use crate::engine::sync::{self, Arc};

/// The most outputs an item that is not the head collects before it is paused: a batch's
/// worth. (Its driver starts no more items than its workers, whatever the throttle.)
pub(crate) const COLLECT_BOUND: usize = MAX_BATCH;

/// The items an ordered driver started and has not released, by position.
pub(crate) struct Reorder<O> {
    items: BTreeMap<u64, Held<O>>,
}

/// An item not yet released.
struct Held<O> {
    done: bool,
    outputs: Vec<O>,
    gate: Arc<Gate>,
}

impl<O> Reorder<O> {
    pub(crate) fn new() -> Self {
        Reorder {
            items: BTreeMap::new(),
        }
    }

    /// How many items are held: started, or finished and waiting for older ones.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Starts the item at `position` (items start in input order); returns the gate its
    /// outputs must pass.
    pub(crate) fn start(&mut self, position: u64) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        let held = Held {
            done: false,
            outputs: Vec::new(),
            gate: Arc::clone(&gate),
        };
        self.items.insert(position, held);
        gate
    }

    /// An output of the item at `position`: returned if it may leave now (the item is
    /// the head), else kept, pausing the item once it keeps [`COLLECT_BOUND`].
    pub(crate) fn output(&mut self, position: u64, value: O) -> Option<O> {
        let (&head, _) = self.items.first_key_value().expect("started");
        if position == head {
            return Some(value);
        }
        let held = self.items.get_mut(&position).expect("started");
        held.outputs.push(value);
        if held.outputs.len() >= COLLECT_BOUND {
            held.gate.close();
        }
        None
    }

    /// The item at `position` is done: moves into `ready`, in order, every output that
    /// may leave now (the items released, then what the new head collected), and lets
    /// the new head run on.
    pub(crate) fn done(&mut self, position: u64, ready: &mut Vec<O>) {
        self.items.get_mut(&position).expect("started").done = true;
        while let Some(mut oldest) = self.items.first_entry() {
            ready.append(&mut oldest.get_mut().outputs);
            if !oldest.get().done {
                oldest.get().gate.open();
                return;
            }
            oldest.remove();
        }
    }
}

/// Pauses one item's outputs: closed while the item has collected all it may and is not
/// the head.
#[derive(Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    /// Who to wake when the gate opens: the driver's poll of the paused stream.
    waker: std::sync::Mutex<Option<Waker>>,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn open(&self) {
        self.closed.store(false, Ordering::Release);
        if let Some(waker) = sync::lock_std(&self.waker).take() {
            waker.wake();
        }
    }

    /// Whether the gate is open; if not, `cx` is woken when it opens.
    pub(crate) fn poll_open(&self, cx: &Context<'_>) -> bool {
        if !self.closed.load(Ordering::Acquire) {
            return true;
        }
        *sync::lock_std(&self.waker) = Some(cx.waker().clone());
        // Opened meanwhile: its waker may have been taken before this one was set.
        !self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_open(gate: &Gate) -> bool {
        !gate.closed.load(Ordering::Acquire)
    }

    #[test]
    fn the_head_streams_and_the_others_wait_their_turn_paused_at_the_bound() {
        let mut reorder = Reorder::new();
        let (head, second, third) = (reorder.start(0), reorder.start(1), reorder.start(2));
        assert_eq!(reorder.output(0, 0), Some(0));
        for value in 0..COLLECT_BOUND {
            assert_eq!(reorder.output(1, 1000 + value), None);
        }
        assert!(is_open(&head) && !is_open(&second) && is_open(&third));
        assert_eq!(reorder.output(2, 2000), None);
        let mut ready = Vec::new();
        // The third finishing first releases nothing.
        reorder.done(2, &mut ready);
        assert!(ready.is_empty());
        // The head finishing releases what the second collected, and lets it run on.
        reorder.done(0, &mut ready);
        assert_eq!(
            ready,
            (0..COLLECT_BOUND).map(|v| 1000 + v).collect::<Vec<_>>()
        );
        assert!(is_open(&second));
        assert_eq!(reorder.output(1, 1), Some(1));
        ready.clear();
        reorder.done(1, &mut ready);
        assert_eq!(ready, [2000]);
        assert_eq!(reorder.len(), 0);
    }
}
