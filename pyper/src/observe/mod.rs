//! Observation: what a run's metrics say (the [`Metrics`] snapshot, the [`Report`]), how
//! they are shown (progress bars, a Chrome trace, `tracing` events), and the options that
//! say which of these a run records, settled before it starts.
//!
//! This layer reads the engine's meters and never drives a run: the API asks it to start
//! the progress bars and calls [`run_ended`] once a run's workers are gone.

use crate::engine::run::RunState;
use metrics::Metrics;
use report::Report;

/// How a run records and shows itself. Settled before the run starts, from the
/// environment and the `Output` methods, and handed to the engine as it starts.
#[derive(Clone, Debug)]
pub(crate) struct RunOptions {
    /// Record metrics (`PYPER_METRICS=off`, `Output::without_metrics`).
    pub(crate) metrics: bool,
    /// Record a trace of every worker's spans (`PYPER_TRACE`, `Output::record_trace`).
    pub(crate) trace: bool,
    /// The file the trace streams to (`PYPER_TRACE`); else a temporary file.
    pub(crate) trace_file: Option<std::path::PathBuf>,
    /// Draw progress bars (`PYPER_PROGRESS`, `Output::progress`).
    pub(crate) progress: bool,
}

impl RunOptions {
    pub(crate) fn from_env() -> Self {
        let trace_file = trace::path_from_env();
        RunOptions {
            metrics: metrics::enabled_by_env(),
            trace: trace_file.is_some(),
            trace_file,
            progress: progress::wanted_by_env(),
        }
    }

    /// Bars read the metrics, so a run without them draws none.
    pub(crate) fn shows_progress(&self) -> bool {
        self.progress && (self.metrics || self.trace)
    }
}

/// Everything that happens once a run's workers are gone: the bars are cleared, the
/// trace's last spans written, and the stages' figures sent to `tracing`.
pub(crate) fn run_ended(run: &RunState, bars: Option<progress::Bars>) {
    if let Some(bars) = bars {
        bars.stop();
    }
    if !run.meter.is_enabled() {
        return;
    }
    trace::run_ended(&run.meter);
    if tracing::enabled!(target: "pyper", tracing::Level::INFO) {
        emit_events(Report::new(Metrics::collect(&run.meter)));
    }
}

fn emit_events(report: Report) {
    let millis = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    for stage in report.stages() {
        let m = &stage.metrics;
        tracing::info!(
            target: "pyper",
            stage = %m.name,
            kind = m.kind.label(),
            workers = m.workers,
            items_in = m.items_in,
            items_out = m.items_out,
            errors = m.errors,
            busy_ms = millis(m.busy),
            cpu_ms = m.cpu.map(millis),
            starved_ms = millis(m.starved),
            blocked_ms = millis(m.blocked),
            bound = stage.bound.label(),
            "stage finished"
        );
    }
    tracing::info!(
        target: "pyper",
        elapsed_ms = millis(report.elapsed()),
        bottleneck = report.bottleneck().map(|stage| stage.metrics.name.as_str()),
        advice = ?report.advice(),
        "pipeline finished"
    );
}

pub(crate) mod metrics;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod trace;
