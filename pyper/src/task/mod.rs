//! A task: the user's function plus its options. Pure configuration: it runs nothing
//! until it is part of a running pipeline.

use std::fmt;

use crate::engine::batch::{emit_each, Emit, Fault};
use crate::engine::map::MapBatch;
use crate::engine::queue::Receiver;
use crate::engine::run::Launcher;
use crate::engine::sync::Arc;
use crate::engine::upstream::Upstream;
use crate::error::{BoxError, Error};
use crate::pipeline::{IntoPipeline, Stages};
use crate::stage::func::{BatchFn, EachFn};
use crate::stage::policy::Backoff;
pub(crate) use crate::stage::Body;

#[cfg(feature = "async")]
mod async_task;
mod fork;
mod per_worker;
#[cfg(feature = "process")]
pub(crate) mod process;
#[cfg(feature = "python")]
mod python;
#[cfg(feature = "remote")]
pub(crate) mod remote;

use crate::stage::{self, Adapters, Spec};
use crate::Output;
#[cfg(feature = "async")]
pub use async_task::{async_task, try_async_task};
pub use fork::{fork, ForkParts, ForkTasks};
pub use per_worker::{task_per_worker, try_task_per_worker};
#[cfg(feature = "python")]
pub use python::python_task;

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
    pub(crate) options: Spec,
    /// `I::clone`, set by [`Task::retries`]: a retry needs the item again.
    pub(crate) clone_input: Option<fn(&I) -> I>,
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
    let f = Arc::new(f);
    let each = Arc::clone(&f);
    let body: EachFn<I, O> =
        Arc::new(move |item, out: &mut dyn Emit<O>| out.emit(each(item)).map_err(Fault::from));
    let batch: BatchFn<I, O> = Arc::new(move |batch: &mut MapBatch<'_, '_, I, O>| batch.map(&*f));
    Task::new(Body::Each(body, Some(batch)), name)
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
    let f = Arc::new(f);
    let each = Arc::clone(&f);
    let body: EachFn<I, O> = Arc::new(move |item, out: &mut dyn Emit<O>| match each(item) {
        Ok(value) => out.emit(value).map_err(Fault::from),
        Err(error) => Err(Fault::Failed(error.into())),
    });
    let batch: BatchFn<I, O> =
        Arc::new(move |batch: &mut MapBatch<'_, '_, I, O>| batch.try_map(&*f));
    Task::new(Body::Each(body, Some(batch)), name)
}

impl<I, O> Task<I, O> {
    /// Applies `adapter` to each output of an async body; any other body becomes
    /// invalid, for `why`.
    #[cfg(feature = "async")]
    pub(crate) fn adapt_async<P>(
        self,
        adapter: crate::stage::async_task::StreamAdapter<O, P>,
        why: &'static str,
    ) -> Task<I, P>
    where
        I: Send + 'static,
        O: Send + 'static,
        P: Send + 'static,
    {
        let body = self.body.adapt_async(adapter, why);
        Task::from_parts(body, self.options, self.clone_input)
    }

    /// Hands the output of each run to `consumer`: Pyper's `task > consumer`. See
    /// [`Pipeline::consume`](crate::Pipeline::consume).
    ///
    /// ```
    /// use pyper::{task, Output};
    ///
    /// let total = task(|n: u64| 0..n).branch().consume(|out: Output<u64>| out.sum::<Result<u64, _>>());
    /// assert_eq!(total.run(4).unwrap(), 6);
    /// ```
    pub fn consume<R, F>(self, consumer: F) -> crate::Consumer<I, O, F>
    where
        F: Fn(Output<O>) -> R,
        I: Send + 'static,
        O: Send + 'static,
    {
        self.into_pipeline().consume(consumer)
    }

    /// Hands the output stream of each run to an async `consumer`. See
    /// [`Pipeline::consume_async`](crate::Pipeline::consume_async). (Requires the `async`
    /// feature.)
    #[cfg(feature = "async")]
    pub fn consume_async<R, F, Fut>(self, consumer: F) -> crate::AsyncConsumer<I, O, F>
    where
        F: Fn(crate::OutputStream<O>) -> Fut,
        Fut: std::future::Future<Output = R>,
        I: Send + 'static,
        O: Send + 'static,
    {
        self.into_pipeline().consume_async(consumer)
    }

