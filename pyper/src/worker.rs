//! The loop of one worker thread: take what is ready, call the task, hand on the outputs.
//!
//! Every worker follows the same contract, whatever its stage:
//!
//! * all user code runs under `catch_unwind`, so a panic becomes the run's error *before*
//!   the worker's queue handles are dropped (see [`crate::run`]);
//! * it checks the run's cancel flag between items, and a closed queue stops it;
//! * it takes up to a batch of ready items and hands on its outputs in batches, never
//!   waiting to fill one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::error::{BoxError, Error};
use crate::meter::{Activity, Recorder, StageMeter};
use crate::queue::{Receiver, Sender};
use crate::run::RunState;
use crate::sequencer::Sequencer;
use crate::sync::{Arc, Instant};
use crate::upstream::Upstream;

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
}

/// Emits every element of a user's iterator (an input iterator, a `branch` output).
///
/// Elements flow on as they are produced: before asking the iterator for an element that
/// may take a while (a channel, a socket, a page fetch), the worker hands over what it
/// gathered, so no element waits behind a blocked producer, and a pipeline fed back from
/// its own output cannot deadlock that way. Two signs say "may take a while": a
/// `size_hint` that promises nothing (a channel), or elements that took [`SLOW_ELEMENT`] or
/// more to come. While elements come quickly from an iterator that promises more (a range,
/// a `Vec`, a cheap `map`), they move in batches.
pub(crate) fn emit_each<It, T>(
    elements: It,
    out: &mut dyn Emit<T>,
    mut each: impl FnMut(It::Item, &mut dyn Emit<T>) -> Result<(), Fault>,
) -> Result<(), Fault>
where
    It: IntoIterator,
{
    let mut elements = elements.into_iter();
    loop {
        let (promised, most) = elements.size_hint();
        let asked = out.before_next(promised == 0 && most != Some(0))?;
        let element = elements.next();
        out.after_next(asked);
        match element {
            Some(element) => each(element, out)?,
            None => return Ok(()),
        }
    }
}

/// An element that takes this long to come is handed over before the next is asked for:
/// the hand-over then costs a few percent of the wait at most.
const SLOW_ELEMENT: Duration = Duration::from_micros(1);

/// How many quick elements in a row make an iterator quick, and how often a quick one is
/// timed again.
const QUICK_STREAK: u32 = 64;

/// Tells quick iterators from slow ones. Only the iterator's own `next` is timed, never
/// the hand-overs, and a quick iterator only once per [`QUICK_STREAK`] elements.
struct Pace {
    quick_streak: u32,
    asked: u32,
}

impl Pace {
    fn new() -> Self {
        Pace {
            quick_streak: 0,
            asked: 0,
        }
    }

    fn slow(&self) -> bool {
        self.quick_streak < QUICK_STREAK
    }

    fn before(&mut self) -> Option<Instant> {
        self.asked = self.asked.wrapping_add(1);
        (self.slow() || self.asked % QUICK_STREAK == 0).then(Instant::now)
    }

    fn after(&mut self, asked: Option<Instant>) {
        if let Some(asked) = asked {
            self.quick_streak = match asked.elapsed() < SLOW_ELEMENT {
                true => self.quick_streak.saturating_add(1),
                false => 0,
            };
        }
    }
}

/// A task body called once per input item.
pub(crate) type EachFn<I, O> =
    Arc<dyn Fn(I, &mut dyn Emit<O>) -> Result<(), Fault> + Send + Sync + 'static>;

/// A task body called once per worker with the worker's share of the whole stream.
pub(crate) type JoinFn<I, O> = EachFn<Upstream<I>, O>;

/// What one stage's workers share.
pub(crate) struct Stage<I, O> {
    pub(crate) name: Arc<str>,
    pub(crate) run: Arc<crate::run::RunState>,
    pub(crate) body: StageBody<I, O>,
    pub(crate) meter: Arc<StageMeter>,
}

pub(crate) enum StageBody<I, O> {
    Each(EachFn<I, O>),
    Ordered(EachFn<I, O>, Arc<Sequencer<O>>),
    Join(JoinFn<I, O>),
    #[cfg(feature = "async")]
    /// An async task's body, and whether the stage is ordered.
    AsyncEach(crate::async_task::AsyncFn<I, O>, bool),
    #[cfg(feature = "async")]
    AsyncJoin(crate::async_task::AsyncFn<Upstream<I>, O>),
}

