//! How tidewater reaches a database server, in one place for every crate
//! that opens a connection: the sources (Postgres, MySQL/MariaDB), the
//! warehouse sink and the reverse-ETL targets.
//!
//! ```text
//!   postgres, mysql (sources) ─┐
//!   warehouse, reverse ────────┼──▶ tidewater-endpoint ◀── tidewater-core
//!   the binary ────────────────┘    (no arrow, no lake)
//! ```
//!
//! Each piece lives here because more than one connector needs it and it
//! must not differ between them:
//!
//! * [`url`] — the connection url as a secret ([`url::SecretUrl`]), the
//!   userinfo check every url passes before a driver reads it, and the
//!   percent decoding of url components. One rule for every url, so a
//!   password that works for the source works for the warehouse.
//! * [`postgres`] (feature `postgres`) — libpq's `sslmode`/`sslrootcert`
//!   read from a url, the rustls client config they imply and the hook
//!   tokio-postgres connects through. The Postgres source, the warehouse and
//!   the reverse-ETL Postgres target all connect with it, so one url means
//!   one TLS behaviour; the warehouse and reverse crates need no source
//!   crate for it.
//! * [`mysql`] (feature `mysql`) — the MySQL client's `ssl-mode`/`ssl-ca`
//!   and the [`mysql::Endpoint`] every MySQL connection is opened through
//!   (the source and the reverse-ETL MySQL target).
//! * [`tls`] — what the two dialects share of rustls: the crypto provider,
//!   the certificate verifier of the modes that do not check the host name,
//!   and what a refused certificate means.
//! * [`sqlstate`] — the one SQLSTATE → [`ErrorClass`] table for every
//!   Postgres connection, and the MySQL server codes the same way
//!   ([`mysql::class_of_server_code`]).
//! * [`quote`] — identifier quoting, one function per quoting style.
//! * [`ErrorClass`] — what the daemon does about an error. It lives here so
//!   that the SQLSTATE table can answer in it without this crate needing
//!   `tidewater-core` (and its arrow); `tidewater-core` re-exports it.

mod class;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod quote;
pub mod sqlstate;
#[cfg(feature = "tls")]
pub mod tls;
pub mod url;

pub use class::ErrorClass;
