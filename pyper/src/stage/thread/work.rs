//! The worker loop of a thread stage.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::batch::{hand_over_size, BatchLimit, Emit, Fault, Outlet};
use crate::engine::map::MapBatch;
use crate::engine::meter::Recorder;
use crate::engine::queue::Shelf;
use crate::engine::queue::{Receiver, Refill, Sender, SharedShelf};
use crate::engine::run::{discard, discard_or_resume};
use crate::engine::sequencer::{InOrder, Sequencer};
use crate::engine::shelf::{Gather, Hands};
use crate::engine::sync::{Arc, Instant};
use crate::engine::tuner::Seat;
use crate::engine::upstream::Upstream;
use crate::stage::func::{BatchFn, EachFn};
use crate::stage::workers::{report, Stage, StageBody};

/// Runs one worker of `stage` until its input ends, the run stops, or it fails.
pub(crate) fn work<I, O>(stage: Arc<Stage<I, O>>, input: Receiver<I>, output: Sender<O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
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
            StageBody::Each(body, batch) => {
                let body = (body, batch.as_ref());
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

fn each<I, O>(
    stage: &Stage<I, O>,
    (body, batch_body): (&EachFn<I, O>, Option<&BatchFn<I, O>>),
    input: &Receiver<I>,
    output: &Sender<O>,
    mut recorder: Option<&mut Recorder>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault>
where
    I: Send + 'static,
    O: Send + 'static,
{
    if stage.meter.workers > 1 {
        return each_shared(stage, body, input, output, recorder, current_item);
    }
    let mut outlet = Outlet::new(output, &stage.run).lazy();
    let mut batch = Vec::new();
    let mut limit = BatchLimit::new();
    while let Some(first) = input.pop_batch_then(&mut batch, limit.lone(), || output.announce()) {
        let started = begin_batch(recorder.as_deref_mut());
        let count = batch.len();
        let (called, result) = match batch_body {
            Some(batch_body) => {
                let mut map = MapBatch {
                    items: &mut batch,
                    first,
                    outlet: &mut outlet,
                    current_item,
                    called: 0,
                };
                let result = batch_body(&mut map);
                (map.called, result)
            }
            None => call_batch(stage, body, first, &mut batch, &mut outlet, current_item),
        };
        end_batch(recorder.as_deref_mut(), &mut limit, started, count, called);
        result?;
        outlet.flush()?;
    }
    Ok(())
}

/// A worker's shelf, shared with the other workers of its stage (see
/// [`crate::engine::shelf`]), and its place in the input queue.
fn share_shelf<I, O>(
    input: &Receiver<I>,
    output: &Sender<O>,
    recorder: Option<&Recorder>,
) -> (Arc<Hands<I, O>>, SharedShelf<I>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let meter = recorder.map(|recorder| &recorder.meter);
    let hands = Arc::new(Hands::new(
        output.clone().metered(meter),
        hand_over_size(output),
    ));
    let shared = input.share_shelf(Arc::clone(&hands) as Arc<dyn Shelf<I>>);
    (hands, shared)
}

/// [`each`] for a stage with several workers: the batch waits on a shelf its siblings can
/// take from, and its outputs gather there too.
fn each_shared<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    input: &Receiver<I>,
    output: &Sender<O>,
    mut recorder: Option<&mut Recorder>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let (hands, shelf) = share_shelf(input, output, recorder.as_deref());
    let mut out = Gather::new(&hands, &stage.run);
    let mut scratch = Vec::new();
    let mut limit = BatchLimit::new();
    let meter = recorder.as_deref().map(|recorder| &recorder.meter);
    let mut seat = stage.tuner.as_ref().map(|tuner| Seat::take(tuner, meter));
    loop {
        if let Some(seat) = seat.as_mut() {
            let empty = input.looks_empty();
            // A worker about to park hands on what it gathered first.
            if !seat.admit(empty, output.looks_full(), || drop(out.flush())) {
                break;
            }
        }
        if input.refill(&shelf, &mut scratch, limit.get()) != Refill::Items {
            break;
        }
        if let Some(seat) = seat.as_mut() {
            seat.begin();
        }
        let started = begin_batch(recorder.as_deref_mut());
        let mut called = 0;
        let result = loop {
            let (index, item) = match out.next_item() {
                Ok(Some(next)) => next,
                Ok(None) => break Ok(()),
                Err(stop) => break Err(stop.into()),
            };
            if stage.run.is_cancelled() {
                break Err(Fault::Stop);
            }
            *current_item = Some(index);
            called += 1;
            if let Err(fault) = body(item, &mut out) {
                break Err(fault);
            }
        };
        end_batch(recorder.as_deref_mut(), &mut limit, started, called, called);
        if let Some(seat) = seat.as_mut() {
            seat.finished(called);
        }
        result?;
        // The batch took its time (about `BATCH_TIME`, or one slow item): its outputs
        // go on now, not when a batch's worth is gathered, which items this slow may
        // never make before the next one blocks.
        out.flush()?;
    }
    Ok(out.flush()?)
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

/// An ordered stage's worker: its batch waits on a shared shelf as in [`each_shared`], and
/// its outputs leave in order through the stage's [`Sequencer`].
fn ordered<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    (sequencer, input, output): (&Sequencer<O>, &Receiver<I>, &Sender<O>),
    recorder: Option<&mut Recorder>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let meter = recorder
        .as_deref()
        .map(|recorder| Arc::clone(&recorder.meter));
    let outlet = Outlet::new(output, &stage.run).lazy();
    let mut order = InOrder::new(sequencer, outlet, meter.as_deref());
    let result = ordered_items(stage, body, input, &mut order, recorder, current_item);
    if result.is_err() {
        // Nobody may wait for a turn this worker will not pass on.
        order.stop();
    }
    result
}

fn ordered_items<I, O>(
    stage: &Stage<I, O>,
    body: &EachFn<I, O>,
    input: &Receiver<I>,
    order: &mut InOrder<'_, O>,
    mut recorder: Option<&mut Recorder>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let (hands, shelf) = share_shelf(input, order.output(), recorder.as_deref());
    let (mut none, mut ready) = (Vec::new(), Vec::new());
    let mut scratch = Vec::new();
    let mut limit = BatchLimit::new();
    let meter = recorder.as_deref().map(|recorder| &recorder.meter);
    let mut seat = stage.tuner.as_ref().map(|tuner| Seat::take(tuner, meter));
    loop {
        // Ends the run in hand (a worker waiting for input must not hold the turn), and
        // waits until what it handed in leaves room for more.
        let room = order.finish()?;
        if let Some(seat) = seat.as_mut() {
            let full = order.output().looks_full();
            if !seat.admit(input.looks_empty(), full, || ()) {
                return Ok(());
            }
        }
        let max = limit.get().min(room);
        if input.refill(&shelf, &mut scratch, max) == Refill::Over {
            return Ok(());
        }
        if let Some(seat) = seat.as_mut() {
            seat.begin();
        }
        let started = begin_batch(recorder.as_deref_mut());
        let mut called = 0;
        let result = loop {
            let Some((index, item)) = hands.next(&mut none, &mut ready) else {
                break Ok(());
            };
            if stage.run.is_cancelled() {
                break Err(Fault::Stop);
            }
            if let Err(stop) = order.at(index) {
                break Err(stop.into());
            }
            *current_item = Some(index);
            called += 1;
            if let Err(fault) = body(item, order) {
                break Err(fault);
            }
        };
        end_batch(recorder.as_deref_mut(), &mut limit, started, called, called);
        if let Some(seat) = seat.as_mut() {
            seat.finished(called);
        }
        result?;
    }
}
