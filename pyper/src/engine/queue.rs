//! The queue between two stages: bounded in items, closable, and batch-aware.
//!
//! Why not crossbeam-channel or async-channel? A stage queue needs three things that
//! neither offers together:
//!
//! * **Batches with an item-exact bound.** Workers hand over everything that is ready in
//!   one operation (one lock, one wake-up) instead of one operation per item, yet
//!   `throttle(n)` still means *n items*. A channel of `Vec<T>` counts chunks, not items.
//! * **`close()` that wakes everyone.** Cancelling a run must release every worker blocked
//!   on a full or an empty queue, whatever the bound. crossbeam-channel can only signal
//!   that by dropping every handle, which a worker stuck in user code cannot do.
//! * **Model checking.** Built on the primitives of [`crate::engine::sync`], the queue runs under
//!   shuttle in `tests/model_check.rs`, so its protocol is checked, not only tested.
//!
//! The queue is a `VecDeque` behind one mutex with two condition variables. A consumer
//! takes every ready item up to its batch limit in one lock; a producer appends a whole
//! batch in one lock. Nobody is woken unless somebody is parked. A worker that finds the
//! queue full (or empty) first gives up its core a few times before it parks
//! ([`Shared::snooze`]): spinning did not pay on 2 cores (threads outnumber cores, so a
//! spinning consumer only delays the producer it waits for), but a yield hands the core
//! to that very producer, and with a small throttle it saved most of the parks and
//! wake-ups (3 trivial stages at `throttle(1)` went from 0.45× to 2.3× hand-written
//! `bounded(1)` channels, see docs/benchmarks.md).
//!
//! With the `async` feature, async tasks wait on the same queue through two tokio
//! `Notify`s, next to the condition variables, so one queue joins any mix of thread and
//! async stages: whoever frees room or adds items wakes the waiters of both kinds.
//!
//! End of stream is the last [`Sender`] being dropped; a closed queue (cancellation) ends
//! at once and drops what it holds. Neither says *why* the stream ended: that is the run
//! state's business ([`crate::engine::run`]), so an error can never pass for a clean end.

use std::collections::VecDeque;

use crate::engine::meter::{Activity, WorkerMeter};
use crate::engine::run::{discard_or_resume, Close};
#[cfg(feature = "async")]
use crate::engine::sync::Instant;
use crate::engine::sync::{
    self, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering,
};

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receivers: usize,
    closed: bool,
    /// How many items were ever popped: the stage-input index of the next item.
    popped: u64,
    parked_receivers: Sleepers,
    parked_senders: usize,
    #[cfg(feature = "async")]
    async_receivers: Sleepers,
    #[cfg(feature = "async")]
    async_senders: usize,
    /// The shelves of the workers reading this queue, for work stealing.
    shelves: Vec<Arc<dyn Shelf<T>>>,
    /// How many items the last receiver to wait asked for: its batch's worth.
    want: usize,
    /// Whether producers have pushed lazily lately: the receiver then waits with a
    /// [`HOLD`] timeout, so items may be held for it (see [`Sender::push_all_lazy`]).
    lazy: bool,
    /// How many parked receivers wait with that timeout.
    timed_receivers: usize,
}

/// How long items pushed lazily may wait for a parked receiver before it wakes for them all
/// the same (see [`Sender::push_all_lazy`]): the most latency that waking a consumer a
/// batch at a time adds to a busy pipeline, and how often such a consumer wakes.
const HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// How many times a worker that finds its queue full (or empty) gives up its core before
/// it parks: see [`Shared::snooze`].
const SNOOZES: u32 = 4;

/// How many times, for a queue of at least [`WIDE_QUEUE`] items. Items cross such a queue
/// in batches of up to [`MAX_BATCH`](crate::engine::batch::MAX_BATCH), so the other side
/// is rarely more than a few turns of the scheduler from its next batch, and a park and
/// a wake-up cost more than the turns. In the harness's `overhead` (a source and three
/// trivial stages on 2 cores, default throttle), four turns left the stages parking and
/// waking thousands of times in some runs (child medians of 20, same runs: 96.5 ms, and
/// 58.2 ms with twelve; `handwritten-batched`: 52.0 ms). A small throttle keeps four:
/// there, the other side is one item away, and twelve turns made `overhead-throttle-1`
/// slower (222 → 384 ms).
const WIDE_SNOOZES: u32 = 12;

/// The smallest queue that gets [`WIDE_SNOOZES`].
const WIDE_QUEUE: usize = 1024;

