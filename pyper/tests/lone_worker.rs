//! A stage of one worker running a plain `task(f)` or `try_task(f)` calls its function
//! over whole batches (the engine's fast path). These tests hold that path to every promise
//! of the per-item one: the item an error or a panic names, every input dropped exactly
//! once, the first error kept whatever the `Drop` of the rest does, a stopped run checked
//! before each item, and outputs that flow to an idle consumer at once.

mod common;

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use common::{with_timeout, RunProbe};
use pyper::{task, try_task, Error};

/// Counts how many values are alive; each drop is counted once.
#[derive(Debug)]
struct Counted(u64, Arc<AtomicUsize>);

impl Counted {
    fn new(value: u64, alive: &Arc<AtomicUsize>) -> Self {
        alive.fetch_add(1, Ordering::SeqCst);
        Counted(value, Arc::clone(alive))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

fn first_error<O>(outputs: impl Iterator<Item = Result<O, Error>>) -> Error {
    for output in outputs {
        if let Err(error) = output {
            return error;
        }
    }
    panic!("the run ended without an error");
}

#[test]
fn an_error_in_the_middle_of_a_batch_names_its_item_and_drops_every_other_input() {
    with_timeout(60, || {
        let alive = Arc::new(AtomicUsize::new(0));
        let inputs = {
            let alive = Arc::clone(&alive);
            (0..100_000).map(move |x| Counted::new(x, &alive))
        };
        let fail_at_5000 = try_task(|x: Counted| match x.0 {
            5000 => Err(format!("refused {}", x.0)),
            n => Ok(n),
        });
        let error = first_error(fail_at_5000.feed(inputs));
        assert_eq!(error.item(), Some(5000));
        assert_eq!(error.source().unwrap().to_string(), "refused 5000");
        assert_eq!(alive.load(Ordering::SeqCst), 0, "an input was leaked");
    });
}

#[test]
fn a_panic_in_the_middle_of_a_batch_names_its_item() {
    with_timeout(60, || {
        let panics_at_7777 = task(|x: u64| {
            assert_ne!(x, 7777, "no 7777 here");
            x
        });
        let error = first_error(panics_at_7777.feed(0..50_000));
        let message = error.panic_message().unwrap_or_default();
        assert!(message.contains("no 7777 here"), "{error}");
        // Worked out after the panic from the outputs gathered, over any hand-overs the
        // batch made before it.
        assert_eq!(error.item(), Some(7777), "{error}");
    });
}

/// Panics when dropped: the items left in a batch after a failure.
struct PanicsOnDrop(u64);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.0 > 10 {
            panic!("dropped {}", self.0);
        }
    }
}

#[test]
fn the_first_error_stands_whatever_the_drop_of_the_rest_of_the_batch_does() {
    with_timeout(60, || {
        let fails_at_10 = try_task(|x: PanicsOnDrop| match x.0 {
            10 => Err("ten".to_string()),
            n => {
                std::mem::forget(x);
                Ok(n)
            }
        });
        // The inputs after 10 are dropped unstarted, and each panics.
        let error = first_error(fails_at_10.feed((0..1000).map(PanicsOnDrop)));
        assert_eq!(error.panic_message(), None, "{error}");
        assert_eq!(error.item(), Some(10));
        assert_eq!(error.source().unwrap().to_string(), "ten");
    });
}

#[test]
fn a_cancelled_run_starts_no_other_item_of_the_batch_in_hand() {
    with_timeout(60, || {
        let probe = RunProbe::new();
        let started = Arc::new(AtomicUsize::new(0));
        let (counted, probe_in_task) = (Arc::clone(&started), probe.clone());
        // Quick items make the worker's batches large; the one at 50,000 cancels the run
        // and waits until the cancel is seen. No item after it may start.
        let stage = task(move |x: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            if x == 50_000 {
                probe_in_task.cancel();
                probe_in_task.wait_cancelled();
            }
            x
        });
        let mut outputs = stage.feed(0..100_000);
        probe.attach(outputs.canceller());
        assert!(
            outputs.by_ref().all(|output| output.is_ok()),
            "a cancel is not an error"
        );
        assert_eq!(started.load(Ordering::SeqCst), 50_001);
    });
}

#[test]
fn an_idle_consumer_gets_each_output_while_the_input_waits() {
    with_timeout(60, || {
        let (sender, receiver) = mpsc::channel();
        let mut outputs = task(|x: u64| x * 10).feed(receiver);
        // Each input waits on the channel: its output must come before the next is sent,
        // or this would hang.
        for x in 1..=20 {
            sender.send(x).unwrap();
            assert_eq!(outputs.next().unwrap().unwrap(), x * 10);
        }
        drop(sender);
        assert!(outputs.next().is_none());
    });
}

#[test]
fn outputs_and_their_order_match_a_sequential_run() {
    with_timeout(60, || {
        let pipeline =
            task(|x: u64| x.wrapping_mul(31)) | try_task(|x: u64| Ok::<_, String>(x ^ 7));
        let outputs: Vec<u64> = pipeline.feed(0..200_000).map(Result::unwrap).collect();
        let expected: Vec<u64> = (0..200_000u64).map(|x| x.wrapping_mul(31) ^ 7).collect();
        assert_eq!(outputs, expected);
    });
}

#[test]
fn an_error_in_a_batch_of_plain_values_names_its_item() {
    with_timeout(60, || {
        // Plain values (nothing to drop) are mapped in place: the same promises hold.
        let fail_at_5000 = try_task(|x: u64| match x {
            5000 => Err(format!("refused {x}")),
            x => Ok(x),
        });
        let error = first_error(fail_at_5000.feed(0..100_000));
        assert_eq!(error.item(), Some(5000));
        assert_eq!(error.source().unwrap().to_string(), "refused 5000");
    });
}

#[test]
fn outputs_of_another_type_match_a_sequential_run() {
    with_timeout(60, || {
        // The same layout (mapped in place), then a larger one (not).
        let pipeline = task(|x: u64| x as f64 * 0.5) | task(|x: f64| x as u32) | task(u64::from);
        let outputs: Vec<u64> = pipeline.feed(0..200_000).map(Result::unwrap).collect();
        let expected: Vec<u64> = (0..200_000u64).map(|x| x / 2).collect();
        assert_eq!(outputs, expected);
    });
}

#[test]
fn a_throttled_stage_of_plain_values_calls_no_further_ahead_than_one_item_at_a_time() {
    with_timeout(60, || {
        const THROTTLE: u64 = 4;
        let called = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&called);
        let stage = task(move |x: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            x
        })
        .throttle(THROTTLE as usize);
        let mut outputs = stage.feed(0..);
        let mut worst = 0;
        for expected in 0..300u64 {
            assert_eq!(outputs.next().unwrap().unwrap(), expected);
            // A slow consumer: the stage runs ahead as far as it may.
            std::thread::sleep(std::time::Duration::from_millis(1));
            let lead = called.load(Ordering::SeqCst) as u64 - (expected + 1);
            worst = worst.max(lead);
        }
        // The output queue (t), the one item the worker holds while it waits for room,
        // and what is left of the consumer's batch (t, less the one it took). Mapping the
        // worker's whole batch (up to t inputs) before handing any over adds up to t - 1.
        let bound = 2 * THROTTLE;
        assert!(worst <= bound, "called {worst} items ahead, bound {bound}");
    });
}
