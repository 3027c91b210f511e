use tidewater_core::{Classified, ErrorClass, TableId};

/// What went wrong talking to the warehouse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarehouseError {
    /// A statement or the connection failed; `what` names the step (never a
    /// row value), `table` the source table whose rows it wrote, if any.
    #[error("warehouse: {what}")]
    Server {
        what: String,
        table: Option<TableId>,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("warehouse url: {0}")]
    Url(#[source] tidewater_endpoint::postgres::TlsConfigError),
    #[error("encoding column {column} of {table} for COPY: {reason}")]
    Encode {
        table: TableId,
        column: String,
        reason: String,
    },
    #[error(
        "table {table} has no key columns: the warehouse keeps one row per key\n\
         hint: give the source table a primary key (or exclude it from source.tables)"
    )]
    NoKey { table: TableId },
    #[error(
        "another process holds pipeline {pipeline} in this warehouse (advisory lock taken)\n\
         hint: stop the other tidewater process; every running pipeline needs its own name"
    )]
    Busy { pipeline: String },
    /// A state row tidewater wrote does not parse: it was damaged, and no
    /// retry mends it. `detail` says what is wrong, never the row's content.
    #[error("warehouse state {location} is unreadable: {detail}\nhint: {hint}")]
    State {
        /// The table and row, e.g. `tidewater.pipeline_state, pipeline 'p', key 'stopped_tables'`.
        location: String,
        detail: String,
        hint: &'static str,
    },
    /// The target name of a source table cannot be used: too long for
    /// Postgres, or already the target of another source table.
    #[error("warehouse table {target} for {table}: {problem}\nhint: {hint}")]
    Target {
        table: TableId,
        target: String,
        problem: String,
        hint: String,
    },
}

impl WarehouseError {
    pub(crate) fn server(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |source| WarehouseError::Server {
            what,
            table: None,
            source,
        }
    }

    /// [`WarehouseError::server`] for a statement writing `table`'s rows:
    /// a definite failure of it (a constraint added by hand, a value the
    /// target column refuses) stops that table only.
    pub(crate) fn server_on(
        table: &TableId,
        what: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        let table = Some(table.clone());
        move |source| WarehouseError::Server {
            what,
            table,
            source,
        }
    }
}

impl Classified for WarehouseError {
    fn class(&self) -> ErrorClass {
        match self {
            WarehouseError::Server { source, .. } => tidewater_endpoint::sqlstate::class(source),
            WarehouseError::Url(_)
            | WarehouseError::NoKey { .. }
            | WarehouseError::Target { .. }
            | WarehouseError::State { .. } => ErrorClass::Config,
            WarehouseError::Encode { .. } => ErrorClass::Definite,
            WarehouseError::Busy { .. } => ErrorClass::Transient,
        }
    }

    fn table(&self) -> Option<&TableId> {
        match self {
            WarehouseError::Server { table, .. } => table.as_ref(),
            WarehouseError::Encode { table, .. }
            | WarehouseError::NoKey { table }
            | WarehouseError::Target { table, .. } => Some(table),
            WarehouseError::Url(_) | WarehouseError::Busy { .. } | WarehouseError::State { .. } => {
                None
            }
        }
    }
}
