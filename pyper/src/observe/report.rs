//! The end-of-run report: where the time went, which stage limits the pipeline, and what
//! to change, in the terms of the concurrency guides' question: is this work CPU-bound or does it
//! wait, and how many workers of which kind should it get?

use std::fmt;
use std::time::Duration;

use crate::observe::metrics::{Metrics, StageKind, StageMetrics};

/// What a stage's workers mostly did.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// Busy, and on the CPU most of that time: more cores (or cheaper items) help.
    Cpu,
    /// Busy, but mostly off the CPU: waiting on IO, sleeps or locks. More workers, or an
    /// async task, help.
    Waiting,
    /// Mostly waiting for input: the limit is upstream.
    Starved,
    /// Mostly waiting to hand on outputs: the limit is downstream.
    Blocked,
    /// Did next to nothing (no items, or a run too short to tell).
    Idle,
}

impl Bound {
    /// How the report's table prints it.
    pub fn label(self) -> &'static str {
        match self {
            Bound::Cpu => "CPU-bound",
            Bound::Waiting => "IO-bound / waiting",
            Bound::Starved => "starved by upstream",
            Bound::Blocked => "blocked by downstream",
            Bound::Idle => "idle",
        }
    }
}

/// A stage that wants the CPU (is on it, or ready and waiting for a core) for at least this
/// share of its working time is CPU-bound.
const CPU_BOUND: f64 = 0.5;

/// One stage's line of the report.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct StageReport {
    /// The raw figures this line is computed from.
    pub metrics: StageMetrics,
    /// Items per second over the whole run.
    pub throughput: f64,
    /// The share of the workers' time spent working (0 to 1).
    pub utilization: f64,
    /// CPU time over working time (0 to 1), where the platform measures it.
    pub cpu_ratio: Option<f64>,
    /// What the workers mostly did.
    pub bound: Bound,
}

/// What a run's metrics say: per stage, how it spent its time and what bounds it; which
/// stage is the bottleneck; and what to change. Print it for a table:
///
/// ```
/// use std::time::Duration;
/// use pyper::{task, Bound};
///
/// let wait = task(|x: u64| {
///     std::thread::sleep(Duration::from_millis(2)); // a request, say
///     x
/// })
/// .name("fetch");
/// let mut output = (wait | task(|x: u64| x + 1).name("parse")).feed(0..50);
/// assert_eq!(output.by_ref().count(), 50);
///
/// let report = output.report();
/// println!("{report}");
/// let fetch = report.stage("fetch").unwrap();
/// assert_eq!(fetch.bound, Bound::Waiting);
/// assert_eq!(report.bottleneck().unwrap().metrics.name, "fetch");
/// ```
#[derive(Clone, Debug)]
pub struct Report {
    elapsed: Duration,
    cores: usize,
    stages: Vec<StageReport>,
    bottleneck: Option<usize>,
    consumer_bound: bool,
}

impl Report {
    pub(crate) fn new(metrics: Metrics) -> Self {
        let elapsed = metrics.elapsed;
        let stages: Vec<StageReport> = metrics
            .stages
            .into_iter()
            .map(|stage| StageReport::new(stage, elapsed))
            .collect();
        let bottleneck = stages
            .iter()
            .enumerate()
            .filter(|(_, stage)| matches!(stage.bound, Bound::Cpu | Bound::Waiting))
            .max_by(|(_, a), (_, b)| a.utilization.total_cmp(&b.utilization))
            .map(|(at, _)| at);
        let consumer_bound = bottleneck.is_none()
            && stages
                .last()
                .is_some_and(|last| last.bound == Bound::Blocked);
        Report {
            elapsed,
            cores: metrics.cores,
            stages,
            bottleneck,
            consumer_bound,
        }
    }

