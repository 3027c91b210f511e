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
pub mod sqlstate;
pub mod tls;
mod types;
pub mod value;

pub use error::PostgresError;
pub use preflight::{advisories, preflight};
pub use replication::{Lsn, LsnAcknowledger};
pub use source::{
    PlannedTable, PostgresConfig, PostgresSource, SlotState, SnapshotResume, HEARTBEAT_PREFIX,
};
pub use tidewater_core::TableFilter;
pub use types::{column_type, column_type_dims};
