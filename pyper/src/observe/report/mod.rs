//! The end-of-run report: where the time went, which stage limits the pipeline, and what
//! to change, in the terms of the concurrency guides' question: is this work CPU-bound or does it
//! wait, and how many workers of which kind should it get?
//!
//! Each stage is classified from its measured times (see [`StageReport::bound`]), and the
//! advice gives numbers computed from the run: the workers that keep the cores busy with
//! a CPU-bound stage's work (the cores, for work that only computes), and the workers an
//! IO-bound stage needs to keep up with the rest of the pipeline.

use std::fmt;
use std::time::Duration;

use crate::observe::metrics::{Metrics, StageKind, StageMetrics};

mod advice;

/// What a stage's workers mostly did.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// Busy, and its items want a core (on one, or ready and waiting for one) most of
    /// their time, or a good part of it with workers that together want every core: more
    /// cores, or cheaper items, help; more workers than keep the cores busy don't.
    Cpu,
    /// Busy, but mostly off the CPU: waiting on IO, sleeps or locks. More workers, or an
    /// async task, help.
    Waiting,
    /// An async stage whose polls block their runtime thread: a blocking call (a sync
    /// sleep, sync IO, a lock) inside async code. Every other future on that thread
    /// waits meanwhile, so more futures in flight don't help: the call belongs in an
    /// async wait, or in a sync task with threads of its own.
    BlocksExecutor,
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
            Bound::BlocksExecutor => "blocks its executor",
            Bound::Starved => "starved by upstream",
            Bound::Blocked => "blocked by downstream",
            Bound::Idle => "idle",
        }
    }
}

/// A stage that wants a core for at least this share of the time it spends on items is
/// CPU-bound (see [`StageMetrics::cpu_demand`]).
const CPU_BOUND: f64 = 0.5;

/// So is a stage that wants a core for at least this share, if its workers together want
/// every core: they take turns on the cores, and their waits for one another (on a lock
/// whose holder is waiting for a core, say) look like sleep. A stage that only waits
/// wants a core a few percent of its time, however many workers it has.
const CPU_SATURATING: f64 = 0.2;

/// A thread stage whose items gave up their core this often each, on average, waits (on
/// IO, sleeps or locks) rather than computes: see [`StageMetrics::gave_up_core_per_item`].
const WAITS_PER_ITEM: f64 = 0.5;

/// An async stage whose items stall their runtime thread for this long each, on average,
/// blocks its executor: the length of a stall (see [`StageMetrics::stalled`]). A future
/// that awaits its waits holds the thread for microseconds per item (a poll that only
/// looks long because the thread was preempted is not counted, when the preemption is
/// measured); one that makes a blocking call holds it for the whole call.
const STALL_PER_ITEM: Duration = Duration::from_millis(1);

/// A Python stage on threads whose workers wait for the GIL at least this share of the
/// time they spend awake on their items (not waiting for a core) is CPU-bound, if it
/// computes too: its threads take turns running Python code (see `waits_for_gil` and
/// [`StageMetrics::gil_wait_share`]). One that waits on IO asks for a GIL nobody holds
/// for long, and waits next to nothing.
const GIL_WAITS: f64 = 0.2;

/// Python threads whose asks for the GIL wait this long on average take turns on it
/// (see `waits_for_gil`): the interpreter hands it on every 5 ms, and threads whose peers
/// wait on IO or run code that releases the GIL get it within microseconds.
const GIL_ASK_WAITS: Duration = Duration::from_millis(1);

/// A Python thread that gives up its core once per this much CPU time, or less often,
/// gives it up to hand the GIL on, not to wait on IO (see `hands_on_the_gil`).
const GIL_HAND_ON: Duration = Duration::from_millis(1);

/// Above this many workers, waiting in threads costs more than waiting in futures.
const MANY_THREADS: usize = 256;

/// The most workers the advice ever suggests.
const MOST_WORKERS: usize = 4096;

