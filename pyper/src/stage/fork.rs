//! Fork/join of tasks: one stage gives each input to several tasks, runs them at once, and
//! hands on their outputs together ([`crate::fork`]).
//!
//! A fork stage is a thread stage whose workers each own one *runner* per inner task: a
//! helper thread for a thread task (which calls the task's body under its own timeout and
//! retries, through the same [`Guard`](crate::stage::thread::retry::Guard) as a thread
//! stage), or pyper's runtime for an async task (its body under the async guard). A process
//! task is a thread task whose body calls a worker process of its own, one item at a time,
//! under the process kind's own supervision (`process::one_by_one`). A
//! worker's call on one item starts every runner, then waits for their replies: the first
//! failure returns at once (its siblings' calls finish on their own before the worker
//! ends, as any call in progress does when a run stops); a cancel aborts the async calls.
//! So `workers(n)` on the fork is how many inputs are in flight.
//!
//! Each inner task's outputs are boxed as `dyn Any` here, so that this module is the same
//! for every arity; the typed tuple is put back together by the `assemble` function
//! [`crate::task::fork`] builds for the tuple's types.

use std::any::Any;
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::batch::{Emit, Fault, Stop};
use crate::engine::run::RunState;
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::{EachFn, SetupFn};
use crate::stage::inner::{InnerCause, InnerFailure};
use crate::stage::policy::FaultPolicy;
use crate::stage::thread::{self, retry};
use crate::stage::{Body, Launch, Spec};

/// One inner task's output, before the fork puts the tuple back together.
pub(crate) type Erased = Box<dyn Any + Send>;

/// A fork's tasks and how to assemble their outputs.
pub(crate) struct ForkBody<I, O> {
    pub(crate) inners: Arc<[Inner<I>]>,
    /// Builds the output from one output per task, in the tasks' order.
    pub(crate) assemble: fn(Vec<Erased>) -> O,
    /// `I::clone`: every task but the last gets a clone of the item.
    pub(crate) clone_item: fn(&I) -> I,
}

impl<I, O> Clone for ForkBody<I, O> {
    fn clone(&self) -> Self {
        ForkBody {
            inners: Arc::clone(&self.inners),
            assemble: self.assemble,
            clone_item: self.clone_item,
        }
    }
}

/// One task of a fork, its output boxed.
pub(crate) struct Inner<I> {
    pub(crate) body: Body<I, Erased>,
    pub(crate) spec: Spec,
    pub(crate) clone_input: Option<fn(&I) -> I>,
}

/// Why a fork cannot have its own timeout or retries.
const FORK_FAULTS: &str =
    "a fork has no timeout or retries of its own: set them on the tasks inside it, each \
     its own";

/// Why a fork cannot have its workers tuned.
const FORK_AUTO: &str = "auto_workers() does not apply to a fork yet: use workers(n)";

/// Why a fork's task cannot have stage options.
const INNER_OPTIONS: &str =
    "workers, auto_workers, throttle, ordered and daemon apply to the fork, not to a task \
     inside it: set them on the fork";

impl<I, O> ForkBody<I, O> {
    /// The configuration errors of a fork (those of the fork's own spec are checked by the
    /// caller), naming the inner task at fault.
    pub(crate) fn check(&self, spec: &Spec, name: &str) -> Result<(), Cow<'static, str>> {
        if spec.faults.is_active() {
            return Err(FORK_FAULTS.into());
        }
        if spec.auto {
            return Err(FORK_AUTO.into());
        }
        for (index, inner) in self.inners.iter().enumerate() {
            let task = inner_name(&inner.spec, name, index);
            let at_fault = |why: &str| Cow::Owned(format!("task `{task}` of the fork: {why}"));
            let default = Spec::new(None);
            let (s, d) = (&inner.spec, &default);
            if s.workers != d.workers || s.auto || s.throttle != d.throttle || s.ordered || s.daemon
            {
                return Err(at_fault(INNER_OPTIONS));
            }
            inner
                .body
                .check(&inner.spec, &task)
                .map_err(|why| at_fault(&why))?;
            let refused = match &inner.body {
                Body::Each(..) | Body::PerWorker(_) => None,
                #[cfg(feature = "async")]
                Body::AsyncEach(_) => None,
                Body::Join(_) => Some("a join task cannot be forked: it receives the stream"),
                #[cfg(feature = "async")]
                Body::AsyncJoin(_) => Some("a join task cannot be forked: it receives the stream"),
                #[cfg(feature = "process")]
                Body::Process(_) => None,
                #[cfg(feature = "python")]
                Body::Python(_) => Some("a Python task is forked with `&` in Python"),
                #[cfg(feature = "remote")]
                Body::Remote(_) => Some("a remote task cannot be forked yet"),
                Body::Fork(_) => None,
                Body::Invalid(why) => Some(*why),
            };
            if let Some(why) = refused {
                return Err(at_fault(why));
            }
        }
        Ok(())
    }
}

