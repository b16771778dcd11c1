//! The input iterator of a fed run, driven by a worker like any other.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::batch::{emit_each, Emit, Fault, Outlet};
use crate::engine::meter::Recorder;
use crate::engine::meter::StageKind;
use crate::engine::queue::{queue, Receiver, DEFAULT_THROTTLE};
use crate::engine::run::Launcher;
use crate::engine::sync::{Arc, Instant};
use crate::error::Error;

/// The stage name that errors from the input iterator carry.
pub(crate) const SOURCE_NAME: &str = "input";

/// Starts a thread that pulls `inputs` into a new queue of `bound` items, and returns the
/// queue.
///
/// The thread checks the run between items, so it stops with the run even when the
/// iterator never ends. A stopped run does not wait for the iterator's pending `next()`,
/// which may never return (a channel whose sender lives on): the thread is left to stop
/// once it does (see [`crate::engine::run`]). A panic in the iterator is the run's error
/// like any other; its item is the position of the input the iterator was producing.
///
/// The bound is the first stage's ([`read_ahead`]): the iterator runs ahead of that stage
/// by no more than its throttle allows.
pub(crate) fn launch<It>(inputs: It, bound: usize, launcher: &mut Launcher) -> Receiver<It::Item>
where
    It: Iterator + Send + 'static,
    It::Item: Send + 'static,
{
    let (output, receiver) = queue(bound);
    launcher.state.register(Box::new(output.closer()));
    let run = Arc::clone(&launcher.state);
    let name: Arc<str> = SOURCE_NAME.into();
    let meter = run.meter.stage(&name, StageKind::Input, 1, None);
    launcher.spawn(SOURCE_NAME, (1, 1), false, move || {
        let mut pulled = 0u64;
        let mut recorder = meter.worker().map(Recorder::begin);
        let output = output.metered(recorder.as_ref().map(|recorder| &recorder.meter));
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut outlet = Outlet::new(&output, &run);
            let fed = emit_each(inputs, &mut outlet, &mut pulled, |item, out| {
                out.emit(item).map_err(Fault::from)
            });
            if fed.is_ok() {
                let _ = outlet.flush();
            }
        }));
        if let Some(recorder) = recorder.as_mut() {
            recorder.whole_life_busy(started);
        }
        if let Err(payload) = result {
            meter.failed();
            run.fail(Error::panicked(SOURCE_NAME, Some(pulled), payload));
        }
    });
    receiver
}

/// How many inputs may wait for a first stage of `workers` workers whose output queue is
/// bounded by `throttle` (`0`: unbounded): as many as its throttle, so that a throttled
/// stage is not fed thousands of items ahead (each may be large), yet one per worker at
/// least, so that none starves; never more than [`DEFAULT_THROTTLE`], so that an endless
/// input is not buffered without bound when the stage's own queue is.
pub(crate) fn read_ahead(throttle: usize, workers: usize) -> usize {
    let throttle = match throttle {
        0 => DEFAULT_THROTTLE,
        n => n.min(DEFAULT_THROTTLE),
    };
    throttle.max(workers.min(DEFAULT_THROTTLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_ahead_follows_the_first_stage() {
        assert_eq!(read_ahead(1, 1), 1);
        assert_eq!(read_ahead(8, 1), 8);
        assert_eq!(read_ahead(1, 16), 16);
        assert_eq!(read_ahead(DEFAULT_THROTTLE, 1), DEFAULT_THROTTLE);
        assert_eq!(read_ahead(0, 1), DEFAULT_THROTTLE);
        assert_eq!(read_ahead(1 << 20, 1), DEFAULT_THROTTLE);
        assert_eq!(read_ahead(1, 1 << 20), DEFAULT_THROTTLE);
    }
}
