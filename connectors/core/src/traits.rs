//! The Source and Sink contracts. The binary is generic over them (one
//! launch path and one coordinator for every connector), dispatching
//! statically, so these traits use native `async fn`.

use std::collections::HashMap;

use crate::batch::ChangeBatch;
use crate::error::Classified;
use crate::event::{ChangeEvent, Datum, Mark, TableId};
use crate::schema::TableSchema;
use crate::state::SnapshotPlan;

/// A problem found by a preflight check, with the statement or setting that
/// fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, naming the setting, the expected and the actual value.
    pub what: String,
    /// The exact fix (an SQL statement or a config line).
    pub fix: String,
}

/// What an erasure ([`Sink::forget`]) removed from one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Change-log rows removed.
    pub log_rows: u64,
    /// Current-state rows removed.
    pub current_rows: u64,
    /// Data files rewritten without them.
    pub files_rewritten: usize,
    /// Log entries and checkpoints deleted (they may quote values).
    pub log_entries_deleted: usize,
}

/// Tables waiting to be copied again, shared between the pipeline (which
/// adds) and a source (which takes them between transactions).
pub type CopyRequestQueue = std::sync::Arc<std::sync::Mutex<Vec<TableId>>>;

/// Takes every table waiting in `queue` (a source, between transactions).
pub fn take_copy_requests(queue: &CopyRequestQueue) -> Vec<TableId> {
    match queue.lock() {
        Ok(mut waiting) => std::mem::take(&mut *waiting),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

/// A database log to replicate from, through its whole life in one run:
///
/// ```text
///  connect (the source's own constructor)
///    └▶ tables ─▶ preflight ─▶ replica ─▶ [the binary decides] ─▶ start(Start)
///         └▶ next_event … (acknowledger().ack(v) from the coordinator, any time)
///              └▶ close
/// ```
///
/// # Contract
/// * `tables` lists what the configuration selects, as the server shows it
///   now; `preflight` returns every setting, privilege or table property
///   that would stop replication, each with its fix (empty: ready).
/// * `replica` reports what the server keeps for this pipeline (a
///   replication slot, or nothing for a binlog reader), as facts for the
///   start-up decision; it changes nothing.
/// * `start` does what the decision said, exactly once per run: a fresh
///   snapshot (dropping a stale slot first when told), the resumption of an
///   interrupted one from a [`ResumePoint`] whose details are the source's
///   own, or the stream. It returns the snapshot plan the pipeline must
///   record before its first commit, when the source has one.
/// * `next_event` yields events in source commit order. The rows of one
///   transaction sit between its `Begin` and `Commit`; a `Schema` for a table
///   precedes its first row and every change of its columns. Changes at or below
///   the mark a sink reports for their table are still yielded: skipping them is
///   the coordinator's job, so one rule covers every source. `ready_event`
///   returns an event already decoded, without waiting for the server.
/// * Acknowledgements go through an [`Acknowledger`] taken with
///   `acknowledger` before the source is handed to its reading task: they
///   never wait for the next event (see the [`Acknowledger`] contract).
/// * After a crash the source resumes from the last acknowledged position (or
///   earlier); it must never resume later than that.
/// * `next_event` is not cancel-safe: a caller that races it against timers
///   must run it in a task of its own.
/// * `close` reports the last acknowledgement and ends the sessions.
#[allow(async_fn_in_trait)] // dispatched through concrete types, never `dyn`
pub trait Source: Sized {
    type Error: Classified;
    /// This source's acknowledgement handle.
    type Ack: Acknowledger;

    async fn tables(&mut self) -> Result<Vec<TableId>, Self::Error>;

    async fn preflight(&mut self, tables: &[TableId]) -> Result<Vec<Problem>, Self::Error>;

    async fn replica(&mut self) -> Result<Replica, Self::Error>;

    /// Whether the server still has its log at `position` (a position this
    /// source produced), so reading can resume there. Default: yes (a
    /// slot keeps what it has not confirmed).
    async fn retains(&mut self, position: &str) -> Result<bool, Self::Error> {
        let _ = position;
        Ok(true)
    }

    /// The schema whose key an interrupted snapshot of `table` resumes
    /// after, when the source resumes by key ([`ResumePoint::Keys`]; the
    /// destination reads the key at the table's mark). Default: None, the
    /// source resumes by other means.
    async fn resume_schema(&mut self, table: &TableId) -> Result<Option<TableSchema>, Self::Error> {
        let _ = table;
        Ok(None)
    }

    async fn start(&mut self, start: Start) -> Result<Option<SnapshotPlan>, Self::Error>;

    /// Runs on the source's own task (hence `Send`).
    fn next_event(
        &mut self,
    ) -> impl std::future::Future<Output = Result<ChangeEvent, Self::Error>> + Send;

    fn ready_event(&mut self) -> Option<ChangeEvent> {
        None
    }

    /// Where to ask this source to copy tables again while it streams
    /// (they are taken at its next transaction boundary and copied beside
    /// the stream, like a table that joins); None when it cannot.
    fn copy_requests(&self) -> Option<CopyRequestQueue> {
        None
    }

    /// A handle that acknowledges for this source, from any task, while
    /// `next_event` runs or waits. Every handle of one source is the same
    /// acknowledgement.
    fn acknowledger(&self) -> Self::Ack;

    /// Runs on the source's own task (hence `Send`).
    fn close(self) -> impl std::future::Future<Output = ()> + Send;
}

/// What the server keeps for a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replica {
    /// A replication slot named `name` (Postgres); `slot` is None when it
    /// does not exist.
    Slot {
        name: String,
        slot: Option<SlotInfo>,
    },
    /// Nothing (a binlog reader): the pipeline's records say where to
    /// resume, and acknowledged positions are recorded there.
    Nothing,
}

/// A replication slot as the server lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotInfo {
    /// False when it belongs to another database or output plugin.
    pub ours: bool,
    /// Whose it is, for a message when it is not ours.
    pub owner: String,
    pub active_pid: Option<i32>,
    /// The server removed log it still needed (`wal_status = 'lost'`).
    pub lost: bool,
    pub confirmed_flush: Option<u64>,
}

