//! A task: the user's function plus its options. Pure configuration: it runs nothing
//! until it is part of a running pipeline.

use std::fmt;

use crate::engine::batch::{emit_each, Emit, Fault, Stop};
use crate::engine::meter::StageKind;
use crate::engine::queue::{queue, Receiver, DEFAULT_THROTTLE};
use crate::engine::run::Launcher;
use crate::engine::sequencer::Sequencer;
use crate::engine::sync::{Arc, Instant};
use crate::engine::upstream::Upstream;
use crate::error::{BoxError, Error};
use crate::pipeline::{IntoPipeline, Stages};
#[cfg(feature = "async")]
use crate::stage::async_task::{self, AsyncFn};
use crate::stage::policy::{Backoff, FaultPolicy};
use crate::stage::thread::retry;
use crate::stage::thread::{self, EachFn, JoinFn, Stage, StageBody};
use crate::Output;

/// One stage of a pipeline: a function, how many workers run it, and how its input and
/// output flow. Built with [`task`] or [`try_task`], configured with the builder methods,
/// and composed with `|` into a [`Pipeline`](crate::Pipeline).
///
/// A task is a one-stage pipeline in its own right: it has the same `run`, `feed` and
/// `consume` methods.
///
/// ```
/// use pyper::task;
///
/// let square = task(|x: u64| x * x).workers(4).name("square");
/// let mut squares: Vec<u64> = square.feed(1..=5).map(Result::unwrap).collect();
/// squares.sort();
/// assert_eq!(squares, [1, 4, 9, 16, 25]);
/// ```
pub struct Task<I, O> {
    pub(crate) body: Body<I, O>,
    pub(crate) options: Options,
    /// `I::clone`, set by [`Task::retries`]: a retry needs the item again.
    pub(crate) clone_input: Option<fn(&I) -> I>,
}

/// Everything about a task but its function.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    name: Option<Arc<str>>,
    workers: usize,
    throttle: usize,
    ordered: bool,
    daemon: bool,
    pub(crate) faults: FaultPolicy,
}

pub(crate) enum Body<I, O> {
    Each(EachFn<I, O>),
    Join(JoinFn<I, O>),
    #[cfg(feature = "async")]
    AsyncEach(AsyncFn<I, O>),
    #[cfg(feature = "async")]
    AsyncJoin(AsyncFn<Upstream<I>, O>),
    #[cfg(feature = "process")]
    Process(crate::stage::process::ProcessFn<I, O>),
    Invalid(&'static str),
}

/// Builds a task from a function of one item, returning one output.
///
/// `f` may be a plain function, a closure or a method path; it must be `Send + Sync +
/// 'static` because several worker threads call it. Extra arguments (Pyper's `bind`) are
/// captured by the closure; see the crate docs for shared resources.
///
/// ```
/// use pyper::task;
///
/// fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// let out: Vec<u32> = (task(double) | task(u32::count_ones))
///     .run(7)
///     .map(Result::unwrap)
///     .collect();
/// assert_eq!(out, [3]); // 14 = 0b1110
/// ```
pub fn task<I, O, F>(f: F) -> Task<I, O>
where
    F: Fn(I) -> O + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let name = readable_name::<F>();
    let body: EachFn<I, O> =
        Arc::new(move |item, out: &mut dyn Emit<O>| out.emit(f(item)).map_err(Fault::from));
    Task::new(Body::Each(body), name)
}

/// Builds a task from a fallible function. An `Err` stops the whole run, and the caller
/// receives it as the [`Error`]'s [`source`](std::error::Error::source).
///
/// `E` is anything that converts into a boxed error: any `std::error::Error + Send + Sync +
/// 'static`, a `String`, or an `anyhow::Error`.
///
/// ```
/// use pyper::try_task;
///
/// let parse = try_task(|s: String| s.parse::<i32>());
/// let out: Result<Vec<i32>, _> = parse.feed(["1", "2", "x"].map(String::from)).collect();
/// let err = out.unwrap_err();
/// assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
/// ```
pub fn try_task<I, O, E, F>(f: F) -> Task<I, O>
where
    F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
    E: Into<BoxError>,
    I: Send + 'static,
    O: Send + 'static,
{
    let name = readable_name::<F>();
    let body: EachFn<I, O> = Arc::new(move |item, out: &mut dyn Emit<O>| match f(item) {
        Ok(value) => out.emit(value).map_err(Fault::from),
        Err(error) => Err(Fault::Failed(error.into())),
    });
    Task::new(Body::Each(body), name)
}

