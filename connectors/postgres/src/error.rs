use crate::replication::ReplicationError;
use tidewater_core::{ErrorClass, TableId};

use crate::copy::CopyError;
use crate::pgoutput::DecodeError;
use crate::value::ValueError;

/// Everything the Postgres source can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    #[error("source.url is not a valid Postgres connection url")]
    Url {
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("source.url names no {what}")]
    UrlPart { what: &'static str },
    #[error("source.url")]
    TlsConfig {
        #[source]
        source: crate::tls::TlsConfigError,
    },
    #[error(transparent)]
    Tls(#[from] Box<crate::tls::TlsError>),
    #[error("cannot connect to Postgres at {target}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}")]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("replication connection failed")]
    Replication {
        #[source]
        source: ReplicationError,
    },
    #[error("spill file {}", path.display())]
    Spill {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "replication slot {slot:?} does not exist, but the lake holds changes up to {position}\n\
         hint: the changes since then are gone from the server's log; drop the lake tables \
         under this pipeline (or pick a new pipeline name) and run again to re-snapshot"
    )]
    SlotLost { slot: String, position: String },
    #[error(
        "publication {publication:?} exists but does not include {}\n\
         hint: ALTER PUBLICATION {publication} ADD TABLE {}; (or narrow source.tables)",
        tables.join(", "), tables.join(", ")
    )]
    PublicationIncomplete {
        publication: String,
        tables: Vec<String>,
    },
    #[error("replication slot {slot:?} was invalidated by the server (wal_status = lost): the WAL it needed is gone\nhint: drop the lake tables under this pipeline and the slot (SELECT pg_drop_replication_slot('{slot}')), then run again to re-snapshot; consider max_slot_wal_keep_size")]
    SlotInvalidated { slot: String },
    #[error("replication slot {slot:?} belongs to {detail}, not to this pipeline's database with pgoutput\nhint: set source.slot_name to another name")]
    SlotForeign { slot: String, detail: String },
    #[error("replication slot {slot:?} exists but the lake holds no table of this pipeline\nhint: if it is left over from an earlier run, drop it (SELECT pg_drop_replication_slot('{slot}')); if that run's lake lives elsewhere, point sink.uri there")]
    SlotWithoutLake { slot: String },
    #[error("replication slot {slot:?} is in use by another process (pid {pid})")]
    SlotBusy { slot: String, pid: i32 },
    #[error("the replication stream ended unexpectedly")]
    StreamEnded,
    #[error("malformed pgoutput message")]
    Decode {
        #[source]
        source: DecodeError,
    },
    #[error("column {column} of {table}")]
    Value {
        table: TableId,
        column: String,
        #[source]
        source: ValueError,
    },
    #[error(
        "update of {table} left TOASTed column {column} unchanged and the server did not send \
         its value\nhint: ALTER TABLE {table} REPLICA IDENTITY FULL; makes Postgres send it"
    )]
    UnchangedToast { table: TableId, column: String },
    #[error(
        "column {column} of {table} has type {type_name}, which binary mode cannot read; \
         reconnecting in text mode"
    )]
    BinaryUnsupported {
        table: TableId,
        column: String,
        type_name: String,
    },
    #[error("row change for relation oid {oid} before its Relation message")]
    UnknownRelation { oid: u32 },
    #[error("snapshot of {table}")]
    Copy {
        table: TableId,
        #[source]
        source: CopyError,
    },
    #[error("snapshot of {table}: row has {got} fields, expected {expected}")]
    CopyShape {
        table: TableId,
        got: usize,
        expected: usize,
    },
    #[error("snapshot of {table}: building Arrow arrays")]
    Arrow {
        table: TableId,
        #[source]
        source: tidewater_core::ArrowError,
    },
    #[error("the source was used out of order: {what}")]
    Misuse { what: &'static str },
}

impl tidewater_core::Classified for PostgresError {
    fn class(&self) -> ErrorClass {
        PostgresError::class(self)
    }
}

