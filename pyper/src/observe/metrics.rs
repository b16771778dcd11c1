//! Live per-stage metrics of a run: what [`Output::metrics`](crate::Output::metrics)
//! returns.

use std::sync::atomic::Ordering::Relaxed;
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
    /// From the start of the run to its end, or to now while it runs. The run starts
    /// when its input starts to be pulled (its thread's first moment on a core): until
    /// then every stage waits, as long as a crowded machine keeps that thread waiting.
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
    /// Its workers (threads, processes, or futures in flight for an async stage). For a
    /// stage whose count the run tuned ([`auto_workers`](crate::Task::auto_workers)): how
    /// many were active on average, which the time shares below are taken over.
    pub workers: usize,
    /// For a stage whose count the run tuned: what the tuner chose, and why.
    pub tuned: Option<Tuned>,
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
    /// Workers waiting right now for room downstream, or for their turn to hand on
    /// outputs in order (thread and process stages; 0 for an async stage).
    pub blocked_workers: usize,
    /// How many items the stage will handle in all, when known before the run: for the
    /// input, the length its iterator announced (an exact `size_hint`).
    pub expected_items: Option<u64>,
    /// Time its workers spent working, or ready to work but waiting for a free core.
    pub busy: Duration,
    /// CPU time its workers used, where the platform has a per-thread CPU clock (for an
    /// async stage: the time its futures spent being polled, or for a poll of over a
    /// millisecond, its measured CPU time).
    pub cpu: Option<Duration>,
    /// Time its worker threads were ready to run but waited for a free core (Linux):
    /// CPU-bound work on a crowded machine, or the wake-up of a thread that slept.
    pub runnable: Duration,
    /// Time its workers waited for input (and, once it came, for a core to wake up on).
    pub starved: Duration,
    /// Time its workers waited for room in a full output queue, or their turn to hand
    /// on outputs in order.
    pub blocked: Duration,
    /// For an async stage: the total time that polls of its futures held a runtime
    /// thread for over a millisecond each ("stalls"), less the time the thread was
    /// preempted meanwhile (measured from its scheduler statistics, on Linux). A future
    /// that awaits returns from a poll in microseconds; one that blocks (a sync sleep or
    /// read, a long computation) holds the thread, and every other future on it waits.
    pub stalled: Duration,
    /// For an async stage: the longest stall, if there was one.
    pub longest_stall: Option<Duration>,
    /// The time its workers spent on items (its busy time, less the moments between
    /// items), and their waits for a core that were not wake-ups from parking on a
    /// queue: see [`cpu_demand`](Self::cpu_demand).
    pub(crate) working: Duration,
    pub(crate) working_runnable: Duration,
    /// Of the stalls whose CPU time was measured: their total, and their CPU time.
    pub(crate) stalled_measured: Duration,
    pub(crate) stalled_cpu: Duration,
    /// How many workers were metered: for an async stage, its drivers (one per runtime
    /// thread it runs on).
    pub(crate) meters: usize,
    /// Where measured (thread stages' slow batches, on Linux): the times their threads
    /// gave up their core inside items, and the items measured.
    pub(crate) gave_up_core: Option<(u64, u64)>,
    /// What a remote stage adds: `None` for any other kind.
    pub remote: Option<RemoteMetrics>,
    /// Whether its work is Python code (a stage of the `pyperflow` Python package).
    pub python: bool,
    /// For a Python stage run by threads: the time its workers waited for the GIL when
    /// they asked for it between calls (after their own waits for input, for room
    /// downstream, or a pause to let the others have it). Waits inside a call (the
    /// interpreter hands the GIL around every few milliseconds) are not seen directly:
    /// see [`gil_wait_share`](Self::gil_wait_share).
    pub gil_wait: Option<Duration>,
    /// How many times they asked.
    pub(crate) gil_asks: u64,
}

