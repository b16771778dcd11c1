//! A flaky "native decoder" isolated in worker processes.
//!
//! `decode` stands in for a C library bound through FFI that leaks and crashes after a
//! number of frames, deadlocks now and then, and aborts on corrupt input. In a thread, any
//! of these would take the whole program down or hang it. In a process task, a crash or a
//! hang kills one worker process: the frame it was on is retried in a fresh one (after a
//! timeout for the hang), and only a frame that fails every attempt fails the run, with an
//! error that names it.
//!
//! Run with `cargo run --release --features process --example process_isolation`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pyper::{try_process_task, Backoff, RetriesExhausted, Task, WorkerDied};

/// Calls so far in this worker process: each worker process has its own.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// Decodes a frame into its checksum, like a native decoder with three defects.
fn decode(frame: Vec<u8>) -> Result<u64, String> {
    if frame.first() == Some(&0xFF) {
        // Corrupt input: the library dereferences garbage and the process dies.
        std::process::abort();
    }
    let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if call % 40 == 0 {
        // It leaks: after 40 frames, the process runs out of something and crashes.
        std::process::abort();
    }
    if call % 25 == 0 {
        // And every 25th call deadlocks.
        std::thread::sleep(Duration::from_secs(3600));
    }
    if frame.is_empty() {
        return Err("empty frame".into());
    }
    Ok(frame.iter().map(|&byte| u64::from(byte)).sum())
}

fn decoder() -> Task<Vec<u8>, u64> {
    try_process_task!(decode)
        .workers(2)
        .name("decode")
        .timeout(Duration::from_millis(200))
        .retries(2)
        .backoff(Backoff::none())
}

fn main() {
    // Worker processes are this program again: they serve here and never return.
    pyper::init();

    // 200 good frames: every crash and hang is retried in a fresh worker process.
    let frames = (0..200u32).map(|n| vec![(n % 200) as u8 + 1; 64]);
    let checksums: Vec<u64> = decoder()
        .feed(frames)
        .collect::<Result<_, _>>()
        .expect("every good frame decodes, given retries");
    assert_eq!(checksums.len(), 200);
    let total: u64 = checksums.iter().sum();
    assert_eq!(total, (0..200u64).map(|n| 64 * (n + 1)).sum::<u64>());
    println!(
        "decoded {} frames (checksum {total}) despite crashes and hangs",
        checksums.len()
    );

    // A corrupt frame crashes every attempt: the run fails, naming it.
    let frames = (0..50u32).map(|n| if n == 30 { vec![0xFF; 64] } else { vec![1; 64] });
    let error = decoder()
        .feed(frames)
        .find_map(Result::err)
        .expect("the corrupt frame fails the run");
    println!("{error:#}");
    assert_eq!(error.stage(), Some("decode"));
    assert_eq!(error.item(), Some(30));
    let exhausted = error
        .downcast_ref::<RetriesExhausted>()
        .expect("every attempt failed");
    assert!(exhausted.attempts().iter().all(|cause| cause
        .downcast_ref::<WorkerDied>()
        .is_some_and(|died| died.signal() == Some(6))));
}
