//! Worker counts tuned by the run itself (`auto_workers(max)`).
//!
//! A tuned stage starts all `max` of its workers, but only the first `active` take input;
//! the others park here, holding nothing, until the count rises past them. The count starts
//! at the number of cores and changes at the end of each *window*: a stretch long enough for every active
//! worker to finish a few items. What the window measured (throughput, waits for input and
//! for room downstream, CPU used by the stage and by the rest of the process) goes to
//! [`climb::Climb`], which decides the next count.
//!
//! No thread of its own: the worker that finds a window over, when it comes back for input,
//! does the step (under a `try_lock`, so only one does and no one waits for it). Starting
//! every worker up front, rather than spawning as the count grows, keeps the launch and the
//! shutdown protocol exactly those of a fixed stage: the parked workers are ordinary
//! workers, and the tuner is registered with the run so that a cancel wakes them.
//!
//! The tuner lives outside the model-checked protocol (a parked worker holds no item and
//! no queue state), so it uses `std`'s primitives and clock, even under shuttle.

pub(crate) mod climb;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::engine::meter::{
    process_cpu_time, thread_usage, Activity, Choice, TunerGauge, WorkerMeter,
};
use crate::engine::run::{Close, RunState};
use crate::engine::sync::lock_std;
use climb::{Climb, Window, OUTPACED};

/// The shortest window.
const WINDOW: Duration = Duration::from_millis(20);
/// The first window may end this early, once each worker finished an item, if the
/// stage's consumer is seen waiting for it then ([`seen_waiting`]). The
/// starting count is a guess, and a stage of waits (IO) at one worker per core starves
/// its consumer until the first step: in the main example (`crawl_report`), `analyse`
/// waited for most of a 20 ms first window.
const FIRST_WINDOW: Duration = Duration::from_millis(5);
/// Until the first full window, the consumer is looked at again this often.
const FIRST_LOOK_EVERY: Duration = Duration::from_millis(1);
/// The longest window, however few items finished in it.
const LONGEST_WINDOW: Duration = Duration::from_millis(500);
/// A window ends once each active worker finished this many items (on average).
const ITEMS_PER_WORKER: u64 = 2;
/// Items that compute give up their core at most this often per item (a hand-over that
/// finds the next queue full, say); items that wait give it up at least once each.
const GAVE_UP_WHEN_COMPUTING: f64 = 0.25;
/// A parked worker checks the stage's state at least this often, should a wake-up be
/// missed: a step up, the stage's end and a cancel all wake it. Not more often: a stage
/// tuned up to 128 workers parks most of them, and their checks every 50 ms took 2% of
/// the cores from the stages that computed.
const PARKED_CHECK: Duration = Duration::from_secs(1);
/// The backlog between a stage and its consumer counts as grown over a window only from
/// this many items: a consumer that keeps up is a few items behind now and then.
const GREW_AT_LEAST: u64 = 2;
/// A consumer that waited for input this share of a window (over its workers) has time to
/// spare, whatever it took.
const CONSUMER_WAITING: f64 = 0.5;

/// A consumer busy this share of a window (its active workers' time) had little time to
/// spare. (Its busy time is counted as each batch ends, so a window of a few slow items
/// reads a little low or high.)
const SATURATED: f64 = 0.75;
/// A consumer with this many items waiting for it (or half its queue, if less), or that
/// fell this many behind in a window, is behind: one that keeps up, even at a high load,
/// rarely lets a few pile up.
const BEHIND: usize = 8;

/// Whether a stage's consumer is waiting for it now, with nothing in the way: more of the
/// consumer's workers are parked on the queue between them than items wait there (an
/// item just handed on wakes one of them), no worker of the stage is parked on a full
/// queue or found it full in this window (`blocked_looks`), and the stage's own input was
/// there at this look. Enough to end a first window early; a backlog, or its absence,
/// takes longer to show.
fn seen_waiting(flow: &Flow, blocked_looks: u64, input_empty: bool) -> bool {
    flow.consumer_starved_now > flow.queued
        && flow.blocked_now == 0
        && blocked_looks == 0
        && !input_empty
}

