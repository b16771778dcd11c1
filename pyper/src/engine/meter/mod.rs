//! Recording what every worker does, cheaply enough to stay on.
//!
//! Each worker owns a [`WorkerMeter`] that only it writes, on a cache line of its own, so
//! recording costs plain loads and stores, no locked instructions and no sharing with the
//! other workers. Recording happens once per *batch* (a few clock reads and stores),
//! never per item, and waiting is timed only on the queues' slow paths, when a worker
//! really parks. A snapshot ([`crate::Metrics`]) sums the meters of each stage.
//!
//! CPU time is the worker thread's own CPU clock, read at most once a millisecond of work,
//! so a stage's CPU share is measured, not guessed from how it looks. On Linux, the
//! thread's scheduler statistics add how long it waited, ready to run, for a free core:
//! read when the worker starts and ends (and by a snapshot while it runs), never per batch.
//!
//! An async stage's futures are timed per poll, and a poll that holds its runtime thread
//! for over [`STALL`] is a *stall*: a blocking call or heavy computation inside async
//! code, which stops every other future on that thread.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::sync::{lock_std as lock, Instant};
pub(crate) use sched::{process_cpu_time, thread_cpu_time, thread_usage};
use sched::{this_thread_id, Sched};

#[cfg(feature = "async")]
pub(crate) mod poll;
mod sched;
mod times;

pub(crate) use sched::ProcessTimes;

/// How often, at most, a worker reads its CPU clock (a system call, unlike the wall clock).
const CPU_SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// A poll that holds its runtime thread longer than this stalls the executor: a future
/// that waits the async way returns from a poll in microseconds.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) const STALL: Duration = Duration::from_millis(1);

/// What a stage's meter reads of its tuner (`engine::tuner::Tuner`, which implements it),
/// so that the meter, which the tuner reads, does not depend on the tuner.
pub(crate) trait TunerGauge: Send + Sync {
    /// How many workers are active now.
    fn active(&self) -> usize;
    /// What the tuner chose, for the end-of-run report.
    fn choice(&self) -> Choice;
}

/// What the tuner chose, for the end-of-run report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    /// The active count at the end.
    pub(crate) workers: usize,
    pub(crate) max: usize,
    pub(crate) peak: usize,
    /// The active count on average over the stage's life, rounded (at least 1).
    pub(crate) mean: usize,
    pub(crate) why: &'static str,
}

/// A worker's spans beyond this many are not recorded, so a trace file of a long run of
/// tiny batches cannot grow without bound.
pub(crate) const MAX_SPANS_PER_WORKER: usize = 200_000;

/// A worker hands its spans to the run's [`SpanSink`] in chunks of this many, so what a
/// trace holds in memory is a chunk per worker, however long the run.
pub(crate) const SPAN_CHUNK: usize = 1024;

/// Where a run's spans go as they are recorded: the trace, which the API hands the run as
/// it starts (the engine knows nothing of its format or file).
pub(crate) trait SpanSink: Send + Sync {
    /// A worker's track begins (a worker meter was made).
    fn track(&self, track: &Track);
    /// Spans of a worker, in chunks, in no particular order across workers.
    fn spans(&self, track: &Track, spans: &[Span]);
    /// Writes the trace recorded so far (spans already handed over) to `out`.
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
    /// The run ended: spans handed over later are not recorded.
    fn end(&self);
}

/// A worker's track in a trace.
pub(crate) struct Track {
    /// The stage's position in the run (the input is 0).
    pub(crate) stage: usize,
    pub(crate) name: Arc<str>,
    /// The worker's index in its stage.
    pub(crate) worker: usize,
}

/// A worker's spans not yet handed to the sink, and how many it recorded in all.
struct SpanLog {
    sink: Arc<dyn SpanSink>,
    track: Track,
    pending: Mutex<(Vec<Span>, usize)>,
}

impl SpanLog {
    fn push(&self, span: Span) {
        let full = {
            let mut pending = lock(&self.pending);
            let (spans, recorded) = &mut *pending;
            if *recorded >= MAX_SPANS_PER_WORKER {
                return;
            }
            *recorded += 1;
            spans.push(span);
            if spans.len() < SPAN_CHUNK {
                return;
            }
            std::mem::replace(spans, Vec::with_capacity(SPAN_CHUNK))
        };
        // Written outside the lock: a flush from another thread never waits on the file.
        self.sink.spans(&self.track, &full);
    }

    fn flush(&self) {
        let pending = std::mem::take(&mut lock(&self.pending).0);
        if !pending.is_empty() {
            self.sink.spans(&self.track, &pending);
        }
    }
}

