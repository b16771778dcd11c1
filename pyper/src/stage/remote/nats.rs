//! The NATS helpers every side of a remote run uses: connecting, publishing until the
//! server has a message, pulling with a bound in time, the dead-letter stream, and
//! blocking on pyper's runtime from a thread outside it. A leaf of the remote kind.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::security::{split_credentials, Security};
use super::setup::{Setup, STREAM_PREFIX};
use crate::error::{BoxError, Error};

/// How long a publish may keep failing (the server unreachable, say) before the run fails.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// The error code of a publish refused because the stream is full (`max_msgs` with
/// `discard=new`).
const STREAM_FULL: u64 = 10077;

/// Publishes `payload`, a message of `items` items, with the dedup id `id` until the
/// server acknowledges it: a full stream is waited out with a growing back-off, a server
/// away (a restart) is waited for up to [`GIVE_UP_AFTER`]. Publishing again is safe: the
/// id makes the server drop a copy. The item count goes in the `Pyper-Items` header, for
/// whoever inspects the streams.
///
/// `stopped` says whether the run is over, which ends the attempts (with an error).
pub(super) async fn publish(
    js: &jetstream::Context,
    subject: String,
    id: String,
    payload: Bytes,
    items: u64,
    stage: &str,
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<(), Error> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Pyper-Items", items.to_string().as_str());
    let mut backoff = Duration::from_micros(500);
    let mut failing_since = None;
    loop {
        if stopped() {
            let why: BoxError = "the run is over".into();
            return Err(Error::failed(stage, None, why));
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .headers(headers.clone())
            .message_id(id.as_str());
        let sent = js.send_publish(subject.clone(), message).await;
        let result = match sent {
            Ok(ack) => ack.await.map(drop),
            Err(error) => Err(error),
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if publish_error_code(&error) == Some(STREAM_FULL) {
            // Backpressure: the stream holds `throttle` items. Not a failure.
            failing_since = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
            continue;
        }
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > GIVE_UP_AFTER {
            let why: BoxError = format!("cannot publish to {subject}: {error}").into();
            return Err(Error::failed(stage, None, why));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn publish_error_code(error: &jetstream::context::PublishError) -> Option<u64> {
    use std::error::Error as _;
    error
        .source()
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(|error| error.error_code().0)
}

/// Takes up to `max` messages from `consumer`: those ready at once, or else the first to
/// arrive within `wait`.
///
/// Bounded in time: a pull request sent while the server restarts is never answered, and
/// a request without `expires` would wait for ever. A pull that times out is an error, and
/// the caller makes a fresh one.
pub(super) async fn fetch(
    consumer: &consumer::PullConsumer,
    max: usize,
    wait: Duration,
) -> Result<Vec<jetstream::Message>, BoxError> {
    let bound = wait + Duration::from_secs(2);
    match tokio::time::timeout(bound, pull(consumer, max, wait)).await {
        Ok(result) => result,
        Err(_) => Err("a pull request went unanswered".into()),
    }
}

async fn pull(
    consumer: &consumer::PullConsumer,
    max: usize,
    wait: Duration,
) -> Result<Vec<jetstream::Message>, BoxError> {
    let mut messages = Vec::new();
    let mut ready = consumer.fetch().max_messages(max).messages().await?;
    while let Some(message) = ready.next().await {
        messages.push(message?);
    }
    if !messages.is_empty() {
        return Ok(messages);
    }
    let mut next = consumer
        .batch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await?;
    while let Some(message) = next.next().await {
        messages.push(message?);
    }
    Ok(messages)
}

/// Makes the dead-letter stream, unless it is there already.
pub(super) async fn dead_letter_stream(
    js: &jetstream::Context,
) -> Result<(), jetstream::context::CreateStreamError> {
    js.get_or_create_stream(stream::Config {
        name: DEAD_LETTER_STREAM.to_owned(),
        subjects: vec!["pyper.dead.>".to_owned()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map(drop)
}

/// Copies an item to the dead-letter stream, saying why. Best effort: the run's error
/// says the same.
pub(super) async fn dead_letter(
    js: &jetstream::Context,
    setup: &Setup,
    seq: u64,
    reason: &str,
    payload: Bytes,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Pyper-Stage", setup.stage.as_str());
    headers.insert("Pyper-Item", seq.to_string().as_str());
    headers.insert("Pyper-Reason", reason.replace(['\r', '\n'], " ").as_str());
    let message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(format!("{}.dead.{seq}", setup.id));
    if let Ok(ack) = js
        .send_publish(format!("pyper.dead.{}", setup.id), message)
        .await
    {
        let _ = ack.await;
    }
}

/// The names of the streams of runs on the server that end in `suffix`.
pub(super) async fn run_stream_names(
    js: &jetstream::Context,
    suffix: &str,
) -> Result<Vec<String>, BoxError> {
    let mut names = Vec::new();
    let mut listed = js.stream_names();
    while let Some(name) = listed.next().await {
        let name = name?;
        if name.starts_with(STREAM_PREFIX)
            && name != super::DEAD_LETTER_STREAM
            && name.ends_with(suffix)
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// This host's name, for metrics and run ids.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The stream that keeps the items that failed for good: an item whose function failed
/// after its retries, or whose workers kept dying on it. Subjects `pyper.dead.<run id>`;
/// each message is the item's envelope, with the headers `Pyper-Stage`, `Pyper-Item` and
/// `Pyper-Reason`. It is shared by all runs and kept for a week.
///
/// ```
/// assert_eq!(pyper::DEAD_LETTER_STREAM, "PYPER_DEAD_LETTERS");
/// ```
pub const DEAD_LETTER_STREAM: &str = "PYPER_DEAD_LETTERS";

/// Connects to `url`, failing clearly if the server cannot be reached, or, with
/// `patient`, waiting until it can be (a worker started before its server).
pub(super) async fn connect(
    url: String,
    patient: bool,
    security: &Security,
) -> Result<async_nats::Client, Error> {
    let options = security.with_url_credentials(&url).options().await?;
    let options = match patient {
        true => options.retry_on_initial_connect(),
        false => options,
    };
    options.connect(url.as_str()).await.map_err(|error| {
        let url = redacted(&url);
        Error::config(None, format!("cannot connect to NATS at {url}: {error}"))
    })
}

/// `url` without the password it may hold (`nats://user:***@host`), for messages.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, credentials, host)) = split_credentials(url) else {
        return url.to_owned();
    };
    let user = credentials.split(':').next().unwrap_or("");
    format!("{scheme}{user}:***@{host}")
}

/// Runs `future` to its end on pyper's runtime from a thread outside it.
pub(super) fn block_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    // A task rather than `Handle::block_on`, so that the future runs on the runtime's
    // threads, whatever thread waits.
    let task = runtime.spawn(future);
    match futures_executor_block_on(task) {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("a task of pyper's runtime was cancelled: {error}"),
    }
}

/// Waits for a future on the current thread, parking it between polls.
fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(value) => return value,
            Poll::Pending => std::thread::park(),
        }
    }
}