/// One stage's line of the report.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct StageReport {
    /// The raw figures this line is computed from.
    pub metrics: StageMetrics,
    /// Items per second over the whole run.
    pub throughput: f64,
    /// The share of the workers' time spent busy (0 to 1): working, or ready to work and
    /// waiting for a core.
    pub utilization: f64,
    /// The share of the busy time spent on a core (0 to 1), where the platform measures
    /// it. For an async stage, the share of its items' time in flight spent being polled.
    pub cpu_ratio: Option<f64>,
    /// What the workers mostly did. In order: a stage that did next to nothing is
    /// [`Idle`](Bound::Idle); an async stage whose items stall their runtime thread for
    /// over a millisecond each, on average, is [`BlocksExecutor`](Bound::BlocksExecutor)
    /// (or [`Cpu`](Bound::Cpu) when its stalls were spent computing); then whichever is
    /// largest of the blocked, starved and busy shares of its time decides, and busy time
    /// is [`Cpu`](Bound::Cpu) or [`Waiting`](Bound::Waiting) by its
    /// [CPU demand](StageMetrics::cpu_demand): at least one half, or at least a fifth
    /// with workers that together want every core (`workers × demand ≥ cores`). A Python
    /// stage on threads whose threads take turns on the GIL is [`Cpu`](Bound::Cpu) before
    /// that (see [`waits_for_gil`](Self::waits_for_gil)).
    pub bound: Bound,
    /// How many workers the advice gives this stage, when it advises a change: for a
    /// CPU-bound stage with more, as many as keep the cores busy (`cores / demand`: the
    /// cores, for work that only computes); for a CPU-bound bottleneck with fewer than
    /// the cores, the cores the other CPU-bound stages leave free; for an IO-bound
    /// bottleneck, the workers it needs to keep up with the rest of the pipeline.
    pub suggested_workers: Option<usize>,
    /// Whether it is a Python stage on threads that is CPU-bound because its threads take
    /// turns on the GIL: they wait for it a good part of their time (see
    /// [`StageMetrics::gil_wait_share`]) and together want a good part of a core. More
    /// threads won't speed it up; worker processes (`multiprocess=True`) will.
    pub waits_for_gil: bool,
    /// Whether it is an async stage whose polls stall their runtime threads.
    stalls_executor: bool,
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
/// assert!(fetch.suggested_workers.unwrap() > 1); // raise workers, to a computed number
/// ```
///
/// The table's columns: **busy**, **starved** and **blocked** split the workers' time
/// (`workers × run time`) into working (or ready to work and waiting for a core), waiting
/// for input, and waiting to hand outputs on; **cpu** is the share of the busy time spent
/// on a core (`-` where not measured, and on rows with next to no busy time).
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
            .map(|stage| StageReport::new(stage, elapsed, metrics.cores))
            .collect();
        // A stage with a blocked stage below it is not the limit: that one waits on
        // something further down.
        let blocked_below = |at: usize| {
            stages[at + 1..]
                .iter()
                .any(|stage| stage.bound == Bound::Blocked)
        };
        let bottleneck = stages
            .iter()
            .enumerate()
            .filter(|(at, stage)| {
                matches!(
                    stage.bound,
                    Bound::Cpu | Bound::Waiting | Bound::BlocksExecutor
                ) && !blocked_below(*at)
            })
            .max_by(|(_, a), (_, b)| a.utilization.total_cmp(&b.utilization))
            .map(|(at, _)| at);
        // An async stage that stalls the runtime slows every async stage: they wait for a
        // thread to poll their futures on. It is the limit, not its victims.
        let bottleneck = match bottleneck {
            Some(at) if stages[at].metrics.kind == StageKind::Async => stages
                .iter()
                .enumerate()
                .filter(|(_, stage)| stage.stalls_executor)
                .max_by(|(_, a), (_, b)| {
                    let elapsed = metrics.elapsed;
                    let share = |s: &StageReport| s.metrics.stalled_share(elapsed);
                    share(a).total_cmp(&share(b))
                })
                .map_or(Some(at), |(stalling, _)| Some(stalling)),
            other => other,
        };
        let consumer_bound = bottleneck.is_none()
            && stages
                .last()
                .is_some_and(|last| last.bound == Bound::Blocked);
        let mut report = Report {
            elapsed,
            cores: metrics.cores,
            stages,
            bottleneck,
            consumer_bound,
        };
        for at in 0..report.stages.len() {
            report.stages[at].suggested_workers = report.suggest_workers(at);
        }
        report
    }

    /// The run's wall time.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The cores the machine offers, which the advice counts on.
    pub fn cores(&self) -> usize {
        self.cores
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
    /// waiting on their neighbours, and have no blocked stage below them, the busiest;
    /// but if that is an async stage while
    /// another blocks the executor, the one that blocks it (the other async stages wait
    /// for the runtime threads it holds). `None` when every stage waits on the consumer
    /// (see [`consumer_bound`](Report::consumer_bound)) or nothing ran.
    pub fn bottleneck(&self) -> Option<&StageReport> {
        self.bottleneck.map(|at| &self.stages[at])
    }

    /// Whether the pipeline mostly waited for the code reading its output.
    pub fn consumer_bound(&self) -> bool {
        self.consumer_bound
    }
}

