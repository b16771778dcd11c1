//! Live progress bars: one line per stage, with its throughput, queue depth and what its
//! workers do (busy, blocked downstream), redrawn ten times a second by a thread of
//! their own. When the input's length is known (its iterator's `size_hint` is exact), the
//! input's line also shows how far the run is, in items and percent, and an estimate of
//! the time left.
//!
//! They draw on stderr, and only when both stdout and stderr are terminals: piped or
//! redirected output never gets escape codes, and a program whose stdout is a file keeps
//! it clean. They are cleared when the run ends, whether it completed, failed, was
//! cancelled or its output was dropped (the run's end stops them before it returns).

use std::io::IsTerminal;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::run::RunState;
use crate::observe::metrics::{Metrics, StageKind, StageMetrics};

/// The environment variable that turns progress bars on for every run:
/// `PYPER_PROGRESS=1`.
pub const PROGRESS_ENV: &str = "PYPER_PROGRESS";

const REFRESH: Duration = Duration::from_millis(100);

pub(crate) fn wanted_by_env() -> bool {
    matches!(
        std::env::var(PROGRESS_ENV).as_deref(),
        Ok("1" | "on" | "true" | "yes")
    )
}

/// Whether bars can be drawn without garbling anything: both streams are terminals.
pub(crate) fn can_draw() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// The thread that redraws the bars, and how to stop it.
pub(crate) struct Bars {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

/// Starts drawing `run`'s stages, if the terminal allows it. Returns once the first frame
/// is drawn, so that even a run shorter than a refresh shows its bars.
pub(crate) fn start(run: &Arc<RunState>) -> Option<Bars> {
    if !can_draw() {
        return None;
    }
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let (first_frame, drawn) = std::sync::mpsc::channel();
    let thread = {
        let (run, stop) = (Arc::downgrade(run), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("pyper:progress".into())
            .spawn(move || draw(&run, &stop, first_frame))
            .ok()?
    };
    // Sent after the first frame, or dropped if the thread ends without one.
    let _ = drawn.recv();
    Some(Bars { stop, thread })
}

impl Bars {
    /// Stops the redrawing and clears the bars.
    pub(crate) fn stop(self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        let _ = self.thread.join();
    }
}

fn draw(
    run: &std::sync::Weak<RunState>,
    stop: &(Mutex<bool>, Condvar),
    first_frame: std::sync::mpsc::Sender<()>,
) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let style = ProgressStyle::with_template("{prefix:>16.bold} {spinner} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut last: Option<(Instant, Vec<u64>)> = None;
    let mut pace = Pace::default();
    let (stopped, wake) = stop;
    let mut done = stopped.lock().unwrap_or_else(|p| p.into_inner());
    while !*done {
        let Some(metrics) = run.upgrade().map(|run| Metrics::collect(&run.meter)) else {
            break;
        };
        while bars.len() < metrics.stages.len() {
            let stage = &metrics.stages[bars.len()];
            let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
            bar.set_prefix(stage.name.clone());
            bars.push(bar);
        }
        let now = Instant::now();
        let counts: Vec<u64> = metrics.stages.iter().map(|s| s.items_out).collect();
        let rates: Vec<f64> = (0..counts.len())
            .map(|at| match &last {
                Some((then, before)) => {
                    let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
                    let before = before.get(at).copied().unwrap_or(0);
                    counts[at].saturating_sub(before) as f64 / seconds
                }
                None => 0.0,
            })
            .collect();
        let eta = RunEta::of(&metrics, now, &mut pace);
        for (at, (stage, bar)) in metrics.stages.iter().zip(&bars).enumerate() {
            bar.set_message(line(stage, rates[at], eta.filter(|_| at == 0)));
            bar.tick();
        }
        last = Some((now, counts));
        let _ = first_frame.send(());
        done = wake
            .wait_timeout(done, REFRESH)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    drop(done);
    for bar in &bars {
        bar.finish_and_clear();
    }
    let _ = multi.clear();
}

/// How far a run is, when its input's length is known: the items its first stage has
/// taken, of how many, and the time left at the recent pace.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RunEta {
    done: u64,
    total: u64,
    left: Option<Duration>,
}

/// The pace at which the first stage takes items, smoothed over the last few seconds.
#[derive(Default)]
struct Pace {
    last: Option<(Instant, u64)>,
    per_second: Option<f64>,
}

impl RunEta {
    /// From a snapshot taken at `now`. The first stage after the input takes one input
    /// item per call, so its count of items taken is the run's progress (the input
    /// itself runs ahead, into the queue between them).
    fn of(metrics: &Metrics, now: Instant, pace: &mut Pace) -> Option<RunEta> {
        let input = metrics.stages.first()?;
        let total = input.expected_items?;
        let done = metrics
            .stages
            .get(1)
            .map_or(input.items_out, |first| first.items_in);
        if let Some((then, before)) = pace.last {
            let seconds = now.saturating_duration_since(then).as_secs_f64();
            if seconds > 0.0 {
                let rate = done.saturating_sub(before) as f64 / seconds;
                let smoothed = pace.per_second.map_or(rate, |p| 0.8 * p + 0.2 * rate);
                pace.per_second = Some(smoothed);
            }
        }
        pace.last = Some((now, done));
        let left = total.saturating_sub(done);
        let left = match pace.per_second {
            _ if left == 0 => Some(Duration::ZERO),
            Some(rate) if rate > 0.0 => Some(Duration::from_secs_f64(left as f64 / rate)),
            _ => None,
        };
        Some(RunEta { done, total, left })
    }
}

/// One stage's line: its outputs and their rate, its queue, and its workers, busy and
/// blocked apart (a stage whose workers all wait on a full queue is not idle); for the
/// input, with `eta`, how far the run is.
fn line(stage: &StageMetrics, rate: f64, eta: Option<RunEta>) -> String {
    let progress = match eta {
        Some(RunEta { done, total, left }) => {
            let percent = if total == 0 {
                100.0
            } else {
                100.0 * done as f64 / total as f64
            };
            let left = left.map_or("ETA ?".to_owned(), |left| format!("ETA {}", clock(left)));
            format!("{done}/{total} taken ({percent:.0}%) · {left} · ")
        }
        None => String::new(),
    };
    let queue = match stage.kind {
        StageKind::Input => String::new(),
        _ => format!(" · queue {}", stage.queued),
    };
    let workers = match (stage.kind, stage.blocked_workers) {
        (StageKind::Remote, _) => remote_workers(stage),
        (StageKind::Async, _) => format!("in flight {}/{}", stage.busy_workers, stage.workers),
        (_, 0) => format!("busy {}/{}", stage.busy_workers, stage.workers),
        (_, blocked) => format!(
            "busy {} · blocked {} of {}",
            stage.busy_workers, blocked, stage.workers
        ),
    };
    format!(
        "{progress}{} out · {rate:.0}/s{queue} · {workers}",
        stage.items_out
    )
}

/// A remote stage's workers: how many processes serve it, and a word when none takes its
/// items.
fn remote_workers(stage: &StageMetrics) -> String {
    let Some(remote) = &stage.remote else {
        return String::new();
    };
    let processes: usize = remote.workers_per_host.iter().map(|(_, n)| n).sum();
    let hosts = remote.workers_per_host.len();
    match remote.unserved {
        Some(waited) if waited >= Duration::from_secs(1) => format!(
            "no worker has taken an item for {} (start workers with --pyper-worker URL)",
            clock(waited)
        ),
        _ if remote.live_workers == processes => {
            format!("{processes} worker processes on {hosts} hosts")
        }
        _ => format!(
            "{} worker processes serving ({processes} seen on {hosts} hosts)",
            remote.live_workers
        ),
    }
}

/// `1:02:03`, `2:03` or `3s`.
fn clock(time: Duration) -> String {
    let seconds = time.as_secs_f64().ceil() as u64;
    match (seconds / 3600, seconds / 60 % 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}:{s:02}"),
        (h, m, s) => format!("{h}:{m:02}:{s:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, kind: StageKind, workers: usize) -> StageMetrics {
        StageMetrics::empty(name, kind, workers)
    }

    #[test]
    fn the_input_line_shows_count_percent_and_eta_when_its_length_is_known() {
        let mut input = stage("input", StageKind::Input, 1);
        input.expected_items = Some(1000);
        input.items_out = 600;
        let mut first = stage("work", StageKind::Threads, 4);
        first.items_in = 250;
        let metrics = Metrics {
            stages: vec![input, first],
            ..Metrics::default()
        };
        let start = Instant::now();
        let mut pace = Pace {
            last: Some((start, 200)),
            per_second: None,
        };
        let eta = RunEta::of(&metrics, start + Duration::from_secs(1), &mut pace).unwrap();
        assert_eq!(
            eta,
            RunEta {
                done: 250,
                total: 1000,
                left: Some(Duration::from_secs(15))
            }
        );
        let text = line(&metrics.stages[0], 600.0, Some(eta));
        assert!(
            text.starts_with("250/1000 taken (25%) · ETA 15s · 600 out"),
            "{text}"
        );
        // The ETA is never shown on a line whose length is unknown.
        let mut unknown = metrics.clone();
        unknown.stages[0].expected_items = None;
        assert_eq!(RunEta::of(&unknown, start, &mut Pace::default()), None);
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        assert_eq!(clock(Duration::from_secs(61)), "1:01");
    }

    #[test]
    fn blocked_workers_are_shown_apart_from_busy_ones() {
        let mut fetch = stage("fetch", StageKind::Threads, 32);
        fetch.busy_workers = 2;
        fetch.blocked_workers = 30;
        let text = line(&fetch, 10.0, None);
        assert!(text.ends_with("busy 2 · blocked 30 of 32"), "{text}");
        fetch.blocked_workers = 0;
        assert!(line(&fetch, 10.0, None).ends_with("busy 2/32"));
    }
}
