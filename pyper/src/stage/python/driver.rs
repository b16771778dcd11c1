//! An async stage's worker: it feeds a driver of asyncio tasks on the caller's event
//! loop (`python/pyper/_aio.py`), moving items to it and its outputs on, and waits,
//! detached, only when there is nothing to move.

use std::ffi::CStr;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyList};

use super::{failed, PyItem, Turn, WorkerMeter};
use crate::engine::batch::Fault;
use crate::engine::meter::AsyncTotals;
use crate::engine::queue::{Popped, Receiver};
use crate::engine::sync::{self, Arc, Instant, Mutex};

impl<'py> Turn<'_, 'py> {
    /// Feeds a driver of async work: it runs coroutines on an event loop (the caller's),
    /// and this worker moves items to it and its outputs on, waiting (detached) only when
    /// there is nothing to move. The driver has `submit(items)`, `drain()` (the events
    /// since the last call: `(0, output)`, `(1, None)` for an item done, `(2, exception)`,
    /// `(3, None)` for a join coroutine done), `end_input()`, `stop()`, and the ints
    /// `capacity` (items in flight at most) and `joins` (join coroutines to wait for).
    /// It calls `ring()` after each event, which wakes this worker. An ordered driver
    /// hands on its outputs in input order and counts an item done when it releases it,
    /// so `capacity` bounds the items it holds for their turn too. Its `totals()` are
    /// the times of its coroutines so far, for the stage's metrics: `(items done, their
    /// time in flight, their time running on the loop, the loop's stalls (steps of over a
    /// millisecond): total, longest, and total and CPU time of those measured)`, in
    /// nanoseconds.
    pub(super) fn drive(&mut self, input: &Receiver<PyItem>) -> Result<(), Fault> {
        let bell = Arc::new(Bell::default());
        let ringer = Arc::clone(&bell);
        const NAME: &CStr = c"ring";
        let ring = PyCFunction::new_closure(self.py, Some(NAME), None, move |_args, _kwargs| {
            ringer.ring()
        })
        .map_err(failed)?;
        let function = self.worker.callable.function.bind(self.py);
        let driver = function.call1((ring,)).map_err(failed)?;
        let slots = self.worker.callable.shape.concurrency;
        let mut clock = LoopClock::new(self.meter.is_some(), slots);
        let result = self.feed(&driver, input, &bell, &mut clock);
        let stopped = driver.call_method0("stop").map(drop);
        clock.read(&driver, self.meter.as_deref());
        result?;
        stopped.map_err(failed)
    }

    fn feed(
        &mut self,
        driver: &Bound<'py, PyAny>,
        input: &Receiver<PyItem>,
        bell: &Bell,
        clock: &mut LoopClock,
    ) -> Result<(), Fault> {
        let capacity: usize = attribute(driver, "capacity")?.max(1);
        let mut joins_left: usize = attribute(driver, "joins")?;
        let (mut in_flight, mut input_over, mut batch) = (0usize, false, Vec::new());
        let mut told_end = false;
        loop {
            if self.worker.run.is_cancelled() {
                return Err(Fault::Stop);
            }
            for event in driver
                .call_method0("drain")
                .map_err(failed)?
                .try_iter()
                .map_err(failed)?
            {
                let (kind, value): (u8, Bound<'py, PyAny>) =
                    event.and_then(|event| event.extract()).map_err(failed)?;
                match kind {
                    0 => self.output.add(value.unbind())?,
                    1 => in_flight = in_flight.saturating_sub(1),
                    3 => joins_left = joins_left.saturating_sub(1),
                    _ => return Err(failed(PyErr::from_value(value))),
                }
            }
            // What found no room downstream goes before more input is taken: the worker
            // holds at most a hand-over's worth beyond one drain, and a stalled consumer
            // holds the driver back (its generators pause while their events wait).
            if self.output.is_full() {
                self.flush()?;
            }
            clock.in_flight = in_flight;
            clock.read_if_due(driver, self.meter.as_deref());
            if !batch.is_empty() || (!input_over && in_flight < capacity) {
                if batch.is_empty() {
                    match input.try_pop_batch(&mut batch, capacity - in_flight) {
                        Popped::Items(first) => *self.current = Some(first),
                        Popped::Over => input_over = true,
                        Popped::Empty => {}
                    }
                }
                if !batch.is_empty() {
                    in_flight += batch.len();
                    let items = PyList::new(self.py, batch.drain(..)).map_err(failed)?;
                    driver.call_method1("submit", (items,)).map_err(failed)?;
                    continue;
                }
            }
            if input_over && !told_end {
                told_end = true;
                driver.call_method0("end_input").map_err(failed)?;
            }
            if input_over && in_flight == 0 && joins_left == 0 {
                return Ok(());
            }
            // Nothing to move: outputs go on, then wait for input or for an event.
            self.flush()?;
            let run = &self.worker.run;
            let room = capacity.saturating_sub(in_flight);
            let wait_input = !input_over && room > 0;
            let popped = self.py.detach(|| {
                if wait_input && in_flight == 0 && joins_left == 0 {
                    return Some(input.pop_batch(&mut batch, room).is_some());
                }
                loop {
                    if bell.take() || run.is_cancelled() {
                        return None;
                    }
                    if !wait_input {
                        bell.wait(Duration::from_millis(50));
                        continue;
                    }
                    match input.pop_batch_timeout(&mut batch, room, Duration::from_micros(500)) {
                        Popped::Items(_) => return Some(true),
                        Popped::Over => return Some(false),
                        Popped::Empty => {}
                    }
                }
            });
            if popped == Some(false) {
                input_over = true;
            }
            self.held_since = Instant::now();
        }
    }
}