/// What a worker is doing, for the live "busy workers" count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Activity {
    Busy = 0,
    Starved = 1,
    Blocked = 2,
    Done = 3,
}

/// What an async worker whose futures are timed elsewhere reports: see
/// [`WorkerMeter::set_async_totals`]. Times are summed over its items (or, for
/// `starved`, over its free slots).
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(not(feature = "python"), allow(dead_code))]
pub(crate) struct AsyncTotals {
    pub(crate) items: u64,
    pub(crate) in_flight: u64,
    pub(crate) busy: Duration,
    pub(crate) polled: Duration,
    pub(crate) starved: Duration,
    pub(crate) stalled: Duration,
    pub(crate) longest_stall: Duration,
    pub(crate) stalled_measured: Duration,
    pub(crate) stalled_cpu: Duration,
}

/// A stretch of a worker's time, for the trace: `start` is relative to the run's start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) start: Duration,
    pub(crate) length: Duration,
    pub(crate) what: SpanKind,
    pub(crate) items: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Work,
    Starved,
    Blocked,
}

/// What runs a stage's work.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// The input iterator of [`feed`](crate::Pipeline::feed), pulled by a thread of its own.
    Input,
    /// A sync task: worker threads.
    Threads,
    /// An async task: futures on pyper's tokio runtime. Its `workers` are the futures it
    /// may have in flight, and its CPU time is the time spent polling them (a poll that
    /// holds its thread for over a millisecond is charged its measured CPU time).
    Async,
    /// A process task: worker processes, fed by a thread each.
    Process,
    /// A remote task: worker processes on any host, fed through NATS JetStream. Its
    /// `workers` are the items each worker process runs at once.
    Remote,
}

impl StageKind {
    /// A short lowercase label: `input`, `threads`, `async`, `process`, `remote`.
    pub fn label(self) -> &'static str {
        match self {
            StageKind::Input => "input",
            StageKind::Threads => "threads",
            StageKind::Async => "async",
            StageKind::Process => "process",
            StageKind::Remote => "remote",
        }
    }
}

/// A run's recording switches and its stages' meters.
pub(crate) struct RunMeter {
    enabled: AtomicBool,
    span_sink: Mutex<Option<Arc<dyn SpanSink>>>,
    started: Mutex<Option<Instant>>,
    ended: Mutex<Option<Instant>>,
    stages: Mutex<Vec<Arc<StageMeter>>>,
}

impl RunMeter {
    pub(crate) fn new() -> Self {
        RunMeter {
            enabled: AtomicBool::new(true),
            span_sink: Mutex::new(None),
            started: Mutex::new(None),
            ended: Mutex::new(None),
            stages: Mutex::new(Vec::new()),
        }
    }

