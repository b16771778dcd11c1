//! `ordered()` for a Python stage with several workers: each worker collects the outputs
//! of a batch (a run of consecutive input positions) and hands them in; the runs leave in
//! input order, released by whoever hands in the run that comes next.
//!
//! Simpler than the engine's `Sequencer`, because a Python worker must never wait while it
//! holds the GIL: a worker hands a whole batch in (detached) and moves on, never waits for
//! a turn, and waits (detached, holding nothing) only while more than [`BOUND`] outputs
//! wait to be released. No cycle: the run that comes next is always released by the
//! worker that hands it in. A batch's outputs are collected in full before they are
//! handed in, so a `branch` function's outputs leave when its batch is done: an endless
//! fan-out behind `ordered` does not flow (the engine's `Sequencer` streams it).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::batch::{Stop, MAX_BATCH};
use crate::engine::queue::Sender;
use crate::engine::run::Close;
use crate::engine::sync::{self, Condvar, Mutex};
use pyo3::{Py, PyAny};

/// The most outputs that may wait to be released before workers wait for room.
const BOUND: usize = 4 * MAX_BATCH;

/// The runs of one ordered stage that wait for their turn.
#[derive(Default)]
pub(crate) struct Reorder {
    state: Mutex<State>,
    room: Condvar,
}

#[derive(Default)]
struct State {
    /// The first position not yet released.
    next: u64,
    /// Runs handed in, by first position: their end and outputs.
    waiting: BTreeMap<u64, (u64, Vec<Py<PyAny>>)>,
    /// How many outputs wait in `waiting`.
    held: usize,
    stopped: bool,
}

impl Reorder {
    /// Hands in the outputs of positions `first..end`, releases every run whose turn has
    /// come, then waits while too many outputs wait. Call it detached from the
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
        state.held += outputs.len();
        state.waiting.insert(first, (end, outputs));
        loop {
            let next = state.next;
            let Some((end, mut outputs)) = state.waiting.remove(&next) else {
                break;
            };
            state.held -= outputs.len();
            state.next = end;
            // In order: the lock keeps the next run from overtaking this one.
            if output.push_all(&mut outputs).is_err() {
                state.stopped = true;
                self.room.notify_all();
                return Err(Stop);
            }
        }
        self.room.notify_all();
        while state.held > BOUND && !state.stopped {
            state = sync::wait_timeout(&self.room, state, Duration::from_millis(50)).0;
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
        self.room.notify_all();
        // Python objects are dropped outside the lock (their decref is deferred anyway).
        drop(waiting);
    }
}