/// Runs one worker of `stage` until its input ends, the run stops, or it fails.
pub(crate) fn work<I, O>(stage: Arc<Stage<I, O>>, input: Receiver<I>, output: Sender<O>) {
    let mut current_item = None;
    let mut recorder = stage.meter.worker().map(|meter| match stage.body {
        // A join is one long call: its waits for input are timed, to tell them from work.
        StageBody::Join(_) => Recorder::begin(meter),
        _ => Recorder::begin(meter).starved_is_the_rest(),
    });
    let meter = recorder.as_ref().map(|recorder| &recorder.meter);
    let (input, output) = (input.metered(meter), output.metered(meter));
    let mut input = Some(input);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let Some(receiver) = input.as_ref() else {
            return Ok(());
        };
        let recorder = recorder.as_mut();
        match &stage.body {
            StageBody::Each(body) => {
                each(&stage, body, receiver, &output, recorder, &mut current_item)
            }
            StageBody::Ordered(body, sequencer) => ordered(
                &stage,
                body,
                (sequencer, receiver, &output),
                recorder,
                &mut current_item,
            ),
            StageBody::Join(body) => {
                // The join task owns its input: dropping its `Upstream` early tells the
                // stages above that nobody needs more items.
                let receiver = input.take().expect("checked above");
                let upstream = Upstream::new(receiver, Arc::clone(&stage.run));
                let mut outlet = Outlet::new(&output, &stage.run);
                let started = Instant::now();
                let result = body(upstream, &mut outlet).and_then(|()| Ok(outlet.flush()?));
                if let Some(recorder) = recorder {
                    recorder.whole_life_busy(started);
                }
                result
            }
            #[cfg(feature = "async")]
            StageBody::AsyncEach(..) | StageBody::AsyncJoin(_) => {
                unreachable!("async stages run on tasks")
            }
        }
    }));
    // Reported while `output` is still alive: see the module docs of `run`.
    report(&stage, result, current_item);
    drop(recorder);
    drop(output);
}

/// Makes a worker's failure, if it had one, the run's error.
pub(crate) fn report<I, O>(
    stage: &Stage<I, O>,
    result: std::thread::Result<Result<(), Fault>>,
    current_item: Option<u64>,
) {
    let error = match result {
        Ok(Ok(())) | Ok(Err(Fault::Stop)) => return,
        Ok(Err(Fault::Failed(error))) => Error::failed(&stage.name, current_item, error),
        Err(payload) => Error::panicked(&stage.name, current_item, payload),
    };
    stage.meter.failed();
    stage.run.fail(error);
}

fn each<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    input: &Receiver<I>,
    output: &Sender<O>,
    mut recorder: Option<&mut Recorder>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault> {
    let mut outlet = Outlet::new(output, &stage.run);
    let mut batch = Vec::new();
    let mut limit = BatchLimit::new();
    while let Some(first) = input.pop_batch(&mut batch, limit.get()) {
        let started = begin_batch(recorder.as_deref_mut());
        let count = batch.len();
        let (called, result) =
            call_batch(stage, body, first, &mut batch, &mut outlet, current_item);
        end_batch(recorder.as_deref_mut(), &mut limit, started, count, called);
        result?;
        outlet.flush()?;
    }
    Ok(())
}

/// Records a batch that began at `started` (the items it took, the calls it made), and
/// sizes the next one from how long it took.
fn end_batch(
    recorder: Option<&mut Recorder>,
    limit: &mut BatchLimit,
    started: Instant,
    count: usize,
    called: usize,
) {
    let now = Instant::now();
    let took = now.saturating_duration_since(started);
    if let Some(recorder) = recorder {
        recorder.batch(started, now, took, called);
    }
    limit.adapt(took, count);
}

fn begin_batch(recorder: Option<&mut Recorder>) -> Instant {
    match recorder {
        Some(recorder) => recorder.batch_begins(),
        None => Instant::now(),
    }
}

/// Calls the body on each item of a batch, numbered from `first`, until one fails or the
/// run stops. Returns how many calls were made, so that metrics count them even then.
fn call_batch<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    first: u64,
    batch: &mut Vec<I>,
    out: &mut dyn Emit<O>,
    current_item: &mut Option<u64>,
) -> (usize, Result<(), Fault>) {
    let mut called = 0;
    for (index, item) in (first..).zip(batch.drain(..)) {
        if stage.run.is_cancelled() {
            return (called, Err(Fault::Stop));
        }
        *current_item = Some(index);
        called += 1;
        if let Err(fault) = body(item, out) {
            return (called, Err(fault));
        }
    }
    (called, Ok(()))
}

