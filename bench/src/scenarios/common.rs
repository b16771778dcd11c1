//! Pieces several scenarios share: draining a pyper output, and the handwritten baseline.

use crossbeam_channel::bounded;
use pyper::Output;

use crate::report::Results;
use crate::work::IO_WAIT;

/// The capacity of every handwritten channel: pyper's default throttle.
pub const CAPACITY: usize = pyper::DEFAULT_THROTTLE;

/// Sums a pyper run's outputs on the calling thread, as the handwritten baseline's main
/// thread does; the first error ends the run.
pub fn sum_output(output: Output<u64>) -> Result<u64, String> {
    let mut total = 0u64;
    for item in output {
        total = total.wrapping_add(item.map_err(|error| error.to_string())?);
    }
    Ok(total)
}

/// The handwritten baseline of a linear pipeline: a source thread sends `0..items` into a
/// `bounded(CAPACITY)` channel; each stage is `workers` threads sharing one receiver and
/// calling `work` on every item, one item per send, into the next `bounded(CAPACITY)`
/// channel; the main thread sums what comes out of the last one.
///
/// It is the same topology and the same capacities as pyper's `feed(0..items) | task(work)
/// .workers(w) | ...`, written the way one would by hand.
pub fn handwritten_chain<F>(items: u64, workers: &[usize], work: F) -> u64
where
    F: Fn(u64) -> u64 + Copy + Send,
{
    handwritten_chain_bounded(items, workers, CAPACITY, work)
}

/// [`handwritten_chain`] with channels of `capacity` items: pyper's `throttle(capacity)`
/// on every stage.
pub fn handwritten_chain_bounded<F>(items: u64, workers: &[usize], capacity: usize, work: F) -> u64
where
    F: Fn(u64) -> u64 + Copy + Send,
{
    std::thread::scope(|scope| {
        let (source, mut input) = bounded::<u64>(capacity);
        scope.spawn(move || {
            for x in 0..items {
                if source.send(x).is_err() {
                    return;
                }
            }
        });
        for &count in workers {
            let (output, next) = bounded::<u64>(capacity);
            for _ in 0..count {
                let (input, output) = (input.clone(), output.clone());
                scope.spawn(move || {
                    for x in input {
                        if output.send(work(x)).is_err() {
                            return;
                        }
                    }
                });
            }
            // This thread keeps neither end, so each channel closes when its threads end.
            input = next;
        }
        input.iter().fold(0, u64::wrapping_add)
    })
}

/// The most items a [`handwritten_batched_chain`] message carries.
pub const HANDWRITTEN_BATCH: usize = 256;

/// The handwritten baseline that moves batches, as a careful engineer would: as
/// [`handwritten_chain`], one thread per stage, but each message is a `Vec` of up to
/// [`HANDWRITTEN_BATCH`] items, which each stage maps in place and sends on, and each
/// channel holds `CAPACITY / HANDWRITTEN_BATCH` messages, so that it holds as many items.
pub fn handwritten_batched_chain<F>(items: u64, stages: usize, work: F) -> u64
where
    F: Fn(u64) -> u64 + Copy + Send,
{
    let messages = (CAPACITY / HANDWRITTEN_BATCH).max(1);
    std::thread::scope(|scope| {
        let (source, mut input) = bounded::<Vec<u64>>(messages);
        scope.spawn(move || {
            let mut next = 0;
            while next < items {
                let end = (next + HANDWRITTEN_BATCH as u64).min(items);
                if source.send((next..end).collect()).is_err() {
                    return;
                }
                next = end;
            }
        });
        for _ in 0..stages {
            let (output, next) = bounded::<Vec<u64>>(messages);
            scope.spawn(move || {
                for mut batch in input {
                    batch.iter_mut().for_each(|x| *x = work(*x));
                    if output.send(batch).is_err() {
                        return;
                    }
                }
            });
            input = next;
        }
        input.iter().flatten().fold(0, u64::wrapping_add)
    })
}

/// Notes comparing each impl's wall time with that of a perfect run of an IO scenario,
/// where every group of `in_flight` items waits [`IO_WAIT`] at once.
pub fn wall_over_ideal(
    results: &Results,
    scenario: &str,
    impls: &[&str],
    in_flight: usize,
) -> Vec<String> {
    impls
        .iter()
        .filter_map(|name| {
            let row = results.get(scenario, name)?;
            let ideal = row.items.div_ceil(in_flight as u64) as f64 * IO_WAIT.as_secs_f64();
            Some(format!(
                "{scenario}: {name} wall / ideal ({:.0} ms) = {:.2}x",
                ideal * 1e3,
                row.wall_s / ideal
            ))
        })
        .collect()
}
