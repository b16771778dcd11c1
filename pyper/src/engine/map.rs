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
//! A batch of plain values is mapped in place and handed over whole, after its first
//! output when the consumer is idle, where the per-item loop would not have handed over
//! before the batch's end either.

use std::mem::{align_of, needs_drop, size_of};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::engine::batch::{Fault, Outlet, MAX_BATCH};
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
    /// The per-item loop writes nothing of its progress to memory but the outputs; which
    /// item a panic came from is worked out after it, from how many outputs were gathered.
    /// The in-place loop gathers nothing until its end, so it counts its calls as it goes.
    /// The loop wrote the current item and the count of calls before each call; without
    /// those writes, the harness's `overhead` (3 trivial stages, child medians of 31,
    /// same runs, on a 2-vCPU Intel Xeon) took 218.3 ms of CPU rather than 251.6 ms, and
    /// 199.0 ms rather than 236.6 ms in a second set.
    ///
    /// A batch of plain values is mapped in place ([`map_in_place`]).
    #[inline]
    pub(crate) fn try_map<E: Into<BoxError>>(
        &mut self,
        f: &impl Fn(I) -> Result<O, E>,
    ) -> Result<(), Fault> {
        let first = self.first;
        let gathered_before = self.outlet.gathered();
        let in_place = maps_in_place::<I, O>()
            && self.outlet.is_empty()
            && fits_one_hand_over(self.items.len(), self.outlet.hand_over_size());
        let mut in_place_calls = 0;
        let (items, outlet) = (&mut *self.items, &mut *self.outlet);
        let mapped = catch_unwind(AssertUnwindSafe(|| match in_place {
            true => {
                let result = map_in_place(items, outlet, f, &mut in_place_calls);
                (in_place_calls, result)
            }
            false => map_items(items, outlet, f),
        }));
        match mapped {
            Ok((calls, result)) => {
                self.called = calls;
                if calls > 0 {
                    *self.current_item = Some(first + calls as u64 - 1);
                }
                result
            }
            Err(payload) => {
                // The panicking call is the last one counted; in the per-item loop, each
                // call before it gathered one output.
                let done = match in_place {
                    true => in_place_calls as u64 - 1,
                    false => self.outlet.gathered() - gathered_before,
                };
                *self.current_item = Some(first + done);
                self.called = done as usize + 1;
                resume_unwind(payload)
            }
        }
    }
}

/// Whether a batch of `I` can be mapped to `O` in place: both are plain values (dropping
/// one does nothing, so the items a stopped batch leaves need no care) that fit the same
/// slots.
const fn maps_in_place<I, O>() -> bool {
    size_of::<I>() == size_of::<O>()
        && align_of::<I>() == align_of::<O>()
        && size_of::<I>() > 0
        && !needs_drop::<I>()
        && !needs_drop::<O>()
}

/// Whether a batch of `len` items may be mapped whole before its outputs are handed over,
/// for an outlet that hands over `hand_over_size` at a time: the per-item loop would not
/// hand over before its end either, or the hand-overs are already the largest there are
/// (a stage with a small throttle then calls its function no further ahead of its
/// consumer than the per-item loop would).
fn fits_one_hand_over(len: usize, hand_over_size: usize) -> bool {
    len <= hand_over_size || hand_over_size >= MAX_BATCH
}

/// The room of an empty buffer of `O`, as a buffer of `I` of the same layout: the next
/// batch is taken into it, rather than into a buffer grown from nothing item by item. The
/// in-place collection of no items keeps the allocation (or makes an empty one).
fn recycle<O, I>(empty: Vec<O>) -> Vec<I> {
    debug_assert!(empty.is_empty());
    empty.into_iter().map(|_| unreachable!()).collect()
}