/// What the run's tuner chose for a stage with [`auto_workers`](crate::Task::auto_workers).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuned {
    /// The workers active at the end of the run (or now, for a live snapshot).
    pub workers: usize,
    /// The most the stage was allowed.
    pub max: usize,
    /// The most that were active at once.
    pub peak: usize,
    /// Why the count is what it is, in words that end the sentence "The run stopped there
    /// because": "more workers did not raise its throughput", "its work computes, and it
    /// has one worker per free core", and so on.
    pub why: &'static str,
}

/// What a remote stage's metrics add: the server's view of its queue, its redeliveries,
/// and the worker processes that served it, per host.
///
/// ```
/// // Only a remote stage has them.
/// let out = pyper::task(|x: u64| x + 1).run(1);
/// let metrics = out.metrics();
/// assert!(metrics.stages.iter().all(|stage| stage.remote.is_none()));
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteMetrics {
    /// Items in the stage's stream on the server: waiting for a worker, or held by one
    /// (read a few times a second).
    pub queue_depth: u64,
    /// Items whose outcome came from a second or later delivery: their first worker died
    /// or vanished holding them.
    pub redeliveries: u64,
    /// Redeliveries as the server counts them (its consumer's `num_redelivered`), which
    /// also counts deliveries whose outcome was a duplicate.
    pub server_redeliveries: u64,
    /// Worker processes that sent outcomes, per host name, sorted by host: every one
    /// seen, including those gone since.
    pub workers_per_host: Vec<(String, usize)>,
    /// The worker processes that serve the stage now: those that sent an outcome lately
    /// (within 5 s, or three times the longest a message of items took, if more). The
    /// stage's `workers` are their threads: this times the task's `workers(n)`.
    pub live_workers: usize,
    /// How long items have waited on the server with no worker taking any, if they are
    /// waiting so now: no worker is started, or none serves this build, or all are busy
    /// elsewhere.
    pub unserved: Option<Duration>,
}

impl StageMetrics {
    /// Mean wall time per item: the time a worker spent on it.
    pub fn wall_per_item(&self) -> Option<Duration> {
        per_item(self.working, self.items())
    }

    /// Mean CPU time per item.
    pub fn cpu_per_item(&self) -> Option<Duration> {
        per_item(self.cpu?, self.items())
    }

    /// The share of its busy time spent on a core: near 1 for CPU-bound work on an idle
    /// machine, near 0 for work that waits (IO, sleeps, locks). On a crowded machine a
    /// CPU-bound stage gets less; see [`cpu_demand`](Self::cpu_demand).
    pub fn cpu_ratio(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (!self.busy.is_zero()).then(|| (cpu.as_secs_f64() / self.busy.as_secs_f64()).min(1.0))
    }

    /// The share of the time spent on its items that they wanted a core, whether they
    /// got one or not: what tells CPU-bound work from waiting even when other programs
    /// crowd the machine.
    ///
    /// An item's time is spent on a core, ready and waiting for one, or asleep (on IO, a
    /// sleep, a lock). The demand is the CPU time over the time that was not a wait for a
    /// core: the waits count as demand only in proportion to the CPU time, since a wait
    /// for a core follows either running (the thread was preempted) or sleeping (it woke
    /// up, and found the cores taken). A stage that barely runs cannot be CPU-bound,
    /// however long its wake-ups wait for a core, and a computation that got a core a
    /// tenth of the time is still CPU-bound. (The waits for a core are the worker
    /// threads' all run long, less their wake-ups from waiting for input; for an async
    /// stage, none are measured.)
    pub fn cpu_demand(&self) -> Option<f64> {
        let cpu = self.cpu?.as_secs_f64();
        if self.working.is_zero() {
            return None;
        }
        let awake = self
            .working
            .saturating_sub(self.working_runnable)
            .as_secs_f64();
        Some(if awake > 0.0 {
            (cpu / awake).min(1.0)
        } else if cpu > 0.0 {
            1.0
        } else {
            0.0
        })
    }

    /// How many times, per item, its worker threads gave up their core of their own
    /// accord inside items: at least once for an item that sleeps or waits on IO, next
    /// to never for one that computes, however crowded the machine. Measured in thread
    /// stages' batches of a millisecond or more, on Linux.
    pub(crate) fn gave_up_core_per_item(&self) -> Option<f64> {
        let (gave_up, items) = self.gave_up_core?;
        (items > 0).then(|| gave_up as f64 / items as f64)
    }

