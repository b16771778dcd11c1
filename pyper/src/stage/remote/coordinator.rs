//! The coordinator's side of a remote stage: it makes the run's streams, pumps the stage's
//! input into one, collects outcomes from the other, watches for dead letters, and
//! removes everything from the server when the run ends, however it ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::body::RemoteFn;
use super::cluster::DeadLetter;
use super::envelope::{self, Item, ItemEnvelope, Outcome, OutcomeEnvelope};
use super::lease::{self, Sweeper};
use super::nats::{block_on, dead_letter, dead_letter_stream, fetch, host_name, publish, redacted};
use super::setup::{
    in_stream, in_subject, out_stream, out_subject, python_fingerprint, solo_id, starts_subject,
    Callee, Setup, ANNOUNCE, CONSUMER, STOP, VERSION,
};
use crate::engine::batch::{Collect, Fault, Halt};
use crate::engine::meter::{RemoteGauges, StageKind, WorkerMeter};
use crate::engine::queue::{Receiver, Sender};
use crate::engine::run::Close;
use crate::engine::run::RunState;
use crate::engine::sync::Arc;
use crate::error::{BoxError, Error};
use crate::stage::launch::Launch;
use crate::stage::policy::TimedOut;
use crate::stage::wire::RemoteError;

/// How many messages the coordinator has published and not yet seen acknowledged, at most.
const PUBLISH_WINDOW: usize = 64;
/// How many outcome messages the coordinator takes from the server at once, at most.
const COLLECT_BATCH: usize = 64;
/// The most items one message carries.
const MAX_BATCH: usize = 1024;
/// How much work one message should carry: quick items go many to a message, slow ones
/// few, so that they spread over the workers. The server's work is per message (about 0.5
/// ms of its CPU per message and its outcome, with the pulls): 20 ms of work keeps that
/// under 3% of the work, and the last message's tail short.
const BATCH_TIME: Duration = Duration::from_millis(20);
/// How many items may be out before the first outcome says how long an item takes: sent
/// one to a message, so slow items spread over the workers from the start.
const FIRST_WINDOW: u64 = 32;
/// What a message carries besides its items' bytes, at most: the envelope's own fields,
/// its headers (the dedup id, the item count) and the subject.
const MESSAGE_OVERHEAD: usize = 1024;
/// What each item adds to a message besides its bytes: its index and length.
const ITEM_OVERHEAD: usize = 20;
/// How many times an item that ran out of deliveries without being started (held by
/// workers that died of another item) is sent again before it is dead-lettered anyway.
const MAX_RESCUES: u32 = 3;

/// Starts the coordinator of a remote stage: one thread, driving its work on pyper's
/// runtime.
pub(crate) fn launch<I, O>(body: &RemoteFn<I, O>, mut stage: Launch<'_, I, O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let meter = stage.meter(StageKind::Remote);
    let gauges = meter.remote_gauges();
    let (stop, stopped) = watch::channel(false);
    stage.launcher.state.register(Box::new(StopSignal(stop)));
    let cluster = &body.cluster.inner;
    let spec = stage.spec;
    let id = run_id();
    let setup = Setup {
        version: VERSION,
        id: id.clone(),
        stage: stage.name.to_string(),
        build: match &body.function {
            Callee::Registered(_) => cluster.build.to_owned(),
            Callee::Python(_) => python_fingerprint(),
        },
        function: body.function.clone(),
        slots: spec.workers,
        timeout_nanos: spec.faults.timeout.map(|t| t.as_nanos() as u64),
        retries: spec.faults.retries,
        backoff: spec.faults.backoff,
        ack_wait_nanos: cluster.ack_wait.as_nanos() as u64,
        lease_nanos: cluster.lease.as_nanos() as u64,
    };
    let coordinator = Coordinator {
        name: Arc::clone(&stage.name),
        run: Arc::clone(&stage.launcher.state),
        body: body.clone(),
        setup,
        throttle: spec.throttle,
        ordered: spec.ordered,
        meter: meter.worker(),
        gauges,
        seen: Mutex::new(Seen::default()),
        published: AtomicU64::new(0),
        numbered: AtomicU64::new(0),
        released: AtomicU64::new(0),
        progress: tokio::sync::Notify::new(),
        item_nanos: AtomicU64::new(0),
        max_payload: cluster.client.server_info().max_payload,
    };
    let (input, output) = (stage.input.clone(), stage.output.clone());
    stage.spawn_thread(1, move || {
        let runtime = match crate::engine::runtime::handle() {
            Ok(runtime) => runtime,
            Err(error) => {
                return coordinator
                    .run
                    .fail(Error::failed(&coordinator.name, None, error))
            }
        };
        let coordinator = Arc::new(coordinator);
        let run = Arc::clone(&coordinator.run);
        let result = block_on(
            &runtime,
            Arc::clone(&coordinator).coordinate(input, output, stopped),
        );
        // Reported before the output queue's last handle goes: see `engine::run`.
        if let Err(error) = result {
            run.fail(error);
        }
    });
}