/// What flowed out of a stage and into its consumer so far, read from the run's meters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flow {
    /// Items the stage finished.
    pub(crate) taken: u64,
    /// Items its consumer (the next stage) finished, or took, for an async one.
    pub(crate) consumed: u64,
    /// Of the stage's workers, how many are waiting for room in the output queue now.
    pub(crate) blocked_now: usize,
    /// Items in the output queue now.
    pub(crate) queued: usize,
    /// The consumer's busy time so far, over all its workers.
    pub(crate) consumer_busy: Duration,
    /// The consumer's time waiting for input so far, over all its workers, as far as it
    /// is timed as it goes (a join's is; a worker whose waits are the rest of its time
    /// has its busy time timed instead).
    pub(crate) consumer_starved: Duration,
    /// The consumer's time waiting for room downstream so far, over all its workers.
    pub(crate) consumer_blocked: Duration,
    /// Whether the consumer's waits for input go untimed (see [`Flow::consumer_starved`]):
    /// then they are the time it spent neither busy nor blocked.
    pub(crate) consumer_starved_untimed: bool,
    /// The consumer's workers taking input now.
    pub(crate) consumer_workers: usize,
    /// Of the consumer's workers, how many are parked on an empty input queue now.
    pub(crate) consumer_starved_now: usize,
}

/// Reads a stage's [`Flow`]; `None` when the run records no metrics, or the stage has no
/// consumer stage (the last stage's consumer is the caller).
pub(crate) type FlowGauge = Box<dyn Fn() -> Option<Flow> + Send + Sync>;

/// The [`Flow`] of the stage at `position` in `run` (its output queue is the next
/// stage's input queue). It holds the run weakly: the run holds the tuner.
pub(crate) fn flow_gauge(run: &Arc<RunState>, position: usize) -> FlowGauge {
    let run = Arc::downgrade(run);
    Box::new(move || {
        let run = run.upgrade()?;
        if !run.meter.is_enabled() {
            return None;
        }
        let stages = run.meter.stages();
        let (stage, consumer) = (stages.get(position)?, stages.get(position + 1)?);
        let (mut taken, mut blocked_now) = (0, 0);
        for worker in stage.meters() {
            taken += worker.items_in.get();
            blocked_now += usize::from(worker.activity() == Activity::Blocked);
        }
        let (mut consumed, mut busy, mut starved, mut blocked) = (0, 0, 0, 0);
        let mut starved_untimed = true;
        let mut consumer_starved_now = 0;
        for worker in consumer.meters() {
            consumer_starved_now += usize::from(worker.activity() == Activity::Starved);
            consumed += worker.items_in.get();
            busy += worker.busy.get();
            starved += worker.starved.get();
            blocked += worker.blocked.get();
            starved_untimed &= worker.starved_untimed();
        }
        let queued = consumer.queued.as_ref().map_or(0, |queued| queued());
        let consumer_workers = consumer.tuner().map_or(consumer.workers, |t| t.active());
        Some(Flow {
            consumer_busy: Duration::from_nanos(busy),
            consumer_starved: Duration::from_nanos(starved),
            consumer_blocked: Duration::from_nanos(blocked),
            consumer_starved_untimed: starved_untimed,
            consumer_workers,
            consumer_starved_now,
            queued,
            taken,
            consumed,
            blocked_now,
        })
    })
}

