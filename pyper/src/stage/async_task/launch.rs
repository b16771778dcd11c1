//! How an async stage starts: driver tasks on pyper's runtime, which keep up to
//! `workers(n)` futures in flight between them.

use crate::engine::meter::StageKind;
use crate::engine::sync::Arc;
use crate::engine::upstream::Upstream;
use crate::stage::async_task::{driver, retry};
use crate::stage::func::AsyncFn;
use crate::stage::launch::Launch;
use crate::stage::workers::StageBody;

/// Starts the drivers of a stage that makes one future per item.
pub(crate) fn launch_each<I, O>(each: &AsyncFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let ordered = stage.is_ordered();
    let guarded = retry::guard(each, stage.spec.faults, stage.clone_input);
    let shared = stage.shared(StageBody::AsyncEach(guarded, ordered), StageKind::Async);
    // A tuned stage has one driver, whose slots the tuner opens and closes.
    let one_driver = ordered || stage.spec.auto;
    for slots in driver::driver_slots(stage.spec.workers, one_driver) {
        let (shared, input, output) = (
            Arc::clone(&shared),
            stage.input.clone(),
            stage.output.clone(),
        );
        (stage.launcher).spawn_task(&stage.name, driver::drive(shared, input, output, slots));
    }
}

/// Starts the workers of a stage whose workers each receive a share of the stream.
pub(crate) fn launch_join<I, O>(join: &AsyncFn<Upstream<I>, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let shared = stage.shared(StageBody::AsyncJoin(Arc::clone(join)), StageKind::Async);
    for _ in 0..stage.spec.workers {
        let (shared, input, output) = (
            Arc::clone(&shared),
            stage.input.clone(),
            stage.output.clone(),
        );
        (stage.launcher).spawn_task(&stage.name, driver::join(shared, input, output));
    }
}
