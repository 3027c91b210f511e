//! Postgres source: pgoutput logical replication with a consistent initial
//! snapshot. See [`source`] for the flow and how progress is acknowledged.

pub mod binary;
mod catalog;
pub mod chunks;
mod copy;
mod copy_arrow;
mod error;
pub mod pgoutput;
mod preflight;
pub mod replication;
pub mod source;
mod types;
pub mod value;

// TLS settings and the SQLSTATE table are every Postgres connection's
// (the warehouse's and reverse ETL's too): they live in tidewater-endpoint,
// named here as before.
use tidewater_endpoint::{postgres as tls, sqlstate};

pub use catalog::table_columns;
pub use chunks::chunks_committed;
pub use error::PostgresError;
pub use preflight::{advisories, preflight};
pub use replication::{Lsn, LsnAcknowledger};
pub use source::{
    PlannedTable, PostgresConfig, PostgresSource, SlotState, SnapshotResume, HEARTBEAT_PREFIX,
};
pub use tidewater_core::TableFilter;
pub use types::{column_type, column_type_dims};