impl<I, O> Task<I, O> {
    /// Applies `adapter` to each output of an async body; a sync body gets `sync_error`.
    #[cfg(feature = "async")]
    pub(crate) fn adapt_async<P>(
        self,
        adapter: async_task::StreamAdapter<O, P>,
        sync_error: &'static str,
    ) -> Task<I, P>
    where
        I: Send + 'static,
        O: Send + 'static,
        P: Send + 'static,
    {
        let body = match self.body {
            Body::AsyncEach(each) => Body::AsyncEach(async_task::adapt(each, adapter)),
            Body::AsyncJoin(join) => Body::AsyncJoin(async_task::adapt(join, adapter)),
            Body::Each(_) | Body::Join(_) => Body::Invalid(sync_error),
            #[cfg(feature = "process")]
            Body::Process(_) => Body::Invalid(sync_error),
            Body::Invalid(why) => Body::Invalid(why),
        };
        Task::from_parts(body, self.options, self.clone_input)
    }

    /// A task of `body` with `options`; `clone_input` is kept only where the input type
    /// stays the same (a join takes a new one, and is never retried).
    pub(crate) fn from_parts(
        body: Body<I, O>,
        options: Options,
        clone_input: Option<fn(&I) -> I>,
    ) -> Self {
        Task {
            body,
            options,
            clone_input,
        }
    }

    pub(crate) fn new(body: Body<I, O>, name: Option<Arc<str>>) -> Self {
        Task {
            body,
            options: Options {
                name,
                workers: 1,
                throttle: DEFAULT_THROTTLE,
                ordered: false,
                daemon: false,
                faults: FaultPolicy::default(),
            },
            clone_input: None,
        }
    }

