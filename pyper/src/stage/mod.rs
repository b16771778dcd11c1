//! The kinds of stage, and the one seam through which each plugs into the engine.
//!
//! A stage kind (threads, async tasks, processes, Python callables, remote workers) is a
//! module of its own that knows how to start its workers. Everything else about a stage is
//! shared and done once, for every kind, here and in the leaves the kinds import
//! (`launch.rs`, `func.rs`, `policy.rs`; `workers.rs` for threads and async tasks, `wire/`
//! for processes and remote workers), which import no kind and not this file:
//!
//! * [`Spec`] (`launch.rs`): everything about a stage but its function (workers, throttle, ordering,
//!   daemon, the fault policy), with the checks that do not depend on the kind;
//! * [`Body`]: the user's function in the form its kind runs it. It is the one dispatch
//!   over the kinds, in the manner of crossbeam-channel's flavors: each method below has
//!   one arm per kind and nothing else matches on it;
//! * [`Launch`] (`launch.rs`): what a kind is handed to start its workers: the stage's name, its input
//!   and output queues (the output already registered with the run, so a cancel closes
//!   it), its meter, and, for an ordered stage, its sequencer.
//!
//! Adding a kind means one module with a `launch` function and a variant in [`Body`] with
//! its arm in each of `Body`'s methods, all in this file (ARCHITECTURE.md, "Adding a
//! kind of stage", has the whole list).

use std::borrow::Cow;

use crate::engine::batch::{Emit, Fault, Stop};
use crate::engine::queue::{queue, Receiver};
use crate::engine::run::Launcher;
use crate::engine::sync::{Arc, Instant};
use crate::engine::upstream::Upstream;
use crate::error::BoxError;
use func::{BatchFn, EachFn, JoinFn, SetupFn};
pub(crate) use launch::{Launch, Spec};

#[cfg(feature = "async")]
pub(crate) mod async_task;
pub(crate) mod fork;
pub(crate) mod func;
#[cfg(feature = "process")]
pub(crate) mod init;
pub(crate) mod inner;
pub(crate) mod launch;
pub(crate) mod policy;
#[cfg(feature = "process")]
pub(crate) mod process;
#[cfg(feature = "python")]
pub(crate) mod python;
#[cfg(feature = "remote")]
pub(crate) mod remote;
pub(crate) mod thread;
#[cfg(feature = "process")]
pub(crate) mod wire;
pub(crate) mod workers;

