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
}

pub(crate) enum StageBody<I, O> {
    Each(EachFn<I, O>),
    Ordered(EachFn<I, O>, Arc<Sequencer<O>>),
    Join(JoinFn<I, O>),
}

/// Runs one worker of `stage` until its input ends, the run stops, or it fails.
pub(crate) fn work<I, O>(stage: Arc<Stage<I, O>>, input: Receiver<I>, output: Sender<O>) {
    let mut current_item = None;
    let mut input = Some(input);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let Some(receiver) = input.as_ref() else {
            return Ok(());
        };
        match &stage.body {
            StageBody::Each(body) => each(&stage, body, receiver, &output, &mut current_item),
            StageBody::Ordered(body, sequencer) => ordered(
                &stage,
                body,
                sequencer,
                receiver,
                &output,
                &mut current_item,
            ),
            StageBody::Join(body) => {
                // The join task owns its input: dropping its `Upstream` early tells the
                // stages above that nobody needs more items.
                let receiver = input.take().expect("checked above");
                let upstream = Upstream::new(receiver, Arc::clone(&stage.run));
                let mut outlet = Outlet::new(&output, &stage.run);
                body(upstream, &mut outlet)?;
                outlet.flush().map_err(Fault::from)
            }
        }
    }));
    let error = match result {
        Ok(Ok(())) | Ok(Err(Fault::Stop)) => return,
        Ok(Err(Fault::Failed(error))) => Error::failed(&stage.name, current_item, error),
        Err(payload) => Error::panicked(&stage.name, current_item, payload),
    };
    // Recorded while `output` is still alive: see the module docs of `run`.
    stage.run.fail(error);
}

fn each<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    input: &Receiver<I>,
    output: &Sender<O>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault> {
    let mut outlet = Outlet::new(output, &stage.run);
    let mut batch = Vec::new();
    let mut limit = BatchLimit::new();
    while let Some(first) = input.pop_batch(&mut batch, limit.get()) {
        let started = limit.start();
        let count = batch.len();
        for (index, item) in (first..).zip(batch.drain(..)) {
            if stage.run.is_cancelled() {
                return Err(Fault::Stop);
            }
            *current_item = Some(index);
            body(item, &mut outlet)?;
        }
        limit.adapt(started, count);
        outlet.flush()?;
    }
    Ok(())
}

fn ordered<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    sequencer: &Sequencer<O>,
    input: &Receiver<I>,
    output: &Sender<O>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault> {
    let mut batch = Vec::new();
    let mut limit = BatchLimit::new();
    while let Some(first) = input.pop_batch(&mut batch, limit.get()) {
        let count = batch.len();
        sequencer.wait_turn(first)?;
        let started = limit.start();
        let mut outputs = Collect {
            items: Vec::with_capacity(count),
            run: &stage.run,
        };
        for (index, item) in (first..).zip(batch.drain(..)) {
            if stage.run.is_cancelled() {
                return Err(Fault::Stop);
            }
            *current_item = Some(index);
            body(item, &mut outputs)?;
        }
        sequencer.complete(first, count as u64, outputs.items, output)?;
        limit.adapt(started, count);
    }
    Ok(())
}

/// How many ready items a worker takes at once.
///
/// It starts at one item and doubles towards the count that [`BATCH_TIME`] allows, so
/// trivial items move in bulk while slow ones are taken one at a time: their outputs are
/// not held back behind a long batch, and they spread over every worker of the stage.
struct BatchLimit {
    limit: usize,
}

impl BatchLimit {
    fn new() -> Self {
        BatchLimit { limit: 1 }
    }

    fn get(&self) -> usize {
        self.limit
    }

    fn start(&self) -> Instant {
        Instant::now()
    }

    fn adapt(&mut self, started: Instant, count: usize) {
        let per_item = started.elapsed() / count.max(1) as u32;
        let fits = (BATCH_TIME.as_nanos() / per_item.as_nanos().max(1)) as usize;
        // Grow gently, so that one fast item cannot make a worker hoard a slow stream.
        self.limit = fits.clamp(1, MAX_BATCH).min(self.limit * 2);
    }
}

/// A worker's output buffer: outputs leave in batches, and at once when downstream is
/// idle, so a quiet pipeline keeps its latency while a busy one moves items in bulk.
pub(crate) struct Outlet<'a, O> {
    output: &'a Sender<O>,
    run: &'a RunState,
    buffer: Vec<O>,
    max: usize,
}

impl<'a, O> Outlet<'a, O> {
    pub(crate) fn new(output: &'a Sender<O>, run: &'a RunState) -> Self {
        Outlet {
            output,
            run,
            buffer: Vec::new(),
            // A quarter of the bound: the consumer can take one batch while the producer
            // fills the next, instead of the two taking turns.
            max: (output.capacity() / 4).clamp(1, MAX_BATCH),
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
    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.buffer.push(item);
        if self.buffer.len() >= self.max || self.output.looks_hungry() {
            self.flush()
        } else {
            Ok(())
        }
    }
}

/// Collects the outputs of an ordered stage's batch, to be released in order.
struct Collect<'a, O> {
    items: Vec<O>,
    run: &'a RunState,
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