/// [`map_items`] for plain values: each output is written over its input, and the batch's
/// buffer becomes the outlet's, to be handed over whole.
///
/// The per-item loop reads each input from the buffer the previous stage wrote, and writes
/// each output to a second buffer that the next stage last wrote: two cache lines cross
/// between cores for every eight `u64`s, where mapping in place moves one, as a
/// hand-written pipeline of `Vec`s does. In the harness's `overhead` (3 trivial stages,
/// child medians of 21, same runs, 2-vCPU Intel Xeon), with the input iterator's runs of
/// pulls (`emit_each`), the run took 83.8 ms rather than 141.4 ms (CPU 164.5 against
/// 231.9 ms), and `handwritten-batched` 79.2 ms. std's in-place collection reuses the
/// buffer (were it not to, the outputs would go to a new one, as correct), and the
/// outlet's emptied buffer becomes the next batch's ([`recycle`]), so no buffer is grown
/// from nothing.
///
/// An idle consumer still gets the first output at once: it is handed over before the rest
/// are mapped. `calls` counts the calls made, kept up to date for a panic's item.
#[inline]
fn map_in_place<I, O, E: Into<BoxError>>(
    items: &mut Vec<I>,
    outlet: &mut Outlet<'_, O>,
    f: &impl Fn(I) -> Result<O, E>,
    calls: &mut usize,
) -> Result<(), Fault> {
    let run = outlet.run;
    let mut inputs = std::mem::take(items).into_iter();
    if inputs.len() > 1 && outlet.output.looks_hungry() {
        if run.is_cancelled() {
            return Err(Fault::Stop);
        }
        if let Some(item) = inputs.next() {
            *calls += 1;
            match f(item) {
                Ok(output) => {
                    outlet.gather(output);
                    outlet.flush()?;
                }
                Err(error) => return Err(Fault::Failed(error.into())),
            }
        }
    }
    let mut fault = None;
    let outputs: Vec<O> = inputs
        .map_while(|item| {
            if run.is_cancelled() {
                fault = Some(Fault::Stop);
                return None;
            }
            *calls += 1;
            match f(item) {
                Ok(output) => Some(output),
                Err(error) => {
                    fault = Some(Fault::Failed(error.into()));
                    None
                }
            }
        })
        .collect();
    match fault {
        // Neither the outputs nor the inputs left need dropping.
        Some(fault) => Err(fault),
        None => {
            *items = recycle(outlet.gather_all(outputs));
            Ok(())
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::engine::queue::queue;
    use crate::engine::run::RunState;

    fn map_batch(
        items: Vec<u64>,
        outlet: &mut Outlet<'_, u64>,
        f: &impl Fn(u64) -> Result<u64, String>,
    ) -> (Result<(), Fault>, Option<u64>) {
        let (mut items, mut current_item) = (items, None);
        let mut batch = MapBatch {
            items: &mut items,
            first: 0,
            outlet,
            current_item: &mut current_item,
            called: 0,
        };
        (batch.try_map(f), current_item)
    }

    #[test]
    fn plain_values_map_in_place_and_others_do_not() {
        assert!(maps_in_place::<u64, u64>());
        assert!(maps_in_place::<u64, f64>());
        assert!(!maps_in_place::<u32, u64>());
        assert!(!maps_in_place::<String, String>());
        assert!(!maps_in_place::<(), ()>());
    }

    #[test]
    fn an_idle_consumer_gets_the_first_output_before_the_rest_are_mapped() {
        let (output, input) = queue::<u64>(64);
        let run = RunState::new();
        let mut outlet = Outlet::new(&output, &run);
        let handed_at_second_call = Cell::new(None);
        let f = |x: u64| {
            if x == 2 {
                handed_at_second_call.set(Some(!input.looks_empty()));
            }
            Ok(x * 10)
        };
        let (result, _) = map_batch(vec![1, 2, 3, 4], &mut outlet, &f);
        assert!(result.is_ok());
        assert_eq!(handed_at_second_call.get(), Some(true));
        outlet.flush().unwrap();
        let mut outputs = Vec::new();
        input.pop_batch(&mut outputs, 64);
        assert_eq!(outputs, [10, 20, 30, 40]);
    }

    #[test]
    fn a_busy_consumer_gets_the_batch_whole() {
        let (output, input) = queue::<u64>(64);
        let run = RunState::new();
        let mut outlet = Outlet::new(&output, &run);
        output.push_all(&mut vec![0]).unwrap();
        let depth = input.depth_gauge();
        let queued_at_last_call = Cell::new(0);
        let f = |x: u64| {
            if x == 4 {
                queued_at_last_call.set(depth());
            }
            Ok(x * 10)
        };
        let (result, _) = map_batch(vec![1, 2, 3, 4], &mut outlet, &f);
        assert!(result.is_ok());
        assert_eq!(queued_at_last_call.get(), 1, "only the item queued before");
    }

    /// Maps `0..10` in place through `f`, given the run: how the batch ended, the item it
    /// names, and how many calls were made.
    fn map_ten(
        f: impl Fn(u64, &RunState) -> Result<u64, String>,
    ) -> (Result<(), Fault>, Option<u64>, usize) {
        let (output, _input) = queue::<u64>(64);
        let run = RunState::new();
        let mut outlet = Outlet::new(&output, &run);
        let calls = Cell::new(0);
        let counted = |x: u64| {
            calls.set(calls.get() + 1);
            f(x, &run)
        };
        let (result, current_item) = map_batch((0..10).collect(), &mut outlet, &counted);
        (result, current_item, calls.get())
    }

    #[test]
    fn an_error_in_place_names_its_item_and_stops_the_batch() {
        let (result, current_item, calls) = map_ten(|x, _| match x {
            5 => Err("five".to_string()),
            x => Ok(x),
        });
        assert!(matches!(result, Err(Fault::Failed(error)) if error.to_string() == "five"));
        assert_eq!(current_item, Some(5));
        assert_eq!(calls, 6);
    }

    #[test]
    fn a_cancelled_run_maps_nothing_more_in_place() {
        let (result, _, calls) = map_ten(|x, run| {
            if x == 3 {
                run.cancel();
            }
            Ok(x)
        });
        assert!(matches!(result, Err(Fault::Stop)));
        assert_eq!(calls, 4);
    }

    #[test]
    fn a_panic_in_place_names_its_item() {
        let (output, _input) = queue::<u64>(64);
        let run = RunState::new();
        let mut outlet = Outlet::new(&output, &run);
        let mut current_item = None;
        let mut items: Vec<u64> = (0..10).collect();
        let mut batch = MapBatch {
            items: &mut items,
            first: 100,
            outlet: &mut outlet,
            current_item: &mut current_item,
            called: 0,
        };
        let f = |x: u64| -> Result<u64, String> {
            assert_ne!(x, 7);
            Ok(x)
        };
        let panicked = catch_unwind(AssertUnwindSafe(|| batch.try_map(&f))).is_err();
        assert!(panicked);
        assert_eq!(batch.called, 8);
        assert_eq!(current_item, Some(107));
    }

    #[test]
    fn a_batch_is_mapped_whole_only_where_the_per_item_loop_would_not_hand_over_before_its_end() {
        assert!(fits_one_hand_over(1, 1));
        assert!(!fits_one_hand_over(4, 1));
        assert!(fits_one_hand_over(25, 25));
        assert!(!fits_one_hand_over(26, 25));
        // The largest hand-overs there are: a lone worker's whole batch goes at once.
        assert!(fits_one_hand_over(4096, MAX_BATCH));
    }

    #[test]
    fn a_recycled_buffer_keeps_its_room() {
        let room = Vec::<u64>::with_capacity(1024);
        let recycled: Vec<f64> = recycle(room);
        assert!(recycled.capacity() >= 1024, "{}", recycled.capacity());
    }
}
