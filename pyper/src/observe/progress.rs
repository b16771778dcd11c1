//! Live progress bars: one line per stage, with its throughput, queue depth and busy
//! workers, redrawn ten times a second by a thread of their own.
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
use crate::observe::metrics::{Metrics, StageKind};

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
        for (at, (stage, bar)) in metrics.stages.iter().zip(&bars).enumerate() {
            let rate = match &last {
                Some((then, before)) => {
                    let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
                    counts[at].saturating_sub(before.get(at).copied().unwrap_or(0)) as f64 / seconds
                }
                None => 0.0,
            };
            let queue = match stage.kind {
                StageKind::Input => String::new(),
                _ => format!(" · queue {}", stage.queued),
            };
            bar.set_message(format!(
                "{} out · {rate:.0}/s{queue} · busy {}/{}",
                stage.items_out, stage.busy_workers, stage.workers
            ));
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
