//! One execution of a pipeline: its shared state, and the shutdown protocol every worker
//! obeys.
//!
//! The protocol has three rules, and every hang or swallowed error in Pyper and its peers
//! breaks one of them:
//!
//! 1. **The first failure in time wins.** [`RunState::fail`] records an error only if none
//!    is recorded and the run was not cancelled; the mutex decides the race. A worker
//!    records its failure *before* it drops its queue handles, so nobody can see the end
//!    of a stream that an error caused without also seeing the error.
//! 2. **Cancelling closes every queue** and aborts every async worker. A failure, an explicit cancel and the drop of the
//!    output all call [`RunState::cancel`], which closes every queue of the run. A closed
//!    queue wakes every worker blocked on it, whatever the bound, and refuses further
//!    items, so each worker stops after the item it is processing.
//! 3. **The end of a stream is a question for the run state.** When the output's queue
//!    ends, [`crate::Output`] asks: an error recorded means the error is yielded; a cancel
//!    means the output ends; only otherwise is it a clean end.

#[cfg(feature = "async")]
use std::panic::AssertUnwindSafe;

use crate::engine::meter::RunMeter;
use crate::engine::queue::Close;
use crate::engine::sync::{self, thread, Arc, AtomicBool, Mutex, Ordering};
use crate::error::Error;

/// The state every worker of one run shares.
pub(crate) struct RunState {
    cancelled: AtomicBool,
    error: Mutex<Option<Error>>,
    /// What a cancel must close: every queue, ordered stages' sequencers, async workers.
    on_cancel: Mutex<Vec<Box<dyn Close>>>,
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
        for closer in &to_close {
            closer.close();
        }
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
            queue.close();
        } else {
            on_cancel.push(queue);
        }
    }
}

/// A worker thread of the run.
pub(crate) struct WorkerThread {
    handle: thread::JoinHandle<()>,
    daemon: bool,
}

/// Collects what a pipeline's stages start while a run is being launched.
pub(crate) struct Launcher {
    pub(crate) state: Arc<RunState>,
    pub(crate) threads: Vec<WorkerThread>,
    next_position: usize,
}

impl Launcher {
    pub(crate) fn new(state: Arc<RunState>) -> Self {
        Launcher {
            state,
            threads: Vec::new(),
            next_position: 1,
        }
    }

    /// The 1-based position of the next stage, for default stage names.
    pub(crate) fn next_position(&mut self) -> usize {
        let position = self.next_position;
        self.next_position += 1;
        position
    }

    /// Starts one worker thread named after its stage.
    pub(crate) fn spawn(
        &mut self,
        stage: &str,
        daemon: bool,
        work: impl FnOnce() + Send + 'static,
    ) {
        let builder = thread::Builder::new().name(format!("pyper:{stage}"));
        // Events the user's code emits inside a task carry the stage's name.
        let span = tracing::debug_span!(target: "pyper", "pyper_worker", stage = %stage);
        let work = move || span.in_scope(work);
        match builder.spawn(work) {
            Ok(handle) => self.threads.push(WorkerThread { handle, daemon }),
            Err(error) => self.state.fail(Error::failed(stage, None, Box::new(error))),
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
        let runtime = match crate::engine::runtime::handle() {
            Ok(runtime) => runtime,
            Err(error) => return self.state.fail(Error::failed(stage, None, error)),
        };
        let alive = self.state.tasks.enter();
        let (run, stage) = (Arc::clone(&self.state), stage.to_owned());
        let span = tracing::debug_span!(target: "pyper", "pyper_worker", stage = %stage);
        let work = tracing::Instrument::instrument(work, span);
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

#[cfg(feature = "async")]
impl Close for tokio::task::AbortHandle {
    fn close(&self) {
        self.abort();
    }
}

/// Waits until the run's workers have stopped, and returns the run's error, if any.
///
/// A run that ended cleanly waits for every worker, so that a failure in a stage still
/// finishing up is reported rather than lost. A stopped run leaves daemon stages behind.
pub(crate) fn finish(run: &RunState, threads: Vec<WorkerThread>) -> Option<Error> {
    let detach_daemons = run.is_cancelled();
    for worker in threads {
        if worker.daemon && detach_daemons {
            continue;
        }
        // A worker runs all user code under `catch_unwind`, so its thread cannot panic;
        // the result carries nothing worth reporting.
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
    none_alive: crate::engine::sync::Condvar,
}

#[cfg(feature = "async")]
impl TaskCount {
    fn enter(self: &Arc<Self>) -> TaskAlive {
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
