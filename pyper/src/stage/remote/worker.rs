//! The worker side of remote tasks: a process started with `--pyper-worker <url>` (or
//! [`WORKER_ENV`](super::WORKER_ENV)) finds the runs on the server that its executable
//! can serve, and serves each until its streams go.
//!
//! Each run is served by `workers(n)` threads of the process, each with a tokio runtime
//! of its own (the user's function is called on that thread, so it may block). A thread
//! takes a few items at a time with a pull request of its own: there is no long-lived
//! subscription whose heartbeats could go missing, and any failed pull (a server restart,
//! missing heartbeats, a timeout) is followed by a fresh one. While it holds items, a
//! task sends progress acks for them three times per `ack_wait`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::cluster::WORKER_ENV;
use super::envelope::{self, Item, ItemEnvelope, Outcome, OutcomeEnvelope};
use super::lease::Sweeper;
use super::nats::{
    block_on, connect, dead_letter, fetch, host_name, publish, redacted, run_stream_names,
};
use super::security::Security;
use super::setup::{solo_id, starts_subject, Callee, Setup, ANNOUNCE, CONSUMER, STOP, VERSION};
use crate::engine::meter::thread_cpu_time;
use crate::stage::policy::{
    AttemptFailure, Attempts, FaultPolicy, RetriesExhausted, TimedOut, Verdict,
};
use crate::stage::wire::registry;
use crate::stage::wire::RemoteError;
use crate::stage::wire::{panic_message, Reply};

/// The NATS URL this process was started to serve, if it was started as a worker:
/// `--pyper-worker <url>`, `--pyper-worker=<url>`, or [`WORKER_ENV`].
pub(crate) fn worker_url() -> Option<String> {
    let mut args = std::env::args();
    while let Some(arg) = args.next() {
        if arg == "--pyper-worker" {
            return args.next();
        }
        if let Some(url) = arg.strip_prefix("--pyper-worker=") {
            return Some(url.to_owned());
        }
    }
    std::env::var(WORKER_ENV).ok().filter(|url| !url.is_empty())
}

/// Serves remote tasks for ever if this process was started as a worker; returns at once
/// otherwise.
pub(crate) fn serve_if_worker() {
    let Some(url) = worker_url() else { return };
    // Programs that the task's function starts must not take themselves for workers.
    std::env::remove_var(WORKER_ENV);
    let why = serve_url(&url);
    eprintln!("pyper remote worker {}: {why}", std::process::id());
    std::process::exit(1);
}

/// Serves the remote runs of Python functions (and of this build's Rust ones) from the
/// server at `url`, for ever; returns only why it cannot. What `python -m pyper.worker
/// URL` runs, with the GIL released. (For the `pyperflow` Python package.)
#[cfg(feature = "python")]
pub fn serve_python_worker(url: &str) -> String {
    super::python::become_python_worker();
    serve_url(url)
}

/// Serves remote tasks from the server at `url` for ever; returns only why it cannot.
fn serve_url(url: &str) -> String {
    match serve(url) {
        Ok(never) => match never {},
        Err(why) => why,
    }
}

enum Never {}

/// Finds runs and serves them, for ever.
fn serve(url: &str) -> Result<Never, String> {
    let runtime = crate::engine::runtime::handle().map_err(|error| error.to_string())?;
    let build = super::build::fingerprint()?;
    let security = Security::from_env().map_err(|error| error.to_string())?;
    let target = url.to_owned();
    let client = block_on(
        &runtime,
        async move { connect(target, true, &security).await },
    )
    .map_err(|error| error.to_string())?;
    eprintln!(
        "pyper remote worker {} on {}: serving remote tasks of build {build} from {}",
        std::process::id(),
        host_name(),
        redacted(url)
    );
    block_on(&runtime, discover(client))
}

