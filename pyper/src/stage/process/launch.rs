//! How a process stage starts: one thread per worker, each supervising a worker process.

use super::body::ProcessFn;
use std::sync::Mutex;

use super::supervisor::{work, OneByOne, ProcessStage};
use super::worker::Children;
use crate::engine::batch::Emit;
use crate::engine::meter::StageKind;
use crate::engine::run::RunState;
use crate::engine::sync::{lock_std, Arc};
use crate::stage::func::{EachFn, SetupFn};
use crate::stage::launch::Launch;
use crate::stage::policy::FaultPolicy;

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
        meter: Some(stage.meter(StageKind::Process)),
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

/// A process task as a fork runs it: a body per fork worker, each calling its own worker
/// process one item at a time ([`OneByOne`]), under the task's timeout and retries.
pub(crate) fn one_by_one<I, O>(
    body: &ProcessFn<I, O>,
    name: &Arc<str>,
    faults: FaultPolicy,
    run: &Arc<RunState>,
) -> SetupFn<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let children = Arc::new(Children::default());
    run.register(Box::new(Arc::clone(&children)));
    let stage = Arc::new(ProcessStage {
        name: Arc::clone(name),
        run: Arc::clone(run),
        body: body.clone(),
        faults,
        children,
        in_order: false,
        sequencer: None,
        meter: None,
    });
    Arc::new(move || {
        let caller = Mutex::new(OneByOne::new(Arc::clone(&stage)));
        let each: EachFn<I, O> = Arc::new(move |item, out: &mut dyn Emit<O>| {
            // Only the fork worker's helper thread calls it: never contended.
            lock_std(&caller).call(item, out)
        });
        Ok(each)
    })
}