/// One tuned stage's shared state.
pub(crate) struct Tuner {
    max: usize,
    cores: usize,
    active: AtomicUsize,
    closed: AtomicBool,
    /// The index the next worker to take a [`Seat`] gets.
    seats: AtomicUsize,
    /// When the current window may end, in nanoseconds since `created`: read without the
    /// lock by every look, so that only a look past it contends for the state.
    window_due: AtomicU64,
    created: Instant,
    finished: AtomicU64,
    cpu_nanos: AtomicU64,
    /// Voluntary context switches during items (sleeps, IO and lock waits).
    gave_up_core: AtomicU64,
    /// Items whose CPU time and switches were measured.
    measured: AtomicU64,
    looks: AtomicU64,
    starved_looks: AtomicU64,
    blocked_looks: AtomicU64,
    state: Mutex<State>,
    parked: Condvar,
    /// Reads what flowed out of the stage and into its consumer.
    flow: Option<FlowGauge>,
    /// The most items the stage's output queue holds.
    capacity: usize,
}

struct State {
    climb: Climb,
    window_began: Instant,
    process_cpu_at: Option<Duration>,
    /// Cores used by the rest of the process, smoothed over windows.
    others: Option<f64>,
    /// The flow when the window began.
    flow_at: Option<Flow>,
    /// Whether the last window found the consumer outpaced: a window must confirm it.
    outpaced_before: bool,
    peak: usize,
    steps: u64,
    /// Worker-seconds of active workers so far, and since when: the mean active count.
    active_seconds: f64,
    began: Instant,
}

impl TunerGauge for Tuner {
    fn active(&self) -> usize {
        Tuner::active(self)
    }

    fn choice(&self) -> Choice {
        Tuner::choice(self)
    }
}

