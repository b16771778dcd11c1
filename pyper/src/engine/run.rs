//! One execution of a pipeline: its shared state, and the shutdown protocol every worker
//! obeys.
//!
//! The protocol has four rules, and every hang or swallowed error in Pyper and its peers
//! breaks one of them:
//!
//! 1. **The first failure in time wins.** [`RunState::fail`] records an error only if none
//!    is recorded and the run was not cancelled; the mutex decides the race. A worker
//!    records its failure *before* it drops its queue handles, so nobody can see the end
//!    of a stream that an error caused without also seeing the error.
//! 2. **Cancelling closes every queue** and aborts every async worker. A failure, an
//!    explicit cancel and the drop of the output all call [`RunState::cancel`], which
//!    closes every queue of the run. A closed queue wakes every worker blocked on it,
//!    whatever the bound, and refuses further items, so each worker stops after the item
//!    it is processing. Nothing stops a cancel part-way: closing a queue drops the items
//!    it held, whose `Drop` may panic, so each close runs under its own `catch_unwind`.
//! 3. **The end of a stream is a question for the run state.** When the output's queue
//!    ends, [`crate::Output`] asks: an error recorded means the error is yielded; a cancel
//!    means the output ends; only otherwise is it a clean end.
//! 4. **The end of a stopped run waits for work, never for a blocked iterator.** [`finish`]
//!    waits for every worker of a run that ended cleanly. Once the run is stopped (a
//!    failure, a cancel, a drop), it waits for each worker to finish the call it is in,
//!    but leaves behind the workers of [`daemon`](crate::Task::daemon) stages, and every
//!    worker blocked inside a user iterator's `next()`: the input iterator of `feed`, or
//!    a `branch` task's output iterator. Such a call may never return (a channel whose
//!    sender lives on, a socket), and the element it would return is refused anyway. A
//!    call counts as blocked once it has lasted a moment after the stop
//!    ([`crate::engine::blocked`]), so a call merely under way is waited for. **The
//!    abandoned call keeps running until it returns**; its thread then sees the run
//!    stopped, drops the element and the iterator, and exits; nothing it does reaches the
//!    caller. No error is lost: the failure of a stopped run was recorded before the run
//!    stopped (rule 1), and a worker that is not inside such a call is waited for, its
//!    failure report included.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::engine::blocked::{self, Phase, Watch};
use crate::engine::capacity::{CouldNotStart, ThreadBudget};
use crate::engine::meter::RunMeter;
use crate::engine::sync::{self, thread, Arc, AtomicBool, Condvar, Mutex, Ordering};
use crate::error::Error;

/// Anything the run must be able to close on cancellation, whatever its item type.
pub(crate) trait Close: Send + Sync {
    fn close(&self);
}

impl<C: Close> Close for Arc<C> {
    fn close(&self) {
        (**self).close();
    }
}

/// The state every worker of one run shares.
pub(crate) struct RunState {
    cancelled: AtomicBool,
    error: Mutex<Option<Error>>,
    /// What a cancel must close: every queue, ordered stages' sequencers, async workers.
    on_cancel: Mutex<Vec<Box<dyn Close>>>,
    /// Signalled when a worker thread exits and when the run is cancelled: what the end
    /// of the run waits for.
    changed: Mutex<()>,
    change: Condvar,
    #[cfg(feature = "async")]
    tasks: Arc<TaskCount>,
    /// What the run's workers record.
    pub(crate) meter: RunMeter,
}