    /// Settles what the run records, before any stage registers: whether it records at
    /// all, and where workers send their spans for a trace (which needs recording).
    pub(crate) fn configure(&self, enabled: bool, spans: Option<Arc<dyn SpanSink>>) {
        self.enabled.store(enabled || spans.is_some(), Relaxed);
        *lock(&self.span_sink) = spans;
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// The trace the workers send their spans to, if the run records one.
    pub(crate) fn span_sink(&self) -> Option<Arc<dyn SpanSink>> {
        lock(&self.span_sink).clone()
    }

    /// Hands every worker's pending spans to the trace.
    pub(crate) fn flush_spans(&self) {
        for stage in self.stages() {
            for meter in stage.meters() {
                if let Some(log) = &meter.spans {
                    log.flush();
                }
            }
        }
    }

    pub(crate) fn start(&self) {
        lock(&self.started).get_or_insert_with(Instant::now);
    }

    pub(crate) fn end(&self) {
        lock(&self.ended).get_or_insert_with(Instant::now);
    }

    pub(crate) fn started(&self) -> Option<Instant> {
        *lock(&self.started)
    }

    /// From the start to the end of the run, or to now while it runs.
    pub(crate) fn elapsed(&self) -> Duration {
        let Some(started) = self.started() else {
            return Duration::ZERO;
        };
        match *lock(&self.ended) {
            Some(ended) => ended.saturating_duration_since(started),
            None => started.elapsed(),
        }
    }

    /// Registers a stage; its workers get their meters from the result.
    pub(crate) fn stage(
        &self,
        name: &Arc<str>,
        kind: StageKind,
        workers: usize,
        queued: Option<Box<dyn Fn() -> usize + Send + Sync>>,
    ) -> Arc<StageMeter> {
        let mut stages = lock(&self.stages);
        let stage = Arc::new(StageMeter {
            position: stages.len(),
            name: Arc::clone(name),
            kind,
            workers,
            queued,
            errors: AtomicU64::new(0),
            expected_items: AtomicU64::new(UNKNOWN),
            meters: Mutex::new(Vec::new()),
            tuner: std::sync::OnceLock::new(),
            recording: self.is_enabled(),
            spans: self.span_sink(),
            run_started: self.started().unwrap_or_else(Instant::now),
            remote: (kind == StageKind::Remote && self.is_enabled())
                .then(|| Arc::new(RemoteGauges::default())),
            python: AtomicBool::new(false),
        });
        stages.push(Arc::clone(&stage));
        stage
    }

    pub(crate) fn stages(&self) -> Vec<Arc<StageMeter>> {
        lock(&self.stages).clone()
    }
}

/// One stage's meters, and what the snapshot needs to know about the stage.
pub(crate) struct StageMeter {
    /// The stage's position in the run, the input's being 0.
    pub(crate) position: usize,
    pub(crate) name: Arc<str>,
    pub(crate) kind: StageKind,
    pub(crate) workers: usize,
    /// Reads the depth of the stage's input queue.
    pub(crate) queued: Option<Box<dyn Fn() -> usize + Send + Sync>>,
    pub(crate) errors: AtomicU64,
    /// How many items the stage will take in all, when that is known in advance (the
    /// input iterator's exact `size_hint`); [`UNKNOWN`] otherwise.
    expected_items: AtomicU64,
    pub(crate) meters: Mutex<Vec<Arc<WorkerMeter>>>,
    /// For a stage whose worker count the run tunes (`auto_workers`): its tuner, which its
    /// workers find here and the report reads.
    tuner: std::sync::OnceLock<Arc<dyn TunerGauge>>,
    recording: bool,
    spans: Option<Arc<dyn SpanSink>>,
    run_started: Instant,
    /// What only a remote stage records (when metrics are on).
    remote: Option<Arc<RemoteGauges>>,
    /// Whether the stage runs Python code (feature `python`): its workers take turns on
    /// the interpreter's GIL, and record their waits for it.
    python: AtomicBool,
}

/// What a remote stage's coordinator records besides its items: read from the server and
/// from the outcomes' envelopes.
#[derive(Default)]
pub(crate) struct RemoteGauges {
    /// Items in the stage's stream: waiting for a worker, or held by one.
    pub(crate) queue_depth: AtomicU64,
    /// Outcomes of items delivered more than once (a worker died or vanished holding them).
    pub(crate) redeliveries: AtomicU64,
    /// Redeliveries the server counts (`num_redelivered` of the stage's consumer).
    pub(crate) server_redeliveries: AtomicU64,
    /// The worker processes that sent outcomes: when each last did, by host and pid.
    workers: Mutex<SeenWorkers>,
    /// For how long (ms) items have waited on the server with no worker holding any; 0
    /// while workers take them.
    pub(crate) unserved_ms: AtomicU64,
    /// What the outcomes say the workers' calls took: wall time and CPU time (ns).
    pub(crate) busy_nanos: AtomicU64,
    pub(crate) cpu_nanos: AtomicU64,
    /// The coordinator's waits (ns): for input with no item out (every worker thread of
    /// the stage had nothing of it to do), and for room downstream for outputs.
    pub(crate) starved_nanos: AtomicU64,
    pub(crate) blocked_nanos: AtomicU64,
}

/// The worker processes a remote stage has heard from.
#[derive(Default)]
struct SeenWorkers {
    last_outcome: BTreeMap<(String, u32), std::time::Instant>,
    /// The longest a message of items took a worker: a worker still counts as live for
    /// a few of those after its last outcome.
    longest_message: Duration,
}

/// How long a worker still counts as serving after its last outcome, at least.
const LIVE_AFTER_OUTCOME: Duration = Duration::from_secs(5);

impl RemoteGauges {
    /// Notes an outcome message from worker process `pid` on `host`, whose calls took
    /// `busy` and `cpu`.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn outcome_from(&self, host: String, pid: u32, busy: Duration, cpu: Duration) {
        self.busy_nanos.fetch_add(busy.as_nanos() as u64, Relaxed);
        self.cpu_nanos.fetch_add(cpu.as_nanos() as u64, Relaxed);
        let mut workers = lock(&self.workers);
        workers.longest_message = workers.longest_message.max(busy);
        workers
            .last_outcome
            .insert((host, pid), std::time::Instant::now());
    }

    /// Worker processes that sent outcomes, per host, sorted by host.
    pub(crate) fn workers(&self) -> Vec<(String, usize)> {
        let workers = lock(&self.workers);
        let mut per_host: Vec<(String, usize)> = Vec::new();
        for (host, _) in workers.last_outcome.keys() {
            match per_host.last_mut() {
                Some((last, count)) if last == host => *count += 1,
                _ => per_host.push((host.clone(), 1)),
            }
        }
        per_host
    }

