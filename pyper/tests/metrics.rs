//! Metrics, the report's classification and bottleneck, the Chrome trace, the `tracing`
//! events, and progress bars staying off without a terminal.
//!
//! The classification tests give each stage a behaviour far from every threshold (a stage
//! that only spins, one that only sleeps) and run one at a time, so a busy machine
//! cannot blur them; no test asserts on a duration.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{serial, with_timeout, Gate};
use pyper::{task, try_task, Bound, StageKind};

/// About a millisecond of pure CPU work.
fn spin(x: u64) -> u64 {
    let mut h = x;
    for i in 0..300_000u64 {
        h = h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
    }
    std::hint::black_box(h)
}

fn nap(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x
}

#[test]
fn a_stage_that_spins_is_cpu_bound_and_the_bottleneck() {
    let _serial = serial();
    with_timeout(60, || {
        let mut output = (task(spin).name("spin") | task(|x: u64| x).name("pass")).feed(0..300);
        assert_eq!(output.by_ref().count(), 300);
        let report = output.report();
        let stage = report.stage("spin").unwrap();
        assert_eq!(stage.bound, Bound::Cpu, "{report}");
        assert_eq!(
            report.bottleneck().unwrap().metrics.name,
            "spin",
            "{report}"
        );
        assert!(report.advice()[0].contains("CPU-bound"), "{report}");
    });
}

#[test]
fn a_stage_that_sleeps_is_waiting_and_the_bottleneck() {
    let _serial = serial();
    with_timeout(60, || {
        let mut output = (task(nap).name("nap").workers(2) | task(|x: u64| x)).feed(0..200);
        assert_eq!(output.by_ref().count(), 200);
        let report = output.report();
        assert_eq!(
            report.stage("nap").unwrap().bound,
            Bound::Waiting,
            "{report}"
        );
        assert_eq!(report.bottleneck().unwrap().metrics.name, "nap", "{report}");
        let advice = &report.advice()[0];
        assert!(
            advice.contains("IO-bound") && advice.contains("raise workers"),
            "{report}"
        );
    });
}

#[test]
fn a_fast_stage_feeding_a_slow_one_is_blocked_by_downstream() {
    let _serial = serial();
    with_timeout(60, || {
        let fast = task(|x: u64| x).name("fast").throttle(2);
        let slow = task(nap).name("slow");
        let mut output = (fast | slow).feed(0..300);
        assert_eq!(output.by_ref().count(), 300);
        let report = output.report();
        assert_eq!(
            report.stage("fast").unwrap().bound,
            Bound::Blocked,
            "{report}"
        );
        assert_eq!(
            report.stage("slow").unwrap().bound,
            Bound::Waiting,
            "{report}"
        );
        assert_eq!(
            report.bottleneck().unwrap().metrics.name,
            "slow",
            "{report}"
        );
    });
}

#[test]
fn a_slow_source_starves_a_fast_stage() {
    let _serial = serial();
    with_timeout(60, || {
        let slow_source = (0..200u64).map(nap);
        let mut output = (task(|x: u64| x).name("fast") | task(|x: u64| x)).feed(slow_source);
        assert_eq!(output.by_ref().count(), 200);
        let report = output.report();
        assert_eq!(
            report.stage("fast").unwrap().bound,
            Bound::Starved,
            "{report}"
        );
        let bottleneck = report.bottleneck().unwrap();
        assert_eq!(bottleneck.metrics.name, "input", "{report}");
        assert_eq!(bottleneck.metrics.kind, StageKind::Input);
    });
}

/// A report taken while the run goes on reads the live workers' CPU time and waits for a
/// core from the scheduler: CPU-bound workers on too few cores are CPU-bound mid-run too,
/// not starved.
#[test]
fn a_live_report_sees_cpu_bound_workers_on_too_few_cores() {
    let _serial = serial();
    with_timeout(60, || {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut output = task(spin).name("spin").workers(4 * cores).feed(0..100_000);
        let monitor = output.monitor();
        let consumer = std::thread::spawn(move || {
            // Enough items for the workers to settle, then stop.
            output.by_ref().take(200).count()
        });
        common::wait_until("200 items", || {
            monitor
                .metrics()
                .stage("spin")
                .is_some_and(|s| s.items_out >= 100)
        });
        let report = monitor.report();
        let stage = report.stage("spin").unwrap();
        assert_eq!(stage.bound, Bound::Cpu, "{report}");
        assert!(stage.metrics.starved < stage.metrics.busy, "{report}");
        assert_eq!(consumer.join().unwrap(), 200);
    });
}