/// One run this process serves.
struct Served {
    stopped: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Watches for runs: announced ones at once, and every second the streams on the server
/// (for runs that began before this worker did, or whose announcement it missed).
async fn discover(client: async_nats::Client) -> Result<Never, String> {
    let js = jetstream::new(client.clone());
    let subscribe = |subject: &'static str| {
        let client = client.clone();
        async move {
            client
                .subscribe(subject)
                .await
                .map_err(|error| format!("cannot subscribe to {subject}: {error}"))
        }
    };
    let mut announced = subscribe(ANNOUNCE).await?;
    let mut stops = subscribe(STOP).await?;
    let mut served: HashMap<String, Served> = HashMap::new();
    // Runs this process has served or cannot serve: never looked at again.
    let mut done: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sweeper = Sweeper::default();
    loop {
        let candidates = tokio::select! {
            Some(message) = announced.next() => {
                vec![String::from_utf8_lossy(&message.payload).into_owned()]
            }
            Some(message) = stops.next() => {
                let id = String::from_utf8_lossy(&message.payload).into_owned();
                if let Some(run) = served.get(&super::setup::in_stream(&id)) {
                    run.stopped.store(true, Ordering::SeqCst);
                }
                continue;
            }
            _ = tick.tick() => {
                for id in sweeper.sweep(&client, &js).await {
                    eprintln!(
                        "pyper remote worker {}: deleted the streams of run {id}, whose \
                         program is gone",
                        std::process::id()
                    );
                }
                run_stream_names(&js, "_IN").await.unwrap_or_default()
            }
        };
        served.retain(|name, run| {
            let finished = run.threads.iter().all(|thread| thread.is_finished());
            if finished {
                done.insert(name.clone());
            }
            !finished
        });
        for name in candidates {
            if served.contains_key(&name) || done.contains(&name) {
                continue;
            }
            match setup_of(&js, &name).await {
                Found::Serve(setup, function) => {
                    served.insert(name, start(&client, &js, setup, function));
                }
                Found::Gone => {}
                Found::NotMine(why) => {
                    eprintln!(
                        "pyper remote worker {}: not serving {name}: {why}",
                        std::process::id()
                    );
                    done.insert(name);
                }
                Found::Broken(setup, why) => {
                    eprintln!(
                        "pyper remote worker {}: cannot serve {name}: {why}",
                        std::process::id()
                    );
                    fail_run(&js, &setup, &why).await;
                    done.insert(name);
                }
            }
        }
    }
}

/// What a worker makes of a run it found.
enum Found {
    /// It serves the run, calling this on its items.
    Serve(Setup, Call),
    /// The run is not for this worker (another build, another language, a setup it cannot
    /// read): it says so once and lets the run be.
    NotMine(String),
    /// The run is for this worker, but its function cannot be loaded here (a Python module
    /// this host cannot import): the run fails at once, with the reason.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    Broken(Setup, String),
    /// The run's stream is gone.
    Gone,
}

/// The setup of the run whose item stream is `name`, and what serving it calls. The
/// description is anyone's to write, so nothing in it is trusted: it must parse, speak this
/// version, come from this very build, and name a function this program registered (or,
/// for a Python run, come from this version of the Python package, and be served by a
/// Python worker).
async fn setup_of(js: &jetstream::Context, name: &str) -> Found {
    let Ok(mut stream) = js.get_stream(name).await else {
        return Found::Gone;
    };
    let Ok(info) = stream.info().await else {
        return Found::Gone;
    };
    let description = info.config.description.clone().unwrap_or_default();
    let setup: Setup = match serde_json::from_str(&description) {
        Ok(setup) => setup,
        Err(error) => return Found::NotMine(format!("cannot read the run's setup: {error}")),
    };
    if setup.version != VERSION {
        return Found::NotMine(format!(
            "the run speaks version {} of pyper's remote protocol, this worker {VERSION}",
            setup.version
        ));
    }
    match setup.function.clone() {
        Callee::Registered(reference) => {
            let build = match super::build::fingerprint() {
                Ok(build) => build,
                Err(why) => return Found::NotMine(why),
            };
            if setup.build != build {
                return Found::NotMine(format!(
                    "the run (stage `{}`) is of another build of the program ({}; this \
                     worker is {build}): a worker serves only runs of its own build",
                    setup.stage, setup.build
                ));
            }
            match registry::lookup(&reference) {
                Ok(entry) => Found::Serve(setup, Arc::new(move |item| entry.call(item))),
                Err(why) => Found::NotMine(why),
            }
        }
        Callee::Python(function) => python_run(setup, &function),
    }
}