    /// The worker processes that serve the stage now: those whose last outcome is recent,
    /// for a stage whose messages take at most a few seconds; longer for slower ones.
    pub(crate) fn live_workers(&self) -> usize {
        let workers = lock(&self.workers);
        let window = LIVE_AFTER_OUTCOME.max(workers.longest_message.saturating_mul(3));
        let now = std::time::Instant::now();
        (workers.last_outcome.values())
            .filter(|last| now.saturating_duration_since(**last) <= window)
            .count()
    }
}

impl StageMeter {
    /// A remote stage's gauges, or `None` for another kind or when metrics are off.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn remote_gauges(&self) -> Option<Arc<RemoteGauges>> {
        self.remote.clone()
    }

    /// A meter for one more worker, or `None` when metrics are off.
    pub(crate) fn worker(&self) -> Option<Arc<WorkerMeter>> {
        if !self.recording {
            return None;
        }
        let mut meters = lock(&self.meters);
        let spans = self.spans.as_ref().map(|sink| {
            let track = Track {
                stage: self.position,
                name: Arc::clone(&self.name),
                worker: meters.len(),
            };
            sink.track(&track);
            SpanLog {
                sink: Arc::clone(sink),
                track,
                pending: Mutex::new((Vec::new(), 0)),
            }
        });
        let meter = Arc::new(WorkerMeter::new(meters.len(), spans, self.run_started));
        meters.push(Arc::clone(&meter));
        Some(meter)
    }

    /// The meters of the stage's workers so far.
    pub(crate) fn meters(&self) -> Vec<Arc<WorkerMeter>> {
        lock(&self.meters).clone()
    }

    /// Makes `tuner` the stage's.
    pub(crate) fn tune(&self, tuner: Arc<dyn TunerGauge>) {
        let _ = self.tuner.set(tuner);
    }

    /// The stage's tuner, if its worker count is tuned.
    pub(crate) fn tuner(&self) -> Option<&Arc<dyn TunerGauge>> {
        self.tuner.get()
    }

    pub(crate) fn failed(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// Marks the stage as running Python code: the report then reads its waits for the
    /// GIL ([`WorkerMeter::gil_waited`]) and words its advice for Python.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn runs_python(&self) {
        self.python.store(true, Relaxed);
    }

    pub(crate) fn is_python(&self) -> bool {
        self.python.load(Relaxed)
    }

    /// Records how many items the stage will handle, from an iterator's `size_hint`: only
    /// an exact hint (equal bounds) says so, for progress bars to show a total and an ETA.
    #[allow(dead_code)] // called by the input's driver (`engine::source`)
    pub(crate) fn expect_items(&self, (low, high): (usize, Option<usize>)) {
        if high == Some(low) {
            self.expected_items.store(low as u64, Relaxed);
        }
    }

    /// How many items the stage will handle in all, when known in advance.
    pub(crate) fn expected_items(&self) -> Option<u64> {
        Some(self.expected_items.load(Relaxed)).filter(|&n| n != UNKNOWN)
    }
}

/// The value of an unknown count.
const UNKNOWN: u64 = u64::MAX;

/// A counter only its worker writes: a load and a store, no locked instruction.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Raises the counter to `n` if it is lower.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    fn raise(&self, n: u64) {
        if n > self.get() {
            self.set(n);
        }
    }
}

