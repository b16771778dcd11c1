//! Async workers: the same contract as thread workers ([`crate::stage::thread`]), with every wait
//! an `.await`.
//!
//! An async stage with `workers(n)` keeps up to `n` futures in flight, spread over a few
//! *driver* tasks: one per runtime thread, or a single one for an ordered stage. A driver
//! polls its futures together, as `buffer_unordered` does, rather than one task per
//! future: thousands of in-flight items then cost no cross-task wake-ups, and the driver
//! takes its inputs and hands over its outputs in batches. (One task per future was
//! measured first, in the harness's `io-async` scenario, and lost to `buffer_unordered`.)
//!
//! Panics in the user's futures are caught per item, so the error names the item; the
//! driver's own queue handles live outside the panic boundary, as in a thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::future::{select, Either};
use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};

use crate::engine::batch::{Fault, Halt, Outlet, Stop};
use crate::engine::meter::poll::PollTimed;
use crate::engine::meter::{Activity, WorkerMeter};
use crate::engine::queue::{Receiver, Sender};
use crate::engine::reorder::{Gate, Reorder};
use crate::engine::sync::Arc;
use crate::engine::sync::Instant;
use crate::engine::tuner::Tuner;
use crate::engine::upstream::Upstream;
use crate::error::Error;
use crate::stage::func::AsyncFn;
use crate::stage::workers::{report, Stage, StageBody};

/// How many futures each driver of a stage with `workers` keeps in flight: one driver
/// per runtime thread, or one driver for an ordered stage, sharing `workers` out.
pub(crate) fn driver_slots(workers: usize, ordered: bool) -> Vec<usize> {
    let threads = crate::engine::runtime::threads();
    let drivers = if ordered {
        1
    } else {
        workers.min(threads).max(1)
    };
    (0..drivers)
        .map(|driver| workers / drivers + usize::from(driver < workers % drivers))
        .collect()
}

/// What one in-flight item yields: an output, a failure, or its end.
enum Event<O> {
    Output(u64, O),
    Failed(u64, crate::error::BoxError),
    Panicked(u64, Box<dyn std::any::Any + Send>),
    Done(u64, Instant),
}

/// Runs one driver of `stage`, with up to `slots` futures in flight, until its input
/// ends, the run stops, or it fails.
pub(crate) async fn drive<I, O>(
    stage: Arc<Stage<I, O>>,
    input: Receiver<I>,
    output: Sender<O>,
    slots: usize,
) where
    I: Send + 'static,
    O: Send + 'static,
{
    let meter = stage.meter.worker();
    let output = output.metered(meter.as_ref());
    let result = match &stage.body {
        StageBody::AsyncEach(body, ordered) => {
            let driver = Driver {
                stage: &stage,
                body,
                outlet: Outlet::new(&output, &stage.run),
                running: SelectAll::new(),
                slots,
                in_order: ordered.then(Reorder::new),
                ready: Vec::new(),
                meter: meter.clone(),
                tuner: stage.tuner.clone(),
            };
            PollTimed::new(driver.run(&input), meter.clone()).await
        }
        _ => unreachable!("only async each-stages have drivers"),
    };
    if let Some(meter) = &meter {
        meter.in_flight.set(0);
        meter.finished();
    }
    if let Err(Halt::Failed(error)) = result {
        stage.meter.failed();
        stage.run.fail(error);
    }
    drop(output);
}

