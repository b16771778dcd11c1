//! The output of a run: a blocking iterator (with the `async` feature, also readable as an
//! `OutputStream`), and the handle that cancels it.

use std::fmt;

use crate::engine::batch::MAX_BATCH;
use crate::engine::queue::Receiver;
use crate::engine::run::{self, Launcher, RunState, WorkerThread};
use crate::engine::sync::Arc;
use crate::error::Error;
use crate::observe::progress::Bars;
use crate::observe::{self, RunOptions};

mod inspect;
#[cfg(feature = "async")]
mod stream;

pub use inspect::Monitor;
#[cfg(feature = "async")]
pub use stream::OutputStream;

type Start<O> = Box<dyn FnOnce(&mut Launcher) -> Result<Receiver<O>, Error> + Send>;

/// The outputs of one run, as an iterator of `Result<O, Error>`. Made by
/// [`Pipeline::run`](crate::Pipeline::run) and [`Pipeline::feed`](crate::Pipeline::feed).
///
/// * It is lazy: the run starts at the first call to `next`.
/// * Outputs arrive as they are produced. With one worker per stage they keep the input
///   order; otherwise they arrive in completion order, unless the stages are
///   [`ordered`](crate::Task::ordered).
/// * If any stage fails, the first failure in time is yielded as `Err`, after every
///   worker has stopped (daemon stages aside), and then the iterator ends. Outputs the
///   run had produced but you had not yet taken are dropped with the run. An error never
///   looks like the end of the stream.
/// * Dropping it at any point cancels the run: every thread stage stops after the item it
///   is processing, async stages drop the futures they await, and the drop returns once
///   the non-daemon workers have exited.
///
/// ```
/// use pyper::task;
///
/// // An endless source, bounded queues everywhere: taking three outputs and dropping the
/// // rest stops every thread.
/// let pipeline = task(|x: u64| x + 1).throttle(1) | task(|x: u64| x * 2).throttle(1);
/// let first: Vec<u64> = pipeline.feed(0..).take(3).map(Result::unwrap).collect();
/// assert_eq!(first, [2, 4, 6]);
/// ```
#[must_use = "a run does nothing until its output is iterated"]
pub struct Output<O> {
    pub(crate) run: Arc<RunState>,
    start: Option<Start<O>>,
    pub(crate) receiver: Option<Receiver<O>>,
    pub(crate) ready: std::vec::IntoIter<O>,
    threads: Vec<WorkerThread>,
    /// What the run records and shows, settled when it starts.
    pub(crate) options: RunOptions,
    bars: Option<Bars>,
    pub(crate) finished: bool,
    /// What a `Stream` consumer is waiting for.
    #[cfg(feature = "async")]
    pub(crate) waiting: Option<crate::output::stream::Waiting<O>>,
}

impl<O: Send + 'static> Output<O> {
    pub(crate) fn new(
        start: impl FnOnce(&mut Launcher) -> Result<Receiver<O>, Error> + Send + 'static,
    ) -> Self {
        Output {
            run: RunState::new(),
            start: Some(Box::new(start)),
            receiver: None,
            ready: Vec::new().into_iter(),
            threads: Vec::new(),
            options: RunOptions::from_env(),
            bars: None,
            finished: false,
            #[cfg(feature = "async")]
            waiting: None,
        }
    }
}

impl<O> Output<O> {
    /// A handle that cancels this run from anywhere, another thread included.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let mut outputs = task(|x: u64| x).feed(0..);
    /// let canceller = outputs.canceller();
    /// assert_eq!(outputs.next().unwrap().unwrap(), 0);
    /// std::thread::spawn(move || canceller.cancel()).join().unwrap();
    /// // What was already handed over may still arrive; then the output ends.
    /// assert!(outputs.by_ref().all(|item| item.is_ok()));
    /// ```
    pub fn canceller(&self) -> Canceller {
        Canceller {
            run: Arc::clone(&self.run),
        }
    }

