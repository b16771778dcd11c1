//! Python callables as a stage kind (feature `python`), for the `pyperflow` Python
//! package.
//!
//! Each worker is an OS thread that attaches to the interpreter once, for its whole life,
//! and holds the GIL only while it has work in hand:
//!
//! * it takes a batch of ready items, calls the function on them one by one, and keeps
//!   taking ready items without waiting, for up to [`BUDGET`] of holding;
//! * it never blocks while it holds the GIL: waits for input or for room downstream
//!   happen detached ([`Python::detach`]), so the other stages' workers, and the thread
//!   that reads the output, get the GIL meanwhile;
//! * a call that took a while (I/O, a sleep: the GIL was released inside it anyway) hands
//!   its outputs over at once, so items still move one at a time where that matters.
//!
//! Taking the GIL once per item costs a hand-over per item, and loses to Python's own
//! threads; holding it while input is ready is what makes the package many times faster
//! than Pyper (see the figures and `docs/benchmarks.md`).
//!
//! A generator returned by a `branch` function is advanced by the worker that called
//! the function, across its own waits. A `join` function receives an iterator over the
//! stage's input, whose waits are detached too. A `per_worker` function is called once by
//! each worker, on its thread, and returns the worker's own callable, which receives
//! lists of items and returns an iterator of lists of outputs, which it yields as they
//! come (the package's `multiprocess=True`: one worker process per worker); its
//! `close()` is called when the worker ends.
//!
//! What the report needs to know about Python (see `observe/report/mod.rs`):
//!
//! * each worker records the time from asking for the GIL to holding it, after each of
//!   its own detached waits ([`detach_timed`]): threads whose peers compute wait for it
//!   up to the interpreter's switch interval (5 ms) or more, threads whose peers wait on
//!   IO find it free; its pauses to hand the GIL on are not counted as its items giving
//!   up their core;
//! * a `per_worker` stage (`multiprocess=True`) is metered as a process stage, with its
//!   worker process's CPU time ([`ProcessClock`]);
//! * a `driver` stage is metered as an async stage, with its coroutines' times taken on
//!   their event loop (`driver.rs`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::engine::batch::{should_hand_over, BatchLimit, Fault, Stop};
use crate::engine::meter::{ProcessTimes, Recorder, StageKind, StageMeter, WorkerMeter};
use crate::engine::queue::{Popped, Receiver, Sender};
use crate::engine::run::RunState;
use crate::engine::sync::{Arc, Instant};
use crate::engine::tuner::Tuner;
use crate::error::Error;
use crate::stage::launch::Launch;

mod driver;
mod join;
mod reorder;
mod seat;

use reorder::Reorder;

/// A Python object owned by the engine: any item of a Python stage.
pub type PyItem = Py<PyAny>;

/// How long a worker keeps the GIL while input is ready before it lets go for a moment.
const BUDGET: Duration = Duration::from_micros(500);

/// How long a worker lets go of the GIL once it has held it for its budget. Letting go and
/// taking it straight back (a yield) mostly hands it to nobody: a thread waiting for the
/// GIL must first wake up. 20 µs measured best on 2 cores (the source-only pipeline went
/// from about 1 µs to 0.5 µs per item), for a cost of 4% of a worker that nobody waits for.
const PAUSE: Duration = Duration::from_micros(20);

/// A call or an element that took this long hands its outputs over at once, rather than
/// at the end of the worker's turn: it was slow, so what follows may be too.
const SLOW: Duration = Duration::from_micros(50);

/// Outputs gathered for this long are offered downstream.
const HAND_OVER: Duration = Duration::from_micros(200);

/// How long a batch for a worker process should take. A batch costs a round trip through
/// a pipe (tens of µs), so quick items go in batches; but an item waits for those before
/// it in its batch, so items that take over half of this go one at a time, and no item
/// of a millisecond waits behind a slow one while another worker could take it.
const PROCESS_BATCH: Duration = Duration::from_micros(500);

