//! A whole batch through a plain function in one call: the fast path of a thread stage
//! with one worker whose task is `task(f)` or `try_task(f)` with no fault policy.
//!
//! Calling the task's body through `dyn Fn` once per item, which emits through
//! `&mut dyn Emit` once per output, cost two indirect calls per item, and neither side
//! could be inlined into the loop. Here the stage calls the body once per batch, and the
//! loop over the batch is compiled for the user's function and for the worker's
//! [`Outlet`]. It keeps every promise of the per-item loop: the run is checked before
//! each item, the current item is known if the function panics, an idle consumer gets
//! the first output at once, and the items left after a failure are dropped one by one.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::engine::batch::{Fault, Outlet};
use crate::engine::run::{discard, discard_or_resume};
use crate::error::BoxError;

/// One batch of items, handed to a task's batch body with where its outputs go.
pub(crate) struct MapBatch<'a, 'o, I, O> {
    pub(crate) items: &'a mut Vec<I>,
    /// The stage-input index of the first item.
    pub(crate) first: u64,
    pub(crate) outlet: &'a mut Outlet<'o, O>,
    /// The index of the item being processed, for the error of a panic.
    pub(crate) current_item: &'a mut Option<u64>,
    /// How many calls were made, for the metrics, whatever the outcome.
    pub(crate) called: usize,
}

impl<I, O> MapBatch<'_, '_, I, O> {
    /// Calls `f` on each item, in order, and emits its output.
    #[inline]
    pub(crate) fn map(&mut self, f: &impl Fn(I) -> O) -> Result<(), Fault> {
        self.try_map(&|item| Ok::<O, std::convert::Infallible>(f(item)))
    }

    /// Calls `f` on each item, in order, and emits its output; the first `Err` fails the
    /// batch, and the items after it are dropped.
    ///
    /// The loop writes nothing of its progress to memory but the outputs; which item a
    /// panic came from is worked out after it, from how many outputs were gathered.
    /// The loop wrote the current item and the count of calls before each call; without
    /// those writes, the harness's `overhead` (3 trivial stages, child medians of 31,
    /// same runs, on a 2-vCPU Intel Xeon) took 218.3 ms of CPU rather than 251.6 ms, and
    /// 199.0 ms rather than 236.6 ms in a second set.
    #[inline]
    pub(crate) fn try_map<E: Into<BoxError>>(
        &mut self,
        f: &impl Fn(I) -> Result<O, E>,
    ) -> Result<(), Fault> {
        let first = self.first;
        let gathered_before = self.outlet.gathered();
        let (items, outlet) = (&mut *self.items, &mut *self.outlet);
        match catch_unwind(AssertUnwindSafe(|| map_items(items, outlet, f))) {
            Ok((calls, result)) => {
                self.called = calls;
                if calls > 0 {
                    *self.current_item = Some(first + calls as u64 - 1);
                }
                result
            }
            Err(payload) => {
                // Each call before the panicking one gathered one output.
                let done = self.outlet.gathered() - gathered_before;
                *self.current_item = Some(first + done);
                self.called = done as usize + 1;
                resume_unwind(payload)
            }
        }
    }
}

/// The loop of [`MapBatch::try_map`]: how many calls it made, and how the batch ended.
#[inline]
fn map_items<I, O, E: Into<BoxError>>(
    items: &mut Vec<I>,
    outlet: &mut Outlet<'_, O>,
    f: &impl Fn(I) -> Result<O, E>,
) -> (usize, Result<(), Fault>) {
    let mut items = items.drain(..);
    let mut calls = 0;
    while let Some(item) = items.next() {
        if outlet.run.is_cancelled() {
            // As in the per-item loop: each remaining value dropped on its own, and the
            // first panic of a `Drop` becomes this worker's.
            discard_or_resume(std::iter::once(item).chain(items));
            return (calls, Err(Fault::Stop));
        }
        calls += 1;
        match f(item) {
            // The run was checked before the item: once per item is enough.
            Ok(output) => {
                if outlet.gather(output) {
                    if let Err(stop) = outlet.flush() {
                        return (calls, Err(stop.into()));
                    }
                }
            }
            Err(error) => {
                // The failure is the error, whatever the `Drop` of the items left does.
                let _ = discard(items);
                return (calls, Err(Fault::Failed(error.into())));
            }
        }
    }
    (calls, Ok(()))
}
