//! The kinds of stage: how a stage's workers run the user's function. Each kind lives in
//! a module of its own (threads, async tasks, processes) and plugs into the engine the
//! same way.

#[cfg(feature = "async")]
pub(crate) mod async_task;
pub(crate) mod policy;
#[cfg(feature = "process")]
pub(crate) mod process;
pub(crate) mod thread;