/// A Python run, which only a Python worker of the same package version serves.
#[cfg(feature = "python")]
fn python_run(setup: Setup, function: &super::setup::PythonFunction) -> Found {
    if !super::python::serves_python() {
        return Found::NotMine(PYTHON_ONLY.to_owned());
    }
    let build = super::setup::python_fingerprint();
    if setup.build != build {
        return Found::NotMine(format!(
            "the run (stage `{}`) is of another version of the Python package ({}; this \
             worker is {build})",
            setup.stage, setup.build
        ));
    }
    match super::python::load(function) {
        Ok(call) => Found::Serve(setup, Arc::new(call)),
        Err(why) => Found::Broken(setup, format!("{why} (on worker host {})", host_name())),
    }
}

#[cfg(not(feature = "python"))]
fn python_run(_: Setup, _: &super::setup::PythonFunction) -> Found {
    Found::NotMine(PYTHON_ONLY.to_owned())
}

const PYTHON_ONLY: &str =
    "a run of Python functions, which Python workers serve (`python -m pyper.worker URL`)";

/// Fails a run whose function this worker cannot load: an outcome that names no item,
/// which the coordinator takes for the run's error.
async fn fail_run(js: &jetstream::Context, setup: &Setup, why: &str) {
    let host = host_name();
    let id = format!("{}.out.broken.{host}.{}", setup.id, std::process::id());
    let envelope = run_failure(host, why);
    let never = || false;
    let subject = setup.out_subject();
    let _ = publish(js, subject, id, envelope.into(), 1, &setup.stage, &never).await;
}

/// An outcome that names no item, with `why`: the coordinator takes it for the run's error.
fn run_failure(host: String, why: &str) -> Vec<u8> {
    envelope::encode(&OutcomeEnvelope::V2 {
        host,
        pid: std::process::id(),
        delivered: 1,
        busy_nanos: 0,
        cpu_nanos: 0,
        outcomes: vec![(u64::MAX, Outcome::Failed(vec![why.to_owned()]))],
    })
}

/// Starts the threads that serve one run.
fn start(
    client: &async_nats::Client,
    js: &jetstream::Context,
    setup: Setup,
    function: Call,
) -> Served {
    let stopped = Arc::new(AtomicBool::new(false));
    let setup = Arc::new(setup);
    let threads = (0..setup.slots.max(1))
        .filter_map(|slot| {
            let (client, js) = (client.clone(), js.clone());
            let (setup, stopped) = (Arc::clone(&setup), Arc::clone(&stopped));
            std::thread::Builder::new()
                .name(format!("pyper-remote-{slot}"))
                .spawn({
                    let function = Arc::clone(&function);
                    move || serve_run(client, js, &setup, function, &stopped)
                })
                .ok()
        })
        .collect();
    Served { stopped, threads }
}