    /// The run's wall time.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Every stage, in pipeline order.
    pub fn stages(&self) -> &[StageReport] {
        &self.stages
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|stage| stage.metrics.name == name)
    }

    /// The stage that limits the pipeline: of the stages that are busy rather than
    /// waiting on their neighbours, the busiest. `None` when every stage waits on the
    /// consumer (see [`consumer_bound`](Report::consumer_bound)) or nothing ran.
    pub fn bottleneck(&self) -> Option<&StageReport> {
        self.bottleneck.map(|at| &self.stages[at])
    }

    /// Whether the pipeline mostly waited for the code reading its output.
    pub fn consumer_bound(&self) -> bool {
        self.consumer_bound
    }

    /// What to change, in words and numbers: one line for the bottleneck, then one for
    /// each stage that waits on it.
    pub fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        if let Some(at) = self.bottleneck {
            advice.push(self.bottleneck_advice(&self.stages[at]));
        } else if self.consumer_bound {
            advice.push(
                "the pipeline waits on its consumer: the code reading the output is the \
                 slowest part, so speed that up (or give its work to a stage with workers)"
                    .to_owned(),
            );
        }
        for (at, stage) in self.stages.iter().enumerate() {
            if Some(at) == self.bottleneck {
                continue;
            }
            let name = &stage.metrics.name;
            let elapsed = self.elapsed;
            match stage.bound {
                Bound::Starved => advice.push(format!(
                    "`{name}` is starved: its workers waited for input {} of the time; \
                     more workers here won't help",
                    percent(stage.metrics.starved_share(elapsed))
                )),
                Bound::Blocked => advice.push(format!(
                    "`{name}` is blocked by downstream: its workers waited to hand on \
                     outputs {} of the time",
                    percent(stage.metrics.blocked_share(elapsed))
                )),
                _ => {}
            }
        }
        advice
    }

    fn bottleneck_advice(&self, stage: &StageReport) -> String {
        let m = &stage.metrics;
        let name = &m.name;
        let on_cpu = stage.cpu_ratio.unwrap_or(0.0);
        let waiting_for_core = m.cpu_demand().unwrap_or(0.0) - on_cpu;
        let cpu = match (stage.cpu_ratio, stage.bound) {
            (None, _) => "CPU time not measured here".to_owned(),
            (Some(_), Bound::Cpu) if waiting_for_core >= 0.05 => format!(
                "{} CPU per item, and {} more ready but waiting for a free core",
                percent(on_cpu),
                percent(waiting_for_core)
            ),
            (Some(ratio), _) => format!("{} CPU per item", percent(ratio)),
        };
        let cores = self.cores;
        let workers = m.workers;
        let busy = percent(stage.utilization);
        match (stage.bound, m.kind) {
            (Bound::Cpu, StageKind::Input) => format!(
                "the input iterator is the bottleneck and CPU-bound ({cpu}): make it \
                 cheaper, or move its work into a task with workers"
            ),
            (Bound::Waiting, StageKind::Input) => format!(
                "the input iterator is the bottleneck and waits ({cpu}): fetch ahead, \
                 or feed a cheap iterator and do the waiting in a task with workers"
            ),
            (Bound::Cpu, StageKind::Async) => format!(
                "`{name}` is CPU-bound ({cpu}) inside an async task, which \
                 stalls the runtime: make it a sync task with {cores} workers"
            ),
            (Bound::Cpu, _) if workers >= cores => format!(
                "`{name}` is CPU-bound ({cpu}) and already has {workers} \
                 workers on {cores} cores: more workers won't help; make each item cheaper"
            ),
            (Bound::Cpu, _) if self.cpu_bound_workers() >= cores => format!(
                "`{name}` is CPU-bound ({cpu}) with {workers} workers, but the CPU-bound \
                 stages already have {} workers on {cores} cores: give it workers from \
                 the others rather than more in all",
                self.cpu_bound_workers()
            ),
            (Bound::Cpu, _) => format!(
                "`{name}` is CPU-bound ({cpu}) with {workers} workers on {cores} cores: \
                 raise workers to {}",
                workers + cores - self.cpu_bound_workers()
            ),
            (Bound::Waiting, StageKind::Async) => format!(
                "`{name}` is IO-bound ({cpu}) with its {workers} futures in \
                 flight {busy} of the time: raise workers"
            ),
            (Bound::Waiting, _) => format!(
                "`{name}` is IO-bound ({cpu}), with {workers} of {workers} \
                 workers busy {busy} of the time: raise workers (to {}, say) or make it async",
                (workers * 4).max(8)
            ),
            _ => format!("`{name}` is {}", stage.bound.label()),
        }
    }
}

impl Report {
    /// The workers of the thread and process stages that are CPU-bound: the cores they
    /// compete for are the machine's, whichever stage is the bottleneck.
    fn cpu_bound_workers(&self) -> usize {
        self.stages
            .iter()
            .filter(|stage| stage.bound == Bound::Cpu)
            .filter(|stage| matches!(stage.metrics.kind, StageKind::Threads | StageKind::Process))
            .map(|stage| stage.metrics.workers)
            .sum()
    }
}

