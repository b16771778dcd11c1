//! The public face of remote tasks: the [`Cluster`] handle and the [`DeadLetter`] error.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;

use std::path::PathBuf;

use super::nats::{
    block_on, connect, dead_letter_stream, redacted, run_stream_names, DEAD_LETTER_STREAM,
};
use super::security::Security;
use crate::engine::sync::Arc;
use crate::error::Error;

/// The environment variable that makes a program a remote-task worker: its value is the
/// NATS server's URL, as the `--pyper-worker <url>` argument gives it. (Either way,
/// [`init`](crate::init) must be the first line of `main`.)
///
/// ```no_run
/// // Starts a worker of this very program, as a supervisor on another host would.
/// let exe = std::env::current_exe().unwrap();
/// let worker = std::process::Command::new(exe)
///     .env(pyper::WORKER_ENV, "nats://10.0.0.1:4222")
///     .spawn()
///     .unwrap();
/// ```
pub const WORKER_ENV: &str = "PYPER_WORKER";

/// How long an item may go unacknowledged before the server delivers it again, unless
/// the cluster says otherwise: long enough for a busy worker's progress acks, short
/// enough that the items of a dead worker are not long in coming back.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);

/// How many times an item is delivered before it is dead-lettered, unless the cluster
/// says otherwise.
const DEFAULT_MAX_DELIVER: u32 = 5;

/// After how long with items waiting and no worker taking any a run says so, unless the
/// cluster says otherwise.
const DEFAULT_NOTICE_AFTER: Duration = Duration::from_secs(30);

/// A connection to a NATS server with JetStream, on which [`remote_task!`](crate::remote_task!)s
/// run. (Requires the `remote` feature.)
///
/// The workers are the same executable, started on any host with the server's URL:
/// `my_program --pyper-worker nats://host:4222`, or with [`WORKER_ENV`] set. Their `main`
/// must call [`init`](crate::init) first thing, which makes them serve remote tasks for
/// ever. A handle is cheap to clone; its clones share the connection.
///
/// ```no_run
/// // `no_run`: it needs a NATS server, and workers started beside it.
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// fn main() -> Result<(), pyper::Error> {
///     pyper::init();
///     let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?;
///     let doubled = pyper::remote_task!(&cluster, double).name("double");
///     let total: u64 = doubled.feed(1..=100).map(Result::unwrap).sum();
///     assert_eq!(total, 10_100);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) url: String,
    pub(super) client: async_nats::Client,
    pub(super) jetstream: jetstream::Context,
    pub(super) ack_wait: Duration,
    pub(super) max_deliver: u32,
    /// How long a run's coordinator may go unheard before anyone deletes its streams.
    pub(super) lease: Duration,
    /// After how long with items waiting and no worker taking any a run says so.
    pub(super) notice_after: Duration,
    /// After how long with items waiting and no worker taking any a run fails, if set.
    pub(super) fail_after: Option<Duration>,
    /// This program's build, which a run's workers must share (`build.rs`).
    pub(super) build: &'static str,
}

impl Cluster {
    /// Connects to the NATS server at `url` (`nats://host:4222`, or `host:4222`).
    ///
    /// Fails with a clear [`Error`] if the server cannot be reached or has no JetStream
    /// (start it with `nats-server -js`).
    ///
    /// ```no_run
    /// match pyper::Cluster::connect("nats://127.0.0.1:4222") {
    ///     Ok(cluster) => println!("connected to {}", cluster.url()),
    ///     Err(error) => eprintln!("{error}"), // "cannot connect to NATS at ...: ..."
    /// }
    /// ```
    pub fn connect(url: &str) -> Result<Cluster, Error> {
        Cluster::builder(url).connect()
    }

