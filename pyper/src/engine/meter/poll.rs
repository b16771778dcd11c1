//! Timing the polls of an async worker's future, and catching the polls that stall the
//! runtime thread they run on.

use std::sync::Arc;

use super::sched::ThreadSchedReader;
use super::{WorkerMeter, STALL};
use crate::engine::sync::Instant;

/// Times the polls of an async worker's future: their total is charged to the meter's CPU
/// time (for an async driver, whose futures hop between runtime threads, poll time is the
/// CPU time its items take: a future that waits costs next to nothing to poll), and a
/// poll over [`STALL`] is recorded as a stall, charged its measured CPU time (see
/// [`WorkerMeter::stall`]).
///
/// A stall's CPU time and wait for a core come from the thread's scheduler statistics,
/// read after the stall and at a time before it: before a poll, at most once a
/// millisecond, and after each stall (so every poll of a future that keeps blocking is
/// measured). The earlier reading may precede the poll by up to a millisecond of other
/// work on the thread; that only ever makes a stall look shorter.
pub(crate) struct PollTimed<F> {
    future: std::pin::Pin<Box<F>>,
    meter: Option<Arc<WorkerMeter>>,
    /// The thread's scheduler statistics, with the last reading of them.
    sched: ThreadSchedReader,
    next_sched_read: Instant,
}

impl<F: std::future::Future> PollTimed<F> {
    pub(crate) fn new(future: F, meter: Option<Arc<WorkerMeter>>) -> Self {
        if let Some(meter) = &meter {
            meter.measures_poll_time();
        }
        PollTimed {
            future: Box::pin(future),
            meter,
            sched: ThreadSchedReader::default(),
            next_sched_read: Instant::now(),
        }
    }
}

impl<F: std::future::Future> std::future::Future for PollTimed<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        let Some(meter) = &this.meter else {
            return this.future.as_mut().poll(cx);
        };
        let mut started = Instant::now();
        if started >= this.next_sched_read {
            this.sched.read();
            started = Instant::now(); // the reading is not the poll's
            this.next_sched_read = started + STALL;
        }
        let poll = this.future.as_mut().poll(cx);
        let wall = started.elapsed();
        let charged = if wall > STALL {
            let (before, after) = this.sched.read();
            this.next_sched_read = started; // measure the next poll from its start
            meter.stall(wall, before.zip(after))
        } else {
            wall.as_nanos() as u64
        };
        meter.cpu.add(charged);
        poll
    }
}
