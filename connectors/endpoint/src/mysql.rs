//! TLS to a MySQL/MariaDB server with the MySQL client's `ssl-mode`
//! semantics, for every MySQL connection tidewater opens (the source's
//! queries, snapshot workers, binlog stream and reconnects, the reverse-ETL
//! MySQL target): they all go through [`Endpoint::connect`]. The server's
//! error codes are classed here too ([`class_of_server_code`]), so a refused
//! connection means the same to the source and to the reverse-ETL target.
//!
//! The settings live in the source url's query string, spelled as the
//! `mysql` client spells its options (`ssl_mode`/`ssl_ca` are taken too):
//!
//! | `ssl-mode` | TLS | certificate |
//! |---|---|---|
//! | `DISABLED` | never | — |
//! | `PREFERRED` (default) | when the server offers it | not checked |
//! | `REQUIRED` | always | not checked; chained to `ssl-ca` when that is given |
//! | `VERIFY_CA` | always | chained to `ssl-ca` |
//! | `VERIFY_IDENTITY` | always | chained to `ssl-ca` and valid for the url's host |
//!
//! `ssl-ca` is a PEM file of CA certificates; the verify modes need it (the
//! built-in public roots of the client library are never used: a database
//! certificate comes from the operator's own CA or the cloud's bundle).
//! `REQUIRED` with a CA file checks the chain, as libpq's `require` does,
//! so one rule holds for both sources.
//!
//! The TLS itself is mysql_async's rustls client. Two things are done here
//! around it:
//!
//! - PREFERRED: mysql_async fails when the server lacks TLS; the connection
//!   is then made again in plain text.
//! - VERIFY_CA: mysql_async 0.37 recognises a host-name mismatch by the text
//!   "NotValidForName" in the rustls error, which rustls 0.23 no longer
//!   prints, so its skip-the-name option checks the name anyway. A name
//!   error comes after the chain was found good, so the connection is made
//!   again with the server name set to one the certificate holds: the chain
//!   is checked again, and any certificate from the CA passes, whatever host
//!   the url names. The name is kept for the endpoint's later connections.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};

use crate::tls::{install_crypto_provider, Refusal};
use crate::url::{check_userinfo, percent_decode, UserinfoError};
use crate::ErrorClass;

/// MySQL server error codes every connection acts on the same way.
mod code {
    pub const ACCESS_DENIED: u16 = 1045;
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    pub const BAD_DB: u16 = 1049;
    /// MariaDB: another replica is connected with the same server_id.
    pub const SLAVE_SAME_ID: u16 = 4052;
    /// Errors that go away on a retry: the server shutting down, a killed
    /// or interrupted query, lock waits and deadlocks, and a snapshot that
    /// met a concurrent DDL ("table definition has changed").
    pub const RETRYABLE: [u16; 7] = [1053, 1205, 1213, 1317, 1412, 1927, 1969];
}

/// The class of a server's answer by its error code (an error without one —
/// the network, a server going away — is [`ErrorClass::Transient`]).
pub fn class_of_server_code(server_code: u16) -> ErrorClass {
    match server_code {
        code::ACCESS_DENIED
        | code::DB_ACCESS_DENIED
        | code::SPECIFIC_ACCESS_DENIED
        | code::TABLE_ACCESS_DENIED
        | code::BAD_DB => ErrorClass::Config,
        // A dying connection of ours (after a crash) or another replica
        // with our id: retried with backoff, as a Postgres slot still held
        // by a dying walsender.
        code::SLAVE_SAME_ID => ErrorClass::Transient,
        code if code::RETRYABLE.contains(&code) => ErrorClass::Transient,
        // Any other server error is about the statement or the server
        // state.
        _ => ErrorClass::Definite,
    }
}

/// The MySQL client's `--ssl-mode`, in increasing strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text.to_ascii_uppercase().as_str() {
            "DISABLED" => SslMode::Disabled,
            "PREFERRED" => SslMode::Preferred,
            "REQUIRED" => SslMode::Required,
            "VERIFY_CA" => SslMode::VerifyCa,
            "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        })
    }
}

/// A url's TLS settings as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub ca: Option<PathBuf>,
}

