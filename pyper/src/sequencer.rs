//! Ordered stages: outputs leave in the order their inputs arrived, through a bounded
//! reorder buffer.
//!
//! Every batch a worker takes is a contiguous range of the stage's input positions (the
//! queue numbers them under its lock). A worker processes its range, then hands the
//! range's outputs to the sequencer. The range that is next in line is pushed downstream
//! at once, followed by every buffered range that now follows on; a range that finishes
//! early waits in the buffer. A worker may only *start* a range that begins within
//! `window` positions of the next one in line, which bounds the buffer. The worker that
//! holds the next range never waits, so the stage always makes progress.

use std::collections::BTreeMap;

use crate::queue::{Close, Sender};
use crate::sync::{self, Condvar, Mutex};
use crate::worker::Stop;

struct Order<O> {
    /// The first input position whose outputs have not left yet.
    next: u64,
    /// Finished ranges waiting for their turn: first position → (length, outputs).
    done: BTreeMap<u64, (u64, Vec<O>)>,
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
                stopped: false,
            }),
            advanced: Condvar::new(),
            window,
        }
    }

    /// Waits until a range starting at `first` may be processed.
    pub(crate) fn wait_turn(&self, first: u64) -> Result<(), Stop> {
        let mut order = sync::lock(&self.order);
        loop {
            if order.stopped {
                return Err(Stop);
            }
            if first < order.next + self.window {
                return Ok(());
            }
            order = sync::wait(&self.advanced, order);
        }
    }

    /// Hands over the outputs of the `count` inputs starting at `first`, and pushes
    /// downstream everything that is now in order.
    pub(crate) fn complete(
        &self,
        first: u64,
        count: u64,
        outputs: Vec<O>,
        downstream: &Sender<O>,
    ) -> Result<(), Stop> {
        let mut order = sync::lock(&self.order);
        if order.stopped {
            return Err(Stop);
        }
        if first != order.next {
            order.done.insert(first, (count, outputs));
            return Ok(());
        }
        let (mut next, mut outputs) = (first + count, outputs);
        loop {
            // Pushed under the lock: that is what keeps the order. A full queue blocks the
            // stage's other workers here too, which is the backpressure we want.
            if downstream.push_all(&mut outputs).is_err() {
                order.stopped = true;
                self.advanced.notify_all();
                return Err(Stop);
            }
            match order.done.remove(&next) {
                Some((count, more)) => {
                    next += count;
                    outputs = more;
                }
                None => break,
            }
        }
        order.next = next;
        self.advanced.notify_all();
        Ok(())
    }
}

impl<O: Send> Close for Sequencer<O> {
    fn close(&self) {
        let dropped = {
            let mut order = sync::lock(&self.order);
            order.stopped = true;
            self.advanced.notify_all();
            std::mem::take(&mut order.done)
        };
        drop(dropped);
    }
}
