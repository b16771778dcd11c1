//! Pipelines: typed compositions of tasks, and the calls that run them.

use std::fmt;
use std::ops::BitOr;

#[cfg(feature = "async")]
use crate::engine::async_upstream::UpstreamStream;
use crate::engine::queue::{queue, Receiver};
use crate::engine::run::Launcher;
use crate::engine::source;
use crate::engine::sync::Arc;
use crate::engine::upstream::Upstream;
use crate::error::Error;
use crate::output::Output;
use crate::task::Task;

/// A chain of stages that turns inputs of type `I` into outputs of type `O`.
///
/// Build one by composing [`Task`]s and other pipelines with `|`; the types must line up,
/// or it does not compile. A pipeline is a value: clone it, run it as often as you like
/// (each run is independent, and runs may overlap), and nest it inside bigger pipelines.
///
/// ```
/// use pyper::{task, Pipeline};
///
/// fn numbers() -> Pipeline<u64, u64> {
///     task(|n: u64| 0..n).branch() | task(|x: u64| x * 10)
/// }
///
/// let pipeline = numbers() | task(|x: u64| x + 1);
/// let mut out: Vec<u64> = pipeline.run(3).map(Result::unwrap).collect();
/// out.sort();
/// assert_eq!(out, [1, 11, 21]);
/// ```
///
/// Composing stages whose types do not match is a compile error:
///
/// ```compile_fail
/// use pyper::task;
/// let broken = task(|x: u32| x + 1) | task(|s: String| s.len());
/// ```
pub struct Pipeline<I, O> {
    stages: Arc<dyn Stages<I, O>>,
}

/// What a pipeline is made of: something that can check its configuration and, given the
/// receiving end of its input queue, start its workers and return its output queue.
///
/// Boxing happens once per stage per pipeline; items stay typed end to end.
pub(crate) trait Stages<I, O>: Send + Sync {
    /// Rejects an invalid configuration before any worker starts. `position` is the
    /// 1-based position of the first stage, advanced past these stages.
    fn check(&self, position: &mut usize) -> Result<(), Error>;

    fn launch(&self, input: Receiver<I>, launcher: &mut Launcher) -> Receiver<O>;

    /// How many items the queue in front of the first stage holds: the input iterator
    /// of [`Pipeline::feed`] runs no further ahead ([`source::read_ahead`]).
    fn input_bound(&self) -> usize;
}

struct Chain<I, M, O> {
    first: Arc<dyn Stages<I, M>>,
    second: Arc<dyn Stages<M, O>>,
}

impl<I, M, O> Stages<I, O> for Chain<I, M, O> {
    fn check(&self, position: &mut usize) -> Result<(), Error> {
        self.first.check(position)?;
        self.second.check(position)
    }

    fn launch(&self, input: Receiver<I>, launcher: &mut Launcher) -> Receiver<O> {
        let middle = self.first.launch(input, launcher);
        self.second.launch(middle, launcher)
    }

    fn input_bound(&self) -> usize {
        self.first.input_bound()
    }
}

