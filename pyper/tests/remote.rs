//! Remote tasks against a real nats-server with JetStream.
//!
//! `scripts/test.sh` starts the server (`scripts/nats-server.sh`, which installs it if
//! missing) and passes its URL in `PYPER_NATS_URL`; without it these tests fail and say
//! how to run them. The restart test starts a server of its own with the same script.
//! The workers are this test binary again, started with `PYPER_WORKER` set (their `init`
//! comes from `process_test_support!`). The tests take turns ([`common::serial`]): the
//! workers of one test would otherwise also serve the runs of another.

mod common;
mod remote_common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{serial, with_timeout};
use pyper::{remote_task, try_remote_task, Cluster, DeadLetter, Error, RemoteError};
use remote_common::{run_script, script, server_url, tempdir, Supervisor, Workers};

pyper::process_test_support!();

/// An item's output, with the worker process that made it.
fn tagged(x: u64) -> (u64, u32) {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15), std::process::id())
}

fn expected_checksum(n: u64) -> u64 {
    (0..n).fold(0u64, |sum, x| {
        sum.wrapping_add(x.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    })
}

#[test]
fn a_killed_worker_loses_nothing_and_duplicates_nothing() {
    let _serial = serial();
    const N: u64 = 100_000;
    let url = server_url();
    with_timeout(300, move || {
        let cluster = Cluster::connect(&url)
            .unwrap()
            .ack_wait(Duration::from_secs(2));
        let workers = Workers::new(&url);
        let victim = workers.start();
        workers.start();
        workers.start();
        let stage = remote_task!(&cluster, tagged).name("tagged");
        let mut output = stage.feed(0..N);
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let (mut count, mut checksum) = (0u64, 0u64);
        let mut killed = false;
        for result in output.by_ref() {
            let (value, pid) = result.unwrap();
            count += 1;
            checksum = checksum.wrapping_add(value);
            *seen.entry(u64::from(pid)).or_default() += 1;
            if !killed && count == N / 5 {
                workers.kill(victim);
                killed = true;
            }
        }
        assert!(killed);
        assert_eq!(count, N, "every input's output, once");
        assert_eq!(checksum, expected_checksum(N));
        assert!(
            seen.len() >= 2,
            "the items spread over the workers: {seen:?}"
        );
        let metrics = output.metrics();
        let stage = metrics.stage("tagged").unwrap();
        assert_eq!((stage.items_in, stage.items_out), (N, N));
        let remote = stage.remote.clone().expect("a remote stage's metrics");
        let workers: usize = remote.workers_per_host.iter().map(|(_, n)| n).sum();
        assert_eq!(workers, seen.len(), "{remote:?}");
        println!("{}", output.report());
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}

/// Sleeps a little, so a run lasts long enough for something to happen in the middle.
fn slow(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(5));
    tagged(x)
}

#[test]
fn a_worker_that_joins_mid_run_gets_items() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        let first = workers.start();
        let mut output = remote_task!(&cluster, slow).feed(0..20_000u64);
        // The first outputs come from the only worker there is.
        for result in output.by_ref().take(50) {
            assert_eq!(result.unwrap().1, first);
        }
        let joiner = workers.start();
        let joined = output.by_ref().any(|result| result.unwrap().1 == joiner);
        assert!(joined, "the worker that joined took items");
        drop(output);
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}

#[test]
fn a_restarted_server_loses_nothing() {
    let _serial = serial();
    const N: u64 = 4_000;
    with_timeout(240, move || {
        let dir = tempdir("restart");
        let dir_arg = dir.to_str().unwrap();
        let url = run_script(&["start", dir_arg]);
        let port = url.rsplit(':').next().unwrap().to_owned();
        let cluster = Cluster::connect(&url)
            .unwrap()
            .ack_wait(Duration::from_secs(2));
        let workers = Workers::new(&url);
        workers.start();
        workers.start();
        let mut output = remote_task!(&cluster, slow).feed(0..N);
        let (mut count, mut checksum) = (0u64, 0u64);
        for result in output.by_ref() {
            let (value, _) = result.unwrap();
            count += 1;
            checksum = checksum.wrapping_add(value);
            if count == N / 4 {
                run_script(&["stop", dir_arg]);
                run_script(&["start", dir_arg, &port]);
            }
        }
        assert_eq!(count, N, "every input's output, once");
        assert_eq!(checksum, expected_checksum(N));
        assert!(cluster.run_streams().unwrap().is_empty());
        drop(workers);
        run_script(&["stop", dir_arg]);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Kills its worker on item 13, every time.
fn fragile(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10));
    if x == 13 {
        std::process::abort();
    }
    x
}

/// Fails on item 7, every time.
fn picky(x: u64) -> Result<u64, String> {
    match x {
        7 => Err("7 is not welcome".to_owned()),
        x => Ok(x),
    }
}

/// How many messages the dead-letter stream holds.
fn dead_letter_count(url: &str) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(pyper::DEAD_LETTER_STREAM).await.unwrap();
        stream.info().await.unwrap().state.messages
    })
}

