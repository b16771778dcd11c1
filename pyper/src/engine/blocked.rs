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
//! Marking costs two plain stores per element. The end of the run reads the marks from
//! another thread, without a fence: it polls until the marks it reads settle (see
//! `finish`), which is only ever needed after a cancel.

use std::cell::OnceCell;

use crate::engine::sync::{thread_local, Arc, AtomicUsize, Ordering};

const WORKING: usize = 0;
const IN_NEXT: usize = 1;
const EXITED: usize = 2;

/// The phase of one worker thread, shared with the end of the run.
#[derive(Default)]
pub(crate) struct Phase(AtomicUsize);

impl Phase {
    /// Whether the worker is inside a user iterator's `next()`.
    pub(crate) fn in_next(&self) -> bool {
        self.0.load(Ordering::Relaxed) == IN_NEXT
    }

    /// Whether the worker is done: nothing of it is left to wait for but its exit.
    pub(crate) fn exited(&self) -> bool {
        self.0.load(Ordering::Relaxed) == EXITED
    }

    pub(crate) fn set_exited(&self) {
        self.0.store(EXITED, Ordering::Relaxed);
    }

    /// Asks `elements` for its next element, marked as a call that may block forever.
    #[inline]
    pub(crate) fn next<It: Iterator>(&self, elements: &mut It) -> Option<It::Item> {
        self.0.store(IN_NEXT, Ordering::Relaxed);
        // Unmarked also if `next` panics: the worker then has a failure to report, and
        // must be waited for.
        let _working = Working(self);
        elements.next()
    }
}

/// Puts a phase back to working when dropped.
struct Working<'a>(&'a Phase);

impl Drop for Working<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0 .0.store(WORKING, Ordering::Relaxed);
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

/// `elements.next()`, marked when `phase` is a worker's.
#[inline]
pub(crate) fn next<It: Iterator>(phase: Option<&Phase>, elements: &mut It) -> Option<It::Item> {
    match phase {
        Some(phase) => phase.next(elements),
        None => elements.next(),
    }
}