impl RunState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(RunState {
            cancelled: AtomicBool::new(false),
            error: Mutex::new(None),
            on_cancel: Mutex::new(Vec::new()),
            changed: Mutex::new(()),
            change: Condvar::new(),
            #[cfg(feature = "async")]
            tasks: Arc::default(),
            meter: RunMeter::new(),
        })
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Stops the run: every queue is closed, which wakes every blocked worker.
    pub(crate) fn cancel(&self) {
        if self.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        let to_close = std::mem::take(&mut *sync::lock(&self.on_cancel));
        for closer in to_close {
            close(closer);
        }
        self.signal();
    }

    /// Records `error` if it is the first failure, then stops the run.
    ///
    /// A failure after a cancel is a consequence of the cancel (a join that saw its input
    /// cut short, say), so it is not recorded.
    pub(crate) fn fail(&self, error: Error) {
        {
            let mut slot = sync::lock(&self.error);
            if slot.is_none() && !self.cancelled.load(Ordering::SeqCst) {
                *slot = Some(error);
            }
        }
        self.cancel();
    }

    pub(crate) fn take_error(&self) -> Option<Error> {
        sync::lock(&self.error).take()
    }

    /// Makes `queue` (or a sequencer, or an async worker) part of the run, so that a cancel
    /// closes it.
    pub(crate) fn register(&self, queue: Box<dyn Close>) {
        let mut on_cancel = sync::lock(&self.on_cancel);
        if self.cancelled.load(Ordering::SeqCst) {
            drop(on_cancel);
            close(queue);
        } else {
            on_cancel.push(queue);
        }
    }

    /// The error for a blocking wait on this run's output from inside one of pyper's async
    /// tasks, if the run has async workers: they need the thread that would wait. Checked
    /// once per blocking wait, never per item.
    #[cfg(feature = "async")]
    pub(crate) fn blocking_refused(&self) -> Option<Error> {
        if !self.tasks.any.load(Ordering::Relaxed) {
            return None;
        }
        crate::engine::runtime::blocking_refused()
    }

    /// Wakes the end of the run, if it waits.
    fn signal(&self) {
        let _changed = sync::lock(&self.changed);
        self.change.notify_all();
    }
}

/// Closes `closer` and lets go of it. A panic in there (the `Drop` of an item the queue
/// held) is contained: the run is stopping already, so it is a consequence of the stop,
/// like any failure after a cancel, and it must not keep the next queue open.
fn close(closer: Box<dyn Close>) {
    drop_contained(Closing(closer));
}

/// Closes what it holds when dropped.
struct Closing(Box<dyn Close>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Drops `value`, which holds user values whose `Drop` may panic, when the run is over or
/// stopping: a panic then is a consequence of the stop, like a failure after a cancel
/// (rule 1), and is contained (reported as a `tracing` warning), never passed on.
/// Items of a collection are dropped each on its own ([`discard`]).
pub(crate) fn drop_contained<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        contain(payload);
    }
}

/// [`discard`] for a run that is over or stopping: the panic is contained, as in
/// [`drop_contained`].
pub(crate) fn discard_contained<T>(items: impl IntoIterator<Item = T>) {
    if let Err(payload) = discard(items) {
        contain(payload);
    }
}

/// Reports a panic that a stopping or finished run cannot pass on, and lets go of it.
fn contain(payload: Box<dyn std::any::Any + Send>) {
    let message = crate::error::panic_message(payload.as_ref());
    tracing::warn!(target: "pyper", "a panic while a run let go of its items: {message}");
    // The payload's own `Drop` is user code too.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
}

/// Drops `items`, user values whose `Drop` may panic, each on its own: a panic does not
/// stop the others from being dropped, and a second one cannot abort the process (as it
/// would while the first unwinds). Returns the first panic's payload, for the caller to
/// resume once nothing else is left to drop.
pub(crate) fn discard<T>(items: impl IntoIterator<Item = T>) -> std::thread::Result<()> {
    if !std::mem::needs_drop::<T>() {
        return Ok(());
    }
    let mut first = Ok(());
    for item in items {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(item))) {
            match first {
                Ok(()) => first = Err(payload),
                // Its own `Drop` is user code too.
                Err(_) => drop(catch_unwind(AssertUnwindSafe(move || drop(payload)))),
            }
        }
    }
    first
}

/// [`discard`], then the first panic resumed: for a caller whose own caller reports it.
pub(crate) fn discard_or_resume<T>(items: impl IntoIterator<Item = T>) {
    if let Err(payload) = discard(items) {
        std::panic::resume_unwind(payload);
    }
}

/// A worker thread of the run.
pub(crate) struct WorkerThread {
    handle: thread::JoinHandle<()>,
    daemon: bool,
    phase: Arc<Phase>,
    /// The end of a stopped run's view of whether it is blocked in a user iterator.
    watch: Watch,
}