fn ordered<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    (sequencer, input, output): (&Sequencer<O>, &Receiver<I>, &Sender<O>),
    mut recorder: Option<&mut Recorder>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault> {
    let mut batch = Vec::new();
    let mut limit = BatchLimit::new();
    while let Some(first) = input.pop_batch(&mut batch, limit.get()) {
        let count = batch.len();
        match recorder.as_deref() {
            // Waiting for its turn to start is waiting on downstream's pace: blocked.
            Some(recorder) => {
                let since = recorder.meter.wait_begins(Activity::Blocked);
                let turn = sequencer.wait_turn(first);
                if let Some(since) = since {
                    recorder.meter.wait_ends(Activity::Blocked, since);
                }
                turn?;
            }
            None => sequencer.wait_turn(first)?,
        }
        let started = begin_batch(recorder.as_deref_mut());
        let mut outputs = Collect {
            items: Vec::with_capacity(count),
            run: &stage.run,
        };
        let (called, result) =
            call_batch(stage, body, first, &mut batch, &mut outputs, current_item);
        end_batch(recorder.as_deref_mut(), &mut limit, started, count, called);
        result?;
        let mut ready = sequencer.complete(first, count as u64, outputs.items)?;
        while let Some(mut batch) = ready {
            if output.push_all(&mut batch).is_err() {
                sequencer.stop();
                return Err(Fault::Stop);
            }
            ready = sequencer.pushed()?;
        }
    }
    Ok(())
}

/// How many ready items a worker takes at once.
///
/// It starts at one item and doubles towards the count that [`BATCH_TIME`] allows, so
/// trivial items move in bulk while slow ones are taken one at a time: their outputs are
/// not held back behind a long batch, and they spread over every worker of the stage.
pub(crate) struct BatchLimit {
    limit: usize,
}

impl BatchLimit {
    pub(crate) fn new() -> Self {
        BatchLimit { limit: 1 }
    }

    pub(crate) fn get(&self) -> usize {
        self.limit
    }

    pub(crate) fn adapt(&mut self, took: Duration, count: usize) {
        let per_item = took / count.max(1) as u32;
        let fits = (BATCH_TIME.as_nanos() / per_item.as_nanos().max(1)) as usize;
        // Grow gently, so that one fast item cannot make a worker hoard a slow stream.
        self.limit = fits.clamp(1, MAX_BATCH).min(self.limit * 2);
    }
}

/// A worker's output buffer: outputs leave in batches, and at once when downstream is
/// idle, so a quiet pipeline keeps its latency while a busy one moves items in bulk.
pub(crate) struct Outlet<'a, O> {
    pub(crate) output: &'a Sender<O>,
    pub(crate) run: &'a RunState,
    pub(crate) buffer: Vec<O>,
    pub(crate) max: usize,
    /// How quickly the iterators this worker drives produce their elements.
    pace: Pace,
}

impl<'a, O> Outlet<'a, O> {
    pub(crate) fn new(output: &'a Sender<O>, run: &'a RunState) -> Self {
        Outlet {
            output,
            run,
            buffer: Vec::new(),
            max: hand_over_size(output),
            pace: Pace::new(),
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.output.push_all(&mut self.buffer).map_err(|_| Stop)
    }
}

impl<O> Emit<O> for Outlet<'_, O> {
    fn before_next(&mut self, may_block: bool) -> Result<Option<Instant>, Stop> {
        if may_block || self.pace.slow() {
            self.flush()?;
        }
        Ok(self.pace.before())
    }

    fn after_next(&mut self, asked: Option<Instant>) {
        self.pace.after(asked);
    }

    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.buffer.push(item);
        if should_hand_over(&self.buffer, self.max, self.output) {
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

/// Collects the outputs of an ordered stage's batch, to be released in order.
pub(crate) struct Collect<'a, O> {
    pub(crate) items: Vec<O>,
    pub(crate) run: &'a RunState,
}

impl<O> Emit<O> for Collect<'_, O> {
    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.items.push(item);
        Ok(())
    }
}
