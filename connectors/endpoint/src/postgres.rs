//! TLS to a Postgres server with libpq's `sslmode` semantics, for every
//! Postgres connection tidewater opens: the source's control connection and
//! snapshot copy workers (tokio-postgres), the walsender connection of the
//! source's own replication client (`tidewater_postgres::replication`, which
//! makes the SSLRequest itself and calls [`TlsSetup::handshake`]), the
//! warehouse sink and the reverse-ETL Postgres target.
//!
//! ```text
//!  TCP connect ── SSLRequest ──▶ server
//!              ◀─ 'S' ── TLS handshake (rustls), then the startup message
//!              ◀─ 'N' ── prefer: go on in plain text; require and stronger: fail
//! ```
//!
//! The settings live in the source url's query string, spelled as libpq
//! spells them, so the url that works with `psql` works here:
//!
//! | `sslmode` | TLS | certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked; chained to `sslrootcert` when that is given (libpq's rule) |
//! | `verify-ca` | always | chained to `sslrootcert` |
//! | `verify-full` | always | chained to `sslrootcert` and valid for the url's host |
//!
//! `sslrootcert` is a PEM file of CA certificates; `verify-ca` and
//! `verify-full` need it (libpq would fall back to `~/.postgresql/root.crt`;
//! a daemon should not depend on its home directory). Over a Unix socket no
//! TLS is used, as in libpq. Client certificates (`sslcert`, `sslkey`) are
//! not supported and refused with that message.
//!
//! The tokio-postgres side takes `sslmode=require` for every mode that must
//! encrypt and leaves the certificate decision to the verifier chosen here;
//! the replication client makes the same SSLRequest itself.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::tls::{crypto_provider, NameNotChecked, Refusal};
use crate::url::{check_userinfo, percent_decode, UserinfoError};

/// libpq's `sslmode`, in increasing strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The mode must encrypt: a server that refuses TLS is an error.
    pub fn requires_tls(self) -> bool {
        self >= SslMode::Require
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A url's TLS settings as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Why a url's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("sslmode={0} needs sslrootcert=<PEM file of the CA certificates> to check the server's certificate against")]
    NoRootCert(SslMode),
    #[error("{0} (client certificates) is not supported; authenticate with a password")]
    ClientCert(String),
    #[error(transparent)]
    Userinfo(#[from] UserinfoError),
    #[error("source.url is not a valid Postgres connection url")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot read sslrootcert file {}", path.display())]
    ReadRootCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert file {} holds no usable CA certificate", path.display())]
    NoCertificates { path: PathBuf },
}