/// A task's function, in the form its kind of stage runs it.
pub(crate) enum Body<I, O> {
    /// Threads, one call per item; and, for a plain function, the same body called once
    /// per batch, which a stage with one worker and no fault policy prefers.
    Each(EachFn<I, O>, Option<BatchFn<I, O>>),
    /// Threads, one call per worker with its share of the stream.
    Join(JoinFn<I, O>),
    /// Threads, each with a body it builds for itself when it starts.
    PerWorker(SetupFn<I, O>),
    /// Async tasks, one future (or stream) per item.
    #[cfg(feature = "async")]
    AsyncEach(func::AsyncFn<I, O>),
    /// Async tasks, one future per worker with its share of the stream.
    #[cfg(feature = "async")]
    AsyncJoin(func::AsyncFn<Upstream<I>, O>),
    /// Worker processes.
    #[cfg(feature = "process")]
    Process(process::ProcessFn<I, O>),
    /// Python callables, on threads that hold the GIL while input is ready.
    #[cfg(feature = "python")]
    Python(python::PythonBody<I, O>),
    /// Worker processes on any host, through NATS JetStream.
    #[cfg(feature = "remote")]
    Remote(remote::RemoteFn<I, O>),
    /// Several tasks called at once on each item, their outputs joined (`fork`).
    Fork(fork::ForkBody<I, O>),
    /// A task whose configuration is wrong; running it is a configuration error that
    /// says why.
    Invalid(&'static str),
}

/// Why a fork's output cannot be adapted or joined.
const FORK_SHAPE: &str =
    "a fork makes one output per item: it cannot branch, join, or be forked again";

/// Why a join task cannot have a timeout or retries.
const JOIN_FAULTS: &str =
    "timeout and retries apply per item; a join task receives the whole stream";

/// Why a task with per-worker state cannot have a timeout.
const PER_WORKER_TIMEOUT: &str =
    "a per-worker task cannot have a timeout: a call that overruns is abandoned, and would \
     keep the worker's state in use";

/// Why a join task cannot have its workers tuned.
const JOIN_AUTO: &str =
    "auto_workers() does not apply to a join task: each worker owns a share of the stream, \
     so workers cannot be parked and resumed; use workers(n)";

/// Why a process task cannot have its workers tuned.
#[cfg(feature = "process")]
const PROCESS_AUTO: &str =
    "auto_workers() does not apply to a process task yet: use workers(n), with n at most \
     the number of cores for CPU-bound work";
/// Why a Python task has no engine timeout or retries (its own `retries` is in `PyShape`).
#[cfg(feature = "python")]
const PYTHON_FAULTS: &str =
    "timeouts and engine retries are not available on Python tasks: use PyShape::retries";

/// Why an async or per-worker Python task cannot have its workers tuned.
#[cfg(feature = "python")]
const PYTHON_AUTO: &str =
    "auto_workers() applies to a Python task called once per item on threads, not to an \
     async task (its workers are coroutines) nor to a task per worker (worker processes): \
     use workers(n)";

/// Why a Python task cannot be ordered.
#[cfg(feature = "python")]
const PYTHON_ORDER: &str =
    "ordered() applies to a Python task called once per item in this process (not to a \
     join, a task per worker or an async task)";

/// Why a Python task is not adapted by the engine.
#[cfg(feature = "python")]
const PYTHON_SHAPE: &str = "a Python task branches and joins through its own options";

/// Why a remote task cannot have its workers tuned.
#[cfg(feature = "remote")]
const REMOTE_AUTO: &str =
    "auto_workers() does not apply to a remote task: its workers are processes on other \
     hosts, started and stopped by you; workers(n) is how many items each runs at once";

/// Why a join task cannot be ordered.
const JOIN_ORDER: &str =
    "ordered() does not apply to a join task: each worker receives a share of the stream, \
     not items";

impl<I, O> Body<I, O> {
    /// A short name of the kind of body, for `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Body::Each(..) => "each",
            Body::Join(_) => "join",
            Body::PerWorker(_) => "per-worker each",
            #[cfg(feature = "async")]
            Body::AsyncEach(_) => "async each",
            #[cfg(feature = "async")]
            Body::AsyncJoin(_) => "async join",
            #[cfg(feature = "process")]
            Body::Process(_) => "process",
            #[cfg(feature = "python")]
            Body::Python(_) => "python",
            #[cfg(feature = "remote")]
            Body::Remote(_) => "remote",
            Body::Fork(_) => "fork",
            Body::Invalid(_) => "invalid",
        }
    }

    /// Rejects a configuration this kind of body cannot run, before any worker starts.
    pub(crate) fn check(&self, spec: &Spec, name: &str) -> Result<(), Cow<'static, str>> {
        spec.check(name)?;
        let is_join = match self {
            Body::Each(..) => false,
            Body::Join(_) => true,
            Body::PerWorker(_) if spec.faults.timeout.is_some() => {
                return Err(PER_WORKER_TIMEOUT.into())
            }
            Body::PerWorker(_) => false,
            #[cfg(feature = "async")]
            Body::AsyncEach(_) => false,
            #[cfg(feature = "async")]
            Body::AsyncJoin(_) => true,
            #[cfg(feature = "process")]
            Body::Process(_) if spec.auto => return Err(PROCESS_AUTO.into()),
            #[cfg(feature = "process")]
            Body::Process(_) => {
                process::may_spawn()?;
                false
            }
            #[cfg(feature = "python")]
            Body::Python(_) if spec.faults.is_active() => return Err(PYTHON_FAULTS.into()),
            #[cfg(feature = "python")]
            Body::Python(body) if spec.auto && !body.may_tune() => return Err(PYTHON_AUTO.into()),
            #[cfg(feature = "python")]
            Body::Python(body) if spec.ordered && !body.may_order() => {
                return Err(PYTHON_ORDER.into())
            }
            #[cfg(feature = "python")]
            Body::Python(body) => body.is_join(),
            #[cfg(feature = "remote")]
            #[cfg(feature = "remote")]
            Body::Remote(_) if spec.auto => return Err(REMOTE_AUTO.into()),
            #[cfg(feature = "remote")]
            Body::Remote(_) => false,
            Body::Fork(fork) => {
                fork.check(spec, name)?;
                false
            }
            Body::Invalid(why) => return Err((*why).into()),
        };
        if is_join && spec.auto {
            return Err(JOIN_AUTO.into());
        }
        if is_join && spec.faults.is_active() {
            return Err(JOIN_FAULTS.into());
        }
        if is_join && spec.ordered {
            return Err(JOIN_ORDER.into());
        }
        Ok(())
    }

    /// Turns each output into zero or more outputs of another type, the way each kind
    /// can: `branch`, `try_branch`.
    pub(crate) fn adapt<P>(self, adapters: Adapters<O, P>) -> Body<I, P>
    where
        I: Send + 'static,
        O: Send + 'static,
        P: Send + 'static,
    {
        match self {
            Body::Each(each, _) => Body::Each(adapt(each, adapters.each), None),
            Body::Join(join) => Body::Join(adapt(join, adapters.each)),
            Body::PerWorker(setup) => {
                let each = adapters.each;
                Body::PerWorker(Arc::new(move || Ok(adapt(setup()?, each))))
            }
            #[cfg(feature = "async")]
            Body::AsyncEach(each) => Body::AsyncEach(async_task::adapt(each, adapters.stream)),
            #[cfg(feature = "async")]
            Body::AsyncJoin(join) => Body::AsyncJoin(async_task::adapt(join, adapters.stream)),
            #[cfg(feature = "process")]
            Body::Process(process) => {
                let decode = adapt(Arc::clone(&process.decode), adapters.each);
                Body::Process(process.with_decode(decode))
            }
            #[cfg(feature = "python")]
            Body::Python(_) => Body::Invalid(PYTHON_SHAPE),
            #[cfg(feature = "remote")]
            Body::Remote(remote) => {
                let decode = adapt(Arc::clone(&remote.decode), adapters.each);
                Body::Remote(remote.with_decode(decode))
            }
            Body::Fork(_) => Body::Invalid(FORK_SHAPE),
            Body::Invalid(why) => Body::Invalid(why),
        }
    }

    /// Applies `adapter` to each output of an async body (`branch_stream`); any other
    /// kind becomes invalid, for `why`.
    #[cfg(feature = "async")]
    pub(crate) fn adapt_async<P>(
        self,
        adapter: async_task::StreamAdapter<O, P>,
        why: &'static str,
    ) -> Body<I, P>
    where
        I: Send + 'static,
        O: Send + 'static,
        P: Send + 'static,
    {
        match self {
            Body::AsyncEach(each) => Body::AsyncEach(async_task::adapt(each, adapter)),
            Body::AsyncJoin(join) => Body::AsyncJoin(async_task::adapt(join, adapter)),
            Body::Invalid(why) => Body::Invalid(why),
            _ => Body::Invalid(why),
        }
    }

    /// Starts the stage's workers.
    fn launch(&self, stage: Launch<'_, I, O>)
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        match self {
            Body::Each(each, batch) => thread::launch_each(each, batch.as_ref(), stage),
            Body::Join(join) => thread::launch_join(join, stage),
            Body::PerWorker(setup) => thread::launch_per_worker(setup, stage),
            #[cfg(feature = "async")]
            Body::AsyncEach(each) => async_task::launch_each(each, stage),
            #[cfg(feature = "async")]
            Body::AsyncJoin(join) => async_task::launch_join(join, stage),
            #[cfg(feature = "process")]
            Body::Process(body) => process::launch(body, stage),
            #[cfg(feature = "python")]
            Body::Python(body) => body.launch(stage),
            #[cfg(feature = "remote")]
            Body::Remote(body) => remote::launch(body, stage),
            Body::Fork(body) => fork::launch(body, stage),
            // `check` refuses it before any launch; should one happen, it fails the run
            // with the same reason rather than start anything.
            Body::Invalid(why) => {
                let error = crate::Error::config(Some(&stage.name), *why);
                stage.launcher.state.fail(error);
            }
        }
    }
}

