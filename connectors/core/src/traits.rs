//! The Source and Sink contracts. The binary dispatches over an enum of
//! concrete connectors, so these traits use native `async fn`.

use std::collections::BTreeMap;

use crate::batch::ChangeBatch;
use crate::event::{ChangeEvent, Mark, TableId};

/// A problem found by a preflight check, with the statement or setting that
/// fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, naming the setting, the expected and the actual value.
    pub what: String,
    /// The exact fix (an SQL statement or a config line).
    pub fix: String,
}

/// A database log to replicate from.
///
/// # Contract
/// * `preflight` changes nothing on the server; it returns *every* problem it
///   finds, not just the first.
/// * `next_event` yields events in source commit order. The rows of one
///   transaction sit between its `Begin` and `Commit`; a `Schema` for a table
///   precedes its first row and every change of its columns. Changes at or below
///   the mark a sink reports for their table are still yielded: skipping them is
///   the coordinator's job, so one rule covers every source.
/// * `ack(value)` tells the server that everything up to `value` is durable
///   downstream. It is only ever called with the `ack` of a `Commit` whose
///   transaction every table has made durable, or the `ack` of a `Heartbeat`
///   when nothing is pending, so the server may discard its log up to there. A source must never treat
///   anything it has merely *received* as acknowledged.
/// * After a crash the source resumes from the last acknowledged position (or
///   earlier); it must never resume later than that.
#[allow(async_fn_in_trait)] // dispatched through an enum, never sent as `dyn`
pub trait Source {
    type Error: std::error::Error + Send + Sync + 'static;

    async fn next_event(&mut self) -> Result<ChangeEvent, Self::Error>;

    async fn ack(&mut self, value: u64) -> Result<(), Self::Error>;
}

/// A destination that makes batches durable.
///
/// # Contract
/// * `write` is called with batches of one table in mark order; a batch is not
///   visible to readers until `commit` returns.
/// * `commit` is the durability barrier: when it returns `Ok`, every batch
///   written before it is durable and readers see all or nothing of it, together
///   with the recorded marks and `position`. A crash before it returns leaves no
///   trace readers can see.
/// * Idempotent: a batch whose last mark is at or below the table's durable mark
///   was already committed and must be skipped, never duplicated.
/// * `marks` returns, after any restart, the last committed mark of each table
///   the sink holds for this pipeline.
#[allow(async_fn_in_trait)] // dispatched through an enum, never sent as `dyn`
pub trait Sink {
    type Error: std::error::Error + Send + Sync + 'static;

    async fn marks(&mut self) -> Result<BTreeMap<TableId, Mark>, Self::Error>;

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), Self::Error>;

    async fn commit(&mut self, position: &str) -> Result<(), Self::Error>;
}