/// How many times a worker waiting on a queue of `capacity` items gives up its core
/// before it parks.
fn snoozes(capacity: usize) -> u32 {
    match capacity >= WIDE_QUEUE {
        true => WIDE_SNOOZES,
        false => SNOOZES,
    }
}

/// Where a consumer that announces before it waits stands (`pop_batch_then`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announced {
    No,
    Yes,
    AndSnoozed,
}

/// The bound of a task's output queue unless [`Task::throttle`](crate::Task::throttle) says otherwise.
///
/// Pyper's queues are unbounded by default. Ours are not: a fast stage in front of a slow
/// one would otherwise buffer the whole stream, so memory would depend on the data rather
/// than on the pipeline. 4096 items is far more than the handful that keeps every worker
/// busy, and few enough that memory stays flat however long the stream.
pub const DEFAULT_THROTTLE: usize = 4096;

/// The consumers waiting for items, and how many of them were already woken.
///
/// Every notification wakes one waiter, and a woken waiter needs no second one: counting
/// them keeps a burst of small pushes from paying one wake-up call each while the first
/// woken consumer is still on its way.
#[derive(Default)]
struct Sleepers {
    parked: usize,
    woken: usize,
}

impl Sleepers {
    /// How many parked consumers to wake for `items` new items.
    fn wake_for(&mut self, items: usize) -> usize {
        let wake = items.min(self.parked.saturating_sub(self.woken));
        self.woken += wake;
        wake
    }

    fn park(&mut self) {
        self.parked += 1;
    }

    /// A waiter stopped waiting, woken or not. An unwoken one leaving makes the count of
    /// woken ones too small, which at worst costs a spare notification, never a lost one.
    fn unpark(&mut self) {
        self.parked -= 1;
        self.woken = self.woken.saturating_sub(1);
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// A copy of `items.len()`, and whether a parked receiver holds off, readable without
    /// the lock. On a cache line of its own, so that producers reading it do not contend
    /// with every lock of the state.
    gauge: CacheLine<Gauge>,
    capacity: usize,
    not_empty: Condvar,
    not_full: Condvar,
    #[cfg(feature = "async")]
    readable: tokio::sync::Notify,
    #[cfg(feature = "async")]
    writable: tokio::sync::Notify,
}

/// What producers read without the lock.
#[derive(Default)]
struct Gauge {
    len: AtomicUsize,
    /// Items wait for a parked receiver that was not woken for them yet.
    held: AtomicBool,
}

/// A value alone on its cache line (128 bytes covers the adjacent-line prefetcher too).
#[repr(align(128))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Creates a queue holding at most `capacity` items (`0` = unbounded).
pub(crate) fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receivers: 1,
            closed: false,
            popped: 0,
            parked_receivers: Sleepers::default(),
            parked_senders: 0,
            #[cfg(feature = "async")]
            async_receivers: Sleepers::default(),
            #[cfg(feature = "async")]
            async_senders: 0,
            shelves: Vec::new(),
            want: 1,
            lazy: false,
            timed_receivers: 0,
        }),
        gauge: CacheLine(Gauge::default()),
        capacity: if capacity == 0 { usize::MAX } else { capacity },
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
        #[cfg(feature = "async")]
        readable: tokio::sync::Notify::new(),
        #[cfg(feature = "async")]
        writable: tokio::sync::Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
            meter: None,
        },
        Receiver {
            shared,
            meter: None,
        },
    )
}

/// The queue can take no more items: it was closed, or every receiver is gone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Disconnected;

/// The producing end. The stream ends when the last clone is dropped.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
    /// The meter of the worker that owns this handle: it is charged for the items this
    /// handle pushes and the time it waits for room.
    meter: Option<Arc<WorkerMeter>>,
}

/// The consuming end. Producers stop when the last clone is dropped.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The meter of the worker that owns this handle: it is charged for the time the
    /// handle waits for items.
    meter: Option<Arc<WorkerMeter>>,
}

/// What the stage's input queue needs of a worker's shelf, whatever its output type.
pub(crate) trait Shelf<T>: Send + Sync {
    /// Puts items just taken from the queue (or stolen) on the shelf.
    fn deposit(&self, items: &mut Vec<(u64, T)>);

    /// Takes the back half of the unstarted items, rounded up, and `max` at most, into
    /// `into`.
    fn steal(&self, into: &mut Vec<(u64, T)>, max: usize);

    /// Hands on the outputs gathered on the shelf. Never called under the queue's lock:
    /// it may wait for room downstream.
    fn hand_on(&self);
}