/// How a source starts reading in this run.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new consistent snapshot of `tables` (rows only when `copy`), then
    /// the stream from its point. `drop_slot`: a stale slot of the
    /// pipeline's goes first.
    Snapshot {
        tables: Vec<TableId>,
        copy: bool,
        drop_slot: bool,
    },
    /// The interrupted snapshot of `tables`, on from where the destination
    /// holds it.
    ResumeSnapshot {
        tables: Vec<TableId>,
        from: ResumePoint,
    },
    /// The stream of `streamed`; `copies` are copied while the others stream
    /// and join them after; `stopped` are not read. `from`: where to resume
    /// (binlog; None: the server's current position); a slot resumes from
    /// its confirmed position.
    Stream {
        streamed: Vec<TableId>,
        copies: Vec<TableId>,
        stopped: Vec<TableId>,
        from: Option<String>,
    },
}

/// Where an interrupted snapshot resumes, in the source's own terms.
#[derive(Debug, Clone)]
pub enum ResumePoint {
    /// Chunked copies (Postgres): the recorded plan, and how many whole
    /// chunks of each table the destination holds.
    Chunks {
        plan: SnapshotPlan,
        done: HashMap<TableId, u32>,
    },
    /// Copies in key order (binlog): the snapshot's position, and for each
    /// table with rows the `_tw_ord` and key of the last row held.
    Keys {
        position: String,
        keys: HashMap<TableId, (u64, Vec<Datum>)>,
    },
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
    /// nothing is pending; the stream waits while it runs, so work that
    /// costs what a table costs belongs on tasks of the sink's own, and
    /// only a commit here. Default: nothing.
    async fn maintain(&mut self) {}

    /// Erases every row of the keys whose digests are `keys` (see
    /// `tidewater_lake::digest`) from `table`, change log and current
    /// state, and from every file and log version that held them; between
    /// commits, nothing pending. None: this sink cannot erase. Default:
    /// None.
    async fn forget(
        &mut self,
        table: &TableId,
        keys: &std::collections::HashSet<u128>,
    ) -> Result<Option<Erased>, Self::Error> {
        let _ = (table, keys);
        Ok(None)
    }

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