    /// Names the stage. The name appears in errors and thread names.
    ///
    /// The default is the function's name for a plain function (`parse` for
    /// `task(parse)`), and `stage N`, its 1-based position in the pipeline, for a closure.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = Some(name.into().into());
        self
    }

    /// Runs the stage on `n` worker threads (default 1): exactly `n` threads, started with
    /// the run and gone when it ends. `0` is a configuration error.
    ///
    /// More workers help work that waits (IO) or that has cores to spare (CPU); see the
    /// README's "which mode for which work". With more than one worker, outputs leave in
    /// completion order unless the task is [`ordered`](Task::ordered).
    ///
    /// A worker takes the items that are ready in batches that grow while its calls are
    /// quick (up to 1,024 items, or about 50 µs of work) and stay at one item while they are
    /// slow, and hands the batch's outputs on together. So a task must not wait until its
    /// own earlier outputs have been consumed downstream: a quick call that suddenly does
    /// could wait on an output still in its batch. Iterators (the input of `feed`, the
    /// output of a `branch` task) are different: their elements are handed on before any
    /// call that may block.
    pub fn workers(mut self, n: usize) -> Self {
        self.options.workers = n;
        self
    }

    /// Bounds the task's output queue to `n` items (default [`DEFAULT_THROTTLE`]); `0`
    /// means unbounded, as in Pyper.
    ///
    /// When the queue is full the task's workers wait, so a fast stage cannot run ahead of
    /// a slow one: that is backpressure, and it keeps memory flat. The bound counts items,
    /// even though items travel in batches. Each worker may also hold up to one batch it is
    /// handing over.
    pub fn throttle(mut self, n: usize) -> Self {
        self.options.throttle = n;
        self
    }

    /// Keeps the outputs in the order of the inputs, even with several workers.
    ///
    /// The worker holding the oldest unfinished input streams its outputs on as it makes
    /// them (so an endless `branch` fan-out flows); the others collect theirs, up to a
    /// batch's worth, and wait for their turn. An ordered stage so keeps the bounds of an
    /// unordered one: its throttle, plus one batch per worker. With one worker a stage is always
    /// in order, so this matters only with `workers(n > 1)`. A pipeline keeps its input
    /// order end to end when every multi-worker stage in it is ordered.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let slow_first = task(|x: u64| {
    ///     std::thread::sleep(std::time::Duration::from_millis(10 - x));
    ///     x
    /// });
    /// let out: Vec<u64> = slow_first.workers(4).ordered().feed(0..10).map(Result::unwrap).collect();
    /// assert_eq!(out, (0..10).collect::<Vec<_>>());
    /// ```
    pub fn ordered(mut self) -> Self {
        self.options.ordered = true;
        self
    }

    /// Does not wait for this stage's in-flight calls when the run stops early.
    ///
    /// On an error, a cancel or a drop of the output, the run normally waits until every
    /// worker has finished the call it is in, so cleanup code runs. A daemon stage's
    /// workers are left to finish on their own instead, so a stuck call cannot delay the
    /// error. As the seeds put it: make pure functions daemon, never a task that writes to
    /// a file, a database or the network. A run that completes normally waits for every
    /// worker, daemon or not.
    pub fn daemon(mut self) -> Self {
        self.options.daemon = true;
        self
    }

    /// Limits each attempt at an item to `limit`. An attempt that overruns fails with
    /// [`TimedOut`](crate::TimedOut): the run's error names the stage and the item, and
    /// its [`source`](std::error::Error::source) is the `TimedOut`; with
    /// [`retries`](Task::retries), the overrun is retried like any failure.
    ///
    /// What happens to the overrunning call depends on the kind of stage:
    ///
    /// * A thread task (`task`, `try_task`) makes each call on a helper thread of the
    ///   worker's, and waits for it `limit` at most. On an overrun the worker stops waiting
    ///   and goes on; **the call itself keeps running** until it returns, because a thread
    ///   cannot be stopped from outside, and its result is then dropped. The next item gets
    ///   a fresh helper. A helper is reused while calls finish in time, and ends with its
    ///   worker. The outputs of a timed call are handed on once the call has returned, so a
    ///   [`branch`](Task::branch) iterator is consumed whole within the limit (an endless
    ///   one times out, and is refused its next element once abandoned). Each timed call
    ///   costs a hand-over between two threads, some microseconds: negligible unless the
    ///   calls themselves are that cheap.
    /// * An async task drops the attempt's future (or its
    ///   [`branch_stream`](Task::branch_stream) stream) when the limit passes, which cancels
    ///   it at the `.await` it is parked on. Outputs are handed on as they come, and the
    ///   limit covers the whole attempt, from its first poll to its last output, time spent
    ///   waiting for downstream to take outputs included.
    /// * A process task kills the worker process and starts a new one.
    ///
    /// When the run stops early (an error elsewhere, a cancel, a drop of the output), a
    /// worker waits for its timed call as for any call: `limit` at most.
    ///
    /// A zero `limit` is a configuration error, and so is a timeout on a
    /// [`join`](Task::join) task, which receives the whole stream rather than one item.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pyper::{task, TimedOut};
    ///
    /// let sleepy = task(|secs: u64| {
    ///     std::thread::sleep(Duration::from_secs(secs));
    ///     secs
    /// })
    /// .name("sleepy")
    /// .timeout(Duration::from_secs(1));
    ///
    /// let mut outputs = sleepy.feed([0, 3600, 0]);
    /// let error = outputs.find_map(Result::err).unwrap();
    /// assert_eq!((error.stage(), error.item()), (Some("sleepy"), Some(1)));
    /// assert_eq!(error.downcast_ref::<TimedOut>().unwrap().limit(), Duration::from_secs(1));
    /// assert!(outputs.next().is_none()); // the run stopped; the hour-long call goes on
    /// ```
    pub fn timeout(mut self, limit: std::time::Duration) -> Self {
        self.options.faults.timeout = Some(limit);
        self
    }

    /// Waits between the attempts at an item as `backoff` says (default:
    /// [`Backoff::default`], 10 ms doubling up to 1 s). Only matters with
    /// [`retries`](Task::retries).
    ///
    /// The wait holds the worker (a thread stage) or one of its `workers(n)` slots (an
    /// async stage), and ends at once when the run stops.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pyper::{try_task, Backoff};
    ///
    /// let flaky = try_task(|x: u32| if x > 0 { Ok(x) } else { Err("zero") })
    ///     .retries(3)
    ///     .backoff(Backoff::exponential(Duration::from_millis(1), Duration::from_millis(4)));
    /// let error = flaky.run(0).next().unwrap().unwrap_err(); // after 1 + 2 + 4 ms of waits
    /// assert_eq!(error.to_string(), "stage `stage 1` failed on item 0");
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.options.faults.backoff = backoff;
        self
    }

    /// Runs the task once with `input` and returns its outputs as they are produced.
    /// See [`Pipeline::run`](crate::Pipeline::run).
    pub fn run(&self, input: I) -> Output<O>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        self.clone().into_pipeline().run(input)
    }

    /// Runs the task on every item of `inputs`. See [`Pipeline::feed`](crate::Pipeline::feed).
    pub fn feed<It>(&self, inputs: It) -> Output<O>
    where
        It: IntoIterator<Item = I>,
        It::IntoIter: Send + 'static,
        I: Send + 'static,
        O: Send + 'static,
    {
        self.clone().into_pipeline().feed(inputs)
    }

    fn adapt_outputs<P>(self, adapters: Adapters<O, P>) -> Task<I, P>
    where
        I: Send + 'static,
        O: Send + 'static,
        P: Send + 'static,
    {
        let body = match self.body {
            Body::Each(each) => Body::Each(adapt(each, adapters.each)),
            Body::Join(join) => Body::Join(adapt(join, adapters.each)),
            #[cfg(feature = "async")]
            Body::AsyncEach(each) => Body::AsyncEach(async_task::adapt(each, adapters.stream)),
            #[cfg(feature = "async")]
            Body::AsyncJoin(join) => Body::AsyncJoin(async_task::adapt(join, adapters.stream)),
            #[cfg(feature = "process")]
            Body::Process(process) => {
                let decode = adapt(std::sync::Arc::clone(&process.decode), adapters.each);
                Body::Process(process.with_decode(decode))
            }
            Body::Invalid(why) => Body::Invalid(why),
        };
        Task::from_parts(body, self.options, self.clone_input)
    }
}

