//! What the dispatcher hands a kind of stage: [`Spec`], a stage's options with the checks
//! that do not depend on its kind, and [`Launch`], what a kind is handed to start its
//! workers. A leaf of `stage/`: every kind imports it, and it imports no kind.

use std::time::Duration;

use crate::engine::meter::{StageKind, StageMeter, TunerGauge};
use crate::engine::queue::{Receiver, Sender};
use crate::engine::run::Launcher;
use crate::engine::sequencer::Sequencer;
use crate::engine::sync::Arc;
use crate::engine::tuner::{self, Tuner};
use crate::stage::policy::FaultPolicy;

/// Everything about a stage but its function.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) workers: usize,
    /// Whether `workers` is a most, the count being tuned by the run (`auto_workers`).
    pub(crate) auto: bool,
    pub(crate) throttle: usize,
    pub(crate) ordered: bool,
    pub(crate) daemon: bool,
    pub(crate) faults: FaultPolicy,
}

impl Spec {
    pub(crate) fn new(name: Option<Arc<str>>) -> Self {
        Spec {
            name,
            workers: 1,
            auto: false,
            throttle: crate::engine::queue::DEFAULT_THROTTLE,
            ordered: false,
            daemon: false,
            faults: FaultPolicy::default(),
        }
    }

    /// The stage's name: the one it was given, or its 1-based position in the pipeline.
    pub(crate) fn stage_name(&self, position: usize) -> Arc<str> {
        match &self.name {
            Some(name) => Arc::clone(name),
            None => format!("stage {position}").into(),
        }
    }

    /// The configuration errors that do not depend on the kind of stage.
    pub(crate) fn check(&self, name: &str) -> Result<(), &'static str> {
        if self.workers == 0 {
            return Err("workers must be at least 1");
        }
        if self.faults.timeout == Some(Duration::ZERO) {
            return Err("timeout must be longer than zero");
        }
        if name.contains('\0') {
            return Err("a stage name cannot contain a NUL byte");
        }
        Ok(())
    }
}

/// What a kind of stage is handed to start its workers.
pub(crate) struct Launch<'a, I, O> {
    pub(crate) name: Arc<str>,
    pub(crate) spec: &'a Spec,
    /// `I::clone`, when retries need the item again.
    pub(crate) clone_input: Option<fn(&I) -> I>,
    pub(crate) input: Receiver<I>,
    /// Already registered with the run: a cancel closes it.
    pub(crate) output: Sender<O>,
    pub(crate) launcher: &'a mut Launcher,
    /// The stage's tuner, once `meter` made one (`auto_workers`).
    pub(crate) tuner: Option<Arc<Tuner>>,
}

impl<I: Send + 'static, O: Send + 'static> Launch<'_, I, O> {
    /// Registers the stage's meter, of `kind`, with the run.
    pub(crate) fn meter(&mut self, kind: StageKind) -> Arc<StageMeter> {
        let queued = Some(self.input.depth_gauge());
        let meter = (self.launcher.state.meter).stage(&self.name, kind, self.spec.workers, queued);
        if self.spec.auto {
            // The stage's workers find the tuner on their meter; a cancel wakes the parked.
            let flow = tuner::flow_gauge(&self.launcher.state, meter.position);
            let tuner = Tuner::new(self.spec.workers, Some(flow), self.output.capacity());
            self.launcher.state.register(Box::new(Arc::clone(&tuner)));
            meter.tune(Arc::clone(&tuner) as Arc<dyn TunerGauge>);
            self.tuner = Some(tuner);
        }
        meter
    }

    /// Starts worker `number` (from 1) of the stage on a thread of its own.
    pub(crate) fn spawn_thread(&mut self, number: usize, work: impl FnOnce() + Send + 'static) {
        let (workers, daemon) = (self.spec.workers, self.spec.daemon);
        (self.launcher).spawn(&self.name, (number, workers), daemon, work);
    }

    /// Whether outputs must leave in input order through several workers.
    pub(crate) fn is_ordered(&self) -> bool {
        self.spec.ordered && self.spec.workers > 1
    }

    /// The sequencer of an ordered stage with several workers, registered with the run
    /// so that a cancel wakes its waiters; `None` for any other stage.
    pub(crate) fn sequencer(&mut self) -> Option<Arc<Sequencer<O>>> {
        if !self.is_ordered() {
            return None;
        }
        let sequencer = Arc::new(Sequencer::new(self.spec.workers));
        self.launcher
            .state
            .register(Box::new(Arc::clone(&sequencer)));
        Some(sequencer)
    }
}