/// Runs one worker of an async join stage: one call of the join function.
pub(crate) async fn join<I, O>(stage: Arc<Stage<I, O>>, input: Receiver<I>, output: Sender<O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let StageBody::AsyncJoin(body) = &stage.body else {
        unreachable!("only async join stages have join workers")
    };
    let meter = stage.meter.worker();
    let output = output.metered(meter.as_ref());
    let started = Instant::now();
    let joined = AssertUnwindSafe(async {
        // Owned by the join, as in a thread worker: dropping it releases upstream.
        let upstream = Upstream::new(input.metered(meter.as_ref()), Arc::clone(&stage.run));
        let mut outlet = Outlet::new(&output, &stage.run);
        let mut outputs = body(upstream);
        while let Some(item) = next_of(&mut outlet, &mut outputs).await? {
            emit(&mut outlet, item.map_err(Fault::Failed)?).await?;
        }
        outlet.flush_async().await.map_err(Fault::from)
    })
    .catch_unwind();
    let result = PollTimed::new(joined, meter.clone()).await;
    if let Some(meter) = &meter {
        // One long call: all of its life that was not spent handing on was work.
        let blocked = std::time::Duration::from_nanos(meter.blocked.get());
        let busy = started.elapsed().saturating_sub(blocked);
        meter.busy.set(busy.as_nanos() as u64);
        meter.finished();
    }
    report(&stage, result, None);
    drop(output);
}

struct Driver<'a, I, O> {
    stage: &'a Stage<I, O>,
    body: &'a AsyncFn<I, O>,
    outlet: Outlet<'a, O>,
    running: SelectAll<BoxStream<'static, Event<O>>>,
    slots: usize,
    /// For an ordered stage: the outputs of items started and not yet released.
    in_order: Option<Reorder<O>>,
    /// Outputs an ordered driver may release now.
    ready: Vec<O>,
    meter: Option<Arc<WorkerMeter>>,
    /// For a stage whose worker count the run tunes: how many slots may be busy now.
    tuner: Option<Arc<Tuner>>,
}

