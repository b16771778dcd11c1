//! `fanout-join`: every item branches into 1,000 elements, and one join stage sums the
//! whole stream: a million elements through a branch queue and a join.

use std::sync::mpsc::sync_channel;

use pyper::{task, Upstream};

use super::common::{sum_output, CAPACITY};
use super::{no_notes, Case, Impl, Sizes};
use crate::work::{fan_out, sum_all, triangle, FAN};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "fanout-join",
        about: "each item branches into 1,000 integers, then a join stage sums them all \
                (`items` counts the source items)",
        items: Sizes::new(1_000, 100),
        expected: |n| triangle(n * FAN),
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | task(fan_out).branch() | task(sum_all).join()`",
                pyper,
            ),
            Impl::rust(
                "handwritten",
                "a branch thread sending every element of `fan_out(x)`, one per send, into a \
                 `sync_channel(4096)`, and a summing thread calling `sum_all` on its receiver",
                |n| Ok(handwritten(n)),
            ),
            Impl::rust(
                "handwritten-vec",
                "the same, with each item's 1,000 elements collected into a `Vec` and sent \
                 as one message, into a `sync_channel(4)` (4,000 elements at most)",
                |n| Ok(handwritten_vec(n)),
            ),
            Impl::rust(
                "sequential",
                "`sum_all((0..n).flat_map(fan_out))` on one thread",
                |n| Ok(sum_all((0..n).flat_map(fan_out))),
            ),
        ],
        notes: no_notes,
    }]
}

fn pyper(n: u64) -> Result<u64, String> {
    let pipeline = task(fan_out).branch() | task(|all: Upstream<u64>| sum_all(all)).join();
    sum_output(pipeline.feed(0..n))
}

/// A branch thread, a bounded channel of [`CAPACITY`] elements moved one at a time, and a
/// summing thread.
fn handwritten(n: u64) -> u64 {
    let (branch, joined) = sync_channel::<u64>(CAPACITY);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for element in (0..n).flat_map(fan_out) {
                if branch.send(element).is_err() {
                    return;
                }
            }
        });
        scope
            .spawn(move || sum_all(joined.into_iter()))
            .join()
            .expect("`sum_all` does not panic")
    })
}

/// [`handwritten`] with one message per source item: the `Vec` of its [`FAN`] elements,
/// in a channel bounded to about as many elements as [`handwritten`]'s.
fn handwritten_vec(n: u64) -> u64 {
    let (branch, joined) = sync_channel::<Vec<u64>>(CAPACITY / FAN as usize);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for x in 0..n {
                if branch.send(fan_out(x).collect()).is_err() {
                    return;
                }
            }
        });
        scope
            .spawn(move || sum_all(joined.into_iter().flatten()))
            .join()
            .expect("`sum_all` does not panic")
    })
}
