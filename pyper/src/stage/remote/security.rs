//! How a coordinator or a worker proves who it is to the NATS server, and whether the
//! connection must be encrypted: [`ClusterBuilder`]'s settings, or the `PYPER_NATS_*`
//! environment variables, which workers read and which fill what a builder leaves unset.
//!
//! Anyone who can publish to the server can hand workers items, so a server used across
//! hosts should require credentials and TLS: see the README's "Securing the server".

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ConnectOptions;

use super::cluster::Cluster;
use crate::error::Error;

/// A user name; with [`PASSWORD_ENV`], the credentials to connect with.
pub const USER_ENV: &str = "PYPER_NATS_USER";
/// The password that goes with [`USER_ENV`].
pub const PASSWORD_ENV: &str = "PYPER_NATS_PASSWORD";
/// A token to connect with.
pub const TOKEN_ENV: &str = "PYPER_NATS_TOKEN";
/// The path of a NATS credentials file (`.creds`: a user JWT and its nkey seed).
pub const CREDS_ENV: &str = "PYPER_NATS_CREDS";
/// The path of a file holding an nkey seed (`SU…`).
pub const NKEY_ENV: &str = "PYPER_NATS_NKEY";
/// The path of a PEM file of root certificates to trust; setting it requires TLS.
pub const TLS_CA_ENV: &str = "PYPER_NATS_TLS_CA";
/// The paths of a PEM client certificate and its key, as `CERT:KEY`; setting it requires
/// TLS.
pub const TLS_CLIENT_ENV: &str = "PYPER_NATS_TLS_CLIENT";
/// `1` (or `true`) to refuse a connection without TLS.
pub const TLS_REQUIRED_ENV: &str = "PYPER_NATS_TLS_REQUIRED";

/// How to authenticate to the server, and what TLS to require.
#[derive(Clone, Default)]
pub(super) struct Security {
    user: Option<(String, String)>,
    token: Option<String>,
    creds_file: Option<PathBuf>,
    nkey_file: Option<PathBuf>,
    tls_required: bool,
    root_certificates: Option<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
}

impl Security {
    /// The settings the `PYPER_NATS_*` variables give, or why they are wrong.
    pub(super) fn from_env() -> Result<Security, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mut security = Security::default();
        match (var(USER_ENV), var(PASSWORD_ENV)) {
            (Some(user), Some(password)) => security.user = Some((user, password)),
            (None, None) => {}
            _ => {
                return Err(Error::config(
                    None,
                    format!("set both {USER_ENV} and {PASSWORD_ENV}, or neither"),
                ))
            }
        }
        security.token = var(TOKEN_ENV);
        security.creds_file = var(CREDS_ENV).map(PathBuf::from);
        security.nkey_file = var(NKEY_ENV).map(PathBuf::from);
        security.root_certificates = var(TLS_CA_ENV).map(PathBuf::from);
        if let Some(pair) = var(TLS_CLIENT_ENV) {
            let (cert, key) = pair.split_once(':').ok_or_else(|| {
                Error::config(
                    None,
                    format!("{TLS_CLIENT_ENV} is `CERT:KEY`, two paths: got `{pair}`"),
                )
            })?;
            security.client_certificate = Some((cert.into(), key.into()));
        }
        security.tls_required = var(TLS_REQUIRED_ENV).is_some_and(|value| {
            matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
        });
        Ok(security)
    }

    /// `self`, with whatever it leaves unset taken from `defaults`.
    fn or(self, defaults: Security) -> Security {
        Security {
            user: self.user.or(defaults.user),
            token: self.token.or(defaults.token),
            creds_file: self.creds_file.or(defaults.creds_file),
            nkey_file: self.nkey_file.or(defaults.nkey_file),
            tls_required: self.tls_required || defaults.tls_required,
            root_certificates: self.root_certificates.or(defaults.root_certificates),
            client_certificate: self.client_certificate.or(defaults.client_certificate),
        }
    }

    /// The client's connect options with these settings.
    pub(super) async fn options(&self) -> Result<ConnectOptions, Error> {
        let unreadable = |what: &str, path: &PathBuf, error: std::io::Error| {
            Error::config(
                None,
                format!("cannot read the {what} {}: {error}", path.display()),
            )
        };
        let mut options = ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|error| unreadable("nkey seed file", path, error))?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|error| unreadable("credentials file", path, error))?;
        }
        if let Some(path) = &self.root_certificates {
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        if let Some((cert, key)) = &self.client_certificate {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

/// A [`Cluster`] to connect to, with credentials and TLS: what a server shared across
/// hosts should require. Made by [`Cluster::builder`]. (Requires the `remote` feature.)
///
/// What the builder leaves unset comes from the environment, the same `PYPER_NATS_*`
/// variables that workers read ([`USER_ENV`] and [`PASSWORD_ENV`], [`TOKEN_ENV`],
/// [`CREDS_ENV`], [`NKEY_ENV`], [`TLS_CA_ENV`], [`TLS_CLIENT_ENV`], [`TLS_REQUIRED_ENV`]),
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
