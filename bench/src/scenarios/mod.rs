//! The scenarios, one module each.
//!
//! A module exposes `cases()`: the records it produces (usually one), each with its item
//! counts, the checksum every impl must reach, and its impls. Adding a scenario is one new
//! module and one line in [`all`]; the orchestration, the child processes, the report and
//! the chart need no change.

use crate::python::Script;
use crate::report::Results;

mod auto;
mod common;
mod considerations;
mod cpu;
mod fanout_join;
mod io_async;
mod io_threads;
mod memory;
mod overhead;
mod overhead_throttle;
mod overhead_w4;
mod process;
pub mod python_package;
pub mod remote;
mod straggler;

/// Every scenario, in the order the harness runs and reports them.
pub fn all() -> Vec<Case> {
    [
        overhead::cases(),
        overhead_throttle::cases(),
        overhead_w4::cases(),
        cpu::cases(),
        io_threads::cases(),
        io_async::cases(),
        straggler::cases(),
        memory::cases(),
        fanout_join::cases(),
        considerations::cases(),
        process::cases(),
        auto::cases(),
        python_package::cases(),
        remote::cases(),
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
    /// The most items a Rust child's warm-up run takes, when a warm-up over every item
    /// would only lengthen the run (waits, not work); `None` warms up over every item.
    pub warm_up: Option<u64>,
}

/// How an impl runs inside its fresh child process.
pub enum Runner {
    /// This binary re-executed with `--child`: one run over the given source count,
    /// returning its checksum (`Err` if the pipeline failed).
    Rust(fn(u64) -> Result<u64, String>),
    /// A Pyper script run by a venv's interpreter, with these extra arguments: python-pyper
    /// 0.4.4's venv, or, when `ours`, the venv of this repository's Python package
    /// (`target/python-venv`, made by `scripts/test-python.sh`).
    Python {
        script: &'static Script,
        args: &'static [&'static str],
        ours: bool,
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
            warm_up: None,
        }
    }

    /// A Python script run by python-pyper's venv.
    pub fn python(
        name: &'static str,
        about: &'static str,
        script: &'static Script,
        args: &'static [&'static str],
    ) -> Self {
        Impl::python_run(name, about, (script, args), false)
    }

    /// The same script run by this repository's Python package (`pyperflow`, imported as
    /// `pyper`): the row named "pyper" of a Python scenario.
    pub fn pyperflow(
        about: &'static str,
        script: &'static Script,
        args: &'static [&'static str],
    ) -> Self {
        Impl::pyperflow_named("pyper", about, script, args)
    }

    /// Another row run by this repository's Python package, named `name`.
    pub fn pyperflow_named(
        name: &'static str,
        about: &'static str,
        script: &'static Script,
        args: &'static [&'static str],
    ) -> Self {
        Impl::python_run(name, about, (script, args), true)
    }

    /// A Python row: `ours` says which package's venv runs the script.
    fn python_run(
        name: &'static str,
        about: &'static str,
        (script, args): (&'static Script, &'static [&'static str]),
        ours: bool,
    ) -> Self {
        Impl {
            name,
            about,
            runner: Runner::Python { script, args, ours },
            items: None,
            warm_up: None,
        }
    }

    /// Overrides the case's source count for this impl.
    pub fn with_items(mut self, items: Sizes) -> Self {
        self.items = Some(items);
        self
    }

    /// Caps the warm-up run of this Rust impl's children at `items`.
    pub fn with_warm_up(mut self, items: u64) -> Self {
        self.warm_up = Some(items);
        self
    }

    /// How many items the warm-up run before a measured run over `items` takes.
    pub fn warm_up_items(&self, items: u64) -> u64 {
        self.warm_up.map_or(items, |cap| cap.min(items))
    }

    pub fn is_python(&self) -> bool {
        matches!(self.runner, Runner::Python { .. })
    }

    /// Whether it runs on this repository's Python package.
    pub fn is_pyperflow(&self) -> bool {
        matches!(self.runner, Runner::Python { ours: true, .. })
    }

    pub fn items(&self, case: &Case, quick: bool) -> u64 {
        self.items.unwrap_or(case.items).pick(quick)
    }
}

/// No notes beyond the ratios.
pub fn no_notes(_: &Results) -> Vec<String> {
    Vec::new()
}
