//! Only the right code runs: a worker serves only runs of its own build, calls only the
//! functions the program registered, and refuses anything else a message names; a
//! process stage's socket serves only the child it started; a server can require a
//! password. (The remote tests need the server `scripts/test.sh` starts, as
//! `tests/remote.rs` does.)

mod common;
mod remote_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{serial, with_timeout};
use pyper::{process_task, remote_task, Cluster};
use remote_common::{run_script, server_url, tempdir, Workers};

/// The entry point of this binary's worker processes, remote and local. A process-stage
/// worker of [`another_process_on_a_process_stages_socket_gets_nothing`] first waits at
/// its gate, so that the test can knock on the socket before the worker connects.
#[test]
fn __pyper_process_worker() {
    if std::env::var_os("PYPER_PROCESS_WORKER").is_some() {
        let gate = gate(std::os::unix::process::parent_id());
        let started = Instant::now();
        while !gate.exists() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    pyper::init();
}

fn gate(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("pyper-trust-gate-{parent}"))
}

/// An item's output, with the worker process that made it.
fn tagged(x: u64) -> (u64, u32) {
    (x * 2, std::process::id())
}

/// Waits until the file at `path` has a line containing `needle`; returns those lines.
fn wait_for_log(path: &Path, needle: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no `{needle}` in the log after 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A copy of this test binary that is another build: its ELF build id changed (what a
/// rebuild with any change to the program gives), or, without one, a byte more at the end
/// (which changes the hash of the file that stands in for it).
fn another_build(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    // A GNU build-id note: name size 4, id size 20, type 3 (NT_GNU_BUILD_ID), "GNU\0".
    let header: &[u8] = &[4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    match bytes
        .windows(header.len())
        .position(|window| window == header)
    {
        Some(at) => bytes[at + header.len()] ^= 0xff,
        None => bytes.push(0),
    }
    let path = dir.join("worker-of-another-build");
    std::fs::write(&path, bytes).unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&path, permissions).unwrap();
    path
}

#[test]
fn a_worker_of_another_build_ignores_the_run_until_a_matching_worker_joins() {
    let _serial = serial();
    with_timeout(240, || {
        let url = server_url();
        let dir = tempdir("another-build");
        let log = dir.join("other.log");
        let cluster = Cluster::connect(&url).unwrap();
        let other = Workers::new(&url).exe(&another_build(&dir)).stderr_to(&log);
        let other_pid = other.start();
        wait_for_log(&log, "serving remote tasks of build");
        let run = std::thread::spawn(move || {
            let outputs: Vec<(u64, u32)> = remote_task!(&cluster, tagged)
                .feed(0..200)
                .map(Result::unwrap)
                .collect();
            (outputs, cluster)
        });
        let refusals = wait_for_log(&log, "is of another build");
        assert!(refusals[0].contains("stage `tagged`"), "{refusals:?}");
        let matching = Workers::new(&url);
        let matching_pid = matching.start();
        let (outputs, cluster) = run.join().unwrap();
        assert_eq!(outputs.len(), 200, "every item once");
        assert!(outputs.iter().all(|&(_, pid)| pid == matching_pid));
        assert!(outputs.iter().all(|&(_, pid)| pid != other_pid));
        let sum: u64 = outputs.iter().map(|&(value, _)| value).sum();
        assert_eq!(sum, (0..200).map(|x| x * 2).sum::<u64>());
        // Said once, and the worker of the other build is still there.
        std::thread::sleep(Duration::from_millis(1500));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("is of another build").count(), 1, "{text}");
        assert!(cluster.run_streams().unwrap().is_empty());
        drop(other);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Makes a stream that looks like a run's item stream, with `setup` as its description.
fn forge_run(url: &str, id: &str, setup: &serde_json::Value) {
    let (url, id, description) = (url.to_owned(), id.to_owned(), setup.to_string());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("PYPER_{id}_IN"),
            subjects: vec![format!("pyper.{id}.in")],
            description: Some(description),
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

fn delete_stream(url: &str, name: &str) {
    let (url, name) = (url.to_owned(), name.to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    });
}

/// The setup a run of this build carries, read from a real run's item stream.
fn real_setup(url: &str, cluster: &Cluster) -> serde_json::Value {
    let started = Instant::now();
    let name = loop {
        if let Some(name) = cluster
            .run_streams()
            .unwrap()
            .into_iter()
            .find(|name| name.ends_with("_IN"))
        {
            break name;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no run stream");
        std::thread::sleep(Duration::from_millis(10));
    };
    let url = url.to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(name).await.unwrap();
        let description = stream.info().await.unwrap().config.description.clone();
        serde_json::from_str(&description.unwrap()).unwrap()
    })
}

#[test]
fn forged_setups_are_refused_and_the_worker_stays_up() {
    let _serial = serial();
    with_timeout(240, || {
        let url = server_url();
        let dir = tempdir("forged");
        let log = dir.join("worker.log");
        let cluster = Cluster::connect(&url).unwrap();
        let probe = cluster.clone();
        let run = std::thread::spawn(move || {
            remote_task!(&probe, tagged)
                .feed(0..50)
                .map(|result| result.unwrap().0)
                .sum::<u64>()
        });
        let real = real_setup(&url, &cluster);
        assert_eq!(real["build"], cluster.build(), "{real}");
        let mut forged = Vec::new();
        let mut forge = |what: &str, change: &dyn Fn(&mut serde_json::Value)| {
            let id = format!("forged{}{what}", std::process::id());
            let mut setup = real.clone();
            setup["id"] = id.clone().into();
            change(&mut setup);
            forge_run(&url, &id, &setup);
            forged.push(format!("PYPER_{id}_IN"));
        };
        forge("range", &|setup| {
            setup["function"]["Registered"]["index"] = 1_000_000.into()
        });
        forge("unregistered", &|setup| {
            setup["function"]["Registered"]["index"] = 0.into();
            setup["function"]["Registered"]["name"] = "std::process::exit".into();
        });
        // The wire format of builds that sent code addresses: an offset to jump to.
        forge("address", &|setup| {
            let object = setup.as_object_mut().unwrap();
            object.remove("function");
            object.insert(
                "entry".into(),
                serde_json::json!({"offset": 4096, "signature": 1}),
            );
            object.insert(
                "user".into(),
                serde_json::json!({"offset": -64, "signature": 1}),
            );
        });
        let worker = Workers::new(&url).stderr_to(&log);
        worker.start();
        assert_eq!(run.join().unwrap(), (0..50).map(|x| x * 2).sum::<u64>());
        let out_of_range = wait_for_log(&log, &forged[0]);
        assert!(
            out_of_range[0].contains("refused function #1000000"),
            "{out_of_range:?}"
        );
        let unregistered = wait_for_log(&log, &forged[1]);
        assert!(
            unregistered[0].contains("`std::process::exit`"),
            "{unregistered:?}"
        );
        let address = wait_for_log(&log, &forged[2]);
        assert!(
            address[0].contains("cannot read the run's setup"),
            "{address:?}"
        );
        // Still up: it serves the next run.
        let again: u64 = remote_task!(&cluster, tagged)
            .feed(0..10)
            .map(|result| result.unwrap().0)
            .sum();
        assert_eq!(again, 90);
        for name in &forged {
            delete_stream(&url, name);
        }
        drop(worker);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn a_cluster_that_requires_a_password() {
    let _serial = serial();
    with_timeout(240, || {
        let dir = tempdir("password");
        let dir_arg = dir.to_str().unwrap();
        let url = run_script(&["start", dir_arg, "-1", "127.0.0.1", "pyper:s3cret"]);
        let error = Cluster::connect(&url).unwrap_err();
        assert!(
            error.to_string().contains("cannot connect to NATS"),
            "{error}"
        );
        let cluster = Cluster::builder(&url)
            .user_and_password("pyper", "s3cret")
            .connect()
            .unwrap();
        // One worker with the credentials in its environment, one in the URL.
        let by_env = Workers::new(&url)
            .env(pyper::nats_env::USER_ENV, "pyper")
            .env(pyper::nats_env::PASSWORD_ENV, "s3cret");
        let in_url = url.replace("nats://", "nats://pyper:s3cret@");
        let by_url = Workers::new(&in_url);
        let by_url_pid = by_url.start();
        // The worker with the credentials in its URL serves alone first.
        let first: Vec<(u64, u32)> = remote_task!(&cluster, tagged)
            .feed(0..50)
            .map(Result::unwrap)
            .collect();
        assert!(first.iter().all(|&(_, pid)| pid == by_url_pid), "{first:?}");
        by_env.start();
        let outputs: Vec<(u64, u32)> = remote_task!(&cluster, tagged)
            .feed(0..500)
            .map(Result::unwrap)
            .collect();
        assert_eq!(outputs.len(), 500);
        let sum: u64 = outputs.iter().map(|&(value, _)| value).sum();
        assert_eq!(sum, (0..500).map(|x| x * 2).sum::<u64>());
        drop((by_env, by_url));
        run_script(&["stop", dir_arg]);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Run as a process of its own by the test below: knocks on the socket named in
/// `PYPER_TEST_INTRUDE`, poses as a worker, and prints how many bytes it was sent.
#[test]
fn __intruder() {
    let Some(name) = std::env::var_os("PYPER_TEST_INTRUDE") else {
        return;
    };
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut stream = std::os::unix::net::UnixStream::connect_addr(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A hello frame, as a worker would send: length 5, tag 1, a pid.
    let _ = stream.write_all(&[5, 0, 0, 0, 1, 1, 0, 0, 0]);
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    println!("intruder received {} bytes", received.len());
}

/// The abstract socket a process stage of this process listens on, once there is one.
fn stage_socket() -> String {
    let prefix = format!("@pyper-{}-", std::process::id());
    let started = Instant::now();
    loop {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap();
        if let Some(name) = table
            .lines()
            .filter_map(|line| line.split_whitespace().nth(7))
            .find(|name| name.starts_with(&prefix))
        {
            return name[1..].to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no socket");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn another_process_on_a_process_stages_socket_gets_nothing() {
    let _serial = serial();
    with_timeout(120, || {
        let gate = gate(std::process::id());
        let _ = std::fs::remove_file(&gate);
        let stage = std::thread::spawn(|| {
            process_task!(tagged)
                .feed(0..100)
                .map(|result| result.unwrap().0)
                .sum::<u64>()
        });
        let socket = stage_socket();
        let intruder = Command::new(std::env::current_exe().unwrap())
            .args(["__intruder", "--exact", "--nocapture", "-q"])
            .env("PYPER_TEST_INTRUDE", &socket)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&intruder.stdout);
        assert!(said.contains("intruder received 0 bytes"), "{said}");
        // The stage goes on: its own worker connects and serves it.
        std::fs::write(&gate, b"").unwrap();
        let sum = stage.join().unwrap();
        let _ = std::fs::remove_file(&gate);
        assert_eq!(sum, (0..100).map(|x| x * 2).sum::<u64>());
    });
}
