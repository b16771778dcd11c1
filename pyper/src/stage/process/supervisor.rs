//! The parent side of a process stage: one worker thread per worker process, feeding it
//! batches, reading its replies, and killing, reaping and replacing it when it dies or
//! overruns.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::body::ProcessFn;
use super::died::WorkerDied;
use super::worker::{Children, Gone, Worker};
use crate::engine::batch::{Collect, Emit, Fault, Halt, Outlet, MAX_BATCH};
use crate::engine::meter::{ProcessTimes, Recorder, StageMeter};
use crate::engine::queue::{Receiver, Sender};
use crate::engine::run::RunState;
use crate::engine::sequencer::{InOrder, Sequencer};
use crate::engine::sync::Arc;
use crate::error::{BoxError, Error};
use crate::stage::policy::{AttemptFailure, Attempts, FaultPolicy, Verdict};
use crate::stage::wire::{RemoteError, Reply};

/// How many times in a row a worker may die between items before the stage gives up:
/// such deaths have no item to blame, so they are not retried as an item's would be.
const IDLE_DEATHS: u32 = 3;

/// How long the items of one batch should take in the worker process. Twenty times a
/// thread worker's 50 µs: a batch costs a round trip between processes (tens of µs), so
/// quick items travel in batches of up to [`MAX_BATCH`], while items slower than this
/// still go one at a time, so they spread over the stage's workers.
const BATCH_TIME: Duration = Duration::from_millis(1);

/// How many ready items a process worker takes at once: a thread worker's `BatchLimit`
/// with [`BATCH_TIME`] as its target.
struct BatchLimit {
    limit: usize,
}

impl BatchLimit {
    fn new() -> Self {
        BatchLimit { limit: 1 }
    }

    fn adapt(&mut self, started: Instant, count: usize) {
        let per_item = started.elapsed() / count.max(1) as u32;
        let fits = (BATCH_TIME.as_nanos() / per_item.as_nanos().max(1)) as usize;
        self.limit = fits.clamp(1, MAX_BATCH).min(self.limit * 2);
    }
}

/// What one process stage's worker threads share.
pub(crate) struct ProcessStage<I, O> {
    pub(crate) name: Arc<str>,
    pub(crate) run: Arc<RunState>,
    pub(crate) body: ProcessFn<I, O>,
    pub(crate) faults: FaultPolicy,
    pub(crate) children: Arc<Children>,
    pub(crate) sequencer: Option<Arc<Sequencer<O>>>,
    /// Whether a batch's outputs must leave in input order although there is no sequencer:
    /// a stage with one worker is in order, and a retried item must not fall behind the
    /// items after it.
    pub(crate) in_order: bool,
    /// The stage's meter; a fork's process task has none of its own.
    pub(crate) meter: Option<Arc<StageMeter>>,
}

/// Runs one worker of a process stage until its input ends, the run stops, or it fails.
pub(crate) fn work<I, O>(stage: Arc<ProcessStage<I, O>>, input: Receiver<I>, output: Sender<O>) {
    let recorder = (stage.meter.as_ref())
        .and_then(|meter| meter.worker())
        .map(Recorder::begin_elsewhere);
    let meter = recorder.as_ref().map(|recorder| &recorder.meter);
    let (input, output) = (input.metered(meter), output.metered(meter));
    let mut supervisor = Supervisor {
        stage: &stage,
        worker: None,
        current_item: None,
        idle_deaths: 0,
        recorder,
        retired_times: ProcessTimes::default(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| supervisor.work(&input, &output)));
    let finished = matches!(result, Ok(Ok(())));
    // Reported while `output` is still alive: see the module docs of `run`.
    let error = match result {
        Ok(Ok(())) | Ok(Err(Halt::Stop)) => None,
        Ok(Err(Halt::Failed(error))) => Some(error),
        Err(payload) => Some(Error::panicked(
            &stage.name,
            supervisor.current_item,
            payload,
        )),
    };
    if let Some(error) = error {
        if let Some(meter) = &stage.meter {
            meter.failed();
        }
        stage.run.fail(error);
    }
    supervisor.record_process_times();
    if let Some(worker) = supervisor.worker.take() {
        worker.retire(finished);
    }
    drop(supervisor.recorder.take());
    drop(output);
}

/// How often, at most, a worker thread reads its process's CPU time (a few file reads).
const READ_PROCESS_TIMES_EVERY: Duration = Duration::from_millis(10);

struct Supervisor<'a, I, O> {
    stage: &'a ProcessStage<I, O>,
    worker: Option<Worker>,
    current_item: Option<u64>,
    idle_deaths: u32,
    recorder: Option<Recorder>,
    /// The times of the worker processes this one replaced, as last read.
    retired_times: ProcessTimes,
}