#[test]
fn a_slow_consumer_makes_every_stage_blocked() {
    let _serial = serial();
    with_timeout(60, || {
        let mut output = task(|x: u64| x).name("fast").throttle(2).feed(0..200);
        for item in output.by_ref() {
            nap(item.unwrap());
        }
        let report = output.report();
        assert_eq!(
            report.stage("fast").unwrap().bound,
            Bound::Blocked,
            "{report}"
        );
        assert!(
            report.bottleneck().is_none() && report.consumer_bound(),
            "{report}"
        );
        assert!(report.advice()[0].contains("consumer"), "{report}");
    });
}

/// Counts the calls of each stage's function, to compare with the metrics.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<&'static str, u64>>>);

impl Calls {
    fn count(&self, stage: &'static str) {
        *self.0.lock().unwrap().entry(stage).or_default() += 1;
    }

    fn of(&self, stage: &'static str) -> u64 {
        self.0.lock().unwrap().get(stage).copied().unwrap_or(0)
    }
}

#[test]
fn counts_equal_the_real_item_counts_on_a_complete_run() {
    let calls = Calls::default();
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let pipeline = task(move |x: u64| {
        c1.count("split");
        vec![x; (x % 3) as usize]
    })
    .name("split")
    .workers(3)
    .branch()
        | task(move |x: u64| {
            c2.count("double");
            x * 2
        })
        .name("double")
        .workers(2)
        | task(move |x: u64| {
            c3.count("keep");
            x
        })
        .name("keep")
        .ordered()
        .workers(2);
    let mut output = pipeline.feed(0..3000);
    let outputs = output.by_ref().map(Result::unwrap).count() as u64;
    let metrics = output.metrics();
    let stage = |name| metrics.stage(name).unwrap();
    assert_eq!(stage("input").items_out, 3000);
    assert_eq!(stage("split").items_in, 3000);
    assert_eq!(stage("split").items_in, calls.of("split"));
    assert_eq!(stage("split").items_out, stage("double").items_in);
    assert_eq!(stage("double").items_in, calls.of("double"));
    assert_eq!(stage("double").items_out, stage("keep").items_in);
    assert_eq!(stage("keep").items_in, calls.of("keep"));
    assert_eq!(stage("keep").items_out, outputs);
    assert_eq!(outputs, (0..3000).map(|x| x % 3).sum::<u64>());
    for stage in &metrics.stages {
        assert_eq!(stage.errors, 0);
        assert_eq!(
            stage.queued, 0,
            "{}: a finished run has empty queues",
            stage.name
        );
        assert_eq!(
            stage.busy_workers, 0,
            "{}: a finished run has no busy worker",
            stage.name
        );
    }
}

#[test]
fn a_join_stage_counts_what_it_takes_and_what_it_hands_on() {
    let sums = task(|upstream: pyper::Upstream<u64>| {
        let items: Vec<u64> = upstream.collect();
        items
            .chunks(10)
            .map(|c| c.iter().sum())
            .collect::<Vec<u64>>()
    })
    .name("sums")
    .join()
    .branch();
    let mut output = (task(|x: u64| x).name("pass") | sums).feed(0..1000);
    assert_eq!(output.by_ref().count(), 100);
    let metrics = output.metrics();
    let sums = metrics.stage("sums").unwrap();
    assert_eq!((sums.items_in, sums.items_out), (1000, 100));
    assert!(!sums.busy.is_zero());
}

#[test]
fn counts_equal_the_real_item_counts_when_a_stage_fails() {
    let calls = Calls::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let pipeline = task(move |x: u64| {
        c1.count("first");
        x
    })
    .name("first")
    .workers(2)
        | try_task(move |x: u64| {
            c2.count("fails");
            if x == 500 {
                Err("bad item")
            } else {
                Ok(x)
            }
        })
        .name("fails");
    let mut output = pipeline.feed(0..100_000);
    let error = output.by_ref().find_map(Result::err).unwrap();
    assert_eq!(error.stage(), Some("fails"));
    assert!(output.next().is_none());
    let metrics = output.metrics();
    let stage = |name| metrics.stage(name).unwrap();
    assert_eq!(stage("fails").errors, 1);
    assert_eq!(stage("fails").items_in, calls.of("fails"));
    assert_eq!(stage("first").items_in, calls.of("first"));
    assert_eq!(stage("first").errors, 0);
    // The failing call was counted: the stage took every item up to the failing one.
    assert!(stage("fails").items_in > error.item().unwrap());
}