impl<I, O> Pipeline<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Runs the pipeline with one input, given to the first stage, as Pyper's
    /// `pipeline(args)` does. The first stage is called once; make it a
    /// [`branch`](Task::branch) task to turn that input into a stream.
    ///
    /// Returns a lazy iterator: nothing starts until the first call to `next`, and outputs
    /// arrive as they are produced. See [`Output`] for errors and early drops.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let words = task(|text: String| text.split(' ').map(str::to_owned).collect::<Vec<_>>())
    ///     .branch()
    ///     | task(|word: String| word.len());
    /// let lengths: Vec<usize> = words.run("a bb ccc".into()).map(Result::unwrap).collect();
    /// assert_eq!(lengths, [1, 2, 3]);
    /// ```
    pub fn run(&self, input: I) -> Output<O> {
        let stages = Arc::clone(&self.stages);
        Output::new(move |launcher| {
            let (sender, receiver) = queue(0);
            sender
                .push_all(&mut vec![input])
                .expect("a new queue accepts an item");
            drop(sender);
            check_and_launch(&*stages, receiver, launcher)
        })
    }

    /// Runs the pipeline with every item of `inputs` as an input of the first stage, like
    /// `Pool.imap` or pypeln's `from_iterable`.
    ///
    /// The iterator is driven on a thread of its own, which stops as soon as the run
    /// stops, so an endless iterator is fine. It reads ahead of the first stage as far as
    /// that stage's [`throttle`](Task::throttle) allows (at least one input per worker, at
    /// most [`DEFAULT_THROTTLE`](crate::DEFAULT_THROTTLE)), so large inputs are not pulled
    /// in by the thousand.
    ///
    /// An iterator whose `next()` blocks (a channel whose sender is kept alive, as in a
    /// feedback loop) never delays the end of a run that failed or was cancelled or
    /// dropped: the pending call is abandoned. It keeps running on the input's thread until
    /// it returns; the element it returns is then dropped, and so is the iterator.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let pipeline = task(|x: u64| x * x).workers(4) | task(|x: u64| x + 1);
    /// let total: u64 = pipeline.feed(0..1000).map(Result::unwrap).sum();
    /// assert_eq!(total, (0..1000u64).map(|x| x * x + 1).sum::<u64>());
    /// ```
    pub fn feed<It>(&self, inputs: It) -> Output<O>
    where
        It: IntoIterator<Item = I>,
        It::IntoIter: Send + 'static,
    {
        let stages = Arc::clone(&self.stages);
        let inputs = inputs.into_iter();
        Output::new(move |launcher| {
            stages.check(&mut 1)?;
            let receiver = source::launch(inputs, stages.input_bound(), launcher);
            Ok(stages.launch(receiver, launcher))
        })
    }

    /// Hands the output of each run to `consumer` and returns what it returns, errors
    /// included: Pyper's `pipeline > consumer`.
    ///
    /// ```
    /// use pyper::{task, Output};
    ///
    /// fn print_sum(outputs: Output<u64>) -> Result<u64, pyper::Error> {
    ///     outputs.sum()
    /// }
    ///
    /// let run = (task(|n: u64| 0..n).branch() | task(|x: u64| x * 2)).consume(print_sum);
    /// assert_eq!(run.run(4).unwrap(), 12);
    /// assert_eq!(run.run(5).unwrap(), 20); // reusable
    /// ```
    pub fn consume<R, F>(self, consumer: F) -> Consumer<I, O, F>
    where
        F: Fn(Output<O>) -> R,
    {
        Consumer {
            pipeline: self,
            consumer,
        }
    }
}

fn check_and_launch<I, O>(
    stages: &dyn Stages<I, O>,
    input: Receiver<I>,
    launcher: &mut Launcher,
) -> Result<Receiver<O>, Error> {
    stages.check(&mut 1)?;
    Ok(stages.launch(input, launcher))
}

/// A pipeline with a consumer attached: running it returns the consumer's result.
/// Made by [`Pipeline::consume`].
pub struct Consumer<I, O, F> {
    pipeline: Pipeline<I, O>,
    consumer: F,
}

impl<I, O, R, F> Consumer<I, O, F>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Output<O>) -> R,
{
    /// Runs the pipeline with one input and returns the consumer's result.
    pub fn run(&self, input: I) -> R {
        (self.consumer)(self.pipeline.run(input))
    }

    /// Runs the pipeline over `inputs` and returns the consumer's result.
    pub fn feed<It>(&self, inputs: It) -> R
    where
        It: IntoIterator<Item = I>,
        It::IntoIter: Send + 'static,
    {
        (self.consumer)(self.pipeline.feed(inputs))
    }
}

/// A pipeline with an async consumer attached: running it awaits the consumer's result.
/// Made by [`Pipeline::consume_async`]. (Requires the `async` feature.)
#[cfg(feature = "async")]
pub struct AsyncConsumer<I, O, F> {
    pipeline: Pipeline<I, O>,
    consumer: F,
}

#[cfg(feature = "async")]
impl<I, O> Pipeline<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Hands the output of each run, as a [`Stream`](crate::OutputStream), to an async
    /// `consumer`, and returns what it returns. (Requires the `async` feature.)
    ///
    /// ```
    /// use futures_util::TryStreamExt;
    /// use pyper::{async_task, OutputStream};
    ///
    /// async fn total(outputs: OutputStream<u64>) -> Result<u64, pyper::Error> {
    ///     outputs.try_fold(0, |sum, x| async move { Ok(sum + x) }).await
    /// }
    ///
    /// # #[tokio::main] async fn main() {
    /// let doubled = async_task(|x: u64| async move { x * 2 }).workers(4);
    /// let run = pyper::Pipeline::from(doubled).consume_async(total);
    /// assert_eq!(run.feed(1..=10).await.unwrap(), 110);
    /// # }
    /// ```
    pub fn consume_async<R, F, Fut>(self, consumer: F) -> AsyncConsumer<I, O, F>
    where
        F: Fn(crate::OutputStream<O>) -> Fut,
        Fut: std::future::Future<Output = R>,
    {
        AsyncConsumer {
            pipeline: self,
            consumer,
        }
    }
}

