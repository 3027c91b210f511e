//! The change model: what a source yields, in commit order.

use std::fmt;
use std::sync::Arc;

use crate::schema::TableSchema;

/// A source table, named as the lake names it: `<schema or database>.<table>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub table: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            table: table.into(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// The kind of a change, as written to `_tw_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row read by a snapshot (`r`).
    Read,
    /// An insert (`c`).
    Insert,
    /// An update, carrying the new row image (`u`).
    Update,
    /// A delete, carrying the old image or at least the key (`d`).
    Delete,
    /// The table was truncated (`t`): every earlier row of the table is gone.
    /// The row carries no column values.
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// The position of one change in the source's total order: (`_tw_seq`, `_tw_ord`).
///
/// `seq` identifies the source commit and increases strictly from commit to
/// commit; `ord` numbers the changes inside it from 1. Snapshot rows share the
/// snapshot's `seq` and are numbered by row. A lake table records the mark of the
/// last change it holds; on restart every change at or below it is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mark {
    pub seq: u64,
    pub ord: u64,
}

impl Mark {
    pub const ZERO: Mark = Mark { seq: 0, ord: 0 };

    pub fn new(seq: u64, ord: u64) -> Self {
        Self { seq, ord }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.ord)
    }
}

/// One column value, already decoded from the source's wire format into the
/// representation of its Arrow type (see [`crate::arrow_type`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    /// Any unsigned integer; the column type says the width.
    UInt(u64),
    Float32(f32),
    Float64(f64),
    /// Unscaled value of a Decimal128 column (the column type holds the scale).
    Decimal128(i128),
    /// Unscaled value of a Decimal256 column (the column type holds the scale).
    Decimal256(arrow_buffer::i256),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 (UTC or wall clock, per the column type).
    Timestamp(i64),
    /// Microseconds since midnight.
    Time(i64),
    /// Signed elapsed microseconds.
    Duration(i64),
    Uuid([u8; 16]),
    List(Vec<Datum>),
    /// Postgres sent "unchanged TOAST value" and no old image carried it: the
    /// coordinator restores it from the row's previous image (see
    /// [`crate::Batcher::resolve_unchanged`]) before the batch is cut. Also
    /// what a sink returns for a value it cannot read back.
    Unchanged,
}

/// One row change of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub table: TableId,
    pub op: Op,
    /// Position inside the transaction (from 1), or the row number in a snapshot.
    pub ord: u64,
    /// Values in the order of the table schema's columns. Empty for truncates.
    pub values: Vec<Datum>,
}

/// Consecutive row changes of one table that a source decoded straight into
/// Arrow arrays (the MySQL binlog decoder does), so they skip [`Datum`]s.
/// Row `i` has op `ops[i]` and ord `first_ord + i` in its transaction.
#[derive(Debug, Clone)]
pub struct RowBlock {
    pub table: TableId,
    pub ops: Vec<Op>,
    pub first_ord: u64,
    /// One array per column of the table's current schema version, each of
    /// exactly [`crate::arrow_type`] of its column.
    pub columns: Vec<arrow_array::ArrayRef>,
}

impl RowBlock {
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The block without its first `n` rows.
    pub fn skip(&self, n: usize) -> RowBlock {
        let n = n.min(self.len());
        let rest = self.len() - n;
        RowBlock {
            table: self.table.clone(),
            ops: self.ops[n..].to_vec(),
            first_ord: self.first_ord + n as u64,
            columns: self.columns.iter().map(|c| c.slice(n, rest)).collect(),
        }
    }
}

/// What a source knows about the commit a row belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// `_tw_seq` of every row in the transaction.
    pub seq: u64,
    /// Resumable position after this transaction, human readable (`_tw_position`).
    pub position: String,
    /// What to pass to [`crate::Acknowledger::ack`] once this transaction is durable
    /// (Postgres: the end LSN of its commit record). Only meaningful on the
    /// `Commit` event; a `Begin` may not know it yet.
    pub ack: u64,
    /// Commit time, microseconds since the Unix epoch, UTC.
    pub commit_ts_us: i64,
    /// Source transaction id, when known.
    pub txid: Option<String>,
}

/// What a source yields. Events arrive in commit order; the rows of one
/// transaction arrive between its `Begin` and `Commit`.
#[derive(Debug, Clone)]
pub enum ChangeEvent {
    /// A transaction starts; `commit` describes the commit it will end with
    /// (Postgres announces the final LSN up front).
    Begin(CommitInfo),
    /// A table's schema, sent before the first row that uses it and again after
    /// every change. Its `version` increases with each change.
    Schema(Arc<TableSchema>),
    Row(RowChange),
    /// Several rows of one table at once, already in Arrow form.
    Block(RowBlock),
    /// The transaction is complete; every change up to it may be made durable and
    /// acknowledged once the sink says so.
    Commit(CommitInfo),
    /// The source is alive and has sent everything up to `ack`: when no row is
    /// pending, acknowledging `ack` is safe.
    Heartbeat {
        ack: u64,
        position: String,
    },
    /// The consistent snapshot is complete (it was delivered as one transaction
    /// whose `Commit` came just before); streaming continues from `position`.
    SnapshotDone {
        seq: u64,
        position: String,
    },
    /// A table copied while the stream runs (it appeared after the initial
    /// snapshot, or its copy was interrupted). Comes after the table's
    /// `Schema` and inside a `Begin` whose `seq` sorts after everything the
    /// lake holds of the table; the `Read` rows that follow, up to
    /// `TableSnapshotDone`, are the whole table at that point and replace
    /// whatever the lake held of it. There is no `Commit`: the copy moves no
    /// source position. Whole stream transactions of other tables may come
    /// between the copy's rows (each copy row again after a `Begin` of the
    /// copy's `seq`); the table's own changes come in mark order — every
    /// copy row, then its streamed changes above the copy's `seq`, then
    /// `TableSnapshotDone` — so its marks only grow.
    TableSnapshot {
        table: TableId,
    },
    /// The copy of `table` is complete, with the changes streamed since the
    /// copy's point before it. Every streamed change of the table at or
    /// below `seq` is already in it and must be skipped.
    TableSnapshotDone {
        table: TableId,
        seq: u64,
    },
    /// The source cannot follow `table` from the current transaction on (a
    /// definite error, `reason`, which names no row value): the table stops —
    /// until it is copied again — and the others go on. No further row of
    /// it comes in this run.
    TableFailed {
        table: TableId,
        reason: String,
    },
    /// What the source server keeps for this pipeline (sampled now and then,
    /// for monitoring): Postgres WAL retained by the slot, MySQL binlog files
    /// after the one being read.
    SourceStatus {
        retained_bytes: Option<u64>,
        files_behind: Option<u64>,
    },
    /// A chunk of the initial snapshot's copy of `table` starts (`done`
    /// false) or ends (`done` true). Chunks never interleave, and between
    /// the end of one and the start of the next every row copied so far
    /// belongs to a complete chunk: the only moments a snapshot may commit,
    /// so an interrupted one can resume after its last committed chunk.
    SnapshotChunk {
        table: TableId,
        index: u32,
        done: bool,
    },
    /// A snapshot copy of `table` starts; the server estimates it at `rows`
    /// rows (statistics, not a count: for progress only).
    CopyEstimate {
        table: TableId,
        rows: u64,
    },
    /// A DDL statement about `table`, at `seq` (before the rows it shapes),
    /// for the schema history; it changes nothing by itself (the row
    /// schemas come from the stream).
    Ddl {
        table: TableId,
        seq: u64,
        statement: String,
    },
}
