//! `pyper._engine`: the compiled half of the `pyperflow` Python package.
//!
//! The Python half (`python/pyper/`) validates tasks and provides Pyper's operators; this
//! module turns a list of stages into an engine [`Pipeline`] of Python tasks and runs it.
//! A [`Run`] is the output of one run, iterated from Python:
//!
//! * it never waits while holding the GIL: it takes outputs already handed over at once,
//!   and waits for more detached, a little at a time, checking for signals between waits,
//!   so Ctrl-C raises `KeyboardInterrupt` promptly and stops the run;
//! * the first error in time reaches the caller as the original Python exception;
//! * closing it or the interpreter's exit cancels the run and waits for its workers,
//!   always detached; dropping it (garbage collection, on whichever thread that runs)
//!   cancels it, and a thread of its own waits for the workers.

use std::sync::{Arc, Mutex, OnceLock, TryLockError, Weak};
use std::task::Poll;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyper::{python_task, Canceller, Monitor, Output, Pipeline, PyItem, PyShape, Task};

pyo3::create_exception!(
    _engine,
    DeadLetter,
    PyRuntimeError,
    "An item of a remote stage that went to the dead letters: it failed, or killed every \
     worker it was given, `max_deliver` times."
);

/// How long a wait for outputs lasts before it looks for signals again.
const SIGNAL_CHECK: Duration = Duration::from_millis(20);

/// A pipeline of Python stages, built once and run any number of times.
#[pyclass(frozen, module = "pyper._engine")]
struct Engine {
    pipeline: Pipeline<PyItem, PyItem>,
}

/// One stage, as the Python half describes it.
#[derive(FromPyObject)]
struct StageSpec {
    function: PyItem,
    name: String,
    workers: usize,
    /// `workers="auto"`: `workers` is a most, the count tuned by the run (`auto_workers`).
    auto: bool,
    throttle: usize,
    branch: bool,
    join: bool,
    star_args: bool,
    per_worker: bool,
    retries: u32,
    driver: bool,
    ordered: bool,
    /// For an async stage: the coroutines it runs at once.
    concurrency: usize,
    /// For a remote stage: its cluster, and the function's module and qualified name.
    remote: Option<Py<PyCluster>>,
    module: Option<String>,
    qualname: Option<String>,
    /// For a remote stage: how long a call may take, in seconds.
    timeout: Option<f64>,
}

/// A NATS server with JetStream that remote stages send their items through
/// (`pyper.Cluster`).
#[pyclass(frozen, name = "Cluster", module = "pyper._engine")]
struct PyCluster {
    cluster: pyper::Cluster,
}

#[pymethods]
impl PyCluster {
    /// Connects to the server at `url` (credentials in it, or in the keyword arguments,
    /// or in the `PYPER_NATS_*` variables). Seconds for the durations.
    #[new]
    #[pyo3(signature = (url, *, user = None, password = None, token = None, ack_wait = None,
                        max_deliver = None, lease = None, no_worker_notice = None,
                        fail_without_workers = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: String,
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
        ack_wait: Option<f64>,
        max_deliver: Option<u32>,
        lease: Option<f64>,
        no_worker_notice: Option<f64>,
        fail_without_workers: Option<f64>,
    ) -> PyResult<Self> {
        let seconds = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    PyValueError::new_err(format!("{name} must be a positive number of seconds"))
                })
        };
        let mut builder = pyper::Cluster::builder(&url);
        if let (Some(user), Some(password)) = (&user, &password) {
            builder = builder.user_and_password(user, password);
        } else if user.is_some() || password.is_some() {
            return Err(PyValueError::new_err(
                "give both user and password, or neither",
            ));
        }
        if let Some(token) = &token {
            builder = builder.token(token);
        }
        let mut cluster = py
            .detach(|| builder.connect())
            .map_err(|error| PyRuntimeError::new_err(error.to_string()))?;
        if let Some(value) = ack_wait {
            cluster = cluster.ack_wait(seconds("ack_wait", value)?);
        }
        if let Some(value) = max_deliver {
            cluster = cluster.max_deliver(value);
        }
        if let Some(value) = lease {
            cluster = cluster.lease(seconds("lease", value)?);
        }
        if let Some(value) = no_worker_notice {
            cluster = cluster.no_worker_notice(seconds("no_worker_notice", value)?);
        }
        if let Some(value) = fail_without_workers {
            cluster = cluster.fail_without_workers(seconds("fail_without_workers", value)?);
        }
        Ok(PyCluster { cluster })
    }

    /// The streams of runs on the server now: none once every run has ended.
    fn run_streams(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.cluster.run_streams())
            .map_err(|error| PyRuntimeError::new_err(error.to_string()))
    }

    /// The cluster's settings, its URL without the password.
    fn __repr__(&self) -> String {
        format!("{:?}", self.cluster)
    }
}

