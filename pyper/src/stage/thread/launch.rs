//! How a thread stage starts: `workers(n)` OS threads, each running [`work`].

use crate::engine::meter::StageKind;
use crate::engine::sync::Arc;
use crate::stage::thread::retry;
use crate::stage::thread::{work, EachFn, JoinFn, Stage, StageBody};
use crate::stage::Launch;

/// Starts the workers of a stage that calls `each` once per item.
pub(crate) fn launch_each<I, O>(each: &EachFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let faults = stage.spec.faults;
    // A stage with a fault policy applies it through a guard, with a body per worker.
    let guard = faults.is_active().then(|| {
        let run = &stage.launcher.state;
        retry::Guard::new(each, faults, stage.clone_input, &stage.name, run)
    });
    let body = match stage.sequencer() {
        Some(sequencer) => StageBody::Ordered(Arc::clone(each), sequencer),
        None => StageBody::Each(Arc::clone(each)),
    };
    let shared = shared(body, &mut stage);
    for _ in 0..stage.spec.workers {
        let worker = match &guard {
            Some(guard) => Arc::new(guard.worker_stage(&shared)),
            None => Arc::clone(&shared),
        };
        spawn(worker, &mut stage);
    }
}

/// Starts the workers of a stage whose workers each receive a share of the stream.
pub(crate) fn launch_join<I, O>(join: &JoinFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let shared = shared(StageBody::Join(Arc::clone(join)), &mut stage);
    for _ in 0..stage.spec.workers {
        spawn(Arc::clone(&shared), &mut stage);
    }
}

fn shared<I, O>(body: StageBody<I, O>, stage: &mut Launch<'_, I, O>) -> Arc<Stage<I, O>>
where
    I: Send + 'static,
    O: Send + 'static,
{
    Arc::new(Stage {
        name: Arc::clone(&stage.name),
        run: Arc::clone(&stage.launcher.state),
        body,
        meter: stage.meter(StageKind::Threads),
    })
}

fn spawn<I, O>(worker: Arc<Stage<I, O>>, stage: &mut Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let (input, output) = (stage.input.clone(), stage.output.clone());
    let daemon = stage.spec.daemon;
    (stage.launcher).spawn(&stage.name, daemon, move || work(worker, input, output));
}
