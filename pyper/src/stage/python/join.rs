//! A join stage's worker: the function receives an iterator over the stage's input,
//! whose waits for items are detached.

use std::ffi::CStr;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyCFunction;

use super::{failed, PyItem, Turn};
use crate::engine::batch::{Fault, MAX_BATCH};
use crate::engine::queue::{Popped, Receiver};
use crate::engine::sync::{self, Arc, Instant, Mutex};

impl<'py> Turn<'_, 'py> {
    /// One call per worker, with an iterator over the input.
    pub(super) fn join(&mut self, input: Receiver<PyItem>) -> Result<(), Fault> {
        let upstream = Arc::new(Mutex::new(Some(UpstreamState {
            input,
            ready: Vec::new(),
        })));
        let iterator = upstream_iterator(self.py, &upstream).map_err(failed)?;
        let started = Instant::now();
        let function = self.worker.callable.function.bind(self.py).clone();
        let result = function
            .call1((iterator,))
            .map_err(failed)
            .and_then(|result| match self.worker.callable.shape.branch {
                // A generator reads its input as it goes.
                true => self.emit_all(result),
                false => Ok(self.output.add(result.unbind())?),
            });
        // The function is done with its input, even if it kept the iterator: the stages
        // above learn that nobody needs more items.
        // Detached: a thread the function handed its iterator to may hold it, waiting.
        self.py.detach(|| drop(sync::lock(&upstream).take()));
        result?;
        if let Some(recorder) = self.recorder.as_deref_mut() {
            recorder.whole_life_busy(started);
        }
        Ok(())
    }
}

/// What a join function's iterator reads: the stage's input, until the function returns.
struct UpstreamState {
    input: Receiver<PyItem>,
    /// Items taken from the queue and not yet returned, in reverse order.
    ready: Vec<PyItem>,
}

/// A Python iterator over a join worker's input: `iter(next, end)`, where `next` takes
/// the ready items without waiting, and waits detached for more.
fn upstream_iterator<'py>(
    py: Python<'py>,
    upstream: &Arc<Mutex<Option<UpstreamState>>>,
) -> PyResult<Bound<'py, PyAny>> {
    let end = py.import("builtins")?.getattr("object")?.call0()?.unbind();
    let marker = end.clone_ref(py);
    let upstream = Arc::clone(upstream);
    const NAME: &CStr = c"upstream";
    let next = PyCFunction::new_closure(py, Some(NAME), None, move |args, _kwargs| {
        let py = args.py();
        // Never waits for the lock with the GIL held: a second reader is refused, as a
        // generator that is already running refuses a second `next`.
        let Ok(mut state) = upstream.try_lock() else {
            return Err(PyValueError::new_err(
                "this input iterator is already being read",
            ));
        };
        let Some(state) = state.as_mut() else {
            return Ok(end.clone_ref(py));
        };
        if let Some(item) = state.ready.pop() {
            return Ok(item);
        }
        let UpstreamState { input, ready } = state;
        let popped = match input.try_pop_batch(ready, MAX_BATCH) {
            Popped::Empty => py.detach(|| input.pop_batch(ready, MAX_BATCH)),
            Popped::Items(first) => Some(first),
            Popped::Over => None,
        };
        if popped.is_none() {
            return Ok(end.clone_ref(py));
        }
        ready.reverse();
        Ok(ready.pop().unwrap_or_else(|| end.clone_ref(py)))
    })?;
    py.import("builtins")?
        .getattr("iter")?
        .call1((next, marker))
}
