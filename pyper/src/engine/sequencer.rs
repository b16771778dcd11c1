//! Ordered stages: outputs leave in the order their inputs arrived, and a stage keeps the
//! same bounds as an unordered one.
//!
//! The queue numbers a stage's inputs (their *positions*), and each worker processes
//! *runs*: positions one after the other, as it took them. The stage holds one *turn*: the
//! worker whose run starts at the first position not yet released is the *head*, and it
//! streams its outputs straight downstream as it makes them, through its ordinary
//! [`Outlet`](crate::engine::batch::Outlet). When its run ends it hands over what it
//! gathered and passes the turn on ([`Sequencer::pass`]).
//!
//! Every other worker collects its run's outputs, at most [`COLLECT_BOUND`] of them, and
//! then waits for its turn; and it waits for its turn at the end of its run too, before it
//! takes more input. So a non-head worker holds at most one run (one batch) and a bounded
//! number of outputs, however long an input's fan-out is: an endless iterator behind
//! `ordered()` streams in bounded memory, and a stage runs ahead of a slow consumer by its
//! throttle plus one batch per worker, as an unordered one does.
//!
//! No cycle of waits: a worker only waits for positions before its run, and the positions
//! it holds unstarted all come after its run, so the lowest waiting run always has a
//! worker that is not waiting ahead of it.
//!
//! [`InOrder`] is the worker's side of all this, one type for every kind of stage that
//! runs items on threads (thread workers, process supervisors).

use crate::engine::batch::{Emit, Outlet, Stop, MAX_BATCH};
use crate::engine::meter::{Activity, WorkerMeter};
use crate::engine::queue::{Close, Sender};
use crate::engine::sync::{self, AtomicU64, Condvar, Instant, Mutex, Ordering};

/// The most outputs a worker that is not next in line collects before it waits for its
/// turn: a batch's worth, so an ordered branch holds as much per worker as an unordered
/// stage holds in a batch.
pub(crate) const COLLECT_BOUND: usize = MAX_BATCH;

/// Marks a stopped sequencer in `next`: no run starts there.
const STOPPED: u64 = u64::MAX;

/// The turn of one ordered stage.
pub(crate) struct Sequencer {
    /// The first position whose outputs have not all been released: the head's run starts
    /// here. [`STOPPED`] once the stage must stop. Written under `lock`, read without it.
    next: AtomicU64,
    lock: Mutex<()>,
    advanced: Condvar,
}

impl Sequencer {
    pub(crate) fn new() -> Self {
        Sequencer {
            next: AtomicU64::new(0),
            lock: Mutex::new(()),
            advanced: Condvar::new(),
        }
    }

    /// Whether a run starting at `first` holds the turn. Lock-free: a worker asks it for
    /// every output it collects.
    #[inline]
    pub(crate) fn is_next(&self, first: u64) -> bool {
        self.next.load(Ordering::Acquire) == first
    }

    /// Waits until a run starting at `first` holds the turn.
    pub(crate) fn wait_turn(&self, first: u64) -> Result<(), Stop> {
        let mut guard = sync::lock(&self.lock);
        loop {
            match self.next.load(Ordering::Acquire) {
                STOPPED => return Err(Stop),
                next if next == first => return Ok(()),
                _ => guard = sync::wait(&self.advanced, guard),
            }
        }
    }

    /// The head has handed over the outputs of every position before `end`: the run that
    /// starts at `end` gets the turn.
    pub(crate) fn pass(&self, end: u64) {
        let _guard = sync::lock(&self.lock);
        if self.next.load(Ordering::Relaxed) != STOPPED {
            self.next.store(end, Ordering::Release);
        }
        self.advanced.notify_all();
    }

    /// Stops the stage: the run was cancelled, or downstream refused an item.
    pub(crate) fn stop(&self) {
        let _guard = sync::lock(&self.lock);
        self.next.store(STOPPED, Ordering::Release);
        self.advanced.notify_all();
    }
}

impl Close for Sequencer {
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

/// One worker's side of an ordered stage: where its outputs go, run by run.
///
/// Call [`at`](InOrder::at) before each item with its position, and emit the item's
/// outputs into it. A worker that is not the head keeps the runs it finished, up to
/// [`MAX_BATCH`] items ([`room`](InOrder::room) says how many more it may take) and
/// [`COLLECT_BOUND`] outputs, and releases each when its turn comes; before it waits for
/// input, and at the end, it calls [`finish`](InOrder::finish), which waits for the turns
/// of everything it holds: a worker waiting for input must not hold the turn.
pub(crate) struct InOrder<'a, O> {
    sequencer: &'a Sequencer,
    outlet: Outlet<'a, O>,
    /// Charged with the waits for the turn, as blocked time.
    meter: Option<&'a WorkerMeter>,
    /// The run the worker is in, if any.
    current: Option<Run<O>>,
    /// Whether the current run holds the turn (its outputs then stream through `outlet`).
    head: bool,
    /// Finished runs waiting for their turn, by position.
    held: Vec<Run<O>>,
    /// How many items the held runs and the current one span.
    held_items: u64,
    /// How many outputs they hold.
    held_outputs: usize,
}

