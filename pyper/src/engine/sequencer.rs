//! Ordered stages: outputs leave in the order their inputs arrived, through a bounded
//! reorder buffer.
//!
//! Every batch a worker takes is a contiguous range of the stage's input positions (the
//! queue numbers them under its lock). A worker processes its range, then hands the
//! range's outputs to the sequencer. Ranges wait in the buffer until every earlier range
//! has been handed in. One worker at a time, the *pusher*, takes every range that is next
//! in line and pushes it downstream, outside the lock, so that a full queue never blocks
//! the others from handing in; ranges handed in meanwhile are picked up by the pusher
//! before it lets go.
//!
//! A worker may only *start* a range that begins within `window` positions of the next one
//! in line, which bounds the buffer. The worker that holds the next range never waits, so
//! the stage always makes progress. (Ordered async stages need none of
//! this: they have one driver, which keeps its own reorder buffer; see `async_worker`.)

use std::collections::BTreeMap;

use crate::engine::batch::Stop;
use crate::engine::queue::Close;
use crate::engine::run::discard_or_resume;
use crate::engine::sync::{self, Condvar, Mutex};

struct Order<O> {
    /// The first input position whose outputs have not been taken for pushing.
    next: u64,
    /// Ranges handed in and waiting: first position → (length, outputs).
    done: BTreeMap<u64, (u64, Vec<O>)>,
    /// Whether a worker is pushing: outputs must then wait for it, to keep the order.
    pushing: bool,
    /// Set on cancel, or when downstream refused an item: every worker must stop.
    stopped: bool,
}

pub(crate) struct Sequencer<O> {
    order: Mutex<Order<O>>,
    advanced: Condvar,
    window: u64,
}

impl<O> Sequencer<O> {
    pub(crate) fn new(window: u64) -> Self {
        Sequencer {
            order: Mutex::new(Order {
                next: 0,
                done: BTreeMap::new(),
                pushing: false,
                stopped: false,
            }),
            advanced: Condvar::new(),
            window,
        }
    }

    /// Whether a range starting at `first` may be processed now.
    fn may_start(&self, order: &Order<O>, first: u64) -> Result<bool, Stop> {
        if order.stopped {
            return Err(Stop);
        }
        Ok(first < order.next + self.window)
    }

    /// Waits until a range starting at `first` may be processed.
    pub(crate) fn wait_turn(&self, first: u64) -> Result<(), Stop> {
        let mut order = sync::lock(&self.order);
        while !self.may_start(&order, first)? {
            order = sync::wait(&self.advanced, order);
        }
        Ok(())
    }

    /// Hands in the outputs of the `count` inputs starting at `first`.
    ///
    /// Returns outputs the caller must push downstream now, if it has become the pusher;
    /// it must then call [`pushed`](Sequencer::pushed) until that returns `None`.
    pub(crate) fn complete(
        &self,
        first: u64,
        count: u64,
        outputs: Vec<O>,
    ) -> Result<Option<Vec<O>>, Stop> {
        let mut order = sync::lock(&self.order);
        if order.stopped {
            return Err(Stop);
        }
        order.done.insert(first, (count, outputs));
        if order.pushing {
            return Ok(None);
        }
        Ok(self.take_next(&mut order))
    }

    /// Reports that the pusher pushed what it was given; returns what to push next.
    pub(crate) fn pushed(&self) -> Result<Option<Vec<O>>, Stop> {
        let mut order = sync::lock(&self.order);
        order.pushing = false;
        if order.stopped {
            return Err(Stop);
        }
        Ok(self.take_next(&mut order))
    }

    /// Stops the stage: the run was cancelled, or downstream refused an item.
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut order = sync::lock(&self.order);
            order.stopped = true;
            self.advanced.notify_all();
            std::mem::take(&mut order.done)
        };
        // User values may run arbitrary code on drop: never under the lock.
        discard_or_resume(dropped.into_values().flat_map(|(_, outputs)| outputs));
    }

    /// Takes every range that is next in line, making the caller the pusher.
    fn take_next(&self, order: &mut Order<O>) -> Option<Vec<O>> {
        let (count, mut outputs) = order.done.remove(&order.next)?;
        order.next += count;
        while let Some((count, more)) = order.done.remove(&order.next) {
            order.next += count;
            outputs.extend(more);
        }
        order.pushing = true;
        self.advanced.notify_all();
        Some(outputs)
    }
}

impl<O: Send> Close for Sequencer<O> {
    fn close(&self) {
        self.stop();
    }
}
