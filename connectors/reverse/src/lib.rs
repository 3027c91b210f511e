//! Reverse ETL (DESIGN §7): a SQL query over the lake, its result written
//! by key into a production Postgres or MySQL/MariaDB table — only the rows
//! that changed since the last push, in bounded transactions, at a bounded
//! rate.
//!
//! ```text
//!  lake: committed Parquet files ─▶ engine (DataFusion, memory pool + spill dir:
//!        <s>.<t> current state, <s>.<t>__changes, filters pushed into the scan)
//!        ─▶ result rows, sorted by the job's key, as a stream ─┐
//!  state file (key order) + journal ─ last pushed, as a stream ─┴▶ merge: added / changed /
//!                                                                  unchanged / deleted (mirror)
//!        ─▶ target: batch_rows per transaction, upsert or delete by key,
//!           rate-limited, lock timeouts and deadlocks retried with backoff
//!        ─▶ journal after each commit ─▶ next state written as the merge goes,
//!           renamed over the old one when the run ends
//! ```
//!
//! Nothing holds the whole result or state: a run's memory is the query's
//! pool (`memory_mb`), one result batch and one target transaction.

pub mod engine;
pub mod error;
mod job;
pub mod state;
mod target;
pub mod types;
pub mod value;

pub use engine::Lake;
pub use error::ReverseError;
pub use job::{run_job, JobSpec, Mode, Report, RunOptions};