/// One worker's record. Written by its worker only; read by snapshots.
#[repr(align(128))]
pub(crate) struct WorkerMeter {
    pub(crate) index: usize,
    pub(crate) items_in: Counter,
    pub(crate) items_out: Counter,
    /// Nanoseconds spent working (for an async driver: summed over its items in flight).
    pub(crate) busy: Counter,
    /// Nanoseconds of CPU time, when the platform has a thread CPU clock (for an async
    /// driver: the time its futures spent being polled).
    pub(crate) cpu: Counter,
    pub(crate) starved: Counter,
    pub(crate) blocked: Counter,
    /// Nanoseconds parked by the stage's tuner (`auto_workers`): not part of the stage's
    /// worker time at all, so neither busy nor starved.
    pub(crate) parked: Counter,
    /// For async drivers: items in flight right now.
    pub(crate) in_flight: Counter,
    /// Nanoseconds the worker's thread was ready to run but waited for a core, read when
    /// the worker ends (Linux only).
    pub(crate) runnable: Counter,
    /// For a worker whose items run in another process: that process's wait for a core.
    process_runnable: Counter,
    /// Whether the worker's items run in another process, whose CPU time `cpu` is.
    elsewhere: AtomicBool,
    /// For async drivers: the polls that held a runtime thread over [`STALL`]. Their
    /// total and longest (less any wait for a core that was measured), and, of the polls
    /// whose CPU time was measured, that part of their total and its CPU time.
    pub(crate) stalled: Counter,
    pub(crate) longest_stall: Counter,
    pub(crate) stalled_measured: Counter,
    pub(crate) stalled_cpu: Counter,
    /// For a worker that runs Python code: nanoseconds from asking for the GIL (after a
    /// wait of its own, detached) to holding it, and how many times it asked.
    pub(crate) gil_wait: Counter,
    pub(crate) gil_asks: Counter,
    has_cpu: AtomicBool,
    /// Whether `runnable` is measured: the worker's thread reads its scheduler statistics,
    /// or its process's are reported.
    has_runnable: AtomicBool,
    activity: AtomicU8,
    /// Whether the worker's life is timed (it has a [`Recorder`]): not an async driver's.
    has_life: AtomicBool,
    /// Whether waits for input go untimed, their total being whatever time the worker did
    /// not spend working or blocked: see [`WorkerMeter::times`].
    starved_is_the_rest: AtomicBool,
    /// The worker thread's Linux thread id (0 if unknown), and its CPU time and wait for a
    /// core when it started, so a snapshot can read its scheduler statistics while it runs.
    thread: Counter,
    sched_at_start: SchedCounters,
    /// How many times the thread was put on a core, once it ended: see [`Sched`].
    slices: Counter,
    /// How many workers a wait of this one stands for (an async driver's slots), as last
    /// told.
    slots: Counter,
    /// How many times the worker parked on its queue for input, and to hand on.
    parks: Counter,
    blocked_parks: Counter,
    /// In the batches where it was measured (slow ones: see [`Recorder::batch`]), how
    /// many times the worker's thread gave up its core of its own accord (Linux), and
    /// the items of those batches.
    gave_up_core: Counter,
    gave_up_core_items: Counter,
    /// When the worker began and, once it ended, how long it lived (0 until then), in
    /// nanoseconds since the run's start. `lifetime` is written last, with release
    /// ordering: once it reads non-zero, every other figure is final.
    began: Counter,
    lifetime: AtomicU64,
    spans: Option<SpanLog>,
    run_started: Instant,
}

/// A [`Sched`] reading kept in a meter.
#[derive(Default)]
struct SchedCounters {
    cpu: Counter,
    runnable: Counter,
    slices: Counter,
}

impl WorkerMeter {
    /// Whether this worker's waits for input go untimed: they are what its life leaves
    /// once its busy and blocked times are taken out.
    pub(crate) fn starved_untimed(&self) -> bool {
        self.starved_is_the_rest.load(Relaxed)
    }

    fn new(index: usize, spans: Option<SpanLog>, run_started: Instant) -> Self {
        WorkerMeter {
            index,
            items_in: Counter::default(),
            items_out: Counter::default(),
            busy: Counter::default(),
            cpu: Counter::default(),
            starved: Counter::default(),
            blocked: Counter::default(),
            parked: Counter::default(),
            in_flight: Counter::default(),
            runnable: Counter::default(),
            process_runnable: Counter::default(),
            elsewhere: AtomicBool::new(false),
            stalled: Counter::default(),
            longest_stall: Counter::default(),
            stalled_measured: Counter::default(),
            stalled_cpu: Counter::default(),
            gil_wait: Counter::default(),
            gil_asks: Counter::default(),
            has_cpu: AtomicBool::new(false),
            has_runnable: AtomicBool::new(false),
            activity: AtomicU8::new(Activity::Busy as u8),
            has_life: AtomicBool::new(false),
            starved_is_the_rest: AtomicBool::new(false),
            thread: Counter::default(),
            sched_at_start: SchedCounters::default(),
            slices: Counter::default(),
            slots: Counter::default(),
            parks: Counter::default(),
            blocked_parks: Counter::default(),
            gave_up_core: Counter::default(),
            gave_up_core_items: Counter::default(),
            began: Counter::default(),
            lifetime: AtomicU64::new(0),
            spans,
            run_started,
        }
    }

