//! A task's failure inside a fork, named after the task rather than the fork: made by the
//! fork kind (`fork.rs`), turned into the run's error by the thread workers' shared
//! `report` (`workers.rs`). A leaf, so that neither imports the other.

use std::any::Any;

use crate::engine::sync::Arc;
use crate::error::{panic_message, BoxError, Error};

/// An inner task's failure, on its way to become the run's [`Error`], which names the
/// task rather than the fork.
#[derive(Debug)]
pub(crate) struct InnerFailure {
    task: Arc<str>,
    pub(crate) cause: InnerCause,
}

#[derive(Debug)]
pub(crate) enum InnerCause {
    Failed(BoxError),
    Panicked(String),
    /// The run stopped during the call: not an error.
    Stop,
}

impl InnerFailure {
    pub(crate) fn failed(task: &Arc<str>, error: BoxError) -> Self {
        let task = Arc::clone(task);
        InnerFailure {
            task,
            cause: InnerCause::Failed(error),
        }
    }

    pub(crate) fn panicked(task: &Arc<str>, payload: Box<dyn Any + Send>) -> Self {
        let message = panic_message(payload.as_ref());
        InnerFailure {
            task: Arc::clone(task),
            cause: InnerCause::Panicked(message),
        }
    }

    pub(crate) fn stop(task: &Arc<str>) -> Self {
        InnerFailure {
            task: Arc::clone(task),
            cause: InnerCause::Stop,
        }
    }
}

impl std::fmt::Display for InnerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task `{}` of a fork failed", self.task)
    }
}

impl std::error::Error for InnerFailure {}

/// The run's error for a worker's failure `error` on `item`: the inner task's, named after
/// it, if it came from a task inside a fork.
pub(crate) fn attribute(stage: &str, item: Option<u64>, error: BoxError) -> Error {
    match error.downcast::<InnerFailure>() {
        Ok(inner) => match inner.cause {
            InnerCause::Failed(error) => Error::failed(&inner.task, item, error),
            InnerCause::Panicked(message) => Error::panicked(&inner.task, item, Box::new(message)),
            InnerCause::Stop => Error::failed(stage, item, "the run stopped".into()),
        },
        Err(error) => Error::failed(stage, item, error),
    }
}
