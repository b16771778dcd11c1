//! The scenarios, one module each.
//!
//! A module exposes `cases()`: the records it produces (usually one), each with its item
//! counts, the checksum every impl must reach, and its impls. Adding a scenario is one new
//! module and one line in [`all`]; the orchestration, the child processes, the report and
//! the chart need no change.

use crate::python::Script;
use crate::report::Results;

mod common;
mod considerations;
mod cpu;
mod fanout_join;
mod io_async;
mod io_threads;
mod memory;
mod overhead;
mod overhead_w4;
mod process;

/// Every scenario, in the order the harness runs and reports them.
pub fn all() -> Vec<Case> {
    [
        overhead::cases(),
        overhead_w4::cases(),
        cpu::cases(),
        io_threads::cases(),
        io_async::cases(),
        memory::cases(),
        fanout_join::cases(),
        considerations::cases(),
        process::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Item counts for a full run and for `--quick`.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub full: u64,
    pub quick: u64,
}

impl Sizes {
    pub const fn new(full: u64, quick: u64) -> Self {
        Sizes { full, quick }
    }

    pub fn pick(self, quick: bool) -> u64 {
        if quick {
            self.quick
        } else {
            self.full
        }
    }
}

/// One record family of the report: a scenario at one size, with every impl that runs it.
pub struct Case {
    /// The `scenario` field of the report.
    pub name: &'static str,
    /// What the pipeline is, for the README.
    pub about: &'static str,
    /// The source count (`items` in the report) unless an impl overrides it.
    pub items: Sizes,
    /// The checksum every impl must return for a given source count.
    pub expected: fn(u64) -> u64,
    pub impls: Vec<Impl>,
    /// Scenario-specific lines for the ratio list, beyond "pyper / baseline".
    pub notes: fn(&Results) -> Vec<String>,
}

/// One implementation of a case.
pub struct Impl {
    /// The `impl` field of the report: "pyper" for ours.
    pub name: &'static str,
    /// What it is, for the README's list of baselines.
    pub about: &'static str,
    pub runner: Runner,
    /// A source count of its own, when the case's would take too long (Python).
    pub items: Option<Sizes>,
}

/// How an impl runs inside its fresh child process.
pub enum Runner {
    /// This binary re-executed with `--child`: one run over the given source count,
    /// returning its checksum (`Err` if the pipeline failed).
    Rust(fn(u64) -> Result<u64, String>),
    /// A python-pyper script run by the venv's interpreter, with these extra arguments.
    Python {
        script: &'static Script,
        args: &'static [&'static str],
    },
}

impl Impl {
    pub fn rust(
        name: &'static str,
        about: &'static str,
        run: fn(u64) -> Result<u64, String>,
    ) -> Self {
        Impl {
            name,
            about,
            runner: Runner::Rust(run),
            items: None,
        }
    }

    pub fn python(
        name: &'static str,
        about: &'static str,
        script: &'static Script,
        args: &'static [&'static str],
    ) -> Self {
        Impl {
            name,
            about,
            runner: Runner::Python { script, args },
            items: None,
        }
    }

    /// Overrides the case's source count for this impl.
    pub fn with_items(mut self, items: Sizes) -> Self {
        self.items = Some(items);
        self
    }

    pub fn is_python(&self) -> bool {
        matches!(self.runner, Runner::Python { .. })
    }

    pub fn items(&self, case: &Case, quick: bool) -> u64 {
        self.items.unwrap_or(case.items).pick(quick)
    }
}

/// No notes beyond the ratios.
pub fn no_notes(_: &Results) -> Vec<String> {
    Vec::new()
}