/// How a Python function is called. The defaults are Pyper's: one call per item, one
/// output per call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyShape {
    /// The function returns an iterable, whose every element is an output.
    pub branch: bool,
    /// The function is called once per worker with an iterator over its share of the
    /// stage's input.
    pub join: bool,
    /// Each item is a pair `(args, kwargs)` the function is called with: the first stage,
    /// called with the run's arguments.
    pub star_args: bool,
    /// The function is called once per worker, with no argument, and returns the worker's
    /// callable, which takes a list of items and returns an iterator of lists of outputs
    /// (a `branch` already flattened), handed on as each list comes. Its `close()`, if it
    /// has one, is called when the worker ends.
    pub per_worker: bool,
    /// How many times a call that raised is made again, after the engine's default
    /// backoff (10 ms, doubling up to 1 s), before its exception is the run's error. A
    /// `branch` function's generator is not retried once it has produced an element.
    pub retries: u32,
    /// The function is called once, by the stage's one worker, with a `ring` callable,
    /// and returns a driver of async work on an event loop (see `Turn::drive`): the
    /// stage's `workers` should then be 1, the driver's `capacity` its concurrency.
    pub driver: bool,
    /// For a `driver` stage: its concurrency (the coroutines it runs at once), which its
    /// metrics count as its workers. 0 for any other.
    pub concurrency: usize,
}

/// A Python stage's function, and how to call it.
pub(crate) struct Callable {
    pub(crate) function: PyItem,
    pub(crate) shape: PyShape,
}

/// The body of a Python stage. Only stages of Python objects have one; the launch
/// function, fixed by the constructor for those types, is what lets `Body` stay generic.
pub(crate) struct PythonBody<I, O> {
    pub(crate) callable: Arc<Callable>,
    launch: fn(&Arc<Callable>, Launch<'_, I, O>),
}

impl<I, O> Clone for PythonBody<I, O> {
    fn clone(&self) -> Self {
        PythonBody {
            callable: Arc::clone(&self.callable),
            launch: self.launch,
        }
    }
}

impl PythonBody<PyItem, PyItem> {
    pub(crate) fn new(function: PyItem, shape: PyShape) -> Self {
        PythonBody {
            callable: Arc::new(Callable { function, shape }),
            launch,
        }
    }
}

impl<I, O> PythonBody<I, O> {
    pub(crate) fn launch(&self, stage: Launch<'_, I, O>) {
        (self.launch)(&self.callable, stage)
    }

    pub(crate) fn is_join(&self) -> bool {
        self.callable.shape.join
    }

    /// Whether `ordered()` applies: one call per item (in this process or a worker
    /// process, or a coroutine on an event loop, whose driver releases its outputs in
    /// order: see `_aio.py`; the package refuses an ordered async join).
    pub(crate) fn may_order(&self) -> bool {
        !self.callable.shape.join
    }

