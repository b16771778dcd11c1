//! The input iterator of a fed run, driven by a worker like any other.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::batch::{emit_each, Fault, Outlet};
use crate::engine::meter::Recorder;
use crate::engine::meter::StageKind;
use crate::engine::queue::{queue, Receiver, DEFAULT_THROTTLE};
use crate::engine::run::Launcher;
use crate::engine::sync::{Arc, Instant};
use crate::error::Error;

/// The stage name that errors from the input iterator carry.
pub(crate) const SOURCE_NAME: &str = "input";

/// Starts a thread that pulls `inputs` into a new queue, and returns the queue.
///
/// The thread checks the run between items, so it stops with the run even when the
/// iterator never ends. A panic in the iterator is the run's error like any other; its
/// item is the position of the input the iterator was producing.
pub(crate) fn launch<It>(inputs: It, launcher: &mut Launcher) -> Receiver<It::Item>
where
    It: Iterator + Send + 'static,
    It::Item: Send + 'static,
{
    let (output, receiver) = queue(DEFAULT_THROTTLE);
    launcher.state.register(Box::new(output.closer()));
    let run = Arc::clone(&launcher.state);
    let name: Arc<str> = SOURCE_NAME.into();
    let meter = run.meter.stage(&name, StageKind::Input, 1, None);
    launcher.spawn(SOURCE_NAME, false, move || {
        let mut pulled = 0u64;
        let mut recorder = meter.worker().map(Recorder::begin);
        let output = output.metered(recorder.as_ref().map(|recorder| &recorder.meter));
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut outlet = Outlet::new(&output, &run);
            let fed = emit_each(inputs, &mut outlet, |item, out| {
                pulled += 1;
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