/// The last message of the dead-letter stream: its subject and headers.
fn last_dead_letter(url: &str) -> (String, HashMap<String, String>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(pyper::DEAD_LETTER_STREAM).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let message = stream.get_raw_message(last).await.unwrap();
        let headers = message
            .headers
            .iter()
            .map(|(key, values)| (key.to_string(), values[0].to_string()))
            .collect();
        (message.subject.to_string(), headers)
    })
}

#[test]
fn an_item_that_keeps_killing_its_worker_is_dead_lettered_and_named() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url)
            .unwrap()
            .ack_wait(Duration::from_millis(500))
            .max_deliver(2);
        let workers = Workers::new(&url);
        workers.start();
        workers.start();
        let supervisor = Supervisor::new(workers);
        let stage = remote_task!(&cluster, fragile).name("fragile");
        let error: Error = stage
            .feed(0..40u64)
            .find_map(Result::err)
            .expect("the run fails");
        assert!(
            supervisor.stop() >= 2,
            "item 13 killed a worker per delivery"
        );
        assert_eq!(error.stage(), Some("fragile"));
        assert_eq!(error.item(), Some(13), "{error}");
        let dead = error.downcast_ref::<DeadLetter>().expect("a dead letter");
        assert_eq!(dead.deliveries(), 2);
        let (subject, headers) = last_dead_letter(&url);
        assert!(subject.starts_with("pyper.dead."), "{subject}");
        assert_eq!(headers["Pyper-Item"], "13");
        assert_eq!(headers["Pyper-Stage"], "fragile");
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}

/// Kills its worker on item 150, every time, at once: the items around it are quick, so
/// it travels in a message of many.
fn quick_fragile(x: u64) -> u64 {
    if x == 150 {
        std::process::abort();
    }
    x
}