impl StageReport {
    fn new(metrics: StageMetrics, elapsed: Duration, cores: usize) -> Self {
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
        let stalls = metrics.kind == StageKind::Async
            && metrics.longest_stall.is_some()
            && metrics.stalled >= STALL_PER_ITEM * items.min(u32::MAX.into()) as u32;
        let waits_for_gil = metrics.kind == StageKind::Threads && waits_for_gil(&metrics);
        let bound = if items == 0 || utilization.max(starved).max(blocked) < 0.01 {
            Bound::Idle
        } else if stalls {
            match metrics.stall_cpu_share() {
                Some(share) if share >= CPU_BOUND => Bound::Cpu,
                _ => Bound::BlocksExecutor,
            }
        } else if blocked >= utilization && blocked >= starved {
            Bound::Blocked
        } else if starved >= utilization {
            Bound::Starved
        } else if waits_for_gil {
            Bound::Cpu
        } else if metrics
            .gave_up_core_per_item()
            .is_some_and(|per_item| per_item >= WAITS_PER_ITEM)
            && !hands_on_the_gil(&metrics)
        {
            // Its items gave up the core to wait: whatever the timings say (on a crowded
            // machine every wake-up waits for a core), this is not computing.
            Bound::Waiting
        } else if cpu_demand.is_some_and(|demand| {
            demand >= CPU_BOUND
                || (demand >= CPU_SATURATING && metrics.workers as f64 * demand >= cores as f64)
        }) {
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
            suggested_workers: None,
            waits_for_gil: waits_for_gil && bound == Bound::Cpu,
            stalls_executor: stalls,
        }
    }

    /// How many workers keep `cores` cores busy with this stage's work: as many as the
    /// cores if its items want a core all the time, more if they also wait.
    fn cpu_workers_enough(&self, cores: usize) -> usize {
        let demand = self.metrics.cpu_demand().unwrap_or(1.0).max(CPU_SATURATING);
        ((cores as f64 / demand).floor() as usize).max(cores)
    }

    /// Where its busy time went, in words: on a core, and waiting for one.
    fn cpu_description(&self) -> String {
        let Some(on_core) = self.cpu_ratio else {
            return "CPU time not measured here".to_owned();
        };
        let m = &self.metrics;
        let waiting = if m.busy.is_zero() {
            0.0
        } else {
            (m.runnable.as_secs_f64() / m.busy.as_secs_f64()).min(1.0 - on_core)
        };
        if self.waits_for_gil {
            let gil = m.gil_wait_share().unwrap_or_default();
            let for_core = match waiting >= 0.05 {
                true => format!(
                    ", and ready but waiting for a free core {}",
                    percent(waiting)
                ),
                false => String::new(),
            };
            format!(
                "on a core {} of its busy time, waiting for the GIL about {}{for_core}",
                percent(on_core),
                percent(gil)
            )
        } else if self.bound == Bound::Cpu && waiting >= 0.05 {
            format!(
                "on a core {} of its busy time, and ready but waiting for a free core {}",
                percent(on_core),
                percent(waiting)
            )
        } else {
            format!("on a core {} of its busy time", percent(on_core))
        }
    }
}

