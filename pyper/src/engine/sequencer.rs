//! Ordered stages: outputs leave in the order their inputs arrived, and a stage keeps the
//! same bounds as an unordered one.
//!
//! The queue numbers a stage's inputs (their *positions*), and each worker processes
//! *runs*: positions one after the other, as it took them. The stage has one *turn*: the
//! worker whose run starts at the first position not yet released is the *head*, and it
//! streams its outputs straight downstream as it makes them, through its ordinary
//! [`Outlet`]. Every other worker collects its run's outputs and, when the run ends, hands
//! it in; whoever passes the turn on releases the handed-in runs that come next, so a
//! worker waiting for input never holds anything up.
//!
//! Two bounds keep memory flat however the stage is used. Both are the stage's *hold*:
//! its throttle (the capacity of its output queue), at most [`MAX_BATCH`].
//!
//! * a run that is not the head collects at most a hold of outputs, then its worker
//!   waits for the turn (as blocked time) and streams from then on: an endless `branch`
//!   fan-out behind `ordered()` flows in bounded memory;
//! * a worker takes new input only while what it handed in and is still unreleased
//!   weighs less than a hold (a run weighs its items or its outputs, whichever is more),
//!   and then only as many items as the hold has room for; and only while what the whole
//!   stage handed in weighs less than a hold per worker (which bounds a worker that hands
//!   in batch after batch through a new [`InOrder`] each, as a process supervisor does):
//!   with `throttle(t)` and `w` workers, a stage runs ahead of a stalled consumer by
//!   about `t × (w + 1)` items (`t` in its queue, `t` in each worker's hands), as an
//!   unordered one does.
//!
//! No cycle of waits: a worker waits for the turn only for positions before its current
//! run, while everything it holds unstarted comes after it; and a worker waiting for room
//! holds nothing in hand, since all it handed in can be released by others.
//!
//! [`InOrder`] is a worker's side of all this, one type for every kind of stage that runs
//! items on threads (thread workers, process supervisors).

use std::collections::BTreeMap;

use crate::engine::batch::{Emit, Outlet, Stop, MAX_BATCH};
use crate::engine::meter::{Activity, WorkerMeter};
use crate::engine::queue::Sender;
use crate::engine::run::discard_or_resume;
use crate::engine::run::Close;
use crate::engine::sync::{self, Arc, AtomicU64, Condvar, Instant, Mutex, Ordering};

/// What one worker of an ordered stage may hold that its consumer has not taken (see the
/// module's docs): the throttle, at most a batch.
fn hold<O>(output: &Sender<O>) -> usize {
    output.capacity().clamp(1, MAX_BATCH)
}

/// Marks a stopped sequencer in `next`: no run starts there.
const STOPPED: u64 = u64::MAX;

/// The turn of one ordered stage, and the runs handed in that wait for it.
pub(crate) struct Sequencer<O> {
    /// The first position whose outputs have not all been released: the head's run starts
    /// here. [`STOPPED`] once the stage must stop. Written under `done`'s lock, read
    /// without it.
    next: AtomicU64,
    /// Runs handed in and not released yet, by first position.
    done: Mutex<BTreeMap<u64, Done<O>>>,
    /// Signalled whenever `next` moves (a turn, room freed) or the stage stops.
    advanced: Condvar,
    /// What the runs in `done` weigh. Written under `done`'s lock.
    unreleased: AtomicU64,
    /// The stage's workers.
    workers: usize,
}

/// A run handed in.
struct Done<O> {
    end: u64,
    outputs: Vec<O>,
    /// What it weighs, and the owner's count to take it off when it is released.
    weight: u64,
    owner: Arc<AtomicU64>,
}

impl<O> Sequencer<O> {
    /// The sequencer of a stage of `workers`.
    pub(crate) fn new(workers: usize) -> Self {
        Sequencer {
            next: AtomicU64::new(0),
            done: Mutex::new(BTreeMap::new()),
            advanced: Condvar::new(),
            unreleased: AtomicU64::new(0),
            workers: workers.max(1),
        }
    }

    /// Whether a run starting at `first` holds the turn. Lock-free: a worker asks it for
    /// every output it collects.
    #[inline]
    fn is_next(&self, first: u64) -> bool {
        self.next.load(Ordering::Acquire) == first
    }

