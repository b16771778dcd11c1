//! Fault handling for thread stages: [`Task::timeout`](crate::Task::timeout) and
//! [`Task::retries`](crate::Task::retries) around a sync body.
//!
//! A stage with a policy gets a [`Guard`] at launch, and each of its workers a body of its
//! own that calls the user's body through the guard. A stage without one runs its body
//! bare, exactly as before: nothing here is on that path.
//!
//! * **Retries.** Each attempt runs under its own `catch_unwind`, with its outputs
//!   counted; [`Attempts`] decides whether a failure is retried. Between attempts the
//!   worker waits out the backoff on a condition variable that a cancel of the run wakes.
//! * **Timeouts.** A thread cannot be stopped from outside, so a timed call runs on a
//!   *helper* thread that belongs to the worker, and the worker waits for it with a
//!   deadline. The helper collects the call's outputs, and the worker hands them on once
//!   the call has returned in time. On an overrun the worker abandons the helper: the call
//!   goes on until it returns (a branch iterator stops at its next element), its result is
//!   dropped, and the helper thread then exits. The next item gets a fresh helper. A
//!   helper that is not abandoned is reused for the worker's next item, and joined when
//!   the worker ends. Once the run has stopped, the worker also abandons a helper blocked
//!   in a branch iterator's `next()`, which a stopped run never waits for (see
//!   [`crate::engine::run`]); it still waits for a call of the task's function, `limit`
//!   at most. A limit beyond the clock's range is no limit.
//!
//! Timing is outside what the model checker (the `shuttle` feature) can explore, so the
//! helpers and waits here use `std`'s primitives directly.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::batch::{Emit, Fault, Stop};
use crate::engine::blocked::{self, Phase, Watch};
use crate::engine::run::Close;
use crate::engine::run::RunState;
use crate::engine::sync::{lock_std as lock, Arc, Instant};
use crate::stage::func::EachFn;
use crate::stage::policy::{AttemptFailure, Attempts, FaultPolicy, Verdict};
use crate::stage::workers::{Stage, StageBody};

/// What the workers of a thread stage with a fault policy share.
pub(crate) struct Guard<I, O> {
    body: EachFn<I, O>,
    policy: FaultPolicy,
    /// `I::clone`, to keep the item for a retry; without it there is one attempt.
    clone_input: Option<fn(&I) -> I>,
    name: Arc<str>,
    run: Arc<RunState>,
    /// Woken by a cancel of the run, so a backoff never delays the shutdown.
    pause: Arc<Pause>,
}