#[test]
fn a_poison_item_in_a_batch_goes_to_the_dead_letters_alone() {
    let _serial = serial();
    let url = server_url();
    with_timeout(600, move || {
        let cluster = Cluster::connect(&url)
            .unwrap()
            .ack_wait(Duration::from_millis(300))
            .max_deliver(2);
        let workers = Workers::new(&url);
        workers.start();
        workers.start();
        let supervisor = Supervisor::new(workers);
        for run in 0..20 {
            let dead_before = dead_letter_count(&url);
            let mut outputs = Vec::new();
            let mut error = None;
            for result in remote_task!(&cluster, quick_fragile).feed(0..400u64) {
                match result {
                    Ok(x) => outputs.push(x),
                    Err(failed) => error = Some(failed),
                }
            }
            let error = error.expect("the run fails");
            assert_eq!(error.item(), Some(150), "run {run}: {error}");
            assert!(error.downcast_ref::<DeadLetter>().is_some(), "{error}");
            // Alone in the dead letters.
            assert_eq!(dead_letter_count(&url), dead_before + 1, "run {run}");
            let (_, headers) = last_dead_letter(&url);
            assert_eq!(headers["Pyper-Item"], "150", "run {run}");
            // The others of its message went on: each output at most once (the run ends
            // at the dead letter, so some may not have come out by then).
            outputs.sort_unstable();
            let before = outputs.len();
            outputs.dedup();
            assert_eq!(outputs.len(), before, "run {run}: an output twice");
            assert!(!outputs.contains(&150));
        }
        supervisor.stop();
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}

fn length(data: Vec<u8>) -> usize {
    data.len()
}

#[test]
fn an_item_too_big_for_a_message_fails_the_run_at_once() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        for megabytes in [2usize, 20] {
            let items = (0..5u8).map(move |n| match n {
                3 => vec![n; megabytes << 20],
                _ => vec![n; 100],
            });
            let mut output = remote_task!(&cluster, length).feed(items);
            let error = output
                .by_ref()
                .find_map(Result::err)
                .expect("the run fails");
            assert_eq!(error.item(), Some(3), "{error}");
            let why = std::error::Error::source(&error).unwrap().to_string();
            assert!(
                why.contains(&format!("{}", (megabytes << 20) + 8))
                    || why.contains("bytes encoded"),
                "{why}"
            );
            assert!(why.contains("max_payload"), "{why}");
        }
        let left = cluster.run_streams().unwrap();
        assert!(left.is_empty(), "{left:?}");
    });
}

#[test]
fn big_items_go_as_many_messages_as_they_need() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        // 300 KB each: three to a message of the server's default 1 MB at most.
        let lengths: Vec<usize> = remote_task!(&cluster, length)
            .feed((0..40u8).map(|n| vec![n; 300 << 10]))
            .map(Result::unwrap)
            .collect();
        assert_eq!(lengths, vec![300 << 10; 40]);
    });
}

#[test]
fn an_item_whose_function_fails_is_dead_lettered_and_is_the_error() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        let stage = try_remote_task!(&cluster, picky).name("picky").retries(1);
        let error = stage.feed(0..20u64).find_map(Result::err).expect("fails");
        assert_eq!(error.item(), Some(7));
        let remote = error
            .downcast_ref::<RemoteError>()
            .expect("the worker's error");
        assert!(remote.message().contains("2 attempts"), "{remote}");
        let (_, headers) = last_dead_letter(&url);
        assert_eq!(headers["Pyper-Item"], "7");
        assert!(
            headers["Pyper-Reason"].contains("7 is not welcome"),
            "{headers:?}"
        );
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}

/// Sleeps, and notes the call in the file the worker was given.
fn logged(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    if let Ok(path) = std::env::var("PYPER_TEST_CALLS") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        writeln!(file, "{x}").unwrap();
    }
    x
}

fn calls(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |calls| calls.lines().count())
}

