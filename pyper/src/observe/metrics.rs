//! Live per-stage metrics of a run: what [`Output::metrics`](crate::Output::metrics)
//! returns.

use std::sync::OnceLock;
use std::time::Duration;

pub use crate::engine::meter::StageKind;
use crate::engine::meter::{Activity, RunMeter};

/// The environment variable that turns metrics off for every run: `PYPER_METRICS=off`
/// (or `0`, `false`). They are on by default; see [`Output::without_metrics`](crate::Output::without_metrics).
pub const METRICS_ENV: &str = "PYPER_METRICS";

/// A snapshot of a run's stages, in pipeline order (the input iterator, if any, first).
///
/// ```
/// use pyper::task;
///
/// let mut output = task(|x: u64| x + 1).workers(2).feed(0..1000);
/// let total: u64 = output.by_ref().map(Result::unwrap).sum();
/// assert_eq!(total, 500_500);
///
/// let metrics = output.metrics();
/// let stage = &metrics.stages[1]; // [0] is the input iterator
/// assert_eq!((stage.items_in, stage.items_out), (1000, 1000));
/// assert_eq!(stage.errors, 0);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// From the start of the run to its end, or to now while it runs.
    pub elapsed: Duration,
    /// The cores the machine offers (`std::thread::available_parallelism`).
    pub cores: usize,
    /// One entry per stage.
    pub stages: Vec<StageMetrics>,
}

/// What one stage has done so far. Times are summed over the stage's workers, so a stage
/// of 4 workers over a 1 s run has 4 s to spread between busy, starved and blocked.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct StageMetrics {
    /// The stage's name, as in errors.
    pub name: String,
    /// What runs it.
    pub kind: StageKind,
    /// Its workers (threads, processes, or futures in flight for an async stage).
    pub workers: usize,
    /// Items its function was called with (for the input: items pulled).
    pub items_in: u64,
    /// Outputs it handed on downstream.
    pub items_out: u64,
    /// Failures it reported as the run's error: 0, or 1 for the stage whose failure
    /// stopped the run. (Attempts that a retry made good are not failures.)
    pub errors: u64,
    /// Items waiting in its input queue right now.
    pub queued: usize,
    /// Workers busy right now (for an async stage: futures in flight).
    pub busy_workers: usize,
    /// Time its workers spent working.
    pub busy: Duration,
    /// CPU time its workers used, where the platform has a per-thread CPU clock.
    pub cpu: Option<Duration>,
    /// Time its worker threads were ready to run but waited for a free core (Linux, and
    /// only once the workers ended): CPU-bound work on a crowded machine.
    pub runnable: Duration,
    /// Time its workers waited for input.
    pub starved: Duration,
    /// Time its workers waited for room in a full output queue, or their turn to hand
    /// on outputs in order.
    pub blocked: Duration,
}

impl StageMetrics {
    /// Mean wall time per item.
    pub fn wall_per_item(&self) -> Option<Duration> {
        per_item(self.busy, self.items())
    }

    /// Mean CPU time per item.
    pub fn cpu_per_item(&self) -> Option<Duration> {
        per_item(self.cpu?, self.items())
    }

    /// The share of its working time spent on the CPU: near 1 for CPU-bound work, near 0
    /// for work that waits (IO, sleeps, locks).
    pub fn cpu_ratio(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (!self.busy.is_zero()).then(|| (cpu.as_secs_f64() / self.busy.as_secs_f64()).min(1.0))
    }

    /// The share of its working time it wanted the CPU: on it, or ready and waiting for a
    /// core. This is what tells CPU-bound work from waiting even when other programs
    /// crowd the machine.
    pub fn cpu_demand(&self) -> Option<f64> {
        let cpu = self.cpu? + self.runnable;
        (!self.busy.is_zero()).then(|| (cpu.as_secs_f64() / self.busy.as_secs_f64()).min(1.0))
    }

    /// The share of the workers' time (`workers × elapsed`) spent working.
    pub fn utilization(&self, elapsed: Duration) -> f64 {
        share(self.busy, self.workers, elapsed)
    }

    /// The share of the workers' time spent waiting for input.
    pub fn starved_share(&self, elapsed: Duration) -> f64 {
        share(self.starved, self.workers, elapsed)
    }

    /// The share of the workers' time spent waiting to hand on outputs.
    pub fn blocked_share(&self, elapsed: Duration) -> f64 {
        share(self.blocked, self.workers, elapsed)
    }

    /// The items it worked on: taken in, or for the input iterator, pulled.
    pub(crate) fn items(&self) -> u64 {
        match self.kind {
            StageKind::Input => self.items_out,
            _ => self.items_in,
        }
    }
}

fn per_item(total: Duration, items: u64) -> Option<Duration> {
    (items > 0).then(|| Duration::from_nanos((total.as_nanos() / u128::from(items)) as u64))
}

fn share(time: Duration, workers: usize, elapsed: Duration) -> f64 {
    let capacity = elapsed.as_secs_f64() * workers.max(1) as f64;
    if capacity <= 0.0 {
        return 0.0;
    }
    (time.as_secs_f64() / capacity).clamp(0.0, 1.0)
}

impl Metrics {
    pub(crate) fn collect(run: &RunMeter) -> Self {
        let elapsed = run.elapsed();
        let stages = run
            .stages()
            .iter()
            .map(|stage| {
                let meters = stage.meters();
                let mut metrics = StageMetrics {
                    name: stage.name.to_string(),
                    kind: stage.kind,
                    workers: stage.workers,
                    items_in: 0,
                    items_out: 0,
                    errors: stage.errors.load(std::sync::atomic::Ordering::Relaxed),
                    queued: stage.queued.as_ref().map_or(0, |queued| queued()),
                    busy_workers: 0,
                    busy: Duration::ZERO,
                    cpu: None,
                    runnable: Duration::ZERO,
                    starved: Duration::ZERO,
                    blocked: Duration::ZERO,
                };
                for meter in &meters {
                    metrics.items_in += meter.items_in.get();
                    metrics.items_out += meter.items_out.get();
                    metrics.busy += Duration::from_nanos(meter.busy.get());
                    metrics.starved += meter.starved();
                    metrics.runnable += Duration::from_nanos(meter.runnable.get());
                    metrics.blocked += Duration::from_nanos(meter.blocked.get());
                    if let Some(cpu) = meter.cpu_time() {
                        metrics.cpu = Some(metrics.cpu.unwrap_or_default() + cpu);
                    }
                    metrics.busy_workers += match stage.kind {
                        StageKind::Async => meter.in_flight.get() as usize,
                        _ => usize::from(meter.activity() == Activity::Busy),
                    };
                }
                metrics
            })
            .collect();
        Metrics {
            elapsed,
            cores: cores(),
            stages,
        }
    }

    /// The stage called `name`, if there is one.
    pub fn stage(&self, name: &str) -> Option<&StageMetrics> {
        self.stages.iter().find(|stage| stage.name == name)
    }
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Whether metrics are on unless a run says otherwise: yes, but for `PYPER_METRICS=off`.
pub(crate) fn enabled_by_env() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        !matches!(
            std::env::var(METRICS_ENV).as_deref(),
            Ok("0" | "off" | "false" | "no")
        )
    })
}