/// Serves one run on this thread until its streams go or it is stopped.
///
/// The thread only calls the function. Two tasks on pyper's runtime do the talking, so
/// that the calls never wait for the network while there is work: a fetcher keeps one
/// batch of items ready ahead of the one being worked on, and a publisher publishes each
/// outcome and, once the server has it, acknowledges the item.
fn serve_run(
    client: async_nats::Client,
    js: jetstream::Context,
    setup: &Arc<Setup>,
    function: Call,
    stopped: &Arc<AtomicBool>,
) {
    let Ok(runtime) = crate::engine::runtime::handle() else {
        return;
    };
    let consumer = {
        let (js, stream) = (js.clone(), setup.in_stream());
        block_on(&runtime, async move {
            js.get_consumer_from_stream::<consumer::pull::Config, _, _>(CONSUMER, stream)
                .await
        })
    };
    let Ok(consumer) = consumer else { return };
    let held: Held = Arc::default();
    let limit = Arc::new(AtomicUsize::new(1));
    let (batches, mut ready) = tokio::sync::mpsc::channel(1);
    let (outcomes, to_publish) = tokio::sync::mpsc::unbounded_channel();
    let fetcher = runtime.spawn(fetch_ahead(
        consumer,
        js.clone(),
        Arc::clone(setup),
        Arc::clone(stopped),
        Arc::clone(&limit),
        Arc::clone(&held),
        batches,
    ));
    let publisher = runtime.spawn(publish_outcomes(
        js.clone(),
        Arc::clone(setup),
        Arc::clone(stopped),
        Arc::clone(&held),
        to_publish,
    ));
    let ack_wait = Duration::from_nanos(setup.ack_wait_nanos);
    let progress = runtime.spawn(progress_acks(
        client.clone(),
        Arc::clone(&held),
        ack_wait / 3,
    ));
    let worker = Worker {
        client,
        js,
        setup,
        function,
        host: host_name(),
    };
    while let Some(batch) = ready.blocking_recv() {
        let started = Instant::now();
        let count = batch.len();
        for message in batch {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let done = worker.run(&message, &runtime, stopped);
            if outcomes.send((message, done)).is_err() {
                break;
            }
        }
        if stopped.load(Ordering::SeqCst) {
            break;
        }
        let per_item = started.elapsed() / count.max(1) as u32;
        let fits = (PULL_TIME.as_nanos() / per_item.as_nanos().max(1)) as usize;
        let current = limit.load(Ordering::Relaxed);
        limit.store(fits.clamp(1, MAX_PULL).min(current * 2), Ordering::Relaxed);
    }
    // Whatever was worked on is published (unless the run is over) before the thread
    // ends; what was fetched and not worked on goes back to the server after `ack_wait`.
    fetcher.abort();
    drop(ready);
    drop(outcomes);
    let _ = block_on(&runtime, publisher);
    progress.abort();
}

/// The reply subjects of the items a serving thread holds, for progress acks.
type Held = Arc<Mutex<HashSet<String>>>;

/// How long the items of one pull should take, at most: quick items come many at a time,
/// slow ones a few at a time, so they spread over the workers.
const PULL_TIME: Duration = Duration::from_millis(5);
/// A message carries many items already; and a message held but not started when an item
/// kills its worker counts a delivery for nothing.
const MAX_PULL: usize = 2;

