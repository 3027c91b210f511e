//! Postgres source: pgoutput logical replication with a consistent initial
//! snapshot. See [`source`] for the flow and how progress is acknowledged.

mod catalog;
mod copy;
mod error;
pub mod pgoutput;
mod preflight;
pub mod source;
mod types;
pub mod value;

pub use error::PostgresError;
pub use pgwire_replication::Lsn;
pub use preflight::{advisories, preflight};
pub use source::{PostgresConfig, PostgresSource, SlotState};
pub use tidewater_core::TableFilter;
pub use types::column_type;
