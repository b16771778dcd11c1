//! The child-process side: one scenario, one impl, one source count, in a process of its
//! own so that its peak RSS is its own.
//!
//! It does a warm-up run and then one measured run, checks both checksums against the
//! scenario's expected value, and prints one JSON line: the checksum, the measured run's
//! wall time, and VmHWM from `/proc/self/status`. Any failure is a message on stderr and
//! a non-zero exit, which the parent turns into a hard error.

use std::process::ExitCode;
use std::time::Instant;

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

    let expected = (case.expected)(items);
    let check = |what: &str, result: Result<u64, String>| match result {
        Ok(result) if result == expected => Ok(result),
        Ok(result) => Err(format!(
            "result mismatch in scenario {scenario}, impl {name}: the {what} run over {items} \
             items returned {result}, expected {expected}"
        )),
        Err(error) => Err(format!(
            "scenario {scenario}, impl {name}: the {what} run failed: {error}"
        )),
    };

    check("warm-up", run(items))?;
    let start = Instant::now();
    let result = run(items);
    let wall_s = start.elapsed().as_secs_f64();
    let result = check("measured", result)?;
    Ok(ChildReport {
        result,
        wall_s,
        peak_rss_kb: peak_rss_kb()?,
    })
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