/// What a run's streams and subscriptions are, once made: the outcome consumer, the dead
/// letter advisories, the workers' starts on redeliveries, and the lease's requests.
type Prepared = (
    consumer::PullConsumer,
    async_nats::Subscriber,
    async_nats::Subscriber,
    async_nats::Subscriber,
);

/// Removes the streams of other runs whose coordinators are gone, every few seconds, for as
/// long as this run goes: workers do too, but there may be none.
async fn sweep(cluster: &super::cluster::Inner) {
    let mut sweeper = Sweeper::default();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for id in sweeper.sweep(&cluster.client, &cluster.jetstream).await {
            tracing::info!(run = %id, "deleted the streams of a run whose program is gone");
        }
    }
}

/// What a cancel of the run tells the coordinator.
struct StopSignal(watch::Sender<bool>);

impl Close for StopSignal {
    fn close(&self) {
        self.0.send_replace(true);
    }
}

/// A fresh id for one stage's run: unique across hosts and time, and a valid part of a
/// stream name.
fn run_id() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let host = host_name();
    let mut hash = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(host, std::process::id(), nanos), &mut hash);
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{count:x}", std::hash::Hasher::finish(&hash))
}

struct Coordinator<I, O> {
    name: Arc<str>,
    run: Arc<RunState>,
    body: RemoteFn<I, O>,
    setup: Setup,
    throttle: usize,
    /// Whether outputs leave in the order of their items.
    ordered: bool,
    meter: Option<Arc<WorkerMeter>>,
    gauges: Option<Arc<RemoteGauges>>,
    seen: Mutex<Seen>,
    /// How many items were handed to the server.
    published: AtomicU64,
    /// How many items were numbered to be sent: every outcome's index is below it.
    numbered: AtomicU64,
    /// How many items are done with: their outputs handed on (in order, for an ordered
    /// stage). What is sent and not released is what the throttle bounds.
    released: AtomicU64,
    /// Told when outcomes arrive: the pump may have room again.
    progress: tokio::sync::Notify,
    /// How long an item takes in a worker, smoothed; 0 until the first outcome says.
    item_nanos: AtomicU64,
    /// The most bytes the server takes in one message (`max_payload`, which it says when
    /// the client connects).
    max_payload: usize,
}

/// The items whose outcome has arrived: one bit each.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    count: u64,
}

impl Seen {
    /// Records `seq`; false if it was already recorded.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        self.count += u64::from(fresh);
        fresh
    }

    fn contains(&self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        word < self.bits.len() && self.bits[word] & (1 << (seq % 64)) != 0
    }
}

impl<I: Send + 'static, O: Send + 'static> Coordinator<I, O> {
    async fn coordinate(
        self: Arc<Self>,
        input: Receiver<I>,
        output: Sender<O>,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let cluster = Arc::clone(&self.body.cluster.inner);
        let js = cluster.jetstream.clone();
        let (total, total_known) = watch::channel(None);
        let result = match self.prepare(&cluster).await {
            Err(error) => Err(Halt::Failed(error)),
            Ok((work, advisories, starts, alive)) => {
                tokio::select! {
                    biased;
                    _ = stopped.wait_for(|stop| *stop) => Err(Halt::Stop),
                    () = lease::hold(cluster.client.clone(), alive) => Ok(()),
                    () = sweep(&cluster) => Ok(()),
                    result = self.dead_letters(advisories, starts) => result,
                    result = self.watch_depth(&js) => result,
                    // The first of the two to fail ends both: the collector would otherwise
                    // wait for ever for the outcomes of items never sent.
                    result = async {
                        tokio::try_join!(
                            self.pump(&js, &input, total),
                            self.collect(work, &output, total_known),
                        )
                        .map(drop)
                    } => result,
                }
            }
        };
        self.clean_up(&cluster).await;
        if let (Ok(()), Some(gauges)) = (&result, &self.gauges) {
            // A complete run's queue is empty, whatever the last reading said.
            gauges.queue_depth.store(0, Ordering::Relaxed);
        }
        match result {
            Ok(()) | Err(Halt::Stop) => Ok(()),
            Err(Halt::Failed(error)) => Err(error),
        }
    }