/// Reads an async stage's coroutine times from its driver into the worker's meter.
struct LoopClock {
    metered: bool,
    started: Instant,
    next_read: Instant,
    in_flight: usize,
    /// The coroutines that may run at once: the stage's concurrency, which its metrics
    /// count as its workers (a join's driver takes more items than that at once).
    slots: u32,
}

/// How often, at most, the driver's totals are read while the stage runs.
const TOTALS_EVERY: Duration = Duration::from_millis(10);

impl LoopClock {
    fn new(metered: bool, slots: usize) -> Self {
        let now = Instant::now();
        LoopClock {
            metered,
            started: now,
            next_read: now,
            in_flight: 0,
            slots: slots.clamp(1, u32::MAX as usize) as u32,
        }
    }

    fn read_if_due(&mut self, driver: &Bound<'_, PyAny>, meter: Option<&WorkerMeter>) {
        if self.metered && Instant::now() >= self.next_read {
            self.read(driver, meter);
        }
    }

    fn read(&mut self, driver: &Bound<'_, PyAny>, meter: Option<&WorkerMeter>) {
        let Some(meter) = meter else {
            return;
        };
        self.next_read = Instant::now() + TOTALS_EVERY;
        let Ok(totals) = driver
            .call_method0("totals")
            .and_then(|totals| totals.extract::<(u64, u64, u64, u64, u64, u64, u64)>())
        else {
            return;
        };
        let (items, busy, polled, stalled, longest, measured, stalled_cpu) = totals;
        let nanos = Duration::from_nanos;
        // The slots' time not spent on items was spent waiting for them (or to hand on
        // their outputs, timed by the output queue).
        let slots_time = self.started.elapsed().saturating_mul(self.slots);
        let blocked = nanos(meter.blocked.get()).saturating_mul(self.slots);
        meter.set_async_totals(&AsyncTotals {
            items,
            in_flight: self.in_flight as u64,
            busy: nanos(busy),
            polled: nanos(polled),
            starved: slots_time.saturating_sub(nanos(busy) + blocked),
            stalled: nanos(stalled),
            longest_stall: nanos(longest),
            stalled_measured: nanos(measured),
            stalled_cpu: nanos(stalled_cpu),
        });
    }
}

/// Reads an integer attribute of a Python object.
fn attribute(object: &Bound<'_, PyAny>, name: &str) -> Result<usize, Fault> {
    object
        .getattr(name)
        .and_then(|value| value.extract())
        .map_err(failed)
}

/// What a driver of async work rings when it has events for its worker.
#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    ringing: sync::Condvar,
}

impl Bell {
    fn ring(&self) {
        *sync::lock(&self.rung) = true;
        self.ringing.notify_one();
    }

    /// Whether it was rung since the last look; clears it.
    fn take(&self) -> bool {
        std::mem::take(&mut *sync::lock(&self.rung))
    }

    /// Waits until it is rung, at most `limit`.
    fn wait(&self, limit: Duration) {
        let rung = sync::lock(&self.rung);
        if !*rung {
            drop(sync::wait_timeout(&self.ringing, rung, limit));
        }
    }
}
