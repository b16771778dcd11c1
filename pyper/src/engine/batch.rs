//! The shared pieces every kind of stage uses to move items: what a task's body emits
//! into ([`Emit`], [`Outlet`]), how many ready items a worker takes at once
//! ([`BatchLimit`]), when gathered outputs are handed over, and how a user's iterator is
//! drained without holding elements behind a blocking `next()` ([`emit_each`]).

use std::mem::needs_drop;
use std::time::Duration;

use crate::engine::blocked;
use crate::engine::queue::Sender;
use crate::engine::run::RunState;
use crate::engine::sync::Instant;
use crate::error::BoxError;

/// The most items one hand-over carries.
pub(crate) const MAX_BATCH: usize = 1024;

/// How long the items of one batch should take to process. Longer batches would delay
/// the first output of the batch, and leave the other workers of a stage idle at the end.
const BATCH_TIME: Duration = Duration::from_micros(50);

/// The downstream side refused an item: the run was cancelled, or nobody reads any more.
/// Not an error: the worker just stops.
#[derive(Debug)]
pub(crate) struct Stop;

/// Why a task's body did not complete.
pub(crate) enum Fault {
    Stop,
    Failed(BoxError),
}

/// Why a worker ended before its input did, once its failure is known as the run's error:
/// the run stopped (a cancel, or nobody reads any more: not an error), or it failed with
/// this error, which already names the stage and the item. `Fault` is the same thing before
/// the stage and the item are attached.
// Used by the async driver and the process and remote kinds only.
#[cfg_attr(not(any(feature = "async", feature = "process")), allow(dead_code))]
pub(crate) enum Halt {
    Stop,
    Failed(crate::error::Error),
}

impl From<Stop> for Halt {
    fn from(_: Stop) -> Self {
        Halt::Stop
    }
}

impl From<Stop> for Fault {
    fn from(_: Stop) -> Self {
        Fault::Stop
    }
}

/// Where a task's body puts its outputs.
pub(crate) trait Emit<O> {
    fn emit(&mut self, item: O) -> Result<(), Stop>;

    /// The producer is about to ask a user's iterator for its next element, which may
    /// block when `may_block` says so or when elements have been slow to come. Hands over
    /// what is gathered in that case; returns the clock reading if the call is to be timed.
    fn before_next(&mut self, _may_block: bool) -> Result<Option<Instant>, Stop> {
        Ok(None)
    }

    /// The element asked for in [`before_next`](Emit::before_next) has come.
    fn after_next(&mut self, _asked: Option<Instant>) {}

    /// How many elements the producer may pull in a row, with no hand-over, mark or clock
    /// between them: more than one only while elements come quickly and there is room
    /// for them before the next hand-over is due.
    fn quick_run(&self) -> usize {
        1
    }

    /// A run of `count` elements is about to be asked for; returns the clock reading if
    /// the run is to be timed.
    fn before_run(&mut self, _count: usize) -> Option<Instant> {
        None
    }

    /// The run asked for in [`before_run`](Emit::before_run) has come: `count` elements.
    fn after_run(&mut self, _asked: Option<Instant>, _count: usize) {}
}