/// One item on its way through the worker processes.
struct Attempt {
    index: u64,
    bytes: Vec<u8>,
    /// The attempts so far, and the rules for the next.
    attempts: Attempts,
    /// When a retry may start: `None` if its backoff ends later than a clock can say.
    not_before: Option<Instant>,
}

impl<I, O> Supervisor<'_, I, O> {
    fn work(&mut self, input: &Receiver<I>, output: &Sender<O>) -> Result<(), Halt> {
        let stage = self.stage;
        let mut outlet = Outlet::new(output, &stage.run);
        let mut batch = Vec::new();
        let mut limit = BatchLimit::new();
        let mut times_read = Instant::now();
        while let Some(first) = input.pop_batch(&mut batch, limit.limit) {
            let started = Instant::now();
            let batch_began = self.recorder.as_mut().map(Recorder::batch_begins);
            let count = batch.len();
            let result = self.run_items(first, &mut batch, &mut outlet, output);
            limit.adapt(started, count);
            if let (Some(recorder), Some(began)) = (self.recorder.as_mut(), batch_began) {
                let now = Instant::now();
                recorder.batch(began, now, now.saturating_duration_since(began), count);
            }
            result?;
            if times_read.elapsed() >= READ_PROCESS_TIMES_EVERY {
                times_read = Instant::now();
                self.record_process_times();
            }
            outlet.flush()?;
        }
        Ok(())
    }

    /// Runs the items of a batch, numbered from `first`, and hands their outputs on.
    fn run_items(
        &mut self,
        first: u64,
        batch: &mut Vec<I>,
        outlet: &mut Outlet<'_, O>,
        output: &Sender<O>,
    ) -> Result<(), Halt> {
        let stage = self.stage;
        let count = batch.len();
        let mut todo = VecDeque::with_capacity(count);
        let now = Some(Instant::now());
        for (index, item) in (first..).zip(batch.drain(..)) {
            self.current_item = Some(index);
            let bytes = (stage.body.encode)(&item)
                .map_err(|error| Halt::Failed(Error::failed(&stage.name, Some(index), error)))?;
            todo.push_back(Attempt {
                index,
                bytes,
                attempts: Attempts::new(stage.faults),
                not_before: now,
            });
        }
        let mut slots = Slots {
            first,
            outputs: Vec::new(),
            run: &stage.run,
        };
        match &stage.sequencer {
            None if !stage.in_order => self.run_batch(todo, &mut Emitting(outlet))?,
            None => {
                slots.outputs = (0..count).map(|_| Vec::new()).collect();
                self.run_batch(todo, &mut slots)?;
                for item in slots.outputs.into_iter().flatten() {
                    outlet.emit(item)?;
                }
            }
            Some(sequencer) => {
                slots.outputs = (0..count).map(|_| Vec::new()).collect();
                self.run_batch(todo, &mut slots)?;
                // As a thread worker does: the outputs leave in order, each in its turn.
                let mut order = InOrder::new(sequencer, Outlet::new(output, &stage.run), None);
                let released = (first..).zip(slots.outputs).try_for_each(|(at, items)| {
                    order.at(at)?;
                    items.into_iter().try_for_each(|item| order.emit(item))
                });
                if let Err(stop) = released.and_then(|()| order.finish().map(drop)) {
                    order.stop();
                    return Err(stop.into());
                }
            }
        }
        Ok(())
    }

    /// Reads the CPU time of the current worker process into the metrics, adding that of
    /// the processes it replaced. (A process's times are read while it lives: those of a
    /// worker's last moments before a crash are lost.)
    fn record_process_times(&mut self) {
        let (Some(recorder), Some(worker)) = (&self.recorder, &self.worker) else {
            return;
        };
        if let Some(times) = ProcessTimes::of(worker.pid()) {
            worker.last_times.set(times);
            recorder
                .meter
                .set_process_times(self.retired_times.plus(times));
        }
    }

    /// The current worker process is about to go: keeps its last times.
    fn retire_times(&mut self) {
        if let Some(worker) = &self.worker {
            self.retired_times = self.retired_times.plus(worker.last_times.get());
        }
    }

    /// Runs every item of `todo` to an output or to the run's error.
    fn run_batch(
        &mut self,
        mut todo: VecDeque<Attempt>,
        out: &mut impl Place<O>,
    ) -> Result<(), Halt> {
        let stage = self.stage;
        let mut later: Vec<Attempt> = Vec::new();
        loop {
            if todo.is_empty() {
                if later.is_empty() {
                    return Ok(());
                }
                let due = later.iter().filter_map(|attempt| attempt.not_before).min();
                self.sleep_until(due)?;
                let now = Instant::now();
                let (mut ready, waiting): (Vec<_>, _) = later
                    .drain(..)
                    .partition(|attempt| attempt.not_before.is_some_and(|due| due <= now));
                later = waiting;
                ready.sort_by_key(|attempt| attempt.index);
                todo = ready.into();
                continue;
            }
            if stage.run.is_cancelled() {
                return Err(Halt::Stop);
            }
            let worker = match &mut self.worker {
                Some(worker) => worker,
                None => self.worker.insert(Worker::spawn(
                    &stage.name,
                    &stage.run,
                    &stage.children,
                    &stage.body.setup,
                )?),
            };
            let items = todo.iter().map(|attempt| &attempt.bytes[..]);
            let sent = match worker.send(items, &stage.run) {
                Ok(sent) => sent,
                Err(gone) => {
                    // The worker died between items (a kill from outside, say): nobody to
                    // blame, so replace it and send the batch again.
                    self.retire_times();
                    self.worker = None;
                    self.idle_death(gone)?;
                    continue;
                }
            };
            let mut since = Instant::now();
            for _ in 0..sent {
                let attempt = todo.front().expect("`sent` items of `todo` were sent");
                self.current_item = Some(attempt.index);
                // No deadline if it is further than a clock can say (`Duration::MAX`).
                let deadline = stage
                    .faults
                    .timeout
                    .and_then(|limit| since.checked_add(limit));
                let worker = self.worker.as_mut().expect("spawned above");
                let reply = worker.answer(deadline, &stage.run);
                let attempt = todo.pop_front().expect("checked above");
                since = Instant::now();
                let failure = match reply {
                    Ok(Reply::Done(bytes)) => {
                        self.idle_deaths = 0;
                        out.put(attempt.index, bytes, &stage.body, &stage.name)?;
                        continue;
                    }
                    Ok(Reply::Failed(chain) | Reply::Raised { chain, .. }) => {
                        let error = RemoteError::from_worker(chain);
                        AttemptFailure::Failed(Box::new(error))
                    }
                    Ok(Reply::Panicked(message)) => AttemptFailure::Panicked(Box::new(message)),
                    Err(gone) => {
                        // The worker is dead or stuck: kill it, and send the rest of the
                        // batch to its replacement.
                        self.retire_times();
                        self.worker = None;
                        match gone {
                            Gone::Cancelled => return Err(Halt::Stop),
                            Gone::TimedOut => AttemptFailure::TimedOut(
                                stage.faults.timeout.expect("only a deadline times out"),
                            ),
                            Gone::Died(status) => {
                                AttemptFailure::Failed(Box::new(WorkerDied::new(status)))
                            }
                            Gone::Broken(error) => AttemptFailure::Failed(Box::new(error)),
                        }
                    }
                };
                self.idle_deaths = 0;
                self.retry_or_fail(attempt, failure, &mut later)?;
                if self.worker.is_none() {
                    break;
                }
            }
        }
    }

    /// Schedules another attempt at `attempt`, or makes its failure the run's error, as
    /// the stage's policy says. (A process attempt hands nothing on before its reply: its
    /// outputs come whole or not at all, so a retry never duplicates any.)
    fn retry_or_fail(
        &self,
        mut attempt: Attempt,
        failure: AttemptFailure,
        later: &mut Vec<Attempt>,
    ) -> Result<(), Halt> {
        let (name, item) = (&self.stage.name, Some(attempt.index));
        match attempt.attempts.failed(failure, false) {
            Verdict::Retry(delay) => {
                attempt.not_before = Instant::now().checked_add(delay);
                later.push(attempt);
                Ok(())
            }
            Verdict::Fail(error) => Err(Halt::Failed(Error::failed(name, item, error))),
            Verdict::Panic(payload) => Err(Halt::Failed(Error::panicked(name, item, payload))),
        }
    }

    fn idle_death(&mut self, gone: Gone) -> Result<(), Halt> {
        let error: BoxError = match gone {
            Gone::Cancelled => return Err(Halt::Stop),
            Gone::Died(status) => Box::new(WorkerDied::new(status)),
            Gone::Broken(error) => Box::new(error),
            Gone::TimedOut => Box::new(io::Error::from(io::ErrorKind::TimedOut)),
        };
        self.idle_deaths += 1;
        if self.idle_deaths >= IDLE_DEATHS {
            return Err(Halt::Failed(Error::failed(&self.stage.name, None, error)));
        }
        Ok(())
    }

    /// Waits until `due` (`None`: for ever), or until the run is cancelled.
    fn sleep_until(&self, due: Option<Instant>) -> Result<(), Halt> {
        const POLL: Duration = Duration::from_millis(5);
        loop {
            if self.stage.run.is_cancelled() {
                return Err(Halt::Stop);
            }
            let left = due.map_or(POLL, |due| due.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}

/// Where the outputs of a batch go: straight on, or into the slots of an ordered batch.
trait Place<O> {
    fn put(
        &mut self,
        index: u64,
        bytes: Vec<u8>,
        body: &ProcessFn<impl Sized, O>,
        stage: &str,
    ) -> Result<(), Halt>;
}

fn decode_into<O>(
    decode: &crate::stage::func::EachFn<Vec<u8>, O>,
    bytes: Vec<u8>,
    out: &mut dyn Emit<O>,
    stage: &str,
    index: u64,
) -> Result<(), Halt> {
    match decode(bytes, out) {
        Ok(()) => Ok(()),
        Err(Fault::Stop) => Err(Halt::Stop),
        Err(Fault::Failed(error)) => Err(Halt::Failed(Error::failed(stage, Some(index), error))),
    }
}

/// The outputs of an ordered batch, by item.
struct Slots<'a, O> {
    first: u64,
    outputs: Vec<Vec<O>>,
    run: &'a RunState,
}

impl<O> Place<O> for Slots<'_, O> {
    fn put(
        &mut self,
        index: u64,
        bytes: Vec<u8>,
        body: &ProcessFn<impl Sized, O>,
        stage: &str,
    ) -> Result<(), Halt> {
        let slot = (index - self.first) as usize;
        let mut collect = Collect {
            items: std::mem::take(&mut self.outputs[slot]),
            run: self.run,
        };
        let result = decode_into(&body.decode, bytes, &mut collect, stage, index);
        self.outputs[slot] = collect.items;
        result
    }
}

