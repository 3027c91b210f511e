//! The Source and Sink contracts. The binary works with concrete connectors
//! (an enum once there are several), so these traits use native `async fn`.

use crate::batch::ChangeBatch;
use crate::error::Classified;
use crate::event::{ChangeEvent, Mark, TableId};
use crate::schema::TableSchema;

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
/// * `next_event` yields events in source commit order. The rows of one
///   transaction sit between its `Begin` and `Commit`; a `Schema` for a table
///   precedes its first row and every change of its columns. Changes at or below
///   the mark a sink reports for their table are still yielded: skipping them is
///   the coordinator's job, so one rule covers every source.
/// * Acknowledgements go through an [`Acknowledger`] taken with
///   `acknowledger` before the source is handed to its reading task: they
///   never wait for the next event (see the [`Acknowledger`] contract).
/// * After a crash the source resumes from the last acknowledged position (or
///   earlier); it must never resume later than that.
/// * `next_event` is not cancel-safe: a caller that races it against timers
///   must run it in a task of its own.
#[allow(async_fn_in_trait)] // dispatched through concrete types, never `dyn`
pub trait Source {
    type Error: Classified;
    /// This source's acknowledgement handle.
    type Ack: Acknowledger;

    async fn next_event(&mut self) -> Result<ChangeEvent, Self::Error>;

    /// A handle that acknowledges for this source, from any task, while
    /// `next_event` runs or waits. Every handle of one source is the same
    /// acknowledgement.
    fn acknowledger(&self) -> Self::Ack;
}

/// Tells a source's server what is durable downstream, without waiting for
/// the source's next event.
///
/// # Contract
/// * `ack(value)` says that everything up to `value` is durable downstream.
///   It is only ever called with the `ack` of a `Commit` whose transaction
///   every table has made durable, or the `ack` of a `Heartbeat` when nothing
///   is pending, so the server may discard its log up to there. A source must
///   never treat anything it has merely *received* as acknowledged, nor
///   report a position beyond the largest value acknowledged.
/// * Values only grow: a value at or below an earlier one changes nothing.
/// * It never blocks and never fails: it records the value and wakes whatever
///   reports it, which tells the server promptly (Postgres: a standby status
///   update at once, even while the stream waits for server data) — and at
///   the latest when the source closes, which reports the last value first.
/// * Clones share one position; calling it from several tasks is safe.
///   After the source is closed it changes nothing.
pub trait Acknowledger: Clone + Send + Sync + 'static {
    fn ack(&self, value: u64);
}

/// Snapshot progress recorded with a sink commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPhase {
    /// The initial snapshot is still being copied.
    Running,
    /// The initial snapshot is complete in this table.
    Done,
}

/// A table the pipeline stopped replicating after a change it could not
/// follow (a definite error): its changes from `position` on are not in the
/// lake, so it stays stopped — across restarts — until it is copied again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedTable {
    pub table: TableId,
    /// The source position of the transaction it could not follow.
    pub position: String,
    /// The error, as the log said it (never a row value).
    pub reason: String,
    /// When it stopped, seconds since the Unix epoch.
    pub stopped_at: u64,
}

/// A destination that makes batches durable.
///
/// # Contract
/// * `prepare` makes a table ready for batches of `schema` (creating it, or
///   widening it, as the destination needs) before the first `write`.
/// * `write` is called with batches of one table in mark order; nothing written
///   is visible to readers until `commit` returns.
/// * `commit` is the durability barrier: when it returns `Ok`, every batch
///   written before it is durable and readers see all or nothing of each
///   table's part, together with its mark and `position`. A crash before it
///   returns leaves nothing readers can see. `phase`, when given, is recorded
///   for every prepared table, even one without new rows.
/// * Idempotent: a batch whose last mark is at or below the table's durable
///   mark was already committed and must be skipped, never duplicated.
/// * `mark` returns, after any restart, the last committed mark of a table.
#[allow(async_fn_in_trait)] // dispatched through concrete types, never `dyn`
pub trait Sink {
    type Error: Classified;

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), Self::Error>;

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, Self::Error>;

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), Self::Error>;

    /// The committed image of each row of `schema.table` whose key (key
    /// column values in schema order) is in `keys`, by [`crate::key_string`]:
    /// the latest change by mark, absent when that was a delete or a truncate
    /// came after it. Used to restore values a source did not resend
    /// (Postgres' unchanged TOAST values).
    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<crate::Datum>],
    ) -> Result<std::collections::HashMap<String, Vec<crate::Datum>>, Self::Error>;

    /// Notes the DDL statement that shaped `table` at `seq`, for the next
    /// schema version recorded from a row after it (dropped when the rows
    /// after it bring no new version).
    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String);

    /// Housekeeping between commits (compaction, removal of files no version
    /// needs): never changes what readers see, nor any mark; its failures
    /// are the sink's to log and retry. Called after checkpoints, when
    /// nothing is pending. Default: nothing.
    async fn maintain(&mut self) {}

    /// Records `phase` as `table`'s snapshot state from its next commit on,
    /// whatever the commit's own `phase`: a table copied while the others
    /// stream is `Running` until its copy is complete, then `Done` (committed
    /// at the next commit even without new rows). Its commits record at
    /// least `mark`, the copy's point, even when the copy held no row.
    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark);

    /// Bytes written since the last commit, not yet visible. Default 0.
    fn staged_bytes(&self) -> u64 {
        0
    }

    /// Commits every table with written data; returns how many committed.
    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, Self::Error>;
}
