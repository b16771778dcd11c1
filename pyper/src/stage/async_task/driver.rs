//! Async workers: the same contract as thread workers ([`crate::stage::thread`]), with every wait
//! an `.await`.
//!
//! An async stage with `workers(n)` keeps up to `n` futures in flight, spread over a few
//! *driver* tasks: one per [`SLOTS_PER_DRIVER`] futures, at most one per runtime thread,
//! and a single one for an ordered stage. A driver polls its futures together, as
//! `buffer_unordered` does, rather than one task per future: thousands of in-flight items
//! then cost no cross-task wake-ups, and the driver takes its inputs and hands over its
//! outputs in batches. (One task per future was
//! measured first, in the harness's `io-async` scenario, and lost to `buffer_unordered`.)
//!
//! Panics in the user's futures are caught per item, so the error names the item; the
//! driver's own queue handles live outside the panic boundary, as in a thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::future::{select, Either};
use futures_util::stream::{self, BoxStream, FuturesUnordered, StreamFuture};
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

/// How many futures in flight a driver takes before its stage has another, up to one
/// driver per runtime thread.
///
/// Items that are ready together (a wave of timers, the replies to a burst of requests)
/// are handed on and replaced in one burst, about 0.3 µs per item. Up to a few thousand,
/// the burst fits in one driver's millisecond. Split between two drivers on two
/// threads, the second starts late, its replacements' timers land on the next tick, and
/// the wave stays split. Past that, spreading the burst over threads pays for the
/// split. Measured in the harness, in the same runs, against `buffer_unordered`
/// (113.5 ms): 1,000 timers in flight took 114.0 ms on one driver and 114.8 ms on two;
/// 100,000 took 60.8 ms on one and 46.8 ms on two (`buffer_unordered`: 46.0 ms).
pub(crate) const SLOTS_PER_DRIVER: usize = 4096;

/// How many futures each driver of a stage with `workers` keeps in flight: one driver
/// per [`SLOTS_PER_DRIVER`], at most one per runtime thread, or one driver for an ordered
/// stage, sharing `workers` out.
pub(crate) fn driver_slots(workers: usize, ordered: bool) -> Vec<usize> {
    let threads = crate::engine::runtime::threads();
    let drivers = if ordered {
        1
    } else {
        workers.div_ceil(SLOTS_PER_DRIVER).clamp(1, threads)
    };
    (0..drivers)
        .map(|driver| workers / drivers + usize::from(driver < workers % drivers))
        .collect()
}

/// How many turns of its loop (each an event or a batch of inputs started) a driver takes
/// before it gives its runtime thread to the other tasks, as tokio's own budget would
/// after 128 operations.
const EVENTS_PER_YIELD: u32 = 1024;

/// How many turns of its loop a driver takes between two readings of the clock, which
/// times its items' ends. Within a burst, a turn is a fraction of a microsecond: an
/// item's time is off by a few microseconds at most, for one reading per item saved (in a
/// profile of `io-async`, reading the clock for each item was 3% of the driver's time).
const CLOCK_EVERY: u32 = 32;

/// While items are ready, free slots are refilled once an eighth of the driver's slots are
/// free, up to this many, or after this many events: one lock of the input queue, and at
/// most one wake-up of its producer, per batch rather than per item. Before the driver
/// waits, every free slot is refilled. Measured in the harness's `io-async` (1,000 timers
/// in flight), medians of 21 runs: refilling each slot as it freed took 10.4 ms of CPU,
/// this 7.0 ms.
const REFILL_EVERY: usize = 32;

/// How many free slots a driver of `slots` refills at once while items are ready.
fn refill_at(slots: usize) -> usize {
    (slots / 8).clamp(1, REFILL_EVERY)
}

/// What one in-flight item yields: an output, a failure, or its end (with its last
/// output, when the end came right after it: one event for a one-output item).
enum Event<O> {
    Output(u64, O),
    Failed(u64, crate::error::BoxError),
    Panicked(u64, Box<dyn std::any::Any + Send>),
    Done(u64, Instant, Option<O>),
}

