//! The Python package (`pyperflow`, imported as `pyper`) against python-pyper 0.4.4: the
//! same scripts, run by each package's venv. In these scenarios the "pyper" row is the
//! Python package, so the ratios read "ours against Pyper". Left out, with the reason
//! printed, when the package's venv (`scripts/test-python.sh`) is not there.

use super::{no_notes, Case, Impl, Sizes};
use crate::python;
use crate::work::{long_computation_result, stepped_sum, SEED_STEPS};

/// Python items on remote workers: run only with a nats-server, as `remote`.
pub const PY_REMOTE_MS: &str = "py-remote-1ms";

fn considerations_sum(n: u64) -> u64 {
    (0..n)
        .map(|x| long_computation_result(x, SEED_STEPS))
        .fold(0, u64::wrapping_add)
}

fn plain_sum(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

fn pair(
    about: &'static str,
    script: &'static python::Script,
    args: &'static [&'static str],
) -> Vec<Impl> {
    vec![
        Impl::pyperflow(about, script, args),
        Impl::python(
            "python-pyper",
            "python-pyper 0.4.4, the same script",
            script,
            args,
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "py-overhead",
            about: "Python: a generator source task and 3 trivial tasks (`x + 1`), defaults",
            items: Sizes::new(200_000, 20_000),
            expected: |n| stepped_sum(n, 3),
            impls: pair("the Python package", &python::OVERHEAD, &[]),
            notes: no_notes,
        },
        Case {
            name: "py-considerations",
            about: "Python: Pyper's guide's \"Considerations\" example with threads, \
                    `workers=2` (the GIL: no speed-up from threads)",
            items: Sizes::new(40, 4),
            expected: considerations_sum,
            impls: pair("the Python package", &python::CONSIDERATIONS, &["threads"]),
            notes: no_notes,
        },
        Case {
            name: "py-considerations-mp",
            about: "Python: the same with `multiprocess=True`, `workers=2`",
            items: Sizes::new(40, 4),
            expected: considerations_sum,
            impls: pair(
                "the Python package",
                &python::CONSIDERATIONS,
                &["processes"],
            ),
            notes: no_notes,
        },
        Case {
            name: "py-io",
            about: "Python: blocking 10 ms calls (`time.sleep`) on 100 workers \
                    (ideal: 2,000 in 0.2 s)",
            items: Sizes::new(2_000, 200),
            expected: plain_sum,
            impls: pair("the Python package", &python::IO_BLOCKING, &[]),
            notes: no_notes,
        },
        Case {
            name: "py-async",
            about: "Python: an AsyncPipeline of 10 ms awaits on 1,000 workers \
                    (ideal: 10,000 in 0.1 s)",
            items: Sizes::new(10_000, 1_000),
            expected: plain_sum,
            impls: pair("the Python package", &python::ASYNC_IO, &[]),
            notes: no_notes,
        },
        Case {
            name: PY_REMOTE_MS,
            about: "Python: items of ~1 ms of interpreter work on 2 remote workers \
                    (`remote=`, through NATS JetStream) or on 2 worker processes \
                    (`multiprocess=True`), both with the Python package",
            items: Sizes::new(2_000, 200),
            expected: plain_sum,
            impls: vec![
                Impl::pyperflow(
                    "`task(work, remote=Cluster(url))`: 2 local `python -m pyper.worker` \
                     processes on a loopback nats-server, started and stopped by each run",
                    &python::REMOTE_MS,
                    &["remote"],
                ),
                Impl::pyperflow_named(
                    "pyper-multiprocess",
                    "`task(work, workers=2, multiprocess=True)`: 2 worker processes",
                    &python::REMOTE_MS,
                    &["processes"],
                ),
            ],
            notes: no_notes,
        },
        Case {
            name: "py-process",
            about: "Python: a generator source and one trivial task on 2 worker processes \
                    (`multiprocess=True`)",
            items: Sizes::new(10_000, 1_000),
            expected: |n| stepped_sum(n, 1),
            impls: pair("the Python package", &python::PROCESS, &[]),
            notes: no_notes,
        },
    ]
}
