//! Python functions on remote workers (features `python` and `remote`): the body of the
//! `pyperflow` package's `task(f, remote=cluster)`, and the worker that
//! `python -m pyper.worker URL` runs. The same remote kind as for Rust functions: the
//! same streams, batches, dedup ids, dead letters, leases, metrics and report; only the
//! callee differs. A run names the function by module and qualified name
//! ([`Callee::Python`]), items and outputs are pickles, and the package's
//! `pyper._remote` module does the Python half: it imports the function, calls it on one
//! pickled item, and pickles the outputs, or the exception with its traceback.
//!
//! A pickle runs code when it is loaded: anyone who can publish to the server can run code
//! on a Python worker. The server must require credentials (docs/remote.md).

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::body::RemoteFn;
use super::cluster::Cluster;
use super::setup::{Callee, PythonFunction};
use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::wire::Reply;

/// A Python object, as the engine's Python stages move them.
type PyItem = Py<PyAny>;

/// The Python half's module.
const HELPER: &str = "pyper._remote";

/// Whether this process is a Python worker, able to serve Python runs.
static SERVES_PYTHON: AtomicBool = AtomicBool::new(false);

pub(super) fn serves_python() -> bool {
    SERVES_PYTHON.load(Ordering::SeqCst)
}

/// Makes this process a Python worker: one that serves Python runs.
pub(super) fn become_python_worker() {
    SERVES_PYTHON.store(true, Ordering::SeqCst);
}

/// The call of `function` on one pickled item, or why it cannot be loaded here.
pub(super) fn load(
    function: &PythonFunction,
) -> Result<impl Fn(&[u8]) -> Reply + Send + Sync + 'static, String> {
    let serve = Python::attach(|py| {
        let helper = py.import(HELPER)?;
        let args = (
            &function.module,
            &function.qualname,
            function.branch,
            function.star_args,
        );
        helper.call_method1("load", args).map(Bound::unbind)
    })
    .map_err(|error| {
        format!(
            "cannot load the Python function `{}:{}`: {error}",
            function.module, function.qualname
        )
    })?;
    Ok(move |item: &[u8]| {
        Python::attach(|py| {
            let answer = serve.bind(py).call1((PyBytes::new(py, item),));
            match answer.and_then(|answer| answer.extract::<(bool, Vec<u8>, String)>()) {
                Ok((true, outputs, _)) => Reply::Done(outputs),
                Ok((false, exception, message)) => Reply::Raised {
                    chain: vec![message],
                    exception,
                },
                Err(error) => Reply::Failed(vec![error.to_string()]),
            }
        })
    })
}

/// The coordinator's side of a remote Python task.
pub(crate) fn body(cluster: &Cluster, function: PythonFunction) -> RemoteFn<PyItem, PyItem> {
    RemoteFn {
        cluster: cluster.clone(),
        function: Callee::Python(function),
        encode: |item| {
            Python::attach(|py| {
                let pickle = py.import(HELPER)?.getattr("dumps")?;
                pickle.call1((item,))?.extract::<Vec<u8>>()
            })
            .map_err(|error| BoxError::from(Box::new(error)))
        },
        decode: Arc::new(|bytes: Vec<u8>, out: &mut dyn Emit<PyItem>| {
            // Decoded with the GIL, handed on without it: the next stage may need it.
            let outputs: Vec<PyItem> = Python::attach(|py| {
                let outputs = py
                    .import(HELPER)?
                    .getattr("loads")?
                    .call1((PyBytes::new(py, &bytes),))?;
                let outputs = outputs.cast_into::<PyList>()?;
                Ok::<_, PyErr>(outputs.iter().map(Bound::unbind).collect())
            })
            .map_err(|error| Fault::Failed(Box::new(error)))?;
            for output in outputs {
                out.emit(output).map_err(Fault::from)?;
            }
            Ok(())
        }),
        raised: |chain, exception| {
            let raised = Python::attach(|py| {
                let helper = py.import(HELPER)?;
                let error = helper.call_method1("raised", (PyBytes::new(py, &exception),))?;
                Ok::<_, PyErr>(PyErr::from_value(error))
            });
            match raised {
                Ok(error) => Box::new(error),
                Err(_) => super::body::raised_messages(chain, exception),
            }
        },
    }
}