    /// For a Python stage run by threads: the share of the time spent on its items that
    /// its workers waited for the GIL, as far as it can be told. The waits between calls
    /// are measured; a call's own waits are counted as each of the times it gave up its
    /// core (measured in slow batches, on Linux) waiting as long, on average, as a
    /// measured ask did: at most its time off a core, and never less than was measured.
    pub fn gil_wait_share(&self) -> Option<f64> {
        let measured = self.gil_wait?;
        if self.working.is_zero() {
            return None;
        }
        let per_ask = measured.as_secs_f64() / self.gil_asks.max(1) as f64;
        let in_calls = self.gave_up_core_per_item().unwrap_or(0.0) * self.items() as f64 * per_ask;
        let off_core = self
            .working
            .saturating_sub(self.working_runnable)
            .saturating_sub(self.cpu.unwrap_or_default())
            .as_secs_f64();
        let waited = (measured.as_secs_f64() + in_calls).min(off_core.max(measured.as_secs_f64()));
        Some((waited / self.working.as_secs_f64()).min(1.0))
    }

    /// For an async stage: the share of its runtime threads' time (one per driver) that
    /// its polls held them in stalls (see [`stalled`](Self::stalled)).
    pub fn stalled_share(&self, elapsed: Duration) -> f64 {
        share(self.stalled, self.meters, elapsed)
    }

