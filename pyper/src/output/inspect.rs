//! Seeing inside a run from its [`Output`]: its metrics and report, a [`Monitor`] that
//! reads them from elsewhere, the run options (metrics, progress bars, a trace), and the
//! trace itself.

use std::fmt;

use crate::engine::run::RunState;
use crate::engine::sync::Arc;
use crate::error::Error;
use crate::observe::metrics::Metrics;
use crate::observe::report::Report;
use crate::observe::RunOptions;
use crate::Output;

impl<O> Output<O> {
    /// A snapshot of the run's per-stage metrics: items in and out, errors, queue depth,
    /// busy workers, and where the workers' time went. Live while the run goes on, final
    /// once it ended. Empty before the first item is asked for, since a run starts then.
    pub fn metrics(&self) -> Metrics {
        Metrics::collect(&self.run.meter)
    }

    /// The run's [`Report`]: each stage classified as CPU-bound, waiting, starved or
    /// blocked, the bottleneck, and advice. Most useful once the output is exhausted.
    pub fn report(&self) -> Report {
        Report::new(self.metrics())
    }

    /// A handle that reads this run's metrics from anywhere, for instance from another
    /// thread while this one iterates the output.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let mut output = task(|x: u32| x * 2).feed(0..100);
    /// let monitor = output.monitor();
    /// for item in output.by_ref() {
    ///     item.unwrap();
    ///     let _live = monitor.metrics(); // items so far, busy workers, queue depths
    /// }
    /// assert_eq!(monitor.metrics().stage("stage 1").unwrap().items_out, 100);
    /// ```
    pub fn monitor(&self) -> Monitor {
        Monitor {
            run: Arc::clone(&self.run),
        }
    }

    /// Turns metrics off for this run: no clock reads, no counters. Call it before the
    /// first item is taken; the [`METRICS_ENV`](crate::METRICS_ENV) variable does the
    /// same for every run. Metrics cost little (a few percent on the cheapest items there
    /// are: the benchmark's `overhead-nometrics` row), so this is for measuring that cost,
    /// or for the last few percent.
    pub fn without_metrics(self) -> Self {
        self.settle("without_metrics", |options| options.metrics = false)
    }

    /// Shows live progress bars while the run goes on: one line per stage with its
    /// outputs, throughput, queue depth and busy workers. Call it before the first item
    /// is taken; `PYPER_PROGRESS=1` does the same for every run.
    ///
    /// The bars draw on stderr, and only when both stdout and stderr are terminals, so
    /// piped or redirected output never gets escape codes. They are cleared when the run
    /// ends, however it ends. They read the run's metrics, so a run
    /// [`without_metrics`](Output::without_metrics) draws none. Lines your program prints
    /// to the terminal while they draw may be overdrawn; print after the run, or to a file.
    pub fn progress(self) -> Self {
        self.settle("progress", |options| options.progress = true)
    }

    /// Records a timeline of the run: every worker's batches and waits, for
    /// [`write_trace`](Output::write_trace). Call it before the first item is taken. The
    /// timeline streams to an anonymous temporary file as the run goes (the system removes
    /// it once the run is gone), so its memory stays flat however long the run.
    /// `PYPER_TRACE=trace.json` records every run, streaming its trace to that file; the
    /// file is a valid trace after every write, however the run ends.
    pub fn record_trace(self) -> Self {
        self.settle("record_trace", |options| options.trace = true)
    }

    /// Applies a run option, or refuses it once the run has started: the run then fails
    /// with a configuration error naming the option, rather than ignoring it.
    fn settle(mut self, option: &str, apply: impl FnOnce(&mut RunOptions)) -> Self {
        if self.has_started() {
            self.run.fail(Error::config(
                None,
                format!(
                    "`Output::{option}` was called after the run started; \
                     run options must be set before the first item is taken"
                ),
            ));
        } else {
            apply(&mut self.options);
        }
        self
    }

    /// Writes the timeline recorded so far as a Chrome trace (JSON in the Trace Event
    /// Format), one track per worker: open it in <https://ui.perfetto.dev> or
    /// `chrome://tracing`. Empty of spans unless [`record_trace`](Output::record_trace)
    /// was called (or `PYPER_TRACE` set). It copies the trace's file, so it may be called
    /// while the run goes, and as often as wanted.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let mut output = (task(|x: u32| x + 1).workers(2) | task(|x: u32| x * 2))
    ///     .feed(0..1000)
    ///     .record_trace();
    /// assert_eq!(output.by_ref().count(), 1000);
    /// let mut json = Vec::new();
    /// output.write_trace(&mut json)?;
    /// assert!(String::from_utf8(json).unwrap().contains("\"traceEvents\""));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write_trace(&self, mut out: impl std::io::Write) -> std::io::Result<()> {
        crate::observe::trace::write(&self.run.meter, &mut out)
    }
}

/// Reads a run's metrics and report from anywhere; see [`Output::monitor`].
#[derive(Clone)]
pub struct Monitor {
    run: Arc<RunState>,
}

impl Monitor {
    /// See [`Output::metrics`].
    pub fn metrics(&self) -> Metrics {
        Metrics::collect(&self.run.meter)
    }

    /// See [`Output::report`].
    pub fn report(&self) -> Report {
        Report::new(self.metrics())
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}