    /// Cancels the run and waits for its non-daemon workers to stop. The iterator then
    /// ends; outputs not yet taken are dropped.
    pub fn cancel(&mut self) {
        self.run.cancel();
        self.finish();
    }

    fn finish(&mut self) -> Option<Error> {
        self.begin_finish()?.wait()
    }

    /// Marks the output finished and hands back what is left to wait for, unless it was
    /// finished already.
    pub(crate) fn begin_finish(&mut self) -> Option<Ending> {
        if self.finished {
            return None;
        }
        self.finished = true;
        // User values (the input iterator, outputs not taken) whose `Drop` may panic: never
        // out of `next()` or a drop of the output.
        run::drop_contained(self.start.take());
        run::drop_contained(self.receiver.take());
        run::discard_contained(std::mem::take(&mut self.ready));
        Some(Ending {
            run: Arc::clone(&self.run),
            threads: std::mem::take(&mut self.threads),
            bars: self.bars.take(),
        })
    }

    /// Whether the run has started (or ended): its options can no longer change.
    pub(crate) fn has_started(&self) -> bool {
        self.start.is_none()
    }

    /// Starts the run if it has not started: returns `false` if it could not.
    pub(crate) fn ensure_started(&mut self) -> bool {
        let Some(start) = self.start.take() else {
            return true;
        };
        if self.run.is_cancelled() {
            // Cancelled before it started: nothing to start, nothing to wait for.
            return false;
        }
        let options = self.options.clone();
        let trace = options
            .trace
            .then(|| crate::observe::trace::start(options.trace_file.clone()))
            .flatten();
        self.run.meter.configure(options.metrics, trace);
        self.run.meter.start();
        let mut launcher = Launcher::new(Arc::clone(&self.run));
        let started = start(&mut launcher);
        self.threads = launcher.threads;
        if options.shows_progress() {
            self.bars = crate::observe::progress::start(&self.run);
        }
        match started {
            Ok(receiver) => {
                self.receiver = Some(receiver);
                true
            }
            Err(error) => {
                self.run.fail(error);
                false
            }
        }
    }
}

/// What a finished output still has to wait for: its workers, then the run's observers.
pub(crate) struct Ending {
    run: Arc<RunState>,
    threads: Vec<WorkerThread>,
    bars: Option<Bars>,
}

impl Ending {
    /// Waits for the run's workers, then ends what observes it (bars, trace file,
    /// `tracing` events), and returns the run's error, if any.
    pub(crate) fn wait(self) -> Option<Error> {
        let error = run::finish(&self.run, self.threads);
        observe::run_ended(&self.run, self.bars);
        error
    }
}

// Never pinned in place: it only holds queues, handles and boxes, so it can be polled as
// a `Stream` without pinning.
impl<O> Unpin for Output<O> {}

impl<O> Iterator for Output<O> {
    type Item = Result<O, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self.ready.next() {
            Some(item) => Some(Ok(item)),
            None => self.next_batch(),
        }
    }
}

impl<O> Output<O> {
    /// [`next`](Iterator::next) once the outputs in hand are used up: waits for the next
    /// batch, or ends the run.
    #[cold]
    fn next_batch(&mut self) -> Option<Result<O, Error>> {
        loop {
            if let Some(item) = self.ready.next() {
                return Some(Ok(item));
            }
            if self.finished {
                return None;
            }
            if !self.ensure_started() {
                return self.finish().map(Err);
            }
            #[cfg(feature = "async")]
            if let Some(error) = self.run.blocking_refused() {
                // Waiting would hold a thread of the runtime the run needs: stop the run,
                // and leave its workers to wind down without waiting for them.
                self.run.cancel();
                drop(self.begin_finish());
                return Some(Err(error));
            }
            // Everything ready: taking all that the queue holds moves its buffer, not its
            // items. The queue gets the used-up batch's buffer in exchange (collecting an
            // exhausted `vec::IntoIter` keeps its allocation), so the producer that swaps
            // with it next need not grow a buffer from nothing.
            let mut batch: Vec<O> = std::mem::take(&mut self.ready).collect();
            match self
                .receiver
                .as_ref()
                .map(|r| r.pop_batch(&mut batch, usize::MAX))
            {
                Some(Some(_)) => self.ready = batch.into_iter(),
                _ => return self.finish().map(Err),
            }
        }
    }
}

