//! The queue between two stages: bounded in items, closable, and batch-aware.
//!
//! Why not crossbeam-channel or async-channel? A stage queue needs three things that
//! neither offers together:
//!
//! * **Batches with an item-exact bound.** Workers hand over everything that is ready in
//!   one operation (one lock, one wake-up) instead of one operation per item, yet
//!   `throttle(n)` still means *n items*. A channel of `Vec<T>` counts chunks, not items.
//! * **`close()` that wakes everyone.** Cancelling a run must release every worker blocked
//!   on a full or an empty queue, whatever the bound. crossbeam-channel can only signal
//!   that by dropping every handle, which a worker stuck in user code cannot do.
//! * **Model checking.** Built on the primitives of [`crate::sync`], the queue runs under
//!   shuttle in `tests/model_check.rs`, so its protocol is checked, not only tested.
//!
//! The queue is a `VecDeque` behind one mutex with two condition variables. A consumer
//! takes every ready item up to its batch limit in one lock; a producer appends a whole
//! batch in one lock. Nobody is woken unless somebody is parked, and a consumer that finds
//! the queue empty spins briefly before it parks, so a busy pipeline rarely sleeps.
//!
//! End of stream is the last [`Sender`] being dropped; a closed queue (cancellation) ends
//! at once and drops what it holds. Neither says *why* the stream ended: that is the run
//! state's business ([`crate::run`]), so an error can never pass for a clean end.

use std::collections::VecDeque;

use crate::sync::{self, Arc, AtomicUsize, Condvar, Mutex, Ordering};

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receivers: usize,
    closed: bool,
    /// How many items were ever popped: the stage-input index of the next item.
    popped: u64,
    parked_receivers: usize,
    parked_senders: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// A copy of `items.len()`, readable without the lock.
    len: AtomicUsize,
    capacity: usize,
    not_empty: Condvar,
    not_full: Condvar,
}

/// Creates a queue holding at most `capacity` items (`0` = unbounded).
pub(crate) fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receivers: 1,
            closed: false,
            popped: 0,
            parked_receivers: 0,
            parked_senders: 0,
        }),
        len: AtomicUsize::new(0),
        capacity: if capacity == 0 { usize::MAX } else { capacity },
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// The queue can take no more items: it was closed, or every receiver is gone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Disconnected;

/// The producing end. The stream ends when the last clone is dropped.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The consuming end. Producers stop when the last clone is dropped.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Anything the run must be able to close on cancellation, whatever its item type.
pub(crate) trait Close: Send + Sync {
    fn close(&self);
}

impl<C: Close> Close for Arc<C> {
    fn close(&self) {
        (**self).close();
    }
}

impl<T> Sender<T> {
    /// The most items one batch may carry, so that a batch always fits the bound.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Whether the consumer has nothing queued, so an item handed over now is taken at once.
    #[inline]
    pub(crate) fn looks_hungry(&self) -> bool {
        self.shared.len.load(Ordering::Relaxed) == 0
    }

