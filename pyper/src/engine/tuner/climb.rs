//! The tuner's decision: how many workers a stage should have next, from what the last
//! window measured. Pure, so every rule is unit-tested on made-up windows.
//!
//! The rule is hill-climbing on throughput, as .NET's thread pool does, with three guards
//! in front of it:
//!
//! 1. A stage that waited for input, or for room downstream, during most of the window,
//!    or whose consumer, busy, took less than [`OUTPACED`] of what it made (the backlog
//!    between them grew) in two windows in a row, does not grow: its throughput is set
//!    by another stage, so a gain would be noise, and more workers would only wait. A
//!    stage that waits for input undoes the step that made it wait. A stage that
//!    outpaces its consumer keeps, of the last step up, what the consumer can take (with
//!    a margin), never more than it has: its own throughput may be the highest in a
//!    window in which the queue after it absorbed the difference, so it is the
//!    consumer's share that counts. A single such window only pauses the climb.
//! 2. A stage whose workers compute (their items do not give up the core to sleep or
//!    wait) gets one worker per core the rest of the process leaves free: no climb.
//! 3. Otherwise it grows while growing pays: it doubles while each step gains at least
//!    [`GAIN`], and quadruples while each doubling nearly doubles throughput (waits that
//!    all overlap, as IO does), or while its consumer waits for it, so that a stage that
//!    needs a hundred workers has them within a few windows. The first step that does not pay is undone (a quadrupling is
//!    retried as a doubling first), and the count settles. A settled
//!    stage probes every [`PROBE_EVERY`] windows, up a quarter, then down a quarter, and
//!    keeps a probe only if it pays (up) or costs nothing (down), so the count follows a
//!    workload that changes, and workers no longer needed park.

/// What one window measured, for one stage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Items finished per second.
    pub(crate) throughput: f64,
    /// The share of its workers' looks at the input that found it empty (0 to 1).
    pub(crate) starved: f64,
    /// The share of its workers' looks at the output that found it full (0 to 1).
    pub(crate) blocked: f64,
    /// Whether the stage made more than its consumer took in the window, while the
    /// consumer had no time to spare: a window that does not grow the stage.
    pub(crate) outpaced: bool,
    /// The share of the items the stage finished that its consumer took in the window,
    /// when it was outpaced in this window and the one before; else 1.
    pub(crate) consumer_took: f64,
    /// Whether the stage's consumer waited for input most of the window: it needs more
    /// than the stage makes.
    pub(crate) consumer_waits: bool,
    /// Whether the stage's workers compute: their items ran without giving up their
    /// core (no sleep, no IO wait), however long they waited for one.
    pub(crate) computes: bool,
    /// Cores the rest of the process left free during the window.
    pub(crate) free_cores: f64,
}

/// Why the count is what it is: said by the end-of-run report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Still climbing: each step has paid so far.
    Growing,
    /// The last step up did not raise throughput.
    NoGain,
    /// Workers compute, and this is as many as the free cores.
    CpuBound,
    /// The stage waits for its input: more workers would wait too.
    Starved,
    /// The stage waits for room downstream: more workers would wait too.
    Blocked,
    /// At the most workers it was allowed.
    AtMax,
}

impl Reason {
    /// Why, as the end of a sentence that begins "The run stopped there because".
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Reason::Growing => "the run ended while more workers were still raising its throughput",
            Reason::NoGain => "more workers did not raise its throughput",
            Reason::CpuBound => "its work computes, and it has one worker per free core",
            Reason::Starved => "it was waiting for input, and more workers would only wait too",
            Reason::Blocked => {
                "the stage after it could not keep up, and more workers would only wait too"
            }
            Reason::AtMax => "it reached the most workers it was allowed",
        }
    }
}

