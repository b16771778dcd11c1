//! The two mistakes the Python concurrency guides warn about most, and what the report says
//! about each:
//!
//! 1. a blocking call inside an async task (the guide's `time.sleep` in an `async def`),
//!    which blocks the executor: every other future on its thread waits;
//! 2. a CPU-bound task with more workers than cores, where the extra workers only take
//!    turns on the cores.
//!
//! ```text
//! cargo run --release --features async --example two_mistakes
//! ```

use std::time::Duration;

use pyper::{async_task, task};

/// A blocking wait, as a synchronous request would be.
fn slow_func(item: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10));
    item
}

/// The guides' CPU-bound example: a loop that only computes.
fn long_computation(mut data: u64) -> u64 {
    for i in 0..3_000_000u64 {
        data = std::hint::black_box(data.wrapping_add(i));
    }
    data
}

fn main() -> Result<(), pyper::Error> {
    // 1. `std::thread::sleep` in an async task: the sleep holds the runtime thread.
    let blocking = async_task(|item: u64| async move { slow_func(item) })
        .name("slow_func")
        .workers(10);
    let mut output = blocking.feed(0..40u64);
    for item in output.by_ref() {
        item?;
    }
    println!(
        "1. A blocking call inside an async task\n\n{}",
        output.report()
    );

    // 2. CPU-bound work on 10 workers, whatever the number of cores.
    let computing = task(long_computation).workers(10);
    let mut output = computing.feed(0..200u64);
    for item in output.by_ref() {
        item?;
    }
    println!(
        "2. CPU-bound work with more workers than cores\n\n{}",
        output.report()
    );
    Ok(())
}
