//! What to change: the report's advice, with the numbers it computes from the run.

use std::time::Duration;

use super::{count, millis, percent, Bound, Report, StageReport, MANY_THREADS, MOST_WORKERS};
use crate::observe::metrics::{StageKind, StageMetrics, Tuned};

impl Report {
    /// What to change, in words and numbers: one line for the bottleneck, then one for
    /// each other stage that blocks its executor or waits on a neighbour.
    ///
    /// The seeds' rules, applied with the run's own figures:
    ///
    /// * a CPU-bound stage gains nothing from more workers than cores: with more, it is
    ///   told to use as many as the cores; with fewer, to raise them to the cores free;
    /// * an IO-bound stage gains from more workers, as many as it takes to keep up with
    ///   the rest of the pipeline (computed from every stage's time per item and from
    ///   the CPU the pipeline needs per item), and an async task suits hundreds of waits;
    /// * blocking calls in an async task block its executor: they belong in an async
    ///   wait, or in a sync task;
    /// * a starved or blocked stage waits on a neighbour: more workers there won't help.
    pub fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        // A tuned stage's count is the run's own choice: the report says what it chose
        // and why, instead of advising a fixed count.
        let tuned = |at: usize| self.stages[at].metrics.tuned.as_ref();
        for stage in &self.stages {
            if let Some(tuned) = &stage.metrics.tuned {
                advice.push(tuned_advice(&stage.metrics, tuned));
            }
        }
        match self.bottleneck {
            Some(at) if tuned(at).is_none() => {
                advice.push(self.bottleneck_advice(&self.stages[at]));
            }
            None if self.consumer_bound => advice.push(
                "the pipeline waits on its consumer: the code reading the output is the \
                 slowest part, so speed that up (or give its work to a stage with workers)"
                    .to_owned(),
            ),
            _ => {}
        }
        for (at, stage) in self.stages.iter().enumerate() {
            if Some(at) == self.bottleneck || tuned(at).is_some() {
                continue;
            }
            let name = &stage.metrics.name;
            let elapsed = self.elapsed;
            match stage.bound {
                Bound::BlocksExecutor => advice.push(self.stall_advice(stage)),
                Bound::Cpu if takes_turns_on_the_gil(stage) => advice.push(format!(
                    "`{name}` is CPU-bound Python code on {}, which take turns on the GIL: \
                     use `multiprocess=True` with {} workers, or fewer threads",
                    count(stage.metrics.workers, "thread"),
                    self.cores
                )),
                Bound::Cpu => {
                    if let Some(suggested) = stage.suggested_workers {
                        advice.push(format!(
                            "`{name}` is CPU-bound with {} workers on {} cores: use \
                             {suggested}; more only take turns on the cores",
                            stage.metrics.workers, self.cores
                        ));
                    }
                }
                Bound::Starved => advice.push(format!(
                    "`{name}` is starved: its workers waited for input {} of the time; \
                     more workers here won't help",
                    percent(stage.metrics.starved_share(elapsed))
                )),
                Bound::Blocked => advice.push(format!(
                    "`{name}` is blocked by downstream: its workers waited to hand on \
                     outputs {} of the time",
                    percent(stage.metrics.blocked_share(elapsed))
                )),
                _ => {}
            }
        }
        advice
    }

    fn bottleneck_advice(&self, stage: &StageReport) -> String {
        let m = &stage.metrics;
        let name = &m.name;
        let cpu = stage.cpu_description();
        let cores = self.cores;
        let workers = m.workers;
        let busy = percent(stage.utilization);
        let suggested = stage.suggested_workers.unwrap_or(workers);
        match (stage.bound, m.kind) {
            (Bound::BlocksExecutor, _) | (Bound::Cpu, StageKind::Async) => self.stall_advice(stage),
            (Bound::Cpu | Bound::Waiting, StageKind::Remote) => remote_advice(stage),
            (Bound::Cpu, StageKind::Input) => format!(
                "the input iterator is the bottleneck and CPU-bound ({cpu}): make it \
                 cheaper, or move its work into a task with workers"
            ),
            (Bound::Waiting, StageKind::Input) => format!(
                "the input iterator is the bottleneck and waits ({cpu}): fetch ahead, \
                 or feed a cheap iterator and do the waiting in a task with workers"
            ),
            (Bound::Cpu, StageKind::Threads) if takes_turns_on_the_gil(stage) => format!(
                "`{name}` is CPU-bound: Python code that holds the GIL ({cpu}). Its {} \
                 take turns on the GIL, so threads don't speed it up: use \
                 `multiprocess=True` with {suggested} workers (one per core), or fewer \
                 threads (1 does as much)",
                count(workers, "thread")
            ),
            (Bound::Cpu, StageKind::Threads) if m.python && workers == 1 => format!(
                "`{name}` is CPU-bound ({cpu}) with {}: Python code runs on one thread \
                 at a time (the GIL), so more threads won't speed it up: use \
                 `multiprocess=True` with {suggested} workers (one per core). Threads \
                 help only code that releases the GIL (numpy, hashlib, IO)",
                count(workers, "thread")
            ),
            (Bound::Cpu, _) if suggested < workers => format!(
                "`{name}` is CPU-bound ({cpu}) with {workers} workers on {cores} cores: \
                 use {suggested}. {suggested} keep the cores busy, and more only take turns \
                 on them; to go faster, make each item cheaper"
            ),
            (Bound::Cpu, _) if workers == cores => format!(
                "`{name}` is CPU-bound ({cpu}) and already has {workers} workers on \
                 {cores} cores: more workers won't help; make each item cheaper"
            ),
            (Bound::Cpu, _) if self.cpu_bound_workers() >= cores => format!(
                "`{name}` is CPU-bound ({cpu}) with {workers} workers, but the CPU-bound \
                 stages already have {} workers on {cores} cores: give it workers from \
                 the others rather than more in all",
                self.cpu_bound_workers()
            ),
            (Bound::Cpu, _) => format!(
                "`{name}` is CPU-bound ({cpu}) with {} on {cores} cores: raise workers to \
                 {suggested}",
                count(workers, "worker")
            ),
            (Bound::Waiting, kind) => {
                let what = match kind {
                    StageKind::Async => format!("{} in flight", count(workers, "future")),
                    _ => format!("{} busy", count(workers, "worker")),
                };
                let per_item = m
                    .wall_per_item()
                    .map_or_else(String::new, |wall| format!(", {} per item", millis(wall)));
                let many = if kind != StageKind::Async && suggested > MANY_THREADS {
                    "; that many waits suit an async task better than threads"
                } else {
                    ""
                };
                format!(
                    "`{name}` is IO-bound ({cpu}), with {what} {busy} of the time{per_item}. \
                     Waits overlap: raise workers to {suggested}, enough to keep up with {}{many}",
                    self.limit_without(stage).1
                )
            }
            _ => format!("`{name}` is {}", stage.bound.label()),
        }
    }

    /// The advice for an async stage that stalls its runtime threads.
    fn stall_advice(&self, stage: &StageReport) -> String {
        let m = &stage.metrics;
        let name = &m.name;
        let per_item = m.stalled / m.items().clamp(1, u32::MAX.into()) as u32;
        let longest = m.longest_stall.map_or_else(String::new, |longest| {
            format!(" (up to {} at once)", millis(longest))
        });
        let held = format!(
            "its items held a runtime thread for {} each on average{longest}",
            millis(per_item)
        );
        if m.python {
            return match stage.bound {
                Bound::Cpu => format!(
                    "`{name}` computes inside a coroutine: {}, on a core, and every \
                     coroutine on the event loop waited meanwhile: make it a sync task \
                     with `multiprocess=True` and {} workers",
                    held.replace("a runtime thread", "the event loop"),
                    self.cores
                ),
                _ => format!(
                    "`{name}` blocks its executor: {}, without computing, so it makes a \
                     blocking call (`time.sleep`, a sync read or lock) inside a \
                     coroutine, and every coroutine on the event loop waited meanwhile; \
                     more workers won't help. Await an async call instead (`asyncio.sleep`, \
                     async IO), or move the call to a sync task (it runs on threads)",
                    held.replace("a runtime thread", "the event loop")
                ),
            };
        }
        if stage.bound == Bound::Cpu {
            format!(
                "`{name}` computes inside an async task: {held}, on a core, and every \
                 future on that thread waited meanwhile: make it a sync `task()` with {} \
                 workers",
                self.cores
            )
        } else {
            format!(
                "`{name}` blocks its executor: {held}, without computing, so it makes a \
                 blocking call (a sync sleep, read or lock) inside async code, and every \
                 future on that thread waited meanwhile; more futures in flight won't help. \
                 Use an async wait (`tokio::time::sleep`, async IO), or move the call to a \
                 sync `task()`"
            )
        }
    }

    /// The workers the advice gives the stage at `at`, if it advises a change.
    pub(super) fn suggest_workers(&self, at: usize) -> Option<usize> {
        let stage = &self.stages[at];
        let m = &stage.metrics;
        let cores = self.cores;
        match (stage.bound, m.kind) {
            (_, StageKind::Input | StageKind::Remote) => None,
            // Python code on threads takes turns on the GIL: as many worker processes as
            // the cores, whatever its threads. (Threads that compute without waiting for
            // it run code that releases it, numpy's say, and are counted as Rust threads.)
            (Bound::Cpu, StageKind::Threads)
                if takes_turns_on_the_gil(stage) || (m.python && m.workers == 1) =>
            {
                Some(cores)
            }
            (Bound::Cpu, StageKind::Threads | StageKind::Process)
                if m.workers > stage.cpu_workers_enough(cores) =>
            {
                Some(stage.cpu_workers_enough(cores))
            }
            (Bound::Cpu, StageKind::Threads | StageKind::Process)
                if Some(at) == self.bottleneck && self.cpu_bound_workers() < cores =>
            {
                Some(m.workers + cores - self.cpu_bound_workers())
            }
            (Bound::Waiting, _) if Some(at) == self.bottleneck => {
                let needed = self.limit_without(stage).0 * m.working.as_secs_f64()
                    / (m.items().max(1) as f64);
                let needed = if needed.is_finite() {
                    needed.ceil() as usize
                } else {
                    m.workers * 4
                };
                Some(needed.clamp(m.workers + 1, MOST_WORKERS.max(m.workers + 1)))
            }
            _ => None,
        }
    }

    /// The most items per second (in `stage`'s items) that the rest of the pipeline could
    /// take, and what sets that limit: the slowest other stage at full speed with its
    /// workers, or the cores, given the CPU time the pipeline spends per item.
    fn limit_without(&self, stage: &StageReport) -> (f64, String) {
        let items = stage.metrics.items().max(1) as f64;
        let cpu: Duration = self.stages.iter().filter_map(|s| s.metrics.cpu).sum();
        let mut limit = (
            self.cores as f64 * items / cpu.as_secs_f64(),
            format!("the {} cores", self.cores),
        );
        for other in &self.stages {
            let m = &other.metrics;
            if m.name == stage.metrics.name || other.bound == Bound::Idle || m.working.is_zero() {
                continue;
            }
            let workers = match other.bound {
                Bound::Cpu => m.workers.min(self.cores),
                _ => m.workers,
            };
            // At full speed, in `stage`'s items: each of its workers on item after item.
            let rate = workers as f64 * items / m.working.as_secs_f64();
            if rate < limit.0 {
                limit = (rate, format!("`{}`", m.name));
            }
        }
        let caveat = if limit.1.starts_with("the ") {
            ", as far as this run can tell: what it waits on may give out first"
        } else {
            ""
        };
        (
            limit.0,
            format!("{} ({:.0} items/s){caveat}", limit.1, limit.0),
        )
    }

    /// The workers of the thread and process stages that are CPU-bound: the cores they
    /// compete for are the machine's, whichever stage is the bottleneck.
    fn cpu_bound_workers(&self) -> usize {
        self.stages
            .iter()
            .filter(|stage| stage.bound == Bound::Cpu)
            .filter(|stage| matches!(stage.metrics.kind, StageKind::Threads | StageKind::Process))
            .map(|stage| stage.metrics.workers)
            .sum()
    }
}