/// Collects what a pipeline's stages start while a run is being launched.
pub(crate) struct Launcher {
    pub(crate) state: Arc<RunState>,
    pub(crate) threads: Vec<WorkerThread>,
    next_position: usize,
    budget: ThreadBudget,
    /// Set once a worker could not be started: nothing more is.
    refused: bool,
}

impl Launcher {
    pub(crate) fn new(state: Arc<RunState>) -> Self {
        Launcher {
            state,
            threads: Vec::new(),
            next_position: 1,
            budget: ThreadBudget::default(),
            refused: false,
        }
    }

    /// The 1-based position of the next stage, for default stage names.
    pub(crate) fn next_position(&mut self) -> usize {
        let position = self.next_position;
        self.next_position += 1;
        position
    }

    /// Starts one worker thread named after its stage: worker `number` (1-based) of the
    /// stage's `workers`.
    ///
    /// If it cannot be started, that is the run's error, naming the stage, the worker and
    /// the count, and the launcher starts nothing more: the rest of the pipeline is not
    /// launched, and the run stops.
    pub(crate) fn spawn(
        &mut self,
        stage: &str,
        (number, workers): (usize, usize),
        daemon: bool,
        work: impl FnOnce() + Send + 'static,
    ) {
        if self.refused {
            return;
        }
        let phase = Arc::new(Phase::default());
        let started = self.budget.take(workers).and_then(|()| {
            let builder = thread::Builder::new().name(format!("pyper:{stage}"));
            let work = worker_body(stage, &self.state, &phase, work);
            builder.spawn(work).map_err(Into::into)
        });
        match started {
            Ok(handle) => self.threads.push(WorkerThread {
                handle,
                daemon,
                phase,
                watch: Watch::default(),
            }),
            Err(cause) => {
                self.refused = true;
                let error = CouldNotStart {
                    worker: number,
                    workers,
                    cause,
                };
                self.state.fail(Error::failed(stage, None, Box::new(error)));
            }
        }
    }

    /// Starts one async worker on pyper's runtime. Cancelling the run aborts it, which
    /// drops the future it is awaiting.
    #[cfg(feature = "async")]
    pub(crate) fn spawn_task(
        &mut self,
        stage: &str,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        if self.refused {
            return;
        }
        let runtime = match crate::engine::runtime::handle() {
            Ok(runtime) => runtime,
            Err(error) => return self.state.fail(Error::failed(stage, None, error)),
        };
        let alive = self.state.tasks.enter();
        let (run, stage) = (Arc::clone(&self.state), stage.to_owned());
        let span = tracing::debug_span!(target: "pyper", "pyper_worker", stage = %stage);
        let work = tracing::Instrument::instrument(work, span);
        let work = crate::engine::runtime::InTask::new(work);
        let task = runtime.spawn(async move {
            // A backstop: workers catch the panics of user code themselves, so one that gets
            // here is the engine's. Recorded before `alive` is dropped, so the output, which
            // waits for every task, cannot mistake it for a clean end.
            let outcome = futures_util::FutureExt::catch_unwind(AssertUnwindSafe(work)).await;
            if let Err(payload) = outcome {
                run.fail(Error::panicked(&stage, None, payload));
            }
            drop(alive);
        });
        self.state.register(Box::new(task.abort_handle()));
    }
}

/// What a worker thread of `stage` runs: `work`, with its phase known to the thread, and a
/// backstop for a panic that escapes it.
fn worker_body(
    stage: &str,
    run: &Arc<RunState>,
    phase: &Arc<Phase>,
    work: impl FnOnce() + Send + 'static,
) -> impl FnOnce() + Send + 'static {
    // Events the user's code emits inside a task carry the stage's name.
    let span = tracing::debug_span!(target: "pyper", "pyper_worker", stage = %stage);
    let (stage, run, phase) = (stage.to_owned(), Arc::clone(run), Arc::clone(phase));
    move || {
        blocked::adopt(Arc::clone(&phase));
        // Signalled however the worker ends, after its failure was recorded.
        let _exit = Exit { run: &run, phase };
        // Workers catch the panics of user code. What gets here is a panic while the
        // worker let go of its items (the last receiver of a queue drops what it holds):
        // the stage's failure, recorded before the worker counts as gone.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| span.in_scope(work))) {
            run.fail(Error::panicked(&stage, None, payload));
        }
    }
}