impl<I, O> Guard<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// The guard of one run of a stage; registers its backoff waits with the run.
    pub(crate) fn new(
        body: &EachFn<I, O>,
        policy: FaultPolicy,
        clone_input: Option<fn(&I) -> I>,
        name: &Arc<str>,
        run: &Arc<RunState>,
    ) -> Arc<Self> {
        let mut policy = policy;
        if clone_input.is_none() {
            policy.retries = 0; // `Task::retries` sets `clone_input`: never the case
        }
        let pause = Arc::new(Pause::default());
        if policy.retries > 0 {
            run.register(Box::new(Arc::clone(&pause)));
        }
        Arc::new(Guard {
            body: Arc::clone(body),
            policy,
            clone_input,
            name: Arc::clone(name),
            run: Arc::clone(run),
            pause,
        })
    }

    /// `shared` as one worker runs it: the same stage, with a body of the worker's own
    /// that applies the policy (and owns the worker's helper thread, with a timeout).
    pub(crate) fn worker_stage(self: &Arc<Self>, shared: &Stage<I, O>) -> Stage<I, O> {
        let body = self.worker_body();
        Stage {
            name: Arc::clone(&shared.name),
            run: Arc::clone(&shared.run),
            body: match &shared.body {
                StageBody::Each(..) => StageBody::Each(body, None),
                StageBody::Ordered(_, sequencer) => StageBody::Ordered(body, Arc::clone(sequencer)),
                _ => unreachable!("only thread stages that take one item per call have a guard"),
            },
            meter: Arc::clone(&shared.meter),
            tuner: shared.tuner.clone(),
        }
    }

    pub(crate) fn worker_body(self: &Arc<Self>) -> EachFn<I, O> {
        let guard = Arc::clone(self);
        match self.policy.timeout {
            None => Arc::new(move |item, out: &mut dyn Emit<O>| {
                guard.call(item, out, |input, out| guard.attempt(input, out))
            }),
            Some(limit) => {
                // Only this worker calls its body, so the lock is never contended.
                let helper = Mutex::new(None);
                Arc::new(move |item, out: &mut dyn Emit<O>| {
                    guard.call(item, out, |input, out| {
                        guard.timed_attempt(input, out, limit, &mut lock(&helper))
                    })
                })
            }
        }
    }

    /// Makes attempts at `item` until one succeeds or the policy gives up.
    fn call(
        &self,
        item: I,
        out: &mut dyn Emit<O>,
        attempt: impl Fn(I, &mut dyn Emit<O>) -> Result<(), Failure>,
    ) -> Result<(), Fault> {
        let mut attempts = Attempts::new(self.policy);
        let mut item = Some(item);
        loop {
            let input = match (attempts.is_last(), self.clone_input) {
                (false, Some(clone)) => clone(item.as_ref().expect("kept until the last attempt")),
                _ => item.take().expect("only the last attempt takes the item"),
            };
            let (failure, handed_on) = match attempt(input, out) {
                Ok(()) => return Ok(()),
                Err(Failure::Stop) => return Err(Fault::Stop),
                Err(Failure::Attempt(failure, handed_on)) => (failure, handed_on),
            };
            match attempts.failed(failure, handed_on) {
                Verdict::Retry(delay) => {
                    if self.run.is_cancelled() || !self.pause.sleep(delay) {
                        return Err(Fault::Stop);
                    }
                }
                Verdict::Fail(error) => return Err(Fault::Failed(error)),
                Verdict::Panic(payload) => resume_unwind(payload),
            }
        }
    }

    /// One attempt on the worker's own thread; its outputs go on as they come.
    fn attempt(&self, input: I, out: &mut dyn Emit<O>) -> Result<(), Failure> {
        let mut counted = Counted {
            out,
            handed_on: false,
        };
        let result = catch_unwind(AssertUnwindSafe(|| (self.body)(input, &mut counted)));
        Failure::of(result, counted.handed_on)
    }

    /// One attempt on the worker's helper thread, abandoned if it overruns `limit`.
    fn timed_attempt(
        &self,
        input: I,
        out: &mut dyn Emit<O>,
        limit: Duration,
        slot: &mut Option<Helper<I, O>>,
    ) -> Result<(), Failure> {
        let helper = match slot.take() {
            Some(helper) => helper,
            None => self.spawn_helper().map_err(|error| {
                Failure::Attempt(AttemptFailure::Failed(Box::new(error)), false)
            })?,
        };
        let reply = match helper.call(input, limit, &self.run) {
            Ok(reply) => reply,
            Err(Unanswered::TimedOut) => {
                helper.abandon();
                return Err(Failure::Attempt(AttemptFailure::TimedOut(limit), false));
            }
            Err(Unanswered::Blocked) => {
                helper.abandon();
                return Err(Failure::Stop);
            }
            Err(Unanswered::Gone) => {
                // The helper catches every panic of its calls: this is the engine's fault.
                let error = "the helper thread of a timed call ended without replying";
                return Err(Failure::Attempt(
                    AttemptFailure::Failed(error.into()),
                    false,
                ));
            }
        };
        *slot = Some(helper);
        Failure::of(reply.result, false)?;
        for output in reply.outputs {
            out.emit(output).map_err(|Stop| Failure::Stop)?;
        }
        Ok(())
    }

    fn spawn_helper(&self) -> std::io::Result<Helper<I, O>> {
        let (jobs, job) = mpsc::channel::<I>();
        let (reply, replies) = mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(Phase::default());
        let (body, run, stop, marks) = (
            Arc::clone(&self.body),
            Arc::clone(&self.run),
            Arc::clone(&abandoned),
            Arc::clone(&phase),
        );
        let thread = std::thread::Builder::new()
            .name(format!("pyper:{}", self.name))
            .spawn(move || {
                // A branch iterator's `next()` marks the helper, not the worker.
                blocked::adopt(marks);
                while let Ok(input) = job.recv() {
                    let mut collected = Collected {
                        outputs: Vec::new(),
                        stop: &stop,
                        run: &run,
                    };
                    let result = catch_unwind(AssertUnwindSafe(|| body(input, &mut collected)));
                    let outputs = collected.outputs;
                    if reply.send(Reply { result, outputs }).is_err() {
                        return; // abandoned: nobody waits for this result
                    }
                }
            })?;
        Ok(Helper {
            jobs: Some(jobs),
            replies,
            abandoned,
            phase,
            thread: Some(thread),
        })
    }
}

/// How one attempt ended, when it did not succeed.
enum Failure {
    /// The run stopped, or nobody reads any more: never retried.
    Stop,
    /// The attempt failed, having handed on outputs or not.
    Attempt(AttemptFailure, bool),
}

impl Failure {
    fn of(result: std::thread::Result<Result<(), Fault>>, handed_on: bool) -> Result<(), Self> {
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Fault::Stop)) => Err(Failure::Stop),
            Ok(Err(Fault::Failed(error))) => {
                Err(Failure::Attempt(AttemptFailure::Failed(error), handed_on))
            }
            Err(payload) => Err(Failure::Attempt(
                AttemptFailure::Panicked(payload),
                handed_on,
            )),
        }
    }
}