/// Serves remote Python tasks (and this package's) from the server at `url`, for ever:
/// `python -m pyper.worker URL`. Returns only by raising why it cannot.
#[pyfunction]
fn serve_worker(py: Python<'_>, url: String) -> PyResult<()> {
    let why = py.detach(|| pyper::serve_python_worker(&url));
    Err(PyRuntimeError::new_err(why))
}

#[pymethods]
impl Engine {
    /// `stages`: a non-empty list of stage specs (see `pyper/_run.py`).
    #[new]
    fn new(stages: Vec<StageSpec>) -> PyResult<Self> {
        let mut tasks = stages.into_iter().map(|stage| {
            let shape = PyShape {
                branch: stage.branch,
                join: stage.join,
                star_args: stage.star_args,
                per_worker: stage.per_worker,
                retries: stage.retries,
                driver: stage.driver,
                concurrency: stage.concurrency,
            };
            let task = match &stage.remote {
                Some(cluster) => {
                    let function = pyper::PythonFunction {
                        module: stage.module.clone().unwrap_or_default(),
                        qualname: stage.qualname.clone().unwrap_or_default(),
                        branch: stage.branch,
                        star_args: stage.star_args,
                    };
                    let timeout = stage
                        .timeout
                        .and_then(|s| Duration::try_from_secs_f64(s).ok());
                    let cluster = &cluster.get().cluster;
                    pyper::python_remote_task(cluster, function, timeout, stage.retries)
                }
                None => python_task(stage.function, shape),
            };
            let task = task.name(stage.name).throttle(stage.throttle);
            let task = match stage.auto {
                true => task.auto_workers(stage.workers),
                false => task.workers(stage.workers),
            };
            match stage.ordered {
                true => task.ordered(),
                false => task,
            }
        });
        let first: Task<PyItem, PyItem> = tasks
            .next()
            .ok_or_else(|| PyValueError::new_err("a pipeline needs at least one task"))?;
        let pipeline = tasks.fold(Pipeline::from(first), |pipeline, task| pipeline | task);
        Ok(Engine { pipeline })
    }

    /// Starts a run (lazily: it starts on the first `next`) with one input: for the
    /// first stage, the pair `(args, kwargs)`.
    #[pyo3(signature = (input, metrics = true))]
    fn run(&self, input: PyItem, metrics: bool) -> Run {
        let output = self.pipeline.run(input);
        let output = match metrics {
            true => output,
            false => output.without_metrics(),
        };
        Run::new(output)
    }
}

/// A run's output, shared with the list of live runs; `None` once the run has ended.
type Shared = Arc<Mutex<Option<Output<PyItem>>>>;

/// The outputs of one run, a Python iterator.
///
/// Frozen, with its state behind locks it never waits for while holding the GIL: a thread
/// may cancel or close a run while another waits for its next output (an async
/// pipeline's reader waits on an executor thread while the loop closes the run).
#[pyclass(frozen, module = "pyper._engine")]
struct Run {
    output: Shared,
    /// Cancels the run without its lock, which a waiting reader holds.
    canceller: Canceller,
    /// Reads the run's metrics without its lock, which a waiting reader holds.
    monitor: Monitor,
}

impl Run {
    fn new(output: Output<PyItem>) -> Self {
        let output: Shared = Arc::new(Mutex::new(Some(output)));
        let mut runs = live_runs().lock().unwrap();
        // Forgets the runs dropped since, so the list stays short.
        runs.retain(|(run, _)| run.strong_count() > 0);
        let (canceller, monitor) = {
            let guard = output.lock().unwrap();
            let output = guard.as_ref().expect("a new run has its output");
            (output.canceller(), output.monitor())
        };
        runs.push((Arc::downgrade(&output), canceller.clone()));
        Run {
            output,
            canceller,
            monitor,
        }
    }
}

/// What a wait for the next output came to.
enum Next {
    Item(PyItem),
    End,
    Failed(pyper::Error),
    Interrupted(PyErr),
}

#[pymethods]
impl Run {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Leaving a `with` block ends the run, whatever happened in it.
    #[pyo3(signature = (*_exception))]
    fn __exit__(&self, py: Python<'_>, _exception: &Bound<'_, pyo3::types::PyTuple>) {
        self.end(py);
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyItem>> {
        match self.wait_next(py, true)? {
            Next::Item(item) => Ok(Some(item)),
            Next::End => Ok(None),
            Next::Failed(error) => Err(into_pyerr(error)),
            Next::Interrupted(error) => Err(error),
        }
    }

    /// The next output, or `default` at the end: for a caller on another thread (an
    /// async pipeline's reader), where `StopIteration` cannot travel.
    fn next_or(&self, py: Python<'_>, default: PyItem) -> PyResult<PyItem> {
        Ok(self.__next__(py)?.unwrap_or(default))
    }

    /// Every output already handed over, without waiting.
    fn ready<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut items = Vec::new();
        if let Ok(mut guard) = self.output.try_lock() {
            if let Some(output) = guard.as_mut() {
                items.extend(std::iter::from_fn(|| output.next_ready()));
            }
        }
        PyList::new(py, items)
    }