/// Whether a Python stage's threads take turns on the GIL: they together want a good
/// part of a core, and wait for the GIL rather than for IO (which the rule on giving up
/// the core would take them for).
///
/// Python code runs on one thread at a time, so CPU-bound threads wait for the GIL while
/// another holds it, and on a crowded machine a holder waits for a core too, making the
/// others wait longer. Their waits show as measured waits for the GIL (see
/// [`StageMetrics::gil_wait_share`]), which count as demand for a core (the time the GIL
/// was wanted): a good share of their time, or asks that wait long. A stage that waits
/// on IO asks for a GIL nobody holds for long, and its threads use a few percent of a
/// core.
fn waits_for_gil(metrics: &StageMetrics) -> bool {
    let (Some(share), Some(demand), Some(cpu)) =
        (metrics.gil_wait_share(), metrics.cpu_demand(), metrics.cpu)
    else {
        return false;
    };
    let workers = metrics.workers as f64;
    // Shares of the time awake on items: not waiting for a core, as the CPU demand is.
    let awake = (metrics.working)
        .saturating_sub(metrics.working_runnable)
        .as_secs_f64();
    let waited = metrics.working.as_secs_f64() * share;
    let (gil_share, gil_demand) = match awake > 0.0 {
        true => (waited / awake, (cpu.as_secs_f64() + waited) / awake),
        false => (0.0, 1.0),
    };
    // Asks that wait a millisecond or more on average find the GIL held by peers that
    // compute: one whose peers wait on IO, or run code that releases the GIL, finds it
    // free within microseconds.
    let per_ask =
        metrics.gil_wait.unwrap_or_default() / metrics.gil_asks.clamp(1, u32::MAX.into()) as u32;
    (gil_share >= GIL_WAITS || per_ask >= GIL_ASK_WAITS)
        && gil_demand >= CPU_BOUND
        && demand * workers >= CPU_SATURATING
}