    fn adapt_outputs<P>(self, adapters: Adapters<O, P>) -> Task<I, P>
    where
        I: Send + 'static,
        O: Send + 'static,
        P: Send + 'static,
    {
        Task::from_parts(self.body.adapt(adapters), self.options, self.clone_input)
    }

    /// A task of `body` with `options`; `clone_input` is kept only where the input type
    /// stays the same (a join takes a new one, and is never retried).
    pub(crate) fn from_parts(
        body: Body<I, O>,
        options: Spec,
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
            options: Spec::new(name),
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
        self.options.auto = false;
        self
    }

    /// Lets the run choose the stage's number of workers, up to `max`, from what it
    /// measures as it goes, instead of a fixed [`workers`](Task::workers) count.
    ///
    /// The stage starts with as many active workers as cores. At the end of each short
    /// window (long enough for every active worker to finish two items, 20 to 500 ms; the
    /// first ends after 5 ms and one item a worker if the stage's consumer is seen
    /// waiting for it, more of its workers idle than items queued), the run looks at the
    /// stage's throughput, at its waits for input and for room downstream, and at the CPU
    /// its workers use, and sets the count for the next window:
    ///
    /// * a stage whose workers compute gets no more workers than the cores the rest of the
    ///   process leaves free (more would only take turns on them);
    /// * a stage that mostly waits for input, or for the stage after it, does not grow,
    ///   nor does one that makes items faster than the stage after it, busy, finishes
    ///   them (in two windows in a row; one such window pauses it): it keeps, of its last
    ///   step up, about what the next stage takes, with as much again to spare. (That needs
    ///   the run's metrics, on by default; without them only a full queue holds it.)
    /// * otherwise the count doubles while doubling raises throughput (by 10% or more),
    ///   quadruples while each doubling nearly doubles it (waits that overlap, as IO's
    ///   do), and settles at the last count that paid: hill-climbing on throughput, as
    ///   .NET's thread pool does. A settled stage tries a quarter more, then a quarter fewer,
    ///   every few windows, so it follows a workload that changes.
    ///
    /// All `max` workers are started with the run (threads are cheap while they wait);
    /// those beyond the count park, holding no item, and are woken when it rises past them.
    /// An async task's futures in flight are tuned the same way. What the tuner chose, and
    /// why, is in [`StageMetrics::tuned`](crate::StageMetrics::tuned) and in the report.
    ///
    /// Join tasks and process tasks cannot be tuned: running one is a configuration error.
    ///
    /// ```
    /// use pyper::task;
    /// # fn fetch(id: u32) -> u32 { std::thread::sleep(std::time::Duration::from_millis(1)); id }
    ///
    /// let pipeline = task(fetch).auto_workers(64) | task(|id: u32| id * 2);
    /// let mut output = pipeline.feed(0..500);
    /// let total: u32 = output.by_ref().map(Result::unwrap).sum();
    /// assert_eq!(total, 2 * (0..500).sum::<u32>());
    /// let tuned = output.metrics().stage("fetch").unwrap().tuned.clone().unwrap();
    /// assert!(tuned.workers >= 1 && tuned.workers <= 64);
    /// ```
    pub fn auto_workers(mut self, max: usize) -> Self {
        self.options.workers = max;
        self.options.auto = true;
        self
    }

    /// Bounds the task's output queue to `n` items (default
    /// [`DEFAULT_THROTTLE`](crate::DEFAULT_THROTTLE)); `0` means unbounded, as in Pyper.
    ///
    /// When the queue is full the task's workers wait, so a fast stage cannot run ahead of
    /// a slow one: that is backpressure, and it keeps memory flat. The bound counts items,
    /// even though items travel in batches. Each worker may also hold up to one batch it is
    /// handing over. On the first stage of a [`feed`](crate::Pipeline::feed), the throttle
    /// also bounds how far the input iterator reads ahead of the stage.
    pub fn throttle(mut self, n: usize) -> Self {
        self.options.throttle = n;
        self
    }