/// A step must raise throughput by this share to count as a gain.
pub(crate) const GAIN: f64 = 0.10;
/// A step that raised throughput by this share of its own growth was near-linear: the
/// next step quadruples.
const LINEAR: f64 = 0.8;
/// A probe down is kept when throughput stays above this share of the settled one.
const KEEP_DOWN: f64 = 0.95;
/// A guard holds when this share of looks found the queue empty (or full).
const WAITING: f64 = 0.5;
/// A stage outpaces its consumer when the consumer took less than this share of what it
/// made in a window.
pub(crate) const OUTPACED: f64 = 0.75;
/// A stage that outpaced its consumer keeps this much more than the consumer's pace. Twice:
/// items whose times vary (IO: 2 to 8 ms a page, say) come in bursts and lulls, and at
/// a quarter over the pace the consumer went without input in the lulls (4% of its time
/// in `crawl_report`), while the spare workers cost only a wait on a full queue.
const PACE_MARGIN: f64 = 2.0;
/// Settled windows between two probes.
pub(crate) const PROBE_EVERY: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Growing; `from` is the count and throughput before the last step.
    Growing { from: Option<(usize, f64)> },
    /// Settled at the count, with its throughput, for `windows` windows.
    Settled {
        throughput: f64,
        windows: u32,
        next_probe_up: bool,
    },
    /// Trying `to` instead of `from`, which gave `throughput`.
    Probing {
        from: usize,
        throughput: f64,
        up: bool,
    },
}

/// The climbing state of one stage.
#[derive(Debug)]
pub(crate) struct Climb {
    active: usize,
    max: usize,
    phase: Phase,
    reason: Reason,
}