    /// Appends every item of `batch`, leaving it empty, waiting for room as often as the
    /// bound requires. Never waits for room for the whole batch at once, so a batch larger
    /// than the free space cannot deadlock.
    pub(crate) fn push_all(&self, batch: &mut Vec<T>) -> Result<(), Disconnected> {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        loop {
            if state.closed || state.receivers == 0 {
                drop(state);
                batch.clear();
                return Err(Disconnected);
            }
            let room = shared.capacity - state.items.len();
            if room > 0 {
                let n = room.min(batch.len());
                state.items.extend(batch.drain(..n));
                shared.len.store(state.items.len(), Ordering::Relaxed);
                match state.parked_receivers {
                    0 => {}
                    1 => shared.not_empty.notify_one(),
                    _ if n == 1 => shared.not_empty.notify_one(),
                    _ => shared.not_empty.notify_all(),
                }
                if batch.is_empty() {
                    return Ok(());
                }
            } else {
                state.parked_senders += 1;
                state = sync::wait(&shared.not_full, state);
                state.parked_senders -= 1;
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Moves up to `max` ready items into `out`, waiting only if none is ready.
    ///
    /// Returns the stage-input index of the first item taken, or `None` once the stream
    /// has ended or the queue was closed.
    pub(crate) fn pop_batch(&self, out: &mut Vec<T>, max: usize) -> Option<u64> {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        loop {
            if state.closed {
                return None;
            }
            if !state.items.is_empty() {
                let n = max.max(1).min(state.items.len());
                out.extend(state.items.drain(..n));
                let first = state.popped;
                state.popped += n as u64;
                shared.len.store(state.items.len(), Ordering::Relaxed);
                if state.parked_senders > 0 {
                    shared.not_full.notify_all();
                }
                return Some(first);
            }
            if state.senders == 0 {
                return None;
            }
            state.parked_receivers += 1;
            state = sync::wait(&shared.not_empty, state);
            state.parked_receivers -= 1;
        }
    }
}

/// A handle that can close the queue without counting as a sender or a receiver, so
/// holding it never keeps a stream alive.
pub(crate) struct Closer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    pub(crate) fn closer(&self) -> Closer<T> {
        Closer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Send> Close for Closer<T> {
    fn close(&self) {
        close(&self.shared);
    }
}

fn close<T>(shared: &Shared<T>) {
    let dropped = {
        let mut state = sync::lock(&shared.state);
        state.closed = true;
        shared.len.store(0, Ordering::Relaxed);
        shared.not_empty.notify_all();
        shared.not_full.notify_all();
        std::mem::take(&mut state.items)
    };
    // User values may run arbitrary code on drop: never under the lock.
    drop(dropped);
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        sync::lock(&self.shared.state).senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        sync::lock(&self.shared.state).receivers += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = sync::lock(&self.shared.state);
        state.senders -= 1;
        if state.senders == 0 {
            self.shared.not_empty.notify_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = sync::lock(&self.shared.state);
            state.receivers -= 1;
            if state.receivers > 0 {
                return;
            }
            self.shared.not_full.notify_all();
            self.shared.len.store(0, Ordering::Relaxed);
            std::mem::take(&mut state.items)
        };
        drop(dropped);
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_fifo_order_and_count_indices() {
        let (tx, rx) = queue(0);
        tx.push_all(&mut vec![1, 2, 3]).unwrap();
        tx.push_all(&mut vec![4, 5]).unwrap();
        drop(tx);
        let mut out = Vec::new();
        assert_eq!(rx.pop_batch(&mut out, 2), Some(0));
        assert_eq!(rx.pop_batch(&mut out, 10), Some(2));
        assert_eq!(out, [1, 2, 3, 4, 5]);
        assert_eq!(rx.pop_batch(&mut out, 10), None);
    }

    #[test]
    fn a_batch_larger_than_the_bound_goes_through_in_parts() {
        let (tx, rx) = queue(2);
        let producer = std::thread::spawn(move || tx.push_all(&mut (0..100).collect()));
        let mut out = Vec::new();
        while rx.pop_batch(&mut out, 64).is_some() {
            assert!(rx.shared.len.load(Ordering::Relaxed) <= 2);
        }
        assert_eq!(producer.join().unwrap(), Ok(()));
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn close_wakes_a_blocked_sender_and_a_blocked_receiver() {
        let (tx, rx) = queue::<u32>(1);
        tx.push_all(&mut vec![1]).unwrap();
        let tx2 = tx.clone();
        let sender = std::thread::spawn(move || tx2.push_all(&mut vec![2]));
        let (tx3, rx3) = queue::<u32>(1);
        let receiver = std::thread::spawn(move || rx3.pop_batch(&mut Vec::new(), 1));
        tx.closer().close();
        tx3.closer().close();
        assert_eq!(sender.join().unwrap(), Err(Disconnected));
        assert_eq!(receiver.join().unwrap(), None);
        assert_eq!(rx.pop_batch(&mut Vec::new(), 1), None);
    }

    #[test]
    fn dropping_every_receiver_releases_blocked_senders() {
        let (tx, rx) = queue(1);
        tx.push_all(&mut vec![1]).unwrap();
        let sender = std::thread::spawn(move || tx.push_all(&mut vec![2, 3]));
        drop(rx);
        assert_eq!(sender.join().unwrap(), Err(Disconnected));
    }
}
