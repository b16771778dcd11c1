//! No stray streams: a run's streams go when its coordinator is gone, however it went.
//!
//! A coordinator holds a lease on its run by answering on the run's liveness subject,
//! `pyper.alive.<id>`, for as long as it lives. The server drops a client's subscriptions
//! when its connection goes (at once for a process that is killed, within the server's
//! ping interval for a host that vanishes), and a request on a subject nobody listens on
//! is answered "no responders" by the server itself: no clock of any host is involved.
//!
//! Anyone may sweep: every worker, once a second, and every coordinator, while its run
//! goes. A sweeper asks each run on the server whether its coordinator is there; a run
//! whose coordinator has had no responder for the run's whole lease (its `lease`, in its
//! setup; [`DEFAULT_LEASE`] if the setup cannot be read) loses its streams. The wait
//! covers a server restart, after which a live coordinator takes a moment to subscribe
//! again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

use super::setup::{in_stream, out_stream, Setup, STREAM_PREFIX};

/// How long a run's coordinator may go unheard before its streams are deleted, unless the
/// cluster says otherwise.
pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The subject a run's coordinator answers on while it lives.
pub(super) fn alive_subject(id: &str) -> String {
    format!("pyper.alive.{id}")
}

/// Answers every liveness request of a run, for as long as the run goes.
pub(super) async fn hold(client: async_nats::Client, mut requests: async_nats::Subscriber) {
    while let Some(request) = requests.next().await {
        if let Some(reply) = request.reply {
            let _ = client.publish(reply, bytes::Bytes::new()).await;
        }
    }
    std::future::pending::<()>().await;
}

/// When each run was first found without a coordinator, by run id: what a sweeper
/// remembers between sweeps.
#[derive(Default)]
pub(super) struct Sweeper {
    unheard: HashMap<String, Instant>,
}

impl Sweeper {
    /// Asks each run on the server for its coordinator, and deletes the streams of those
    /// whose coordinator has been gone for their whole lease. Returns the ids of the runs
    /// it removed.
    pub(super) async fn sweep(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        let mut names = js.stream_names();
        while let Some(Ok(name)) = names.next().await {
            let id = name
                .strip_prefix(STREAM_PREFIX)
                .and_then(|rest| rest.strip_suffix("_IN"));
            if let Some(id) = id {
                ids.push(id.to_owned());
            }
        }
        self.unheard.retain(|id, _| ids.contains(id));
        let mut removed = Vec::new();
        for id in ids {
            let asked = client.request(alive_subject(&id), bytes::Bytes::new());
            let gone = match tokio::time::timeout(Duration::from_secs(2), asked).await {
                Ok(Err(error)) => {
                    error.kind() == async_nats::client::RequestErrorKind::NoResponders
                }
                // An answer, or a slow one: someone holds the lease.
                Ok(Ok(_)) | Err(_) => false,
            };
            if !gone {
                self.unheard.remove(&id);
                continue;
            }
            let since = *self.unheard.entry(id.clone()).or_insert_with(Instant::now);
            if since.elapsed() < lease_of(js, &id).await {
                continue;
            }
            for stream in [in_stream(&id), out_stream(&id)] {
                let _ = js.delete_stream(stream).await;
            }
            self.unheard.remove(&id);
            removed.push(id);
        }
        removed
    }
}

/// The lease of run `id`, from its setup.
async fn lease_of(js: &jetstream::Context, id: &str) -> Duration {
    let Ok(mut stream) = js.get_stream(in_stream(id)).await else {
        return DEFAULT_LEASE;
    };
    let Ok(info) = stream.info().await else {
        return DEFAULT_LEASE;
    };
    let description = info.config.description.clone().unwrap_or_default();
    serde_json::from_str::<Setup>(&description)
        .map(|setup| Duration::from_nanos(setup.lease_nanos))
        .unwrap_or(DEFAULT_LEASE)
}
