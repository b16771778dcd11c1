//! Pyper's test helpers (pyper-dev/pyper `tests/test_sync.py`), shared by the port of
//! Pyper's tests and the process tests that run the same scenario in worker processes.

use pyper::Output;

#[derive(Debug, PartialEq, Eq)]
pub struct TestError;

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestError")
    }
}

impl std::error::Error for TestError {}

/// `def f1(data): return data`
pub fn f1(data: u32) -> u32 {
    data
}

/// `def f5(data): time.sleep(0.2); raise TestError`. The pause lets the consumer block on
/// the output before the error happens, as in Pyper; nothing depends on its length.
pub fn f5(_data: u32) -> Result<u32, TestError> {
    std::thread::sleep(std::time::Duration::from_millis(20));
    Err(TestError)
}

/// `def consumer(data): total = 0; for i in data: total += i; return total`
pub fn consumer(data: Output<u32>) -> Result<u32, pyper::Error> {
    let mut total = 0;
    for i in data {
        total += i?;
    }
    Ok(total)
}