/// Why a url's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(
        "ssl-mode={0:?} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
    )]
    BadMode(String),
    #[error("ssl-mode={0} needs ssl-ca=<PEM file of the CA certificates> to check the server's certificate against")]
    NoCa(SslMode),
    #[error(
        "{0} is the driver's own TLS switch; write ssl-mode (and ssl-ca) as the mysql client does"
    )]
    DriverParameter(String),
    #[error("{0} (client certificates) is not supported; authenticate with a password")]
    ClientCert(String),
    #[error(transparent)]
    Userinfo(#[from] UserinfoError),
    #[error("source.url is not a valid MySQL connection url")]
    Url(#[source] mysql_async::UrlError),
    #[error("cannot read ssl-ca file {}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes the TLS settings from a url: the rest (for mysql_async, with a
/// `mariadb://` scheme spelled `mysql://`) and the options.
pub fn parse_url(url: &str) -> Result<(String, TlsOptions), TlsConfigError> {
    let mut options = TlsOptions {
        mode: SslMode::Preferred,
        ca: None,
    };
    // Before mysql_async reads it: a password with a raw '/' or '#' would
    // otherwise be read in part as the host, and printed as such.
    check_userinfo(url)?;
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_string(),
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url, options));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key.replace('_', "-").as_str() {
            "ssl-mode" => {
                options.mode = SslMode::parse(&value).ok_or(TlsConfigError::BadMode(value))?;
            }
            "ssl-ca" => options.ca = Some(PathBuf::from(value)),
            "ssl-cert" | "ssl-key" => return Err(TlsConfigError::ClientCert(key.to_string())),
            "require-ssl" | "verify-ca" | "verify-identity" | "built-in-roots" => {
                return Err(TlsConfigError::DriverParameter(key.to_string()))
            }
            _ => kept.push(pair),
        }
    }
    if options.mode >= SslMode::VerifyCa && options.ca.is_none() {
        return Err(TlsConfigError::NoCa(options.mode));
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, options))
}

/// Reads a url as [`Endpoint::new`] will (without opening the CA file):
/// config validation refuses what a connection could not use.
pub fn check_url(url: &str) -> Result<(), TlsConfigError> {
    let (rest, _) = parse_url(url)?;
    Opts::from_url(&rest).map_err(TlsConfigError::Url)?;
    Ok(())
}

/// A connection refused on TLS grounds, naming the setting: retrying cannot
/// help, the url or the server must change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the server at {target} does not accept TLS, but source.url asks for ssl-mode={mode}\n\
         hint: give the server ssl_cert and ssl_key (MySQL 8 makes its own), or lower ssl-mode \
         (PREFERRED falls back to plain text)"
    )]
    Refused { target: String, mode: SslMode },
    #[error("TLS handshake with {target} failed (ssl-mode={mode}{ca}): {reason}")]
    Certificate {
        target: String,
        mode: SslMode,
        /// `, ssl-ca=<path>` when one is set.
        ca: String,
        reason: &'static str,
        #[source]
        source: rustls::Error,
    },
}

/// Why [`Endpoint::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to MySQL/MariaDB at {target}")]
    Connect {
        target: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error(transparent)]
    Tls(#[from] Box<TlsError>),
}

impl ConnectError {
    /// A refusal on TLS grounds is [`ErrorClass::Config`]; otherwise the
    /// server's code decides ([`class_of_server_code`]), and an error
    /// without one (the network) is [`ErrorClass::Transient`].
    pub fn class(&self) -> ErrorClass {
        match self {
            ConnectError::Tls(_) => ErrorClass::Config,
            ConnectError::Connect {
                source: mysql_async::Error::Server(error),
                ..
            } => class_of_server_code(error.code),
            ConnectError::Connect { .. } => ErrorClass::Transient,
        }
    }
}

/// Where a connection goes, with what TLS; cheap to clone (workers
/// each hold one).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Connections under the url's mode (plain for DISABLED).
    opts: Opts,
    /// PREFERRED: the same without TLS, for a server that has none.
    plain: Option<Opts>,
    /// PREFERRED, and the server turned out to have no TLS: later
    /// connections go plain at once instead of being refused first.
    plain_only: Arc<AtomicBool>,
    options: TlsOptions,
    /// VERIFY_CA: the options naming a host the certificate holds, once a
    /// connection found the url's host missing from it.
    renamed: Arc<Mutex<Option<Opts>>>,
}