impl Tuner {
    /// A tuner of up to `max` workers; `flow` reads what the stage hands its consumer
    /// through its output queue of `capacity` items.
    pub(crate) fn new(max: usize, flow: Option<FlowGauge>, capacity: usize) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // As many as the cores to begin with: right for work that computes, and a first
        // step for work that waits.
        let start = cores.clamp(1, max.max(1));
        Arc::new(Tuner {
            max,
            cores,
            active: AtomicUsize::new(start),
            closed: AtomicBool::new(false),
            seats: AtomicUsize::new(0),
            window_due: AtomicU64::new(FIRST_WINDOW.as_nanos() as u64),
            created: Instant::now(),
            finished: AtomicU64::new(0),
            cpu_nanos: AtomicU64::new(0),
            gave_up_core: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            looks: AtomicU64::new(0),
            starved_looks: AtomicU64::new(0),
            blocked_looks: AtomicU64::new(0),
            state: Mutex::new(State {
                climb: Climb::new(start, max),
                window_began: Instant::now(),
                process_cpu_at: process_cpu_time(),
                others: None,
                flow_at: None,
                outpaced_before: false,
                peak: start,
                steps: 0,
                active_seconds: 0.0,
                began: Instant::now(),
            }),
            parked: Condvar::new(),
            flow,
            capacity,
        })
    }

    /// How many workers take input now.
    #[inline]
    pub(crate) fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Records a look at the queues by a worker about to take input: whether the input was
    /// empty and whether the output was full. Ends the window if it is over.
    pub(crate) fn look(&self, input_empty: bool, output_full: bool) {
        self.looks.fetch_add(1, Relaxed);
        if input_empty {
            self.starved_looks.fetch_add(1, Relaxed);
        }
        if output_full {
            self.blocked_looks.fetch_add(1, Relaxed);
        }
        self.maybe_step(input_empty);
    }

    /// Records `items` finished. `usage` is what they took, when measured: CPU time, and
    /// how many times the worker gave up its core meanwhile.
    #[inline]
    pub(crate) fn finished(&self, items: usize, usage: Option<(Duration, u64)>) {
        self.finished.fetch_add(items as u64, Relaxed);
        if let Some((cpu, gave_up)) = usage {
            self.cpu_nanos.fetch_add(cpu.as_nanos() as u64, Relaxed);
            self.gave_up_core.fetch_add(gave_up, Relaxed);
            self.measured.fetch_add(items as u64, Relaxed);
        }
    }

    /// Parks worker `index` while it is beyond the active count. Returns `false` when the
    /// stage is ending, so the worker should leave.
    pub(crate) fn admit(&self, index: usize) -> bool {
        if index < self.active() {
            return !self.closed.load(Relaxed);
        }
        let mut state = lock_std(&self.state);
        loop {
            if self.closed.load(Relaxed) {
                return false;
            }
            if index < self.active() {
                return true;
            }
            state = match self.parked.wait_timeout(state, PARKED_CHECK) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// What the tuner chose, and why.
    pub(crate) fn choice(&self) -> Choice {
        let state = lock_std(&self.state);
        let active = self.active();
        let since_step = state.window_began.elapsed().as_secs_f64();
        let lived = state.began.elapsed().as_secs_f64();
        let seconds = state.active_seconds + since_step * active as f64;
        let mean = match lived > 0.0 {
            true => (seconds / lived).round() as usize,
            false => active,
        };
        Choice {
            workers: active,
            max: self.max,
            peak: state.peak,
            mean: mean.clamp(1, self.max.max(1)),
            why: match state.steps {
                0 => "the run ended before it could measure the stage",
                _ => state.climb.reason().describe(),
            },
        }
    }

    fn maybe_step(&self, input_empty: bool) {
        let now = self.created.elapsed().as_nanos() as u64;
        if now < self.window_due.load(Relaxed) {
            return;
        }
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        let elapsed = state.window_began.elapsed();
        let active = self.active() as u64;
        let finished = self.finished.load(Relaxed);
        let long_enough = finished >= ITEMS_PER_WORKER * active || elapsed >= LONGEST_WINDOW;
        let over = elapsed >= WINDOW && long_enough;
        let first = state.steps == 0;
        let early = !over
            && first
            && finished >= active
            && self
                .flow
                .as_ref()
                .and_then(|flow| flow())
                .is_some_and(|flow| {
                    seen_waiting(&flow, self.blocked_looks.load(Relaxed), input_empty)
                });
        if !over && !early {
            if first {
                self.window_due
                    .store(now + FIRST_LOOK_EVERY.as_nanos() as u64, Relaxed);
            }
            return;
        }
        let mut window = self.take_window(&mut state, elapsed);
        // Seen, not inferred: more of the consumer's workers wait than items wait for them.
        window.consumer_waits |= early;
        self.window_due
            .store(now + WINDOW.as_nanos() as u64, Relaxed);
        let before = self.active();
        state.active_seconds += elapsed.as_secs_f64() * before as f64;
        let next = state.climb.step(window);

        state.steps += 1;
        state.peak = state.peak.max(next);
        self.active.store(next, Relaxed);
        drop(state);
        if next > before {
            self.parked.notify_all();
        }
    }

    /// Reads and resets the window's counters.
    fn take_window(&self, state: &mut State, elapsed: Duration) -> Window {
        let seconds = elapsed.as_secs_f64();
        let finished = self.finished.swap(0, Relaxed);
        let stage_cpu = Duration::from_nanos(self.cpu_nanos.swap(0, Relaxed)).as_secs_f64();
        let gave_up_core = self.gave_up_core.swap(0, Relaxed);
        let measured = self.measured.swap(0, Relaxed);
        let looks = self.looks.swap(0, Relaxed).max(1) as f64;
        let starved = self.starved_looks.swap(0, Relaxed) as f64 / looks;
        let blocked = self.blocked_looks.swap(0, Relaxed) as f64 / looks;
        let process_cpu = process_cpu_time();
        let process_used = match (process_cpu, state.process_cpu_at) {
            (Some(now), Some(before)) => now.saturating_sub(before).as_secs_f64(),
            _ => stage_cpu,
        };
        state.process_cpu_at = process_cpu;
        state.window_began = Instant::now();
        let others_now = (process_used - stage_cpu).max(0.0) / seconds;
        let others = state
            .others
            .map_or(others_now, |before| (before + others_now) / 2.0);
        state.others = Some(others);
        // What the consumer finished of the items the stage finished: all of them, unless
        // the backlog between them grew by more than a few (which a consumer that keeps up
        // leaves now and then). The stage outpaced its consumer if that was less than
        // [`OUTPACED`] while the consumer had little time to spare (busy most of the
        // window, or several items behind). Two such windows in a row
        // hold the stage (one window's bursts and stalls, on a crowded machine, only pause
        // it). The backlog is in the queue, in the consumer's batch, and in the stage's
        // own output buffers, which it holds back while the consumer is busy: so it is
        // the items the stage finished that count, not those it handed on. (A filter, or
        // a branch, makes fewer or more outputs than it takes; a consumer it keeps busy
        // needs no more of it either way.)
        let flow = self.flow.as_ref().and_then(|flow| flow());
        let (mut consumer_took, mut outpaced, mut consumer_waits) = (1.0, false, false);
        let mut blocked = blocked;
        // Before the first window, nothing had flowed.
        let before = std::mem::replace(&mut state.flow_at, flow).unwrap_or_default();
        if let Some(now) = flow {
            let made = now.taken.saturating_sub(before.taken) as f64;
            let consumed = now.consumed.saturating_sub(before.consumed) as f64;
            let busy = now.consumer_busy.saturating_sub(before.consumer_busy);
            let workers_time = seconds * now.consumer_workers.max(1) as f64;
            let busy_share = busy.as_secs_f64() / workers_time;
            let starved = now.consumer_starved.saturating_sub(before.consumer_starved);
            let consumer_blocked = now.consumer_blocked.saturating_sub(before.consumer_blocked);
            let behind = BEHIND.min(self.capacity / 2).max(1);
            // A consumer that waited for input most of the window is not behind, whatever
            // it took, and it needs more of this stage.
            let waiting = match now.consumer_starved_untimed {
                // Neither busy nor blocked: waiting for input, as far as its busy time,
                // counted as its batches end, can tell. A few slow items read low, so the
                // backlog must say the same: it did not grow, and little is queued.
                true => {
                    let blocked_share = consumer_blocked.as_secs_f64() / workers_time;
                    1.0 - busy_share - blocked_share >= CONSUMER_WAITING
                        && made < consumed + GREW_AT_LEAST as f64
                        && now.queued < behind
                }
                // A join's waits are timed. It takes its input in batches, as they are
                // handed over, so what it took says little.
                false => starved.as_secs_f64() / workers_time >= CONSUMER_WAITING,
            };
            consumer_waits = waiting;
            let saturated = !waiting
                && (busy_share >= SATURATED
                    || now.queued >= behind
                    || made >= consumed + behind as f64);
            let took = match made >= consumed + GREW_AT_LEAST as f64 {
                true => consumed / made,
                false => 1.0,
            };
            outpaced = saturated && took < OUTPACED;
            if outpaced && state.outpaced_before {
                consumer_took = took;
            }
            state.outpaced_before = outpaced;
            // Workers waiting for room make no look while they wait: count them now too.
            let active = self.active().max(1);
            blocked = blocked.max(now.blocked_now.min(active) as f64 / active as f64);
        }
        Window {
            consumer_took,
            outpaced,
            consumer_waits,
            throughput: finished as f64 / seconds,
            starved,
            blocked,
            // Items that used CPU and rarely gave up the core (an item that waits gives
            // it up at least once): compute, however long they waited for a core.
            computes: measured > 0
                && stage_cpu > 0.0
                && (gave_up_core as f64) < measured as f64 * GAVE_UP_WHEN_COMPUTING,
            free_cores: (self.cores as f64 - others).max(1.0),
        }
    }
}

impl Close for Tuner {
    /// The stage is ending: parked workers leave.
    fn close(&self) {
        self.closed.store(true, Relaxed);
        let _state = lock_std(&self.state);
        self.parked.notify_all();
    }
}

/// One worker's place in a tuned stage: its index, and its CPU clock between batches.
pub(crate) struct Seat {
    tuner: Arc<Tuner>,
    index: usize,
    /// The worker thread's usage when its batch began.
    usage_at: Option<(Duration, u64)>,
    /// Where the worker's parked time goes, so its metrics leave it out.
    meter: Option<Arc<WorkerMeter>>,
}

impl Seat {
    /// A seat for one more worker of `tuner`'s stage.
    pub(crate) fn take(tuner: &Arc<Tuner>, meter: Option<&Arc<WorkerMeter>>) -> Self {
        Seat {
            tuner: Arc::clone(tuner),
            index: tuner.seats.fetch_add(1, Relaxed),
            usage_at: None,
            meter: meter.cloned(),
        }
    }

    /// Before the worker takes input: records the look, then parks while the seat is
    /// beyond the active count, after calling `before_parking` (to hand on what the worker
    /// holds). Returns `false` when the worker should leave.
    pub(crate) fn admit(
        &mut self,
        input_empty: bool,
        output_full: bool,
        before_parking: impl FnOnce(),
    ) -> bool {
        self.tuner.look(input_empty, output_full);
        let parks = self.index >= self.tuner.active();
        let parked_at = parks.then(|| {
            before_parking();
            Instant::now()
        });
        let admitted = self.tuner.admit(self.index);
        if let (Some(meter), Some(since)) = (&self.meter, parked_at) {
            meter.parked.add(since.elapsed().as_nanos() as u64);
        }
        admitted
    }

    /// The worker has its batch and begins it.
    pub(crate) fn begin(&mut self) {
        self.usage_at = thread_usage();
    }

    /// The worker finished `items` since its batch began.
    pub(crate) fn finished(&mut self, items: usize) {
        let usage = match (thread_usage(), self.usage_at.take()) {
            (Some((cpu, gave_up)), Some((cpu_at, gave_up_at))) => Some((
                cpu.saturating_sub(cpu_at),
                gave_up.saturating_sub(gave_up_at),
            )),
            _ => None,
        };
        self.tuner.finished(items, usage);
    }
}

impl Drop for Seat {
    /// A worker leaves only when its stage ends (its input is over, or the run stopped):
    /// the parked workers then leave too.
    fn drop(&mut self) {
        self.tuner.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuner of up to 64 workers whose consumer shows `flow`, `FIRST_WINDOW` into its
    /// first window, after one item a worker.
    fn one_item_a_worker_into(flow: Flow) -> (Arc<Tuner>, usize) {
        let tuner = Tuner::new(64, Some(Box::new(move || Some(flow))), 32);
        let start = tuner.active();
        tuner.finished(start, None);
        std::thread::sleep(FIRST_WINDOW + Duration::from_millis(1));
        (tuner, start)
    }

    /// One of the consumer's two workers parked on an empty queue, the stage unblocked.
    fn consumer_waiting() -> Flow {
        Flow {
            consumer_starved_now: 1,
            consumer_workers: 2,
            ..Flow::default()
        }
    }

    #[test]
    fn a_first_window_ends_early_for_a_consumer_seen_waiting() {
        let waiting = consumer_waiting();
        let (tuner, start) = one_item_a_worker_into(waiting);
        tuner.look(false, false);
        assert!(tuner.active() > start, "{} from {start}", tuner.active());
    }

    #[test]
    fn a_consumer_is_not_seen_waiting_while_anything_is_in_its_way() {
        let waiting = consumer_waiting();
        assert!(seen_waiting(&waiting, 0, false));
        let busy = Flow {
            consumer_starved_now: 0,
            ..waiting
        };
        let queued = Flow {
            queued: 1,
            ..waiting
        };
        let stage_blocked = Flow {
            blocked_now: 1,
            ..waiting
        };
        for flow in [busy, queued, stage_blocked] {
            assert!(!seen_waiting(&flow, 0, false), "{flow:?}");
        }
        // Nor when the stage's own workers found their output full, or its input empty.
        assert!(!seen_waiting(&waiting, 1, false));
        assert!(!seen_waiting(&waiting, 0, true));
    }
}