    /// Whether `auto_workers` applies: one call per item, on threads of this process (a
    /// join's workers are refused as any join's are).
    pub(crate) fn may_tune(&self) -> bool {
        let shape = self.callable.shape;
        !(shape.driver || shape.per_worker)
    }
}

/// Starts the stage's workers: `workers(n)` threads (with `auto_workers(max)`, `max` of
/// them, each with its seat in the stage's tuner: see [`Seat`]).
fn launch(callable: &Arc<Callable>, mut stage: Launch<'_, PyItem, PyItem>) {
    let shape = callable.shape;
    let meter = match (shape.driver, shape.per_worker) {
        // Coroutines on an event loop, timed there: one slot per coroutine at once.
        (true, _) => {
            let queued = Some(stage.input.depth_gauge());
            let slots = shape.concurrency.max(1);
            (stage.launcher.state.meter).stage(&stage.name, StageKind::Async, slots, queued)
        }
        (false, true) => stage.meter(StageKind::Process),
        (false, false) => stage.meter(StageKind::Threads),
    };
    meter.runs_python();
    let reorder = stage.is_ordered().then(|| {
        let reorder = Arc::new(Reorder::new(stage.output.capacity()));
        // A cancel wakes the workers that wait for room.
        (stage.launcher.state).register(Box::new(Arc::clone(&reorder)));
        reorder
    });
    for number in 1..=stage.spec.workers {
        let worker = Worker {
            name: Arc::clone(&stage.name),
            run: Arc::clone(&stage.launcher.state),
            callable: Arc::clone(callable),
            meter: Arc::clone(&meter),
            reorder: reorder.clone(),
            seat: stage.tuner.clone().map(|tuner| (tuner, number - 1)),
        };
        let (input, output) = (stage.input.clone(), stage.output.clone());
        stage.spawn_thread(number, move || worker.work(input, output));
    }
}

struct Worker {
    name: Arc<str>,
    run: Arc<RunState>,
    callable: Arc<Callable>,
    meter: Arc<StageMeter>,
    /// An ordered stage's runs waiting for their turn, shared by its workers.
    reorder: Option<Arc<Reorder>>,
    /// With `auto_workers`: the stage's tuner, and this worker's index among its workers.
    seat: Option<(Arc<Tuner>, usize)>,
}

impl Worker {
    fn work(self, input: Receiver<PyItem>, output: Sender<PyItem>) {
        let shape = self.callable.shape;
        let meter = self.meter.worker();
        // An async stage's items are timed on the event loop (see `driver.rs`); a
        // multiprocess stage's CPU time is its worker process's.
        let mut recorder = meter
            .clone()
            .filter(|_| !shape.driver)
            .map(|meter| match shape.per_worker {
                true => Recorder::begin_elsewhere(meter),
                false => Recorder::begin(meter),
            })
            .map(Recorder::starved_is_the_rest);
        let (input, output) = (
            input.metered(meter.as_ref()),
            output.metered(meter.as_ref()),
        );
        let mut current = None;
        let result = catch_unwind(AssertUnwindSafe(|| {
            // An interpreter that is shutting down cannot be attached to: nothing to do.
            Python::try_attach(|py| {
                let mut turn = Turn {
                    py,
                    worker: &self,
                    output: Out::new(&output, &self.run),
                    recorder: recorder.as_mut(),
                    meter: meter.clone(),
                    current: &mut current,
                    held_since: Instant::now(),
                };
                let shape = self.callable.shape;
                let result = match (shape.driver, shape.join, shape.per_worker) {
                    (true, _, _) => turn.drive(&input),
                    (false, true, _) => turn.join(input),
                    (false, false, false) => turn.each(&input, self.reorder.clone().as_deref()),
                    (false, false, true) => {
                        turn.per_worker(&input, self.reorder.clone().as_deref())
                    }
                };
                result.and_then(|()| turn.flush())
            })
            .unwrap_or(Ok(()))
        }));
        // Reported while `output` is still alive: see the module docs of `run`.
        let error = match result {
            Ok(Ok(())) | Ok(Err(Fault::Stop)) => None,
            Ok(Err(Fault::Failed(error))) => Some(Error::failed(&self.name, current, error)),
            Err(payload) => Some(Error::panicked(&self.name, current, payload)),
        };
        if let Some(error) = error {
            self.meter.failed();
            self.run.fail(error);
        }
        if let (true, Some(meter)) = (shape.driver, &meter) {
            meter.finished();
        }
        drop(recorder);
        drop(output);
    }
}

/// A worker at work: attached to the interpreter, with its output buffer.
struct Turn<'a, 'py> {
    py: Python<'py>,
    worker: &'a Worker,
    output: Out<'a>,
    recorder: Option<&'a mut Recorder>,
    /// The worker's meter, when metrics are on: its waits for the GIL go there.
    meter: Option<Arc<WorkerMeter>>,
    current: &'a mut Option<u64>,
    /// Since when the worker has held the GIL without a pause.
    held_since: Instant,
}

impl<'py> Turn<'_, 'py> {
    /// One call per item. In an ordered stage (`reorder`), a batch's outputs are
    /// collected, then handed in to leave in input order (see `reorder.rs`); otherwise they
    /// are handed on as they come.
    fn each(&mut self, input: &Receiver<PyItem>, reorder: Option<&Reorder>) -> Result<(), Fault> {
        let function = self.worker.callable.function.bind(self.py).clone();
        let shape = self.worker.callable.shape;
        let (mut batch, mut collected) = (Vec::new(), Vec::new());
        let mut limit = BatchLimit::new();
        let hold = reorder.map_or(usize::MAX, |reorder| reorder.hold);
        // With `auto_workers`, the worker asks its seat before each batch: it may park.
        let seat = self.seat();
        while let Some(first) =
            self.admitted_batch(seat.as_ref(), input, &mut batch, limit.get().min(hold))?
        {
            let started = self.begin_batch();
            let count = batch.len();
            for (index, item) in (first..).zip(batch.drain(..)) {
                if self.worker.run.is_cancelled() {
                    return Err(Fault::Stop);
                }
                *self.current = Some(index);
                let called = Instant::now();
                let result = self.call(&function, item, shape)?;
                if reorder.is_some() {
                    match shape.branch {
                        true => {
                            for element in result.try_iter().map_err(failed)? {
                                collected.push(element.map_err(failed)?.unbind());
                            }
                        }
                        false => collected.push(result.unbind()),
                    }
                    continue;
                }
                match shape.branch {
                    true => self.emit_all(result)?,
                    false => self.output.add(result.unbind())?,
                }
                if called.elapsed() >= SLOW {
                    self.output.offer()?;
                }
                if self.output.is_full() {
                    self.flush()?;
                }
                self.pause_if_due()?;
            }
            self.end_batch(started, &mut limit, count);
            if let Some(seat) = &seat {
                seat.finished(count);
            }
            if let Some(reorder) = reorder {
                self.hand_in(reorder, first..first + count as u64, &mut collected)?;
            }
        }
        Ok(())
    }