/// Emits every element of a user's iterator (an input iterator, a `branch` output).
///
/// Elements flow on as they are produced: before asking the iterator for an element that
/// may take a while (a channel, a socket, a page fetch), the worker hands over what it
/// gathered, so no element waits behind a blocked producer, and a pipeline fed back from
/// its own output cannot deadlock that way. Two signs say "may take a while": a
/// `size_hint` that promises nothing (a channel), or elements that took [`SLOW_ELEMENT`] or
/// more to come. While elements come quickly from an iterator that promises more (a range,
/// a `Vec`, a cheap `map`), they move in batches, and plain values (dropping one does
/// nothing) are pulled [`QUICK_STREAK`] at a time ([`Emit::quick_run`]).
///
/// `pulled` counts the elements the iterator produced, up to date if its `next` panics:
/// the panicking element's position.
///
/// `out` is generic so that a worker's own [`Outlet`] (the input iterator's) is compiled
/// into the loop, rather than called through `dyn` three times per element.
#[inline]
pub(crate) fn emit_each<It, T, E>(
    elements: It,
    out: &mut E,
    pulled: &mut u64,
    mut each: impl FnMut(It::Item, &mut E) -> Result<(), Fault>,
) -> Result<(), Fault>
where
    It: IntoIterator,
    E: Emit<T> + ?Sized,
{
    let mut elements = elements.into_iter();
    let mut run = Vec::new();
    // The element may never come: marked, a stopped run does not wait for it.
    blocked::with_current(|phase| loop {
        let (promised, most) = elements.size_hint();
        let quick = match needs_drop::<It::Item>() {
            true => 1,
            false => out.quick_run(),
        };
        if quick > 1 && promised >= quick {
            let asked = out.before_run(quick);
            {
                // Counted even if the iterator panics part way.
                let counted = PullCount {
                    run: &mut run,
                    pulled: &mut *pulled,
                };
                blocked::next_run(phase, &mut elements, quick, counted.run);
            }
            out.after_run(asked, run.len());
            // Fewer than asked: the iterator ended (its `size_hint` promised too much).
            let ended = run.len() < quick;
            // Dropping the elements left after a failure does nothing.
            for element in run.drain(..) {
                each(element, out)?;
            }
            match ended {
                true => return Ok(()),
                false => continue,
            }
        }
        let asked = out.before_next(promised == 0 && most != Some(0))?;
        let element = blocked::next(phase, &mut elements);
        out.after_next(asked);
        match element {
            Some(element) => {
                *pulled += 1;
                each(element, out)?
            }
            None => return Ok(()),
        }
    })
}

/// Adds the elements of a run of pulls to the count when dropped, a panic of the
/// iterator's included.
struct PullCount<'a, T> {
    run: &'a mut Vec<T>,
    pulled: &'a mut u64,
}

impl<T> Drop for PullCount<'_, T> {
    fn drop(&mut self) {
        *self.pulled += self.run.len() as u64;
    }
}

/// An element that takes this long to come is handed over before the next is asked for:
/// the hand-over then costs a few percent of the wait at most.
const SLOW_ELEMENT: Duration = Duration::from_micros(1);

/// How many quick elements in a row make an iterator quick, how often a quick one is
/// timed again, and the most a run of pulls takes.
const QUICK_STREAK: u32 = 64;

/// The fewest elements worth a run of pulls: fewer, with a small throttle, go one at a time.
const MIN_RUN: usize = 8;

/// Tells quick iterators from slow ones. Only the iterator's own `next` is timed, never
/// the hand-overs, and a quick iterator only once per [`QUICK_STREAK`] elements.
pub(crate) struct Pace {
    quick_streak: u32,
    asked: u32,
}

impl Pace {
    pub(crate) fn new() -> Self {
        Pace {
            quick_streak: 0,
            asked: 0,
        }
    }

    #[inline]
    pub(crate) fn slow(&self) -> bool {
        self.quick_streak < QUICK_STREAK
    }

    #[inline]
    pub(crate) fn before(&mut self) -> Option<Instant> {
        self.asked = self.asked.wrapping_add(1);
        (self.slow() || self.asked % QUICK_STREAK == 0).then(Instant::now)
    }

    /// Times a run of `count` elements, asked for at `asked`: quick if they took less than
    /// [`SLOW_ELEMENT`] each on average.
    #[inline]
    pub(crate) fn after_run(&mut self, asked: Option<Instant>, count: usize) {
        if let Some(asked) = asked {
            self.quick_streak = match asked.elapsed() < SLOW_ELEMENT * count as u32 {
                true => self.quick_streak.saturating_add(count as u32),
                false => 0,
            };
        }
    }

    /// [`before`](Pace::before) for a run of `count` elements: timed when the run takes
    /// the count of elements asked for past a multiple of [`QUICK_STREAK`], so that runs
    /// are timed as often as single elements are, whatever their length.
    #[inline]
    pub(crate) fn before_run(&mut self, count: usize) -> Option<Instant> {
        let before = self.asked;
        self.asked = self.asked.wrapping_add(count as u32);
        (before / QUICK_STREAK != self.asked / QUICK_STREAK).then(Instant::now)
    }

    #[inline]
    pub(crate) fn after(&mut self, asked: Option<Instant>) {
        self.after_run(asked, 1);
    }
}

