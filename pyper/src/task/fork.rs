//! `fork`: one stage that calls several tasks at once on each item and hands on their
//! outputs together. How it runs is the business of `stage/fork.rs`.

use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::stage::fork::{Erased, ForkBody, Inner};
use crate::stage::{Adapters, Body};
use crate::task::Task;

/// Builds one stage that gives each item to every task of a tuple, runs them at once, and
/// hands on their outputs together, as a tuple in the tasks' order (fork/join; Pyper's
/// `task(f) & task(g)`).
///
/// * Each task keeps its kind and its own options: a [`task`](crate::task) or
///   [`task_per_worker`](crate::task_per_worker) runs on a thread of the fork's worker, an
///   [`async_task`](crate::async_task) on pyper's runtime, a `process_task!` in a worker
///   process of the fork worker's own (started on first use, killed at the task's timeout
///   or when the run stops), each with its own
///   [`timeout`](Task::timeout), [`retries`](Task::retries) and
///   [`backoff`](Task::backoff), and its name in errors.
/// * The fork is a task like any other: [`workers(n)`](Task::workers) is how many items are
///   in flight at once (each with all its tasks running), and
///   [`throttle`](Task::throttle), [`ordered`](Task::ordered), [`daemon`](Task::daemon) and
///   [`name`](Task::name) apply to it. Its default name joins its tasks' names with `&`.
/// * The first failure of any task on any item fails the run, as anywhere else: the
///   [`Error`](crate::Error) names the failing task (its own name, or `<fork>, task N`)
///   and the item. The fork does not wait for the other tasks' calls on that item before
///   it reports; as with any call in progress when a run stops, thread calls are waited
///   for before the run ends (unless the fork is a daemon) and async calls are dropped.
/// * Every task but the last gets a clone of the item, hence `I: Clone` (wrap a large item
///   in an `Arc`).
///
/// What does not combine, each a configuration [`Error`](crate::Error) naming the task:
/// a task inside a fork must make exactly one output per item, so `branch` and `join`
/// tasks, and forks of forks, are refused (a branch task is only found out when it runs,
/// by the number of outputs it made); `workers`, `auto_workers`, `throttle`, `ordered`
/// and `daemon` go on the fork, not on its tasks; the fork itself has no `timeout`,
/// `retries` or `auto_workers` (put them on its tasks); remote and Python tasks cannot be
/// forked here (in Python, `&` forks Python tasks, multiprocess ones included).
///
/// Tuples of 2 to 6 tasks make a fork; anything else does not compile.
///
/// ```
/// use pyper::{fork, task};
///
/// let stats = fork((
///     task(|xs: Vec<u32>| xs.iter().sum::<u32>()).name("sum"),
///     task(|xs: Vec<u32>| xs.iter().copied().max()).name("max"),
///     task(|xs: Vec<u32>| xs.len()),
/// ))
/// .workers(2);
/// let out: Vec<(u32, Option<u32>, usize)> = stats.run(vec![3, 1, 4]).map(Result::unwrap).collect();
/// assert_eq!(out, [(8, Some(4), 3)]);
/// ```
///
/// ```compile_fail
/// // One task is not a fork.
/// let one = pyper::fork((pyper::task(|x: u32| x),));
/// ```
pub fn fork<I, T>(tasks: T) -> Task<I, T::Output>
where
    T: ForkTasks<I>,
    I: Clone + Send + 'static,
{
    let ForkParts { inners, assemble } = tasks.into_parts();
    let names: Option<Vec<Arc<str>>> = inners.iter().map(|inner| inner.spec.name.clone()).collect();
    let name = names.map(|names| names.join(" & ").into());
    let body = ForkBody {
        inners: inners.into(),
        assemble,
        clone_item: I::clone,
    };
    Task::new(Body::Fork(body), name)
}

/// A tuple of 2 to 6 tasks of the same input, which [`fork`] makes one stage of. Sealed:
/// implemented for those tuples only.
pub trait ForkTasks<I>: sealed::Sealed {
    /// The tuple of the tasks' outputs.
    type Output: Send + 'static;

    /// The tasks, each with its output boxed, and how to put the tuple back together.
    #[doc(hidden)]
    fn into_parts(self) -> ForkParts<I, Self::Output>;
}

/// What [`ForkTasks::into_parts`] returns; opaque.
#[doc(hidden)]
pub struct ForkParts<I, O> {
    inners: Vec<Inner<I>>,
    assemble: fn(Vec<Erased>) -> O,
}

impl<I, O> std::fmt::Debug for ForkParts<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkParts")
            .field("tasks", &self.inners.len())
            .finish()
    }
}

mod sealed {
    /// Keeps [`super::ForkTasks`] to the tuples of this module.
    pub trait Sealed {}
}

/// A task's body with its output boxed, ready to sit in a fork.
fn inner<I, O>(task: Task<I, O>) -> Inner<I>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let body = task.body.adapt(Adapters {
        each: erase::<O>,
        #[cfg(feature = "async")]
        stream: erase_stream::<O>,
    });
    Inner {
        body,
        spec: task.options,
        clone_input: task.clone_input,
    }
}

fn erase<O: Send + 'static>(output: O, out: &mut dyn Emit<Erased>) -> Result<(), Fault> {
    out.emit(Box::new(output)).map_err(Fault::from)
}

#[cfg(feature = "async")]
fn erase_stream<O: Send + 'static>(
    output: O,
) -> futures_util::stream::BoxStream<'static, Result<Erased, crate::BoxError>> {
    use futures_util::StreamExt;
    let output: Erased = Box::new(output);
    futures_util::stream::once(std::future::ready(Ok(output))).boxed()
}

/// One task's output back in its type: the fork's stage asked this task for exactly one.
fn take<O: 'static>(outputs: &mut std::vec::IntoIter<Erased>) -> O {
    let output = outputs
        .next()
        .expect("a fork's stage makes one output per task");
    *output
        .downcast::<O>()
        .expect("a fork's task makes outputs of its type")
}

macro_rules! fork_tuple {
    ($($out:ident $task:ident),+) => {
        impl<I, $($out),+> sealed::Sealed for ($(Task<I, $out>,)+) {}

        impl<I, $($out),+> ForkTasks<I> for ($(Task<I, $out>,)+)
        where
            I: Send + 'static,
            $($out: Send + 'static),+
        {
            type Output = ($($out,)+);

            fn into_parts(self) -> ForkParts<I, Self::Output> {
                fn assemble<$($out: 'static),+>(outputs: Vec<Erased>) -> ($($out,)+) {
                    let mut outputs = outputs.into_iter();
                    ($(take::<$out>(&mut outputs),)+)
                }
                let ($($task,)+) = self;
                ForkParts {
                    inners: vec![$(inner($task)),+],
                    assemble: assemble::<$($out),+>,
                }
            }
        }
    };
}

fork_tuple!(A a, B b);
fork_tuple!(A a, B b, C c);
fork_tuple!(A a, B b, C c, D d);
fork_tuple!(A a, B b, C c, D d, E e);
fork_tuple!(A a, B b, C c, D d, E e, F f);
