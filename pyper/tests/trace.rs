//! The trace streams to its file as the run goes: a traced run's memory stays flat, and the
//! file is valid Chrome trace JSON however the run ends (completed, failed, dropped) and
//! while it goes.
//!
//! Memory is measured with a counting allocator in this test binary: the peak of the bytes
//! allocated at once, which is deterministic up to how items batch between stages (the
//! queues bound that), unlike a process's RSS. Every test here takes one lock, so no other
//! test allocates during a measurement, and `PYPER_TRACE` is set for one test at a time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use common::{serial, with_timeout};
use pyper::{task, try_task, Output};
use serde::de::IgnoredAny;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call goes to the system allocator unchanged; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let block = System.alloc(layout);
        if !block.is_null() {
            grew(layout.size());
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        System.dealloc(block, layout);
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let moved = System.realloc(block, layout, size);
        if !moved.is_null() {
            CURRENT.fetch_sub(layout.size(), Relaxed);
            grew(size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ITEMS: u64 = 10_000_000;

/// A traced run may hold this much more than an untraced one at its peak: a chunk of
/// spans per worker and its text, with room to spare. An in-memory trace of the same run
/// holds tens of megabytes.
const TRACE_MARGIN: usize = 4 << 20;

/// A source and three trivial stages.
fn trivial_run() -> Output<u64> {
    (task(|x: u64| x + 1) | task(|x: u64| x ^ 3) | task(|x: u64| x.wrapping_mul(7))).feed(0..ITEMS)
}

/// Runs `output` to its end, and returns the most bytes allocated at once beyond what was
/// allocated before, and the output.
fn peak_of(mut output: Output<u64>) -> (usize, Output<u64>) {
    let before = CURRENT.load(Relaxed);
    PEAK.store(before, Relaxed);
    assert_eq!(output.by_ref().count() as u64, ITEMS);
    (PEAK.load(Relaxed) - before, output)
}

/// The trace's events, checked to be a valid Chrome trace JSON document: how many there
/// are, and how many are spans (`"ph":"X"`) of work.
fn check_trace(json: impl std::io::Read) -> (usize, usize) {
    #[derive(serde::Deserialize)]
    struct Trace {
        #[serde(rename = "traceEvents")]
        events: Vec<Event>,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        name: String,
        ph: String,
        #[allow(dead_code)]
        tid: u64,
        #[serde(default)]
        #[allow(dead_code)]
        args: IgnoredAny,
    }
    let trace: Trace = serde_json::from_reader(std::io::BufReader::new(json))
        .expect("the trace is valid Chrome trace JSON");
    let work = trace
        .events
        .iter()
        .filter(|event| event.ph == "X" && event.name == "work")
        .count();
    (trace.events.len(), work)
}

fn trace_file(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pyper-trace-{test}-{}.json", std::process::id()))
}

/// `make` with `PYPER_TRACE` naming `path` (it is read as the output is made).
fn with_trace_env<T>(path: &Path, make: impl FnOnce() -> T) -> T {
    std::env::set_var(pyper::TRACE_ENV, path);
    let made = make();
    std::env::remove_var(pyper::TRACE_ENV);
    made
}

#[test]
fn a_traced_run_of_ten_million_items_peaks_within_a_few_mb_of_an_untraced_one() {
    let _serial = serial();
    with_timeout(600, || {
        let (untraced, _) = peak_of(trivial_run());
        let (traced, output) = peak_of(trivial_run().record_trace());
        assert!(
            traced <= untraced + TRACE_MARGIN,
            "traced run peaked at {traced} bytes, untraced at {untraced}"
        );
        let mut file = tempfile::tempfile().unwrap();
        output.write_trace(&mut file).unwrap();
        use std::io::Seek;
        file.rewind().unwrap();
        let (events, work) = check_trace(file);
        assert!(work > 4, "spans of every worker: {work} of {events} events");
    });
}

#[test]
fn the_trace_file_is_valid_when_the_run_completes() {
    let _serial = serial();
    let path = trace_file("completes");
    let mut output = with_trace_env(&path, || {
        (task(|x: u64| x + 1) | task(|x: u64| x)).feed(0..50_000)
    });
    assert_eq!(output.by_ref().count(), 50_000);
    drop(output);
    let (_, work) = check_trace(std::fs::File::open(&path).unwrap());
    std::fs::remove_file(&path).ok();
    assert!(work > 0);
}

#[test]
fn the_trace_file_is_valid_when_the_run_fails() {
    let _serial = serial();
    let path = trace_file("fails");
    let output = with_trace_env(&path, || {
        try_task(|x: u64| if x == 20_000 { Err("boom") } else { Ok(x) }).feed(0..100_000)
    });
    let results: Vec<_> = output.collect();
    assert!(results.last().unwrap().is_err());
    check_trace(std::fs::File::open(&path).unwrap());
    std::fs::remove_file(&path).ok();
}

#[test]
fn the_trace_file_is_valid_when_the_output_is_dropped_mid_run() {
    let _serial = serial();
    let path = trace_file("dropped");
    let mut output = with_trace_env(&path, || task(|x: u64| x * 2).workers(2).feed(0..));
    assert_eq!(output.by_ref().take(30_000).count(), 30_000);
    drop(output);
    check_trace(std::fs::File::open(&path).unwrap());
    std::fs::remove_file(&path).ok();
}

/// The file is a whole document after every write, so it can be read while the run goes
/// (or after the process died): here, with the consumer stalled part-way.
#[test]
fn the_trace_file_is_valid_while_the_run_goes() {
    let _serial = serial();
    let path = trace_file("running");
    let mut output = with_trace_env(&path, || task(|x: u64| x + 1).name("step").feed(0..));
    assert_eq!(output.by_ref().take(100_000).count(), 100_000);
    let json = std::fs::read_to_string(&path).unwrap();
    check_trace(json.as_bytes());
    assert!(
        json.contains("\"step #1\""),
        "the tracks are written as they begin"
    );
    drop(output);
    std::fs::remove_file(&path).ok();
}

/// Two runs at once with the same `PYPER_TRACE`: the first streams to the file, the
/// second keeps its own trace for `write_trace`, and neither corrupts the other.
#[test]
fn two_runs_at_once_do_not_write_over_each_other() {
    let _serial = serial();
    let path = trace_file("two");
    let (mut first, mut second) = with_trace_env(&path, || {
        (
            task(|x: u64| x).name("first").feed(0..20_000),
            task(|x: u64| x).name("second").feed(0..20_000),
        )
    });
    assert_eq!(first.by_ref().take(10).count(), 10);
    assert_eq!(second.by_ref().count(), 20_000);
    assert_eq!(first.by_ref().count(), 19_990);
    let mut json = Vec::new();
    second.write_trace(&mut json).unwrap();
    assert!(String::from_utf8(json.clone())
        .unwrap()
        .contains("\"second #1\""));
    check_trace(json.as_slice());
    drop((first, second));
    let file = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    check_trace(file.as_bytes());
    assert!(file.contains("\"first #1\"") && !file.contains("\"second #1\""));
}