#[cfg(feature = "async")]
impl<I, O, R, F, Fut> AsyncConsumer<I, O, F>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(crate::OutputStream<O>) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    /// Runs the pipeline with one input and awaits the consumer's result.
    pub async fn run(&self, input: I) -> R {
        (self.consumer)(self.pipeline.run(input).into_stream()).await
    }

    /// Runs the pipeline over `inputs` and awaits the consumer's result.
    pub async fn feed<It>(&self, inputs: It) -> R
    where
        It: IntoIterator<Item = I>,
        It::IntoIter: Send + 'static,
    {
        (self.consumer)(self.pipeline.feed(inputs).into_stream()).await
    }
}

#[cfg(feature = "async")]
impl<I, O, F> fmt::Debug for AsyncConsumer<I, O, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncConsumer").finish_non_exhaustive()
    }
}

impl<I, O, F> fmt::Debug for Consumer<I, O, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

/// Anything that can stand on the right of `|`: a [`Task`] or a [`Pipeline`] whose input
/// is `I`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot take the outputs of the stage before it, which are `{I}`",
    label = "this stage's input must be `{I}`"
)]
pub trait IntoPipeline<I> {
    /// The output type of the resulting pipeline.
    type Output;

    /// Converts into a pipeline.
    fn into_pipeline(self) -> Pipeline<I, Self::Output>;
}

impl<I, O> IntoPipeline<I> for Pipeline<I, O> {
    type Output = O;

    fn into_pipeline(self) -> Pipeline<I, O> {
        self
    }
}

impl<I, O> IntoPipeline<I> for Task<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    type Output = O;

    fn into_pipeline(self) -> Pipeline<I, O> {
        Pipeline {
            stages: Arc::new(self),
        }
    }
}

/// What a task that reads the whole stream (`Upstream<I>`, or `UpstreamStream<I>`) lacks
/// to take `I`s: `.join()`. Never implemented (and it cannot be outside this crate), so the
/// two impls below never apply; they exist so that a forgotten `.join()` gets an error of
/// its own, and a plain type mismatch no hint about `.join()`. They cannot change what
/// compiles: they match only a task whose input is the stream of the previous stage's
/// outputs, which the impl above refuses, and type inference drops them since they cannot
/// hold.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "this task reads the whole stream (`{Self}`), so it is a join task: add `.join()`",
    label = "this task needs `.join()`",
    note = "a task whose function takes an `Upstream<I>` (or, async, an `UpstreamStream<I>`) is called once per worker with the stream; `.join()` makes it a stage that takes `I`s"
)]
pub trait JoinTask {}

#[doc(hidden)]
impl<I, O> IntoPipeline<I> for Task<Upstream<I>, O>
where
    Upstream<I>: JoinTask,
{
    type Output = O;

    fn into_pipeline(self) -> Pipeline<I, O> {
        unreachable!("`JoinTask` has no implementation")
    }
}

#[cfg(feature = "async")]
#[doc(hidden)]
impl<I, O> IntoPipeline<I> for Task<UpstreamStream<I>, O>
where
    UpstreamStream<I>: JoinTask,
{
    type Output = O;

    fn into_pipeline(self) -> Pipeline<I, O> {
        unreachable!("`JoinTask` has no implementation")
    }
}

impl<I, O> From<Task<I, O>> for Pipeline<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    fn from(task: Task<I, O>) -> Self {
        task.into_pipeline()
    }
}

impl<I, M, R> BitOr<R> for Pipeline<I, M>
where
    I: Send + 'static,
    M: Send + 'static,
    R: IntoPipeline<M>,
    R::Output: Send + 'static,
{
    type Output = Pipeline<I, R::Output>;

    fn bitor(self, next: R) -> Self::Output {
        Pipeline {
            stages: Arc::new(Chain {
                first: self.stages,
                second: next.into_pipeline().stages,
            }),
        }
    }
}

impl<I, M, R> BitOr<R> for Task<I, M>
where
    I: Send + 'static,
    M: Send + 'static,
    R: IntoPipeline<M>,
    R::Output: Send + 'static,
{
    type Output = Pipeline<I, R::Output>;

    fn bitor(self, next: R) -> Self::Output {
        self.into_pipeline() | next
    }
}

impl<I, O> Clone for Pipeline<I, O> {
    fn clone(&self) -> Self {
        Pipeline {
            stages: Arc::clone(&self.stages),
        }
    }
}

impl<I, O> fmt::Debug for Pipeline<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}