impl Climb {
    /// A climb from `start` workers (the cores, say) up to `max`.
    pub(crate) fn new(start: usize, max: usize) -> Self {
        let max = max.max(1);
        Climb {
            active: start.clamp(1, max),
            max,
            phase: Phase::Growing { from: None },
            reason: Reason::Growing,
        }
    }

    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.active
    }

    pub(crate) fn reason(&self) -> Reason {
        self.reason
    }

    /// Takes one window's measurements, and returns the count for the next window.
    pub(crate) fn step(&mut self, window: Window) -> usize {
        let starved = window.starved >= WAITING && window.starved >= window.blocked;
        let held_back = window.blocked >= WAITING || window.consumer_took < OUTPACED;
        let waiting = starved || held_back;
        if window.computes {
            // A core counts as free when at least a fifth of it is: two workers on 1.3
            // free cores get more done than one.
            let cores = ((window.free_cores - 0.2).ceil() as usize).max(1);
            // Work that computes needs a core per worker, and gains nothing from more: the
            // guides' rule, applied without a climb that noise could mislead. A stage that
            // waits on a neighbour keeps what it has, unless that is more than the cores.
            if !waiting || self.active > cores {
                let reason = match cores < self.max {
                    true => Reason::CpuBound,
                    false => Reason::AtMax,
                };
                return self.settle(cores, window.throughput, reason);
            }
        }
        if starved {
            if let Some(doubled) = self.retry_as_doubling() {
                return doubled;
            }
            // A step up that left the stage waiting is undone: the new workers only wait.
            let back = match self.phase {
                Phase::Growing {
                    from: Some((from, _)),
                } => from,
                Phase::Probing { from, up: true, .. } => from,
                _ => self.active,
            };
            return self.settle(back, window.throughput, Reason::Starved);
        }
        if held_back {
            // Of the last step up, keep what the consumer takes (a probe up, small, is
            // undone); never more than now.
            let keep = match self.phase {
                Phase::Growing {
                    from: Some((from, _)),
                } => {
                    let pace = self.active as f64 * window.consumer_took * PACE_MARGIN;
                    (pace.ceil() as usize).clamp(from.min(self.active), self.active)
                }
                Phase::Probing { from, up: true, .. } => from,
                _ => self.active,
            };
            return self.settle(keep, window.throughput, Reason::Blocked);
        }
        let at_max = self.active >= self.max;
        if window.outpaced {
            // Once only, so far: no step up on it, nor away from it.
            self.reason = Reason::Blocked;
            if let Phase::Settled {
                throughput,
                windows,
                next_probe_up,
            } = self.phase
            {
                self.phase = Phase::Settled {
                    throughput,
                    windows: windows.min(PROBE_EVERY - 2) + 1,
                    next_probe_up,
                };
            }
            return self.active;
        }
        match self.phase {
            Phase::Growing { from } => {
                let paid = from.is_none_or(|(_, before)| gained(before, window.throughput));
                if !paid {
                    if let Some(doubled) = self.retry_as_doubling() {
                        return doubled;
                    }
                    let (from, before) = from.expect("a step was taken");
                    return self.settle(from, before, Reason::NoGain);
                }
                if at_max {
                    return self.settle(self.active, window.throughput, Reason::AtMax);
                }
                let linear = from.is_some_and(|(count, before)| {
                    let grew = self.active as f64 / count as f64 - 1.0;
                    window.throughput >= before * (1.0 + LINEAR * grew)
                });
                // A consumer that waits for this stage needs more of it: no time to lose.
                let factor = if linear || window.consumer_waits {
                    4
                } else {
                    2
                };
                let next = (self.active * factor).min(self.max);
                self.phase = Phase::Growing {
                    from: Some((self.active, window.throughput)),
                };
                self.reason = Reason::Growing;
                self.active = next;
            }
            Phase::Settled {
                throughput,
                windows,
                next_probe_up,
            } => {
                // A settled window refreshes the reference throughput (the load may change).
                let throughput = (throughput + window.throughput) / 2.0;
                if windows + 1 < PROBE_EVERY {
                    self.phase = Phase::Settled {
                        throughput,
                        windows: windows + 1,
                        next_probe_up,
                    };
                    return self.active;
                }
                let step = (self.active / 4).max(1);
                let (to, up) = match next_probe_up {
                    true if !at_max => ((self.active + step).min(self.max), true),
                    _ if self.active > 1 => (self.active - step, false),
                    _ => {
                        self.phase = Phase::Settled {
                            throughput,
                            windows: 0,
                            next_probe_up: !next_probe_up,
                        };
                        return self.active;
                    }
                };
                self.phase = Phase::Probing {
                    from: self.active,
                    throughput,
                    up,
                };
                self.active = to;
            }
            Phase::Probing {
                from,
                throughput,
                up,
            } => {
                let keep = match up {
                    true => gained(throughput, window.throughput),
                    false => window.throughput >= throughput * KEEP_DOWN,
                };
                match (keep, up) {
                    (true, true) => {
                        // The probe paid: climb again from here.
                        self.phase = Phase::Growing {
                            from: Some((from, throughput)),
                        };
                        self.reason = Reason::Growing;
                        return self.step_growing(window);
                    }
                    (true, false) => {
                        self.phase = Phase::Settled {
                            throughput: window.throughput,
                            windows: 0,
                            next_probe_up: true,
                        };
                    }
                    (false, _) => {
                        self.active = from;
                        self.phase = Phase::Settled {
                            throughput,
                            windows: 0,
                            next_probe_up: !up,
                        };
                    }
                }
            }
        }
        self.active
    }

    /// After a probe up paid: takes the next doubling step at once.
    fn step_growing(&mut self, window: Window) -> usize {
        if self.active >= self.max {
            return self.settle(self.active, window.throughput, Reason::AtMax);
        }
        self.phase = Phase::Growing {
            from: Some((self.active, window.throughput)),
        };
        self.active = (self.active * 2).min(self.max);
        self.active
    }

    /// After a quadrupling that did not pay: tries the doubling in between before giving
    /// the step up, since the count that pays may lie there. `None` after any other step.
    fn retry_as_doubling(&mut self) -> Option<usize> {
        let Phase::Growing {
            from: Some((from, _)),
        } = self.phase
        else {
            return None;
        };
        (self.active > from * 2).then(|| {
            self.active = from * 2;
            self.active
        })
    }

    fn settle(&mut self, active: usize, throughput: f64, reason: Reason) -> usize {
        self.active = active.clamp(1, self.max);
        self.reason = reason;
        self.phase = Phase::Settled {
            throughput,
            windows: 0,
            next_probe_up: true,
        };
        self.active
    }
}

