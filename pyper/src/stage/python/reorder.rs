//! `ordered()` for a Python stage with several workers: each worker collects the outputs
//! of a batch (a run of consecutive input positions) and hands them in; the runs leave in
//! input order, released by whoever hands in the run that comes next.
//!
//! Simpler than the engine's `Sequencer`, because a Python worker must never wait while it
//! holds the GIL: a worker hands a whole batch in (detached), and waits there (detached,
//! holding nothing else) until its run has been released. The run that comes next is
//! always released by the worker that hands it in, so nothing waits in a cycle.
//!
//! Memory stays flat as in the engine's ordered stages: a batch is at most the stage's
//! *hold* of items (its throttle, at most a batch), and a worker whose run waits for its
//! turn takes no more input; so with `throttle(t)` and `w` workers, an ordered stage
//! holds at most about `t × (w + 1)` items ahead of a stalled consumer: `t` in its output
//! queue and up to `t` with each worker. A batch's outputs are collected in full before
//! they are handed in, so a `branch` function's outputs leave when its batch is done: an
//! endless fan-out behind `ordered` does not flow (the engine's `Sequencer` streams it).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::batch::{Stop, MAX_BATCH};
use crate::engine::queue::Sender;
use crate::engine::run::Close;
use crate::engine::sync::{self, Condvar, Mutex};
use pyo3::{Py, PyAny};

/// The runs of one ordered stage that wait for their turn.
pub(crate) struct Reorder {
    state: Mutex<State>,
    released: Condvar,
    /// The most items in a batch: see the module's docs.
    pub(crate) hold: usize,
}

#[derive(Default)]
struct State {
    /// The first position not yet released.
    next: u64,
    /// Runs handed in, by first position: their end and outputs.
    waiting: BTreeMap<u64, (u64, Vec<Py<PyAny>>)>,
    stopped: bool,
}

impl Reorder {
    /// The reorder of a stage whose output queue holds `capacity` items.
    pub(crate) fn new(capacity: usize) -> Self {
        Reorder {
            state: Mutex::default(),
            released: Condvar::new(),
            hold: capacity.clamp(1, MAX_BATCH),
        }
    }

    /// Hands in the outputs of positions `first..end`, releases every run whose turn has
    /// come, then waits until this run has been released. Call it detached from the
    /// interpreter: it may wait.
    pub(crate) fn hand_in(
        &self,
        (first, end): (u64, u64),
        outputs: Vec<Py<PyAny>>,
        output: &Sender<Py<PyAny>>,
    ) -> Result<(), Stop> {
        let mut state = sync::lock(&self.state);
        if state.stopped {
            return Err(Stop);
        }
        state.waiting.insert(first, (end, outputs));
        loop {
            let next = state.next;
            let Some((end, mut outputs)) = state.waiting.remove(&next) else {
                break;
            };
            state.next = end;
            // In order: the lock keeps the next run from overtaking this one.
            if output.push_all(&mut outputs).is_err() {
                state.stopped = true;
                self.released.notify_all();
                return Err(Stop);
            }
        }
        self.released.notify_all();
        while state.next < end && !state.stopped {
            state = sync::wait_timeout(&self.released, state, Duration::from_millis(50)).0;
        }
        match state.stopped {
            true => Err(Stop),
            false => Ok(()),
        }
    }
}

impl Close for Reorder {
    fn close(&self) {
        let waiting = {
            let mut state = sync::lock(&self.state);
            state.stopped = true;
            std::mem::take(&mut state.waiting)
        };
        self.released.notify_all();
        // Python objects are dropped outside the lock (their decref is deferred anyway).
        drop(waiting);
    }
}