/// Whether a Python stage's threads gave up their core only to hand the GIL to another
/// thread: the interpreter has a thread that holds it let go when another asks, after
/// its switch interval (5 ms), so Python code that computes gives up its core every few
/// milliseconds of CPU time, to wait a moment for the GIL back. Code that waits on IO
/// gives it up after microseconds of CPU time.
fn hands_on_the_gil(metrics: &StageMetrics) -> bool {
    let (Some(per_item), Some(cpu)) = (metrics.gave_up_core_per_item(), metrics.cpu_per_item())
    else {
        return false;
    };
    metrics.gil_wait.is_some() && cpu.as_secs_f64() >= GIL_HAND_ON.as_secs_f64() * per_item
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// `1 worker`, `2 workers`.
/// `1 remote worker process`, `3 remote worker processes`.
fn worker_processes(n: usize) -> String {
    match n {
        1 => "1 remote worker process".to_owned(),
        n => format!("{n} remote worker processes"),
    }
}

fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

fn millis(time: Duration) -> String {
    let ms = time.as_secs_f64() * 1e3;
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
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
        for (at, stage) in self.stages.iter().enumerate() {
            let m = &stage.metrics;
            let marker = if Some(at) == self.bottleneck {
                "  ← bottleneck"
            } else {
                ""
            };
            // A share of next to no busy time says nothing (a join that waited all run).
            let cpu = stage
                .cpu_ratio
                .filter(|_| stage.bound != Bound::Idle && stage.utilization >= 0.005);
            writeln!(
                f,
                "{:<16} {:<8} {:>7} {:>9} {:>11.1} {:>6} {:>6} {:>8} {:>8}  {}{}",
                truncate(&m.name, 16),
                m.kind.label(),
                m.workers,
                m.items(),
                stage.throughput,
                percent(stage.utilization),
                cpu.map_or("-".to_owned(), percent),
                percent(m.starved_share(self.elapsed)),
                percent(m.blocked_share(self.elapsed)),
                stage.bound.label(),
                marker
            )?;
        }
        for stage in &self.stages {
            if let Some(remote) = &stage.metrics.remote {
                let hosts: Vec<String> = (remote.workers_per_host.iter())
                    .map(|(host, workers)| format!("{host} ×{workers}"))
                    .collect();
                writeln!(
                    f,
                    "{}: {} serving ({}); {} in the server's queue; {} redelivered",
                    stage.metrics.name,
                    worker_processes(remote.live_workers),
                    match hosts.is_empty() {
                        true => "none seen".to_owned(),
                        false => format!("seen: {}", hosts.join(", ")),
                    },
                    remote.queue_depth,
                    remote.redeliveries,
                )?;
                if let Some(waited) = remote.unserved {
                    writeln!(
                        f,
                        "{}: no worker has taken an item for {:.1} s",
                        stage.metrics.name,
                        waited.as_secs_f64()
                    )?;
                }
            }
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

    /// A thread stage that spent `busy` of 1 s per worker busy, `cpu` of it on a core.
    fn stage(name: &str, workers: usize, busy: f64, cpu: f64) -> StageMetrics {
        let per_worker = Duration::from_secs_f64(busy);
        let total = per_worker * workers as u32;
        StageMetrics {
            name: name.to_owned(),
            kind: StageKind::Threads,
            workers,
            tuned: None,
            items_in: 100,
            items_out: 100,
            errors: 0,
            queued: 0,
            busy_workers: 0,
            blocked_workers: 0,
            expected_items: None,
            busy: total,
            cpu: Some(total.mul_f64(cpu)),
            runnable: Duration::ZERO,
            starved: Duration::from_secs(workers as u64).saturating_sub(total),
            blocked: Duration::ZERO,
            stalled: Duration::ZERO,
            longest_stall: None,
            working: total,
            working_runnable: Duration::ZERO,
            stalled_measured: Duration::ZERO,
            stalled_cpu: Duration::ZERO,
            meters: workers,
            gave_up_core: None,
            remote: None,
            python: false,
            gil_wait: None,
            gil_asks: 0,
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
        assert_eq!(alone.stage("parse").unwrap().suggested_workers, Some(4));

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
        assert_eq!(enough.stage("parse").unwrap().suggested_workers, None);
    }

    #[test]
    fn a_cpu_bound_stage_with_more_workers_than_cores_is_told_to_use_the_cores() {
        let mut crowded = stage("long_computation", 10, 0.98, 0.2);
        // On a core a fifth of the time, ready and waiting for one the rest.
        crowded.runnable = crowded.busy.mul_f64(0.79);
        crowded.working_runnable = crowded.runnable;
        let report = report(2, vec![crowded]);
        let stage = report.stage("long_computation").unwrap();
        assert_eq!(stage.bound, Bound::Cpu, "{report}");
        assert_eq!(stage.suggested_workers, Some(2));
        let advice = &report.advice()[0];
        assert!(advice.contains("10 workers on 2 cores: use 2"), "{report}");
        assert!(
            advice.contains(
                "on a core 20% of its busy time, and ready but waiting for a free core 79%"
            ),
            "{report}"
        );
    }

    #[test]
    fn workers_that_compute_and_together_want_every_core_are_cpu_bound() {
        // On a core 40% of the time they are not waiting for one (the rest: waiting on
        // each other), 10 workers want 4 cores: CPU-bound on 2, and 5 keep them busy.
        let mut crowded = stage("hash", 10, 0.99, 0.2);
        crowded.runnable = crowded.busy.mul_f64(0.5);
        crowded.working_runnable = crowded.runnable;
        assert!((crowded.cpu_demand().unwrap() - 0.4).abs() < 1e-9);
        let hashes = report(2, vec![crowded]);
        let hash = hashes.stage("hash").unwrap();
        assert_eq!(hash.bound, Bound::Cpu, "{hashes}");
        assert_eq!(hash.suggested_workers, Some(5), "{hashes}");
        assert!(hashes.advice()[0].contains("10 workers on 2 cores: use 5"));

        // Waiting stages want a core a few percent of their time, however many workers
        // they have.
        let mut waits = stage("fetch", 100, 0.99, 0.05);
        waits.runnable = waits.busy.mul_f64(0.3);
        waits.working_runnable = waits.runnable;
        let fetches = report(2, vec![waits]);
        assert_eq!(
            fetches.stage("fetch").unwrap().bound,
            Bound::Waiting,
            "{fetches}"
        );
    }

    #[test]
    fn waiting_for_a_core_counts_as_demand_only_in_proportion_to_the_cpu_used() {
        // A stage that sleeps, on a crowded machine: its wake-ups wait for a core 60% of
        // its busy time, but it is on one 1% of it.
        let mut sleeper = stage("nap", 2, 0.99, 0.01);
        sleeper.runnable = sleeper.busy.mul_f64(0.6);
        sleeper.working_runnable = sleeper.runnable;
        assert!(sleeper.cpu_demand().unwrap() < 0.05, "{sleeper:?}");
        let report = report(2, vec![sleeper]);
        assert_eq!(
            report.stage("nap").unwrap().bound,
            Bound::Waiting,
            "{report}"
        );

        // A computation that got a core a tenth of the time and waited for one the rest.
        let mut crowded = stage("spin", 2, 0.99, 0.1);
        crowded.runnable = crowded.busy.mul_f64(0.9);
        crowded.working_runnable = crowded.runnable;
        assert!(crowded.cpu_demand().unwrap() > 0.95, "{crowded:?}");
    }

    #[test]
    fn a_busy_stage_off_the_cpu_is_waiting_and_told_how_many_workers_keep_up() {
        let report = report(
            2,
            vec![stage("fetch", 4, 0.99, 0.02), stage("parse", 1, 0.1, 1.0)],
        );
        let fetch = report.stage("fetch").unwrap();
        assert_eq!(fetch.bound, Bound::Waiting);
        assert_eq!(report.stage("parse").unwrap().bound, Bound::Starved);
        // `fetch` takes 39.6 ms per item; `parse`, with 1 worker, 1 ms: 1000 items/s, and
        // the CPU would allow 2 cores / 1.08 ms. 1000 items/s × 39.6 ms = 39.6 workers.
        assert_eq!(fetch.suggested_workers, Some(40), "{report}");
        let advice = &report.advice()[0];
        assert!(
            advice.contains("raise workers to 40, enough to keep up with `parse`"),
            "{report}"
        );
    }

    #[test]
    fn a_stage_whose_items_gave_up_the_core_waits_however_crowded_the_machine() {
        // A sleeper on a machine so crowded that its wake-ups waited for a core nearly all
        // of its busy time, and the little it was awake it computed: by the clocks alone,
        // CPU-bound. But each item gave up the core once, to sleep.
        let mut sleeper = stage("fetch", 2, 0.99, 0.001);
        sleeper.runnable = sleeper.busy.mul_f64(0.999);
        sleeper.working_runnable = sleeper.runnable;
        assert!(sleeper.cpu_demand().unwrap() > 0.5, "{sleeper:?}");
        sleeper.gave_up_core = Some((100, 100));
        let waits = report(2, vec![sleeper.clone()]);
        assert_eq!(waits.stage("fetch").unwrap().bound, Bound::Waiting);

        // The same clocks from items that never gave up the core: a computation.
        sleeper.gave_up_core = Some((1, 100));
        let computes = report(2, vec![sleeper]);
        assert_eq!(computes.stage("fetch").unwrap().bound, Bound::Cpu);
    }

    /// A Python stage on 4 threads on 2 cores: on a core a quarter of the time, and the
    /// rest off it, waiting either for the GIL or on IO.
    fn python_threads(gil_wait: f64) -> StageMetrics {
        let mut threads = stage("compute", 4, 0.98, 0.25);
        threads.python = true;
        threads.gil_wait = Some(threads.busy.mul_f64(gil_wait));
        threads.gil_asks = 100;
        // Each item gave up its core a few times: to wait for the GIL, or on IO.
        threads.gave_up_core = Some((300, 100));
        threads
    }

    #[test]
    fn python_threads_that_wait_for_the_gil_are_cpu_bound_and_told_to_use_processes() {
        let report = report(2, vec![python_threads(0.7)]);
        let compute = report.stage("compute").unwrap();
        assert_eq!(compute.bound, Bound::Cpu, "{report}");
        assert!(compute.waits_for_gil);
        assert_eq!(compute.suggested_workers, Some(2));
        let advice = &report.advice()[0];
        assert!(advice.contains("take turns on the GIL"), "{report}");
        assert!(
            advice.contains("`multiprocess=True` with 2 workers"),
            "{report}"
        );
        // Measured between calls, 70%; with the waits inside calls, all its time off a
        // core.
        assert!(advice.contains("waiting for the GIL about 75%"), "{report}");

        // The same clocks, but the GIL was free whenever they asked: they wait on IO.
        let io = report_io();
        let compute = io.stage("compute").unwrap();
        assert_eq!(compute.bound, Bound::Waiting, "{io}");
        assert!(!compute.waits_for_gil);
    }

    fn report_io() -> Report {
        report(2, vec![python_threads(0.0)])
    }

    #[test]
    fn python_threads_whose_asks_for_the_gil_wait_long_are_cpu_bound() {
        // Two threads that compute, on a machine so crowded that the one handed the GIL
        // waits for a core to take it on: most of their waits show as waits for a core,
        // and their items give up the core three times each, but the few asks measured
        // waited 6.6 ms each: the GIL was held by a peer.
        let mut crowded = stage("compute", 2, 0.99, 0.2);
        crowded.runnable = crowded.busy.mul_f64(0.7);
        crowded.working_runnable = crowded.runnable;
        crowded.gave_up_core = Some((300, 100));
        crowded.python = true;
        crowded.gil_wait = Some(crowded.busy.mul_f64(0.01));
        crowded.gil_asks = 3;
        let python = report(2, vec![crowded.clone()]);
        let compute = python.stage("compute").unwrap();
        assert_eq!(compute.bound, Bound::Cpu, "{python}");
        assert!(compute.waits_for_gil, "{python}");

        // The same waits, in asks of 0.2 ms: the GIL was free. Items of 4 ms of CPU time
        // that gave up the core three times each computed, handing the GIL on: CPU-bound,
        // but not taking turns on the GIL.
        crowded.gil_asks = 100;
        let free = report(2, vec![crowded.clone()]);
        let compute = free.stage("compute").unwrap();
        assert_eq!(compute.bound, Bound::Cpu, "{free}");
        assert!(!compute.waits_for_gil, "{free}");

        // The same clocks from Rust threads: items that give up their core wait.
        crowded.python = false;
        crowded.gil_wait = None;
        let rust = report(2, vec![crowded]);
        assert_eq!(
            rust.stage("compute").unwrap().bound,
            Bound::Waiting,
            "{rust}"
        );
    }

    #[test]
    fn a_python_thread_that_hands_the_gil_on_while_it_computes_is_cpu_bound() {
        // One thread that computes 10 ms per item, on a crowded machine: its clocks say
        // it wants a core, and its items gave up the core once each, to let the thread
        // reading the output have the GIL a moment.
        let mut crowded = stage("compute", 1, 0.99, 0.14);
        crowded.runnable = crowded.busy.mul_f64(0.85);
        crowded.working_runnable = crowded.runnable;
        crowded.gave_up_core = Some((100, 100));
        crowded.python = true;
        crowded.gil_wait = Some(Duration::from_micros(10));
        crowded.gil_asks = 100;
        let python = report(2, vec![crowded.clone()]);
        assert_eq!(
            python.stage("compute").unwrap().bound,
            Bound::Cpu,
            "{python}"
        );

        // The same from items that use 10 µs of CPU each: they wait.
        let mut napping = crowded;
        napping.items_in = 140_000;
        let napper = report(2, vec![napping]);
        assert_eq!(
            napper.stage("compute").unwrap().bound,
            Bound::Waiting,
            "{napper}"
        );
    }

    #[test]
    fn one_python_thread_that_computes_is_told_that_threads_would_not_help() {
        let mut alone = stage("parse", 1, 0.95, 0.97);
        alone.python = true;
        alone.gil_wait = Some(Duration::ZERO);
        let report = report(2, vec![alone]);
        assert_eq!(report.stage("parse").unwrap().bound, Bound::Cpu);
        let advice = &report.advice()[0];
        assert!(
            advice.contains("more threads won't speed it up"),
            "{report}"
        );
        assert!(
            advice.contains("`multiprocess=True` with 2 workers"),
            "{report}"
        );
    }

    #[test]
    fn python_threads_that_compute_without_waiting_for_the_gil_get_the_usual_advice() {
        // Two threads that compute at once, each on a core, never waiting for the GIL:
        // code that releases it (numpy, hashlib). Threads do help it.
        let mut parallel = stage("hash", 1, 0.95, 0.97);
        parallel.python = true;
        parallel.gil_wait = Some(Duration::ZERO);
        parallel.gil_asks = 100;
        parallel.gave_up_core = Some((1, 100));
        let alone = report(4, vec![parallel]);
        assert!(!alone.stage("hash").unwrap().waits_for_gil);

        let mut two = stage("hash", 2, 0.95, 0.97);
        two.python = true;
        two.gil_wait = Some(Duration::ZERO);
        two.gil_asks = 100;
        two.gave_up_core = Some((1, 100));
        let report = report(4, vec![two]);
        let hash = report.stage("hash").unwrap();
        assert_eq!(hash.bound, Bound::Cpu, "{report}");
        assert!(!hash.waits_for_gil);
        assert_eq!(hash.suggested_workers, Some(4));
        let advice = &report.advice()[0];
        assert!(advice.ends_with("raise workers to 4"), "{report}");
        assert!(!advice.contains("GIL"), "{report}");
    }

    #[test]
    fn idle_rows_show_no_cpu_figure() {
        let mut idle = stage("later", 1, 0.0, 0.0);
        idle.items_in = 0;
        idle.cpu = Some(Duration::from_millis(1));
        let report = report(2, vec![stage("work", 1, 0.9, 1.0), idle]);
        assert_eq!(report.stage("later").unwrap().bound, Bound::Idle);
        let table = report.to_string();
        let row = table
            .lines()
            .find(|line| line.starts_with("later"))
            .unwrap();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((columns[5], columns[6]), ("0%", "-"), "{table}");
    }

    #[test]
    fn an_async_stage_that_stalls_blocks_its_executor() {
        let mut blocking = stage("slow_func", 8, 0.9, 0.3);
        blocking.kind = StageKind::Async;
        blocking.meters = 2;
        blocking.stalled = Duration::from_millis(1800);
        blocking.longest_stall = Some(Duration::from_millis(40));
        blocking.stalled_measured = Duration::from_millis(1500);
        blocking.stalled_cpu = Duration::from_millis(15);
        let blocks = report(2, vec![blocking.clone()]);
        let stage = blocks.stage("slow_func").unwrap();
        assert_eq!(stage.bound, Bound::BlocksExecutor, "{blocks}");
        assert_eq!(blocks.bottleneck().unwrap().metrics.name, "slow_func");
        let advice = &blocks.advice()[0];
        assert!(advice.contains("blocks its executor"), "{blocks}");
        assert!(
            advice.contains("18 ms each on average (up to 40 ms at once), without computing"),
            "{blocks}"
        );
        assert!(
            advice.contains("async wait") && advice.contains("`task()`"),
            "{blocks}"
        );

        // The same stalls, spent computing.
        blocking.stalled_cpu = Duration::from_millis(1450);
        let computes = report(2, vec![blocking]);
        assert_eq!(computes.stage("slow_func").unwrap().bound, Bound::Cpu);
        let advice = &computes.advice()[0];
        assert!(
            advice.contains("computes inside an async task"),
            "{computes}"
        );
        assert!(
            advice.contains("sync `task()` with 2 workers"),
            "{computes}"
        );
    }
}