/// How many ready items a worker takes at once.
///
/// It starts at one item and doubles towards the count that [`BATCH_TIME`] allows, so
/// trivial items move in bulk while slow ones are taken one at a time: their outputs are
/// not held back behind a long batch, and they spread over every worker of the stage.
pub(crate) struct BatchLimit {
    limit: usize,
    /// How long one batch should take.
    target: Duration,
}

impl BatchLimit {
    /// A thread worker's limit: batches of about [`BATCH_TIME`].
    pub(crate) fn new() -> Self {
        Self::with_target(BATCH_TIME)
    }

    /// A limit aiming at batches of `target` (a process worker aims higher, as a batch
    /// costs it a round trip).
    pub(crate) fn with_target(target: Duration) -> Self {
        BatchLimit { limit: 1, target }
    }

    pub(crate) fn get(&self) -> usize {
        self.limit
    }

    /// The limit of a stage's only worker: once its items are quick enough for the
    /// largest batch, everything that is ready. No sibling could take any of it, and
    /// taking all that a queue holds moves its buffer, not its items.
    pub(crate) fn lone(&self) -> usize {
        match self.limit {
            MAX_BATCH => usize::MAX,
            limit => limit,
        }
    }

    /// Sizes the next batch from the last: `count` items that took `took`.
    pub(crate) fn adapt(&mut self, took: Duration, count: usize) {
        let per_item = took / count.max(1) as u32;
        let fits = (self.target.as_nanos() / per_item.as_nanos().max(1)) as usize;
        // Grow gently, so that one fast item cannot make a worker hoard a slow stream.
        self.limit = fits.clamp(1, MAX_BATCH).min(self.limit * 2);
    }
}

/// A worker's output buffer, for every kind of worker: outputs leave in batches, and at
/// once when downstream is idle, so a quiet pipeline keeps its latency while a busy one
/// moves items in bulk. Thread workers hand over with [`flush`](Outlet::flush), async
/// drivers with `flush_async`; both decide when with [`add`](Outlet::add).
pub(crate) struct Outlet<'a, O> {
    pub(crate) output: &'a Sender<O>,
    pub(crate) run: &'a RunState,
    buffer: Vec<O>,
    max: usize,
    /// How quickly the iterators this worker drives produce their elements.
    pace: Pace,
    /// Whether hand-overs may leave a lone consumer parked until a batch's worth is
    /// queued (see `Sender::push_all_lazy`).
    lazy: bool,
    /// How many outputs left the buffer so far.
    handed: u64,
}

impl<'a, O> Outlet<'a, O> {
    pub(crate) fn new(output: &'a Sender<O>, run: &'a RunState) -> Self {
        Outlet {
            output,
            run,
            buffer: Vec::new(),
            max: hand_over_size(output),
            pace: Pace::new(),
            lazy: false,
            handed: 0,
        }
    }

    /// How many outputs were gathered so far: those handed over and those in the buffer.
    pub(crate) fn gathered(&self) -> u64 {
        self.handed + self.buffer.len() as u64
    }

    /// An outlet whose hand-overs are lazy: for a worker that announces before it waits
    /// for input or for a turn ([`announce`](Outlet::announce)).
    pub(crate) fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Wakes a consumer for outputs handed over lazily.
    pub(crate) fn announce(&self) {
        self.output.announce();
    }