/// Pulls batches of items, one ahead of the thread that works on them, until the run's
/// streams go or the run stops.
async fn fetch_ahead(
    consumer: consumer::PullConsumer,
    js: jetstream::Context,
    setup: Arc<Setup>,
    stopped: Arc<AtomicBool>,
    limit: Arc<AtomicUsize>,
    held: Held,
    batches: tokio::sync::mpsc::Sender<Vec<jetstream::Message>>,
) {
    while !stopped.load(Ordering::SeqCst) {
        // Waits while a batch is ready and unclaimed: one ahead is enough.
        let Ok(permit) = batches.reserve().await else {
            return;
        };
        let max = limit.load(Ordering::Relaxed);
        let messages = match fetch(&consumer, max, Duration::from_secs(1)).await {
            Ok(messages) => messages,
            Err(_) => {
                if !run_exists(&js, &setup).await {
                    stopped.store(true, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let mut subjects = held.lock().expect("never poisoned");
        subjects.extend(
            (messages.iter())
                .filter_map(|message| message.reply.as_ref().map(|reply| reply.to_string())),
        );
        drop(subjects);
        permit.send(messages);
    }
}

/// Whether the run's item stream is still on the server.
async fn run_exists(js: &jetstream::Context, setup: &Setup) -> bool {
    match js.get_stream_no_info(setup.in_stream()).await {
        Ok(_) => true,
        Err(error) => !matches!(
            error.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        ),
    }
}

/// What became of one message of items.
enum Done {
    /// Its outcomes, to publish (with this dedup id and item count) before the message is
    /// acknowledged.
    Outcomes(String, Vec<u8>, u64),
    /// Nothing to publish: acknowledge it (its items went on in messages of their own).
    Ack,
    /// Leave it unacknowledged: the run stopped while it was worked on.
    Leave,
}

/// Publishes each message's outcomes with their dedup id, many at a time, and
/// acknowledges the message once the server has them.
async fn publish_outcomes(
    js: jetstream::Context,
    setup: Arc<Setup>,
    stopped: Arc<AtomicBool>,
    held: Held,
    mut outcomes: tokio::sync::mpsc::UnboundedReceiver<(jetstream::Message, Done)>,
) {
    let is_stopped = || stopped.load(Ordering::SeqCst);
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            next = outcomes.recv(), if open => match next {
                Some((message, done)) => {
                    let (js, setup) = (&js, &setup);
                    in_flight.push(async move {
                        let result = match done {
                            Done::Outcomes(id, envelope, items) => {
                                let subject = setup.out_subject();
                                let payload = envelope.into();
                                publish(js, subject, id, payload, items, &setup.stage, &is_stopped)
                                    .await
                                    .map(|()| true)
                            }
                            Done::Ack => Ok(true),
                            Done::Leave => Ok(false),
                        };
                        (message, result)
                    });
                }
                None => open = false,
            },
            Some((message, result)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(reply) = &message.reply {
                    held.lock().expect("never poisoned").remove(reply.as_str());
                }
                match result {
                    Ok(true) => {
                        let _ = message.ack().await;
                    }
                    Ok(false) => {}
                    // The run is over, or the server is gone for good.
                    Err(_) => stopped.store(true, Ordering::SeqCst),
                }
            }
        }
    }
}

/// What a serving thread needs to work on an item.
struct Worker<'a> {
    client: async_nats::Client,
    js: jetstream::Context,
    setup: &'a Setup,
    function: Call,
    host: String,
}

impl Worker<'_> {
    /// Works on one message: runs its items and gives their outcomes; an item that failed
    /// for good is dead-lettered first. A message of several items that was delivered
    /// before (a worker died or vanished holding it) is not run but split into messages of
    /// one item each, so that an item that kills its workers goes to the dead letters alone
    /// and the others of its message are not held up with it.
    fn run(
        &self,
        message: &jetstream::Message,
        runtime: &tokio::runtime::Handle,
        stopped: &AtomicBool,
    ) -> Done {
        let delivered = message
            .info()
            .map_or(1, |info| info.delivered.max(1) as u64);
        let items = match envelope::decode::<ItemEnvelope>(&message.payload, "an item") {
            Ok(ItemEnvelope::V2 { items }) => items,
            // No item number to name: the run fails on an item it cannot place.
            Ok(ItemEnvelope::Retired) => return self.unplaced("a retired kind of item message"),
            Err(why) => return self.unplaced(&why),
        };
        if stopped.load(Ordering::SeqCst) {
            return Done::Leave;
        }
        if delivered > 1 && items.len() > 1 {
            return self.split(items, runtime);
        }
        if items.len() == 1 {
            self.say_started(&items, runtime);
        }
        let started = Instant::now();
        let cpu_at_start = calls_cpu_time();
        let (first, count) = (items.first().map_or(0, |item| item.seq), items.len());
        let mut outcomes = Vec::with_capacity(count);
        for item in items {
            if stopped.load(Ordering::SeqCst) {
                return Done::Leave;
            }
            let outcome = self.attempt(item.bytes.clone());
            if !matches!(outcome, Outcome::Done(_)) {
                self.dead_letter(&outcome, &item, runtime);
            }
            outcomes.push((item.seq, outcome));
        }
        let envelope = envelope::encode(&OutcomeEnvelope::V2 {
            host: self.host.clone(),
            pid: std::process::id(),
            delivered,
            busy_nanos: started.elapsed().as_nanos() as u64,
            cpu_nanos: match (cpu_at_start, calls_cpu_time()) {
                (Some(start), Some(end)) => end.saturating_sub(start).as_nanos() as u64,
                _ => 0,
            },
            outcomes,
        });
        let id = format!("{}.out.{first}.{count}", self.setup.id);
        if delivered > 1 {
            // Delivered again: the item may be the one that killed a worker. Its outcome
            // is on the server before anything else starts, so that if the next item kills
            // this worker, this one is not blamed with it.
            let (js, setup) = (self.js.clone(), self.setup.clone());
            let published = block_on(runtime, async move {
                let never = || false;
                let subject = setup.out_subject();
                publish(
                    &js,
                    subject,
                    id,
                    envelope.into(),
                    count as u64,
                    &setup.stage,
                    &never,
                )
                .await
            });
            return match published {
                Ok(()) => Done::Ack,
                Err(_) => Done::Leave,
            };
        }
        Done::Outcomes(id, envelope, count as u64)
    }

    /// Tells the coordinator that the item of a message of one is started, before it runs:
    /// if it kills this worker, the coordinator knows it was this item, and not another
    /// that the worker only held. (A message of several items is split before any of them
    /// runs a second time.)
    fn say_started(&self, items: &[Item], runtime: &tokio::runtime::Handle) {
        let (client, subject) = (self.client.clone(), starts_subject(&self.setup.id));
        let payloads: Vec<bytes::Bytes> = items
            .iter()
            .map(|item| item.seq.to_le_bytes().to_vec().into())
            .collect();
        block_on(runtime, async move {
            for payload in payloads {
                let _ = client.publish(subject.clone(), payload).await;
            }
            let _ = client.flush().await;
        });
    }

    /// The outcome of a message whose items cannot be read: the run fails.
    fn unplaced(&self, why: &str) -> Done {
        let envelope = run_failure(self.host.clone(), why);
        Done::Outcomes(format!("{}.out.unplaced", self.setup.id), envelope, 1)
    }

    /// Publishes each of `items` as a message of its own, each with a dedup id of its own
    /// (so a second split of the same message adds nothing), for the message to be
    /// acknowledged once the server has them all.
    fn split(&self, items: Vec<Item>, runtime: &tokio::runtime::Handle) -> Done {
        let (js, setup) = (self.js.clone(), self.setup.clone());
        let published = block_on(runtime, async move {
            let subject = super::setup::in_subject(&setup.id);
            // Bounded by `publish`'s own patience with a server that is away.
            let never = || false;
            let mut in_flight = futures_util::stream::FuturesUnordered::new();
            for item in items {
                let id = solo_id(&setup.id, item.seq, "solo");
                let envelope = envelope::encode(&ItemEnvelope::V2 { items: vec![item] });
                let (js, subject, stage) = (&js, subject.clone(), setup.stage.as_str());
                in_flight.push(async move {
                    publish(js, subject, id, envelope.into(), 1, stage, &never).await
                });
            }
            let mut all = true;
            while let Some(result) = in_flight.next().await {
                all &= result.is_ok();
            }
            all
        });
        match published {
            true => Done::Ack,
            false => Done::Leave,
        }
    }

    /// Copies an item that failed for good to the dead-letter stream, alone.
    fn dead_letter(&self, outcome: &Outcome, item: &Item, runtime: &tokio::runtime::Handle) {
        let reason = match outcome {
            Outcome::Failed(chain) | Outcome::Raised { chain, .. } => chain.join(": "),
            Outcome::Panicked(message) => format!("panicked: {message}"),
            Outcome::TimedOut(nanos) => TimedOut::new(Duration::from_nanos(*nanos)).to_string(),
            Outcome::Done(_) => return,
        };
        let payload: bytes::Bytes = envelope::encode(&ItemEnvelope::V2 {
            items: vec![item.clone()],
        })
        .into();
        let (js, setup, seq) = (self.js.clone(), self.setup.clone(), item.seq);
        block_on(runtime, async move {
            dead_letter(&js, &setup, seq, &reason, payload).await;
        });
    }

    /// Calls the function on `item` as the stage's timeout and retries say.
    fn attempt(&self, item: Vec<u8>) -> Outcome {
        let timeout = self.setup.timeout_nanos.map(Duration::from_nanos);
        let mut attempts = Attempts::new(FaultPolicy {
            timeout,
            retries: self.setup.retries,
            backoff: self.setup.backoff,
        });
        loop {
            let failure = match call_within(&self.function, item.clone(), timeout) {
                Some(Reply::Done(bytes)) => return Outcome::Done(bytes),
                Some(Reply::Failed(chain)) => {
                    AttemptFailure::Failed(Box::new(RemoteError::from_worker(chain)))
                }
                Some(Reply::Raised { chain, exception }) => {
                    AttemptFailure::Failed(Box::new(Raised { chain, exception }))
                }
                Some(Reply::Panicked(message)) => AttemptFailure::Panicked(Box::new(message)),
                None => AttemptFailure::TimedOut(timeout.expect("only a timeout gives none")),
            };
            match attempts.failed(failure, false) {
                Verdict::Retry(delay) => std::thread::sleep(delay),
                Verdict::Fail(error) => {
                    if let Some(timed_out) = error.downcast_ref::<TimedOut>() {
                        return Outcome::TimedOut(timed_out.limit().as_nanos() as u64);
                    }
                    // An exception crosses as itself: after retries, the last one.
                    let last = match error.downcast_ref::<RetriesExhausted>() {
                        Some(exhausted) => exhausted.attempts().last(),
                        None => Some(&error),
                    };
                    if let Some(raised) = last.and_then(|last| last.downcast_ref::<Raised>()) {
                        return Outcome::Raised {
                            chain: raised.chain.clone(),
                            exception: raised.exception.clone(),
                        };
                    }
                    let mut chain = Vec::new();
                    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
                    while let Some(error) = cause {
                        chain.push(error.to_string());
                        cause = error.source();
                    }
                    return Outcome::Failed(chain);
                }
                Verdict::Panic(payload) => return Outcome::Panicked(panic_message(payload)),
            }
        }
    }
}