    /// Makes the run's streams and consumers, listens for dead letters, and announces
    /// the run to the workers.
    async fn prepare(&self, cluster: &super::cluster::Inner) -> Result<Prepared, Error> {
        let js = &cluster.jetstream;
        let id = &self.setup.id;
        let fail = |doing: &str, error: &dyn std::fmt::Display| {
            Error::failed(&self.name, None, format!("cannot {doing}: {error}").into())
        };
        let description =
            serde_json::to_string(&self.setup).map_err(|error| fail("describe the run", &error))?;
        let stream_config =
            |name: String, subject: String, description: Option<String>| stream::Config {
                name,
                subjects: vec![subject],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                // The server keeps every message id of the window in memory: at thousands
                // of items a second, the default two minutes is most of its memory. Twice
                // `ack_wait` still covers a worker's re-publish of an output after its item
                // was redelivered; the coordinator's one bit per item is the final word.
                duplicate_window: duplicate_window(cluster.ack_wait),
                description,
                ..Default::default()
            };
        let consumer_config = |max_deliver: i64| consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: cluster.ack_wait,
            max_deliver,
            max_ack_pending: -1,
            ..Default::default()
        };
        dead_letter_stream(js)
            .await
            .map_err(|error| fail("make the dead-letter stream", &error))?;
        let advisories = cluster
            .client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{CONSUMER}",
                in_stream(id)
            ))
            .await
            .map_err(|error| fail("listen for dead letters", &error))?;
        let starts = cluster
            .client
            .subscribe(starts_subject(id))
            .await
            .map_err(|error| fail("listen for items started again", &error))?;
        // The lease is held from before the streams exist: a sweeper never finds them
        // without their coordinator.
        let alive = cluster
            .client
            .subscribe(lease::alive_subject(id))
            .await
            .map_err(|error| fail("hold the run's lease", &error))?;
        let outcomes = js
            .create_stream(stream_config(out_stream(id), out_subject(id), None))
            .await
            .map_err(|error| fail("make the run's outcome stream", &error))?;
        let work = outcomes
            .create_consumer(consumer_config(-1))
            .await
            .map_err(|error| fail("make the run's outcome consumer", &error))?;
        let items = js
            .create_stream(stream_config(
                in_stream(id),
                in_subject(id),
                Some(description),
            ))
            .await
            .map_err(|error| fail("make the run's item stream", &error))?;
        items
            .create_consumer(consumer_config(i64::from(cluster.max_deliver)))
            .await
            .map_err(|error| fail("make the run's item consumer", &error))?;
        // Workers also look for runs every second; this makes them start at once.
        let _ = cluster.client.publish(ANNOUNCE, in_stream(id).into()).await;
        Ok((work, advisories, starts, alive))
    }

    /// Publishes the stage's input into the item stream, as many items to a message as
    /// fit (see [`Coordinator::batch_size`]), each message until the server acknowledges
    /// it, then says how many items there were. At most `throttle` items are out (published
    /// and without an outcome) at once: that bounds what the server holds for the run.
    async fn pump(
        &self,
        js: &jetstream::Context,
        input: &Receiver<I>,
        total: watch::Sender<Option<u64>>,
    ) -> Result<(), Halt> {
        let subject = in_subject(&self.setup.id);
        let mut batch = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut count = 0u64;
        let limit = self.max_payload.saturating_sub(MESSAGE_OVERHEAD).max(1);
        loop {
            let room = loop {
                // Registered before the count is read, so an outcome in between wakes it.
                let progressed = self.progress.notified();
                let out = count - self.released.load(Ordering::Acquire);
                let room = self.window().saturating_sub(out);
                if room > 0 {
                    break room;
                }
                tokio::select! {
                    _ = progressed => {}
                    // Publishes in flight may be what the outcomes wait for.
                    Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                        self.published(result)?;
                    }
                }
            };
            let most = self.batch_size().min(room.try_into().unwrap_or(usize::MAX));
            // With no item out, every worker thread of the stage waits with this pop.
            let idle = count == self.released.load(Ordering::Acquire);
            let waited = self
                .gauges
                .as_ref()
                .filter(|_| idle)
                .map(|_| Instant::now());
            let popped = input.pop_batch_async(&mut batch, most).await;
            if let (Some(gauges), Some(waited)) = (&self.gauges, waited) {
                let starved = waited.elapsed().as_nanos() as u64;
                gauges.starved_nanos.fetch_add(starved, Ordering::Relaxed);
            }
            let Some(first) = popped else {
                break;
            };
            let mut items = Vec::with_capacity(batch.len());
            let mut bytes = 0;
            for (seq, item) in (first..).zip(batch.drain(..)) {
                let item = (self.body.encode)(&item)
                    .map_err(|error| Halt::Failed(Error::failed(&self.name, Some(seq), error)))?;
                if item.len() + ITEM_OVERHEAD > limit {
                    return Err(Halt::Failed(Error::failed(
                        &self.name,
                        Some(seq),
                        too_big(item.len(), self.max_payload),
                    )));
                }
                if !items.is_empty() && bytes + item.len() + ITEM_OVERHEAD > limit {
                    self.numbered.store(count, Ordering::Release);
                    in_flight.push(self.publish_items(js, &subject, std::mem::take(&mut items)));
                    bytes = 0;
                }
                bytes += item.len() + ITEM_OVERHEAD;
                items.push(Item { seq, bytes: item });
                count += 1;
            }
            self.numbered.store(count, Ordering::Release);
            if !items.is_empty() {
                in_flight.push(self.publish_items(js, &subject, items));
            }
            while in_flight.len() >= PUBLISH_WINDOW {
                self.published(in_flight.next().await.expect("not empty"))?;
            }
        }
        if self.run.is_cancelled() {
            return Err(Halt::Stop);
        }
        while let Some(result) = in_flight.next().await {
            self.published(result)?;
        }
        total.send_replace(Some(count));
        Ok(())
    }

    /// Publishes one message of `items`, until the server has it; gives how many items.
    fn publish_items<'a>(
        &'a self,
        js: &'a jetstream::Context,
        subject: &str,
        items: Vec<Item>,
    ) -> impl std::future::Future<Output = Result<u64, Error>> + 'a {
        let count = items.len() as u64;
        let id = format!("{}.in.{}", self.setup.id, items[0].seq);
        let envelope = envelope::encode(&ItemEnvelope::V2 { items });
        let subject = subject.to_owned();
        async move {
            let stopped = || self.run.is_cancelled();
            publish(
                js,
                subject,
                id,
                envelope.into(),
                count,
                &self.name,
                &stopped,
            )
            .await?;
            Ok(count)
        }
    }

    /// How many items may be out at once: the stage's throttle, and fewer until the first
    /// outcome says how long items take.
    fn window(&self) -> u64 {
        let throttle = match self.throttle {
            0 => u64::MAX,
            n => n as u64,
        };
        match self.item_nanos.load(Ordering::Relaxed) {
            0 => throttle.min(FIRST_WINDOW),
            _ => throttle,
        }
    }

    /// How many items go in one message: one until the first outcome says how long items
    /// take, then enough for [`BATCH_TIME`] of work, at most [`MAX_BATCH`] and the
    /// throttle.
    fn batch_size(&self) -> usize {
        let most = match self.throttle {
            0 => MAX_BATCH,
            n => n.min(MAX_BATCH),
        };
        match self.item_nanos.load(Ordering::Relaxed) {
            0 => 1,
            nanos => ((BATCH_TIME.as_nanos() as u64 / nanos) as usize).clamp(1, most),
        }
    }

    fn published(&self, result: Result<u64, Error>) -> Result<(), Halt> {
        let count = result.map_err(Halt::Failed)?;
        self.published.fetch_add(count, Ordering::Relaxed);
        if let Some(meter) = &self.meter {
            meter.items_in.add(count);
        }
        Ok(())
    }

    /// Takes outcomes from the outcome stream and hands the outputs on, each item's once,
    /// until every item published has one.
    async fn collect(
        &self,
        work: consumer::PullConsumer,
        output: &Sender<O>,
        total: watch::Receiver<Option<u64>>,
    ) -> Result<(), Halt> {
        let mut outputs = Vec::new();
        // For an ordered stage: the outputs of items that came before their turn.
        let mut early: BTreeMap<u64, Vec<O>> = BTreeMap::new();
        let mut next = 0u64;
        loop {
            let done = total
                .borrow()
                .is_some_and(|total| self.seen.lock().expect("never poisoned").count >= total);
            if done {
                return Ok(());
            }
            let messages = match fetch(&work, COLLECT_BATCH, Duration::from_millis(50)).await {
                Ok(messages) => messages,
                Err(_) => {
                    // The server restarts, say: the client reconnects by itself.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            for message in &messages {
                let envelope: OutcomeEnvelope = envelope::decode(&message.payload, "an outcome")
                    .map_err(|why| Halt::Failed(Error::failed(&self.name, None, why.into())))?;
                let OutcomeEnvelope::V2 {
                    host,
                    pid,
                    delivered,
                    busy_nanos,
                    cpu_nanos,
                    outcomes,
                } = envelope
                else {
                    let why = "a worker sent a retired kind of outcome";
                    return Err(Halt::Failed(Error::failed(&self.name, None, why.into())));
                };
                self.learn_item_time(busy_nanos, outcomes.len());
                if let Some(gauges) = &self.gauges {
                    if delivered > 1 {
                        gauges.redeliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    let (busy, cpu) = (
                        Duration::from_nanos(busy_nanos),
                        Duration::from_nanos(cpu_nanos),
                    );
                    gauges.outcome_from(host, pid, busy, cpu);
                }
                for (seq, outcome) in outcomes {
                    // Only an item that was sent has an outcome: anything else (a message
                    // of this run's a worker could not read, or a forged one) fails the
                    // run, and never makes the bitmap grow.
                    if seq >= self.numbered.load(Ordering::Acquire) {
                        let why = match outcome {
                            Outcome::Failed(chain) | Outcome::Raised { chain, .. } => {
                                chain.join(": ")
                            }
                            _ => format!("an outcome for item {seq}, which was never sent"),
                        };
                        return Err(Halt::Failed(Error::failed(&self.name, None, why.into())));
                    }
                    if !self.seen.lock().expect("never poisoned").insert(seq) {
                        continue;
                    }
                    if !self.ordered {
                        self.outcome(seq, outcome, &mut outputs)?;
                        next += 1;
                        continue;
                    }
                    let mut these = Vec::new();
                    self.outcome(seq, outcome, &mut these)?;
                    early.insert(seq, these);
                    while let Some(these) = early.remove(&next) {
                        outputs.extend(these);
                        next += 1;
                    }
                }
            }
            let handed = outputs.len() as u64;
            let waited = self.gauges.as_ref().map(|_| Instant::now());
            if output.push_all_async(&mut outputs).await.is_err() {
                return Err(Halt::Stop);
            }
            if let (Some(gauges), Some(waited)) = (&self.gauges, waited) {
                let blocked = waited.elapsed().as_nanos() as u64;
                gauges.blocked_nanos.fetch_add(blocked, Ordering::Relaxed);
            }
            self.released.store(next, Ordering::Release);
            self.progress.notify_one();
            if let Some(meter) = &self.meter {
                meter.items_out.add(handed);
            }
            for message in messages {
                let _ = message.ack().await;
            }
        }
    }

    /// Folds the time a message's items took into the smoothed time per item.
    fn learn_item_time(&self, busy_nanos: u64, items: usize) {
        if items == 0 {
            return;
        }
        let sample = (busy_nanos / items as u64).max(1);
        let old = self.item_nanos.load(Ordering::Relaxed);
        let new = match old {
            0 => sample,
            old => (old * 3 + sample) / 4,
        };
        self.item_nanos.store(new.max(1), Ordering::Relaxed);
    }

    /// Turns one item's outcome into its outputs, or into the run's error.
    fn outcome(&self, seq: u64, outcome: Outcome, outputs: &mut Vec<O>) -> Result<(), Halt> {
        let name = &self.name;
        let error = match outcome {
            Outcome::Done(bytes) => {
                let mut collect = Collect {
                    items: std::mem::take(outputs),
                    run: &self.run,
                };
                let result = (self.body.decode)(bytes, &mut collect);
                *outputs = collect.items;
                return match result {
                    Ok(()) => Ok(()),
                    Err(Fault::Stop) => Err(Halt::Stop),
                    Err(Fault::Failed(error)) => {
                        Err(Halt::Failed(Error::failed(name, Some(seq), error)))
                    }
                };
            }
            Outcome::Failed(chain) => {
                Error::failed(name, Some(seq), Box::new(RemoteError::from_worker(chain)))
            }
            Outcome::Raised { chain, exception } => {
                Error::failed(name, Some(seq), (self.body.raised)(chain, exception))
            }
            Outcome::Panicked(message) => Error::panicked(name, Some(seq), Box::new(message)),
            Outcome::TimedOut(nanos) => Error::failed(
                name,
                Some(seq),
                Box::new(TimedOut::new(Duration::from_nanos(nanos))),
            ),
        };
        Err(Halt::Failed(error))
    }

    /// Waits for the server to say an item was delivered too often, then dead-letters it
    /// and fails the run, naming it; an item that has its outcome after all is let be.
    async fn dead_letters(
        &self,
        mut advisories: async_nats::Subscriber,
        mut starts: async_nats::Subscriber,
    ) -> Result<(), Halt> {
        #[derive(serde::Deserialize)]
        struct Advisory {
            stream_seq: u64,
            deliveries: u64,
        }
        let js = &self.body.cluster.inner.jetstream;
        // How many times a worker started each item on a redelivery, and how many times
        // each item was sent again after it ran out of deliveries without being started.
        let mut started: HashMap<u64, u64> = HashMap::new();
        let mut rescued: HashMap<u64, u32> = HashMap::new();
        loop {
            let message = tokio::select! {
                Some(start) = starts.next() => {
                    if let Some(seq) = start.payload.get(..8).and_then(|b| b.try_into().ok()) {
                        *started.entry(u64::from_le_bytes(seq)).or_default() += 1;
                    }
                    continue;
                }
                message = advisories.next() => match message {
                    Some(message) => message,
                    None => return std::future::pending().await,
                },
            };
            let Ok(advisory) = serde_json::from_slice::<Advisory>(&message.payload) else {
                continue;
            };
            let items = js.get_stream_no_info(in_stream(&self.setup.id)).await;
            let stored = match items {
                Ok(items) => items.get_raw_message(advisory.stream_seq).await,
                Err(_) => continue,
            };
            let Ok(stored) = stored else { continue };
            let Ok(ItemEnvelope::V2 { items }) = envelope::decode(&stored.payload, "an item")
            else {
                continue;
            };
            let unseen: Vec<Item> = {
                let seen = self.seen.lock().expect("never poisoned");
                items
                    .into_iter()
                    .filter(|item| !seen.contains(item.seq))
                    .collect()
            };
            if unseen.len() > 1 {
                // A message of several items, delivered too often: its items go on in
                // messages of one each, as a worker splits a redelivered message (with
                // the same dedup ids, so a split done twice adds nothing). The one that
                // kills its workers then reaches the limit alone.
                self.split(js, unseen, "solo").await?;
                continue;
            }
            let Some(item) = unseen.into_iter().next() else {
                continue;
            };
            let seq = item.seq;
            // An item is to blame only if a worker started it on every delivery (workers say
            // so before they start the item of a message of one, and put a redelivered
            // item's outcome on the server before they start anything else). An item that
            // ran out of deliveries held by workers that died of another is not: it goes
            // again, a few times at most.
            let starts = started.get(&seq).copied().unwrap_or(0);
            let again = rescued.entry(seq).or_default();
            if starts < advisory.deliveries && *again < MAX_RESCUES {
                *again += 1;
                let tag = format!("again{again}");
                self.split(js, vec![item], &tag).await?;
                continue;
            }
            let reason = DeadLetter::new(advisory.deliveries);
            dead_letter(js, &self.setup, seq, &reason.to_string(), stored.payload).await;
            return Err(Halt::Failed(Error::failed(
                &self.name,
                Some(seq),
                Box::new(reason),
            )));
        }
    }

    /// Publishes each of `items` as a message of its own, with dedup ids tagged `tag`.
    async fn split(
        &self,
        js: &jetstream::Context,
        items: Vec<Item>,
        tag: &str,
    ) -> Result<(), Halt> {
        let subject = in_subject(&self.setup.id);
        let stopped = || self.run.is_cancelled();
        let mut in_flight = FuturesUnordered::new();
        for item in items {
            let id = solo_id(&self.setup.id, item.seq, tag);
            let envelope = envelope::encode(&ItemEnvelope::V2 { items: vec![item] });
            let subject = subject.clone();
            in_flight.push(publish(
                js,
                subject,
                id,
                envelope.into(),
                1,
                &self.name,
                &stopped,
            ));
        }
        while let Some(result) = in_flight.next().await {
            result.map_err(Halt::Failed)?;
        }
        Ok(())
    }

    /// Reads the depth of the item stream into the metrics, a few times a second, and
    /// watches for items that no worker takes: said once after the cluster's
    /// `no_worker_notice`, and a failure after its `fail_without_workers`, if set.
    async fn watch_depth(&self, js: &jetstream::Context) -> Result<(), Halt> {
        let cluster = &self.body.cluster.inner;
        let mut unserved_since: Option<std::time::Instant> = None;
        let mut said = false;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(mut consumer) = js
                .get_consumer_from_stream::<consumer::pull::Config, _, _>(
                    CONSUMER,
                    in_stream(&self.setup.id),
                )
                .await
            else {
                continue;
            };
            let Ok(info) = consumer.info().await else {
                continue;
            };
            // Waiting, and not one held by a worker: nobody is taking items.
            let unserved = info.num_pending > 0 && info.num_ack_pending == 0;
            let since = match (unserved, unserved_since) {
                (false, _) => {
                    unserved_since = None;
                    said = false;
                    None
                }
                (true, None) => Some(*unserved_since.insert(std::time::Instant::now())),
                (true, Some(since)) => Some(since),
            }
            .map(|since| since.elapsed());
            if let Some(gauges) = &self.gauges {
                let depth = info.num_pending + info.num_ack_pending as u64;
                gauges.queue_depth.store(depth, Ordering::Relaxed);
                gauges
                    .server_redeliveries
                    .store(info.num_redelivered as u64, Ordering::Relaxed);
                let waited = since.map_or(0, |waited| waited.as_millis().max(1) as u64);
                gauges.unserved_ms.store(waited, Ordering::Relaxed);
            }
            let Some(waited) = since else { continue };
            if !said && waited >= cluster.notice_after {
                said = true;
                tracing::warn!(
                    stage = %self.name,
                    waiting = info.num_pending,
                    "no worker has taken an item of stage `{}` for {:.0} s: start workers \
                     (`--pyper-worker URL`) of this very build",
                    self.name,
                    waited.as_secs_f64()
                );
            }
            if cluster.fail_after.is_some_and(|after| waited >= after) {
                let why: BoxError = format!(
                    "no worker took an item for {:.0} s ({} waiting): start workers with \
                     `--pyper-worker {}` (of this very build), or allow longer with \
                     `Cluster::fail_without_workers`",
                    waited.as_secs_f64(),
                    info.num_pending,
                    redacted(&cluster.url)
                )
                .into();
                return Err(Halt::Failed(Error::failed(&self.name, None, why)));
            }
        }
    }

    /// Deletes the run's streams, with their consumers, and tells the workers the run is
    /// over. Bounded in time, so a server that is gone cannot hold the run up.
    async fn clean_up(&self, cluster: &super::cluster::Inner) {
        let id = &self.setup.id;
        let js = &cluster.jetstream;
        let work = async {
            for name in [in_stream(id), out_stream(id)] {
                for _ in 0..50 {
                    match js.delete_stream(&name).await {
                        Ok(_) => break,
                        Err(error) if is_not_found(&error) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            let _ = cluster.client.publish(STOP, id.clone().into()).await;
            let _ = cluster.client.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
    }
}

fn is_not_found(error: &jetstream::context::DeleteStreamError) -> bool {
    use std::error::Error as _;
    let code = error
        .source()
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(|error| error.error_code());
    code == Some(jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// How long the server remembers message ids to drop duplicate publishes: twice the time
/// after which an unacknowledged item is redelivered, and at least 10 s.
fn duplicate_window(ack_wait: Duration) -> Duration {
    (ack_wait * 2).max(Duration::from_secs(10))
}

/// Why an item of `bytes` bytes cannot go to the workers.
fn too_big(bytes: usize, max_payload: usize) -> BoxError {
    format!(
        "the item is {bytes} bytes encoded, and a message to the workers carries at most \
         {} (the NATS server's max_payload, {max_payload} bytes, less what the message itself \
         needs): raise max_payload in the server's configuration (up to 64 MiB), or send \
         the item's data another way (a shared store) and its key through the stage",
        max_payload.saturating_sub(MESSAGE_OVERHEAD + ITEM_OVERHEAD)
    )
    .into()
}
