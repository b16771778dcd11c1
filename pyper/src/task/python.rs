//! The constructor of Python tasks (feature `python`).

use crate::stage::python::{PyItem, PyShape, PythonBody};
use crate::task::{Body, Task};

/// Builds a task from a Python callable, for the `pyperflow` Python package: items and
/// outputs are Python objects, `shape` says how the callable is called (Pyper's `branch`
/// and `join`, the first stage's arguments, a callable per worker).
///
/// Its workers are threads that hold the GIL while input is ready, for a short budget,
/// and wait for input or for room downstream without it. An exception raised by the
/// callable is the run's error; its [`source`](std::error::Error::source) is the
/// [`PyErr`](pyo3::PyErr). (Requires the `python` feature.)
///
/// ```no_run
/// use pyo3::prelude::*;
/// use pyper::{python_task, PyShape};
///
/// Python::attach(|py| {
///     let abs = py.import("builtins").unwrap().getattr("abs").unwrap().unbind();
///     let task = python_task(abs, PyShape::default()).workers(2);
///     let minus_two = (-2i64).into_pyobject(py).unwrap().into_any().unbind();
///     let mut outputs = task.run(minus_two);
///     // Waiting for outputs must not hold the GIL the workers need.
///     let first = py.detach(|| outputs.next()).unwrap().unwrap();
///     assert_eq!(first.extract::<i64>(py).unwrap(), 2);
/// });
/// ```
pub fn python_task(function: PyItem, shape: PyShape) -> Task<PyItem, PyItem> {
    Task::new(Body::Python(PythonBody::new(function, shape)), None)
}