    /// Hands an ordered stage's batch, the outputs of input positions `run`, in to leave
    /// in turn (see `reorder.rs`); waits, detached, until they have left.
    fn hand_in(
        &mut self,
        reorder: &Reorder,
        run: std::ops::Range<u64>,
        collected: &mut Vec<PyItem>,
    ) -> Result<(), Fault> {
        let (output, outputs) = (self.output.output, std::mem::take(collected));
        self.detached(|| reorder.hand_in((run.start, run.end), outputs, output))?;
        Ok(())
    }

    /// Calls the function on `item`, again after a pause if it raises, up to
    /// `shape.retries` times.
    fn call(
        &mut self,
        function: &Bound<'py, PyAny>,
        item: PyItem,
        shape: PyShape,
    ) -> Result<Bound<'py, PyAny>, Fault> {
        let mut retry = 0;
        loop {
            let attempt = match retry < shape.retries {
                true => item.clone_ref(self.py),
                false => return call(function, item, shape.star_args).map_err(failed),
            };
            match call(function, attempt, shape.star_args) {
                Ok(result) => return Ok(result),
                Err(_) if self.worker.run.is_cancelled() => return Err(Fault::Stop),
                Err(_) => {
                    retry += 1;
                    let delay = crate::stage::policy::Backoff::default().delay(retry);
                    self.pause_for(delay)?;
                }
            }
        }
    }

    /// Waits `delay` detached, in short steps so a stopped run does not wait for it.
    fn pause_for(&mut self, delay: Duration) -> Result<(), Fault> {
        self.flush()?;
        let run = Arc::clone(&self.worker.run);
        let stopped = self.detached(|| {
            let until = std::time::Instant::now() + delay;
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if run.is_cancelled() || left.is_zero() {
                    return run.is_cancelled();
                }
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
        });
        match stopped {
            true => Err(Fault::Stop),
            false => Ok(()),
        }
    }

    /// A callable of the worker's own, called with lists of items. In an ordered stage
    /// (`reorder`), a batch's outputs are collected, then handed in as in [`each`].
    fn per_worker(
        &mut self,
        input: &Receiver<PyItem>,
        reorder: Option<&Reorder>,
    ) -> Result<(), Fault> {
        let function = self.worker.callable.function.bind(self.py);
        let handle = function.call0().map_err(failed)?;
        // A stopped run stops the worker process at once, even inside a long call.
        if handle.hasattr("cancel").map_err(failed)? {
            let cancel = CancelCallable(handle.clone().unbind());
            self.worker.run.register(Box::new(cancel));
        }
        // The worker process's CPU time is the stage's: read from its scheduler
        // statistics now and then (file reads), and as the worker ends.
        let mut times = ProcessClock::new(self.meter.clone());
        // Where the process's times start: a warm one has served earlier stages.
        times.read(&handle);
        let result = self.batches(&handle, input, reorder, &mut times);
        times.read(&handle);
        // Closed however the worker ends; its own failure comes second to the worker's.
        let closed = match handle.hasattr("close") {
            Ok(true) => handle.call_method0("close").map(drop),
            Ok(false) => Ok(()),
            Err(error) => Err(error),
        };
        result?;
        closed.map_err(failed)
    }

    /// Feeds the callable batches: it returns an iterator of lists of outputs, which the
    /// worker process sends as it goes (a slow item's at once, a generator's in chunks).
    fn batches(
        &mut self,
        handle: &Bound<'py, PyAny>,
        input: &Receiver<PyItem>,
        reorder: Option<&Reorder>,
        times: &mut ProcessClock,
    ) -> Result<(), Fault> {
        let (mut batch, mut collected) = (Vec::new(), Vec::new());
        let mut limit = BatchLimit::with_target(PROCESS_BATCH);
        let hold = reorder.map_or(usize::MAX, |reorder| reorder.hold);
        while let Some(first) = self.next_batch(input, &mut batch, limit.get().min(hold))? {
            if self.worker.run.is_cancelled() {
                return Err(Fault::Stop);
            }
            let started = self.begin_batch();
            let count = batch.len();
            *self.current = Some(first);
            let items = PyList::new(self.py, batch.drain(..)).map_err(failed)?;
            // The process a stopped run killed (see `CancelCallable`) fails its batch:
            // that is the stop, not an error of the stage.
            let run = &self.worker.run;
            let failed = |error| match run.is_cancelled() {
                true => Fault::Stop,
                false => failed(error),
            };
            let chunks = handle.call1((items,)).map_err(failed)?;
            for chunk in chunks.try_iter().map_err(failed)? {
                for output in chunk.map_err(failed)?.try_iter().map_err(failed)? {
                    let output = output.map_err(failed)?.unbind();
                    match reorder {
                        Some(_) => collected.push(output),
                        None => self.output.add(output)?,
                    }
                    if self.output.is_full() {
                        self.flush()?;
                    }
                }
                self.output.offer()?;
                times.read_if_due(handle);
            }
            self.end_batch(started, &mut limit, count);
            if let Some(reorder) = reorder {
                self.hand_in(reorder, first..first + count as u64, &mut collected)?;
            }
        }
        Ok(())
    }

    /// Takes the next batch of input: at once if some is ready and the worker has not
    /// held the GIL for its whole budget; else after handing over its outputs and waiting,
    /// detached. `None` once the input has ended.
    fn next_batch(
        &mut self,
        input: &Receiver<PyItem>,
        batch: &mut Vec<PyItem>,
        max: usize,
    ) -> Result<Option<u64>, Fault> {
        if self.held_since.elapsed() < BUDGET {
            match input.try_pop_batch(batch, max) {
                Popped::Items(first) => return Ok(Some(first)),
                Popped::Over => return Ok(None),
                Popped::Empty => {}
            }
        }
        self.flush()?;
        let output = self.output.output;
        Ok(self.detached(|| input.pop_batch_then(batch, max, || output.announce())))
    }

    /// Lets go of the GIL for [`PAUSE`] once the worker has held it for its budget:
    /// Python code the worker calls gives it up when others wait, but a loop here (a
    /// generator resumed with `yield from` never checks) would not. What is gathered goes
    /// downstream first.
    fn pause_if_due(&mut self) -> Result<(), Fault> {
        if self.held_since.elapsed() < BUDGET {
            return Ok(());
        }
        self.flush()?;
        if let Some(recorder) = self.recorder.as_deref_mut() {
            recorder.own_wait();
        }
        self.detached(|| std::thread::sleep(PAUSE));
        Ok(())
    }

    /// Emits every element of an iterable, a generator's included, advancing it here.
    fn emit_all(&mut self, iterable: Bound<'py, PyAny>) -> Result<(), Fault> {
        let mut elements = iterable.try_iter().map_err(failed)?;
        let mut slow = true;
        loop {
            if slow {
                // The next element may be long in coming: what is gathered goes first.
                self.output.offer()?;
            }
            let asked = Instant::now();
            let Some(element) = elements.next() else {
                return Ok(());
            };
            slow = asked.elapsed() >= SLOW;
            self.output.add(element.map_err(failed)?.unbind())?;
            if self.output.is_full() {
                self.flush()?;
            }
            self.pause_if_due()?;
        }
    }

    /// Hands over every gathered output, waiting for room detached if it must.
    fn flush(&mut self) -> Result<(), Fault> {
        self.output.offer()?;
        if self.output.buffer.is_empty() {
            return Ok(());
        }
        if let Some(recorder) = self.recorder.as_deref_mut() {
            recorder.own_wait(); // a wait for room downstream: timed as blocked
        }
        let Out { output, buffer, .. } = &mut self.output;
        let pushed = detach_timed(self.py, self.meter.as_deref(), || output.push_all(buffer));
        self.held_since = Instant::now();
        pushed.map_err(|_| Fault::Stop)
    }

    /// Runs `wait` detached, and records how long the worker then waited for the GIL.
    fn detached<T: Send>(&mut self, wait: impl FnOnce() -> T + Send) -> T {
        let value = detach_timed(self.py, self.meter.as_deref(), wait);
        self.held_since = Instant::now();
        value
    }

    fn begin_batch(&mut self) -> Instant {
        match self.recorder.as_deref_mut() {
            Some(recorder) => recorder.batch_begins(),
            None => Instant::now(),
        }
    }

    fn end_batch(&mut self, started: Instant, limit: &mut BatchLimit, count: usize) {
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        if let Some(recorder) = self.recorder.as_deref_mut() {
            recorder.batch(started, now, took, count);
        }
        limit.adapt(took, count);
    }
}