/// One in-flight item: its outputs as [`Event`]s, then its end. One allocation-free
/// stream rather than a chain of combinators: the driver starts thousands of them.
struct Item<O> {
    index: u64,
    started: Instant,
    outputs: Option<BoxStream<'static, Result<O, crate::error::BoxError>>>,
    /// An ordered stage's turn for this item's outputs.
    gate: Option<Arc<Gate>>,
    /// An output that came after another, to be yielded next.
    next: Option<O>,
    /// What the item's first poll, at its start, gave if it was not "pending".
    first: Option<std::thread::Result<Polled<O>>>,
}

/// The items in flight, polled together: `SelectAll` without its cost on the last event.
/// `SelectAll` puts a stream back into its set after each element, which costs an
/// allocation; an item's last event (its end, a failure or a panic) needs no such return,
/// so a one-output item costs one insertion rather than two.
struct InFlight<O> {
    items: FuturesUnordered<StreamFuture<Item<O>>>,
}

impl<O> InFlight<O> {
    fn new() -> Self {
        InFlight {
            items: FuturesUnordered::new(),
        }
    }

    fn push(&mut self, item: Item<O>) {
        self.items.push(item.into_future());
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<O> Stream for InFlight<O> {
    type Item = Event<O>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event<O>>> {
        let this = self.get_mut();
        loop {
            match this.items.poll_next_unpin(cx) {
                Poll::Ready(Some((Some(event), item))) => {
                    if let Event::Output(..) = event {
                        this.items.push(item.into_future());
                    }
                    return Poll::Ready(Some(event));
                }
                // An item that ended without a last event: nothing to say.
                Poll::Ready(Some((None, _))) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What one poll of an item's own stream gave.
type Polled<O> = Poll<Option<Result<O, crate::error::BoxError>>>;

// Nothing of an item is pinned in place: its stream is boxed, its outputs moved out.
impl<O> Unpin for Item<O> {}

impl<O> Item<O> {
    /// Polls the item's own stream, catching a panic of the user's code.
    fn poll_outputs(&mut self, cx: &mut Context<'_>) -> std::thread::Result<Polled<O>> {
        let outputs = self.outputs.as_mut().expect("polled only until its end");
        catch_unwind(AssertUnwindSafe(|| outputs.poll_next_unpin(cx)))
    }

    /// Polls the item once as it starts, so that its work (a timer, a request) begins at
    /// once rather than when the set gets to it, behind every item that is ready. That
    /// can be a whole wave of them: 1,000 timers firing together took 0.25 ms to hand
    /// on, and a timer started after them could land on the next millisecond's tick.
    /// A "pending" is dropped, not kept: the set polls the item again with its own
    /// waker, which is the one that must be registered.
    fn prime(&mut self) {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.poll_outputs(&mut cx) {
            Ok(Poll::Pending) => {}
            polled => self.first = Some(polled),
        }
    }

    fn end(&mut self, last: Option<O>) -> Poll<Option<Event<O>>> {
        self.outputs = None;
        Poll::Ready(Some(Event::Done(self.index, self.started, last)))
    }
}

impl<O> Stream for Item<O> {
    type Item = Event<O>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event<O>>> {
        let this = self.get_mut();
        if this.outputs.is_none() {
            return Poll::Ready(None);
        }
        if let Some(gate) = &this.gate {
            if !gate.poll_open(cx) {
                return Poll::Pending;
            }
        }
        let index = this.index;
        let output = match this.next.take() {
            Some(output) => output,
            None => match this.first.take().unwrap_or_else(|| this.poll_outputs(cx)) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(None)) => return this.end(None),
                Ok(Poll::Ready(Some(Ok(output)))) => output,
                Ok(Poll::Ready(Some(Err(error)))) => {
                    this.outputs = None;
                    return Poll::Ready(Some(Event::Failed(index, error)));
                }
                Err(payload) => {
                    this.outputs = None;
                    return Poll::Ready(Some(Event::Panicked(index, payload)));
                }
            },
        };
        // A one-output item (a plain async function) ends right after its output.
        match this.poll_outputs(cx) {
            Ok(Poll::Ready(None)) => this.end(Some(output)),
            Ok(Poll::Ready(Some(Ok(next)))) => {
                this.next = Some(next);
                Poll::Ready(Some(Event::Output(index, output)))
            }
            Ok(Poll::Pending) => Poll::Ready(Some(Event::Output(index, output))),
            Ok(Poll::Ready(Some(Err(error)))) => {
                // The output came first: it is handed on, then the failure.
                this.outputs = Some(stream::once(async move { Err(error) }).boxed());
                Poll::Ready(Some(Event::Output(index, output)))
            }
            Err(payload) => {
                this.outputs =
                    Some(stream::once(async move { std::panic::resume_unwind(payload) }).boxed());
                Poll::Ready(Some(Event::Output(index, output)))
            }
        }
    }
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
                running: InFlight::new(),
                slots,
                in_order: ordered.then(Reorder::new),
                ready: Vec::new(),
                meter: meter.clone(),
                tuner: stage.tuner.clone(),
                handed_in_burst: false,
                now: Instant::now(),
            };
            // Out of tokio's budget, which would otherwise make a driver with thousands of
            // items quadratic: once a task's budget is spent, each timer an item polls
            // says "not yet" and asks to be woken after the task yields, so every poll of
            // the set went through all the items left, again and again (100,000 timers in
            // flight took 0.67 s, against 0.034 s for `buffer_unordered`). The driver
            // yields on its own instead, every `EVENTS_PER_YIELD` events.
            let run = tokio::task::unconstrained(driver.run(&input));
            PollTimed::new(run, meter.clone()).await
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
    running: InFlight<O>,
    slots: usize,
    /// For an ordered stage: the outputs of items started and not yet released.
    in_order: Option<Reorder<O>>,
    /// Outputs an ordered driver may release now.
    ready: Vec<O>,
    meter: Option<Arc<WorkerMeter>>,
    /// For a stage whose worker count the run tunes: how many slots may be busy now.
    tuner: Option<Arc<Tuner>>,
    /// Whether the current burst of events handed over already (see [`Driver::emit`]).
    handed_in_burst: bool,
    /// The time, read after each wait and every [`CLOCK_EVERY`] turns rather than for
    /// each item: what an item's end is timed by.
    now: Instant,
}

impl<I, O> Driver<'_, I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    async fn run(mut self, input: &Receiver<I>) -> Result<(), Halt> {
        let mut batch = Vec::new();
        let mut open = true;
        let mut turns = 0u32;
        let mut since_refill = 0usize;
        // Whether the driver has just waited and not refilled since: its first refill
        // then takes whatever slot is free, so that a burst's first items start at once.
        let mut first_of_burst = false;
        loop {
            if self.stage.run.is_cancelled() {
                return Ok(());
            }
            turns += 1;
            if turns % CLOCK_EVERY == 0 {
                self.now = Instant::now();
            }
            if turns == EVENTS_PER_YIELD {
                // A driver whose items are always ready must still let the other tasks
                // of its runtime thread run (see `drive`).
                turns = 0;
                tokio::task::yield_now().await;
            }
            if let Some(tuner) = &self.tuner {
                tuner.look(input.looks_empty(), self.outlet.output.looks_full());
            }
            // Start whatever input is ready, without waiting.
            let free = self.free_slots();
            since_refill += 1;
            if open
                && free > 0
                && (free >= refill_at(self.open_slots())
                    || since_refill >= REFILL_EVERY
                    || first_of_burst)
            {
                since_refill = 0;
                let burst_begins = std::mem::take(&mut first_of_burst);
                match input.pop_batch_async(&mut batch, free).now_or_never() {
                    Some(Some(first)) => {
                        self.start(first, &mut batch);
                        if burst_begins && self.running.len() > REFILL_EVERY {
                            show_timers_to_the_runtime().await;
                        }
                    }
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
                self.now = Instant::now();
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
                        self.now = Instant::now();
                        first_of_burst = true;
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
                        let event = self.running.next().await;
                        self.now = Instant::now();
                        first_of_burst = true;
                        Some(event)
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
        self.open_slots().saturating_sub(busy)
    }

    /// The slots that may be busy now: all of them, or as many as the tuner opened.
    fn open_slots(&self) -> usize {
        match &self.tuner {
            Some(tuner) => tuner.active().min(self.slots),
            None => self.slots,
        }
    }

    fn start(&mut self, first: u64, batch: &mut Vec<I>) {
        let started = Instant::now();
        self.now = started;
        if let Some(meter) = &self.meter {
            meter.items_in.add(batch.len() as u64);
        }
        for (index, item) in (first..).zip(batch.drain(..)) {
            let gate = self.in_order.as_mut().map(|in_order| in_order.start(index));
            // The body runs the user's function at once, before any future exists: a panic
            // there is this item's too.
            let outputs = match catch_unwind(AssertUnwindSafe(|| (self.body)(item))) {
                Ok(outputs) => outputs,
                Err(payload) => {
                    stream::once(async move { std::panic::resume_unwind(payload) }).boxed()
                }
            };
            let mut item = Item {
                index,
                started,
                outputs: Some(outputs),
                gate,
                next: None,
                first: None,
            };
            item.prime();
            self.running.push(item);
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
                    self.emit(value).await?;
                }
            }
            Event::Done(index, started, last) => {
                if let Some(value) = last {
                    let value = match &mut self.in_order {
                        Some(in_order) => in_order.output(index, value),
                        None => Some(value),
                    };
                    if let Some(value) = value {
                        self.emit(value).await?;
                    }
                }
                if let Some(tuner) = &self.tuner {
                    // An async item's CPU time is not its thread's: it is not measured.
                    tuner.finished(1, None);
                }
                if let Some(meter) = &self.meter {
                    let busy = self.now.saturating_duration_since(started);
                    meter.busy.add(busy.as_nanos() as u64);
                    meter.in_flight.set(self.running.len() as u64);
                }
                if let Some(in_order) = &mut self.in_order {
                    let mut ready = std::mem::take(&mut self.ready);
                    in_order.done(index, &mut ready);
                    for value in ready.drain(..) {
                        self.emit(value).await?;
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
        self.handed_in_burst = false;
        Ok(self.outlet.flush_async().await?)
    }

    /// Gathers an output. An idle consumer gets the first output of a burst at once; the
    /// rest of the burst (the events ready together, such as a wave of timers) gathers
    /// until the batch is full or the driver is about to wait, when it hands over
    /// anyway: one hand-over, and one wake-up of the consumer, per burst rather than per
    /// output.
    async fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.outlet.add(item)? && (!self.handed_in_burst || self.outlet.is_full()) {
            self.handed_in_burst = true;
            self.outlet.flush_async().await?;
            // The hand-over may have waited for room downstream.
            self.now = Instant::now();
        }
        Ok(())
    }
}

/// Lets the runtime thread look at its timers once a burst's first items have started.
///
/// tokio's timer wakes its thread (a write to an eventfd: a system call) for every timer
/// set while none is pending, until that thread next looks at its timers. Right after a
/// wave of timers fires, none is pending, and a driver that restarted the wave's items
/// in one go paid that call for each of them. One yield after the first few lets the
/// thread record them as the next to fire, and the rest of the burst sets its timers
/// without a call. Measured in the harness's `io-async` (1,000 timers in flight), in a
/// child process (a warm-up and a measured run): 2,208 such writes, and 39 with the yield.
async fn show_timers_to_the_runtime() {
    tokio::task::yield_now().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_driver_refills_each_slot_and_a_wide_one_in_batches() {
        assert_eq!(refill_at(1), 1);
        assert_eq!(refill_at(4), 1);
        assert_eq!(refill_at(64), 8);
        assert_eq!(refill_at(1_000), REFILL_EVERY);
    }

    #[test]
    fn a_driver_takes_up_to_its_share_of_slots_and_a_runtime_thread_at_most() {
        let threads = crate::engine::runtime::threads();
        assert_eq!(driver_slots(1, false), vec![1]);
        assert_eq!(driver_slots(1_000, false), vec![1_000]);
        assert_eq!(
            driver_slots(SLOTS_PER_DRIVER, false),
            vec![SLOTS_PER_DRIVER]
        );
        let wide = driver_slots(100_000, false);
        assert_eq!(
            wide.len(),
            threads.min(100_000usize.div_ceil(SLOTS_PER_DRIVER))
        );
        assert_eq!(wide.iter().sum::<usize>(), 100_000);
        assert!(wide.iter().max().unwrap() - wide.iter().min().unwrap() <= 1);
        assert_eq!(driver_slots(100_000, true), vec![100_000]);
    }
}
