//! The input iterator of a fed run, and a `branch` output, as the engine drains them:
//! elements that come quickly are pulled in runs, and a run keeps every promise of one
//! element at a time: every element once and in order, a panic's position, an end that
//! comes before the `size_hint` promised it, and a cancel between elements.

mod common;

use common::{with_timeout, RunProbe};
use pyper::{task, ErrorKind};

/// Far more elements than one run: runs start once elements have come quickly for a while.
const MANY: u64 = 200_000;

#[test]
fn quick_plain_elements_all_arrive_once_and_in_order() {
    with_timeout(60, || {
        let outputs: Vec<u64> = task(|x: u64| x)
            .ordered()
            .feed(0..MANY)
            .map(Result::unwrap)
            .collect();
        assert_eq!(outputs, (0..MANY).collect::<Vec<_>>());
    });
}

#[test]
fn quick_elements_that_need_dropping_all_arrive_once_and_in_order() {
    with_timeout(60, || {
        let outputs: Vec<String> = task(|x: String| x)
            .feed((0..MANY).map(|x| x.to_string()))
            .map(Result::unwrap)
            .collect();
        assert_eq!(outputs.len() as u64, MANY);
        assert!(outputs.iter().zip(0..).all(|(x, n)| *x == n.to_string()));
    });
}

#[test]
fn a_panic_after_many_quick_elements_names_its_position() {
    with_timeout(60, || {
        let input = (0..MANY).inspect(|&x| assert_ne!(x, 100_003, "input broke"));
        let error = task(|x: u64| x)
            .feed(input)
            .find_map(Result::err)
            .expect("the run fails");
        assert_eq!(error.kind(), ErrorKind::Panicked);
        assert_eq!(error.stage(), Some("input"));
        assert_eq!(error.item(), Some(100_003), "{error}");
    });
}

/// Promises more elements than it has: a `size_hint` is only a hint, and a run that comes
/// up short is the end of the input, not a reason to ask again forever.
struct Overpromises(u64);

impl Iterator for Overpromises {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        (self.0 < 1000).then(|| {
            self.0 += 1;
            self.0 - 1
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (1 << 20, None)
    }
}

#[test]
fn an_input_that_ends_before_its_size_hint_promised_ends_the_run() {
    with_timeout(60, || {
        let outputs: Vec<u64> = task(|x: u64| x)
            .ordered()
            .feed(Overpromises(0))
            .map(Result::unwrap)
            .collect();
        assert_eq!(outputs, (0..1000).collect::<Vec<_>>());
    });
}

#[test]
fn a_cancel_stops_an_endless_quick_input() {
    // The input never ends: the run ends (within the watchdog) only if the cancel stops it.
    with_timeout(60, || {
        let probe = RunProbe::new();
        let mut outputs = task(|x: u64| x).feed(0..);
        probe.attach(outputs.canceller());
        assert_eq!(outputs.by_ref().take(MANY as usize).count() as u64, MANY);
        probe.cancel();
        assert!(
            outputs.all(|output| output.is_ok()),
            "a cancel is not an error"
        );
    });
}

#[test]
fn a_branch_of_quick_plain_elements_emits_each_once_in_order() {
    with_timeout(60, || {
        let outputs: Vec<u64> = task(|n: u64| 0..n)
            .branch()
            .ordered()
            .feed([MANY, 3, 0, 70])
            .map(Result::unwrap)
            .collect();
        let expected: Vec<u64> = (0..MANY).chain(0..3).chain(0..70).collect();
        assert_eq!(outputs, expected);
    });
}
