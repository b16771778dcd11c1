//! What the workers of a thread or an async stage share: [`Stage`] and its [`StageBody`]
//! (which of the two loops runs the body), and [`report`], a worker's failure made the
//! run's error. A leaf of `stage/` for the `thread` and `async_task` kinds.

use crate::engine::batch::Fault;
use crate::engine::meter::{StageKind, StageMeter};
use crate::engine::sequencer::Sequencer;
use crate::engine::sync::Arc;
#[cfg(feature = "async")]
use crate::engine::upstream::Upstream;
use crate::error::Error;
#[cfg(feature = "async")]
use crate::stage::func::AsyncFn;
use crate::stage::func::{BatchFn, EachFn, JoinFn};
use crate::stage::launch::Launch;

/// What one stage's workers share.
pub(crate) struct Stage<I, O> {
    pub(crate) name: Arc<str>,
    pub(crate) run: Arc<crate::engine::run::RunState>,
    pub(crate) body: StageBody<I, O>,
    pub(crate) meter: Arc<StageMeter>,
    /// The stage's tuner (`auto_workers`), which its workers take a seat of.
    pub(crate) tuner: Option<Arc<crate::engine::tuner::Tuner>>,
}

pub(crate) enum StageBody<I, O> {
    /// A body per item, and the same body per batch, which a lone worker prefers.
    Each(EachFn<I, O>, Option<BatchFn<I, O>>),
    Ordered(EachFn<I, O>, Arc<Sequencer<O>>),
    Join(JoinFn<I, O>),
    #[cfg(feature = "async")]
    /// An async task's body, and whether the stage is ordered.
    AsyncEach(AsyncFn<I, O>, bool),
    #[cfg(feature = "async")]
    AsyncJoin(AsyncFn<Upstream<I>, O>),
}

/// Makes a worker's failure, if it had one, the run's error.
pub(crate) fn report<I, O>(
    stage: &Stage<I, O>,
    result: std::thread::Result<Result<(), Fault>>,
    current_item: Option<u64>,
) {
    let error = match result {
        Ok(Ok(())) | Ok(Err(Fault::Stop)) => return,
        // A task inside a fork is named in its own error.
        Ok(Err(Fault::Failed(error))) => {
            crate::stage::inner::attribute(&stage.name, current_item, error)
        }
        Err(payload) => Error::panicked(&stage.name, current_item, payload),
    };
    stage.meter.failed();
    stage.run.fail(error);
}

impl<I: Send + 'static, O: Send + 'static> Launch<'_, I, O> {
    /// What the workers of a thread or async stage share: its name, run, `body` and a
    /// meter of `kind`.
    pub(crate) fn shared(&mut self, body: StageBody<I, O>, kind: StageKind) -> Arc<Stage<I, O>> {
        let meter = self.meter(kind);
        Arc::new(Stage {
            name: Arc::clone(&self.name),
            run: Arc::clone(&self.launcher.state),
            body,
            meter,
            tuner: self.tuner.clone(),
        })
    }
}