    /// Waits until `ready` holds (read under the lock) or the stage stops.
    fn wait_until(&self, mut ready: impl FnMut() -> bool) -> Result<(), Stop> {
        let mut done = sync::lock(&self.done);
        loop {
            if self.next.load(Ordering::Acquire) == STOPPED {
                return Err(Stop);
            }
            if ready() {
                return Ok(());
            }
            done = sync::wait(&self.advanced, done);
        }
    }

    /// Hands in a run that does not hold the turn. Returns it if it has got the turn
    /// meanwhile: the caller must release it.
    fn hand_in(&self, run: Run<O>, owner: &Arc<AtomicU64>) -> Result<Option<Run<O>>, Stop> {
        let mut done = sync::lock(&self.done);
        match self.next.load(Ordering::Acquire) {
            STOPPED => Err(Stop),
            next if next == run.first => Ok(Some(run)),
            _ => {
                let weight = run.weight();
                owner.fetch_add(weight, Ordering::Relaxed);
                self.unreleased.fetch_add(weight, Ordering::Relaxed);
                let entry = Done {
                    end: run.end,
                    outputs: run.outputs,
                    weight,
                    owner: Arc::clone(owner),
                };
                done.insert(run.first, entry);
                Ok(None)
            }
        }
    }

    /// Takes the handed-in run that starts at `end`, if any, for the caller to release;
    /// otherwise the run starting at `end` gets the turn.
    fn next_after(&self, end: u64) -> Result<Option<Done<O>>, Stop> {
        let mut done = sync::lock(&self.done);
        if self.next.load(Ordering::Acquire) == STOPPED {
            return Err(Stop);
        }
        let next = done.remove(&end);
        if let Some(released) = &next {
            self.unreleased
                .fetch_sub(released.weight, Ordering::Relaxed);
        }
        if next.is_none() {
            self.next.store(end, Ordering::Release);
            self.advanced.notify_all();
        }
        Ok(next)
    }

    /// Stops the stage: the run was cancelled, or downstream refused an item.
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut done = sync::lock(&self.done);
            self.next.store(STOPPED, Ordering::Release);
            self.advanced.notify_all();
            std::mem::take(&mut *done)
        };
        // User values may run arbitrary code on drop: never under the lock.
        discard_or_resume(dropped.into_values().flat_map(|done| done.outputs));
    }
}

impl<O: Send> Close for Sequencer<O> {
    fn close(&self) {
        self.stop();
    }
}

/// A run of positions a worker processed one after the other, and its collected outputs.
struct Run<O> {
    first: u64,
    end: u64,
    outputs: Vec<O>,
}

impl<O> Run<O> {
    fn weight(&self) -> u64 {
        (self.end - self.first).max(self.outputs.len() as u64)
    }
}

/// One worker's side of an ordered stage: where its outputs go, run by run.
///
/// Before taking input, call [`finish`](InOrder::finish): it ends the current run and
/// waits until the worker has room (it returns how many items it may take). Call
/// [`at`](InOrder::at) before each item with its position, and emit the item's outputs
/// into it. Call `finish` at the end too.
pub(crate) struct InOrder<'a, O> {
    sequencer: &'a Sequencer<O>,
    outlet: Outlet<'a, O>,
    /// Charged with the waits for the turn or for room, as blocked time.
    meter: Option<&'a WorkerMeter>,
    /// The run the worker is in, if any.
    current: Option<Run<O>>,
    /// Whether the current run holds the turn (its outputs then stream through `outlet`).
    head: bool,
    /// What the runs this worker handed in weigh, until they are released.
    handed_in: Arc<AtomicU64>,
    /// The most it may hold: see [`hold`].
    hold: usize,
}