    /// Cancels the run if it is still going, and waits for its workers.
    fn close(&self, py: Python<'_>) {
        self.end(py);
    }

    /// Cancels the run at once, without waiting for anything: a reader waiting for its
    /// next output on another thread sees the end.
    fn cancel(&self) {
        self.canceller.cancel();
    }

    /// The end-of-run report: each stage classified, the bottleneck, advice. The same
    /// table as the Rust engine's `Output::report`; live while the run goes on.
    fn report(&self) -> String {
        self.monitor.report().to_string()
    }

    /// The report's figures as plain data: a dict with `elapsed` (seconds), `cores`,
    /// `bottleneck` (a stage's name or `None`), `advice` (a list of lines) and `stages`,
    /// a list with a dict per stage (see `docs/python.md`); a stage with `workers="auto"`
    /// has `tuned` too: the workers active now, the `max`, the `peak` and `why`. Live
    /// while the run goes on, final once it ended.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let report = self.monitor.report();
        let stages = PyList::empty(py);
        for stage in report.stages() {
            let m = &stage.metrics;
            let seconds = |time: Duration| time.as_secs_f64();
            let row = PyDict::new(py);
            row.set_item("name", &m.name)?;
            row.set_item("kind", m.kind.label())?;
            row.set_item("workers", m.workers)?;
            row.set_item("items_in", m.items_in)?;
            row.set_item("items_out", m.items_out)?;
            row.set_item("errors", m.errors)?;
            row.set_item("busy", seconds(m.busy))?;
            row.set_item("cpu", m.cpu.map(seconds))?;
            row.set_item("starved", seconds(m.starved))?;
            row.set_item("blocked", seconds(m.blocked))?;
            row.set_item("gil_wait", m.gil_wait.map(seconds))?;
            row.set_item("utilization", stage.utilization)?;
            row.set_item("cpu_ratio", stage.cpu_ratio)?;
            row.set_item("throughput", stage.throughput)?;
            row.set_item("verdict", stage.bound.label())?;
            row.set_item("waits_for_gil", stage.waits_for_gil)?;
            row.set_item("suggested_workers", stage.suggested_workers)?;
            // Only for a stage with `workers="auto"`: what the run chose, and why.
            if let Some(tuned) = &m.tuned {
                let choice = PyDict::new(py);
                choice.set_item("workers", tuned.workers)?;
                choice.set_item("max", tuned.max)?;
                choice.set_item("peak", tuned.peak)?;
                choice.set_item("why", tuned.why)?;
                row.set_item("tuned", choice)?;
            }
            stages.append(row)?;
        }
        let metrics = PyDict::new(py);
        metrics.set_item("elapsed", report.elapsed().as_secs_f64())?;
        metrics.set_item("cores", report.cores())?;
        let bottleneck = report.bottleneck().map(|stage| stage.metrics.name.clone());
        metrics.set_item("bottleneck", bottleneck)?;
        metrics.set_item("advice", report.advice())?;
        metrics.set_item("stages", stages)?;
        Ok(metrics)
    }
}

impl Run {
    fn wait_next(&self, py: Python<'_>, check_signals: bool) -> PyResult<Next> {
        let mut guard = self
            .output
            .try_lock()
            .map_err(|_| PyValueError::new_err("this run is already being read"))?;
        let Some(output) = guard.as_mut() else {
            return Ok(Next::End);
        };
        if let Some(item) = output.next_ready() {
            return Ok(Next::Item(item));
        }
        let next = loop {
            match py.detach(|| output.next_within(SIGNAL_CHECK)) {
                Poll::Ready(Some(Ok(item))) => break Next::Item(item),
                Poll::Ready(Some(Err(error))) => break Next::Failed(error),
                Poll::Ready(None) => break Next::End,
                Poll::Pending if check_signals => {
                    if let Err(error) = py.check_signals() {
                        break Next::Interrupted(error);
                    }
                }
                Poll::Pending => {}
            }
        };
        drop(guard);
        if !matches!(next, Next::Item(_)) {
            self.end(py);
        }
        Ok(next)
    }