#[test]
fn counts_equal_the_real_item_counts_when_the_output_is_dropped() {
    let calls = Calls::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let taken = Arc::new(AtomicU64::new(0));
    let pipeline = task(move |x: u64| {
        c1.count("a");
        x
    })
    .name("a")
    .workers(2)
        | task(move |x: u64| {
            c2.count("b");
            x
        })
        .name("b");
    let mut output = pipeline.feed(0..u64::MAX);
    let monitor = output.monitor();
    for item in output.by_ref().take(10_000) {
        item.unwrap();
        taken.fetch_add(1, Ordering::Relaxed);
    }
    drop(output);
    let metrics = monitor.metrics();
    let stage = |name| metrics.stage(name).unwrap();
    assert_eq!(stage("a").items_in, calls.of("a"));
    assert_eq!(stage("b").items_in, calls.of("b"));
    assert!(stage("b").items_out >= taken.load(Ordering::Relaxed));
    assert!(stage("a").items_out >= stage("b").items_in);
}

#[test]
fn live_metrics_show_queue_depth_and_busy_workers() {
    with_timeout(60, || {
        let gate = Arc::new(Gate::new());
        let held = Arc::clone(&gate);
        let pipeline = task(|x: u64| x).name("fast").throttle(8)
            | task(move |x: u64| {
                held.wait();
                x
            })
            .name("held");
        let mut output = pipeline.feed(0..100);
        let monitor = output.monitor();
        let consumer = std::thread::spawn(move || output.by_ref().count());
        // `fast` fills `held`'s queue, then blocks on it: wait for both (the queue is full
        // a moment before `fast`, between two items, parks on it).
        common::wait_until("the held stage's queue to fill and fast to block", || {
            let metrics = monitor.metrics();
            let held = metrics.stage("held");
            let fast = metrics.stage("fast");
            held.is_some_and(|held| held.queued == 8 && held.busy_workers == 1)
                && fast.is_some_and(|fast| fast.blocked_workers == 1)
        });
        let fast = monitor.metrics().stage("fast").unwrap().clone();
        assert_eq!(
            (fast.busy_workers, fast.blocked_workers),
            (0, 1),
            "a blocked worker is not counted busy: {fast:?}"
        );
        gate.open();
        assert_eq!(consumer.join().unwrap(), 100);
    });
}

#[test]
fn metrics_can_be_turned_off() {
    let mut output = task(|x: u64| x).feed(0..1000).without_metrics();
    assert_eq!(output.by_ref().count(), 1000);
    let metrics = output.metrics();
    assert_eq!(metrics.stages.len(), 2, "stages are listed");
    assert!(metrics
        .stages
        .iter()
        .all(|s| s.items_in == 0 && s.items_out == 0));
}

#[test]
fn the_trace_is_chrome_trace_json_with_one_track_per_worker() {
    let pipeline = task(|x: u64| x + 1).name("one").workers(3) | task(nap).name("two").workers(2);
    let mut output = pipeline.feed(0..200).record_trace();
    assert_eq!(output.by_ref().count(), 200);
    let mut json = Vec::new();
    output.write_trace(&mut json).unwrap();
    let trace: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    let events = trace["traceEvents"]
        .as_array()
        .expect("a traceEvents array");
    let mut tracks = HashMap::new();
    let mut busy_tracks = BTreeSet::new();
    for event in events {
        let phase = event["ph"].as_str().expect("every event has a phase");
        assert!(event["pid"].is_u64() && event["tid"].is_u64(), "{event}");
        match phase {
            "M" if event["name"] == "thread_name" => {
                let name = event["args"]["name"].as_str().unwrap().to_owned();
                assert!(tracks
                    .insert(event["tid"].as_u64().unwrap(), name)
                    .is_none());
            }
            "M" => {}
            "X" => {
                assert!(event["ts"].as_f64().unwrap() >= 0.0, "{event}");
                assert!(event["dur"].as_f64().unwrap() >= 0.0, "{event}");
                let name = event["name"].as_str().unwrap();
                assert!(["work", "starved", "blocked"].contains(&name), "{event}");
                if name == "work" {
                    busy_tracks.insert(event["tid"].as_u64().unwrap());
                }
            }
            other => panic!("unexpected phase {other}"),
        }
    }
    let mut names: Vec<&str> = tracks.values().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["input #1", "one #1", "one #2", "one #3", "two #1", "two #2"]
    );
    let two: Vec<u64> = tracks
        .iter()
        .filter(|(_, name)| name.starts_with("two"))
        .map(|(tid, _)| *tid)
        .collect();
    assert!(
        two.iter().all(|tid| busy_tracks.contains(tid)),
        "both sleepers worked"
    );
}

