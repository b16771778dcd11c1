//! Async tasks: a function returning a future, run as `workers(n)` futures in flight on
//! pyper's runtime ([`crate::engine::runtime`]).
//!
//! An async task's body turns one input into a stream of outputs: one for a plain task,
//! any number after `branch`. That one shape lets `branch` over an iterator, `branch` over
//! a `Stream` (Python's async generator) and `join` over a `Stream` share one worker loop
//! ([`crate::stage::async_task::driver`]).

use std::future::Future;

use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use futures_util::FutureExt;

use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::AsyncFn;

/// Turns one output of an async body into a stream of outputs of another type.
pub(crate) type StreamAdapter<O, P> = fn(O) -> BoxStream<'static, Result<P, BoxError>>;

/// The body of an async task from a function returning a future of its output.
pub(crate) fn each<I, O, F, Fut>(f: F) -> AsyncFn<I, O>
where
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    Arc::new(move |item| stream::once(f(item).map(Ok)).boxed())
}

/// The body of an async task from a function returning a future of a `Result`.
pub(crate) fn try_each<I, O, E, F, Fut>(f: F) -> AsyncFn<I, O>
where
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    Arc::new(move |item| stream::once(f(item).map(|result| result.map_err(Into::into))).boxed())
}

/// Wraps an async body so that each of its outputs becomes the stream `adapter` makes.
pub(crate) fn adapt<In, O, P>(body: AsyncFn<In, O>, adapter: StreamAdapter<O, P>) -> AsyncFn<In, P>
where
    In: 'static,
    O: Send + 'static,
    P: Send + 'static,
{
    Arc::new(move |input| body(input).map_ok(adapter).try_flatten().boxed())
}

/// `branch` for async bodies.
pub(crate) fn branch_iter<O>(output: O) -> BoxStream<'static, Result<O::Item, BoxError>>
where
    O: IntoIterator,
    O::IntoIter: Send + 'static,
    O::Item: Send + 'static,
{
    stream::iter(output.into_iter().map(Ok)).boxed()
}

/// `try_branch` for async bodies.
pub(crate) fn try_branch_iter<O, T, E>(output: O) -> BoxStream<'static, Result<T, BoxError>>
where
    O: IntoIterator<Item = Result<T, E>>,
    O::IntoIter: Send + 'static,
    T: Send + 'static,
    E: Into<BoxError> + 'static,
{
    stream::iter(output.into_iter().map(|item| item.map_err(Into::into))).boxed()
}

pub(crate) mod driver;
mod launch;
pub(crate) mod retry;

pub(crate) use launch::{launch_each, launch_join};
