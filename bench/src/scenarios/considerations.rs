//! `considerations`: Pyper's guide's "Considerations" pipeline, `get_data` then
//! `long_computation` (1M steps) with 2 workers then a sum, against python-pyper with
//! threads (held back by the GIL) and with processes.

use pyper::{task, Upstream};

use super::common::sum_output;
use super::{no_notes, Case, Impl, Sizes};
use crate::python;
use crate::work::{get_data, long_computation, long_computation_result, sum_all, SEED_STEPS};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "considerations",
        about:
            "Pyper's guide's \"Considerations\" example: `get_data(n)`, then `long_computation` \
                (a 1M-step loop) with 2 workers, then a sum",
        items: Sizes::new(40, 4),
        expected: |n| {
            (0..n)
                .map(|x| long_computation_result(x, SEED_STEPS))
                .fold(0, u64::wrapping_add)
        },
        impls: vec![
            Impl::rust(
                "pyper",
                "`task(get_data).branch() | task(long_computation).workers(2) | \
                 task(sum_all).join()`, run with `n`",
                pyper,
            ),
            Impl::python(
                "python-pyper",
                "python-pyper 0.4.4, the same pipeline with threads, `workers=2`",
                &python::CONSIDERATIONS,
                &["threads"],
            ),
            Impl::python(
                "python-pyper-mp",
                "python-pyper 0.4.4, the same pipeline with `multiprocess=True`, `workers=2`",
                &python::CONSIDERATIONS,
                &["processes"],
            ),
        ],
        notes: no_notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    let pipeline = task(get_data).branch()
        | task(|x: u64| long_computation(x, SEED_STEPS)).workers(2)
        | task(|all: Upstream<u64>| sum_all(all)).join();
    sum_output(pipeline.run(n))
}