/// What a push achieved without waiting.
enum Pushed {
    All,
    Full,
    Disconnected,
}

/// What a pop achieved without waiting (or, for a timed pop, within its time).
pub(crate) enum Popped {
    /// Items were taken; the stage-input index of the first.
    Items(u64),
    Empty,
    /// The stream has ended or the queue was closed.
    Over,
}

impl<T> Shared<T> {
    /// Moves as much of `batch` as fits, and wakes as many consumers as items arrived;
    /// when `lazy`, a lone consumer only once its batch's worth is there (see
    /// [`Sender::push_all_lazy`]).
    fn try_push(&self, state: &mut State<T>, batch: &mut Vec<T>, lazy: bool) -> Pushed {
        if state.closed || state.receivers == 0 {
            return Pushed::Disconnected;
        }
        let room = self.capacity - state.items.len();
        if room == 0 {
            return Pushed::Full;
        }
        let n = room.min(batch.len());
        if state.items.is_empty() && n == batch.len() {
            // The whole batch into an empty queue: the two exchange buffers, no item moves.
            let spare = Vec::from(std::mem::take(&mut state.items));
            state.items = VecDeque::from(std::mem::replace(batch, spare));
        } else {
            state.items.extend(batch.drain(..n));
        }
        self.gauge.len.store(state.items.len(), Ordering::Relaxed);
        if !(lazy && self.may_hold(state)) {
            self.wake_receivers(state, n);
        }
        if batch.is_empty() {
            Pushed::All
        } else {
            Pushed::Full
        }
    }

    /// Whether the items queued may wait for a batch's worth before the receiver is woken:
    /// it is the only receiver (no sibling could take them), the queue is below both its
    /// receiver's batch and its bound (a full queue always wakes it), and none has waited
    /// [`HOLD`] yet.
    fn may_hold(&self, state: &mut State<T>) -> bool {
        if cfg!(feature = "shuttle") {
            // Shuttle's timed waits never time out: holding is not modelled.
            return false;
        }
        state.lazy = true;
        let lone = state.receivers == 1 && state.parked_receivers.parked == 1;
        #[cfg(feature = "async")]
        let lone = lone && state.async_receivers.parked == 0;
        // A receiver in an untimed wait is woken: it waits with the timeout from now on.
        if !lone || state.timed_receivers == 0 {
            return false;
        }
        if state.items.len() >= state.want.min(self.capacity) {
            return false;
        }
        self.gauge.held.store(true, Ordering::Relaxed);
        true
    }

    /// Wakes as many parked receivers as `n` items need.
    fn wake_receivers(&self, state: &mut State<T>, n: usize) {
        self.gauge.held.store(false, Ordering::Relaxed);
        for _ in 0..state.parked_receivers.wake_for(n) {
            self.not_empty.notify_one();
        }
        #[cfg(feature = "async")]
        for _ in 0..state.async_receivers.wake_for(n) {
            self.readable.notify_one();
        }
    }

    /// Takes up to `max` items, and wakes the producers waiting for room.
    fn try_pop(&self, state: &mut State<T>, out: &mut Vec<T>, max: usize) -> Popped {
        if state.closed {
            return Popped::Over;
        }
        if state.items.is_empty() {
            return if state.senders == 0 {
                Popped::Over
            } else {
                Popped::Empty
            };
        }
        // No more than a fair share of what is queued, so that when slow items follow quick
        // ones, one worker cannot take them all while the stage's others sit idle.
        let fair_share = state.items.len().div_ceil(state.receivers.max(1));
        let n = max.clamp(1, fair_share);
        if n == state.items.len() && out.is_empty() {
            // Every item, into an empty batch: the two exchange buffers, no item moves.
            let spare = VecDeque::from(std::mem::take(out));
            *out = Vec::from(std::mem::replace(&mut state.items, spare));
        } else {
            out.extend(state.items.drain(..n));
        }
        self.gauge.held.store(false, Ordering::Relaxed);
        let first = state.popped;
        state.popped += n as u64;
        self.gauge.len.store(state.items.len(), Ordering::Relaxed);
        if state.parked_senders > 0 {
            self.not_full.notify_all();
        }
        #[cfg(feature = "async")]
        if state.async_senders > 0 {
            self.writable.notify_waiters();
        }
        Popped::Items(first)
    }

