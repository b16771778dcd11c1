//! The forms a task's function takes inside the engine, which the API builds, the
//! dispatcher holds and the kinds call: a leaf, so that none of them imports another for
//! a type.

#[cfg(feature = "async")]
use futures_util::stream::BoxStream;

use crate::engine::batch::{Emit, Fault};
use crate::engine::map::MapBatch;
use crate::engine::sync::Arc;
use crate::engine::upstream::Upstream;
#[cfg(feature = "async")]
use crate::error::BoxError;

/// A task body called once per input item.
pub(crate) type EachFn<I, O> =
    Arc<dyn Fn(I, &mut dyn Emit<O>) -> Result<(), Fault> + Send + Sync + 'static>;

/// The same body as an [`EachFn`], called once per batch with the function inlined into
/// the loop: what a plain `task(f)` offers a thread stage with one worker (see
/// [`crate::engine::map`]).
pub(crate) type BatchFn<I, O> =
    Arc<dyn Fn(&mut MapBatch<'_, '_, I, O>) -> Result<(), Fault> + Send + Sync + 'static>;

/// Builds, in each worker, the body that worker calls (a task with per-worker state).
pub(crate) type SetupFn<I, O> =
    Arc<dyn Fn() -> Result<EachFn<I, O>, crate::error::BoxError> + Send + Sync + 'static>;

/// A task body called once per worker with the worker's share of the whole stream.
pub(crate) type JoinFn<I, O> = EachFn<Upstream<I>, O>;

#[cfg(feature = "async")]
/// An async task's body: the outputs of one input, as a stream.
pub(crate) type AsyncFn<I, O> =
    Arc<dyn Fn(I) -> BoxStream<'static, Result<O, BoxError>> + Send + Sync + 'static>;