impl<I, O> Driver<'_, I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    async fn run(mut self, input: &Receiver<I>) -> Result<(), Halt> {
        let mut batch = Vec::new();
        let mut open = true;
        loop {
            if self.stage.run.is_cancelled() {
                return Ok(());
            }
            if let Some(tuner) = &self.tuner {
                tuner.look(input.looks_empty(), self.outlet.output.looks_full());
            }
            // Start whatever input is ready, without waiting.
            let free = self.free_slots();
            if open && free > 0 {
                match input.pop_batch_async(&mut batch, free).now_or_never() {
                    Some(Some(first)) => self.start(first, &mut batch),
                    Some(None) => open = false,
                    None => {}
                }
            }
            if self.running.is_empty() {
                if !open {
                    break;
                }
                self.hand_over().await?;
                let since = self
                    .meter
                    .as_ref()
                    .and_then(|m| m.wait_begins(Activity::Starved));
                let popped = input.pop_batch_async(&mut batch, self.free_slots()).await;
                if let (Some(meter), Some(since)) = (&self.meter, since) {
                    // Every slot of the driver waited.
                    meter.wait_ends_for(Activity::Starved, since, self.slots);
                }
                match popped {
                    Some(first) => self.start(first, &mut batch),
                    None => open = false,
                }
                continue;
            }
            // Take what is ready; before waiting, hand over what is gathered.
            let event = match self.running.next().now_or_never() {
                Some(event) => Some(event),
                None => {
                    self.hand_over().await?;
                    let free = self.free_slots();
                    if open && free > 0 {
                        let woke = {
                            let next_input =
                                std::pin::pin!(input.pop_batch_async(&mut batch, free));
                            match select(self.running.next(), next_input).await {
                                Either::Left((event, _)) => Ok(event),
                                Either::Right((first, _)) => Err(first),
                            }
                        };
                        match woke {
                            Ok(event) => Some(event),
                            Err(Some(first)) => {
                                self.start(first, &mut batch);
                                None
                            }
                            Err(None) => {
                                open = false;
                                None
                            }
                        }
                    } else {
                        Some(self.running.next().await)
                    }
                }
            };
            if let Some(Some(event)) = event {
                self.handle(event).await?;
            }
        }
        self.hand_over().await
    }

    /// Slots free for new items; an ordered driver also counts what waits in its buffer.
    fn free_slots(&self) -> usize {
        let busy = match &self.in_order {
            Some(in_order) => in_order.len().max(self.running.len()),
            None => self.running.len(),
        };
        let slots = match &self.tuner {
            Some(tuner) => tuner.active().min(self.slots),
            None => self.slots,
        };
        slots.saturating_sub(busy)
    }

    fn start(&mut self, first: u64, batch: &mut Vec<I>) {
        let started = Instant::now();
        if let Some(meter) = &self.meter {
            meter.items_in.add(batch.len() as u64);
        }
        for (index, item) in (first..).zip(batch.drain(..)) {
            let gate = self.in_order.as_mut().map(|in_order| in_order.start(index));
            // The body runs the user's function at once, before any future exists: a panic
            // there is this item's too.
            let outputs = match catch_unwind(AssertUnwindSafe(|| (self.body)(item))) {
                Ok(outputs) => AssertUnwindSafe(match gate {
                    Some(gate) => Gated { outputs, gate }.boxed(),
                    None => outputs,
                })
                .catch_unwind()
                .map(move |output| match output {
                    Ok(Ok(value)) => Event::Output(index, value),
                    Ok(Err(error)) => Event::Failed(index, error),
                    Err(payload) => Event::Panicked(index, payload),
                })
                .chain(stream::once(async move { Event::Done(index, started) }))
                .boxed(),
                Err(payload) => {
                    stream::once(async move { Event::Panicked(index, payload) }).boxed()
                }
            };
            self.running.push(outputs);
        }
        if let Some(meter) = &self.meter {
            meter.in_flight.set(self.running.len() as u64);
        }
    }

    async fn handle(&mut self, event: Event<O>) -> Result<(), Halt> {
        let name = &self.stage.name;
        match event {
            Event::Output(index, value) => {
                let value = match &mut self.in_order {
                    Some(in_order) => in_order.output(index, value),
                    None => Some(value),
                };
                if let Some(value) = value {
                    emit(&mut self.outlet, value).await?;
                }
            }
            Event::Done(index, started) => {
                if let Some(tuner) = &self.tuner {
                    // An async item's CPU time is not its thread's: it is not measured.
                    tuner.finished(1, None);
                }
                if let Some(meter) = &self.meter {
                    meter.busy.add(started.elapsed().as_nanos() as u64);
                    meter.in_flight.set(self.running.len() as u64);
                }
                if let Some(in_order) = &mut self.in_order {
                    let mut ready = std::mem::take(&mut self.ready);
                    in_order.done(index, &mut ready);
                    for value in ready.drain(..) {
                        emit(&mut self.outlet, value).await?;
                    }
                    self.ready = ready;
                }
            }
            Event::Failed(index, error) => {
                return Err(Halt::Failed(Error::failed(name, Some(index), error)));
            }
            Event::Panicked(index, payload) => {
                return Err(Halt::Failed(Error::panicked(name, Some(index), payload)));
            }
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<(), Halt> {
        if let Some(meter) = &self.meter {
            meter.in_flight.set(self.running.len() as u64);
        }
        Ok(self.outlet.flush_async().await?)
    }
}

/// Gathers an output in `outlet`, handing the gathered ones over if it is time.
async fn emit<O>(outlet: &mut Outlet<'_, O>, item: O) -> Result<(), Stop> {
    if outlet.add(item)? {
        outlet.flush_async().await?;
    }
    Ok(())
}

/// The next output of `outputs`, handing over what is gathered first if it is not ready,
/// so no output waits behind a pending future.
async fn next_of<T, O>(
    outlet: &mut Outlet<'_, O>,
    outputs: &mut BoxStream<'_, T>,
) -> Result<Option<T>, Stop> {
    if let Some(next) = outputs.next().now_or_never() {
        return Ok(next);
    }
    outlet.flush_async().await?;
    Ok(outputs.next().await)
}

/// An item's outputs behind its [`Gate`].
struct Gated<S> {
    outputs: S,
    gate: Arc<Gate>,
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        if !this.gate.poll_open(cx) {
            return Poll::Pending;
        }
        this.outputs.poll_next_unpin(cx)
    }
}