    /// Gives up the core a few times ([`SNOOZES`], [`WIDE_SNOOZES`]), until `ready` holds
    /// of the queue's length (read without the lock), before a worker parks: with a small
    /// throttle, the thread it waits for is often ready to run on this very core, and a
    /// yield hands it over for a fraction of a park and a wake-up. The caller then looks
    /// again under the lock, so no wake-up is missed.
    fn snooze(&self, ready: impl Fn(usize) -> bool) {
        for _ in 0..snoozes(self.capacity) {
            sync::thread::yield_now();
            if ready(self.gauge.len.load(Ordering::Relaxed)) {
                return;
            }
        }
    }

    /// Wakes every waiter of both kinds: the queue has ended, closed or lost its readers.
    fn wake_everyone(&self) {
        self.not_empty.notify_all();
        self.not_full.notify_all();
        #[cfg(feature = "async")]
        {
            self.readable.notify_waiters();
            self.writable.notify_waiters();
        }
    }
}

impl<T> Sender<T> {
    /// Charges the items this handle pushes, and its waits for room, to `meter`.
    pub(crate) fn metered(mut self, meter: Option<&Arc<WorkerMeter>>) -> Self {
        self.meter = meter.cloned();
        self
    }

    /// The most items the queue holds.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Whether the queue is full, as last published (a hint: no lock is taken).
    #[inline]
    pub(crate) fn looks_full(&self) -> bool {
        self.shared.gauge.len.load(Ordering::Relaxed) >= self.shared.capacity
    }

    /// Whether the consumer has nothing queued, so an item handed over now is taken at
    /// once, or waits, parked, for items held back from it: either way, it wants more.
    #[inline]
    pub(crate) fn looks_hungry(&self) -> bool {
        let gauge = &self.shared.gauge;
        gauge.len.load(Ordering::Relaxed) == 0 || gauge.held.load(Ordering::Relaxed)
    }

    /// [`push_all`](Sender::push_all) for a producer that will push again soon: a lone
    /// parked consumer is not woken before a batch's worth (its last request) is queued or
    /// the queue is full, so a fast consumer behind a slow stage wakes once per batch
    /// rather than once per item.
    ///
    /// Items are only held for a consumer that waits with a [`HOLD`] timeout, which bounds
    /// how long they wait whatever the producers do (a consumer in an untimed wait is woken,
    /// and times its waits from then on, until one times out with nothing queued). A
    /// producer should still [`announce`](Sender::announce) before it waits for input, so
    /// a quiet pipeline's last outputs do not wait even that long.
    pub(crate) fn push_all_lazy(&self, batch: &mut Vec<T>) -> Result<(), Disconnected> {
        self.push(batch, true)
    }

    /// Wakes a parked consumer for the items held back from it, if any.
    pub(crate) fn announce(&self) {
        if !self.shared.gauge.held.load(Ordering::Relaxed) {
            return;
        }
        let mut state = sync::lock(&self.shared.state);
        if !state.items.is_empty() {
            self.shared.wake_receivers(&mut state, 1);
        }
    }

    /// Appends every item of `batch`, leaving it empty, waiting for room as often as the
    /// bound requires. Never waits for room for the whole batch at once, so a batch larger
    /// than the free space cannot deadlock.
    pub(crate) fn push_all(&self, batch: &mut Vec<T>) -> Result<(), Disconnected> {
        self.push(batch, false)
    }

    /// Moves as much of `batch` as fits now, without waiting; the rest stays in `batch`.
    /// For a worker that must not block where it is (a Python worker holding the GIL).
    #[cfg(feature = "python")]
    pub(crate) fn try_push_all(&self, batch: &mut Vec<T>) -> Result<(), Disconnected> {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        let offered = batch.len();
        let pushed = shared.try_push(&mut state, batch, false);
        if let Some(meter) = &self.meter {
            meter.items_out.add((offered - batch.len()) as u64);
        }
        if let Pushed::Disconnected = pushed {
            // User values may run arbitrary code on drop: never under the lock.
            drop(state);
            discard_or_resume(batch.drain(..));
            return Err(Disconnected);
        }
        Ok(())
    }