/// Marks a worker gone when dropped, and tells the end of the run.
struct Exit<'a> {
    run: &'a RunState,
    phase: Arc<Phase>,
}

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let _changed = sync::lock(&self.run.changed);
        self.phase.set_exited();
        self.run.change.notify_all();
    }
}

#[cfg(feature = "async")]
impl Close for tokio::task::AbortHandle {
    fn close(&self) {
        self.abort();
    }
}

/// How often the end of a stopped run looks again for workers blocked in a user
/// iterator: entering one is not signalled, and a call counts as blocked only once it
/// has lasted [`blocked::GRACE`].
const RECHECK: Duration = Duration::from_millis(5);

/// Waits until the run's workers have stopped, and returns the run's error, if any.
///
/// A run that ended cleanly waits for every worker, so that a failure in a stage still
/// finishing up is reported rather than lost. A stopped run leaves daemon stages and
/// workers blocked in a user iterator behind (rule 4 of the module docs).
pub(crate) fn finish(run: &RunState, threads: Vec<WorkerThread>) -> Option<Error> {
    let mut waiting = threads;
    let mut gone = Vec::new();
    // A run ended from one of its own workers (a drop inside a stage) cannot wait for
    // that worker: it is left to end on its own, as the cancel tells it to.
    let here = thread::current().id();
    if waiting
        .iter()
        .any(|worker| worker.handle.thread().id() == here)
    {
        run.cancel();
        waiting.retain(|worker| worker.handle.thread().id() != here);
    }
    loop {
        let changed = sync::lock(&run.changed);
        let stopped = run.is_cancelled();
        for mut worker in std::mem::take(&mut waiting) {
            if worker.phase.exited() {
                gone.push(worker);
            } else if !(stopped && (worker.daemon || worker.watch.blocked(&worker.phase))) {
                waiting.push(worker);
            }
            // Else left behind: dropping its handle detaches the thread.
        }
        if waiting.is_empty() {
            break;
        }
        // Worker exits and the cancel are signalled; entering a user iterator is not.
        drop(match stopped {
            true => sync::wait_timeout(&run.change, changed, RECHECK).0,
            false => sync::wait(&run.change, changed),
        });
    }
    for worker in gone {
        // A worker catches every panic, so its thread cannot end with one; and it is past
        // its last use of the run, so this join returns at once.
        let _ = worker.handle.join();
    }
    #[cfg(feature = "async")]
    run.tasks.wait_until_none();
    run.meter.end();
    run.take_error()
}

/// Counts a run's async workers, so that a blocking caller can wait for them to end from
/// any thread, a runtime's included.
#[cfg(feature = "async")]
#[derive(Default)]
pub(crate) struct TaskCount {
    alive: Mutex<usize>,
    none_alive: Condvar,
    /// Whether the run ever had an async worker: it then needs pyper's runtime.
    any: AtomicBool,
}

#[cfg(feature = "async")]
impl TaskCount {
    fn enter(self: &Arc<Self>) -> TaskAlive {
        self.any.store(true, Ordering::Relaxed);
        *sync::lock(&self.alive) += 1;
        TaskAlive(Arc::clone(self))
    }

    fn wait_until_none(&self) {
        let mut alive = sync::lock(&self.alive);
        while *alive > 0 {
            alive = sync::wait(&self.none_alive, alive);
        }
    }
}

/// Held by an async worker's future: dropped when the task ends or is aborted.
#[cfg(feature = "async")]
struct TaskAlive(Arc<TaskCount>);

#[cfg(feature = "async")]
impl Drop for TaskAlive {
    fn drop(&mut self) {
        let mut alive = sync::lock(&self.0.alive);
        *alive -= 1;
        if *alive == 0 {
            self.0.none_alive.notify_all();
        }
    }
}
