//! Reverse ETL (DESIGN §7): a SQL query over the lake, its result written
//! by key into a production Postgres or MySQL/MariaDB table — only the rows
//! that changed since the last push, in bounded transactions, at a bounded
//! rate.
//!
//! ```text
//!  lake change logs ─▶ engine (DataFusion: <s>.<t> current state, <s>.<t>__changes)
//!        ─▶ result rows ─▶ key → row hash ─┐
//!  state file (+ journal) ─ last pushed ────┴▶ diff: added / changed / deleted (mirror)
//!        ─▶ target: batch_rows per transaction, upsert or delete by key,
//!           rate-limited, lock timeouts and deadlocks retried with backoff
//!        ─▶ journal after each commit ─▶ state replaced when the run ends
//! ```

pub mod engine;
pub mod error;
mod job;
pub mod state;
mod target;
pub mod types;
pub mod value;

pub use error::ReverseError;
pub use job::{run_job, JobSpec, Mode, Report, RunOptions};
