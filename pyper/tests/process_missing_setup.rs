//! A program that runs process tasks without the setup line gets a clear error, never a
//! hang and never workers of workers. This test binary deliberately lacks
//! `pyper::process_test_support!()`: its worker processes run libtest, which finds no
//! worker entry point, runs nothing and exits.

mod common;

use common::with_timeout;
use pyper::{process_task, ErrorKind};

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_missing_setup_line_is_a_clear_error() {
    let err = with_timeout(120, || {
        process_task!(square).run(3).next().unwrap().unwrap_err()
    });
    assert_eq!(err.kind(), ErrorKind::Config);
    let message = err.to_string();
    assert!(message.contains("pyper::init()"), "{message}");
    assert!(message.contains("process_test_support!"), "{message}");
}

/// Runs only in the child process of [`a_worker_past_its_missing_init_starts_no_workers`],
/// which marks it as a worker that was never served.
#[test]
#[ignore = "runs only as the child process of another test, which passes --ignored"]
fn inner_run_as_an_unserved_worker() {
    if std::env::var_os("PYPER_TEST_INNER").is_none() {
        return;
    }
    let err = process_task!(square).run(3).next().unwrap().unwrap_err();
    println!("inner error: {err}");
}

#[test]
fn a_worker_past_its_missing_init_starts_no_workers() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "inner_run_as_an_unserved_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "-q",
        ])
        .env("PYPER_TEST_INNER", "1")
        .env("PYPER_PROCESS_WORKER", "@pyper-nobody-listens-here")
        .env("PYPER_PROCESS_TOKEN", "0")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("inner error: invalid pipeline configuration")
            && stdout.contains("`pyper::init()` did not run"),
        "{stdout}"
    );
}