impl StageReport {
    fn new(metrics: StageMetrics, elapsed: Duration) -> Self {
        let items = metrics.items();
        let seconds = elapsed.as_secs_f64();
        let throughput = if seconds > 0.0 {
            items as f64 / seconds
        } else {
            0.0
        };
        let utilization = metrics.utilization(elapsed);
        let starved = metrics.starved_share(elapsed);
        let blocked = metrics.blocked_share(elapsed);
        let cpu_ratio = metrics.cpu_ratio();
        let cpu_demand = metrics.cpu_demand();
        let bound = if items == 0 || utilization.max(starved).max(blocked) < 0.01 {
            Bound::Idle
        } else if blocked >= utilization && blocked >= starved {
            Bound::Blocked
        } else if starved >= utilization {
            Bound::Starved
        } else if cpu_demand.unwrap_or(0.0) >= CPU_BOUND {
            Bound::Cpu
        } else {
            Bound::Waiting
        };
        StageReport {
            metrics,
            throughput,
            utilization,
            cpu_ratio,
            bound,
        }
    }
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline report: {:.2?} on {} cores",
            self.elapsed, self.cores
        )?;
        writeln!(
            f,
            "{:<16} {:<8} {:>7} {:>9} {:>11} {:>6} {:>6} {:>8} {:>8}  bound",
            "stage", "kind", "workers", "items", "items/s", "busy", "cpu", "starved", "blocked",
        )?;
        for stage in &self.stages {
            let m = &stage.metrics;
            let marker = match self.bottleneck() {
                Some(b) if b.metrics.name == m.name => "  ← bottleneck",
                _ => "",
            };
            writeln!(
                f,
                "{:<16} {:<8} {:>7} {:>9} {:>11.1} {:>6} {:>6} {:>8} {:>8}  {}{}",
                truncate(&m.name, 16),
                m.kind.label(),
                m.workers,
                m.items(),
                stage.throughput,
                percent(stage.utilization),
                stage.cpu_ratio.map_or("-".to_owned(), percent),
                percent(m.starved_share(self.elapsed)),
                percent(m.blocked_share(self.elapsed)),
                stage.bound.label(),
                marker
            )?;
        }
        for line in self.advice() {
            writeln!(f, "- {line}")?;
        }
        Ok(())
    }
}

fn truncate(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_owned();
    }
    let mut short: String = name.chars().take(width - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread stage that spent `busy` of 1 s per worker working, `cpu` of it on a core.
    fn stage(name: &str, workers: usize, busy: f64, cpu: f64) -> StageMetrics {
        let per_worker = Duration::from_secs_f64(busy);
        let total = per_worker * workers as u32;
        StageMetrics {
            name: name.to_owned(),
            kind: StageKind::Threads,
            workers,
            items_in: 100,
            items_out: 100,
            errors: 0,
            queued: 0,
            busy_workers: 0,
            busy: total,
            cpu: Some(total.mul_f64(cpu)),
            runnable: Duration::ZERO,
            starved: Duration::from_secs(workers as u64).saturating_sub(total),
            blocked: Duration::ZERO,
        }
    }

    fn report(cores: usize, stages: Vec<StageMetrics>) -> Report {
        Report::new(Metrics {
            elapsed: Duration::from_secs(1),
            cores,
            stages,
        })
    }

    #[test]
    fn a_cpu_bound_bottleneck_is_told_how_many_cores_are_free() {
        let alone = report(4, vec![stage("parse", 1, 0.95, 0.97)]);
        assert_eq!(alone.bottleneck().unwrap().bound, Bound::Cpu);
        assert!(alone.advice()[0].ends_with("raise workers to 4"), "{alone}");

        let shared = report(
            4,
            vec![stage("parse", 1, 0.95, 0.97), stage("hash", 2, 0.6, 0.97)],
        );
        assert!(
            shared.advice()[0].ends_with("raise workers to 2"),
            "{shared}"
        );

        let full = report(
            2,
            vec![stage("parse", 1, 0.95, 0.97), stage("hash", 1, 0.6, 0.97)],
        );
        assert!(
            full.advice()[0].contains("give it workers from the others"),
            "{full}"
        );

        let enough = report(2, vec![stage("parse", 2, 0.95, 0.97)]);
        assert!(
            enough.advice()[0].contains("more workers won't help"),
            "{enough}"
        );
    }

    #[test]
    fn a_busy_stage_off_the_cpu_is_waiting_and_told_to_raise_workers() {
        let report = report(
            2,
            vec![stage("fetch", 4, 0.99, 0.02), stage("parse", 1, 0.1, 1.0)],
        );
        let fetch = report.stage("fetch").unwrap();
        assert_eq!(fetch.bound, Bound::Waiting);
        assert_eq!(report.stage("parse").unwrap().bound, Bound::Starved);
        assert!(report.advice()[0].contains("raise workers (to 16, say) or make it async"));
    }
}