/// Whether the stage is Python code whose threads take turns on the GIL.
fn takes_turns_on_the_gil(stage: &StageReport) -> bool {
    stage.waits_for_gil && stage.metrics.workers > 1
}

/// What the tuner chose for a stage with `auto_workers`, and why, in plain sentences.
fn tuned_advice(m: &StageMetrics, tuned: &Tuned) -> String {
    let (name, mean) = (&m.name, m.workers);
    let workers = |n: usize| match n {
        1 => "1 worker".to_owned(),
        n => format!("{n} workers"),
    };
    // Python's `workers="auto"` has a fixed most: more threads are `workers=n`.
    let more = match m.python {
        true => format!(
            "give it `workers=n` above {} (or make it an async task)",
            tuned.max
        ),
        false => format!("allow it more than {} with `auto_workers`", tuned.max),
    };
    let limit = match tuned.workers >= tuned.max {
        true => format!(" It is at its limit: if it is the bottleneck, {more}."),
        false => String::new(),
    };
    format!(
        "`{name}`: the run tuned it to {} (on average {}, at most {} at once, of {} \
         allowed). The run stopped there because {}.{limit}",
        workers(tuned.workers),
        mean,
        tuned.peak,
        tuned.max,
        tuned.why
    )
}

/// A remote stage that is the bottleneck: its cores are its workers' hosts', not this
/// machine's, so the advice is about how many workers serve it.
fn remote_advice(stage: &StageReport) -> String {
    let m = &stage.metrics;
    let name = &m.name;
    let cpu = stage.cpu_description();
    let processes = m.remote.as_ref().map_or(0, |remote| remote.live_workers);
    let threads = m.workers / processes.max(1);
    let served = format!(
        "{} of {}",
        super::worker_processes(processes),
        count(threads, "thread")
    );
    match stage.bound {
        Bound::Cpu => format!(
            "`{name}` is CPU-bound on its remote workers ({cpu}), served by {served}: start \
             more worker processes, on hosts with free cores (or raise `workers(n)` where \
             a host has cores to spare)"
        ),
        _ => format!(
            "`{name}` waits on its remote workers ({cpu}), served by {served}: raise \
             `workers(n)` (each process then runs more items at once), or start more \
             worker processes"
        ),
    }
}