    fn push(&self, batch: &mut Vec<T>, lazy: bool) -> Result<(), Disconnected> {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        let mut offered = batch.len();
        let mut may_snooze = true;
        loop {
            match shared.try_push(&mut state, batch, lazy) {
                Pushed::All => {
                    if let Some(meter) = &self.meter {
                        meter.items_out.add(offered as u64);
                    }
                    return Ok(());
                }
                Pushed::Disconnected => {
                    // User values may run arbitrary code on drop: never under the lock.
                    drop(state);
                    discard_or_resume(batch.drain(..));
                    return Err(Disconnected);
                }
                Pushed::Full => {
                    // Part of the batch may have gone in before the queue filled.
                    if let Some(meter) = &self.meter {
                        meter.items_out.add((offered - batch.len()) as u64);
                    }
                    offered = batch.len();
                    if std::mem::replace(&mut may_snooze, false) {
                        drop(state);
                        self.snooze_for_room();
                        state = sync::lock(&shared.state);
                        continue;
                    }
                    may_snooze = true;
                    state.parked_senders += 1;
                    let since = self
                        .meter
                        .as_ref()
                        .and_then(|m| m.wait_begins(Activity::Blocked));
                    state = sync::wait(&shared.not_full, state);
                    if let (Some(meter), Some(since)) = (&self.meter, since) {
                        meter.wait_ends(Activity::Blocked, since);
                    }
                    state.parked_senders -= 1;
                }
            }
        }
    }

    /// Gives up the core a few times until there is room ([`Shared::snooze`]): a wait
    /// for room as much as a park is, timed as blocked.
    fn snooze_for_room(&self) {
        let since = self
            .meter
            .as_ref()
            .and_then(|m| m.wait_begins(Activity::Blocked));
        let capacity = self.shared.capacity;
        self.shared.snooze(|len| len < capacity);
        if let (Some(meter), Some(since)) = (&self.meter, since) {
            meter.wait_ends(Activity::Blocked, since);
        }
    }

    /// [`push_all`](Sender::push_all) for async tasks: waits without blocking the thread.
    #[cfg(feature = "async")]
    pub(crate) async fn push_all_async(&self, batch: &mut Vec<T>) -> Result<(), Disconnected> {
        let shared = &*self.shared;
        let offered = batch.len() as u64;
        let mut waited = None;
        let pushed = loop {
            let writable = shared.writable.notified();
            tokio::pin!(writable);
            // Registered before the check, so a wake-up between the two is not lost.
            writable.as_mut().enable();
            let _waiting = {
                let mut state = sync::lock(&shared.state);
                match shared.try_push(&mut state, batch, false) {
                    Pushed::All => break Ok(()),
                    Pushed::Disconnected => {
                        // User values may run arbitrary code on drop: never under the lock.
                        drop(state);
                        discard_or_resume(batch.drain(..));
                        break Err(Disconnected);
                    }
                    Pushed::Full => AsyncWaiter::new(shared, &mut state, Side::Send),
                }
            };
            if self.meter.is_some() && waited.is_none() {
                waited = Some(Instant::now());
            }
            writable.await;
        };
        if let Some(meter) = &self.meter {
            // An async driver's slots share one meter: its waits are added, not tracked
            // as the worker's activity.
            if let Some(since) = waited {
                meter.blocked.add(since.elapsed().as_nanos() as u64);
            }
            if pushed.is_ok() {
                meter.items_out.add(offered);
            }
        }
        pushed
    }

