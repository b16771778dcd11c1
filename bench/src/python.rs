//! The Python baselines: python-pyper 0.4.4 in a venv of its own, and the scripts it runs.
//!
//! The venv lives in `target/bench/venv`, made with `python3 -m venv` and filled with
//! `pip install python-pyper==0.4.4` the first time; later runs find it ready. If either
//! step fails, the harness warns and leaves the Python rows out rather than failing.
//!
//! Each script is run by the venv's interpreter as a fresh process, exactly as a Rust
//! child is: it does a warm-up run (a tenth of the items: it loads the modules and starts
//! the machinery, and a full one would double the slowest rows), then the measured run, and
//! prints one JSON line `{"result", "wall_s", "peak_rss_kb"}` with the checksum, the wall
//! time of the measured run and the interpreter's VmHWM. With `multiprocess=True` that
//! peak is the main interpreter's only, not its worker processes'.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The python-pyper release the baselines use.
pub const PYPER_VERSION: &str = "0.4.4";

/// A Python script, written to `target/bench/py/<file>` before the runs.
pub struct Script {
    pub file: &'static str,
    body: &'static str,
}

/// Shared by every script: the report line, and argument parsing.
const PRELUDE: &str = r#"import json
import sys
import time


def peak_rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def measure(run):
    """argv: items, warm-up items, then the script's own arguments."""
    items, warm_up = int(sys.argv[1]), int(sys.argv[2])
    run(warm_up, *sys.argv[3:])
    start = time.perf_counter()
    result = run(items, *sys.argv[3:])
    wall = time.perf_counter() - start
    print(json.dumps({"result": result, "wall_s": wall, "peak_rss_kb": peak_rss_kb()}))

"#;

/// `overhead`: a generator source task and 3 trivial tasks, all default options.
pub static OVERHEAD: Script = Script {
    file: "overhead.py",
    body: r#"
from pyper import task


def source(limit):
    for i in range(limit):
        yield i


def step(x):
    return x + 1


def run(items):
    pipeline = task(source, branch=True) | task(step) | task(step) | task(step)
    total = 0
    for x in pipeline(items):
        total += x
    return total


if __name__ == "__main__":
    measure(run)
"#,
};

/// `considerations`: Pyper's guide's example, with threads or processes.
pub static CONSIDERATIONS: Script = Script {
    file: "considerations.py",
    body: r#"
from pyper import task


def get_data(limit):
    for i in range(limit):
        yield i


def long_computation(data):
    for i in range(1_000_000):
        data += i
    return data


def sum_all(data):
    total = 0
    for x in data:
        total += x
    return total


def run(items, mode):
    pipeline = (
        task(get_data, branch=True)
        | task(long_computation, workers=2, multiprocess=(mode == "processes"))
        | task(sum_all, join=True)
    )
    results = list(pipeline(items))
    assert len(results) == 1, results
    return results[0]


if __name__ == "__main__":
    measure(run)
"#,
};

/// `process`: a generator source task and one trivial task on 2 worker processes.
pub static PROCESS: Script = Script {
    file: "process.py",
    body: r#"
from pyper import task


def source(limit):
    for i in range(limit):
        yield i


def step(x):
    return x + 1


def run(items):
    pipeline = task(source, branch=True) | task(step, workers=2, multiprocess=True)
    total = 0
    for x in pipeline(items):
        total += x
    return total


if __name__ == "__main__":
    measure(run)
"#,
};

const SCRIPTS: [&Script; 3] = [&OVERHEAD, &CONSIDERATIONS, &PROCESS];

/// A ready venv with python-pyper and the scripts written out.
pub struct Python {
    interpreter: PathBuf,
    scripts: PathBuf,
}

impl Python {
    /// Makes (or finds) the venv under `bench_dir` and writes the scripts. The error says
    /// which step failed and why.
    pub fn setup(bench_dir: &Path) -> Result<Python, String> {
        let venv = bench_dir.join("venv");
        let interpreter = venv.join("bin/python");
        if !is_ready(&interpreter) {
            let started = Instant::now();
            eprintln!(
                "python: installing python-pyper=={PYPER_VERSION} into {}",
                venv.display()
            );
            if !interpreter.exists() {
                run_quietly(
                    Command::new("python3").arg("-m").arg("venv").arg(&venv),
                    "python3 -m venv",
                )?;
            }
            run_quietly(
                Command::new(&interpreter).args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    &format!("python-pyper=={PYPER_VERSION}"),
                ]),
                "pip install",
            )?;
            if !is_ready(&interpreter) {
                return Err(format!(
                    "python-pyper {PYPER_VERSION} is still not importable after pip install"
                ));
            }
            eprintln!(
                "python: venv ready in {:.1} s (not counted in any measurement)",
                started.elapsed().as_secs_f64()
            );
        } else {
            eprintln!(
                "python: python-pyper {PYPER_VERSION} already installed in {}",
                venv.display()
            );
        }
        let scripts = bench_dir.join("py");
        std::fs::create_dir_all(&scripts).map_err(|e| format!("{}: {e}", scripts.display()))?;
        for script in SCRIPTS {
            let path = scripts.join(script.file);
            std::fs::write(&path, format!("{PRELUDE}{}", script.body))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(Python {
            interpreter,
            scripts,
        })
    }

    /// The command that measures `script` once: a warm-up run, then `items`.
    pub fn command(&self, script: &Script, args: &[&str], items: u64) -> Command {
        let warm_up = (items / 10).max(1);
        let mut command = Command::new(&self.interpreter);
        command
            .arg(self.scripts.join(script.file))
            .arg(items.to_string())
            .arg(warm_up.to_string())
            .args(args);
        command
    }
}

/// Whether `interpreter` exists and imports the right python-pyper.
fn is_ready(interpreter: &Path) -> bool {
    interpreter.exists()
        && Command::new(interpreter)
            .args([
                "-c",
                &format!(
                    "import importlib.metadata as m, pyper; \
                     assert m.version('python-pyper') == '{PYPER_VERSION}'"
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

fn run_quietly(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{what}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(format!(
            "{what} failed ({}): {}",
            output.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}