impl<I, O> Body<Upstream<I>, O> {
    /// The body of `join()`: the function receives the stream rather than items.
    pub(crate) fn join(self) -> Body<I, O> {
        match self {
            Body::Each(each, _) => Body::Join(each),
            Body::Join(_) => Body::Invalid("join() was applied twice"),
            Body::PerWorker(_) => Body::Invalid("a per-worker task cannot join: use task()"),
            // Reading a blocking iterator would stall the runtime.
            #[cfg(feature = "async")]
            Body::AsyncEach(_) => {
                Body::Invalid("an async join task reads an `UpstreamStream`, not an `Upstream`")
            }
            #[cfg(feature = "async")]
            Body::AsyncJoin(_) => Body::Invalid("join() was applied twice"),
            #[cfg(feature = "process")]
            Body::Process(_) => Body::Invalid("a process task cannot join"),
            #[cfg(feature = "python")]
            Body::Python(_) => Body::Invalid(PYTHON_SHAPE),
            #[cfg(feature = "remote")]
            Body::Remote(_) => Body::Invalid("a remote task cannot join"),
            Body::Fork(_) => Body::Invalid(FORK_SHAPE),
            Body::Invalid(why) => Body::Invalid(why),
        }
    }
}

#[cfg(feature = "async")]
impl<I: Send + 'static, O: 'static> Body<crate::engine::async_upstream::UpstreamStream<I>, O> {
    /// The body of an async `join()`: the function receives the stream as a `Stream`.
    pub(crate) fn join_stream(self) -> Body<I, O> {
        match self {
            Body::AsyncEach(each) => {
                let join: func::AsyncFn<Upstream<I>, O> = Arc::new(move |upstream| {
                    each(crate::engine::async_upstream::UpstreamStream(upstream))
                });
                Body::AsyncJoin(join)
            }
            Body::Each(..) | Body::PerWorker(_) => {
                Body::Invalid("a sync join task reads an `Upstream`, not an `UpstreamStream`")
            }
            Body::Join(_) | Body::AsyncJoin(_) => Body::Invalid("join() was applied twice"),
            #[cfg(feature = "process")]
            Body::Process(_) => Body::Invalid("a process task cannot join"),
            #[cfg(feature = "python")]
            Body::Python(_) => Body::Invalid(PYTHON_SHAPE),
            #[cfg(feature = "remote")]
            Body::Remote(_) => Body::Invalid("a remote task cannot join"),
            Body::Fork(_) => Body::Invalid(FORK_SHAPE),
            Body::Invalid(why) => Body::Invalid(why),
        }
    }
}

