use tidewater_core::{Classified, ErrorClass, TableId};

use crate::event::DecodeError;

/// MySQL server error codes we act on.
mod code {
    /// ER_MASTER_FATAL_ERROR_READING_BINLOG: the requested position or GTID is
    /// not in the server's binlog (purged, or never existed).
    pub const FATAL_READING_BINLOG: u16 = 1236;
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

/// Everything the MySQL/MariaDB source can fail with. Messages never carry row
/// values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MysqlError {
    #[error("source.url is not a valid MySQL connection url")]
    Url {
        #[source]
        source: mysql_async::UrlError,
    },
    #[error("source.url")]
    TlsConfig {
        #[source]
        source: crate::tls::TlsConfigError,
    },
    #[error(transparent)]
    Tls(#[from] Box<crate::tls::TlsError>),
    #[error("cannot connect to MySQL/MariaDB at {target}")]
    Connect {
        target: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{what}")]
    Query {
        what: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error(
        "the definition of {table} changed while it was being copied (a concurrent DDL); \
         copying it again from a new snapshot"
    )]
    CopyRaced {
        table: TableId,
        #[source]
        source: Box<MysqlError>,
    },
    #[error("the binlog stream failed")]
    Stream {
        #[source]
        source: mysql_async::Error,
    },
    #[error("the binlog stream ended unexpectedly")]
    StreamEnded,
    #[error(
        "the server no longer has the binlog at {position}: {detail}\n\
         hint: the changes since then are gone from the server (binlogs purged or reset); \
         drop the lake tables under this pipeline (or pick a new pipeline name) and run again \
         to take a new snapshot, and raise binlog_expire_logs_seconds / expire_logs_days"
    )]
    PositionLost { position: String, detail: String },
    #[error("decoding a binlog event at {position} for {table}")]
    Decode {
        table: String,
        position: String,
        #[source]
        source: DecodeError,
    },
    #[error("reading the snapshot of {table}: column {column}: {what}")]
    SnapshotValue {
        table: TableId,
        column: String,
        what: String,
    },
    #[error("the binlog at {position} holds an incident event: the server lost changes there\nhint: take a new snapshot")]
    Incident { position: String },
    #[error("binlog event type {event_type} at {position} is not supported: {hint}")]
    Unsupported {
        event_type: u8,
        position: String,
        hint: &'static str,
    },
    #[error("cannot resume: {what}")]
    BadPosition { what: String },
    #[error("internal error: {what}")]
    Misuse { what: &'static str },
}

impl MysqlError {
    fn server_code(&self) -> Option<u16> {
        let source = match self {
            MysqlError::Connect { source, .. }
            | MysqlError::Query { source, .. }
            | MysqlError::Stream { source } => source,
            _ => return None,
        };
        match source {
            mysql_async::Error::Server(err) => Some(err.code),
            _ => None,
        }
    }
}

impl Classified for MysqlError {
    fn class(&self) -> ErrorClass {
        match self {
            MysqlError::Url { .. }
            | MysqlError::BadPosition { .. }
            | MysqlError::TlsConfig { .. }
            | MysqlError::Tls(_) => ErrorClass::Config,
            MysqlError::PositionLost { .. } | MysqlError::Incident { .. } => ErrorClass::Definite,
            MysqlError::Decode { source, .. } => source.class(),
            MysqlError::SnapshotValue { .. } | MysqlError::Unsupported { .. } => {
                ErrorClass::Definite
            }
            MysqlError::Misuse { .. } => ErrorClass::Internal,
            // Retried: the next copy reads the catalog as it is then.
            MysqlError::StreamEnded | MysqlError::CopyRaced { .. } => ErrorClass::Transient,
            MysqlError::Connect { .. } | MysqlError::Query { .. } | MysqlError::Stream { .. } => {
                match self.server_code() {
                    Some(
                        code::ACCESS_DENIED
                        | code::DB_ACCESS_DENIED
                        | code::SPECIFIC_ACCESS_DENIED
                        | code::TABLE_ACCESS_DENIED
                        | code::BAD_DB,
                    ) => ErrorClass::Config,
                    // A dying connection of ours (after a crash) or another
                    // replica with our id: retried with backoff, as a
                    // Postgres slot still held by a dying walsender.
                    Some(code::SLAVE_SAME_ID) => ErrorClass::Transient,
                    Some(code) if code::RETRYABLE.contains(&code) => ErrorClass::Transient,
                    // Any other server error on a query is about the statement
                    // or the server state; network errors and a server going
                    // away are worth a reconnect.
                    Some(_) => ErrorClass::Definite,
                    None => ErrorClass::Transient,
                }
            }
        }
    }
}

/// Maps a binlog-stream error, turning "position not in the binlog" into
/// [`MysqlError::PositionLost`].
pub(crate) fn stream_error(position: &str, source: mysql_async::Error) -> MysqlError {
    if let mysql_async::Error::Server(err) = &source {
        if err.code == code::FATAL_READING_BINLOG {
            return MysqlError::PositionLost {
                position: position.to_string(),
                detail: err.message.clone(),
            };
        }
    }
    MysqlError::Stream { source }
}

pub(crate) fn query_error(
    what: impl Into<String>,
) -> impl FnOnce(mysql_async::Error) -> MysqlError {
    let what = what.into();
    move |source| MysqlError::Query { what, source }
}
