//! What a snapshot reads of a worker: its times, with the waits for a core put where
//! they belong.

use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Duration;

use super::sched::Sched;
use super::WorkerMeter;

/// A worker's times as a snapshot reads them: see [`WorkerMeter::times`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WorkerTimes {
    pub(crate) busy: Duration,
    pub(crate) starved: Duration,
    pub(crate) blocked: Duration,
    pub(crate) cpu: Option<Duration>,
    pub(crate) runnable: Duration,
    /// The time spent on items (the batches: the user's code), and the waits for a core
    /// that were not wake-ups from parking on the input queue. Together with the CPU
    /// time they tell whether the items' code computes or sleeps: see
    /// [`StageMetrics::cpu_demand`](crate::StageMetrics::cpu_demand).
    pub(crate) working: Duration,
    pub(crate) working_runnable: Duration,
}

impl WorkerMeter {
    /// The worker's times, as a snapshot sees them.
    ///
    /// Over a worker's life, whatever is not timed as starved or blocked is busy: working,
    /// or between batches (handing over, taking the next, or waiting for a core to do
    /// so).
    ///
    /// A worker whose waits for input go untimed was starved for the part of its life it
    /// spent neither working nor blocked, *less* its waits for a core in that part that
    /// were not wake-ups from parking. A worker is starved while it sleeps on its queue,
    /// and then while it waits for a core to wake up on; a thread's sleep is what its
    /// life leaves once its CPU time and its waits for a core are taken out, and each
    /// wake-up is counted as long as the thread's average wait for a core. What remains
    /// is a wait for a core between batches that followed work (a hand-over wakes the
    /// next stage, which may take the core): time the worker wanted to work, so it counts
    /// as busy. Without this, CPU-bound workers on too few cores would look starved, and
    /// on a crowded machine a starved stage's slow wake-ups would look busy. Where the
    /// waits for a core are not measured (not Linux), the rest is all starved.
    ///
    /// The time before `input_began` (when the run's input thread first ran) is left
    /// out: every worker waits for input until then, however fast the pipeline, for as
    /// long as a crowded machine makes the input's thread wait for a core.
    pub(crate) fn times(&self, input_began: Duration) -> WorkerTimes {
        let ended = self.lifetime.load(Acquire);
        let (mut cpu, sched) = self.sched_times(ended == 0);
        // Each wake-up from parking waited for a core about as long as the thread's waits
        // for one did on average.
        let waking = |parks: u64| {
            sched.map_or(Duration::ZERO, |(runnable, slices)| {
                let per_wait = runnable / slices.clamp(1, u32::MAX.into()) as u32;
                let parks = parks.min(u32::MAX.into()) as u32;
                per_wait.saturating_mul(parks).min(runnable)
            })
        };
        let waking_for_input = waking(self.parks.get());
        let waking_at_all = waking(self.parks.get() + self.blocked_parks.get());
        let mut runnable = sched.map(|(runnable, _)| runnable);
        if self.elsewhere.load(Relaxed) {
            // The work's CPU time is its process's. Its round trips wait for a core
            // there, and, for the answer, on this thread.
            cpu = self.cpu_time();
            let there = Duration::from_nanos(self.process_runnable.get());
            runnable = Some(runnable.unwrap_or_default() + there);
        }
        let working = Duration::from_nanos(self.busy.get());
        let mut times = WorkerTimes {
            busy: working,
            starved: Duration::from_nanos(self.starved.get()),
            blocked: Duration::from_nanos(self.blocked.get()),
            cpu,
            runnable: runnable.unwrap_or_default(),
            working,
            working_runnable: runnable.unwrap_or_default().saturating_sub(waking_at_all),
        };
        let began = Duration::from_nanos(self.began.get());
        let before_input = input_began.saturating_sub(began);
        if !self.has_life.load(Relaxed) {
            // An async driver, from the run's start: its slots' times are all timed.
            let slots = self.slots.get().clamp(1, u32::MAX.into()) as u32;
            times.starved = times
                .starved
                .saturating_sub(before_input.saturating_mul(slots));
            return times;
        }
        times.starved = times.starved.saturating_sub(before_input);
        let life = match ended {
            0 => self.run_started.elapsed().saturating_sub(began),
            ended => Duration::from_nanos(ended),
        };
        let parked = Duration::from_nanos(self.parked.get());
        let life = life.saturating_sub(before_input).saturating_sub(parked);
        if self.starved_is_the_rest.load(Relaxed) {
            let rest = life.saturating_sub(times.busy + times.blocked);
            times.starved = match runnable {
                Some(runnable) => {
                    let asleep = life.saturating_sub(cpu.unwrap_or_default() + runnable);
                    let slept = rest.min(asleep);
                    slept + (rest - slept).min(waking_for_input)
                }
                None => rest,
            };
        }
        // What is left between batches, neither timed nor starved, is the worker's own
        // doing (handing over, taking the next batch) or a wait for a core: busy. So is a
        // batch still in progress, for a snapshot while the worker runs.
        times.busy = life
            .saturating_sub(times.starved + times.blocked)
            .max(times.busy);
        times
    }

    /// The worker's CPU time and its wait for a core so far: read from the scheduler
    /// while its thread runs, when it can be, else as last recorded. The wait for a core
    /// is `None` where it is not measured.
    fn sched_times(&self, running: bool) -> (Option<Duration>, Option<(Duration, u64)>) {
        let thread = self.thread.get();
        if running && thread != 0 {
            if let Some(now) = Sched::of_thread(thread) {
                let start = &self.sched_at_start;
                let cpu = now.cpu.saturating_sub(start.cpu.get());
                let runnable = now.runnable.saturating_sub(start.runnable.get());
                let slices = now.slices.saturating_sub(start.slices.get());
                return (
                    Some(Duration::from_nanos(cpu)),
                    Some((Duration::from_nanos(runnable), slices)),
                );
            }
        }
        // A thread's wait for a core is read when it ends; a process's as it goes.
        let runnable_final = !running || thread == 0;
        let runnable = (runnable_final && self.has_runnable.load(Relaxed))
            .then(|| (Duration::from_nanos(self.runnable.get()), self.slices.get()));
        (self.cpu_time(), runnable)
    }
}