impl<I, O> Task<I, O>
where
    I: Clone,
{
    /// Re-runs an item whose attempt failed (an `Err`, a panic, a [`timeout`](Task::timeout)
    /// overrun, a dead worker process) up to `n` more times, waiting as the
    /// [`backoff`](Task::backoff) says between attempts. Each attempt but the last gets a
    /// clone of the item, hence `I: Clone`.
    ///
    /// * When every attempt fails, the run's error names the stage and the item, and its
    ///   [`source`](std::error::Error::source) is a [`RetriesExhausted`](crate::RetriesExhausted)
    ///   holding each attempt's cause, in order: your error, a
    ///   [`Panicked`](crate::Panicked) for a panic, a [`TimedOut`](crate::TimedOut) for an
    ///   overrun.
    /// * An attempt that already handed on outputs (a `branch` task that failed mid-way) is
    ///   not retried, because its outputs would be duplicated. The run fails with that
    ///   attempt's own cause, exactly as without retries: your error, the panic, or
    ///   `TimedOut` (the causes of any earlier attempts at the item are dropped). A thread
    ///   task with a `timeout` hands on a call's outputs only once it has returned, so any
    ///   failed attempt of it can be retried; an async task hands them on as they come.
    /// * Once the run stops (an error elsewhere, a cancel, a drop of the output), nothing
    ///   is retried, and a backoff wait ends at once.
    ///
    /// So every item's outputs are handed on exactly once, from the attempt that
    /// succeeded, unless the item is the one the error names. An
    /// [`ordered`](Task::ordered) stage stays in order: later items wait for a retried one.
    /// Retries of a [`join`](Task::join) task, which receives the whole stream rather than
    /// one item, are a configuration error.
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use std::sync::Mutex;
    /// use pyper::{try_task, Backoff, RetriesExhausted};
    ///
    /// // Every id fails its first attempt.
    /// let seen = Mutex::new(HashSet::new());
    /// let flaky = try_task(move |id: u32| match seen.lock().unwrap().insert(id) {
    ///     true => Err(format!("{id}: connection reset")),
    ///     false => Ok(id * 10),
    /// })
    /// .workers(4)
    /// .retries(2)
    /// .backoff(Backoff::none());
    /// let mut out: Vec<u32> = flaky.feed(0..5).map(Result::unwrap).collect();
    /// out.sort();
    /// assert_eq!(out, [0, 10, 20, 30, 40]);
    ///
    /// let gone = try_task(|id: u32| Err::<u32, _>(format!("{id} is gone"))).retries(2);
    /// let error = gone.run(7).next().unwrap().unwrap_err();
    /// let exhausted = error.downcast_ref::<RetriesExhausted>().unwrap();
    /// assert_eq!(exhausted.attempts().len(), 3);
    /// assert_eq!(exhausted.to_string(), "all 3 attempts failed: #1 7 is gone; #2 7 is gone; #3 7 is gone");
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.options.faults.retries = n;
        self.clone_input = Some(I::clone);
        self
    }
}