    /// A cluster to connect to with credentials or TLS: see [`ClusterBuilder`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("nats://10.0.0.1:4222")
    ///     .user_and_password("pipeline", "s3cret")
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str) -> ClusterBuilder {
        ClusterBuilder::new(url)
    }

    pub(super) fn connect_with(url: &str, security: Security) -> Result<Cluster, Error> {
        let runtime = crate::engine::runtime::handle()
            .map_err(|error| Error::config(None, error.to_string()))?;
        let build = super::build::fingerprint().map_err(|why| Error::config(None, why))?;
        let url = url.to_owned();
        let target = url.clone();
        let (client, jetstream) = block_on(&runtime, async move {
            let client = connect(target, false, &security).await?;
            // Inside the runtime: the context starts a task of its own.
            let jetstream = jetstream::new(client.clone());
            // Making the dead-letter stream checks that the server has JetStream.
            dead_letter_stream(&jetstream).await.map_err(|error| {
                Error::config(
                    None,
                    format!(
                        "the NATS server has no JetStream (start it with `nats-server -js`): \
                         {error}"
                    ),
                )
            })?;
            Ok::<_, Error>((client, jetstream))
        })?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                url,
                client,
                jetstream,
                ack_wait: DEFAULT_ACK_WAIT,
                max_deliver: DEFAULT_MAX_DELIVER,
                lease: super::lease::DEFAULT_LEASE,
                notice_after: DEFAULT_NOTICE_AFTER,
                fail_after: None,
                build,
            }),
        })
    }

    /// The build of this program that its runs carry: only workers of the same build
    /// serve them (a worker prints its own when it starts). `build-id:<hex>`, the
    /// executable's ELF build id, or `sha256:<hex>` of the executable where it has none.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?;
    /// println!("runs of build {}", cluster.build());
    /// # Ok(()) }
    /// ```
    pub fn build(&self) -> &str {
        self.inner.build
    }

    /// The URL this handle connected to.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?;
    /// assert_eq!(cluster.url(), "nats://127.0.0.1:4222");
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How long an item may go unacknowledged before the server gives it to another
    /// worker (default 10 s). Workers send progress acks on long items, three times per
    /// `ack_wait`, so this bounds how long the items of a dead worker wait, not how long
    /// an item may take.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?
    ///     .ack_wait(std::time::Duration::from_secs(2));
    /// # Ok(()) }
    /// ```
    pub fn ack_wait(self, ack_wait: Duration) -> Cluster {
        self.with(|inner| inner.ack_wait = ack_wait.max(Duration::from_millis(100)))
    }

    /// How many times an item is delivered to workers before it is dead-lettered and the
    /// run fails with [`DeadLetter`] (default 5, at least 1). Each delivery but the first
    /// follows a worker that died or vanished holding the item.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?.max_deliver(3);
    /// # Ok(()) }
    /// ```
    pub fn max_deliver(self, max_deliver: u32) -> Cluster {
        self.with(|inner| inner.max_deliver = max_deliver.max(1))
    }

    /// How long a run's program may go unheard before its streams are deleted from the
    /// server (default 10 s, at least 1 s): a program that dies (`kill -9`, a crash, a lost
    /// host) leaves no stray streams. The program holds the lease by answering on the
    /// run's liveness subject while it lives; workers, and other programs running remote
    /// stages, delete the streams of a run that has had no answer for its whole lease.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?
    ///     .lease(std::time::Duration::from_secs(30));
    /// # Ok(()) }
    /// ```
    pub fn lease(self, lease: Duration) -> Cluster {
        self.with(|inner| inner.lease = lease.max(Duration::from_secs(1)))
    }

    /// After how long with items waiting and no worker taking any a run says so, once,
    /// through `tracing` (a warning), on the progress bar and in the metrics
    /// ([`RemoteMetrics::unserved`](crate::RemoteMetrics)) (default 30 s). The run goes on:
    /// workers may come later.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?
    ///     .no_worker_notice(std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn no_worker_notice(self, after: Duration) -> Cluster {
        self.with(|inner| inner.notice_after = after)
    }

    /// Fails a run that has had items waiting and no worker taking any for `after`, with
    /// an error that says so (by default a run waits for workers as long as it takes).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?
    ///     .fail_without_workers(std::time::Duration::from_secs(60));
    /// # Ok(()) }
    /// ```
    pub fn fail_without_workers(self, after: Duration) -> Cluster {
        self.with(|inner| inner.fail_after = Some(after))
    }

    fn with(self, change: impl FnOnce(&mut Inner)) -> Cluster {
        let mut inner = Inner {
            url: self.inner.url.clone(),
            client: self.inner.client.clone(),
            jetstream: self.inner.jetstream.clone(),
            ack_wait: self.inner.ack_wait,
            max_deliver: self.inner.max_deliver,
            lease: self.inner.lease,
            notice_after: self.inner.notice_after,
            fail_after: self.inner.fail_after,
            build: self.inner.build,
        };
        change(&mut inner);
        Cluster {
            inner: Arc::new(inner),
        }
    }

    /// The names of the streams of remote-task runs on the server right now (the
    /// dead-letter stream aside): empty when no run is under way. For tests and
    /// monitoring.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::connect("nats://127.0.0.1:4222")?;
    /// assert!(cluster.run_streams()?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn run_streams(&self) -> Result<Vec<String>, Error> {
        let runtime = crate::engine::runtime::handle()
            .map_err(|error| Error::config(None, error.to_string()))?;
        let jetstream = self.inner.jetstream.clone();
        block_on(&runtime, async move {
            let names = run_stream_names(&jetstream, "")
                .await
                .map_err(|error| Error::config(None, format!("cannot list streams: {error}")))?;
            Ok(names)
        })
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &redacted(&self.inner.url))
            .field("ack_wait", &self.inner.ack_wait)
            .field("max_deliver", &self.inner.max_deliver)
            .finish()
    }
}

/// An item that was delivered [`Cluster::max_deliver`] times without ever being
/// acknowledged: each worker that took it died or vanished before it was done. The item
/// is in the [`DEAD_LETTER_STREAM`]; this is the [`source`](std::error::Error::source) of
/// the run's error, which names the item.
///
/// ```
/// let dead = pyper::DeadLetter::new(3);
/// assert_eq!(dead.deliveries(), 3);
/// assert_eq!(
///     dead.to_string(),
///     "the item was delivered 3 times and no worker finished it (each died or vanished \
///      holding it); it is in the dead-letter stream PYPER_DEAD_LETTERS"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    deliveries: u64,
}