    pub(crate) fn closer(&self) -> Closer<T> {
        Closer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Receiver<T> {
    /// Whether the queue is empty, as last published (a hint: no lock is taken).
    #[inline]
    pub(crate) fn looks_empty(&self) -> bool {
        self.shared.gauge.len.load(Ordering::Relaxed) == 0
    }

    /// Charges this handle's waits for items to `meter`.
    pub(crate) fn metered(mut self, meter: Option<&Arc<WorkerMeter>>) -> Self {
        self.meter = meter.cloned();
        self
    }

    pub(crate) fn meter(&self) -> Option<&Arc<WorkerMeter>> {
        self.meter.as_ref()
    }

    /// Reads how many items wait in the queue, without being a receiver (it neither
    /// keeps the queue open nor takes a share of it).
    pub(crate) fn depth_gauge(&self) -> Box<dyn Fn() -> usize + Send + Sync>
    where
        T: Send + 'static,
    {
        let shared = Arc::downgrade(&self.shared);
        Box::new(move || {
            shared
                .upgrade()
                .map_or(0, |shared| shared.gauge.len.load(Ordering::Relaxed))
        })
    }

    /// Moves up to `max` ready items into `out`, waiting only if none is ready.
    ///
    /// Returns the stage-input index of the first item taken, or `None` once the stream
    /// has ended or the queue was closed.
    pub(crate) fn pop_batch(&self, out: &mut Vec<T>, max: usize) -> Option<u64> {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        let mut may_snooze = true;
        loop {
            match shared.try_pop(&mut state, out, max) {
                Popped::Items(first) => return Some(first),
                Popped::Over => return None,
                Popped::Empty if std::mem::replace(&mut may_snooze, false) => {
                    drop(state);
                    self.snooze_for_items();
                    state = sync::lock(&shared.state);
                }
                Popped::Empty => {
                    state = self.park(state, max);
                    may_snooze = true;
                }
            }
        }
    }

    /// Moves up to `max` ready items into `out`, without waiting.
    #[cfg(feature = "python")]
    pub(crate) fn try_pop_batch(&self, out: &mut Vec<T>, max: usize) -> Popped {
        let shared = &*self.shared;
        shared.try_pop(&mut sync::lock(&shared.state), out, max)
    }

    /// [`pop_batch`](Receiver::pop_batch) that waits at most `timeout` for an item: a
    /// caller that must look at something else now and then (Python's signals).
    /// [`Popped::Empty`] means the time ran out.
    pub(crate) fn pop_batch_timeout(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: std::time::Duration,
    ) -> Popped {
        let shared = &*self.shared;
        let deadline = std::time::Instant::now() + timeout;
        let mut state = sync::lock(&shared.state);
        loop {
            match shared.try_pop(&mut state, out, max) {
                Popped::Empty => {}
                popped => return popped,
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Popped::Empty;
            }
            // Not a timed receiver in the sense of `HOLD`: producers wake it for any item.
            state.want = max.max(1);
            state.parked_receivers.park();
            state = sync::wait_timeout(&shared.not_empty, state, left).0;
            state.parked_receivers.unpark();
        }
    }

    /// Gives up the core a few times until items come ([`Shared::snooze`]): a wait for
    /// input as much as a park is, for the meter too.
    fn snooze_for_items(&self) {
        let since = self
            .meter
            .as_ref()
            .and_then(|m| m.wait_begins(Activity::Starved));
        self.shared.snooze(|len| len > 0);
        if let Some(meter) = &self.meter {
            match since {
                Some(since) => meter.wait_ends(Activity::Starved, since),
                None => meter.wait_ends_untimed(),
            }
        }
    }

    /// Waits for a push (or the end), charging the wait to the meter as starved.
    fn park<'a>(
        &self,
        mut state: MutexGuard<'a, State<T>>,
        want: usize,
    ) -> MutexGuard<'a, State<T>> {
        state.want = want.max(1);
        state.parked_receivers.park();
        let since = self
            .meter
            .as_ref()
            .and_then(|m| m.wait_begins(Activity::Starved));
        if state.lazy {
            state.timed_receivers += 1;
            let timed_out;
            (state, timed_out) = sync::wait_timeout(&self.shared.not_empty, state, HOLD);
            state.timed_receivers -= 1;
            if timed_out && state.items.is_empty() {
                // Nothing came meanwhile: the producers are idle, wait without a timeout.
                state.lazy = false;
            }
        } else {
            state = sync::wait(&self.shared.not_empty, state);
        }
        if let Some(meter) = &self.meter {
            match since {
                Some(since) => meter.wait_ends(Activity::Starved, since),
                None => meter.wait_ends_untimed(),
            }
        }
        state.parked_receivers.unpark();
        state
    }

    /// Makes `shelf` (a worker's batch in hand) reachable by the queue's other readers.
    /// The returned guard takes it back when dropped.
    pub(crate) fn share_shelf(&self, shelf: Arc<dyn Shelf<T>>) -> SharedShelf<T> {
        sync::lock(&self.shared.state)
            .shelves
            .push(Arc::clone(&shelf));
        SharedShelf {
            shared: Arc::clone(&self.shared),
            shelf,
        }
    }