    /// Ends the run: cancels it if it is going, and waits for its workers (detached).
    fn end(&self, py: Python<'_>) {
        let output = loop {
            match self.output.try_lock() {
                Ok(mut guard) => break guard.take(),
                Err(TryLockError::Poisoned(poisoned)) => break poisoned.into_inner().take(),
                // Another thread reads the run: the cancel ends its wait soon.
                Err(TryLockError::WouldBlock) => {
                    self.canceller.cancel();
                    py.detach(|| std::thread::sleep(Duration::from_millis(1)));
                }
            }
        };
        if let Some(mut output) = output {
            py.detach(|| output.cancel());
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let output = match self.output.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(output) = output {
            // Garbage collection drops a run on whichever thread it runs, which may be
            // one the run's workers wait for (its own, or a pool thread of a fork), so
            // the wait for the workers happens on a thread of its own; the exit handler
            // waits for that one.
            output.canceller().cancel();
            reap(output);
        }
    }
}

/// The threads that wait for the workers of dropped runs (see `Drop for Run`).
fn reapers() -> &'static Mutex<Vec<std::thread::JoinHandle<()>>> {
    static REAPERS: OnceLock<Mutex<Vec<std::thread::JoinHandle<()>>>> = OnceLock::new();
    REAPERS.get_or_init(Mutex::default)
}

/// Waits for a cancelled run's workers on a thread of its own (or here, if no thread can
/// be started).
fn reap(output: Output<PyItem>) {
    let mut reapers = reapers()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    reapers.retain(|reaper| !reaper.is_finished());
    // The output goes over a channel once the thread runs, so a failed spawn leaves it here.
    let (send, receive) = std::sync::mpsc::channel::<Output<PyItem>>();
    let spawned = std::thread::Builder::new()
        .name("pyper:reaper".into())
        .spawn(move || drop(receive.recv()));
    match spawned {
        Ok(reaper) => {
            reapers.push(reaper);
            // The reaper receives until this send: it cannot fail.
            let _ = send.send(output);
        }
        Err(_) => drop(Python::try_attach(|py| py.detach(|| drop(output)))),
    }
}

/// A run that may still have workers, and what cancels it without its lock.
type LiveRun = (Weak<Mutex<Option<Output<PyItem>>>>, Canceller);

/// Takes a run's output once no other thread holds it (a reader of a cancelled run lets go
/// within a wait). Call it detached.
fn take_output(run: &Mutex<Option<Output<PyItem>>>) -> Option<Output<PyItem>> {
    loop {
        match run.try_lock() {
            Ok(mut guard) => return guard.take(),
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner().take(),
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The runs that may still have workers: what the interpreter's exit ends.
fn live_runs() -> &'static Mutex<Vec<LiveRun>> {
    static RUNS: OnceLock<Mutex<Vec<LiveRun>>> = OnceLock::new();
    RUNS.get_or_init(Mutex::default)
}

/// Cancels every run still going and waits for its workers: registered with `atexit`,
/// so the interpreter never finalizes under a worker that is using it.
#[pyfunction]
fn end_all_runs(py: Python<'_>) {
    let runs = std::mem::take(&mut *live_runs().lock().unwrap());
    // First every cancel, which ends the waits of readers on other threads.
    for (_, canceller) in &runs {
        canceller.cancel();
    }
    for run in runs.iter().filter_map(|(run, _)| run.upgrade()) {
        // Detached: a reader on another thread may hold the lock until its wait ends.
        if let Some(output) = py.detach(|| take_output(&run)) {
            py.detach(|| drop(output));
        }
    }
    let reapers = std::mem::take(&mut *reapers().lock().unwrap_or_else(|p| p.into_inner()));
    for reaper in reapers {
        py.detach(|| drop(reaper.join()));
    }
}

/// The Python exception a run's error stands for: the original one if a Python callable
/// raised it, else a `RuntimeError` that says what went wrong and where.
fn into_pyerr(error: pyper::Error) -> PyErr {
    // The error's own message, then its causes': where it happened, and why.
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(error) = cause {
        message = format!("{message}: {error}");
        cause = error.source();
    }
    if error.downcast_ref::<pyper::DeadLetter>().is_some() {
        return DeadLetter::new_err(message);
    }
    // A remote call that overran its `timeout`, as a local one fails.
    if error.downcast_ref::<pyper::TimedOut>().is_some() {
        return pyo3::exceptions::PyTimeoutError::new_err(message);
    }
    match error.into_source().map(|source| source.downcast::<PyErr>()) {
        Some(Ok(original)) => *original,
        _ => PyRuntimeError::new_err(message),
    }
}

#[pymodule]
fn _engine(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Engine>()?;
    module.add_class::<Run>()?;
    module.add_class::<PyCluster>()?;
    module.add_function(wrap_pyfunction!(serve_worker, module)?)?;
    module.add("DeadLetter", module.py().get_type::<DeadLetter>())?;
    module.add_function(wrap_pyfunction!(end_all_runs, module)?)?;
    Ok(())
}