/// Splits the TLS settings off a url: the tokio-postgres config of the
/// rest (its `sslmode` set to what the mode needs) and the options.
///
/// Only the `postgres://` url form carries `sslrootcert` and the verify
/// modes; a `key=value` connection string keeps tokio-postgres's own
/// `sslmode` (disable, prefer, require).
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, TlsOptions), TlsConfigError> {
    let mut options = TlsOptions {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    // Before the driver reads it: a password with a raw '@' or '/' would
    // otherwise be read in part as the host, and printed as such.
    check_userinfo(url)?;
    let rest = if is_url {
        split_query(url, &mut options)?
    } else {
        url.to_string()
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(TlsConfigError::Url)?;
    if !is_url {
        options.mode = match config.get_ssl_mode() {
            DriverSslMode::Disable => SslMode::Disable,
            DriverSslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
    }
    if options.mode >= SslMode::VerifyCa && options.root_cert.is_none() {
        return Err(TlsConfigError::NoRootCert(options.mode));
    }
    #[cfg(unix)]
    let over_socket = matches!(
        config.get_hosts().first(),
        Some(tokio_postgres::config::Host::Unix(_))
    );
    #[cfg(not(unix))]
    let over_socket = false;
    config.ssl_mode(match options.mode {
        _ if over_socket => DriverSslMode::Disable,
        SslMode::Disable => DriverSslMode::Disable,
        SslMode::Prefer => DriverSslMode::Prefer,
        _ => DriverSslMode::Require,
    });
    if over_socket {
        options.mode = SslMode::Disable;
    }
    Ok((config, options))
}

/// Removes `sslmode` and `sslrootcert` from a url's query string into
/// `options`; the other parameters stay as written.
fn split_query(url: &str, options: &mut TlsOptions) -> Result<String, TlsConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        match key.as_str() {
            "sslmode" => {
                let value = percent_decode(value);
                options.mode = SslMode::parse(&value).ok_or(TlsConfigError::BadMode(value))?;
            }
            "sslrootcert" => options.root_cert = Some(PathBuf::from(percent_decode(value))),
            "sslcert" | "sslkey" | "sslpassword" => return Err(TlsConfigError::ClientCert(key)),
            _ => kept.push(pair),
        }
    }
    Ok(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// What every connection of a source uses to encrypt: the mode and, unless
/// TLS is off, the rustls client config it implies.
#[derive(Clone)]
pub struct TlsSetup {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

impl TlsSetup {
    /// Reads the CA file (if any) and builds the verifier the mode asks for.
    pub fn new(options: &TlsOptions) -> Result<TlsSetup, TlsConfigError> {
        let plain = TlsSetup {
            mode: options.mode,
            root_cert: options.root_cert.clone(),
            config: None,
        };
        if options.mode == SslMode::Disable {
            return Ok(plain);
        }
        let provider = crypto_provider();
        // prefer never checks the certificate, not even against a CA file
        // (libpq); require does when a CA file is given.
        let roots = match (&options.root_cert, options.mode) {
            (Some(path), mode) if mode >= SslMode::Require => Some(Arc::new(read_roots(path)?)),
            _ => None,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default TLS versions");
        let config = match (options.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (_, roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NameNotChecked { roots, provider }))
                .with_no_client_auth(),
        };
        Ok(TlsSetup {
            config: Some(Arc::new(config)),
            ..plain
        })
    }

    /// The connector tokio-postgres connections use.
    pub fn connector(&self) -> RustlsConnect {
        RustlsConnect {
            config: self.config.clone(),
        }
    }

    /// Wraps an established TCP stream in TLS (after the server's 'S').
    pub async fn handshake<S>(
        &self,
        host: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self
            .config
            .clone()
            .ok_or_else(|| std::io::Error::other("TLS is disabled (sslmode=disable)"))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| std::io::Error::other(format!("{host:?} is not a TLS server name")))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
    }
}

fn read_roots(path: &std::path::Path) -> Result<RootCertStore, TlsConfigError> {
    let read_error = |source| TlsConfigError::ReadRootCert {
        path: path.to_path_buf(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(read_error)? {
        // A certificate rustls cannot parse is skipped, as libpq skips what
        // OpenSSL cannot use; an empty store is refused below.
        let _ = roots.add(cert.map_err(read_error)?);
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// tokio-postgres's TLS hook over rustls.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> std::io::Result<RustlsConnector> {
        // Called for every host, even when TLS will not be used (a Unix
        // socket has no name): a bad name fails only the handshake.
        Ok(RustlsConnector {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_string()).ok(),
            domain: domain.to_string(),
        })
    }
}

pub struct RustlsConnector {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
    domain: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| BoxError::from("TLS is disabled (sslmode=disable)"))?;
            let name = self.name.ok_or_else(|| {
                BoxError::from(format!("{:?} is not a TLS server name", self.domain))
            })?;
            match tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
            {
                Ok(stream) => Ok(RustlsStream(stream)),
                Err(err) => Err(unwrap_io(err)),
            }
        })
    }
}

