//! The loop of one worker thread: take what is ready, call the task, hand on the outputs.
//!
//! Every worker follows the same contract, whatever its stage:
//!
//! * all user code runs under `catch_unwind`, so a panic becomes the run's error *before*
//!   the worker's queue handles are dropped (see [`crate::engine::run`]);
//! * it checks the run's cancel flag between items, and a closed queue stops it;
//! * it takes up to a batch of ready items and hands on its outputs in batches, never
//!   waiting to fill one.

mod launch;
pub(crate) mod retry;
mod work;

pub(crate) use launch::{launch_each, launch_join, launch_per_worker};