/// Runs `wait` without the GIL, then takes it back, recording into `meter` the time from
/// asking for the GIL to holding it: the wait of a thread whose peers hold it, which on
/// a crowded interpreter lasts up to its switch interval (5 ms) or more, and for one
/// whose peers wait on IO, next to nothing. The report reads these waits to tell Python
/// code that takes turns on the GIL from code that waits on IO.
fn detach_timed<T: Send>(
    py: Python<'_>,
    meter: Option<&WorkerMeter>,
    wait: impl FnOnce() -> T + Send,
) -> T {
    let Some(meter) = meter else {
        return py.detach(wait);
    };
    let (value, asked) = py.detach(|| {
        let value = wait();
        (value, Instant::now())
    });
    meter.gil_waited(asked.elapsed());
    value
}

/// Calls `function` on one item.
fn call<'py>(
    function: &Bound<'py, PyAny>,
    item: PyItem,
    star_args: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = function.py();
    if !star_args {
        return function.call1((item,));
    }
    let (args, kwargs): (Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>) =
        item.bind(py).extract()?;
    function.call(args, kwargs.as_ref())
}

fn failed(error: PyErr) -> Fault {
    Fault::Failed(Box::new(error))
}

/// Calls a per-worker callable's `cancel()` when the run stops: a `multiprocess` worker
/// kills its process if it is in the middle of a batch, so the engine's worker, which
/// waits for its answer, is free at once.
struct CancelCallable(PyItem);