impl<I, O> Task<I, O>
where
    I: Send + 'static,
    O: IntoIterator + Send + 'static,
    O::IntoIter: Send + 'static,
    O::Item: Send + 'static,
{
    /// Hands on every element of each output instead of the output itself (Pyper's
    /// `branch=True`).
    ///
    /// The output must be iterable: a `Vec`, an `Option` (which makes a filter), or a lazy
    /// iterator. Elements flow on as they are produced, so an endless iterator works behind
    /// a bounded queue, and stops when the run does. A non-iterable output is a compile
    /// error.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let words = task(|line: &'static str| line.split_whitespace()).branch();
    /// let evens = task(|n: u32| (n % 2 == 0).then_some(n)).branch(); // a filter
    ///
    /// let out: Vec<&str> = words.run("to be or not").map(Result::unwrap).collect();
    /// assert_eq!(out, ["to", "be", "or", "not"]);
    /// let out: Vec<u32> = evens.feed(1..=6).map(Result::unwrap).collect();
    /// assert_eq!(out, [2, 4, 6]);
    /// ```
    ///
    /// ```compile_fail
    /// // A u32 is not iterable.
    /// let bad = pyper::task(|x: u32| x + 1).branch();
    /// ```
    pub fn branch(self) -> Task<I, O::Item> {
        self.adapt_outputs(Adapters {
            each: |output, out| {
                emit_each(output, out, |element, out| {
                    out.emit(element).map_err(Fault::from)
                })
            },
            #[cfg(feature = "async")]
            stream: async_task::branch_iter,
        })
    }
}