impl<O> Output<O> {
    /// The next output already handed over to this `Output`, if any: it never waits,
    /// never starts the run and never ends it. For a caller that must not block where it
    /// is (a Python caller holding the GIL), before it calls
    /// [`next_within`](Output::next_within) elsewhere.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let mut outputs = task(|x: u64| x + 1).feed(0..3);
    /// assert!(outputs.next_ready().is_none()); // not started
    /// assert_eq!(outputs.next().unwrap().unwrap(), 1);
    /// ```
    pub fn next_ready(&mut self) -> Option<O> {
        self.ready.next()
    }

    /// [`next`](Iterator::next) that waits at most about `timeout` for the next output:
    /// `Poll::Pending` if none came in that time, else what `next` would return. For a
    /// caller that has something else to look at while it waits (Python's Ctrl-C). The
    /// end of the run is waited for in full, as in `next`.
    ///
    /// ```
    /// use std::task::Poll;
    /// use std::time::Duration;
    /// use pyper::task;
    ///
    /// let mut outputs = task(|x: u64| x * 2).run(21);
    /// let first = loop {
    ///     if let Poll::Ready(item) = outputs.next_within(Duration::from_millis(10)) {
    ///         break item;
    ///     }
    /// };
    /// assert_eq!(first.unwrap().unwrap(), 42);
    /// ```
    pub fn next_within(
        &mut self,
        timeout: std::time::Duration,
    ) -> std::task::Poll<Option<Result<O, Error>>> {
        use crate::engine::queue::Popped;
        use std::task::Poll;
        if let Some(item) = self.ready.next() {
            return Poll::Ready(Some(Ok(item)));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        if !self.ensure_started() {
            return Poll::Ready(self.finish().map(Err));
        }
        #[cfg(feature = "async")]
        if let Some(error) = self.run.blocking_refused() {
            // As in `next`: waiting would hold a thread of the runtime the run needs.
            self.run.cancel();
            drop(self.begin_finish());
            return Poll::Ready(Some(Err(error)));
        }
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let popped = match &self.receiver {
            Some(receiver) => receiver.pop_batch_timeout(&mut batch, MAX_BATCH, timeout),
            None => Popped::Over,
        };
        match popped {
            Popped::Items(_) => {
                self.ready = batch.into_iter();
                Poll::Ready(self.ready.next().map(Ok))
            }
            Popped::Empty => Poll::Pending,
            Popped::Over => Poll::Ready(self.finish().map(Err)),
        }
    }
}

impl<O> Drop for Output<O> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.run.cancel();
        self.finish();
    }
}

impl<O> fmt::Debug for Output<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("started", &self.start.is_none())
            .field("finished", &self.finished)
            .field("cancelled", &self.run.is_cancelled())
            .finish()
    }
}

/// Cancels a run from anywhere. Made by [`Output::canceller`].
///
/// Cancelling stops every thread stage after the item it is processing and drops the
/// futures async stages await; the run's [`Output`]
/// then ends without an error. Cancelling twice, or after the run ended, does nothing.
#[derive(Clone)]
pub struct Canceller {
    run: Arc<RunState>,
}

impl Canceller {
    /// Stops the run.
    pub fn cancel(&self) {
        self.run.cancel();
    }

    /// Whether the run was cancelled, by this handle or by a failure or a drop.
    pub fn is_cancelled(&self) -> bool {
        self.run.is_cancelled()
    }
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