impl Endpoint {
    /// Parses the url and reads the CA file.
    pub fn new(url: &str) -> Result<Endpoint, TlsConfigError> {
        let (rest, options) = parse_url(url)?;
        let plain = Opts::from_url(&rest).map_err(TlsConfigError::Url)?;
        let ssl = match options.mode {
            SslMode::Disabled => None,
            _ => Some(ssl_opts(&options)?),
        };
        // mysql_async asks rustls for the process-wide provider, which
        // rustls cannot pick by itself when the tree enables both of its
        // providers (as ours does).
        install_crypto_provider();
        Ok(Endpoint {
            opts: OptsBuilder::from_opts(plain.clone()).ssl_opts(ssl).into(),
            plain: (options.mode == SslMode::Preferred).then_some(plain),
            plain_only: Arc::new(AtomicBool::new(false)),
            options,
            renamed: Arc::new(Mutex::new(None)),
        })
    }

    pub fn target(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }

    /// The url's mode.
    pub fn mode(&self) -> SslMode {
        self.options.mode
    }

    /// One connection under the url's mode (see the module doc).
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let target = self.target();
        let connect_error = |source| ConnectError::Connect {
            target: target.clone(),
            source,
        };
        if let Some(plain) = &self.plain {
            if self.plain_only.load(Ordering::Relaxed) {
                return Conn::new(plain.clone()).await.map_err(connect_error);
            }
        }
        let renamed = self.renamed.lock().map(|r| r.clone()).unwrap_or(None);
        let opts = renamed.unwrap_or_else(|| self.opts.clone());
        match Conn::new(opts.clone()).await {
            Ok(conn) => Ok(conn),
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) => match &self.plain {
                Some(plain) => {
                    self.plain_only.store(true, Ordering::Relaxed);
                    Conn::new(plain.clone()).await.map_err(connect_error)
                }
                None => Err(Box::new(TlsError::Refused {
                    target: target.clone(),
                    mode: self.options.mode,
                })
                .into()),
            },
            Err(err) => {
                let Some(refused) = find_rustls(&err) else {
                    return Err(connect_error(err));
                };
                if let Some(name) = self.name_held_by_certificate(&refused) {
                    let retry: Opts = OptsBuilder::from_opts(opts)
                        .ssl_opts(
                            opts_ssl(&self.opts)
                                .map(|s| s.with_danger_tls_hostname_override(Some(name))),
                        )
                        .into();
                    match Conn::new(retry.clone()).await {
                        Ok(conn) => {
                            if let Ok(mut slot) = self.renamed.lock() {
                                *slot = Some(retry);
                            }
                            return Ok(conn);
                        }
                        Err(err) => match find_rustls(&err) {
                            Some(refused) => {
                                return Err(Box::new(self.certificate_error(refused)).into())
                            }
                            None => return Err(connect_error(err)),
                        },
                    }
                }
                Err(Box::new(self.certificate_error(refused)).into())
            }
        }
    }

    /// Under a mode that checks the chain but not the name, the name to
    /// connect as when the certificate does not hold the url's host.
    fn name_held_by_certificate(&self, error: &rustls::Error) -> Option<String> {
        let chain_only = self.options.mode == SslMode::VerifyCa
            || (self.options.mode == SslMode::Required && self.options.ca.is_some());
        match error {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { presented, .. },
            ) if chain_only => presented.iter().find_map(|name| usable_name(name)),
            _ => None,
        }
    }

    fn certificate_error(&self, source: rustls::Error) -> TlsError {
        let reason = match Refusal::of(&source) {
            Refusal::UnknownIssuer => "the server's certificate is not signed by a CA in ssl-ca",
            Refusal::WrongName => {
                "the server's certificate does not name the url's host (VERIFY_IDENTITY checks it; \
                 connect by a name the certificate holds, or use VERIFY_CA)"
            }
            Refusal::Expired => "the server's certificate has expired",
            Refusal::Certificate => "the server's certificate was refused",
            Refusal::Session => "the TLS session could not be established",
        };
        TlsError::Certificate {
            target: self.target(),
            mode: self.options.mode,
            ca: self
                .options
                .ca
                .as_ref()
                .map(|p| format!(", ssl-ca={}", p.display()))
                .unwrap_or_default(),
            reason,
            source,
        }
    }
}