impl PostgresError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PostgresError::Url { .. }
            | PostgresError::UrlPart { .. }
            | PostgresError::TlsConfig { .. }
            | PostgresError::Tls(_) => ErrorClass::Config,
            PostgresError::SlotLost { .. }
            | PostgresError::PublicationIncomplete { .. }
            | PostgresError::SlotInvalidated { .. }
            | PostgresError::SlotForeign { .. }
            | PostgresError::SlotWithoutLake { .. } => ErrorClass::Config,
            PostgresError::Connect { source, .. } | PostgresError::Query { source, .. } => {
                query_class(source)
            }
            PostgresError::StreamEnded | PostgresError::SlotBusy { .. } => ErrorClass::Transient,
            PostgresError::Replication { source } => match source.sqlstate() {
                _ if source.is_auth() => ErrorClass::Config,
                _ if matches!(source, ReplicationError::Tls(_)) => ErrorClass::Config,
                // The server names what is wrong by SQLSTATE: a missing slot or
                // publication (42704), an invalidated slot (55000), a missing
                // privilege (42501) or database (3D000) are config errors.
                Some(code) => source_class(crate::sqlstate::class_of_code(code)),
                None => ErrorClass::Transient,
            },
            // A full disk may clear; the server resends the transaction.
            PostgresError::Spill { .. } => ErrorClass::Transient,
            // The retry asks for text mode.
            PostgresError::BinaryUnsupported { .. } => ErrorClass::Transient,
            PostgresError::Value { .. } | PostgresError::UnchangedToast { .. } => {
                ErrorClass::Definite
            }
            PostgresError::Decode { .. }
            | PostgresError::UnknownRelation { .. }
            | PostgresError::Copy { .. }
            | PostgresError::CopyShape { .. }
            | PostgresError::Arrow { .. }
            | PostgresError::Misuse { .. } => ErrorClass::Internal,
        }
    }
}

/// The source only reads: a server answer the table calls definite (a data
/// or integrity error, an internal error) names no table the pipeline could
/// stop, and the source has always retried it, so it stays transient here.
fn source_class(class: ErrorClass) -> ErrorClass {
    match class {
        ErrorClass::Definite => ErrorClass::Transient,
        other => other,
    }
}

/// The source's own statements name tables it has just listed: a table or
/// column that does not exist (42P01, 42703) was dropped in between, and the
/// next attempt, which lists again, goes on without it. Everything else as
/// [`source_class`].
fn query_class(error: &tokio_postgres::Error) -> ErrorClass {
    match error.code().map(|code| code.code()) {
        Some("42P01" | "42703") => ErrorClass::Transient,
        _ => source_class(crate::sqlstate::class(error)),
    }
}

pub(crate) fn query_error(
    what: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> PostgresError {
    let what = what.into();
    move |source| PostgresError::Query { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::ServerError;

    fn replication(code: &str) -> PostgresError {
        PostgresError::Replication {
            source: ReplicationError::Server(ServerError {
                severity: "ERROR".into(),
                code: code.into(),
                message: "m".into(),
                detail: None,
                hint: None,
            }),
        }
    }

    /// The replication stream follows the one table, except that the source
    /// retries what the table calls definite.
    #[test]
    fn replication_errors_follow_the_sqlstate_table() {
        for (code, class) in [
            ("42704", ErrorClass::Config),    // slot or publication missing
            ("55000", ErrorClass::Config),    // slot invalidated
            ("42501", ErrorClass::Config),    // privilege
            ("3D000", ErrorClass::Config),    // database
            ("28P01", ErrorClass::Config),    // password
            ("55006", ErrorClass::Transient), // slot active for another pid
            ("57P01", ErrorClass::Transient), // admin shutdown
            ("08006", ErrorClass::Transient), // connection failure
            ("XX000", ErrorClass::Transient), // definite in the table: retried here
            ("22P02", ErrorClass::Transient), // likewise
        ] {
            assert_eq!(replication(code).class(), class, "{code}");
        }
        let closed = PostgresError::Replication {
            source: ReplicationError::Closed,
        };
        assert_eq!(closed.class(), ErrorClass::Transient);
    }
}
