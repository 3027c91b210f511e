//! The contract every tidewater connector speaks.
//!
//! A source turns its database log into [`ChangeEvent`]s; the [`Batcher`] turns
//! row changes into Arrow record batches per (table, schema version) with the
//! lake metadata columns; a sink makes those batches durable and reports back
//! the mark it reached. This crate owns the pieces shared by every connector so
//! that the Postgres source, the MySQL source and every sink agree on them:
//!
//! * the change model: [`ChangeEvent`], [`RowChange`], [`Datum`], [`Mark`];
//! * versioned table schemas: [`TableSchema`], [`ColumnType`];
//! * the one mapping from source column types to Arrow types ([`arrow_type`]);
//! * the [`Batcher`] (max rows / bytes / delay);
//! * the [`Source`] (with its [`Acknowledger`]) and [`Sink`] traits with their
//!   contracts;
//! * the pipeline's records and the store they are kept in ([`state`]);
//! * columns masked or left out at capture ([`mask`]);
//! * error classes ([`ErrorClass`]) every connector error maps to (defined in
//!   `tidewater-endpoint`, beside the SQLSTATE table that answers in them).
//!
//! How a connector reaches its server (urls, TLS, identifier quoting, the
//! SQLSTATE table) is `tidewater-endpoint`'s, not this crate's.

mod batch;
pub mod calendar;
pub mod decimal;
mod error;
mod event;
mod filter;
pub mod lease;
pub mod mask;
mod schema;
pub mod state;
pub mod state_file;
mod traits;
mod types;
pub mod uuid_text;

pub use arrow_schema::ArrowError;
pub use batch::{build_array, key_string, BatchLimits, Batcher, ChangeBatch};
pub use error::{error_chain, Classified, ErrorClass};
pub use event::{ChangeEvent, CommitInfo, Datum, Mark, Op, RowBlock, RowChange, TableId};
pub use filter::TableFilter;
pub use lease::Holder;
pub use schema::{Column, ColumnType, TableSchema};
pub use traits::{
    take_copy_requests, Acknowledger, CopyRequestQueue, Erased, Problem, Replica, ResumePoint,
    Sink, SlotInfo, SnapshotPhase, Source, Start, StoppedTable,
};
pub use types::{
    arrow_field, arrow_type, date_range_days, metadata_fields, timestamp_range_us, META_COLUMNS,
    SOURCE_TYPE_KEY,
};