    /// Gathers an output; returns whether the gathered outputs should be handed over now.
    #[inline]
    pub(crate) fn add(&mut self, item: O) -> Result<bool, Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        Ok(self.gather(item))
    }

    /// [`add`](Outlet::add) for a caller that checked the run itself, just before.
    #[inline]
    pub(crate) fn gather(&mut self, item: O) -> bool {
        self.buffer.push(item);
        should_hand_over(&self.buffer, self.max, self.output)
    }

    /// Whether nothing is gathered.
    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// How many outputs are gathered before they are handed over, at most.
    pub(crate) fn hand_over_size(&self) -> usize {
        self.max
    }

    /// Takes `outputs` as the gathered outputs, in one step: for a caller that made a whole
    /// batch's outputs at once, when nothing was gathered before them. Returns the empty
    /// buffer they replace, for its room.
    pub(crate) fn gather_all(&mut self, outputs: Vec<O>) -> Vec<O> {
        debug_assert!(self.buffer.is_empty());
        std::mem::replace(&mut self.buffer, outputs)
    }

    /// Whether a batch's worth is gathered.
    #[cfg(feature = "async")]
    pub(crate) fn is_full(&self) -> bool {
        self.buffer.len() >= self.max
    }

    pub(crate) fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.handed += self.buffer.len() as u64;
        let pushed = match self.lazy {
            true => self.output.push_all_lazy(&mut self.buffer),
            false => self.output.push_all(&mut self.buffer),
        };
        pushed.map_err(|_| Stop)
    }

    /// [`flush`](Outlet::flush) for async workers: waits for room without blocking.
    #[cfg(feature = "async")]
    pub(crate) async fn flush_async(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.handed += self.buffer.len() as u64;
        self.output
            .push_all_async(&mut self.buffer)
            .await
            .map_err(|_| Stop)
    }

    /// Times the next element of a user's iterator, if it is due for timing, without
    /// handing anything over (for outputs that are not this worker's to hand over yet).
    pub(crate) fn pace_before(&mut self) -> Option<Instant> {
        self.pace.before()
    }
}

impl<O> Emit<O> for Outlet<'_, O> {
    fn before_next(&mut self, may_block: bool) -> Result<Option<Instant>, Stop> {
        if may_block || self.pace.slow() {
            self.flush()?;
            // The next element may be long in coming.
            self.announce();
        }
        Ok(self.pace.before())
    }

    fn after_next(&mut self, asked: Option<Instant>) {
        self.pace.after(asked);
    }

    fn quick_run(&self) -> usize {
        let room = self.max.saturating_sub(self.buffer.len());
        match self.pace.slow() || room < MIN_RUN {
            true => 1,
            false => room.min(QUICK_STREAK as usize),
        }
    }

    fn before_run(&mut self, count: usize) -> Option<Instant> {
        self.pace.before_run(count)
    }

    fn after_run(&mut self, asked: Option<Instant>, count: usize) {
        self.pace.after_run(asked, count);
    }

    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.add(item)? {
            self.flush()
        } else {
            Ok(())
        }
    }
}

/// How many outputs a worker gathers before it hands them over: a quarter of the bound,
/// so the consumer can take one batch while the producer fills the next, instead of the
/// two taking turns.
pub(crate) fn hand_over_size<O>(output: &Sender<O>) -> usize {
    (output.capacity() / 4).clamp(1, MAX_BATCH)
}

/// Whether a worker should hand its gathered outputs over now: the batch is full, or
/// downstream has nothing to do.
///
/// Downstream is asked when the batch has 1, 2, 4, 8... items: at once for the first
/// output, so an idle consumer gets it without delay, and then ever more rarely, because
/// the answer lives on a cache line the consumer writes and asking for every item was
/// measured to cost a third of the hand-over's time.
#[inline]
pub(crate) fn should_hand_over<O>(buffer: &[O], max: usize, output: &Sender<O>) -> bool {
    buffer.len() >= max || (buffer.len().is_power_of_two() && output.looks_hungry())
}

/// Collects the outputs of one item of a process worker's batch, to be released in order.
#[cfg(feature = "process")]
pub(crate) struct Collect<'a, O> {
    pub(crate) items: Vec<O>,
    pub(crate) run: &'a RunState,
}

#[cfg(feature = "process")]
impl<O> Emit<O> for Collect<'_, O> {
    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.items.push(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_pulls_are_timed_as_often_as_single_elements() {
        let mut pace = Pace::new();
        let timed = (0..64).filter(|_| pace.before_run(16).is_some()).count();
        // 1,024 elements: one timing per 64 of them.
        assert_eq!(timed, 16);
        let timed = (0..64).filter(|_| pace.before_run(64).is_some()).count();
        assert_eq!(timed, 64);
    }

    #[test]
    // Under shuttle every interval is zero.
    #[cfg(not(feature = "shuttle"))]
    fn a_slow_run_makes_the_iterator_slow_again() {
        let mut pace = Pace::new();
        // A million elements at once: quick unless the thread stalls for a second.
        pace.after_run(Some(Instant::now()), 1_000_000);
        assert!(!pace.slow());
        let asked = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        pace.after_run(Some(asked), 64);
        assert!(pace.slow());
    }
}