/// The rustls error inside an I/O error, so callers can tell a refused
/// certificate from a dropped connection.
fn unwrap_io(err: std::io::Error) -> BoxError {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(inner) => Box::new(inner.clone()),
        None => Box::new(err),
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No channel binding: SCRAM-SHA-256 without `-PLUS`, which every
    /// server accepts unless `channel_binding=require` is asked of the client.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// A connection refused on TLS grounds, naming the setting: retrying
/// cannot help, the url or the server must change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the server at {target} does not accept TLS, but source.url asks for sslmode={mode}\n\
         hint: turn ssl on in the server's postgresql.conf, or lower sslmode (prefer falls back to plain text)"
    )]
    Refused { target: String, mode: SslMode },
    #[error("TLS handshake with {target} failed (sslmode={mode}{root}): {reason}")]
    Certificate {
        target: String,
        mode: SslMode,
        /// `, sslrootcert=<path>` when one is set.
        root: String,
        reason: &'static str,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// The TLS reason a connection attempt failed, if that is why: the
    /// server refused TLS or its certificate was refused.
    pub fn find(
        target: &str,
        setup: &TlsSetup,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<TlsError> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(err) = current {
            if let Some(rustls_error) = err.downcast_ref::<rustls::Error>() {
                return Some(TlsError::certificate(target, setup, rustls_error.clone()));
            }
            // tokio-postgres's words when the server answers 'N' under require.
            if err.to_string() == "server does not support TLS" {
                return Some(TlsError::Refused {
                    target: target.to_string(),
                    mode: setup.mode,
                });
            }
            current = err.source();
        }
        None
    }

    /// The certificate (or session) refusal `source`, in libpq's words.
    pub fn certificate(target: &str, setup: &TlsSetup, source: rustls::Error) -> TlsError {
        let reason = match Refusal::of(&source) {
            Refusal::UnknownIssuer => {
                "the server's certificate is not signed by a CA in sslrootcert"
            }
            Refusal::WrongName => {
                "the server's certificate does not name the url's host (verify-full checks it; \
                 connect by a name the certificate holds, or use verify-ca)"
            }
            Refusal::Expired => "the server's certificate has expired",
            Refusal::Certificate => "the server's certificate was refused",
            Refusal::Session => "the TLS session could not be established",
        };
        TlsError::Certificate {
            target: target.to_string(),
            mode: setup.mode,
            root: setup
                .root_cert
                .as_ref()
                .map(|p| format!(", sslrootcert={}", p.display()))
                .unwrap_or_default(),
            reason,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tls_settings_off_the_url() {
        let (config, options) = parse_url(
            "postgres://u:p@db.example:5433/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(options.mode, SslMode::VerifyFull);
        assert_eq!(options.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(config.get_ssl_mode(), DriverSslMode::Require);
        assert_eq!(config.get_dbname(), Some("shop"));
        assert!(config.get_connect_timeout().is_some());
    }

    #[test]
    fn defaults_to_prefer_and_checks_the_mode() {
        let (config, options) = parse_url("postgres://u@h/db").unwrap();
        assert_eq!(options.mode, SslMode::Prefer);
        assert_eq!(config.get_ssl_mode(), DriverSslMode::Prefer);
        let err = parse_url("postgres://u@h/db?sslmode=verify-ca").unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err = parse_url("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(err.to_string().contains("allow"), "{err}");
        let err = parse_url("postgres://u@h/db?sslcert=/c.pem").unwrap_err();
        assert!(err.to_string().contains("sslcert"), "{err}");
        let (_, options) = parse_url("host=h user=u dbname=db sslmode=require").unwrap();
        assert_eq!(options.mode, SslMode::Require);
    }

    #[test]
    fn no_tls_over_a_unix_socket() {
        let (config, options) =
            parse_url("postgres://u@%2Ftmp%2Fpg:5432/db?sslmode=require").unwrap();
        assert_eq!(options.mode, SslMode::Disable);
        assert_eq!(config.get_ssl_mode(), DriverSslMode::Disable);
    }
}