/// A process task called on one item at a time, by the thread that holds it: a fork's
/// runner for a process task (see [`crate::stage::fork`]). It keeps one worker process
/// between calls, and each call goes through the same supervision as a stage's batch:
/// the worker is started on first use, replaced when it dies, killed at the task's
/// timeout, and the item retried as the task's policy says.
pub(crate) struct OneByOne<I, O> {
    stage: Arc<ProcessStage<I, O>>,
    worker: Option<Worker>,
    idle_deaths: u32,
}

impl<I, O> OneByOne<I, O> {
    pub(crate) fn new(stage: Arc<ProcessStage<I, O>>) -> Self {
        OneByOne {
            stage,
            worker: None,
            idle_deaths: 0,
        }
    }

    /// Runs `item` in the worker process and emits its outputs. A failure is the task's
    /// own error; a panic in the worker process panics here, with its message.
    pub(crate) fn call(&mut self, item: I, out: &mut dyn Emit<O>) -> Result<(), Fault> {
        let stage = &*self.stage;
        let bytes = (stage.body.encode)(&item).map_err(Fault::Failed)?;
        let mut supervisor = Supervisor {
            stage,
            worker: self.worker.take(),
            current_item: None,
            idle_deaths: self.idle_deaths,
            recorder: None,
            retired_times: ProcessTimes::default(),
        };
        let attempt = Attempt {
            index: 0,
            bytes,
            attempts: Attempts::new(stage.faults),
            not_before: Some(Instant::now()),
        };
        let result = supervisor.run_batch(VecDeque::from([attempt]), &mut Emitting(out));
        (self.worker, self.idle_deaths) = (supervisor.worker.take(), supervisor.idle_deaths);
        match result {
            Ok(()) => Ok(()),
            Err(Halt::Stop) => Err(Fault::Stop),
            Err(Halt::Failed(error)) => match error.panic_message() {
                Some(message) => std::panic::resume_unwind(Box::new(message.to_string())),
                // An error of the stage's own (a worker that cannot start): kept whole.
                None if std::error::Error::source(&error).is_none() => {
                    Err(Fault::Failed(Box::new(error)))
                }
                None => Err(Fault::Failed(error.into_source().expect("checked above"))),
            },
        }
    }
}

impl<I, O> Drop for OneByOne<I, O> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.retire(!self.stage.run.is_cancelled());
        }
    }
}

/// Outputs straight to an emitter: a worker's outlet, or a [`OneByOne`] caller's.
struct Emitting<'a, 'b, O>(&'a mut (dyn Emit<O> + 'b));

impl<O> Place<O> for Emitting<'_, '_, O> {
    fn put(
        &mut self,
        index: u64,
        bytes: Vec<u8>,
        body: &ProcessFn<impl Sized, O>,
        stage: &str,
    ) -> Result<(), Halt> {
        decode_into(&body.decode, bytes, self.0, stage, index)
    }
}