#[test]
fn a_run_without_record_trace_writes_an_empty_valid_trace() {
    let mut output = task(|x: u64| x).feed(0..10);
    assert_eq!(output.by_ref().count(), 10);
    let mut json = Vec::new();
    output.write_trace(&mut json).unwrap();
    let trace: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let spans = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["ph"] == "X")
        .count();
    assert_eq!(spans, 0);
}

#[test]
fn the_report_prints_every_stage_and_marks_the_bottleneck() {
    let _serial = serial();
    let mut output = (task(nap).name("fetch") | task(|x: u64| x).name("parse")).feed(0..50);
    assert_eq!(output.by_ref().count(), 50);
    let table = output.report().to_string();
    for needle in [
        "stage",
        "input",
        "fetch",
        "parse",
        "← bottleneck",
        "IO-bound",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
}

/// Runs the main example with progress bars asked for and a trace file, its output piped:
/// no escape codes or carriage returns reach the pipes, and the trace file is valid.
#[test]
fn progress_bars_stay_off_when_output_is_piped() {
    let _serial = serial();
    let example = example_path("crawl_report");
    let trace = std::env::temp_dir().join(format!("pyper-trace-{}.json", std::process::id()));
    let output = std::process::Command::new(&example)
        .args(["--pages", "3"])
        .env("PYPER_PROGRESS", "1")
        .env("PYPER_TRACE", &trace)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", example.display()));
    assert!(output.status.success(), "{output:?}");
    for stream in [&output.stdout, &output.stderr] {
        assert!(!stream.contains(&0x1b), "an escape code reached a pipe");
        assert!(!stream.contains(&b'\r'), "a carriage return reached a pipe");
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("pipeline report"),
        "the example prints its report"
    );
    let json = std::fs::read(&trace).expect("PYPER_TRACE wrote the trace");
    std::fs::remove_file(&trace).ok();
    let trace: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert!(!trace["traceEvents"].as_array().unwrap().is_empty());
}

/// Runs the main example under a pseudo-terminal (util-linux's `script`), with progress
/// bars asked for: they draw, and are cleared when the run ends, whether it completes or
/// fails, before the program prints anything more.
#[test]
fn progress_bars_draw_on_a_terminal_and_are_cleared_when_the_run_ends() {
    let _serial = serial();
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: util-linux's `script` is not installed");
        return;
    }
    let example = example_path("crawl_report");
    // The example's last run is the tuned one, after which it prints how long it took.
    for (args, succeeds, printed_after) in [
        ("--pages 3", true, "Tuned by the run"),
        ("--pages 3 --broken-link", false, "error:"),
    ] {
        let command = format!("{} {args}", example.display());
        let output = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("PYPER_PROGRESS", "1")
            .output()
            .unwrap();
        assert_eq!(output.status.success(), succeeds, "{output:?}");
        let screen = String::from_utf8_lossy(&output.stdout);
        let last_bar = screen
            .rfind(" out · ")
            .expect("the bars drew on the terminal");
        let after = &screen[last_bar..];
        let printed = after
            .find(printed_after)
            .expect("the program printed after the run");
        assert!(
            after[..printed].contains("\u{1b}[2K"),
            "the bars were erased before the program printed again"
        );
        assert!(
            !after[printed..].contains(" out · "),
            "no bar drew after the run ended"
        );
    }
}

/// Examples are built next to the test binaries: `target/<profile>/examples/<name>`.
fn example_path(name: &str) -> std::path::PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