/// An inner task's name in errors: its own, or its place in the fork.
fn inner_name(spec: &Spec, fork: &str, index: usize) -> Arc<str> {
    match &spec.name {
        Some(name) => Arc::clone(name),
        None => format!("{fork}, task {}", index + 1).into(),
    }
}

/// Starts the fork's workers: thread workers, each building its runners when it starts.
pub(crate) fn launch<I, O>(body: &ForkBody<I, O>, stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let run = Arc::clone(&stage.launcher.state);
    let plans: Arc<[Plan<I>]> = (body.inners.iter().enumerate())
        .map(|(index, inner)| Plan::new(inner, inner_name(&inner.spec, &stage.name, index), &run))
        .collect();
    let (assemble, clone_item) = (body.assemble, body.clone_item);
    let setup: SetupFn<I, O> = Arc::new(move || {
        let worker = Worker::start(&plans, &run)?;
        let worker = Mutex::new(worker);
        let each: EachFn<I, O> = Arc::new(move |item, out: &mut dyn Emit<O>| {
            // Only this worker calls its body, so the lock is never contended.
            let mut worker = crate::engine::sync::lock_std(&worker);
            let outputs = worker.call(item, clone_item)?;
            out.emit(assemble(outputs)).map_err(Fault::from)
        });
        Ok(each)
    });
    thread::launch_per_worker(&setup, stage);
}

/// How one inner task is run, settled at launch.
enum Plan<I> {
    /// A thread task: its body (or the setup of a body per worker), and its fault policy,
    /// applied by a guard of each worker's own, as in a thread stage.
    Thread {
        name: Arc<str>,
        body: Body<I, Erased>,
        faults: FaultPolicy,
        clone_input: Option<fn(&I) -> I>,
    },
    /// An async task, its body already under its fault policy.
    #[cfg(feature = "async")]
    Async {
        name: Arc<str>,
        body: crate::stage::func::AsyncFn<I, Erased>,
    },
}

impl<I: Send + 'static> Plan<I> {
    /// `run` is where a process task registers its worker processes, to be killed at a cancel.
    #[cfg_attr(not(feature = "process"), allow(unused_variables))]
    fn new(inner: &Inner<I>, name: Arc<str>, run: &Arc<RunState>) -> Self {
        match &inner.body {
            // A thread task whose body calls a worker process of its own, which applies
            // the task's timeout and retries itself.
            #[cfg(feature = "process")]
            Body::Process(process) => Plan::Thread {
                body: Body::PerWorker(crate::stage::process::one_by_one(
                    process,
                    &name,
                    inner.spec.faults,
                    run,
                )),
                name,
                faults: FaultPolicy::default(),
                clone_input: inner.clone_input,
            },
            #[cfg(feature = "async")]
            Body::AsyncEach(each) => Plan::Async {
                body: crate::stage::async_task::retry::guard(
                    each,
                    inner.spec.faults,
                    inner.clone_input,
                ),
                name,
            },
            // `Each` or `PerWorker`: anything else was refused by `check`.
            _ => Plan::Thread {
                name,
                body: inner.body.clone(),
                faults: inner.spec.faults,
                clone_input: inner.clone_input,
            },
        }
    }
}

/// What an inner call sends back: the worker's item number, the task's place, and its
/// output or failure.
type Reply = (u64, usize, Result<Erased, InnerFailure>);