/// What a worker calls on one encoded item of a run.
pub(super) type Call = Arc<dyn Fn(&[u8]) -> Reply + Send + Sync>;

/// An exception a call raised (Python's), kept whole between attempts.
#[derive(Debug)]
struct Raised {
    chain: Vec<String>,
    exception: Vec<u8>,
}

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.chain.first().map_or("an exception", String::as_str))
    }
}

impl std::error::Error for Raised {}

/// Calls `function` on `item`, on this thread without a timeout, or on a thread of its
/// own that is abandoned if it overruns (`None`): a call cannot be stopped from outside,
/// and its result is refused anyway.
fn call_within(function: &Call, item: Vec<u8>, timeout: Option<Duration>) -> Option<Reply> {
    let Some(timeout) = timeout else {
        return Some(function(&item));
    };
    let (sender, receiver) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("pyper-remote-call".into())
        .spawn({
            let function = Arc::clone(function);
            move || {
                let reply = function(&item);
                let _ = sender.send((reply, thread_cpu_time()));
            }
        });
    if spawned.is_err() {
        return Some(Reply::Failed(vec![
            "cannot start a thread for the call".into()
        ]));
    }
    let (reply, cpu) = receiver.recv_timeout(timeout).ok()?;
    CALLS_ELSEWHERE_CPU.with(|total| total.set(total.get() + cpu.unwrap_or_default()));
    Some(reply)
}

thread_local! {
    /// The CPU time of the calls this thread ran on threads of their own (to time them
    /// out), which its own CPU clock does not count.
    static CALLS_ELSEWHERE_CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// The CPU time the calling thread spent, its calls on threads of their own included.
fn calls_cpu_time() -> Option<Duration> {
    Some(thread_cpu_time()? + CALLS_ELSEWHERE_CPU.with(std::cell::Cell::get))
}

/// Tells the server, every `every`, that the items this thread holds are still being
/// worked on, so they are not given to another worker while a long one runs.
async fn progress_acks(client: async_nats::Client, held: Held, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(30)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let subjects: Vec<_> = held
            .lock()
            .expect("never poisoned")
            .iter()
            .cloned()
            .collect();
        for subject in subjects {
            let _ = client.publish(subject, "+WPI".into()).await;
        }
    }
}