impl crate::engine::run::Close for CancelCallable {
    fn close(&self) {
        // An interpreter that is shutting down has no callable to call.
        Python::try_attach(|py| {
            if let Err(error) = self.0.bind(py).call_method0("cancel") {
                error.write_unraisable(py, None);
            }
        });
    }
}

/// Reads a worker process's CPU time into its engine worker's meter. The callable's
/// `pid` may change (a process killed at a timeout is replaced) and a process may have
/// served earlier stages (warm processes): each process counts from when it was first
/// seen here.
struct ProcessClock {
    meter: Option<Arc<WorkerMeter>>,
    /// The process being read, and its times when it was first seen.
    current: Option<(u32, ProcessTimes)>,
    /// What the processes read before the current one added.
    earlier: ProcessTimes,
    /// The last reading of the current process, less its first.
    last: ProcessTimes,
    next_read: Instant,
}

/// How often, at most, a worker process's times are read while it works.
const PROCESS_TIMES_EVERY: Duration = Duration::from_millis(10);

impl ProcessClock {
    fn new(meter: Option<Arc<WorkerMeter>>) -> Self {
        ProcessClock {
            meter,
            current: None,
            earlier: ProcessTimes::default(),
            last: ProcessTimes::default(),
            next_read: Instant::now(),
        }
    }