    /// Keeps the outputs in the order of the inputs, even with several workers.
    ///
    /// The worker holding the oldest unfinished input streams its outputs on as it makes
    /// them (so an endless `branch` fan-out flows); the others collect theirs and wait for
    /// their turn. A worker holds at most the stage's throttle of items not yet taken
    /// downstream (capped at a batch), so with `throttle(t)` and `w` workers an ordered
    /// stage runs at most about `t × (w + 1)` items ahead of a stalled consumer, as an
    /// unordered one does. (A process task's worker may also have the batch it sent to its
    /// process.) With one worker a stage is always
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
    /// error. As Pyper's guide puts it: make pure functions daemon, never a task that writes to
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
    /// * A process task kills the worker process and starts a new one. The parent times each
    ///   reply to the microsecond, so a limit below a millisecond is honoured too.
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
    ///   holding the attempts' causes in order (the first and last few, when there were
    ///   many; it counts them all): your error, a
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
    /// An iterator whose `next()` blocks (on a channel, a socket) never delays the end of
    /// a run that failed, was cancelled or was dropped: the run does not wait for the
    /// pending call. It keeps running on the worker's thread until it returns; the element
    /// is then dropped, and so is the iterator.
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
                emit_each(output, out, &mut 0, |element, out| {
                    out.emit(element).map_err(Fault::from)
                })
            },
            #[cfg(feature = "async")]
            stream: crate::stage::async_task::branch_iter,
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
                emit_each(output, out, &mut 0, |element, out| {
                    let element = element.map_err(|error| Fault::Failed(error.into()))?;
                    out.emit(element).map_err(Fault::from)
                })
            },
            #[cfg(feature = "async")]
            stream: crate::stage::async_task::try_branch_iter,
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
        Task::from_parts(self.body.join(), self.options, None)
    }
}

impl<I, O> Clone for Task<I, O> {
    fn clone(&self) -> Self {
        Task {
            body: self.body.clone(),
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
        let name = self.options.stage_name(*position);
        *position += 1;
        (self.body.check(&self.options, &name)).map_err(|why| Error::config(Some(&name), why))
    }

    fn launch(&self, input: Receiver<I>, launcher: &mut Launcher) -> Receiver<O> {
        stage::launch(&self.body, &self.options, self.clone_input, input, launcher)
    }

    fn input_bound(&self) -> usize {
        crate::engine::source::read_ahead(self.options.throttle, self.options.workers)
    }
}

/// The function's own name for a plain function or method, the type's or the variant's
/// for a tuple struct's or an enum variant's constructor, `None` for a closure.
pub(crate) fn readable_name<F>() -> Option<Arc<str>> {
    let full = std::any::type_name::<F>();
    if full.contains("{{closure}}") {
        return None;
    }
    // `app::Wrapped::{{constructor}}` → `app::Wrapped`.
    let full = full.strip_suffix("::{{constructor}}").unwrap_or(full);
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
        assert_eq!(named.options.stage_name(3).as_ref(), "parse");
        let closure = task(|s: String| s.len());
        assert_eq!(closure.options.stage_name(3).as_ref(), "stage 3");
        assert_eq!(task(str::len).options.stage_name(1).as_ref(), "len");
        assert_eq!(
            task(generic::<u8>).options.stage_name(1).as_ref(),
            "generic"
        );
    }

    struct Wrapped(#[allow(dead_code)] u32);

    struct Generic<T>(#[allow(dead_code)] T);

    #[test]
    fn constructors_are_named_after_their_type_or_variant() {
        assert_eq!(task(Wrapped).options.stage_name(1).as_ref(), "Wrapped");
        assert_eq!(
            task(Generic::<u8>).options.stage_name(1).as_ref(),
            "Generic"
        );
        assert_eq!(task(Some::<u8>).options.stage_name(1).as_ref(), "Some");
    }
}
