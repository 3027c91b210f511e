//! The warehouse sink: the current state of every captured table in a
//! Postgres-protocol database, for teams whose analytics run on a warehouse
//! rather than a lake.
//!
//! Where the lake keeps an append-only change log (the current state is a
//! query over it), the warehouse keeps one row per primary key, so
//! `SELECT * FROM orders` there is the source table as of the last commit.
//! The same exactly-once rule holds: a batch's rows and the mark of its last
//! change are made durable by one transaction ([`sink`]). Optionally a
//! `<table>__changes` change log with the lake's metadata columns sits next
//! to each table.
//!
//! * [`types`]: the reverse type mapping (tidewater column type → Postgres);
//! * [`copy`]: Arrow batches → binary COPY;
//! * [`value`]: warehouse values read back, for unchanged TOAST values;
//! * [`sink`]: staging, apply, state;
//! * `retention`: change-log rows past `changelog_retention` deleted.

pub mod copy;
mod error;
pub mod lease;
mod retention;
pub mod sink;
mod state;
pub mod types;
pub mod value;

pub use error::WarehouseError;
pub use sink::{ApplyMode, TableRecord, WarehouseSettings, WarehouseSink};
pub use state::WarehouseState;