impl<'a, O> InOrder<'a, O> {
    pub(crate) fn new(
        sequencer: &'a Sequencer,
        outlet: Outlet<'a, O>,
        meter: Option<&'a WorkerMeter>,
    ) -> Self {
        InOrder {
            sequencer,
            outlet,
            meter,
            current: None,
            head: false,
            held: Vec::new(),
            held_items: 0,
            held_outputs: 0,
        }
    }

    /// Where the outputs go.
    pub(crate) fn output(&self) -> &'a Sender<O> {
        self.outlet.output
    }

    /// The item at `position` comes next: it continues the current run, or the current
    /// run ends and a new one starts.
    pub(crate) fn at(&mut self, position: u64) -> Result<(), Stop> {
        self.held_items += 1;
        if let Some(run) = &mut self.current {
            if run.end == position {
                run.end += 1;
                return Ok(());
            }
        }
        self.close_current()?;
        self.current = Some(Run {
            first: position,
            end: position + 1,
            outputs: Vec::new(),
        });
        self.head = false;
        self.settle()
    }

    /// How many more items the worker may take before it must release what it holds.
    pub(crate) fn room(&self) -> usize {
        (MAX_BATCH as u64).saturating_sub(self.held_items) as usize
    }

    /// Releases, without waiting, every held run whose turn has come.
    pub(crate) fn settle(&mut self) -> Result<(), Stop> {
        while let Some(run) = self.held.first() {
            if !self.sequencer.is_next(run.first) {
                break;
            }
            self.release_first()?;
        }
        Ok(())
    }

    /// Waits until the oldest run held (or the current one) may be released, and
    /// releases it (or makes the current one the head): called when the worker holds all
    /// the outputs it may.
    fn release_oldest(&mut self) -> Result<(), Stop> {
        let current = self.current.as_ref().map(|run| run.first);
        match self.held.first() {
            Some(run) if current.map_or(true, |current| run.first < current) => {
                self.wait_turn(run.first)?;
                self.release_first()
            }
            _ => self.take_turn(),
        }
    }

    /// Ends the current run and releases everything held, each when its turn comes.
    pub(crate) fn finish(&mut self) -> Result<(), Stop> {
        self.close_current()?;
        while let Some(run) = self.held.first() {
            self.wait_turn(run.first)?;
            self.release_first()?;
        }
        Ok(())
    }

    /// Stops the whole stage, so that no worker waits for a turn that will not come.
    pub(crate) fn stop(&mut self) {
        self.sequencer.stop();
        self.current = None;
        self.held.clear();
    }

    /// Ends the current run: passes the turn on if it streamed, else holds it.
    fn close_current(&mut self) -> Result<(), Stop> {
        let Some(run) = self.current.take() else {
            return Ok(());
        };
        if self.head || self.sequencer.is_next(run.first) {
            self.head = false;
            self.release(run)?;
            return self.settle();
        }
        let at = self.held.partition_point(|held| held.first < run.first);
        self.held.insert(at, run);
        Ok(())
    }

    fn release_first(&mut self) -> Result<(), Stop> {
        let run = self.held.remove(0);
        self.release(run)
    }

    /// Hands on a run that holds the turn, and passes the turn on.
    fn release(&mut self, run: Run<O>) -> Result<(), Stop> {
        self.held_items -= run.end - run.first;
        self.held_outputs -= run.outputs.len();
        for item in run.outputs {
            self.outlet.emit(item)?;
        }
        self.outlet.flush()?;
        self.sequencer.pass(run.end);
        Ok(())
    }

    /// Waits, as blocked, until the run starting at `first` holds the turn.
    fn wait_turn(&mut self, first: u64) -> Result<(), Stop> {
        if self.sequencer.is_next(first) {
            return Ok(());
        }
        let since = self.meter.and_then(|m| m.wait_begins(Activity::Blocked));
        let turn = self.sequencer.wait_turn(first);
        if let (Some(meter), Some(since)) = (self.meter, since) {
            meter.wait_ends(Activity::Blocked, since);
        }
        turn
    }

    /// Makes the current run the head, waiting for the turn if need be, and hands on what
    /// it collected meanwhile.
    fn take_turn(&mut self) -> Result<(), Stop> {
        let Some(run) = &mut self.current else {
            return Ok(());
        };
        if self.head {
            return Ok(());
        }
        let first = run.first;
        // Every held run comes after the current one when the current one can get the
        // turn, so waiting for it is waiting for the oldest.
        self.wait_turn(first)?;
        self.head = true;
        let run = self.current.as_mut().expect("checked above");
        let outputs = std::mem::take(&mut run.outputs);
        self.held_outputs -= outputs.len();
        for item in outputs {
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
        self.held_outputs += 1;
        while self.held_outputs >= COLLECT_BOUND && !self.head {
            self.release_oldest()?;
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