impl<I, O> Clone for Body<I, O> {
    fn clone(&self) -> Self {
        match self {
            Body::Each(each, batch) => Body::Each(Arc::clone(each), batch.clone()),
            Body::Join(join) => Body::Join(Arc::clone(join)),
            Body::PerWorker(setup) => Body::PerWorker(Arc::clone(setup)),
            #[cfg(feature = "async")]
            Body::AsyncEach(each) => Body::AsyncEach(Arc::clone(each)),
            #[cfg(feature = "async")]
            Body::AsyncJoin(join) => Body::AsyncJoin(Arc::clone(join)),
            #[cfg(feature = "process")]
            Body::Process(process) => Body::Process(process.clone()),
            #[cfg(feature = "python")]
            Body::Python(body) => Body::Python(body.clone()),
            #[cfg(feature = "remote")]
            Body::Remote(remote) => Body::Remote(remote.clone()),
            Body::Fork(fork) => Body::Fork(fork.clone()),
            Body::Invalid(why) => Body::Invalid(why),
        }
    }
}

/// Starts one stage of a run: its output queue, then its workers, by its kind. Returns
/// the receiving end of its output queue, the next stage's input.
pub(crate) fn launch<I, O>(
    body: &Body<I, O>,
    spec: &Spec,
    clone_input: Option<fn(&I) -> I>,
    input: Receiver<I>,
    launcher: &mut Launcher,
) -> Receiver<O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let name = spec.stage_name(launcher.next_position());
    let (output, next_input) = queue(spec.throttle);
    launcher.state.register(Box::new(output.closer()));
    body.launch(Launch {
        name,
        spec,
        clone_input,
        input,
        output,
        launcher,
        tuner: None,
    });
    next_input
}

/// Turns each output of a thread body into zero or more outputs of another type.
pub(crate) type Adapter<O, P> = fn(O, &mut dyn Emit<P>) -> Result<(), Fault>;

/// The same output adapter, for each kind of body.
pub(crate) struct Adapters<O, P> {
    pub(crate) each: Adapter<O, P>,
    #[cfg(feature = "async")]
    pub(crate) stream: async_task::StreamAdapter<O, P>,
}

fn adapt<In, O, P>(body: EachFn<In, O>, adapter: Adapter<O, P>) -> EachFn<In, P>
where
    In: 'static,
    O: 'static,
    P: 'static,
{
    Arc::new(move |input, out: &mut dyn Emit<P>| {
        let mut adapted = Adapted {
            out,
            adapter,
            failure: None,
        };
        let result = body(input, &mut adapted);
        match adapted.failure {
            Some(error) => Err(Fault::Failed(error)),
            None => result,
        }
    })
}

struct Adapted<'a, O, P> {
    out: &'a mut dyn Emit<P>,
    adapter: Adapter<O, P>,
    /// An adapter's own failure, carried past the body, whose `emit` can only say "stop".
    failure: Option<BoxError>,
}

impl<O, P> Emit<O> for Adapted<'_, O, P> {
    fn before_next(&mut self, may_block: bool) -> Result<Option<Instant>, Stop> {
        self.out.before_next(may_block)
    }

    fn after_next(&mut self, asked: Option<Instant>) {
        self.out.after_next(asked);
    }

    fn emit(&mut self, item: O) -> Result<(), Stop> {
        match (self.adapter)(item, self.out) {
            Ok(()) => Ok(()),
            Err(Fault::Stop) => Err(Stop),
            Err(Fault::Failed(error)) => {
                self.failure = Some(error);
                Err(Stop)
            }
        }
    }
}
