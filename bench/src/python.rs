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

/// `io`: blocking 10 ms calls (`time.sleep`) on 100 workers.
pub static IO_BLOCKING: Script = Script {
    file: "io_blocking.py",
    body: r#"
import time
from pyper import task


def source(limit):
    for i in range(limit):
        yield i


def wait_io(x):
    time.sleep(0.01)
    return x


def run(items):
    pipeline = task(source, branch=True) | task(wait_io, workers=100)
    return sum(pipeline(items))


if __name__ == "__main__":
    measure(run)
"#,
};

/// `async`: an AsyncPipeline of 10 ms awaits (`asyncio.sleep`) on 1,000 workers.
pub static ASYNC_IO: Script = Script {
    file: "async_io.py",
    body: r#"
import asyncio
from pyper import task


def source(limit):
    for i in range(limit):
        yield i


async def wait_io(x):
    await asyncio.sleep(0.01)
    return x


async def total(outputs):
    result = 0
    async for x in outputs:
        result += x
    return result


def run(items):
    pipeline = task(source, branch=True) | task(wait_io, workers=1000)
    return asyncio.run((pipeline > total)(items))


if __name__ == "__main__":
    measure(run)
"#,
};

/// `py-remote-1ms`: items of about 1 ms of Python CPU work on 2 remote workers
/// (`python -m pyper.worker`, started by the run) or on 2 worker processes
/// (`multiprocess=True`). The function is in a module of its own, which workers import.
pub static REMOTE_MS: Script = Script {
    file: "remote_ms.py",
    body: r#"
import os
import subprocess

from pyper import Cluster, task
from remote_work import work

HERE = os.path.dirname(os.path.abspath(__file__))


def source(limit):
    for i in range(limit):
        yield i


def run(items, kind):
    if kind == "processes":
        pipeline = task(source, branch=True) | task(work, workers=2, multiprocess=True)
        return sum(pipeline(items))
    url = os.environ["PYPER_NATS_URL"]
    workers = [subprocess.Popen([sys.executable, "-m", "pyper.worker", url], cwd=HERE,
                                stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        pipeline = task(source, branch=True) | task(work, remote=Cluster(url))
        return sum(pipeline(items))
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


if __name__ == "__main__":
    measure(run)
"#,
};

/// The module `remote_ms.py`'s workers import.
static REMOTE_WORK: Script = Script {
    file: "remote_work.py",
    body: r#"

def work(x):
    """About 1 ms of CPU work in the interpreter; returns `x`."""
    total = 0
    for i in range(25_000):
        total ^= i * x
    return x + (total & 0)
"#,
};

const SCRIPTS: [&Script; 7] = [
    &OVERHEAD,
    &CONSIDERATIONS,
    &PROCESS,
    &IO_BLOCKING,
    &ASYNC_IO,
    &REMOTE_MS,
    &REMOTE_WORK,
];

/// A ready venv with python-pyper and the scripts written out.
pub struct Python {
    interpreter: PathBuf,
    /// The interpreter of this repository's Python package's venv, if it is built.
    pyperflow: Option<PathBuf>,
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
        let pyperflow = find_pyperflow(bench_dir);
        Ok(Python {
            interpreter,
            pyperflow,
            scripts,
        })
    }

    /// Whether the rows of this repository's Python package can run.
    pub fn has_pyperflow(&self) -> bool {
        self.pyperflow.is_some()
    }

    /// The command that measures `script` once: a warm-up run, then `items`.
    pub fn command(&self, script: &Script, args: &[&str], items: u64, ours: bool) -> Command {
        let warm_up = (items / 10).max(1);
        let interpreter = match (&self.pyperflow, ours) {
            (Some(pyperflow), true) => pyperflow,
            _ => &self.interpreter,
        };
        let mut command = Command::new(interpreter);
        command
            .arg(self.scripts.join(script.file))
            .arg(items.to_string())
            .arg(warm_up.to_string())
            .args(args);
        command
    }
}

/// The venv of this repository's Python package, `target/python-venv` (made by
/// `scripts/test-python.sh`), if its `pyper` is ours; else the rows that run it are left out,
/// with the reason printed.
fn find_pyperflow(bench_dir: &Path) -> Option<PathBuf> {
    let interpreter = bench_dir.parent()?.join("python-venv/bin/python");
    let ready = interpreter.exists()
        && Command::new(&interpreter)
            .args(["-c", "import pyper._engine"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if !ready {
        eprintln!(
            "python: no pyperflow package in {} (run scripts/test-python.sh to build it):              its rows are left out",
            interpreter.display()
        );
    }
    ready.then_some(interpreter)
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
