//! How a process stage starts: one thread per worker, each supervising a worker process.

use super::body::ProcessFn;
use super::supervisor::{work, ProcessStage};
use super::worker::Children;
use crate::engine::meter::StageKind;
use crate::engine::sync::Arc;
use crate::stage::launch::Launch;

/// Starts the supervisor threads of a process stage.
pub(crate) fn launch<I, O>(body: &ProcessFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let children = Arc::new(Children::default());
    stage
        .launcher
        .state
        .register(Box::new(Arc::clone(&children)));
    let faults = stage.spec.faults;
    let shared = Arc::new(ProcessStage {
        name: Arc::clone(&stage.name),
        run: Arc::clone(&stage.launcher.state),
        body: body.clone(),
        faults,
        children,
        in_order: stage.spec.workers == 1 && faults.retries > 0,
        sequencer: stage.sequencer(),
        meter: stage.meter(StageKind::Process),
    });
    for number in 1..=stage.spec.workers {
        let (shared, input, output) = (
            Arc::clone(&shared),
            stage.input.clone(),
            stage.output.clone(),
        );
        stage.spawn_thread(number, move || work(shared, input, output));
    }
}