impl<I, O, T, E> Task<I, O>
where
    I: Send + 'static,
    O: IntoIterator<Item = Result<T, E>> + Send + 'static,
    O::IntoIter: Send + 'static,
    T: Send + 'static,
    E: Into<BoxError> + 'static,
{
    /// Like [`branch`](Task::branch), for outputs whose elements are `Result`s: the first
    /// `Err` element fails the run, as a fallible task would.
    ///
    /// ```
    /// use std::io::BufRead;
    /// use pyper::task;
    ///
    /// let lines = task(|text: &'static [u8]| text.lines()).try_branch();
    /// let out: Vec<String> = lines.run(b"a\nb\n").map(Result::unwrap).collect();
    /// assert_eq!(out, ["a", "b"]);
    /// ```
    pub fn try_branch(self) -> Task<I, T> {
        self.adapt_outputs(Adapters {
            each: |output, out| {
                emit_each(output, out, |element, out| {
                    let element = element.map_err(|error| Fault::Failed(error.into()))?;
                    out.emit(element).map_err(Fault::from)
                })
            },
            #[cfg(feature = "async")]
            stream: async_task::try_branch_iter,
        })
    }
}

impl<I, O> Task<Upstream<I>, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Makes the task receive the whole upstream stream at once, as an [`Upstream`]
    /// iterator, instead of one item per call (Pyper's `join=True`).
    ///
    /// The function is called once per worker. With one worker (the default) it sees every
    /// item; with `workers(n)`, each call gets an arbitrary share of the stream. Combine
    /// with [`branch`](Task::branch) to emit several outputs, for instance windows.
    ///
    /// ```
    /// use pyper::{task, Upstream};
    ///
    /// let count = task(|xs: Upstream<char>| xs.count()).join();
    /// let chars = task(|s: &'static str| s.chars()).branch();
    /// let out: Vec<usize> = (chars | count).run("héllo").map(Result::unwrap).collect();
    /// assert_eq!(out, [5]);
    /// ```
    ///
    /// A join task must take an `Upstream`; forgetting `.join()` does not compose:
    ///
    /// ```compile_fail
    /// use pyper::{task, Upstream};
    /// let not_joined = task(|xs: Upstream<u32>| xs.count());
    /// let pipeline = task(|x: u32| x) | not_joined;
    /// ```
    pub fn join(self) -> Task<I, O> {
        let body = match self.body {
            Body::Each(each) => Body::Join(each),
            // Reading a blocking iterator would stall the runtime.
            #[cfg(feature = "async")]
            Body::AsyncEach(_) => {
                Body::Invalid("an async join task reads an `UpstreamStream`, not an `Upstream`")
            }
            #[cfg(feature = "async")]
            Body::AsyncJoin(_) => Body::Invalid("join() was applied twice"),
            Body::Join(_) => Body::Invalid("join() was applied twice"),
            #[cfg(feature = "process")]
            Body::Process(_) => Body::Invalid("a process task cannot join"),
            Body::Invalid(why) => Body::Invalid(why),
        };
        Task::from_parts(body, self.options, None)
    }
}

/// Turns each output of a body into zero or more outputs of another type.
type Adapter<O, P> = fn(O, &mut dyn Emit<P>) -> Result<(), Fault>;

/// The same output adapter, for each kind of body.
struct Adapters<O, P> {
    each: Adapter<O, P>,
    #[cfg(feature = "async")]
    stream: async_task::StreamAdapter<O, P>,
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

impl<I, O> Clone for Task<I, O> {
    fn clone(&self) -> Self {
        Task {
            body: match &self.body {
                Body::Each(each) => Body::Each(Arc::clone(each)),
                Body::Join(join) => Body::Join(Arc::clone(join)),
                #[cfg(feature = "async")]
                Body::AsyncEach(each) => Body::AsyncEach(Arc::clone(each)),
                #[cfg(feature = "async")]
                Body::AsyncJoin(join) => Body::AsyncJoin(Arc::clone(join)),
                #[cfg(feature = "process")]
                Body::Process(process) => Body::Process(process.clone()),
                Body::Invalid(why) => Body::Invalid(why),
            },
            options: self.options.clone(),
            clone_input: self.clone_input,
        }
    }
}

impl<I, O> fmt::Debug for Task<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("options", &self.options)
            .field("kind", &self.body.kind())
            .finish()
    }
}