impl DeadLetter {
    /// A dead letter after `deliveries` deliveries. Pyper makes these itself; this
    /// constructor is for tests.
    pub fn new(deliveries: u64) -> Self {
        DeadLetter { deliveries }
    }

    /// How many times the item was delivered.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the item was delivered {} times and no worker finished it (each died or \
             vanished holding it); it is in the dead-letter stream {DEAD_LETTER_STREAM}",
            self.deliveries
        )
    }
}

impl std::error::Error for DeadLetter {}

/// A [`Cluster`] to connect to, with credentials and TLS: what a server shared across
/// hosts should require. Made by [`Cluster::builder`]. (Requires the `remote` feature.)
///
/// What the builder leaves unset comes from the environment, the same `PYPER_NATS_*`
/// variables that workers read ([`USER_ENV`](crate::nats_env::USER_ENV) and [`PASSWORD_ENV`](crate::nats_env::PASSWORD_ENV), [`TOKEN_ENV`](crate::nats_env::TOKEN_ENV),
/// [`CREDS_ENV`](crate::nats_env::CREDS_ENV), [`NKEY_ENV`](crate::nats_env::NKEY_ENV), [`TLS_CA_ENV`](crate::nats_env::TLS_CA_ENV), [`TLS_CLIENT_ENV`](crate::nats_env::TLS_CLIENT_ENV), [`TLS_REQUIRED_ENV`](crate::nats_env::TLS_REQUIRED_ENV)),
/// so one environment file can configure a coordinator and its workers alike. A user and
/// password in the URL (`nats://user:password@host:4222`) work too.
///
/// ```no_run
/// # fn main() -> Result<(), pyper::Error> {
/// let cluster = pyper::Cluster::builder("tls://nats.internal:4222")
///     .user_and_password("pipeline", "s3cret")
///     .root_certificates("/etc/pyper/ca.pem")
///     .connect()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterBuilder {
    url: String,
    security: Security,
}

impl ClusterBuilder {
    pub(super) fn new(url: &str) -> ClusterBuilder {
        ClusterBuilder {
            url: url.to_owned(),
            security: Security::default(),
        }
    }

    /// Connects with a user name and password (the server's `authorization { user,
    /// password }`, or `nats-server --user U --pass P`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("nats://10.0.0.1:4222")
    ///     .user_and_password("pipeline", "s3cret")
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn user_and_password(mut self, user: &str, password: &str) -> ClusterBuilder {
        self.security.user = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Connects with a token (the server's `authorization { token }`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("nats://10.0.0.1:4222").token("t0ken").connect()?;
    /// # Ok(()) }
    /// ```
    pub fn token(mut self, token: &str) -> ClusterBuilder {
        self.security.token = Some(token.to_owned());
        self
    }

    /// Connects with a NATS credentials file (a user JWT and its nkey seed, as `nsc`
    /// makes them).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("tls://nats.internal:4222")
    ///     .credentials_file("/etc/pyper/pipeline.creds")
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> ClusterBuilder {
        self.security.creds_file = Some(path.into());
        self
    }

    /// Connects with the nkey whose seed (`SU…`) is in the file at `path`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("nats://10.0.0.1:4222")
    ///     .nkey_file("/etc/pyper/pipeline.nk")
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn nkey_file(mut self, path: impl Into<PathBuf>) -> ClusterBuilder {
        self.security.nkey_file = Some(path.into());
        self
    }

    /// Refuses to connect without TLS.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("nats.internal:4222").require_tls().connect()?;
    /// # Ok(()) }
    /// ```
    pub fn require_tls(mut self) -> ClusterBuilder {
        self.security.tls_required = true;
        self
    }

    /// Trusts the root certificates in the PEM file at `path` (a private CA), and
    /// requires TLS.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("tls://nats.internal:4222")
    ///     .root_certificates("/etc/pyper/ca.pem")
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn root_certificates(mut self, path: impl Into<PathBuf>) -> ClusterBuilder {
        self.security.root_certificates = Some(path.into());
        self
    }

    /// Presents the PEM client certificate at `cert`, with its key at `key` (mutual
    /// TLS), and requires TLS.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("tls://nats.internal:4222")
    ///     .client_certificate("/etc/pyper/client.pem", "/etc/pyper/client-key.pem")
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ClusterBuilder {
        self.security.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// Connects: a clear [`Error`] if the server cannot be reached, refuses the
    /// credentials, or has no JetStream.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), pyper::Error> {
    /// let cluster = pyper::Cluster::builder("nats://127.0.0.1:4222").connect()?;
    /// # Ok(()) }
    /// ```
    pub fn connect(self) -> Result<Cluster, Error> {
        let security = self.security.or(Security::from_env()?);
        Cluster::connect_with(&self.url, security)
    }
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("ClusterBuilder")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}