    /// For an async stage: the share of its measured stalls spent on a core, telling a
    /// computation (near 1) from a blocking call (near 0).
    pub(crate) fn stall_cpu_share(&self) -> Option<f64> {
        (!self.stalled_measured.is_zero())
            .then(|| self.stalled_cpu.as_secs_f64() / self.stalled_measured.as_secs_f64())
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

    /// A stage that has done nothing yet.
    pub(crate) fn empty(name: &str, kind: StageKind, workers: usize) -> Self {
        StageMetrics {
            name: name.to_owned(),
            kind,
            workers,
            tuned: None,
            items_in: 0,
            items_out: 0,
            errors: 0,
            queued: 0,
            busy_workers: 0,
            blocked_workers: 0,
            expected_items: None,
            busy: Duration::ZERO,
            cpu: None,
            runnable: Duration::ZERO,
            starved: Duration::ZERO,
            blocked: Duration::ZERO,
            stalled: Duration::ZERO,
            longest_stall: None,
            working: Duration::ZERO,
            working_runnable: Duration::ZERO,
            stalled_measured: Duration::ZERO,
            stalled_cpu: Duration::ZERO,
            meters: 0,
            gave_up_core: None,
            remote: None,
            python: false,
            gil_wait: None,
            gil_asks: 0,
        }
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
        let stages = run.stages();
        // The run is measured from when its input thread first ran: see
        // `WorkerMeter::times`.
        let input_began = stages
            .iter()
            .filter(|stage| stage.kind == StageKind::Input)
            .flat_map(|stage| stage.meters())
            .find_map(|meter| meter.began())
            .unwrap_or_default();
        let elapsed = run.elapsed().saturating_sub(input_began);
        let stages = stages
            .iter()
            .map(|stage| {
                let meters = stage.meters();
                let mut metrics = StageMetrics::empty(&stage.name, stage.kind, stage.workers);
                metrics.errors = stage.errors.load(std::sync::atomic::Ordering::Relaxed);
                metrics.queued = stage.queued.as_ref().map_or(0, |queued| queued());
                metrics.expected_items = stage.expected_items();
                metrics.meters = meters.len();
                metrics.python = stage.is_python();
                if metrics.python && stage.kind == StageKind::Threads {
                    metrics.gil_wait = Some(Duration::ZERO);
                }
                if let Some(tuner) = stage.tuner() {
                    let choice = tuner.choice();
                    metrics.workers = choice.mean;
                    metrics.tuned = Some(Tuned {
                        workers: choice.workers,
                        max: choice.max,
                        peak: choice.peak,
                        why: choice.why,
                    });
                }
                let nanos =
                    |counter: &crate::engine::meter::Counter| Duration::from_nanos(counter.get());
                metrics.remote = stage.remote_gauges().map(|gauges| RemoteMetrics {
                    queue_depth: gauges.queue_depth.load(Relaxed),
                    redeliveries: gauges.redeliveries.load(Relaxed),
                    server_redeliveries: gauges.server_redeliveries.load(Relaxed),
                    workers_per_host: gauges.workers(),
                    live_workers: gauges.live_workers(),
                    unserved: match gauges.unserved_ms.load(Relaxed) {
                        0 => None,
                        ms => Some(Duration::from_millis(ms)),
                    },
                });
                if let Some(gauges) = stage.remote_gauges() {
                    // The work is done by the worker processes: the stage's times are
                    // theirs, as their outcomes tell them, and the coordinator's waits.
                    remote_times(&mut metrics, &gauges, &meters);
                    return metrics;
                }
                for meter in &meters {
                    if let Some((gave_up, took)) = meter.gave_up_core_in_items() {
                        let (total, items) = metrics.gave_up_core.unwrap_or_default();
                        metrics.gave_up_core = Some((total + gave_up, items + took));
                    }
                    let times = meter.times(input_began);
                    metrics.items_in += meter.items_in.get();
                    metrics.items_out += meter.items_out.get();
                    metrics.busy += times.busy;
                    metrics.starved += times.starved;
                    metrics.runnable += times.runnable;
                    metrics.blocked += times.blocked;
                    metrics.working += times.working;
                    metrics.working_runnable += times.working_runnable;
                    if let Some(cpu) = times.cpu {
                        metrics.cpu = Some(metrics.cpu.unwrap_or_default() + cpu);
                    }
                    if let Some(waited) = &mut metrics.gil_wait {
                        *waited += nanos(&meter.gil_wait);
                        metrics.gil_asks += meter.gil_asks.get();
                    }
                    metrics.stalled += nanos(&meter.stalled);
                    metrics.stalled_measured += nanos(&meter.stalled_measured);
                    metrics.stalled_cpu += nanos(&meter.stalled_cpu);
                    let longest = nanos(&meter.longest_stall);
                    if !longest.is_zero() {
                        metrics.longest_stall = metrics.longest_stall.max(Some(longest));
                    }
                    let activity = meter.activity();
                    metrics.busy_workers += match stage.kind {
                        StageKind::Async => meter.in_flight.get() as usize,
                        _ => usize::from(activity == Activity::Busy),
                    };
                    metrics.blocked_workers += usize::from(activity == Activity::Blocked);
                }
                if let Some(tuned) = &metrics.tuned {
                    // Parked workers are not busy, whatever they last did.
                    metrics.busy_workers = metrics.busy_workers.min(tuned.workers);
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

/// A remote stage's times: its workers are the worker processes' threads that serve it
/// now, busy for as long as their calls took, and starved (or blocked) all of them while
/// the coordinator waited for input with no item out (or for room for outputs).
fn remote_times(
    metrics: &mut StageMetrics,
    gauges: &crate::engine::meter::RemoteGauges,
    meters: &[std::sync::Arc<crate::engine::meter::WorkerMeter>],
) {
    for meter in meters {
        metrics.items_in += meter.items_in.get();
        metrics.items_out += meter.items_out.get();
    }
    let nanos = |gauge: &std::sync::atomic::AtomicU64| Duration::from_nanos(gauge.load(Relaxed));
    let live = metrics
        .remote
        .as_ref()
        .map_or(0, |remote| remote.live_workers);
    // Until here, `workers` is the task's `workers(n)`: each process's threads.
    metrics.workers = live * metrics.workers.max(1);
    metrics.busy = nanos(&gauges.busy_nanos);
    metrics.working = metrics.busy;
    metrics.cpu = Some(nanos(&gauges.cpu_nanos));
    let threads = metrics.workers.max(1) as u32;
    metrics.starved = nanos(&gauges.starved_nanos).saturating_mul(threads);
    metrics.blocked = nanos(&gauges.blocked_nanos).saturating_mul(threads);
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
