//! `straggler`: items that wait 1 ms (blocking IO) on 8 workers, where 1 item in 100
//! waits 200 ms instead. A pool that hands out one item at a time keeps the other workers
//! busy while a straggler waits; one that holds items back behind a straggler (in a batch,
//! in a worker's hands) shows it in the wall time and in the tail of the item latency.
//!
//! Besides the wall time, every impl records the latency of each item: from the moment
//! the source yields it to the moment its output reaches the consumer. Both impls have a
//! source thread feeding a queue of [`CAPACITY`] items, so the latency is mostly the wait
//! in that queue, the same for both. So they also record each output's hand-off: from the
//! end of its work call to its arrival at the consumer, where outputs held back (in a
//! batch, or by a consumer slow to wake) show.

use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyper::task;

use super::common::CAPACITY;
use super::{Case, Impl, Sizes};
use crate::child;
use crate::report::Results;
use crate::work::{straggler_work, triangle, wait_or_straggle};

const WORKERS: usize = 8;

/// The items of a warm-up run (10 stragglers, about 0.4 s) rather than a second full run
/// of 3.7 s or more: it starts the threads and the allocator as well, and keeps the
/// scenario to about a minute in a full run.
const WARM_UP: u64 = 1_000;

/// An item, and when the source yielded it.
type Fed = (u64, Instant);

/// An output, when the source yielded its item, and when its work call ended.
type Done = (u64, Instant, Instant);

/// The names under which each run records its latency percentiles, in milliseconds.
const P50: &str = "latency_p50_ms";
const P99: &str = "latency_p99_ms";
const MAX: &str = "latency_max_ms";
const HANDOFF_P99: &str = "handoff_p99_ms";
const HANDOFF_MAX: &str = "handoff_max_ms";

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "straggler",
        about: "items that each sleep 1 ms (blocking IO), except every 100th (items 50, 150, \
                ...), which sleeps 200 ms; 8 workers, outputs in completion order",
        items: Sizes::new(10_000, 2_000),
        expected: triangle,
        impls: vec![
            Impl::rust(
                "pyper",
                "`feed(0..n) | task(wait_or_straggle).workers(8)`, the main thread summing; \
                 warm-up over 1,000 items",
                pyper,
            )
            .with_warm_up(WARM_UP),
            Impl::rust(
                "handwritten",
                "a one-item-at-a-time pool: a source thread feeding a `sync_channel(4096)`, 8 \
                 std threads each taking one item at a time from its receiver (behind a \
                 `Mutex`) and sending its output into another `sync_channel(4096)`, the main \
                 thread summing; warm-up over 1,000 items",
                handwritten,
            )
            .with_warm_up(WARM_UP),
        ],
        notes,
    }]
}

/// The work of both impls, with the source's time stamp carried along and the end of
/// the call stamped.
fn work((x, fed): Fed) -> Done {
    let y = wait_or_straggle(x);
    (y, fed, Instant::now())
}

fn pyper(n: u64) -> Result<u64, String> {
    let output = task(work)
        .workers(WORKERS)
        .feed((0..n).map(|x| (x, Instant::now())));
    consume(
        n,
        output.map(|item| item.map_err(|error| error.to_string())),
    )
}

fn handwritten(n: u64) -> Result<u64, String> {
    let (source, input) = sync_channel::<Fed>(CAPACITY);
    let input = Mutex::new(input);
    let (output, outputs) = sync_channel::<Done>(CAPACITY);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for x in 0..n {
                if source.send((x, Instant::now())).is_err() {
                    return;
                }
            }
        });
        for _ in 0..WORKERS {
            let (input, output) = (&input, output.clone());
            scope.spawn(move || loop {
                // The lock is held while taking one item, and released before the work.
                let next = input.lock().expect("no worker panics").recv();
                let Ok(item) = next else { return };
                if output.send(work(item)).is_err() {
                    return;
                }
            });
        }
        // Only the workers keep a sender, so `outputs` ends when they do.
        drop(output);
        consume(n, outputs.into_iter().map(Ok))
    })
}

/// The consumer of both impls: sums the outputs, notes each one's latency and hand-off
/// as it arrives, and records the run's percentiles with [`child::record`].
fn consume(n: u64, outputs: impl Iterator<Item = Result<Done, String>>) -> Result<u64, String> {
    let mut total = 0u64;
    let mut latencies = Vec::with_capacity(n as usize);
    let mut handoffs = Vec::with_capacity(n as usize);
    for item in outputs {
        let (x, fed, done) = item?;
        let arrived = Instant::now();
        latencies.push(arrived - fed);
        handoffs.push(arrived - done);
        total = total.wrapping_add(x);
    }
    latencies.sort_unstable();
    handoffs.sort_unstable();
    let figures = [
        (P50, &latencies, 0.5),
        (P99, &latencies, 0.99),
        (MAX, &latencies, 1.0),
        (HANDOFF_P99, &handoffs, 0.99),
        (HANDOFF_MAX, &handoffs, 1.0),
    ];
    for (name, sorted, quantile) in figures {
        if let Some(duration) = percentile(sorted, quantile) {
            child::record(name, duration.as_secs_f64() * 1e3);
        }
    }
    Ok(total)
}

/// The nearest-rank percentile of sorted values: the smallest value that at least
/// `quantile` of them do not exceed.
fn percentile(sorted: &[Duration], quantile: f64) -> Option<Duration> {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

fn notes(results: &Results) -> Vec<String> {
    let mut notes = Vec::new();
    for name in ["pyper", "handwritten"] {
        let Some(row) = results.get("straggler", name) else {
            continue;
        };
        let ideal = straggler_work(row.items).as_secs_f64() / WORKERS as f64;
        notes.push(format!(
            "straggler: {name} wall / ideal (all the waits spread over {WORKERS} workers, \
             {ideal:.2} s) = {:.2}x",
            row.wall_s / ideal
        ));
    }
    let latencies: Vec<String> = ["pyper", "handwritten"]
        .into_iter()
        .filter_map(|name| {
            let row = results.get("straggler", name)?;
            Some(format!(
                "{name} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                row.extra(P50)?,
                row.extra(P99)?,
                row.extra(MAX)?
            ))
        })
        .collect();
    if !latencies.is_empty() {
        notes.push(format!(
            "straggler: item latency, source to consumer (medians over the runs): {}",
            latencies.join("; ")
        ));
    }
    let handoffs: Vec<String> = ["pyper", "handwritten"]
        .into_iter()
        .filter_map(|name| {
            let row = results.get("straggler", name)?;
            Some(format!(
                "{name} p99 {:.2} ms, max {:.1} ms",
                row.extra(HANDOFF_P99)?,
                row.extra(HANDOFF_MAX)?
            ))
        })
        .collect();
    if !handoffs.is_empty() {
        notes.push(format!(
            "straggler: output hand-off, end of the work call to consumer (medians over the \
             runs): {}",
            handoffs.join("; ")
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&ms, 0.99), Some(Duration::from_millis(198)));
        assert_eq!(percentile(&ms, 1.0), Some(Duration::from_millis(200)));
        assert_eq!(percentile(&ms[..1], 0.99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.99), None);
    }
}
