//! Options that cannot apply must be refused with a clear configuration error, never
//! silently ignored: `ordered()` on a join stage, and the run options of an [`Output`]
//! (`progress`, `without_metrics`, `record_trace`) once the run has started.

mod common;

use common::with_timeout;
use pyper::{task, ErrorKind, Output, Upstream};

#[test]
fn ordered_on_a_join_stage_is_a_configuration_error() {
    // A join receives the stream itself, each of its workers an arbitrary share: there is
    // no input order for `ordered()` to keep.
    let results = with_timeout(30, || {
        let count = task(|items: Upstream<u64>| items.count())
            .join()
            .workers(2)
            .ordered()
            .name("count");
        (task(|x: u64| x) | count).feed(0..100).collect::<Vec<_>>()
    });
    let error = match results.first() {
        Some(Err(error)) => error,
        _ => panic!("ordered() on a join stage was silently ignored: {results:?}"),
    };
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert_eq!(error.stage(), Some("count"), "{error}");
    assert!(
        error.to_string().contains("ordered"),
        "the error says what is wrong: {error}"
    );
}

// The run options of an `Output` are settled when the run starts, at the first `next`.
// Called later, they must not silently do nothing: the run is refused with a
// configuration error that names the option. (If they are made to take effect instead,
// or to return a `Result`, these three tests are the ones to adapt.)

/// Starts an endless run, takes its first output, applies `option`, and
/// returns the first error among the next outputs, if any.
fn error_after_start(option: fn(Output<u64>) -> Output<u64>) -> Option<pyper::Error> {
    with_timeout(30, move || {
        let mut output = task(|x: u64| x).feed(0..);
        assert_eq!(output.next().unwrap().unwrap(), 0);
        let mut output = option(output);
        // Far more than the run can have made ready before the option was applied.
        output.by_ref().take(100_000).find_map(Result::err)
    })
}

fn assert_refused(option: fn(Output<u64>) -> Output<u64>, name: &str) {
    let error = error_after_start(option).unwrap_or_else(|| {
        panic!("`Output::{name}` called after the run started was silently ignored")
    });
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(
        error.to_string().contains(name),
        "the error names `{name}`: {error}"
    );
}

#[test]
fn progress_after_the_run_started_is_refused() {
    assert_refused(Output::progress, "progress");
}

#[test]
fn without_metrics_after_the_run_started_is_refused() {
    assert_refused(Output::without_metrics, "without_metrics");
}

#[test]
fn record_trace_after_the_run_started_is_refused() {
    assert_refused(Output::record_trace, "record_trace");
}