/// One fork worker's runners, and where their replies come.
struct Worker<I> {
    runners: Vec<Runner<I>>,
    replies: mpsc::Receiver<Reply>,
    /// Counts the worker's calls, so that a reply from an abandoned call is told apart.
    call: u64,
    run: Arc<RunState>,
}

enum Runner<I> {
    Thread(Helper<I>),
    #[cfg(feature = "async")]
    Async {
        /// The task's place in the fork.
        index: usize,
        name: Arc<str>,
        body: crate::stage::func::AsyncFn<I, Erased>,
        runtime: tokio::runtime::Handle,
        reply: mpsc::Sender<Reply>,
        pending: Option<tokio::task::JoinHandle<()>>,
    },
}

/// How often a worker waiting for its tasks looks whether the run stopped (to abort the
/// async ones): a cancel is noticed within this.
const LOOK: Duration = Duration::from_millis(20);

impl<I: Send + 'static> Worker<I> {
    fn start(plans: &[Plan<I>], run: &Arc<RunState>) -> Result<Self, BoxError> {
        let (reply, replies) = mpsc::channel();
        let mut runners = Vec::with_capacity(plans.len());
        for (index, plan) in plans.iter().enumerate() {
            let runner = match plan {
                Plan::Thread {
                    name,
                    body,
                    faults,
                    clone_input,
                } => {
                    let mut each = match body {
                        Body::Each(each, _) => Arc::clone(each),
                        Body::PerWorker(setup) => setup()?,
                        _ => return Err("a fork's task of an unexpected kind".into()),
                    };
                    if faults.is_active() {
                        let guard = retry::Guard::new(&each, *faults, *clone_input, name, run);
                        each = guard.worker_body();
                    }
                    Runner::Thread(Helper::spawn(index, name, each, reply.clone(), run)?)
                }
                #[cfg(feature = "async")]
                Plan::Async { name, body } => Runner::Async {
                    index,
                    name: Arc::clone(name),
                    body: Arc::clone(body),
                    runtime: crate::engine::runtime::handle()?,
                    reply: reply.clone(),
                    pending: None,
                },
            };
            runners.push(runner);
        }
        Ok(Worker {
            runners,
            replies,
            call: 0,
            run: Arc::clone(run),
        })
    }

    /// Runs every task on `item` at once; their outputs in order, or the first failure.
    fn call(&mut self, item: I, clone_item: fn(&I) -> I) -> Result<Vec<Erased>, Fault> {
        self.call += 1;
        let count = self.runners.len();
        let mut item = Some(item);
        for (index, runner) in self.runners.iter_mut().enumerate() {
            let input = match index + 1 == count {
                true => item.take().expect("the last task takes the item"),
                false => clone_item(item.as_ref().expect("kept for the last task")),
            };
            runner.start(self.call, input);
        }
        let mut outputs: Vec<Option<Erased>> = (0..count).map(|_| None).collect();
        let mut missing = count;
        while missing > 0 {
            match self.replies.recv_timeout(LOOK) {
                Ok((call, index, result)) if call == self.call => match result {
                    Ok(output) => {
                        outputs[index] = Some(output);
                        missing -= 1;
                    }
                    Err(failure) => {
                        self.abort();
                        return Err(match failure.cause {
                            InnerCause::Stop => Fault::Stop,
                            _ => Fault::Failed(Box::new(failure)),
                        });
                    }
                },
                Ok(_) => {} // from a call abandoned earlier
                Err(RecvTimeoutError::Timeout) if self.run.is_cancelled() => {
                    self.abort();
                    return Err(Fault::Stop);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("the async runners hold a sender, and so does each helper")
                }
            }
        }
        for runner in &mut self.runners {
            runner.finished();
        }
        Ok(outputs.into_iter().flatten().collect())
    }

    /// Cancels the async calls in flight; the thread calls finish on their own, and the
    /// worker waits for them when it ends.
    fn abort(&mut self) {
        for runner in &mut self.runners {
            runner.abort();
        }
    }
}

impl<I> Drop for Worker<I> {
    fn drop(&mut self) {
        for runner in &mut self.runners {
            runner.abort();
        }
    }
}