/// Stops a run mid-way with `stop`, then checks that the workers stopped its items and
/// that the server holds nothing of it.
fn stopping_mid_run_stops_the_workers(stop: impl FnOnce(pyper::Output<u64>)) {
    let url = server_url();
    let dir = tempdir("stop");
    let log = dir.join("calls");
    let cluster = Cluster::connect(&url).unwrap();
    let workers = Workers::new(&url).env("PYPER_TEST_CALLS", log.to_str().unwrap());
    workers.start();
    workers.start();
    let mut output = remote_task!(&cluster, logged).feed(0..1_000_000u64);
    for result in output.by_ref().take(100) {
        result.unwrap();
    }
    stop(output);
    assert!(
        cluster.run_streams().unwrap().is_empty(),
        "nothing of the run is left"
    );
    // A worker finishes the item it is on; after that, nothing more.
    std::thread::sleep(Duration::from_millis(300));
    let settled = calls(&log);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(calls(&log), settled, "the workers stopped the run's items");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropping_the_output_mid_run_stops_the_workers_and_leaves_nothing() {
    let _serial = serial();
    with_timeout(120, || stopping_mid_run_stops_the_workers(drop));
}

#[test]
fn cancelling_mid_run_stops_the_workers_and_leaves_nothing() {
    let _serial = serial();
    with_timeout(120, || {
        stopping_mid_run_stops_the_workers(|mut output| {
            output.canceller().cancel();
            for result in output.by_ref() {
                result.unwrap();
            }
        })
    });
}

/// Slow on some items, so that items finish out of order on two workers.
fn uneven(x: u64) -> u64 {
    if x % 7 == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    x
}

#[test]
fn an_ordered_remote_task_keeps_the_order_and_its_lead_is_bounded() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        workers.start();
        const THROTTLE: u64 = 4;
        // What was taken from the input, against what the consumer finished: the lead.
        let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = pyper::task({
            let taken = Arc::clone(&taken);
            move |x: u64| {
                taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                x
            }
        })
        .throttle(THROTTLE as usize);
        let stage = remote_task!(&cluster, uneven)
            .throttle(THROTTLE as usize)
            .ordered();
        let mut output = (count | stage).feed(0..);
        let mut worst = 0;
        for expected in 0..300u64 {
            assert_eq!(output.next().unwrap().unwrap(), expected, "in order");
            // The consumer is slow: the stage runs ahead as far as it may.
            std::thread::sleep(Duration::from_millis(1));
            let lead = taken.load(std::sync::atomic::Ordering::SeqCst) - (expected + 1);
            worst = worst.max(lead);
        }
        drop(output);
        // The counting stage's queue and hands (t + 1), the items out on the server (t),
        // the output queue (t), and what the consumer's batch took from it (t).
        let bound = 4 * THROTTLE + 1;
        assert!(worst <= bound, "ran {worst} items ahead, bound {bound}");
        println!("the ordered remote stage ran at most {worst} items ahead (bound {bound})");
    });
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = Cluster::connect(&format!("nats://127.0.0.1:{port}")).unwrap_err();
    assert!(error.to_string().contains("cannot connect"), "{error}");
}

/// How many items each item stream of a run holds right now (each message says how many
/// it carries in its `Pyper-Items` header).
fn item_stream_sizes(url: &str) -> Vec<u64> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use futures_util::StreamExt;
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut names = js.stream_names();
        let mut sizes = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.unwrap();
            if name.starts_with("PYPER_") && name.ends_with("_IN") {
                if let Ok(mut stream) = js.get_stream(&name).await {
                    let state = stream.info().await.unwrap().state.clone();
                    let mut items = 0;
                    for seq in state.first_sequence..=state.last_sequence {
                        if let Ok(message) = stream.get_raw_message(seq).await {
                            let count = message.headers.get("Pyper-Items");
                            items += count.map_or(1, |count| count.as_str().parse().unwrap());
                        }
                    }
                    sizes.push(items);
                }
            }
        }
        sizes
    })
}

#[test]
fn throttle_bounds_the_servers_queue() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        let stage = remote_task!(&cluster, slow).throttle(20);
        let mut output = stage.feed(0..600u64);
        let (mut count, mut largest) = (0u64, 0u64);
        for result in output.by_ref() {
            result.unwrap();
            count += 1;
            if count % 50 == 0 {
                largest = largest.max(item_stream_sizes(&url).into_iter().max().unwrap_or(0));
            }
        }
        assert_eq!(count, 600);
        assert!(largest > 0, "the stream was seen with items in it");
        // 20 without an outcome, and as many whose outcome is in but whose worker's
        // acknowledgement is still on its way (see docs/remote.md, "Memory").
        assert!(
            largest <= 40,
            "the stream held {largest} items, its bound is 2 × 20"
        );
    });
}

/// Runs `ip` with `args`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A network namespace joined to this one by a veth pair: the host side has `host_ip`,
/// the namespace `guest_ip`. Removed when dropped.
struct Namespace {
    name: String,
    link: String,
}