/// A name from rustls's list of the names a certificate holds (written
/// `DnsName("db.example")`, `IpAddress(10.0.0.5)`) that a connection can be
/// made as; a wildcard gets a label. Anything else is skipped, so an
/// unexpected form fails closed (the certificate error stands).
fn usable_name(presented: &str) -> Option<String> {
    let name = if let Some(dns) = presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
    {
        dns.replacen('*', "tidewater", 1)
    } else {
        presented
            .strip_prefix("IpAddress(")
            .and_then(|rest| rest.strip_suffix(')'))?
            .to_string()
    };
    rustls::pki_types::ServerName::try_from(name.clone())
        .ok()
        .map(|_| name)
}

fn opts_ssl(opts: &Opts) -> Option<SslOpts> {
    opts.ssl_opts().cloned()
}

/// mysql_async's TLS options for a mode that may encrypt.
fn ssl_opts(options: &TlsOptions) -> Result<SslOpts, TlsConfigError> {
    // The built-in public roots are switched off wherever a CA file is
    // given; without one no certificate is checked at all (mysql_async
    // still wants a non-empty store to build its verifier from).
    let base = SslOpts::default();
    let ca = match (&options.ca, options.mode) {
        (Some(path), mode) if mode >= SslMode::Required => {
            let pem = std::fs::read(path).map_err(|source| TlsConfigError::ReadCa {
                path: path.clone(),
                source,
            })?;
            Some(pem)
        }
        _ => None,
    };
    Ok(match (options.mode, ca) {
        (SslMode::VerifyIdentity, Some(pem)) => base
            .with_root_certs(vec![pem.into()])
            .with_disable_built_in_roots(true),
        (_, Some(pem)) => base
            .with_root_certs(vec![pem.into()])
            .with_disable_built_in_roots(true)
            .with_danger_skip_domain_validation(true),
        (_, None) => base.with_danger_accept_invalid_certs(true),
    })
}

/// The rustls error behind a failed connection, if any.
fn find_rustls(error: &mysql_async::Error) -> Option<rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found.clone());
        }
        if let Some(found) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found.clone());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tls_settings_off_the_url() {
        let (rest, options) = parse_url(
            "mysql://u:p@db:3306/shop?ssl-mode=verify_identity&ssl-ca=%2Fetc%2Fca.pem&prefer_socket=false",
        )
        .unwrap();
        assert_eq!(rest, "mysql://u:p@db:3306/shop?prefer_socket=false");
        assert_eq!(options.mode, SslMode::VerifyIdentity);
        assert_eq!(options.ca, Some(PathBuf::from("/etc/ca.pem")));
        let (_, options) = parse_url("mysql://u@db/shop?ssl_mode=REQUIRED").unwrap();
        assert_eq!(options.mode, SslMode::Required);
    }

    #[test]
    fn server_codes_by_class() {
        for (code, class) in [
            (1045, ErrorClass::Config),
            (1044, ErrorClass::Config),
            (1227, ErrorClass::Config),
            (1142, ErrorClass::Config),
            (1049, ErrorClass::Config),
            (4052, ErrorClass::Transient),
            (1053, ErrorClass::Transient),
            (1205, ErrorClass::Transient),
            (1213, ErrorClass::Transient),
            (1317, ErrorClass::Transient),
            (1412, ErrorClass::Transient),
            (1927, ErrorClass::Transient),
            (1969, ErrorClass::Transient),
            (1064, ErrorClass::Definite),
            (1146, ErrorClass::Definite),
        ] {
            assert_eq!(class_of_server_code(code), class, "{code}");
        }
    }

    #[test]
    fn names_a_certificate_holds() {
        assert_eq!(
            usable_name("DnsName(\"db.example\")").as_deref(),
            Some("db.example")
        );
        assert_eq!(
            usable_name("DnsName(\"*.example\")").as_deref(),
            Some("tidewater.example")
        );
        assert_eq!(
            usable_name("IpAddress(10.0.0.5)").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(usable_name("DirectoryName"), None);
    }

    #[test]
    fn defaults_to_preferred_and_checks_the_settings() {
        let (rest, options) = parse_url("mysql://u@db/shop").unwrap();
        assert_eq!(rest, "mysql://u@db/shop");
        assert_eq!(options.mode, SslMode::Preferred);
        for (url, word) in [
            ("mysql://u@db/shop?ssl-mode=VERIFY_CA", "ssl-ca"),
            ("mysql://u@db/shop?ssl-mode=sometimes", "sometimes"),
            ("mysql://u@db/shop?require_ssl=true", "ssl-mode"),
            ("mysql://u@db/shop?ssl-cert=/c.pem", "ssl-cert"),
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.contains(word), "{url}: {err}");
        }
    }
}