    /// The worker is about to park on a queue. Returns the clock reading to pass to
    /// [`wait_ends`](Self::wait_ends), or `None` when this wait needs no timing: a wait for
    /// input of a worker whose starved time is the rest of its time (the clock reads
    /// would cost a few percent where parking is frequent and items trivial).
    #[inline]
    pub(crate) fn wait_begins(&self, activity: Activity) -> Option<Instant> {
        self.activity.store(activity as u8, Relaxed);
        let starved = activity == Activity::Starved;
        match starved {
            true => self.parks.add(1),
            false => self.blocked_parks.add(1),
        }
        let untimed = starved && self.starved_is_the_rest.load(Relaxed);
        (!untimed).then(Instant::now)
    }

    /// The end of a wait that [`wait_begins`](Self::wait_begins) did not time.
    #[inline]
    pub(crate) fn wait_ends_untimed(&self) {
        self.activity.store(Activity::Busy as u8, Relaxed);
    }

    /// The worker is back from parking since `since`.
    #[inline]
    pub(crate) fn wait_ends(&self, activity: Activity, since: Instant) {
        self.wait_ends_for(activity, since, 1);
    }

    /// Like [`wait_ends`](Self::wait_ends), for a waiter that stands for `slots` workers
    /// (an async driver and its futures): the wait counts for each of them.
    pub(crate) fn wait_ends_for(&self, activity: Activity, since: Instant, slots: usize) {
        let length = since.elapsed();
        let total = length.saturating_mul(slots.min(u32::MAX as usize) as u32);
        let (counter, what) = match activity {
            Activity::Blocked => (&self.blocked, SpanKind::Blocked),
            _ => (&self.starved, SpanKind::Starved),
        };
        counter.add(total.as_nanos() as u64);
        self.slots.set(slots as u64);
        self.activity.store(Activity::Busy as u8, Relaxed);
        if self.spans.is_some() {
            self.span(since, length, what, 0);
        }
    }

    /// When the worker began, since the run's start: `None` for an async driver, whose
    /// life is not timed (it starts with the run).
    pub(crate) fn began(&self) -> Option<Duration> {
        self.has_life
            .load(Relaxed)
            .then(|| Duration::from_nanos(self.began.get()))
    }

    /// The CPU time and the wait for a core of the processes this worker ran its items in.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn set_process_times(&self, times: ProcessTimes) {
        self.cpu.set(times.cpu);
        self.process_runnable.set(times.runnable);
        self.has_cpu.store(true, Relaxed);
    }

    /// The worker asked for the GIL and got it `waited` later.
    #[inline]
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn gil_waited(&self, waited: Duration) {
        self.gil_wait.add(waited.as_nanos() as u64);
        self.gil_asks.add(1);
    }

    /// The totals of an async worker whose futures are timed elsewhere (a Python async
    /// stage's coroutines, timed on their event loop): they replace the meter's.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn set_async_totals(&self, totals: &AsyncTotals) {
        self.items_in.set(totals.items);
        self.busy.set(totals.busy.as_nanos() as u64);
        self.cpu.set(totals.polled.as_nanos() as u64);
        self.has_cpu.store(true, Relaxed);
        self.starved.set(totals.starved.as_nanos() as u64);
        self.stalled.set(totals.stalled.as_nanos() as u64);
        self.longest_stall
            .set(totals.longest_stall.as_nanos() as u64);
        self.stalled_measured
            .set(totals.stalled_measured.as_nanos() as u64);
        self.stalled_cpu.set(totals.stalled_cpu.as_nanos() as u64);
        self.in_flight.set(totals.in_flight);
    }

    /// An async driver has ended.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn finished(&self) {
        self.activity.store(Activity::Done as u8, Relaxed);
    }

    pub(crate) fn activity(&self) -> Activity {
        match self.activity.load(Relaxed) {
            0 => Activity::Busy,
            1 => Activity::Starved,
            2 => Activity::Blocked,
            _ => Activity::Done,
        }
    }

    /// An async worker: its CPU time is its futures' poll time.
    #[cfg(feature = "async")]
    fn measures_poll_time(&self) {
        self.has_cpu.store(true, Relaxed);
    }

    /// The times its thread gave up its core of its own accord inside items (sleeps, IO,
    /// locks), and the items measured: about once per item for work that waits, next to
    /// never for work that computes. Measured in slow batches only (see
    /// [`Recorder::batch`]); `None` where nothing was measured.
    pub(crate) fn gave_up_core_in_items(&self) -> Option<(u64, u64)> {
        let items = self.gave_up_core_items.get();
        (items > 0).then(|| (self.gave_up_core.get(), items))
    }

    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        self.has_cpu
            .load(Relaxed)
            .then(|| Duration::from_nanos(self.cpu.get()))
    }

    /// Records a poll that held its thread for `wall`, over [`STALL`], and returns the
    /// CPU time to charge for it. With the thread's scheduler readings from before and
    /// after the poll, the poll's wait for a core is taken out (the thread was preempted:
    /// not the future's doing), and its CPU time, which is what it is charged, tells a
    /// computation from a blocking call. Without them, it is charged its wall time.
    #[cfg(feature = "async")]
    #[cold]
    fn stall(&self, wall: Duration, readings: Option<(Sched, Sched)>) -> u64 {
        let wall = wall.as_nanos() as u64;
        let (held, charged) = match readings {
            Some((before, after)) => {
                let preempted = after.runnable.saturating_sub(before.runnable);
                let held = wall.saturating_sub(preempted);
                let cpu = after.cpu.saturating_sub(before.cpu).min(held);
                if held <= STALL.as_nanos() as u64 {
                    return cpu;
                }
                self.stalled_measured.add(held);
                self.stalled_cpu.add(cpu);
                (held, cpu)
            }
            None => (wall, wall),
        };
        self.stalled.add(held);
        self.longest_stall.raise(held);
        charged
    }

    pub(crate) fn span(&self, started: Instant, length: Duration, what: SpanKind, items: usize) {
        let Some(spans) = &self.spans else {
            return;
        };
        spans.push(Span {
            start: started.saturating_duration_since(self.run_started),
            length,
            what,
            items: items.min(u32::MAX as usize) as u32,
        });
    }
}