impl Namespace {
    fn new(tag: u32) -> Result<(Namespace, String), String> {
        let name = format!("pyper-{tag}");
        let (link, peer) = (format!("pyh{tag}"), format!("pyg{tag}"));
        let subnet = 100 + tag % 100;
        let (host_ip, guest_ip) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
        ip(&["netns", "add", &name])?;
        let namespace = Namespace { name, link };
        let guest = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &namespace.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        ip(&[
            "link",
            "add",
            &namespace.link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &namespace.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &namespace.link,
        ])?;
        ip(&["link", "set", &namespace.link, "up"])?;
        guest(&["addr", "add", &format!("{guest_ip}/24"), "dev", &peer])?;
        guest(&["link", "set", &peer, "up"])?;
        guest(&["link", "set", "lo", "up"])?;
        Ok((namespace, host_ip))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn workers_in_another_network_namespace_serve_the_run() {
    let _serial = serial();
    // Optional: only where this process may make network namespaces (root, `ip`).
    let (namespace, host_ip) = match Namespace::new(std::process::id()) {
        Ok(made) => made,
        Err(why) => {
            println!("skipped: no network namespace for the remote workers: {why}");
            return;
        }
    };
    with_timeout(120, move || {
        let dir = tempdir("netns");
        let dir_arg = dir.to_str().unwrap();
        let out = Command::new("bash")
            .arg(script())
            .args(["start", dir_arg, "", &host_ip])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let cluster = Cluster::connect(&url).unwrap();
        // The workers reach the server only through the veth pair, as another host would.
        let mut workers: Vec<Child> = (0..2)
            .map(|_| {
                Command::new("ip")
                    .args(["netns", "exec", &namespace.name])
                    .arg(std::env::current_exe().unwrap())
                    .args(["__pyper_process_worker", "--exact", "--nocapture", "-q"])
                    .env(pyper::WORKER_ENV, &url)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let (mut count, mut checksum) = (0u64, 0u64);
        for result in remote_task!(&cluster, tagged).feed(0..2_000u64) {
            let (value, _) = result.unwrap();
            count += 1;
            checksum = checksum.wrapping_add(value);
        }
        assert_eq!(count, 2_000);
        assert_eq!(checksum, expected_checksum(2_000));
        for worker in &mut workers {
            let _ = worker.kill();
            let _ = worker.wait();
        }
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", dir_arg])
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        drop(namespace);
    });
}

/// Sleeps far longer than the stage's timeout on item 3.
fn sleepy(x: u64) -> u64 {
    if x == 3 {
        std::thread::sleep(Duration::from_secs(5));
    }
    x
}

/// Fails every other call in its worker process: each item's first attempt, with one
/// worker running one item at a time.
fn flaky(x: u64) -> Result<u64, String> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 {
        0 => Err(format!("attempt at {x} failed")),
        _ => Ok(x),
    }
}

#[test]
fn timeout_and_retries_keep_their_meaning_on_remote_workers() {
    let _serial = serial();
    let url = server_url();
    with_timeout(120, move || {
        let cluster = Cluster::connect(&url).unwrap();
        let workers = Workers::new(&url);
        workers.start();
        let retried = try_remote_task!(&cluster, flaky).name("flaky").retries(1);
        let outputs: Result<Vec<u64>, Error> = retried.feed(0..50u64).collect();
        let mut outputs = outputs.expect("every item's second attempt succeeds");
        outputs.sort_unstable();
        assert_eq!(outputs, (0..50).collect::<Vec<u64>>());

        let timed = remote_task!(&cluster, sleepy)
            .name("sleepy")
            .timeout(Duration::from_millis(200));
        let error = timed.feed(0..10u64).find_map(Result::err).expect("fails");
        assert_eq!(error.item(), Some(3), "{error}");
        let timed_out = error.downcast_ref::<pyper::TimedOut>().expect("a timeout");
        assert_eq!(timed_out.limit(), Duration::from_millis(200));
        assert!(cluster.run_streams().unwrap().is_empty());
    });
}