#[test]
fn finished_runs_send_their_figures_to_tracing() {
    let subscriber = Collect::default();
    let events = Arc::clone(&subscriber.events);
    tracing::subscriber::with_default(subscriber, || {
        let mut output = (task(|x: u64| x).name("a") | task(|x: u64| x).name("b")).feed(0..100);
        assert_eq!(output.by_ref().count(), 100);
    });
    let events = events.lock().unwrap();
    let finished: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("stage finished"))
        .collect();
    assert_eq!(finished.len(), 3, "{events:?}");
    assert!(finished
        .iter()
        .any(|e| e.contains("stage=a") && e.contains("items_in=100")));
    assert!(
        events.iter().any(|e| e.contains("pipeline finished")),
        "{events:?}"
    );
}

#[test]
fn events_inside_a_task_carry_the_stage_name() {
    let subscriber = Collect::default();
    let events = Arc::clone(&subscriber.events);
    let dispatch = tracing::Dispatch::new(subscriber);
    // Worker threads are new threads: the subscriber must be the global default for them
    // to see it, and only this test sets one.
    tracing::dispatcher::set_global_default(dispatch).unwrap();
    let parse = task(|x: u64| {
        tracing::info!(item = x, "parsing");
        x
    })
    .name("parse");
    assert_eq!(parse.feed(0..3).count(), 3);
    let events = events.lock().unwrap();
    let parsing: Vec<&String> = events.iter().filter(|e| e.contains("parsing")).collect();
    assert_eq!(parsing.len(), 3, "{events:?}");
    assert!(
        parsing
            .iter()
            .all(|e| e.contains("in pyper_worker{stage=parse}")),
        "{parsing:?}"
    );
}

/// A minimal `tracing` subscriber: each event's fields as one line, followed by the span
/// the event happened in.
#[derive(Default)]
struct Collect {
    events: Arc<Mutex<Vec<String>>>,
    spans: Mutex<Vec<String>>,
}

thread_local! {
    static CURRENT: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn fields(record: impl FnOnce(&mut dyn tracing::field::Visit)) -> String {
    let mut line = String::new();
    record(
        &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
            line.push_str(&format!("{}={:?} ", field.name(), value));
        },
    );
    line.replace('"', "").trim_end().to_owned()
}

impl tracing::Subscriber for Collect {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attributes: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let name = attributes.metadata().name();
        let described = format!("{name}{{{}}}", fields(|visit| attributes.record(visit)));
        let mut spans = self.spans.lock().unwrap();
        spans.push(described);
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = fields(|visit| event.record(visit));
        if let Some(id) = CURRENT.with(|current| current.borrow().last().copied()) {
            let spans = self.spans.lock().unwrap();
            line.push_str(&format!(" in {}", spans[id as usize - 1]));
        }
        self.events.lock().unwrap().push(line);
    }

    fn enter(&self, span: &tracing::span::Id) {
        CURRENT.with(|current| current.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, _: &tracing::span::Id) {
        CURRENT.with(|current| current.borrow_mut().pop());
    }
}

#[cfg(feature = "async")]
mod async_stages {
    use super::*;
    use pyper::async_task;

    #[test]
    fn an_async_stage_that_waits_is_waiting_and_counted() {
        let _serial = serial();
        with_timeout(60, || {
            let fetch = async_task(|x: u64| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                x
            })
            .name("fetch")
            .workers(4);
            let mut output = (fetch | task(|x: u64| x).name("parse")).feed(0..200);
            assert_eq!(output.by_ref().count(), 200);
            let report = output.report();
            let fetch = report.stage("fetch").unwrap();
            assert_eq!(fetch.metrics.kind, StageKind::Async);
            assert_eq!(
                (fetch.metrics.items_in, fetch.metrics.items_out),
                (200, 200)
            );
            assert_eq!(fetch.bound, Bound::Waiting, "{report}");
            assert_eq!(
                report.bottleneck().unwrap().metrics.name,
                "fetch",
                "{report}"
            );
        });
    }

    #[test]
    fn an_async_join_counts_what_it_takes_and_what_it_hands_on() {
        use futures_util::StreamExt;
        let total = async_task(|upstream: pyper::UpstreamStream<u64>| async move {
            upstream.fold(0, |sum, x| async move { sum + x }).await
        })
        .name("total")
        .join();
        let mut output = (task(|x: u64| x) | total).feed(0..1000);
        assert_eq!(output.next().unwrap().unwrap(), 499_500);
        assert!(output.next().is_none());
        let metrics = output.metrics();
        let total = metrics.stage("total").unwrap();
        assert_eq!((total.items_in, total.items_out), (1000, 1));
    }
}