impl<I, O> Stages<I, O> for Task<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    fn check(&self, position: &mut usize) -> Result<(), Error> {
        let name = self.stage_name(*position);
        *position += 1;
        if let Body::Invalid(why) = self.body {
            return Err(Error::config(Some(&name), why));
        }
        if self.options.faults.timeout == Some(std::time::Duration::ZERO) {
            return Err(Error::config(
                Some(&name),
                "timeout must be longer than zero",
            ));
        }
        #[cfg(feature = "process")]
        if let Body::Process(_) = self.body {
            crate::stage::process::may_spawn().map_err(|why| Error::config(Some(&name), why))?;
        }
        if self.options.faults.is_active() {
            if let Err(why) = self.body.fault_support() {
                return Err(Error::config(Some(&name), why));
            }
        }
        if self.options.workers == 0 {
            return Err(Error::config(Some(&name), "workers must be at least 1"));
        }
        if name.contains('\0') {
            return Err(Error::config(
                Some(&name),
                "a stage name cannot contain a NUL byte",
            ));
        }
        Ok(())
    }

    fn launch(&self, input: Receiver<I>, launcher: &mut Launcher) -> Receiver<O> {
        let name = self.stage_name(launcher.next_position());
        let (output, next_input) = queue(self.options.throttle);
        launcher.state.register(Box::new(output.closer()));
        let ordered = self.options.ordered && self.options.workers > 1;
        let sequencer = (ordered && !self.body.is_async()).then(|| {
            let sequencer = Arc::new(Sequencer::new());
            launcher.state.register(Box::new(Arc::clone(&sequencer)));
            sequencer
        });
        #[cfg(feature = "process")]
        if let Body::Process(body) = &self.body {
            let children = Arc::new(crate::stage::process::Children::default());
            launcher.state.register(Box::new(Arc::clone(&children)));
            let stage = Arc::new(crate::stage::process::ProcessStage {
                name: Arc::clone(&name),
                run: Arc::clone(&launcher.state),
                body: body.clone(),
                faults: self.options.faults,
                children,
                in_order: self.options.workers == 1 && self.options.faults.retries > 0,
                sequencer,
                meter: launcher.state.meter.stage(
                    &name,
                    StageKind::Process,
                    self.options.workers,
                    Some(input.depth_gauge()),
                ),
            });
            for _ in 0..self.options.workers {
                let (stage, input, output) = (Arc::clone(&stage), input.clone(), output.clone());
                launcher.spawn(&name, self.options.daemon, move || {
                    crate::stage::process::work(stage, input, output)
                });
            }
            return next_input;
        }
        let faults = self.options.faults;
        // A thread stage applies its fault policy through a guard, with a body per worker.
        let guard = match &self.body {
            Body::Each(each) if faults.is_active() => Some(retry::Guard::new(
                each,
                faults,
                self.clone_input,
                &name,
                &launcher.state,
            )),
            _ => None,
        };
        let body = match &self.body {
            Body::Each(each) => match sequencer {
                Some(sequencer) => StageBody::Ordered(Arc::clone(each), sequencer),
                None => StageBody::Each(Arc::clone(each)),
            },
            Body::Join(join) => StageBody::Join(Arc::clone(join)),
            #[cfg(feature = "async")]
            Body::AsyncEach(each) => StageBody::AsyncEach(
                crate::stage::async_task::retry::guard(each, faults, self.clone_input),
                ordered,
            ),
            #[cfg(feature = "async")]
            Body::AsyncJoin(join) => StageBody::AsyncJoin(Arc::clone(join)),
            #[cfg(feature = "process")]
            Body::Process(_) => unreachable!("process tasks were launched above"),
            Body::Invalid(_) => unreachable!("`check` rejects invalid tasks before launch"),
        };
        let kind = match self.body.is_async() {
            true => StageKind::Async,
            false => StageKind::Threads,
        };
        let meter = launcher.state.meter.stage(
            &name,
            kind,
            self.options.workers,
            Some(input.depth_gauge()),
        );
        let stage = Arc::new(Stage {
            name: Arc::clone(&name),
            run: Arc::clone(&launcher.state),
            body,
            meter,
        });
        #[cfg(feature = "async")]
        if let StageBody::AsyncEach(_, ordered) = stage.body {
            for slots in
                crate::stage::async_task::driver::driver_slots(self.options.workers, ordered)
            {
                let (stage, input, output) = (Arc::clone(&stage), input.clone(), output.clone());
                launcher.spawn_task(
                    &name,
                    crate::stage::async_task::driver::drive(stage, input, output, slots),
                );
            }
            return next_input;
        }
        for _ in 0..self.options.workers {
            let stage = match &guard {
                Some(guard) => Arc::new(guard.worker_stage(&stage)),
                None => Arc::clone(&stage),
            };
            let (input, output) = (input.clone(), output.clone());
            #[cfg(feature = "async")]
            if let StageBody::AsyncJoin(_) = stage.body {
                launcher.spawn_task(
                    &name,
                    crate::stage::async_task::driver::join(stage, input, output),
                );
                continue;
            }
            launcher.spawn(&name, self.options.daemon, move || {
                thread::work(stage, input, output)
            });
        }
        next_input
    }
}