impl<'a, O> InOrder<'a, O> {
    pub(crate) fn new(
        sequencer: &'a Sequencer<O>,
        outlet: Outlet<'a, O>,
        meter: Option<&'a WorkerMeter>,
    ) -> Self {
        InOrder {
            sequencer,
            hold: hold(outlet.output),
            outlet,
            meter,
            current: None,
            head: false,
            handed_in: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Where the outputs go.
    pub(crate) fn output(&self) -> &'a Sender<O> {
        self.outlet.output
    }

    /// The item at `position` comes next: it continues the current run, or the current
    /// run ends and a new one starts.
    pub(crate) fn at(&mut self, position: u64) -> Result<(), Stop> {
        if let Some(run) = &mut self.current {
            if run.end == position {
                run.end += 1;
                return Ok(());
            }
        }
        self.close()?;
        self.current = Some(Run {
            first: position,
            end: position + 1,
            outputs: Vec::new(),
        });
        Ok(())
    }

    /// Ends the current run, then waits until this worker may take input: returns how
    /// many items it may take.
    pub(crate) fn finish(&mut self) -> Result<usize, Stop> {
        self.close()?;
        let hold = self.hold;
        let sequencer = self.sequencer;
        let room = || {
            let own = hold.saturating_sub(self.handed_in.load(Ordering::Relaxed) as usize);
            let unreleased = sequencer.unreleased.load(Ordering::Relaxed) as usize;
            own.min((hold * sequencer.workers).saturating_sub(unreleased))
        };
        if room() == 0 {
            self.blocked(|sequencer| sequencer.wait_until(|| room() > 0))?;
        }
        Ok(room().max(1))
    }

    /// Stops the whole stage, so that no worker waits for a turn that will not come.
    pub(crate) fn stop(&mut self) {
        self.sequencer.stop();
        self.current = None;
    }

    /// Ends the current run: releases it if it holds the turn, else hands it in.
    fn close(&mut self) -> Result<(), Stop> {
        let Some(run) = self.current.take() else {
            return Ok(());
        };
        let head = std::mem::replace(&mut self.head, false);
        let run = match head || self.sequencer.is_next(run.first) {
            true => run,
            false => match self.sequencer.hand_in(run, &self.handed_in)? {
                Some(run) => run,
                None => return Ok(()),
            },
        };
        let mut end = run.end;
        self.hand_on(run.outputs)?;
        // Releases the runs handed in that come next, then passes the turn on.
        while let Some(done) = self.sequencer.next_after(end)? {
            end = done.end;
            done.owner.fetch_sub(done.weight, Ordering::Relaxed);
            self.hand_on(done.outputs)?;
        }
        Ok(())
    }

    fn hand_on(&mut self, outputs: Vec<O>) -> Result<(), Stop> {
        for item in outputs {
            self.outlet.emit(item)?;
        }
        self.outlet.flush()
    }

    /// Runs a wait on the sequencer, charged as blocked time.
    fn blocked(&self, wait: impl FnOnce(&Sequencer<O>) -> Result<(), Stop>) -> Result<(), Stop> {
        // Nothing this worker handed over lazily may wait behind its wait.
        self.outlet.announce();
        let since = self.meter.and_then(|m| m.wait_begins(Activity::Blocked));
        let waited = wait(self.sequencer);
        if let (Some(meter), Some(since)) = (self.meter, since) {
            meter.wait_ends(Activity::Blocked, since);
        }
        waited
    }

    /// Makes the current run the head, waiting for the turn if need be, and hands on what
    /// it collected meanwhile.
    fn take_turn(&mut self) -> Result<(), Stop> {
        let Some(first) = self.current.as_ref().map(|run| run.first) else {
            return Ok(());
        };
        if !self.sequencer.is_next(first) {
            let sequencer = self.sequencer;
            self.blocked(|_| sequencer.wait_until(|| sequencer.is_next(first)))?;
        }
        self.head = true;
        let run = self.current.as_mut().expect("checked above");
        for item in std::mem::take(&mut run.outputs) {
            self.outlet.emit(item)?;
        }
        Ok(())
    }

    /// Whether the current run can stream: it holds the turn, or has just got it.
    #[inline]
    fn streams(&mut self) -> Result<bool, Stop> {
        if self.head {
            return Ok(true);
        }
        match &self.current {
            Some(run) if self.sequencer.is_next(run.first) => {
                self.take_turn()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl<O> Emit<O> for InOrder<'_, O> {
    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.streams()? {
            return self.outlet.emit(item);
        }
        if self.outlet.run.is_cancelled() {
            return Err(Stop);
        }
        let Some(run) = &mut self.current else {
            // Not within an item: nothing to keep in order with.
            return self.outlet.emit(item);
        };
        run.outputs.push(item);
        if run.outputs.len() >= self.hold {
            self.take_turn()?;
        }
        Ok(())
    }

    fn before_next(&mut self, may_block: bool) -> Result<Option<Instant>, Stop> {
        match self.streams()? {
            true => self.outlet.before_next(may_block),
            false => Ok(self.outlet.pace_before()),
        }
    }

    fn after_next(&mut self, asked: Option<Instant>) {
        self.outlet.after_next(asked);
    }
}