impl<I: Send + 'static> Runner<I> {
    fn start(&mut self, call: u64, input: I) {
        match self {
            Runner::Thread(helper) => helper.start(call, input),
            #[cfg(feature = "async")]
            Runner::Async {
                index,
                name,
                body,
                runtime,
                reply,
                pending,
            } => {
                let index = *index;
                let (name, body, reply) = (Arc::clone(name), Arc::clone(body), reply.clone());
                let work = async move {
                    use futures_util::{FutureExt, StreamExt};
                    let outputs = AssertUnwindSafe(async move {
                        let stream = body(input);
                        stream.take(2).collect::<Vec<_>>().await
                    });
                    let result = match outputs.catch_unwind().await {
                        Ok(outputs) => one_output(&name, outputs),
                        Err(payload) => Err(InnerFailure::panicked(&name, payload)),
                    };
                    let _ = reply.send((call, index, result));
                };
                *pending = Some(runtime.spawn(work));
            }
        }
    }
}

impl<I> Runner<I> {
    fn finished(&mut self) {
        #[cfg(feature = "async")]
        if let Runner::Async { pending, .. } = self {
            *pending = None;
        }
    }

    fn abort(&mut self) {
        #[cfg(feature = "async")]
        if let Runner::Async { pending, .. } = self {
            if let Some(pending) = pending.take() {
                pending.abort();
            }
        }
    }
}

/// A fork worker's helper thread for one thread task.
struct Helper<I> {
    /// Dropping it ends the helper once its call returns.
    jobs: Option<mpsc::Sender<(u64, I)>>,
    thread: Option<JoinHandle<()>>,
}

impl<I: Send + 'static> Helper<I> {
    fn spawn(
        index: usize,
        name: &Arc<str>,
        each: EachFn<I, Erased>,
        reply: mpsc::Sender<Reply>,
        run: &Arc<RunState>,
    ) -> std::io::Result<Self> {
        let (jobs, job) = mpsc::channel::<(u64, I)>();
        let (name, run) = (Arc::clone(name), Arc::clone(run));
        let thread = std::thread::Builder::new()
            .name(format!("pyper:{name}"))
            .spawn(move || {
                while let Ok((call, input)) = job.recv() {
                    let mut collected = Collected {
                        outputs: Vec::new(),
                        run: &run,
                    };
                    let result = catch_unwind(AssertUnwindSafe(|| each(input, &mut collected)));
                    let result = match result {
                        Ok(Ok(())) => one_output(&name, collected.outputs.into_iter().map(Ok)),
                        Ok(Err(Fault::Stop)) => Err(InnerFailure::stop(&name)),
                        Ok(Err(Fault::Failed(error))) => Err(InnerFailure::failed(&name, error)),
                        Err(payload) => Err(InnerFailure::panicked(&name, payload)),
                    };
                    if reply.send((call, index, result)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Helper {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn start(&self, call: u64, input: I) {
        let jobs = self.jobs.as_ref().expect("only dropped with the helper");
        // The helper catches every panic of its calls, so it outlives its worker's calls.
        let _ = jobs.send((call, input));
    }
}

impl<I> Drop for Helper<I> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // Waits for a call still in progress, as a stopped run waits for any call.
            let _ = thread.join();
        }
    }
}

/// Where a helper's call puts its outputs.
struct Collected<'a> {
    outputs: Vec<Erased>,
    run: &'a RunState,
}

impl Emit<Erased> for Collected<'_> {
    fn emit(&mut self, item: Erased) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.outputs.push(item);
        Ok(())
    }
}

/// The one output of a call, or the failure of a call that made another number.
fn one_output(
    task: &Arc<str>,
    outputs: impl IntoIterator<Item = Result<Erased, BoxError>>,
) -> Result<Erased, InnerFailure> {
    let mut outputs = outputs.into_iter();
    match (outputs.next(), outputs.next()) {
        (Some(Ok(output)), None) => Ok(output),
        (Some(Err(error)), _) | (Some(Ok(_)), Some(Err(error))) => {
            Err(InnerFailure::failed(task, error))
        }
        (first, _) => {
            let made = if first.is_none() {
                "no output"
            } else {
                "more than one output"
            };
            let why = format!(
                "a task in a fork must make exactly one output per item, and this one made \
                 {made} (a branch task cannot be forked)"
            );
            Err(InnerFailure::failed(task, why.into()))
        }
    }
}