/// A worker's helper thread, which makes its timed calls.
struct Helper<I, O> {
    /// Dropping it ends the helper once it is idle.
    jobs: Option<mpsc::Sender<I>>,
    replies: mpsc::Receiver<Reply<O>>,
    /// Set when the worker stops waiting: the call's further outputs are refused.
    abandoned: Arc<AtomicBool>,
    /// Whether the helper is inside a branch iterator's `next()`.
    phase: Arc<Phase>,
    thread: Option<JoinHandle<()>>,
}

/// Why a timed call has no reply.
enum Unanswered {
    /// It overran its limit.
    TimedOut,
    /// The run stopped while the call was blocked in a branch iterator's `next()`.
    Blocked,
    /// The helper is gone: the engine's fault, since it catches every panic.
    Gone,
}

/// How often a worker waiting for its helper looks whether the run stopped while the
/// helper is blocked in a branch iterator (which a stopped run does not wait for); more
/// than [`blocked::GRACE`], so that two looks at the same call mean it blocks.
const LOOK: Duration = Duration::from_millis(50);

/// What a helper sends back when a call returns.
struct Reply<O> {
    result: std::thread::Result<Result<(), Fault>>,
    outputs: Vec<O>,
}

impl<I, O> Helper<I, O> {
    /// Makes the call, and waits for its reply `limit` at most (no limit if the deadline
    /// is past the clock's range), and only while the helper is not blocked in a branch
    /// iterator after the run stopped.
    fn call(&self, input: I, limit: Duration, run: &RunState) -> Result<Reply<O>, Unanswered> {
        let jobs = self.jobs.as_ref().expect("only dropped with the helper");
        if jobs.send(input).is_err() {
            return Err(Unanswered::Gone);
        }
        let deadline = std::time::Instant::now().checked_add(limit);
        let mut watch = Watch::default();
        loop {
            let wait = match deadline {
                Some(deadline) => deadline.saturating_duration_since(std::time::Instant::now()),
                None => LOOK,
            };
            match self.replies.recv_timeout(wait.min(LOOK)) {
                Ok(reply) => return Ok(reply),
                Err(RecvTimeoutError::Disconnected) => return Err(Unanswered::Gone),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) {
                return Err(Unanswered::TimedOut);
            }
            if run.is_cancelled() && watch.blocked(&self.phase) {
                return Err(Unanswered::Blocked);
            }
        }
    }

    /// Leaves the call to finish on its own; the thread exits when it returns.
    fn abandon(mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
        drop(self.thread.take());
    }
}

impl<I, O> Drop for Helper<I, O> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // Idle (a call is always waited for or abandoned), so it exits at once; it
            // catches every panic of the calls it makes.
            let _ = thread.join();
        }
    }
}

/// Where a helper's call puts its outputs: kept until the call returns.
struct Collected<'a, O> {
    outputs: Vec<O>,
    stop: &'a AtomicBool,
    run: &'a RunState,
}

impl<O> Emit<O> for Collected<'_, O> {
    fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.stop.load(Ordering::Relaxed) || self.run.is_cancelled() {
            return Err(Stop);
        }
        self.outputs.push(item);
        Ok(())
    }
}

/// Passes an attempt's outputs on, noting whether there were any.
struct Counted<'a, O> {
    out: &'a mut dyn Emit<O>,
    handed_on: bool,
}

impl<O> Emit<O> for Counted<'_, O> {
    fn before_next(&mut self, may_block: bool) -> Result<Option<Instant>, Stop> {
        self.out.before_next(may_block)
    }

    fn after_next(&mut self, asked: Option<Instant>) {
        self.out.after_next(asked);
    }

    fn emit(&mut self, item: O) -> Result<(), Stop> {
        self.out.emit(item)?;
        self.handed_on = true;
        Ok(())
    }
}

/// A backoff wait that a cancel of the run cuts short.
#[derive(Default)]
struct Pause {
    cancelled: Mutex<bool>,
    wake: Condvar,
}

impl Pause {
    /// Waits `delay`; false if the run was cancelled meanwhile.
    fn sleep(&self, delay: Duration) -> bool {
        let cancelled = lock(&self.cancelled);
        if delay.is_zero() {
            return !*cancelled;
        }
        let (cancelled, _) = self
            .wake
            .wait_timeout_while(cancelled, delay, |cancelled| !*cancelled)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !*cancelled
    }
}

impl Close for Pause {
    fn close(&self) {
        *lock(&self.cancelled) = true;
        self.wake.notify_all();
    }
}