/// Why a join task cannot have a timeout or retries.
const JOIN_FAULTS: &str =
    "timeout and retries apply per item; a join task receives the whole stream";

impl<I, O> Body<I, O> {
    fn is_async(&self) -> bool {
        match self {
            #[cfg(feature = "async")]
            Body::AsyncEach(_) | Body::AsyncJoin(_) => true,
            _ => false,
        }
    }

    /// Whether a [`FaultPolicy`] can apply to this kind of body. Each kind that can
    /// applies it its own way, in `launch`.
    fn fault_support(&self) -> Result<(), &'static str> {
        match self {
            Body::Each(_) => Ok(()),
            #[cfg(feature = "async")]
            Body::AsyncEach(_) => Ok(()),
            Body::Join(_) => Err(JOIN_FAULTS),
            #[cfg(feature = "async")]
            Body::AsyncJoin(_) => Err(JOIN_FAULTS),
            #[cfg(feature = "process")]
            Body::Process(_) => Ok(()),
            Body::Invalid(why) => Err(why),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "process")]
            Body::Process(_) => "process",
            Body::Each(_) => "each",
            Body::Join(_) => "join",
            #[cfg(feature = "async")]
            Body::AsyncEach(_) => "async each",
            #[cfg(feature = "async")]
            Body::AsyncJoin(_) => "async join",
            Body::Invalid(_) => "invalid",
        }
    }
}

impl<I, O> Task<I, O> {
    fn stage_name(&self, position: usize) -> Arc<str> {
        match &self.options.name {
            Some(name) => Arc::clone(name),
            None => format!("stage {position}").into(),
        }
    }
}

/// The function's own name for a plain function or method, `None` for a closure.
pub(crate) fn readable_name<F>() -> Option<Arc<str>> {
    let full = std::any::type_name::<F>();
    if full.contains("{{closure}}") {
        return None;
    }
    // `app::parse<u32>` → `app::parse`; `core::str::<impl str>::len` keeps its path.
    let mut path = full;
    if path.ends_with('>') {
        let mut depth = 0;
        for (at, c) in path.char_indices().rev() {
            match c {
                '>' => depth += 1,
                '<' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                path = &path[..at];
                break;
            }
        }
    }
    let last = path.rsplit("::").next().unwrap_or(path);
    (!last.is_empty()).then(|| last.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: String) -> usize {
        s.len()
    }

    fn generic<T>(value: T) -> T {
        value
    }

    #[test]
    fn plain_functions_are_named_after_themselves_and_closures_by_position() {
        let named = task(parse);
        assert_eq!(named.stage_name(3).as_ref(), "parse");
        let closure = task(|s: String| s.len());
        assert_eq!(closure.stage_name(3).as_ref(), "stage 3");
        assert_eq!(task(str::len).stage_name(1).as_ref(), "len");
        assert_eq!(task(generic::<u8>).stage_name(1).as_ref(), "generic");
    }
}
