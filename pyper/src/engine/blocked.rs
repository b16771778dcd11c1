//! Where a worker thread is, as far as the end of a stopped run cares: working (the run
//! waits for it), inside a user iterator's `next()` (which may block forever, so a stopped
//! run abandons it), or gone.
//!
//! Two calls of user code may block forever with nothing the engine can do about it: the
//! input iterator's `next()`, and a `branch` iterator's `next()`. Neither holds anything
//! the caller needs once the run has stopped: the element it would return is refused
//! anyway. So a worker marks itself while it is inside one ([`Phase::next`]), and the end
//! of a stopped run ([`crate::engine::run::finish`]) leaves a worker so marked behind
//! instead of joining it. The call keeps running until it returns; its thread then sees
//! the run stopped and exits.
//!
//! Marking costs two plain loads and stores per element. The end of the run reads the marks from
//! another thread, without a fence, and only ever after a cancel. It leaves a worker
//! behind only once it has seen it inside the *same* call on two looks at least
//! [`GRACE`] apart ([`Watch`]): a call that is merely under way when the run stops (the
//! next number of a range) is waited for, so that no user code runs after the run has
//! returned unless a call really blocks.

use std::cell::OnceCell;
use std::time::Duration;

use crate::engine::sync::{thread_local, Arc, AtomicBool, AtomicUsize, Instant, Ordering};

/// How long a worker must have been inside one call of a user iterator's `next()` before
/// a stopped run stops waiting for it.
pub(crate) const GRACE: Duration = Duration::from_millis(20);

/// The phase of one worker thread, shared with the end of the run.
#[derive(Default)]
pub(crate) struct Phase {
    /// Counts the worker's entries into and exits from a user iterator's `next()`: odd
    /// while it is inside one. Only the worker writes it.
    calls: AtomicUsize,
    exited: AtomicBool,
}

impl Phase {
    /// The number of the `next()` call the worker is inside, if it is inside one.
    pub(crate) fn in_next(&self) -> Option<usize> {
        let calls = self.calls.load(Ordering::Relaxed);
        (calls % 2 == 1).then_some(calls)
    }

    /// Whether the worker is done: nothing of it is left to wait for but its exit.
    pub(crate) fn exited(&self) -> bool {
        self.exited.load(Ordering::Relaxed)
    }

    pub(crate) fn set_exited(&self) {
        self.exited.store(true, Ordering::Relaxed);
    }

    /// Asks `elements` for its next element, marked as a call that may block forever.
    #[inline]
    pub(crate) fn next<It: Iterator>(&self, elements: &mut It) -> Option<It::Item> {
        let _working = self.enter();
        elements.next()
    }

    /// Marks the worker inside a user iterator's call until the guard is dropped:
    /// unmarked also if the call panics, as the worker then has a failure to report and
    /// must be waited for.
    #[inline]
    fn enter(&self) -> Working<'_> {
        self.step();
        Working(self)
    }

    #[inline]
    fn step(&self) {
        // Load and store rather than an atomic add: only this thread writes.
        let calls = self.calls.load(Ordering::Relaxed);
        self.calls.store(calls.wrapping_add(1), Ordering::Relaxed);
    }
}

/// Marks the end of a `next()` call when dropped.
struct Working<'a>(&'a Phase);

impl Drop for Working<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.step();
    }
}

/// Watches one worker for a call of a user iterator that blocks.
#[derive(Default)]
pub(crate) struct Watch {
    /// The call last seen under way, and when it was first seen.
    seen: Option<(usize, Instant)>,
}

impl Watch {
    /// Whether the worker has been inside the same `next()` call since a look at least
    /// [`GRACE`] ago.
    pub(crate) fn blocked(&mut self, phase: &Phase) -> bool {
        match (phase.in_next(), self.seen) {
            (None, _) => {
                self.seen = None;
                false
            }
            (Some(call), Some((seen, since))) if call == seen => since.elapsed() >= GRACE,
            (Some(call), _) => {
                self.seen = Some((call, Instant::now()));
                false
            }
        }
    }
}

thread_local! {
    /// The phase of the worker this thread is, if it is one.
    static CURRENT: OnceCell<Arc<Phase>> = const { OnceCell::new() };
}

/// Makes `phase` the phase of the calling thread, a new worker (or a worker's helper).
pub(crate) fn adopt(phase: Arc<Phase>) {
    CURRENT.with(|current| {
        let _ = current.set(phase);
    });
}

/// Calls `f` with the calling thread's phase, if it is a worker: looked up once for a
/// loop over many elements.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&Phase>) -> R) -> R {
    CURRENT.with(|current| f(current.get().map(|phase| &**phase)))
}

/// Pulls up to `count` elements of `elements` into `into`, marked as one call when `phase`
/// is a worker's: for an iterator whose elements come quickly, so that marking costs
/// nothing per element.
#[inline]
pub(crate) fn next_run<It: Iterator>(
    phase: Option<&Phase>,
    elements: &mut It,
    count: usize,
    into: &mut Vec<It::Item>,
) {
    let _working = phase.map(Phase::enter);
    into.extend(elements.by_ref().take(count));
}

/// `elements.next()`, marked when `phase` is a worker's.
#[inline]
pub(crate) fn next<It: Iterator>(phase: Option<&Phase>, elements: &mut It) -> Option<It::Item> {
    match phase {
        Some(phase) => phase.next(elements),
        None => elements.next(),
    }
}
