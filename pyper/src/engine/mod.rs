//! The engine: what every kind of stage runs on. Queues, the run's shared state and its
//! shutdown protocol, the ordered hand-over, the input source, the recording of metrics,
//! and the synchronisation primitives they are built from.
//!
//! The engine knows nothing of the kinds of stage (`crate::stage`), of presentation
//! (`crate::observe`) or of the public API: it is the bottom layer.

#[cfg(feature = "async")]
pub(crate) mod async_upstream;
pub(crate) mod batch;
pub(crate) mod blocked;
pub(crate) mod capacity;
pub(crate) mod map;
pub(crate) mod meter;
#[cfg(feature = "async")]
pub(crate) mod next_batch;
pub(crate) mod queue;
#[cfg(feature = "async")]
pub(crate) mod reorder;
pub(crate) mod run;
#[cfg(feature = "async")]
pub(crate) mod runtime;
pub(crate) mod sequencer;
pub(crate) mod shelf;
pub(crate) mod source;
pub(crate) mod sync;
pub(crate) mod tuner;
pub(crate) mod upstream;
