//! The pipeline's errors, and the one place their class is decided.
//!
//! A class means one action (see `crate::policy`): transient errors restart
//! the run from the durable marks, config errors stop with exit 2, definite
//! errors that name a table stop that table only, internal ones stop.

use tidewater_core::{Classified, ErrorClass, Problem, TableId};
use tidewater_mysql::MysqlError;
use tidewater_postgres::PostgresError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] PostgresError),
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    #[error(transparent)]
    Sink(SinkFailure),
    #[error(transparent)]
    Masking(#[from] tidewater_core::mask::MaskError),
    #[error("building a batch")]
    Batch(#[source] tidewater_core::ArrowError),
    #[error("the source server is not ready for replication:\n{}", format_problems(.0))]
    Preflight(Vec<Problem>),
    #[error("the source task stopped unexpectedly")]
    SourceGone,
    #[error(
        "an update of {table} left the TOASTed column {column} unchanged, the server did not \
         send its value, and the lake holds no earlier image of that row\n\
         hint: ALTER TABLE {table} REPLICA IDENTITY FULL; makes Postgres send it; then take a \
         new snapshot of the table"
    )]
    UnresolvedToast { table: TableId, column: String },
    #[error(
        "table {0} is not selected by source.tables (or does not exist)\n\
         hint: --table takes a table the config captures, as the lake names it (schema.table)"
    )]
    NotSelected(TableId),
    #[error(
        "the lake has no completed initial snapshot yet\n\
         hint: run `tidewater snapshot` without --table first"
    )]
    NoLakeYet,
    /// A definite sink error about one table stopped that table (recorded);
    /// what the sink held of the other tables is sent again.
    #[error("table {0} stopped on a sink error; the other tables go on from their durable marks")]
    SinkStoppedTable(TableId),
}

impl PipelineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Source(err) => err.class(),
            PipelineError::Mysql(err) => err.class(),
            PipelineError::Sink(err) => err.class,
            PipelineError::Masking(err) => err.class(),
            PipelineError::Batch(_) => ErrorClass::Internal,
            PipelineError::Preflight(_) => ErrorClass::Config,
            PipelineError::SourceGone => ErrorClass::Internal,
            PipelineError::UnresolvedToast { .. } => ErrorClass::Definite,
            PipelineError::NotSelected(_) | PipelineError::NoLakeYet => ErrorClass::Config,
            PipelineError::SinkStoppedTable(_) => ErrorClass::Transient,
        }
    }
}

/// A sink's error, whatever its type, with its class and the table it is
/// about (if one) kept for the policy.
#[derive(Debug)]
pub struct SinkFailure {
    class: ErrorClass,
    table: Option<TableId>,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkFailure {
    pub fn new<E: Classified>(err: E) -> SinkFailure {
        SinkFailure {
            class: err.class(),
            table: err.table().cloned(),
            error: Box::new(err),
        }
    }
}

impl Classified for SinkFailure {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn table(&self) -> Option<&TableId> {
        self.table.as_ref()
    }
}

impl std::fmt::Display for SinkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SinkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

pub(super) fn sink_error<E: Classified>(err: E) -> PipelineError {
    PipelineError::Sink(SinkFailure::new(err))
}

/// What a table stopped by a sink error records as its reason: the error
/// and its causes on one line, without the server's DETAIL lines (a
/// constraint violation's DETAIL shows the failing row's values).
pub(super) fn stop_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        let text: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("DETAIL:"))
            .collect();
        let text = text.join(" ");
        // A wrapper that prints its cause is followed by that cause.
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

impl From<tidewater_lake::LakeError> for PipelineError {
    fn from(err: tidewater_lake::LakeError) -> Self {
        sink_error(err)
    }
}

pub fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {}\n    fix: {}", p.what, p.fix))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_stop_reason_keeps_the_chain_and_drops_row_details() {
        #[derive(Debug, thiserror::Error)]
        #[error("ERROR: new row violates check constraint \"small\"\nDETAIL: Failing row contains (2, 987654).")]
        struct Db;
        #[derive(Debug, thiserror::Error)]
        #[error("applying a batch of public.bad")]
        struct Step(#[source] Db);
        let reason = stop_reason(&Step(Db));
        assert_eq!(
            reason,
            "applying a batch of public.bad: ERROR: new row violates check constraint \"small\""
        );
    }
}
