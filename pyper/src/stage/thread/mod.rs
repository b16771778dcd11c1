//! The loop of one worker thread: take what is ready, call the task, hand on the outputs.
//!
//! Every worker follows the same contract, whatever its stage:
//!
//! * all user code runs under `catch_unwind`, so a panic becomes the run's error *before*
//!   the worker's queue handles are dropped (see [`crate::engine::run`]);
//! * it checks the run's cancel flag between items, and a closed queue stops it;
//! * it takes up to a batch of ready items and hands on its outputs in batches, never
//!   waiting to fill one.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::batch::{BatchLimit, Collect, Emit, Fault, Outlet};
use crate::engine::meter::{Activity, Recorder, StageMeter};
use crate::engine::queue::{Receiver, Sender};
use crate::engine::run::{discard, discard_or_resume};
use crate::engine::sequencer::Sequencer;
use crate::engine::sync::{Arc, Instant};
use crate::engine::upstream::Upstream;
use crate::error::Error;

/// A task body called once per input item.
pub(crate) type EachFn<I, O> =
    Arc<dyn Fn(I, &mut dyn Emit<O>) -> Result<(), Fault> + Send + Sync + 'static>;

/// Builds, in each worker, the body that worker calls (a task with per-worker state).
pub(crate) type SetupFn<I, O> =
    Arc<dyn Fn() -> Result<EachFn<I, O>, crate::error::BoxError> + Send + Sync + 'static>;

/// A task body called once per worker with the worker's share of the whole stream.
pub(crate) type JoinFn<I, O> = EachFn<Upstream<I>, O>;

/// What one stage's workers share.
pub(crate) struct Stage<I, O> {
    pub(crate) name: Arc<str>,
    pub(crate) run: Arc<crate::engine::run::RunState>,
    pub(crate) body: StageBody<I, O>,
    pub(crate) meter: Arc<StageMeter>,
}

pub(crate) enum StageBody<I, O> {
    Each(EachFn<I, O>),
    Ordered(EachFn<I, O>, Arc<Sequencer<O>>),
    Join(JoinFn<I, O>),
    #[cfg(feature = "async")]
    /// An async task's body, and whether the stage is ordered.
    AsyncEach(crate::stage::async_task::AsyncFn<I, O>, bool),
    #[cfg(feature = "async")]
    AsyncJoin(crate::stage::async_task::AsyncFn<Upstream<I>, O>),
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
    let mut items = batch.drain(..);
    for (index, item) in (first..).zip(&mut items) {
        if stage.run.is_cancelled() {
            // The rest of the batch is user values, whose `Drop` may panic: each on its
            // own, and the first panic becomes this worker's (the run stopped already).
            discard_or_resume(std::iter::once(item).chain(items));
            return (called, Err(Fault::Stop));
        }
        *current_item = Some(index);
        called += 1;
        if let Err(fault) = body(item, out) {
            // The failure is the error, whatever the `Drop` of the items left does.
            let _ = discard(items);
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

mod launch;
pub(crate) mod retry;

pub(crate) use launch::{launch_each, launch_join, launch_per_worker};