fn gained(before: f64, after: f64) -> bool {
    after > before * (1.0 + GAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window for a stage whose throughput is `curve(active)`, IO-bound on an idle
    /// machine.
    fn io(throughput: f64) -> Window {
        Window {
            throughput,
            starved: 0.0,
            blocked: 0.0,
            outpaced: false,
            consumer_took: 1.0,
            consumer_waits: false,
            computes: false,
            free_cores: 2.0,
        }
    }

    /// Runs `windows` steps against a throughput curve, returning the counts visited.
    fn climb(max: usize, windows: usize, curve: impl Fn(usize) -> Window) -> (Climb, Vec<usize>) {
        let mut climb = Climb::new(1, max);
        let mut visited = vec![climb.active()];
        for _ in 0..windows {
            let window = curve(climb.active());
            visited.push(climb.step(window));
        }
        (climb, visited)
    }

    #[test]
    fn an_io_stage_doubles_up_to_its_max() {
        // 10 ms per item: every worker adds 100 items/s.
        let (climb, visited) = climb(64, 6, |n| io(100.0 * n as f64));
        // Doubling, then quadrupling once each doubling has doubled throughput.
        assert_eq!(&visited[..6], &[1, 2, 8, 32, 64, 64]);
        assert_eq!(climb.reason(), Reason::AtMax);
    }

    #[test]
    fn a_stage_its_consumer_waits_for_quadruples_from_the_first_step() {
        let waited_for = |n: usize| Window {
            consumer_waits: true,
            ..io(100.0 * n as f64)
        };
        let (_, visited) = climb(64, 3, waited_for);
        assert_eq!(&visited[..4], &[1, 4, 16, 64]);
    }

    #[test]
    fn an_io_stage_stops_where_throughput_stops() {
        // A server that serves at most 20 requests at once.
        let (climb, _) = climb(256, 12, |n| io(100.0 * n.min(20) as f64));
        assert!(
            (16..=32).contains(&climb.active()),
            "settled at {}",
            climb.active()
        );
        assert_eq!(climb.reason(), Reason::NoGain);
    }

    #[test]
    fn a_cpu_bound_stage_gets_the_free_cores() {
        let cpu = |n: usize| Window {
            throughput: 1000.0 * n.min(2) as f64,
            computes: true,
            free_cores: 2.0,
            ..io(0.0)
        };
        let (climb, visited) = climb(16, 20, cpu);
        assert_eq!(climb.active(), 2);
        assert!(visited.iter().all(|&n| n <= 2), "visited {visited:?}");
        assert_eq!(climb.reason(), Reason::CpuBound);
    }

    #[test]
    fn a_cpu_bound_stage_gives_back_cores_others_take() {
        let mut climb = Climb::new(1, 8);
        let busy = |n: usize, free_cores| Window {
            throughput: 1000.0 * n as f64,
            computes: true,
            free_cores,
            ..io(0.0)
        };
        climb.step(busy(1, 4.0));
        climb.step(busy(2, 4.0));
        assert_eq!(climb.active(), 4);
        // Another stage now takes three of the four cores.
        assert_eq!(climb.step(busy(4, 1.0)), 1);
        assert_eq!(climb.reason(), Reason::CpuBound);
    }

    #[test]
    fn a_stage_blocked_downstream_does_not_grow() {
        let blocked = |n: usize| Window {
            blocked: 0.9,
            ..io(100.0 * n as f64)
        };
        let (climb, visited) = climb(64, 20, blocked);
        assert!(visited.iter().all(|&n| n == 1), "visited {visited:?}");
        assert_eq!(climb.reason(), Reason::Blocked);
    }

    #[test]
    fn a_stage_its_consumer_cannot_keep_up_with_stays_where_it_started() {
        // Sleeping work (throughput doubles with the workers) whose consumer takes a
        // third of what it makes: the queue between them grows, but it is never full.
        let outpacing = |n: usize| Window {
            outpaced: true,
            consumer_took: 0.3,
            consumer_waits: false,
            ..io(100.0 * n as f64)
        };
        let mut climb = Climb::new(2, 64);
        for _ in 0..40 {
            let n = climb.active();
            assert_eq!(climb.step(outpacing(n)), 2);
        }
        assert_eq!(climb.reason(), Reason::Blocked);
    }

    #[test]
    fn a_stage_that_outpaces_its_consumer_keeps_its_consumers_pace() {
        // 200 items/s a worker, against a consumer that takes 600 items/s: the window
        // after a step past it measures the stage's own pace (the queue absorbs the
        // rest), and what the consumer took of it.
        let curve = |n: usize| {
            let made = 200.0 * n as f64;
            let took = (600.0 / made).min(1.0);
            Window {
                outpaced: took < 1.0,
                consumer_took: took,
                consumer_waits: false,
                ..io(made)
            }
        };
        let mut climb = Climb::new(2, 128);
        let mut visited = vec![2];
        for _ in 0..40 {
            let n = climb.active();
            visited.push(climb.step(curve(n)));
        }
        // 2, then 4 (800 items/s), which outpaces the consumer (600): it stays there.
        assert_eq!(&visited[..2], &[2, 4], "visited {visited:?}");
        assert!(visited[1..].iter().all(|&n| n == 4), "visited {visited:?}");
        assert_eq!(climb.reason(), Reason::Blocked);
    }

    #[test]
    fn a_step_past_the_consumers_pace_is_brought_back_to_it() {
        // As above, but the step from 4 to 16 happened before the consumer fell behind
        // (the queue absorbed it): the next windows find it taking 600 of 3,200 items/s.
        let mut climb = Climb::new(4, 128);
        climb.phase = Phase::Growing {
            from: Some((4, 800.0)),
        };
        climb.active = 16;
        let window = Window {
            outpaced: true,
            consumer_took: 600.0 / 3200.0,
            consumer_waits: false,
            ..io(3200.0)
        };
        // ceil(16 × 0.1875 × 2) = 6: the consumer's pace, twice over.
        assert_eq!(climb.step(window), 6);
        assert_eq!(climb.reason(), Reason::Blocked);
    }

    #[test]
    fn one_window_of_a_busy_consumer_pauses_the_climb() {
        let mut climb = Climb::new(2, 64);
        let pausing = Window {
            outpaced: true,
            ..io(200.0)
        };
        assert_eq!(climb.step(pausing), 2);
        assert_eq!(climb.step(io(200.0)), 4);
        assert_eq!(climb.reason(), Reason::Growing);
    }

    #[test]
    fn a_starved_stage_undoes_the_step_that_starved_it() {
        // The input arrives at 400 items/s: past 4 workers, the stage waits for it.
        let curve = |n: usize| Window {
            starved: if n > 4 { 0.8 } else { 0.0 },
            ..io(100.0 * n.min(4) as f64)
        };
        let (climb, _) = climb(64, 6, curve);
        assert_eq!(climb.active(), 4);
        assert_eq!(climb.reason(), Reason::Starved);
    }

    #[test]
    fn a_settled_stage_probes_and_follows_a_change() {
        let mut climb = Climb::new(1, 256);
        // At first the server takes 8 at once...
        for _ in 0..10 {
            let n = climb.active();
            climb.step(io(100.0 * n.min(8) as f64));
        }
        assert!((8..=16).contains(&climb.active()));
        // ...then 64: a probe up finds the gain, and the climb resumes.
        for _ in 0..40 {
            let n = climb.active();
            climb.step(io(100.0 * n.min(64) as f64));
        }
        assert!(
            (48..=128).contains(&climb.active()),
            "at {}",
            climb.active()
        );
    }

    #[test]
    fn a_settled_stage_sheds_workers_it_does_not_need() {
        let mut climb = Climb::new(1, 256);
        for _ in 0..10 {
            let n = climb.active();
            climb.step(io(100.0 * n.min(64) as f64));
        }
        let high = climb.active();
        // The server now takes 8 at once: the extra workers gain nothing.
        for _ in 0..80 {
            let n = climb.active();
            climb.step(io(100.0 * n.min(8) as f64));
        }
        assert!(climb.active() < high, "still at {}", climb.active());
    }
}