/// A worker's handle on its meter, owned by the worker's thread: the meter, and the
/// worker's CPU clock readings, which need no sharing.
pub(crate) struct Recorder {
    pub(crate) meter: Arc<WorkerMeter>,
    /// The thread's scheduler statistics when it began (Linux), for its wait for a core.
    sched_at_start: Option<Sched>,
    cpu_at_start: Option<Duration>,
    /// Whether this thread's voluntary context switches are counted in its batches (a
    /// worker that runs its items on its own thread), and the count when the current
    /// batch began, if it is measured.
    counts_switches: bool,
    switches_at_batch: Option<u64>,
    /// The worker's own waits inside the current batch, which gave up its core but not
    /// for the items (a Python worker's pause to hand the GIL on): not counted as theirs.
    own_waits: u64,
    /// Whether the last batch was slow enough to measure the next one.
    slow: bool,
    /// When the CPU clock is due to be read again.
    next_cpu_read: Instant,
    /// The meter's blocked time when the current batch began.
    blocked_seen: u64,
}

/// A batch this long is followed by one whose voluntary context switches are counted.
const SLOW_BATCH: Duration = Duration::from_millis(1);

impl Recorder {
    /// Starts recording; call it on the worker's own thread, which zeroes its CPU clock.
    pub(crate) fn begin(meter: Arc<WorkerMeter>) -> Self {
        let cpu_at_start = thread_cpu_time();
        meter.has_cpu.store(cpu_at_start.is_some(), Relaxed);
        let sched_at_start = Self::read_sched_at_start(&meter);
        let mut recorder = Self::start(meter, cpu_at_start, sched_at_start);
        recorder.counts_switches = true;
        recorder
    }

    /// Reads the thread's scheduler statistics as it starts, so a snapshot can read them
    /// again while it runs, and its drop when it ends.
    fn read_sched_at_start(meter: &WorkerMeter) -> Option<Sched> {
        let sched_at_start = Sched::of_this_thread();
        if let (Some(sched), Some(thread)) = (sched_at_start, this_thread_id()) {
            meter.sched_at_start.cpu.set(sched.cpu);
            meter.sched_at_start.runnable.set(sched.runnable);
            meter.sched_at_start.slices.set(sched.slices);
            meter.thread.set(thread);
            meter.has_runnable.store(true, Relaxed);
        }
        sched_at_start
    }

    fn start(
        meter: Arc<WorkerMeter>,
        cpu_at_start: Option<Duration>,
        sched_at_start: Option<Sched>,
    ) -> Self {
        let now = Instant::now();
        meter.activity.store(Activity::Busy as u8, Relaxed);
        let began = now.saturating_duration_since(meter.run_started);
        meter.began.set(began.as_nanos() as u64);
        meter.has_life.store(true, Relaxed);
        Recorder {
            meter,
            sched_at_start,
            cpu_at_start,
            counts_switches: false,
            switches_at_batch: None,
            own_waits: 0,
            slow: true,
            next_cpu_read: now + CPU_SAMPLE_EVERY,
            blocked_seen: 0,
        }
    }

    /// For a worker that records every batch of work: its waits for input go untimed, and
    /// count as whatever time it did not spend working or blocked (see
    /// [`WorkerMeter::times`]). (A trace still times them, to draw them.)
    pub(crate) fn starved_is_the_rest(self) -> Self {
        let untimed = self.meter.spans.is_none();
        self.meter.starved_is_the_rest.store(untimed, Relaxed);
        self
    }

