//! How a coordinator or a worker proves who it is to the NATS server, and whether the
//! connection must be encrypted: [`ClusterBuilder`]'s settings, or the `PYPER_NATS_*`
//! environment variables, which workers read and which fill what a builder leaves unset.
//!
//! Anyone who can publish to the server can hand workers items, so a server used across
//! hosts should require credentials and TLS: see the README's "Securing the server".

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ConnectOptions;

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
    pub(super) user: Option<(String, String)>,
    pub(super) token: Option<String>,
    pub(super) creds_file: Option<PathBuf>,
    pub(super) nkey_file: Option<PathBuf>,
    pub(super) tls_required: bool,
    pub(super) root_certificates: Option<PathBuf>,
    pub(super) client_certificate: Option<(PathBuf, PathBuf)>,
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
    pub(super) fn or(self, defaults: Security) -> Security {
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
    /// These settings, with the credentials a URL holds (`nats://user:password@host`, or
    /// `nats://token@host`) when they give none: the NATS client reads a URL's host, not
    /// its credentials.
    pub(super) fn with_url_credentials(&self, url: &str) -> Security {
        let mut security = self.clone();
        let Some((_, userinfo, _)) = split_credentials(url) else {
            return security;
        };
        if security.user.is_some() || security.token.is_some() || userinfo.is_empty() {
            return security;
        }
        match userinfo.split_once(':') {
            Some((user, password)) => {
                security.user = Some((user.to_owned(), password.to_owned()));
            }
            None => security.token = Some(userinfo.to_owned()),
        }
        security
    }

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

/// `url` around the credentials it holds: what comes before them (the scheme and `://`,
/// if any), the credentials (`user:password`, or a token), and the rest; `None` if it
/// holds none.
pub(super) fn split_credentials(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://").map_or(0, |at| at + 3);
    let (credentials, rest) = url[start..].rsplit_once('@')?;
    Some((&url[..start], credentials, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_credentials_are_used_unless_others_are_given() {
        let none = Security::default();
        let user = none.with_url_credentials("nats://pyper:s3cret@10.0.0.1:4222");
        assert_eq!(user.user, Some(("pyper".into(), "s3cret".into())));
        let token = none.with_url_credentials("nats://t0ken@10.0.0.1:4222");
        assert_eq!(token.token.as_deref(), Some("t0ken"));
        assert!(none
            .with_url_credentials("nats://10.0.0.1:4222")
            .user
            .is_none());
        let given = Security {
            token: Some("given".into()),
            ..Security::default()
        };
        let kept = given.with_url_credentials("nats://pyper:s3cret@10.0.0.1:4222");
        assert_eq!((kept.user, kept.token.as_deref()), (None, Some("given")));
        assert_eq!(
            super::super::nats::redacted("nats://pyper:s3cret@10.0.0.1:4222"),
            "nats://pyper:***@10.0.0.1:4222"
        );
    }
}