    /// Fills an empty shelf: with up to `max` ready items, or else with the back half of a
    /// sibling's unstarted items. Before it waits for input, it hands on the outputs
    /// gathered on every shelf (its own included), so none waits behind an idle worker.
    ///
    /// Returns [`Refill::Over`] once the stream has ended, or the queue was closed, and no
    /// sibling holds unstarted items.
    pub(crate) fn refill(&self, mine: &SharedShelf<T>, scratch: &mut Vec<T>, max: usize) -> Refill {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        let mut handed_on = false;
        let mut items = Vec::new();
        loop {
            if state.closed {
                return Refill::Over;
            }
            match shared.try_pop(&mut state, scratch, max) {
                Popped::Items(first) => {
                    items.extend((first..).zip(scratch.drain(..)));
                    mine.shelf.deposit(&mut items);
                    return Refill::Items;
                }
                Popped::Empty | Popped::Over => {}
            }
            // Under the queue's lock, so that no push can slip between this look and the
            // wait below (see `crate::engine::shelf`).
            for shelf in &state.shelves {
                if !std::ptr::addr_eq(Arc::as_ptr(shelf), Arc::as_ptr(&mine.shelf)) {
                    shelf.steal(&mut items, max);
                    if !items.is_empty() {
                        mine.shelf.deposit(&mut items);
                        return Refill::Items;
                    }
                }
            }
            if !handed_on {
                let shelves = state.shelves.clone();
                drop(state);
                for shelf in shelves {
                    shelf.hand_on();
                }
                handed_on = true;
                state = sync::lock(&shared.state);
                continue;
            }
            if state.senders == 0 {
                return Refill::Over;
            }
            state = self.park(state, max);
            handed_on = false;
        }
    }

    /// [`pop_batch`](Receiver::pop_batch), calling `before_wait` (outside the lock) before
    /// it waits: a producer that pushes lazily announces its outputs there.
    pub(crate) fn pop_batch_then(
        &self,
        out: &mut Vec<T>,
        max: usize,
        mut before_wait: impl FnMut(),
    ) -> Option<u64> {
        let shared = &*self.shared;
        let mut state = sync::lock(&shared.state);
        let mut announced = Announced::No;
        loop {
            match shared.try_pop(&mut state, out, max) {
                Popped::Items(first) => return Some(first),
                Popped::Over => return None,
                Popped::Empty if announced == Announced::No => {
                    drop(state);
                    before_wait();
                    announced = Announced::Yes;
                    state = sync::lock(&shared.state);
                }
                Popped::Empty if announced == Announced::Yes => {
                    drop(state);
                    self.snooze_for_items();
                    announced = Announced::AndSnoozed;
                    state = sync::lock(&shared.state);
                }
                Popped::Empty => {
                    state = self.park(state, max);
                    announced = Announced::No;
                }
            }
        }
    }

    /// [`pop_batch`](Receiver::pop_batch) for async tasks: waits without blocking the
    /// thread.
    #[cfg(feature = "async")]
    pub(crate) async fn pop_batch_async(&self, out: &mut Vec<T>, max: usize) -> Option<u64> {
        let shared = &*self.shared;
        // Items are there most of the time: take them without registering as a waiter,
        // which costs two more locks (the `Notify`'s) per batch.
        match shared.try_pop(&mut sync::lock(&shared.state), out, max) {
            Popped::Items(first) => return Some(first),
            Popped::Over => return None,
            Popped::Empty => {}
        }
        loop {
            let readable = shared.readable.notified();
            tokio::pin!(readable);
            // Registered before the check, so a wake-up between the two is not lost.
            readable.as_mut().enable();
            let _waiting = {
                let mut state = sync::lock(&shared.state);
                match shared.try_pop(&mut state, out, max) {
                    Popped::Items(first) => return Some(first),
                    Popped::Over => return None,
                    Popped::Empty => {
                        state.want = max.max(1);
                        AsyncWaiter::new(shared, &mut state, Side::Receive)
                    }
                }
            };
            readable.await;
        }
    }
}

#[cfg(feature = "async")]
enum Side {
    Send,
    Receive,
}

/// Counts an async task as waiting for as long as it waits, even if its future is
/// dropped mid-wait, so producers know whom to wake.
#[cfg(feature = "async")]
struct AsyncWaiter<'a, T> {
    shared: &'a Shared<T>,
    side: Side,
}

#[cfg(feature = "async")]
impl<'a, T> AsyncWaiter<'a, T> {
    fn new(shared: &'a Shared<T>, state: &mut State<T>, side: Side) -> Self {
        match side {
            Side::Send => state.async_senders += 1,
            Side::Receive => state.async_receivers.park(),
        }
        AsyncWaiter { shared, side }
    }
}

#[cfg(feature = "async")]
impl<T> Drop for AsyncWaiter<'_, T> {
    fn drop(&mut self) {
        let mut state = sync::lock(&self.shared.state);
        match self.side {
            Side::Send => state.async_senders -= 1,
            Side::Receive => state.async_receivers.unpark(),
        }
    }
}