    fn read_if_due(&mut self, handle: &Bound<'_, PyAny>) {
        if Instant::now() >= self.next_read {
            self.read(handle);
        }
    }

    fn read(&mut self, handle: &Bound<'_, PyAny>) {
        self.next_read = Instant::now() + PROCESS_TIMES_EVERY;
        let Some(meter) = &self.meter else {
            return;
        };
        let Ok(pid) = handle.getattr("pid").and_then(|pid| pid.extract::<u32>()) else {
            return;
        };
        let Some(now) = ProcessTimes::of(pid) else {
            return;
        };
        match self.current {
            Some((seen, first)) if seen == pid => self.last = now.minus(first),
            _ => {
                self.earlier = self.earlier.plus(self.last);
                self.last = ProcessTimes::default();
                self.current = Some((pid, now));
            }
        }
        meter.set_process_times(self.earlier.plus(self.last));
    }
}

/// A worker's outputs not yet handed over.
struct Out<'a> {
    output: &'a Sender<PyItem>,
    run: &'a RunState,
    buffer: Vec<PyItem>,
    /// When the oldest output in `buffer` was gathered.
    since: Instant,
    max: usize,
}

impl<'a> Out<'a> {
    fn new(output: &'a Sender<PyItem>, run: &'a RunState) -> Self {
        Out {
            output,
            run,
            buffer: Vec::new(),
            since: Instant::now(),
            max: crate::engine::batch::hand_over_size(output),
        }
    }

    /// Gathers an output, and offers what is gathered if it has waited long enough.
    fn add(&mut self, item: PyItem) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        if self.buffer.is_empty() {
            self.since = Instant::now();
        }
        self.buffer.push(item);
        // An idle consumer gets an output at once: what comes next (a generator's next
        // element, say) may be long in coming.
        if should_hand_over(&self.buffer, self.max, self.output)
            || self.since.elapsed() >= HAND_OVER
        {
            self.offer()?;
        }
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.buffer.len() >= self.max
    }

    /// Hands over what fits downstream now, without waiting.
    fn offer(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.output
            .try_push_all(&mut self.buffer)
            .map_err(|_| Stop)?;
        self.since = Instant::now();
        Ok(())
    }
}
