//! The child-process side: one scenario, one impl, one source count, in a process of its
//! own so that its peak RSS is its own.
//!
//! It does a warm-up run (over every item, unless the impl caps it) and then one measured
//! run, checks both checksums against the scenario's expected value, and prints one JSON
//! line: the checksum, the measured run's wall time, VmHWM from `/proc/self/status`, and
//! the extra figures of the measured run (its context switches, and whatever the run
//! itself [`record`]ed). Any failure is a message on stderr and a non-zero exit, which the
//! parent turns into a hard error.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use nix::libc::c_long;
use serde::{Deserialize, Serialize};

use crate::scenarios::{self, Runner};

/// The line a child prints on stdout; the Python scripts print the same.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildReport {
    /// The checksum of the measured run.
    pub result: u64,
    /// Wall time of the measured run, in seconds.
    pub wall_s: f64,
    /// The process's peak resident set (VmHWM), in kB.
    pub peak_rss_kb: u64,
    /// Figures of the measured run beyond its wall time, by name (see [`extra`]); the
    /// Python scripts print none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// The names of the extra figures every Rust child reports: context switches during the
/// measured run, voluntary (a thread blocked: on a queue, a lock, a sleep) and
/// involuntary (it was preempted), of the whole process (every thread, including those
/// that ended during the run) and of the calling thread alone (where a pyper run's
/// consumer loop runs).
pub mod extra {
    pub const VOLUNTARY: &str = "ctx_switches_voluntary";
    pub const INVOLUNTARY: &str = "ctx_switches_involuntary";
    pub const CALLER_VOLUNTARY: &str = "ctx_switches_caller_voluntary";
}

/// What the running impl [`record`]s for its run; cleared before each run.
static RECORDED: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());

/// Records a figure of the current run under `name` (the last value wins), for the report
/// line of the measured run. A scenario's notes read it back with [`Row::extra`].
///
/// [`Row::extra`]: crate::report::Row::extra
pub fn record(name: &str, value: f64) {
    recorded().insert(name.to_owned(), value);
}

fn recorded() -> std::sync::MutexGuard<'static, BTreeMap<String, f64>> {
    RECORDED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `pyper-bench --child <scenario> <impl> <items>`.
pub fn main(args: &[String]) -> ExitCode {
    match measure(args) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report serialises")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("pyper-bench child: {error}");
            ExitCode::from(2)
        }
    }
}

fn measure(args: &[String]) -> Result<ChildReport, String> {
    let [scenario, name, items] = args else {
        return Err(format!(
            "usage: --child <scenario> <impl> <items>, got {args:?}"
        ));
    };
    let items: u64 = items
        .parse()
        .map_err(|error| format!("items {items:?}: {error}"))?;
    let cases = scenarios::all();
    let case = cases
        .iter()
        .find(|case| case.name == scenario)
        .ok_or_else(|| format!("no scenario {scenario:?}"))?;
    let imp = case
        .impls
        .iter()
        .find(|imp| imp.name == name)
        .ok_or_else(|| format!("scenario {scenario} has no impl {name:?}"))?;
    let Runner::Rust(run) = imp.runner else {
        return Err(format!("{scenario}/{name} is not a Rust impl"));
    };

    let check = |what: &str, items: u64, result: Result<u64, String>| {
        let expected = (case.expected)(items);
        match result {
            Ok(result) if result == expected => Ok(result),
            Ok(result) => Err(format!(
                "result mismatch in scenario {scenario}, impl {name}: the {what} run over \
                 {items} items returned {result}, expected {expected}"
            )),
            Err(error) => Err(format!(
                "scenario {scenario}, impl {name}: the {what} run failed: {error}"
            )),
        }
    };

    let warm_up = imp.warm_up_items(items);
    check("warm-up", warm_up, run(warm_up))?;
    recorded().clear();
    let before = Switches::now()?;
    let start = Instant::now();
    let result = run(items);
    let wall_s = start.elapsed().as_secs_f64();
    let after = Switches::now()?;
    let result = check("measured", items, result)?;
    let mut extra = std::mem::take(&mut *recorded());
    for (name, count) in [
        (extra::VOLUNTARY, after.voluntary - before.voluntary),
        (extra::INVOLUNTARY, after.involuntary - before.involuntary),
        (
            extra::CALLER_VOLUNTARY,
            after.caller_voluntary - before.caller_voluntary,
        ),
    ] {
        extra.insert(name.into(), count as f64);
    }
    Ok(ChildReport {
        result,
        wall_s,
        peak_rss_kb: peak_rss_kb()?,
        extra,
    })
}

/// The context switch counters of `getrusage`, so far.
struct Switches {
    /// Of the whole process: every thread it has had, including those that have ended.
    voluntary: c_long,
    involuntary: c_long,
    /// Of the calling thread alone.
    caller_voluntary: c_long,
}

impl Switches {
    fn now() -> Result<Self, String> {
        use nix::sys::resource::{getrusage, UsageWho};

        let error = |error| format!("getrusage: {error}");
        let process = getrusage(UsageWho::RUSAGE_SELF).map_err(error)?;
        let caller = getrusage(UsageWho::RUSAGE_THREAD).map_err(error)?;
        Ok(Switches {
            voluntary: process.voluntary_context_switches(),
            involuntary: process.involuntary_context_switches(),
            caller_voluntary: caller.voluntary_context_switches(),
        })
    }
}

/// VmHWM: the most resident memory this process has had, in kB.
fn peak_rss_kb() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|error| format!("/proc/self/status: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| "no VmHWM line in /proc/self/status".to_owned())
}