    /// Starts recording for a worker whose work runs in another process: the thread's own
    /// CPU clock says nothing about it, so the caller reports the process's times with
    /// [`WorkerMeter::set_process_times`]. The thread's own waits for a core still count:
    /// each round trip ends with the thread waking up for the answer.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn begin_elsewhere(meter: Arc<WorkerMeter>) -> Self {
        meter.elsewhere.store(true, Relaxed);
        let sched_at_start = Self::read_sched_at_start(&meter);
        Self::start(meter, None, sched_at_start)
    }

    /// A batch begins: the clock reading to pass to [`batch`](Self::batch).
    #[inline]
    pub(crate) fn batch_begins(&mut self) -> Instant {
        self.blocked_seen = self.meter.blocked.get();
        self.own_waits = 0;
        if self.counts_switches && self.slow {
            self.switches_at_batch = thread_usage().map(|(_, switches)| switches);
        }
        Instant::now()
    }

    /// Records a batch of `items` worked on from `started` (from
    /// [`batch_begins`](Self::batch_begins)) to `now`, which is `took` later.
    #[inline]
    pub(crate) fn batch(&mut self, started: Instant, now: Instant, took: Duration, items: usize) {
        // Time spent blocked on a full queue mid-batch (a hand-over) is not work.
        let blocked = self.meter.blocked.get();
        let blocked_meanwhile = Duration::from_nanos(blocked.saturating_sub(self.blocked_seen));
        let length = took.saturating_sub(blocked_meanwhile);
        {
            let meter = &*self.meter;
            meter.items_in.add(items as u64);
            meter.busy.add(length.as_nanos() as u64);
            if meter.spans.is_some() {
                meter.span(started, length, SpanKind::Work, items);
            }
        }
        if let Some(before) = self.switches_at_batch.take() {
            if let Some((_, after)) = thread_usage() {
                let meter = &*self.meter;
                let switches = after.saturating_sub(before).saturating_sub(self.own_waits);
                meter.gave_up_core.add(switches);
                meter.gave_up_core_items.add(items as u64);
            }
        }
        // Only slow batches are measured: two system calls are nothing next to a
        // millisecond, and items that wait or compute for long are the ones to tell apart.
        self.slow = took >= SLOW_BATCH;
        if now >= self.next_cpu_read {
            self.read_cpu(now);
        }
    }

    /// The worker is about to wait, inside a batch, for a reason of its own (not its
    /// items'): the core it gives up is not counted as the items' (see
    /// [`WorkerMeter::gave_up_core_in_items`]).
    #[inline]
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn own_wait(&mut self) {
        self.own_waits += 1;
    }

    /// For a worker that is one long call (a join, the input iterator): everything since
    /// `started` that was not waiting was work.
    pub(crate) fn whole_life_busy(&mut self, started: Instant) {
        let now = Instant::now();
        let meter = &*self.meter;
        let waited = Duration::from_nanos(meter.starved.get() + meter.blocked.get());
        let busy = now
            .saturating_duration_since(started)
            .saturating_sub(waited);
        meter.busy.set(busy.as_nanos() as u64);
        if meter.spans.is_some() {
            meter.span(started, busy, SpanKind::Work, 0);
        }
    }

    fn read_cpu(&mut self, now: Instant) {
        self.next_cpu_read = now + CPU_SAMPLE_EVERY;
        if let (Some(start), Some(cpu)) = (self.cpu_at_start, thread_cpu_time()) {
            self.meter
                .cpu
                .set(cpu.saturating_sub(start).as_nanos() as u64);
        }
    }
}

impl Drop for Recorder {
    /// The worker has ended (or unwound): a last reading of its clocks, then its lifetime,
    /// which marks its figures final, and it is no longer busy.
    fn drop(&mut self) {
        let now = Instant::now();
        self.read_cpu(now);
        if let (Some(start), Some(end)) = (self.sched_at_start, Sched::of_this_thread()) {
            let runnable = end.runnable.saturating_sub(start.runnable);
            self.meter.runnable.set(runnable);
            self.meter
                .slices
                .set(end.slices.saturating_sub(start.slices));
        }
        let lifetime = now.saturating_duration_since(self.meter.run_started);
        let lifetime = lifetime.saturating_sub(Duration::from_nanos(self.meter.began.get()));
        self.meter
            .lifetime
            .store((lifetime.as_nanos() as u64).max(1), Release);
        self.meter.activity.store(Activity::Done as u8, Relaxed);
    }
}
