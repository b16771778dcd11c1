//! `auto_workers` for a Python stage on threads: each worker's seat in the stage's tuner.

use super::{PyItem, Turn, WorkerMeter};
use crate::engine::batch::Fault;
use crate::engine::queue::Receiver;
use crate::engine::sync::{Arc, Instant};
use crate::engine::tuner::Tuner;

/// A worker's place in a stage whose count the run tunes (`auto_workers`): the Python
/// counterpart of the tuner's own `Seat`, which it cannot use, as a worker must never
/// wait while it holds the GIL. Before each batch the worker records its look at the
/// queues, and goes on at once if it is among the active workers; else it hands on what
/// it gathered and parks, detached, holding nothing.
///
/// It tells the tuner how many items it finished, but not what they cost. The tuner
/// tells work that computes from work that waits by how often its items give up their
/// core, and a Python thread gives its core up to hand the GIL on as well as to wait on
/// IO: measured, a stage of pure Python code and one that mostly sleeps could not be
/// told apart reliably (and the rule for work that computes, a worker per free core,
/// does not hold under the GIL). So throughput alone decides: a stage that waits on IO
/// grows while more threads raise its throughput, and one that holds the GIL stops at
/// the first step that does not.
pub(super) struct Seat {
    tuner: Arc<Tuner>,
    index: usize,
    /// Where the worker's parked time goes, so its metrics leave it out.
    meter: Option<Arc<WorkerMeter>>,
}

impl Seat {
    /// Worker `index`'s seat in `tuner`; its parked time goes to `meter`.
    pub(super) fn new(
        (tuner, index): (Arc<Tuner>, usize),
        meter: Option<Arc<WorkerMeter>>,
    ) -> Self {
        Seat {
            tuner,
            index,
            meter,
        }
    }

    /// The worker finished `items` since its batch began.
    pub(super) fn finished(&self, items: usize) {
        self.tuner.finished(items, None);
    }
}

impl Drop for Seat {
    /// A worker leaves only when its stage ends (its input is over, or the run stopped):
    /// the parked workers then leave too.
    fn drop(&mut self) {
        crate::engine::run::Close::close(&*self.tuner);
    }
}

impl Turn<'_, '_> {
    /// The worker's seat in its stage's tuner, with `auto_workers`.
    pub(super) fn seat(&self) -> Option<Seat> {
        let seat = self.worker.seat.clone()?;
        Some(Seat::new(seat, self.meter.clone()))
    }

    /// [`next_batch`](Turn::next_batch), after the worker's seat, if it has one, admitted
    /// it: `None` also when the stage ends while the worker is parked.
    pub(super) fn admitted_batch(
        &mut self,
        seat: Option<&Seat>,
        input: &Receiver<PyItem>,
        batch: &mut Vec<PyItem>,
        max: usize,
    ) -> Result<Option<u64>, Fault> {
        if let Some(seat) = seat {
            let tuner = &seat.tuner;
            tuner.look(input.looks_empty(), self.output.output.looks_full());
            // Checked here, holding the GIL, rather than by `Tuner::admit`, which would
            // wait if the count fell meanwhile.
            if seat.index >= tuner.active() {
                // A worker about to park hands on what it gathered first.
                self.flush()?;
                let (parked, index) = (Instant::now(), seat.index);
                let admitted = self.detached(|| tuner.admit(index));
                if let Some(meter) = &seat.meter {
                    meter.parked.add(parked.elapsed().as_nanos() as u64);
                }
                if !admitted {
                    return Ok(None);
                }
            }
        }
        self.next_batch(input, batch, max)
    }
}
