//! How a thread stage starts: `workers(n)` OS threads, each running [`work`].

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::retry;
use super::work::work;
use crate::engine::meter::StageKind;
use crate::engine::sync::Arc;
use crate::error::Error;
use crate::stage::func::{BatchFn, EachFn, JoinFn, SetupFn};
use crate::stage::launch::Launch;
use crate::stage::workers::{Stage, StageBody};

/// Starts the workers of a stage that calls `each` once per item.
pub(crate) fn launch_each<I, O>(
    each: &EachFn<I, O>,
    batch: Option<&BatchFn<I, O>>,
    mut stage: Launch<'_, I, O>,
) where
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
        None => StageBody::Each(Arc::clone(each), batch.cloned()),
    };
    let shared = stage.shared(body, StageKind::Threads);
    for number in 1..=stage.spec.workers {
        let worker = match &guard {
            Some(guard) => Arc::new(guard.worker_stage(&shared)),
            None => Arc::clone(&shared),
        };
        spawn(number, worker, &mut stage);
    }
}

/// Starts the workers of a stage whose workers each receive a share of the stream.
pub(crate) fn launch_join<I, O>(join: &JoinFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let shared = stage.shared(StageBody::Join(Arc::clone(join)), StageKind::Threads);
    for number in 1..=stage.spec.workers {
        spawn(number, Arc::clone(&shared), &mut stage);
    }
}

/// Starts the workers of a stage whose workers each build their own body with `setup`,
/// on their own thread, before their first item.
pub(crate) fn launch_per_worker<I, O>(setup: &SetupFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let sequencer = stage.sequencer();
    let meter = stage.meter(StageKind::Threads);
    let tuner = stage.tuner.clone();
    let (faults, clone_input) = (stage.spec.faults, stage.clone_input);
    for number in 1..=stage.spec.workers {
        let (setup, sequencer, meter) = (Arc::clone(setup), sequencer.clone(), Arc::clone(&meter));
        let tuner = tuner.clone();
        let (name, run) = (Arc::clone(&stage.name), Arc::clone(&stage.launcher.state));
        let (input, output) = (stage.input.clone(), stage.output.clone());
        let start = move || {
            let each = match catch_unwind(AssertUnwindSafe(|| setup())) {
                Ok(Ok(each)) => each,
                // Reported before `output` is dropped, as every worker failure is.
                Ok(Err(error)) => return fail(&run, &meter, Error::failed(&name, None, error)),
                Err(panic) => return fail(&run, &meter, Error::panicked(&name, None, panic)),
            };
            let body = match sequencer {
                Some(sequencer) => StageBody::Ordered(Arc::clone(&each), sequencer),
                None => StageBody::Each(Arc::clone(&each), None),
            };
            let worker = Stage {
                name,
                run,
                body,
                meter,
                tuner,
            };
            let worker = match faults.is_active() {
                true => {
                    let guard =
                        retry::Guard::new(&each, faults, clone_input, &worker.name, &worker.run);
                    guard.worker_stage(&worker)
                }
                false => worker,
            };
            drop(each);
            work(Arc::new(worker), input, output);
        };
        stage.spawn_thread(number, start);
    }
}

fn fail(
    run: &crate::engine::run::RunState,
    meter: &crate::engine::meter::StageMeter,
    error: Error,
) {
    meter.failed();
    run.fail(error);
}

fn spawn<I, O>(number: usize, worker: Arc<Stage<I, O>>, stage: &mut Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let (input, output) = (stage.input.clone(), stage.output.clone());
    stage.spawn_thread(number, move || work(worker, input, output));
}
