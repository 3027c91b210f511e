use tidewater_core::{Classified, ErrorClass, TableId};

use crate::event::DecodeError;

/// MySQL server error codes the source acts on itself (the ones every
/// connection acts on are classed by
/// [`tidewater_endpoint::mysql::class_of_server_code`]).
mod code {
    /// ER_MASTER_FATAL_ERROR_READING_BINLOG: the requested position or GTID is
    /// not in the server's binlog (purged, or never existed).
    pub const FATAL_READING_BINLOG: u16 = 1236;
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
                    Some(code) => tidewater_endpoint::mysql::class_of_server_code(code),
                    // Network errors and a server going away are worth a
                    // reconnect.
                    None => ErrorClass::Transient,
                }
            }
        }
    }
}

impl From<crate::tls::ConnectError> for MysqlError {
    fn from(error: crate::tls::ConnectError) -> MysqlError {
        match error {
            crate::tls::ConnectError::Connect { target, source } => {
                MysqlError::Connect { target, source }
            }
            crate::tls::ConnectError::Tls(error) => MysqlError::Tls(error),
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