/// A handle that can close the queue without counting as a sender or a receiver, so
/// holding it never keeps a stream alive.
pub(crate) struct Closer<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send> Close for Closer<T> {
    fn close(&self) {
        let dropped = {
            let mut state = sync::lock(&self.shared.state);
            state.closed = true;
            self.shared.gauge.len.store(0, Ordering::Relaxed);
            self.shared.wake_everyone();
            std::mem::take(&mut state.items)
        };
        // User values may run arbitrary code on drop: never under the lock.
        discard_or_resume(dropped);
    }
}

/// What [`Receiver::refill`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refill {
    /// The shelf has items.
    Items,
    /// The stream has ended or the queue was closed, and no sibling holds unstarted items.
    Over,
}

/// A worker's shelf while it is reachable from the queue; dropping it takes it back.
pub(crate) struct SharedShelf<T> {
    shared: Arc<Shared<T>>,
    shelf: Arc<dyn Shelf<T>>,
}

impl<T> Drop for SharedShelf<T> {
    fn drop(&mut self) {
        let mine = Arc::as_ptr(&self.shelf);
        let removed = {
            let mut state = sync::lock(&self.shared.state);
            let at = state
                .shelves
                .iter()
                .position(|shelf| std::ptr::addr_eq(Arc::as_ptr(shelf), mine));
            at.map(|at| state.shelves.swap_remove(at))
        };
        // May hold the last handle of the worker's output: never dropped under the lock.
        drop(removed);
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        sync::lock(&self.shared.state).senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
            meter: None,
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        sync::lock(&self.shared.state).receivers += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
            meter: None,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = sync::lock(&self.shared.state);
        state.senders -= 1;
        if state.senders == 0 {
            self.shared.wake_everyone();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = sync::lock(&self.shared.state);
            state.receivers -= 1;
            if state.receivers > 0 {
                return;
            }
            self.shared.gauge.len.store(0, Ordering::Relaxed);
            self.shared.wake_everyone();
            std::mem::take(&mut state.items)
        };
        discard_or_resume(dropped);
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn a_wide_queue_waits_longer_before_parking_than_a_throttled_one() {
        assert_eq!(snoozes(1), SNOOZES);
        assert_eq!(snoozes(100), SNOOZES);
        assert_eq!(snoozes(WIDE_QUEUE), WIDE_SNOOZES);
        assert_eq!(snoozes(DEFAULT_THROTTLE), WIDE_SNOOZES);
        assert!(snoozes(DEFAULT_THROTTLE) > snoozes(1));
    }

    #[test]
    fn batches_keep_fifo_order_and_count_indices() {
        let (tx, rx) = queue(0);
        tx.push_all(&mut vec![1, 2, 3]).unwrap();
        tx.push_all(&mut vec![4, 5]).unwrap();
        drop(tx);
        let mut out = Vec::new();
        assert_eq!(rx.pop_batch(&mut out, 2), Some(0));
        assert_eq!(rx.pop_batch(&mut out, 10), Some(2));
        assert_eq!(out, [1, 2, 3, 4, 5]);
        assert_eq!(rx.pop_batch(&mut out, 10), None);
    }

    #[test]
    fn a_batch_larger_than_the_bound_goes_through_in_parts() {
        let (tx, rx) = queue(2);
        let producer = std::thread::spawn(move || tx.push_all(&mut (0..100).collect()));
        let mut out = Vec::new();
        while rx.pop_batch(&mut out, 64).is_some() {
            assert!(rx.shared.gauge.len.load(Ordering::Relaxed) <= 2);
        }
        assert_eq!(producer.join().unwrap(), Ok(()));
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn close_wakes_a_blocked_sender_and_a_blocked_receiver() {
        let (tx, rx) = queue::<u32>(1);
        tx.push_all(&mut vec![1]).unwrap();
        let tx2 = tx.clone();
        let sender = std::thread::spawn(move || tx2.push_all(&mut vec![2]));
        let (tx3, rx3) = queue::<u32>(1);
        let receiver = std::thread::spawn(move || rx3.pop_batch(&mut Vec::new(), 1));
        tx.closer().close();
        tx3.closer().close();
        assert_eq!(sender.join().unwrap(), Err(Disconnected));
        assert_eq!(receiver.join().unwrap(), None);
        assert_eq!(rx.pop_batch(&mut Vec::new(), 1), None);
    }

    #[test]
    fn dropping_every_receiver_releases_blocked_senders() {
        let (tx, rx) = queue(1);
        tx.push_all(&mut vec![1]).unwrap();
        let sender = std::thread::spawn(move || tx.push_all(&mut vec![2, 3]));
        drop(rx);
        assert_eq!(sender.join().unwrap(), Err(Disconnected));
    }
}
