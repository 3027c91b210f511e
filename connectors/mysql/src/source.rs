//! The MySQL/MariaDB source: a consistent snapshot, then the binlog.
//!
//! ```text
//!   control conn (queries)          snapshot conn                 binlog conn
//!        │                                │                             │
//!  start_snapshot ─────────────▶ MariaDB: START TRANSACTION WITH        │
//!        │                        CONSISTENT SNAPSHOT; binlog_snapshot_  │
//!        │                        file/position = P (no lock at all)    │
//!        │                        MySQL: FTWRL; START TRANSACTION WITH   │
//!        │                        CONSISTENT SNAPSHOT; SHOW MASTER       │
//!        │                        STATUS = P; UNLOCK TABLES              │
//!        │                        SELECT each table ──▶ Row(r), seq(P)   │
//!        │                        COMMIT                                 │
//!  stream from P ───────────────────────────────────────────▶ COM_BINLOG_DUMP(P)
//!        │                                     (MariaDB with a GTID state:
//!        │                                      @slave_connect_state instead)
//!  next_event ◀──── GTID/BEGIN · TABLE_MAP · ROWS… · XID/COMMIT ─────────┘
//! ```
//!
//! Ordering: a transaction's `_tw_seq` is the packed position (see
//! [`crate::position`]) of the event that opens it (GTID or BEGIN), known
//! before its first row; its `ack` is the packed end position of the event that
//! commits it. Both grow with the binlog. The server keeps no state for us:
//! the acknowledger ([`BinlogAcknowledger`]) does nothing, and the pipeline
//! persists the acknowledged position next to the lake (the MySQL analogue of
//! a replication slot's confirmed position); every table's mark still guards
//! against duplicates.
//!
//! Schemas come from the TABLE_MAP events (`binlog_row_metadata=FULL`), with
//! `information_schema` adding what a table map cannot say (see
//! the `catalog` module). A table map whose columns differ from the last one of
//! the same table yields a new schema version. Each rows event is decoded
//! straight into Arrow buffers ([`crate::rows::decode_rows_columnar`]) and
//! leaves as one `RowBlock`; the snapshot reads rows over the binary protocol
//! into `Datum`s (the same values, see the `catalog` module).
//!
//! A transaction's `Begin` carries the position of the *start* of its opening
//! event, so a restart from a table's position replays that event and gives
//! the transaction the same `_tw_seq`: the marks recognise every row.
//!
//! Copies while streaming (a table renamed into `source.tables`, a copy
//! again after DDL, `snapshot --table`, the signal table) run beside the
//! stream, one table per consistent snapshot: the copy's blocks and the
//! stream's whole transactions take turns, so the other tables keep their
//! latency, and the copied table's own changes are dropped (in the copy) or
//! held until its last copied row (see
//! [`MysqlSource::start_table_copies`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::Event;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Value};
use tidewater_core::{
    ChangeEvent, Column, CommitInfo, Datum, Op, RowBlock, RowChange, TableFilter, TableId,
    TableSchema,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::catalog::{self, quote_ident, quote_table, CatalogColumn, Flavor};
use crate::error::{query_error, stream_error, MysqlError};
use crate::event::{GtidSet, GtidState};
use crate::position::BinlogPosition;
use crate::rows::{self, RowPlan};
use crate::statement::{self, Reach, Statement};
use crate::tls::Endpoint;
use crate::{event, tablemap, value};

/// Binlog event type codes we act on.
mod kind {
    pub const QUERY: u8 = 2;
    pub const EXECUTE_LOAD_QUERY: u8 = 18;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const INCIDENT: u8 = 26;
    pub const HEARTBEAT: u8 = 27;
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const PARTIAL_UPDATE_ROWS: u8 = 39;
    pub const XA_PREPARE: u8 = 38;
    pub const TRANSACTION_PAYLOAD: u8 = 40;
    pub const MARIA_GTID: u8 = 162;
    pub const MARIA_GTID_LIST: u8 = 163;
    pub const MARIA_QUERY_COMPRESSED: u8 = 165;

    /// Row events: v1, v2 and MariaDB's compressed variants.
    pub fn is_rows(t: u8) -> bool {
        matches!(t, 23..=25 | 30..=32 | 166..=171)
    }
}

/// How often an idle server sends a heartbeat (so the acknowledged position
/// keeps moving and a dead connection is noticed).
const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// Events buffered between the snapshot reader task and `next_event`.
const SNAPSHOT_CHANNEL: usize = 1024;

/// Blocks read ahead by a copy beside the stream: it takes turns with the
/// stream, so what it reads ahead only waits (16 blocks of 8192 rows).
const COPY_CHANNEL: usize = 16;

/// What to do with zero dates (`0000-00-00`, or a zero month or day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroDates {
    /// Land as NULL and count them (the default).
    #[default]
    Null,
    /// Stop with an error naming the table and column.
    Fail,
}

#[derive(Debug, Clone)]
pub struct MysqlConfig {
    pub url: tidewater_endpoint::url::SecretUrl,
    pub filter: TableFilter,
    /// The replica id tidewater registers with; must differ from every server
    /// and replica in the topology.
    pub server_id: u32,
    pub zero_dates: ZeroDates,
    /// Copy a table again after DDL that gives its existing rows other
    /// values than its log holds (a renamed column, a column added with a
    /// default), and copy a table renamed into `filter`.
    pub recopy_on_schema_change: bool,
    /// Connections that read key ranges of large tables in parallel during
    /// the initial snapshot (1: the snapshot's own connection only).
    pub snapshot_workers: usize,
    /// Rows per key range (InnoDB's estimate); a table of fewer than two
    /// ranges' worth is read by the snapshot's own connection.
    pub snapshot_chunk_rows: u64,
    /// Estimated bytes of a copied table's own changes held while it is
    /// copied beside the stream (see [`MysqlSource::start_table_copies`]);
    /// past it the stream pauses until the copy ends.
    pub copy_hold_bytes: usize,
}

impl MysqlConfig {
    /// A replica server id derived from the pipeline name, in a range real
    /// deployments rarely use.
    pub fn server_id_for(pipeline: &str) -> u32 {
        let hash = pipeline.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        0x4000_0000 | (hash & 0x3fff_ffff)
    }
}

enum SnapshotMsg {
    Event(ChangeEvent),
    Done { rows: u64, zero_dates: u64 },
}

struct SnapshotState {
    /// Where the binlog is read from once the snapshot is read.
    position: BinlogPosition,
    commit: CommitInfo,
    rx: mpsc::Receiver<Result<SnapshotMsg, MysqlError>>,
    task: tokio::task::JoinHandle<()>,
    /// A copy of one table beside the stream (see
    /// [`MysqlSource::start_table_copies`]), not the initial snapshot.
    while_streaming: Option<TableCopy>,
}

/// A table being copied beside the stream (see
/// [`MysqlSource::interleave_step`]).
struct TableCopy {
    table: TableId,
    rows: u64,
    /// The copy's `Begin` is the coordinator's open transaction: no stream
    /// event came since it was sent.
    in_copy_txn: bool,
    /// The stream's turn began then: whole transactions go while the server
    /// has them ready, for at most [`STREAM_TURN`].
    stream_turn: Option<tokio::time::Instant>,
    /// The binlog connection was closed here, at a transaction boundary,
    /// because the held changes reached `copy_hold_bytes`; it opens here
    /// again once the copy ends.
    paused_at: Option<BinlogPosition>,
}

/// The stream's events of the table being copied, held until its copy ends
/// (see [`MysqlSource::start_table_copies`]).
struct Hold {
    table: TableId,
    /// The copy's `_tw_seq`: transactions at or below it are in the copy.
    floor: u64,
    events: Vec<ChangeEvent>,
    /// The transaction whose `Begin` the held events carry last.
    begun: Option<u64>,
    /// Estimated heap bytes of the held events.
    bytes: usize,
}

/// The longest turn of the stream between two blocks of a copy beside it,
/// ended at the first transaction boundary after it: short enough that the
/// copy keeps its pace under a stream that never pauses, long enough that a
/// burst of small transactions goes in one turn.
const STREAM_TURN: Duration = Duration::from_millis(50);

/// A table map the stream has seen, with its decode plan.
struct Mapped {
    raw: Vec<u8>,
    /// None when the table is not captured.
    target: Option<(Arc<TableSchema>, Arc<RowPlan>)>,
}

/// The transaction being read.
struct OpenTxn {
    seq: u64,
    start: String,
    commit_ts_us: i64,
    txid: Option<String>,
    /// MariaDB GTID to record in the state at commit: (domain, server, seq).
    maria_gtid: Option<(u32, u32, u64)>,
    /// MySQL GTID to add to the executed set at commit: (server uuid, gno).
    mysql_gtid: Option<([u8; 16], i64)>,
    /// A MariaDB GTID group without BEGIN/COMMIT (DDL): it ends with its one
    /// statement.
    standalone: bool,
    begun: bool,
    ord: u64,
}

struct StreamState {
    binlog: BinlogStream,
    file: String,
    checksum: bool,
    seen_fde: bool,
    gtid: Option<GtidState>,
    /// MySQL: the executed GTID set, when the server has GTIDs on.
    mysql_gtids: Option<GtidSet>,
    maps: HashMap<u64, Mapped>,
    /// Reusable Arrow buffers per table id, for its current table map.
    builders: HashMap<u64, rows::ColumnarRows>,
    /// Rows decoded into `builders[table_id]` but not yet sent: consecutive
    /// rows events of one table in one transaction become one block (see
    /// [`MysqlSource::push_event`]).
    open_block: Option<OpenBlock>,
    txn: Option<OpenTxn>,
    /// Where the stream was asked to start, for error messages.
    from: String,
    /// End offset of the last TRANSACTION_PAYLOAD event (MySQL 8).
    payload_end: u64,
    /// Start offset of the event being handled: where a transaction opened
    /// by it can be replayed from with the same `_tw_seq`.
    event_start: u64,
    /// End offset of the last event that closed a transaction (or a
    /// heartbeat between two), in `file`: where the stream can be resumed
    /// from; None inside a transaction and after a rotation.
    boundary: Option<u64>,
}

/// Rows decoded but not yet sent (see `StreamState::open_block`).
struct OpenBlock {
    table_id: u64,
    table: TableId,
    first_ord: u64,
    rows: u64,
}

/// An open block is sent once it holds this many rows.
const OPEN_BLOCK_ROWS: u64 = 8192;

pub struct MysqlSource {
    config: MysqlConfig,
    opts: Endpoint,
    conn: Conn,
    flavor: Flavor,
    charsets: Arc<HashMap<u32, String>>,
    tables: Vec<TableId>,
    schemas: HashMap<TableId, Arc<TableSchema>>,
    catalog_cache: HashMap<TableId, Vec<CatalogColumn>>,
    pending: VecDeque<ChangeEvent>,
    snapshot: Option<SnapshotState>,
    stream: Option<StreamState>,
    zero_dates: u64,
    zero_date_tables: Vec<TableId>,
    /// Tables to copy while streaming, at the next transaction boundary.
    copy_queue: Vec<TableId>,
    /// The stream's changes of the table being copied beside it.
    hold: Option<Hold>,
    /// Tables an operator asked to copy again (see `Source::copy_requests`).
    requests: tidewater_core::CopyRequestQueue,
    /// When the server's binlog files were last counted.
    sampled_at: std::time::Instant,
    /// Tables stopped by a definite error (this run or an earlier one):
    /// never captured again by this run.
    stopped: Vec<TableId>,
    /// The last DDL statement seen for each captured table (named when the
    /// table stops).
    last_ddl: HashMap<TableId, String>,
    /// A copy for `tidewater verify` ([`MysqlSource::start_copy_only`]):
    /// its end is the end of the run, no binlog follows.
    copy_only: bool,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn open(endpoint: &Endpoint) -> Result<Conn, MysqlError> {
    let mut conn = endpoint.connect().await?;
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(query_error(
            "setting the session character set and time zone",
        ))?;
    Ok(conn)
}

impl MysqlSource {
    pub async fn connect(config: MysqlConfig) -> Result<Self, MysqlError> {
        let opts = Endpoint::new(config.url.expose())
            .map_err(|source| MysqlError::TlsConfig { source })?;
        let mut conn = open(&opts).await?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(query_error("reading the server version"))?;
        let flavor = Flavor::detect(version.as_deref().unwrap_or(""));
        let charsets = Arc::new(catalog::charsets(&mut conn).await?);
        debug!(?flavor, "connected to the source");
        Ok(Self {
            config,
            opts,
            conn,
            flavor,
            charsets,
            tables: Vec::new(),
            schemas: HashMap::new(),
            catalog_cache: HashMap::new(),
            pending: VecDeque::new(),
            snapshot: None,
            stream: None,
            zero_dates: 0,
            zero_date_tables: Vec::new(),
            copy_queue: Vec::new(),
            hold: None,
            requests: Default::default(),
            sampled_at: std::time::Instant::now(),
            stopped: Vec::new(),
            last_ddl: HashMap::new(),
            copy_only: false,
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    pub async fn tables(&mut self) -> Result<Vec<TableId>, MysqlError> {
        catalog::list_tables(&mut self.conn, &self.config.filter).await
    }

    pub async fn preflight(
        &mut self,
        tables: &[TableId],
    ) -> Result<Vec<tidewater_core::Problem>, MysqlError> {
        let mut problems = crate::preflight::preflight(&mut self.conn, self.flavor, tables).await?;
        if tables.is_empty() {
            // As on Postgres: a pattern that matches nothing is far more
            // often a typo or a missing grant than a table still to come,
            // and a daemon capturing nothing would look healthy.
            problems.push(tidewater_core::Problem {
                what: format!(
                    "source.tables {:?} (exclude {:?}) matches no table the user can see (a \
                     table the user has no privilege on is invisible to it)",
                    self.config.filter.include, self.config.filter.exclude
                ),
                fix: "set source.tables to patterns like \"shop.*\" that match existing tables, \
                      and GRANT SELECT ON <database>.* TO <the user>; for each captured database \
                      (to capture tables that do not exist yet, start once one of them exists)"
                    .into(),
            });
        }
        Ok(problems)
    }

    /// Zero dates turned into NULL so far.
    pub fn zero_dates(&self) -> u64 {
        self.zero_dates
    }

    /// The server's current binlog position (and MariaDB GTID state).
    pub async fn current_position(&mut self) -> Result<BinlogPosition, MysqlError> {
        let row: Option<mysql_async::Row> = match self.conn.query_first("SHOW MASTER STATUS").await
        {
            Ok(row) => row,
            // MySQL 8.4 renamed it.
            Err(_) => self
                .conn
                .query_first("SHOW BINARY LOG STATUS")
                .await
                .map_err(query_error("reading the binlog position"))?,
        };
        let row = row.ok_or(MysqlError::BadPosition {
            what: "the server reports no binlog position (is log_bin on?)".into(),
        })?;
        let mut position = status_position(&row);
        if position.gtid.is_none() {
            position.gtid = self.gtid_at(&position).await?;
        }
        Ok(position)
    }

    /// MariaDB's GTID state at a binlog position (`BINLOG_GTID_POS`).
    async fn gtid_at(&mut self, position: &BinlogPosition) -> Result<Option<String>, MysqlError> {
        if self.flavor != Flavor::MariaDb {
            return Ok(None);
        }
        let gtid: Option<Option<String>> = self
            .conn
            .exec_first(
                "SELECT BINLOG_GTID_POS(?, ?)",
                (&position.file, position.offset),
            )
            .await
            .map_err(query_error("reading the GTID state of a binlog position"))?;
        Ok(gtid.flatten())
    }

    /// Starts a consistent snapshot of `tables` (rows copied only when `copy`);
    /// `next_event` yields it, then continues with the binlog from the
    /// snapshot's position.
    pub async fn start_snapshot(
        &mut self,
        tables: Vec<TableId>,
        copy: bool,
    ) -> Result<(), MysqlError> {
        self.tables = tables.clone();
        let mut conn = open(&self.opts).await?;
        let position = self.open_consistent_snapshot(&mut conn, copy).await?;
        info!(position = %position, tables = tables.len(), "consistent snapshot opened");
        // Snapshot rows sort before the first streamed transaction, whose
        // opening event starts exactly at the snapshot's position.
        let commit = CommitInfo {
            seq: position.seq().saturating_sub(1),
            position: position.to_string(),
            ack: position.seq(),
            commit_ts_us: now_us(),
            txid: None,
        };
        // Listed again inside the snapshot, so a table created between the
        // first listing and the snapshot's position is copied too.
        let queue = if copy && self.copy_only {
            tables
        } else if copy {
            let mut listed = catalog::list_tables(&mut conn, &self.config.filter).await?;
            listed.retain(|t| !tables.contains(t));
            for table in &listed {
                info!(table = %table, "a table created since startup joins the snapshot");
            }
            let mut queue = tables;
            queue.extend(listed);
            self.tables = queue.clone();
            queue
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel(SNAPSHOT_CHANNEL);
        let zero_dates = self.config.zero_dates;
        let parallel = self.parallel_read();
        let task = tokio::spawn(async move {
            let result =
                read_snapshot(conn, queue, zero_dates, &HashMap::new(), parallel, &tx).await;
            let _ = tx.send(result).await;
        });
        self.push_event(ChangeEvent::Begin(commit.clone()));
        self.snapshot = Some(SnapshotState {
            position,
            commit,
            rx,
            task,
            while_streaming: None,
        });
        Ok(())
    }

    /// A consistent copy of exactly `tables` and nothing else, for
    /// `tidewater verify`: `next_event` yields it as the initial snapshot's,
    /// then `Commit` and `SnapshotDone`, and no binlog after (the server
    /// keeps nothing for it). Returns the copy's commit: it holds every
    /// transaction at or below its `seq`.
    pub async fn start_copy_only(
        &mut self,
        tables: Vec<TableId>,
    ) -> Result<CommitInfo, MysqlError> {
        self.copy_only = true;
        self.start_snapshot(tables, true).await?;
        Ok(self
            .snapshot
            .as_ref()
            .map(|phase| phase.commit.clone())
            .expect("start_snapshot opened it"))
    }

    /// Resumes an interrupted initial snapshot that started at `from`: each
    /// table is read again in key order after the last row the lake holds
    /// of it (`resume`: that row's `_tw_ord` and key), in a new consistent
    /// snapshot, and the stream then starts at `from`. Rows changed since
    /// `from` may be read in their newer state; the binlog from `from`
    /// replays their changes on top, so every row ends as the source has it
    /// (a DBLog-style reconciliation; the rows nobody changed are in the log
    /// once). The binlog at `from` must still be on the server.
    pub async fn resume_snapshot(
        &mut self,
        tables: Vec<TableId>,
        from: BinlogPosition,
        resume: HashMap<TableId, (u64, Vec<Datum>)>,
    ) -> Result<(), MysqlError> {
        self.tables = tables.clone();
        let mut conn = open(&self.opts).await?;
        let now = self.open_consistent_snapshot(&mut conn, true).await?;
        info!(
            from = %from,
            snapshot = %now,
            tables_in_lake = resume.len(),
            "resuming the interrupted snapshot after the rows the lake holds"
        );
        let commit = CommitInfo {
            seq: from.seq().saturating_sub(1),
            position: from.to_string(),
            ack: from.seq(),
            commit_ts_us: now_us(),
            txid: None,
        };
        let (tx, rx) = mpsc::channel(SNAPSHOT_CHANNEL);
        let zero_dates = self.config.zero_dates;
        let parallel = self.parallel_read();
        let task = tokio::spawn(async move {
            let result = read_snapshot(conn, tables, zero_dates, &resume, parallel, &tx).await;
            let _ = tx.send(result).await;
        });
        self.push_event(ChangeEvent::Begin(commit.clone()));
        self.snapshot = Some(SnapshotState {
            position: from,
            commit,
            rx,
            task,
            while_streaming: None,
        });
        Ok(())
    }

    fn parallel_read(&self) -> Option<ParallelRead> {
        (self.config.snapshot_workers > 1).then(|| ParallelRead {
            opts: self.opts.clone(),
            workers: self.config.snapshot_workers,
            chunk_rows: self.config.snapshot_chunk_rows,
        })
    }

    /// Whether the server still has the binlog file of `position`.
    pub async fn binlog_available(
        &mut self,
        position: &BinlogPosition,
    ) -> Result<bool, MysqlError> {
        let rows: Vec<mysql_async::Row> = self
            .conn
            .query("SHOW BINARY LOGS")
            .await
            .map_err(query_error("listing the binlog files"))?;
        Ok(rows
            .iter()
            .filter_map(|row| row.get::<String, _>(0))
            .any(|name| name == position.file))
    }

    /// `table`'s schema as the catalog has it now.
    pub async fn table_schema(&mut self, table: &TableId) -> Result<TableSchema, MysqlError> {
        let catalog_columns = catalog::table_columns(&mut self.conn, table).await?;
        Ok(TableSchema {
            table: table.clone(),
            version: 1,
            columns: catalog::schema_columns(table, &catalog_columns)?,
        })
    }

    /// Opens a consistent-snapshot transaction on `conn` and returns the
    /// binlog position it corresponds to (with the GTID state there).
    async fn open_consistent_snapshot(
        &mut self,
        conn: &mut Conn,
        copy: bool,
    ) -> Result<BinlogPosition, MysqlError> {
        let position = match self.flavor {
            Flavor::MariaDb => {
                conn.query_drop(
                    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                     START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                )
                .await
                .map_err(query_error("opening the snapshot transaction"))?;
                // MariaDB records the binlog position of the consistent
                // snapshot itself: no lock is needed.
                let rows: Vec<(String, String)> = conn
                    .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                    .await
                    .map_err(query_error("reading the snapshot's binlog position"))?;
                let get = |name: &str| {
                    rows.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let file = get("binlog_snapshot_file").unwrap_or_default();
                let offset = get("binlog_snapshot_position")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if file.is_empty() {
                    return Err(MysqlError::BadPosition {
                        what: "the server gave no binlog_snapshot_file (is log_bin on?)".into(),
                    });
                }
                BinlogPosition::new(file, offset)
            }
            // Nothing to copy: the current position is the snapshot.
            Flavor::MySql if !copy => self.current_position().await?,
            Flavor::MySql => {
                // The read lock is held only while the snapshot starts and
                // the position is read: milliseconds.
                conn.query_drop("FLUSH TABLES WITH READ LOCK")
                    .await
                    .map_err(query_error("FLUSH TABLES WITH READ LOCK (needs RELOAD)"))?;
                let started = conn
                    .query_drop(
                        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                         START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                    )
                    .await;
                let row: Result<Option<mysql_async::Row>, _> =
                    conn.query_first("SHOW MASTER STATUS").await;
                let row = match row {
                    Ok(row) => Ok(row),
                    Err(_) => conn.query_first("SHOW BINARY LOG STATUS").await,
                };
                conn.query_drop("UNLOCK TABLES")
                    .await
                    .map_err(query_error("UNLOCK TABLES"))?;
                started.map_err(query_error("opening the snapshot transaction"))?;
                let row = row
                    .map_err(query_error("reading the binlog position"))?
                    .ok_or(MysqlError::BadPosition {
                        what: "the server reports no binlog position (is log_bin on?)".into(),
                    })?;
                status_position(&row)
            }
        };
        let mut position = position;
        if position.gtid.is_none() {
            position.gtid = self.gtid_at(&position).await?;
        }
        Ok(position)
    }

    /// Reports how many binlog files the server has after the one being
    /// read (for the metrics); a failed query only skips the sample.
    async fn sample_binlogs(&mut self) {
        self.sampled_at = std::time::Instant::now();
        let Some(current) = self
            .stream
            .as_ref()
            .and_then(|s| BinlogPosition::file_index(&s.file))
        else {
            return;
        };
        match self
            .conn
            .query::<mysql_async::Row, _>("SHOW BINARY LOGS")
            .await
        {
            Ok(rows) => {
                let behind = rows
                    .iter()
                    .filter_map(|row| row.get::<String, _>(0))
                    .filter_map(|name| BinlogPosition::file_index(&name))
                    .filter(|index| *index > current)
                    .count();
                self.push_event(ChangeEvent::SourceStatus {
                    retained_bytes: None,
                    files_behind: Some(behind as u64),
                });
            }
            Err(error) => debug!(error = %error, "counting binlog files"),
        }
    }

    /// Tables an operator asked to copy again join the copy queue (a table
    /// already in the lake starts over with a truncate; a stopped one
    /// streams again).
    fn take_copy_requests(&mut self) {
        for table in tidewater_core::take_copy_requests(&self.requests) {
            if !self.copy_queue.contains(&table) {
                info!(table = %table, "copying the table again, as asked");
                self.stopped.retain(|t| t != &table);
                self.copy_queue.push(table);
            }
        }
    }

    /// Queues `tables` to be copied while streaming (tables without a
    /// complete copy in the lake, or asked for by `snapshot --table`).
    pub fn queue_copies(&mut self, tables: &[TableId]) {
        for table in tables {
            if !self.copy_queue.contains(table) {
                self.copy_queue.push(table.clone());
            }
        }
    }

    /// Copies the first queued table beside the stream, from a consistent
    /// snapshot of its own (one table per snapshot: the copy's schema goes
    /// out before any stream event of the table is held).
    ///
    /// ```text
    ///  stream at boundary B (stays open)
    ///  snapshot conn: consistent snapshot at P (MariaDB: no lock; MySQL: FTWRL for ms)
    ///  Schema(t) Begin(F) TableSnapshot(t)              F = seq(P) − 1
    ///  SELECT t ──▶ Block(t) │ stream: Begin(x) Block(u) Commit(x) │ Begin(F) Block(t) … │ held(t) TableSnapshotDone(t, F)
    /// ```
    ///
    /// Binlog order is commit order and the snapshot holds exactly the
    /// transactions before P, so a transaction of t is in the copy (its
    /// `_tw_seq` is at most F: dropped) or after it (held, with t's new
    /// schemas, until t's last copied row, then sent in stream order before
    /// `TableSnapshotDone`). The other tables stream on between the copy's
    /// blocks (see [`MysqlSource::interleave_step`]). t's rows thus reach the
    /// sink in mark order: the truncate of a copy taken again (F, 0) < copy
    /// rows (F, …) < held changes (> F).
    ///
    /// Held changes are bounded by `copy_hold_bytes`: past it the binlog
    /// connection closes at the next transaction boundary (a dump thread
    /// that cannot write for `net_write_timeout` would be dropped by the
    /// server anyway) and opens again there, like a restart, once the copy
    /// ends. The pipeline acknowledges positions past held changes: a crash
    /// before `TableSnapshotDone` is recorded copies t again from a new
    /// snapshot, whose truncate supersedes what the lake holds of this one.
    async fn start_table_copies(&mut self) -> Result<(), MysqlError> {
        if self.copy_queue.is_empty() {
            return Ok(());
        }
        let table = self.copy_queue.remove(0);
        let mut conn = open(&self.opts).await?;
        let position = self.open_consistent_snapshot(&mut conn, true).await?;
        info!(table = %table, snapshot = %position, "copying a table beside the stream");
        let commit = CommitInfo {
            seq: position.seq().saturating_sub(1),
            position: position.to_string(),
            ack: 0,
            commit_ts_us: now_us(),
            txid: None,
        };
        if !self.tables.contains(&table) {
            self.tables.push(table.clone());
        }
        let (tx, mut rx) = mpsc::channel(COPY_CHANNEL);
        let zero_dates = self.config.zero_dates;
        let tables = vec![table.clone()];
        let task = tokio::spawn(async move {
            let result = read_snapshot(conn, tables, zero_dates, &HashMap::new(), None, &tx).await;
            let _ = tx.send(result).await;
        });
        // The reader's first message is the table's schema as the snapshot
        // sees it.
        let first = rx.recv().await.ok_or(MysqlError::Misuse {
            what: "the snapshot reader stopped without a result",
        });
        let schema = match first {
            Ok(Ok(SnapshotMsg::Event(ChangeEvent::Schema(schema)))) => schema,
            Ok(Ok(_)) => {
                task.abort();
                return Err(MysqlError::Misuse {
                    what: "a table copy that does not start with its schema",
                });
            }
            Ok(Err(error)) | Err(error) => {
                task.abort();
                return Err(error);
            }
        };
        // Versions continue the stream's numbering of the table.
        let version = self.schemas.get(&table).map_or(1, |known| {
            if known.columns == schema.columns {
                known.version
            } else {
                known.version + 1
            }
        });
        let schema = Arc::new(TableSchema {
            version,
            ..schema.as_ref().clone()
        });
        self.schemas.insert(table.clone(), schema.clone());
        self.flush_block();
        self.pending.push_back(ChangeEvent::Schema(schema));
        self.pending.push_back(ChangeEvent::Begin(commit.clone()));
        self.pending.push_back(ChangeEvent::TableSnapshot {
            table: table.clone(),
        });
        self.hold = Some(Hold {
            table: table.clone(),
            floor: commit.seq,
            events: Vec::new(),
            begun: None,
            bytes: 0,
        });
        self.snapshot = Some(SnapshotState {
            position,
            commit,
            rx,
            task,
            while_streaming: Some(TableCopy {
                table,
                rows: 0,
                in_copy_txn: true,
                stream_turn: None,
                paused_at: None,
            }),
        });
        Ok(())
    }

    /// The held changes reached `copy_hold_bytes`.
    fn held_over_budget(&self) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.bytes >= self.config.copy_hold_bytes)
    }

    /// One step of a copy beside the stream, at a transaction boundary of
    /// the stream: the stream's turn goes on while the server has events
    /// ready (for at most [`STREAM_TURN`]); else the copy's next message,
    /// or — when the copy has none ready — the stream's next event.
    async fn interleave_step(&mut self) -> Result<(), MysqlError> {
        if self.stream.is_some() && self.held_over_budget() {
            if let Some(boundary) = self.stream.as_ref().and_then(|s| s.boundary) {
                let resume = self.position_here(boundary);
                info!(resume = %resume, "the changes held for a table copy reached source.copy_hold_bytes; the stream waits for the copy");
                if let Some(stream) = self.stream.take() {
                    drop(stream.binlog);
                }
                let phase = self.snapshot.as_mut().expect("checked by caller");
                let copy = phase.while_streaming.as_mut().expect("checked by caller");
                copy.paused_at = Some(resume);
            }
        }
        let phase = self.snapshot.as_mut().expect("checked by caller");
        let copy = phase.while_streaming.as_mut().expect("checked by caller");
        let Some(stream) = self.stream.as_mut() else {
            let message = phase.rx.recv().await;
            return self.on_copy_message(message).await;
        };
        if let Some(since) = copy.stream_turn {
            if since.elapsed() < STREAM_TURN {
                if let Some(next) = futures_util::FutureExt::now_or_never(stream.binlog.next()) {
                    copy.in_copy_txn = false;
                    return self.on_stream_item(next).await;
                }
            }
            copy.stream_turn = None;
        }
        // Both are cancel-safe: the binlog stream keeps a packet being read
        // in itself, and a channel loses nothing.
        let next = tokio::select! {
            biased;
            message = phase.rx.recv() => Ok(message),
            event = stream.binlog.next() => Err(event),
        };
        match next {
            Ok(message) => self.on_copy_message(message).await,
            Err(event) => {
                copy.in_copy_txn = false;
                copy.stream_turn = Some(tokio::time::Instant::now());
                self.on_stream_item(event).await
            }
        }
    }

    /// What the copy beside the stream read.
    async fn on_copy_message(
        &mut self,
        message: Option<Result<SnapshotMsg, MysqlError>>,
    ) -> Result<(), MysqlError> {
        let message = message.ok_or(MysqlError::Misuse {
            what: "the snapshot reader stopped without a result",
        })??;
        let phase = self.snapshot.as_mut().expect("checked by caller");
        let copy = phase.while_streaming.as_mut().expect("checked by caller");
        match message {
            SnapshotMsg::Event(ChangeEvent::Block(block)) => {
                if self.hold.is_none() {
                    // Stopped while being copied.
                    return Ok(());
                }
                copy.rows += block.len() as u64;
                if !copy.in_copy_txn {
                    copy.in_copy_txn = true;
                    self.pending
                        .push_back(ChangeEvent::Begin(phase.commit.clone()));
                }
                self.pending.push_back(ChangeEvent::Block(block));
                copy.stream_turn = Some(tokio::time::Instant::now());
            }
            SnapshotMsg::Event(ChangeEvent::Schema(_)) => {
                return Err(MysqlError::Misuse {
                    what: "a second schema in a one-table copy",
                })
            }
            SnapshotMsg::Event(event) => self.pending.push_back(event),
            SnapshotMsg::Done { zero_dates, .. } => {
                let phase = self.snapshot.take().expect("checked above");
                let _ = phase.task.await;
                self.zero_dates += zero_dates;
                let copy = phase.while_streaming.expect("checked above");
                let seq = phase.commit.seq;
                let hold = self.hold.take();
                info!(
                    table = %copy.table,
                    rows = copy.rows,
                    held_events = hold.as_ref().map_or(0, |h| h.events.len()),
                    "table copied beside the stream"
                );
                // What the stream brought of the table since the copy's
                // point follows, in stream order, then the copy's end.
                if let Some(hold) = hold {
                    self.pending.extend(hold.events);
                }
                self.pending.push_back(ChangeEvent::TableSnapshotDone {
                    table: copy.table,
                    seq,
                });
                if let Some(resume) = copy.paused_at {
                    let tables = self.tables.clone();
                    self.start_streaming(&tables, resume).await?;
                }
            }
        }
        Ok(())
    }

    /// What the binlog stream yielded.
    async fn on_stream_item(
        &mut self,
        item: Option<Result<Event, mysql_async::Error>>,
    ) -> Result<(), MysqlError> {
        match item {
            Some(Ok(event)) => self.on_event(event).await,
            Some(Err(err)) => {
                let from = &self.stream.as_ref().expect("streaming").from;
                Err(stream_error(from, err))
            }
            None => Err(MysqlError::StreamEnded),
        }
    }

    /// Streams the binlog from `from` (a position this source produced).
    pub async fn start_streaming(
        &mut self,
        tables: &[TableId],
        from: BinlogPosition,
    ) -> Result<(), MysqlError> {
        self.tables = tables.to_vec();
        let mut from = from;
        if from.gtid.is_none() {
            from.gtid = self.gtid_at(&from).await?;
        }
        let checksum: Option<String> = self
            .conn
            .query_first("SELECT @@global.binlog_checksum")
            .await
            .map_err(query_error("reading binlog_checksum"))?;
        let checksum = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        let mut conn = open(&self.opts).await?;
        let period_ns = HEARTBEAT_PERIOD.as_nanos() as u64;
        conn.query_drop(format!("SET @master_heartbeat_period = {period_ns}"))
            .await
            .map_err(query_error("setting the heartbeat period"))?;
        let gtid_state = match self.flavor {
            Flavor::MariaDb => {
                // Without this MariaDB rewrites GTID events into BEGIN queries.
                conn.query_drop("SET @mariadb_slave_capability = 4")
                    .await
                    .map_err(query_error("announcing MariaDB replica capabilities"))?;
                from.gtid.as_deref().and_then(|g| GtidState::parse(g).ok())
            }
            Flavor::MySql => None,
        };
        let by_gtid = gtid_state.as_ref().is_some_and(|s| !s.domains.is_empty());
        let request = if by_gtid {
            let state = gtid_state.as_ref().expect("checked").to_string();
            conn.exec_drop(
                "SET @slave_connect_state = ?, @slave_gtid_strict_mode = 1, \
                 @slave_gtid_ignore_duplicates = 0",
                (state,),
            )
            .await
            .map_err(query_error("setting the GTID to resume from"))?;
            BinlogStreamRequest::new(self.config.server_id).with_pos(4u64)
        } else {
            BinlogStreamRequest::new(self.config.server_id)
                .with_filename(from.file.as_bytes())
                .with_pos(from.offset)
        };
        let from_text = from.to_string();
        let binlog = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| stream_error(&from_text, e))?;
        info!(from = %from_text, by_gtid, "streaming the binlog");
        self.stream = Some(StreamState {
            binlog,
            file: from.file.clone(),
            checksum,
            seen_fde: false,
            gtid: if self.flavor == Flavor::MariaDb {
                Some(gtid_state.unwrap_or_default())
            } else {
                None
            },
            mysql_gtids: match self.flavor {
                Flavor::MySql => from.gtid.as_deref().and_then(|g| GtidSet::parse(g).ok()),
                Flavor::MariaDb => None,
            },
            maps: HashMap::new(),
            builders: HashMap::new(),
            open_block: None,
            txn: None,
            from: from_text,
            payload_end: 0,
            event_start: 0,
            boundary: None,
        });
        Ok(())
    }

    /// The next change. Not cancel-safe (see the `Source` contract).
    /// An event already decoded, if any: never waits.
    pub fn ready_event(&mut self) -> Option<ChangeEvent> {
        self.pending.pop_front()
    }

    pub async fn next_event(&mut self) -> Result<ChangeEvent, MysqlError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let beside = self
                .snapshot
                .as_ref()
                .is_some_and(|phase| phase.while_streaming.is_some());
            let in_txn = self.stream.as_ref().is_some_and(|s| s.txn.is_some());
            if beside && !in_txn {
                // A copy beside the stream, between two transactions: its
                // blocks and the stream's transactions take turns.
                self.interleave_step().await?;
            } else if self.snapshot.is_some() && !beside {
                self.snapshot_step().await?;
            } else if self.stream.is_some() {
                let at_boundary = self
                    .stream
                    .as_ref()
                    .is_some_and(|s| s.txn.is_none() && s.boundary.is_some());
                if at_boundary {
                    self.take_copy_requests();
                }
                if at_boundary && !self.copy_queue.is_empty() {
                    self.start_table_copies().await?;
                    continue;
                }
                if at_boundary && self.sampled_at.elapsed() >= SAMPLE_EVERY {
                    self.sample_binlogs().await;
                }
                self.stream_step().await?;
            } else {
                return Err(MysqlError::Misuse {
                    what: "next_event before start_snapshot or start_streaming",
                });
            }
        }
    }

    async fn snapshot_step(&mut self) -> Result<(), MysqlError> {
        let phase = self.snapshot.as_mut().expect("checked by caller");
        let message = phase.rx.recv().await.ok_or(MysqlError::Misuse {
            what: "the snapshot reader stopped without a result",
        })??;
        match message {
            SnapshotMsg::Event(event) => {
                if let ChangeEvent::Schema(schema) = &event {
                    self.schemas.insert(schema.table.clone(), schema.clone());
                }
                self.push_event(event);
            }
            SnapshotMsg::Done { rows, zero_dates } => {
                let phase = self.snapshot.take().expect("checked above");
                let _ = phase.task.await;
                self.zero_dates += zero_dates;
                if zero_dates > 0 {
                    warn!(
                        zero_dates,
                        "zero dates in the snapshot landed as NULL (source.zero_dates = \"null\")"
                    );
                }
                if !self.copy_only {
                    info!(rows, position = %phase.position, "snapshot read; streaming from its position");
                    let tables = self.tables.clone();
                    self.start_streaming(&tables, phase.position.clone())
                        .await?;
                }
                self.pending
                    .push_back(ChangeEvent::Commit(phase.commit.clone()));
                self.push_event(ChangeEvent::SnapshotDone {
                    seq: phase.commit.seq,
                    position: phase.commit.position,
                });
            }
        }
        Ok(())
    }

    async fn stream_step(&mut self) -> Result<(), MysqlError> {
        let stream = self.stream.as_mut().expect("checked by caller");
        let event = match stream.binlog.next().await {
            Some(Ok(event)) => event,
            Some(Err(err)) => return Err(stream_error(&stream.from, err)),
            None => return Err(MysqlError::StreamEnded),
        };
        self.on_event(event).await
    }

    fn position_here(&self, offset: u64) -> BinlogPosition {
        let stream = self.stream.as_ref().expect("streaming");
        BinlogPosition {
            file: stream.file.clone(),
            offset,
            gtid: match (&stream.gtid, &stream.mysql_gtids) {
                (Some(state), _) if !state.domains.is_empty() => Some(state.to_string()),
                (_, Some(set)) if !set.is_empty() => Some(set.to_string()),
                _ => None,
            },
        }
    }

    fn stream_mut(&mut self) -> &mut StreamState {
        self.stream.as_mut().expect("streaming")
    }

    /// Queues `event` after the open block, if any: every event goes out in
    /// decoding order, and a block never waits past its transaction's end.
    fn push_event(&mut self, event: ChangeEvent) {
        self.flush_block();
        self.emit(event);
    }

    /// Sends a stream event on, or — for the table being copied beside the
    /// stream — drops it (its transaction is in the copy) or holds it until
    /// the copy ends (see [`MysqlSource::start_table_copies`]).
    fn emit(&mut self, event: ChangeEvent) {
        let Some(hold) = self.hold.as_mut() else {
            self.pending.push_back(event);
            return;
        };
        let (table, seq, data) = match &event {
            ChangeEvent::Block(block) => (&block.table, None, true),
            ChangeEvent::Row(row) => (&row.table, None, true),
            ChangeEvent::Schema(schema) => (&schema.table, None, false),
            ChangeEvent::Ddl { table, seq, .. } => (table, Some(*seq), false),
            _ => {
                self.pending.push_back(event);
                return;
            }
        };
        if *table != hold.table {
            self.pending.push_back(event);
            return;
        }
        let txn = self.stream.as_ref().and_then(|s| s.txn.as_ref());
        let Some(seq) = seq.or(txn.map(|t| t.seq)) else {
            self.pending.push_back(event);
            return;
        };
        if seq <= hold.floor {
            return;
        }
        if data && hold.begun != Some(seq) {
            if let Some(txn) = txn {
                hold.begun = Some(seq);
                hold.events.push(ChangeEvent::Begin(CommitInfo {
                    seq: txn.seq,
                    position: txn.start.clone(),
                    ack: 0,
                    commit_ts_us: txn.commit_ts_us,
                    txid: txn.txid.clone(),
                }));
            }
        }
        hold.bytes += match &event {
            ChangeEvent::Block(block) => block
                .columns
                .iter()
                .map(|c| arrow_array::Array::get_array_memory_size(c.as_ref()))
                .sum::<usize>(),
            _ => 256,
        };
        hold.events.push(event);
    }

    /// Sends the rows of the open block.
    fn flush_block(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let Some(open) = stream.open_block.take() else {
            return;
        };
        let Some(mut out) = stream.builders.remove(&open.table_id) else {
            return;
        };
        let (columns, ops) = out.finish();
        stream.builders.insert(open.table_id, out);
        if ops.is_empty() {
            return;
        }
        self.emit(ChangeEvent::Block(RowBlock {
            table: open.table,
            ops,
            first_ord: open.first_ord,
            columns,
        }));
    }

    fn current_file(&self) -> &str {
        &self.stream.as_ref().expect("streaming").file
    }

    async fn on_event(&mut self, event: Event) -> Result<(), MysqlError> {
        let header = event.header();
        let event_type = header.event_type_raw();
        let mut end = u64::from(header.log_pos());
        let data = event.data();
        // MySQL 8 events inside a TRANSACTION_PAYLOAD carry no position of
        // their own: they all sit at the payload's end.
        if event_type == kind::TRANSACTION_PAYLOAD {
            self.stream_mut().payload_end = end;
        } else if end == 0 && !matches!(event_type, kind::ROTATE | kind::FORMAT_DESCRIPTION) {
            end = self.stream_mut().payload_end;
        }
        self.stream_mut().event_start = end.saturating_sub(u64::from(header.event_size()));
        match event_type {
            kind::ROTATE => {
                let stream = self.stream_mut();
                // The first (fake) rotate comes before the format description
                // tells the client about checksums: its last 4 bytes are one.
                let body = if stream.checksum && !stream.seen_fde && data.len() >= 12 {
                    &data[..data.len() - 4]
                } else {
                    data
                };
                let (_, name) =
                    event::rotate(body).map_err(|source| self.decode_error("-", end, source))?;
                if BinlogPosition::file_index(&name).is_none() {
                    return Err(MysqlError::BadPosition {
                        what: format!(
                            "binlog file name {name:?} has no numeric suffix to order changes by"
                        ),
                    });
                }
                debug!(file = %name, "binlog file");
                self.stream_mut().boundary = None;
                self.stream_mut().file = name;
            }
            kind::FORMAT_DESCRIPTION => self.stream_mut().seen_fde = true,
            kind::MARIA_GTID => {
                let gtid =
                    event::gtid(data).map_err(|source| self.decode_error("-", end, source))?;
                let server = header.server_id();
                let seq = BinlogPosition::seq_of(self.current_file(), end);
                self.open_txn(
                    seq,
                    header.timestamp(),
                    Some(format!("{}-{}-{}", gtid.domain_id, server, gtid.seq_no)),
                    Some((gtid.domain_id, server, gtid.seq_no)),
                    gtid.standalone,
                );
            }
            kind::MARIA_GTID_LIST => {
                let list =
                    event::gtid_list(data).map_err(|source| self.decode_error("-", end, source))?;
                if let Some(state) = self.stream_mut().gtid.as_mut() {
                    if state.domains.is_empty() {
                        for (domain, server, seq) in list {
                            state.update(domain, server, seq);
                        }
                    }
                }
            }
            kind::MYSQL_GTID | kind::MYSQL_ANONYMOUS_GTID => {
                let gtid = event::mysql_gtid(data)
                    .map_err(|source| self.decode_error("-", end, source))?;
                let seq = BinlogPosition::seq_of(self.current_file(), end);
                let named = event_type == kind::MYSQL_GTID;
                let txid = named.then(|| gtid.to_gtid_string());
                // Standalone until a BEGIN says otherwise (DDL has none).
                self.open_txn(seq, header.timestamp(), txid, None, true);
                if named {
                    if let Some(txn) = self.stream_mut().txn.as_mut() {
                        txn.mysql_gtid = Some((gtid.sid, gtid.gno));
                    }
                }
            }
            kind::QUERY | kind::MARIA_QUERY_COMPRESSED => {
                let query = if event_type == kind::QUERY {
                    event::query(data)
                } else {
                    event::query_compressed(data)
                }
                .map_err(|source| self.decode_error("-", end, source))?;
                self.on_query(&query.schema, &query.sql, end, header.timestamp())
                    .await?;
            }
            // Only statement-based logging writes it: rows no event carries.
            kind::EXECUTE_LOAD_QUERY => {
                let query = event::execute_load_query(data)
                    .map_err(|source| self.decode_error("-", end, source))?;
                let reach = match statement::classify(&query.sql, &query.schema) {
                    Statement::Data { reach, .. } => reach,
                    _ => Reach::Any,
                };
                self.on_statement_data("LOAD DATA", reach, end);
            }
            kind::XID => self.commit(end, header.timestamp()),
            kind::TABLE_MAP => self.on_table_map(data, end).await?,
            t if kind::is_rows(t) => self.on_rows(t, data, end)?,
            // Sent when the server has nothing else: a transaction boundary.
            kind::HEARTBEAT if self.stream_mut().txn.is_none() && end > 0 => {
                self.stream_mut().boundary = Some(end);
                let position = self.position_here(end);
                self.push_event(ChangeEvent::Heartbeat {
                    ack: position.seq(),
                    position: position.to_string(),
                });
            }
            kind::INCIDENT => {
                return Err(MysqlError::Incident {
                    position: self.position_here(end).to_string(),
                })
            }
            kind::PARTIAL_UPDATE_ROWS => {
                return Err(MysqlError::Unsupported {
                    event_type,
                    position: self.position_here(end).to_string(),
                    hint: "partial JSON updates; SET GLOBAL binlog_row_value_options = ''",
                })
            }
            kind::XA_PREPARE => {
                return Err(MysqlError::Unsupported {
                    event_type,
                    position: self.position_here(end).to_string(),
                    hint: "XA transactions (a prepared XA transaction may still roll back); \
                           they are not replicated yet",
                })
            }
            // mysql_async expands the payload and yields its events next.
            kind::TRANSACTION_PAYLOAD => {}
            _ => {}
        }
        Ok(())
    }

    fn decode_error(&self, table: &str, end: u64, source: event::DecodeError) -> MysqlError {
        MysqlError::Decode {
            table: table.to_string(),
            position: self.position_here(end).to_string(),
            source,
        }
    }

    /// Opens a transaction at the event being handled; `seq` orders it.
    fn open_txn(
        &mut self,
        seq: u64,
        timestamp: u32,
        txid: Option<String>,
        maria_gtid: Option<(u32, u32, u64)>,
        standalone: bool,
    ) {
        let event_start = self.stream_mut().event_start;
        let start = self.position_here(event_start).to_string();
        let stream = self.stream.as_mut().expect("streaming");
        stream.boundary = None;
        stream.txn = Some(OpenTxn {
            seq,
            start,
            commit_ts_us: i64::from(timestamp) * 1_000_000,
            txid,
            maria_gtid,
            mysql_gtid: None,
            standalone,
            begun: false,
            ord: 0,
        });
    }

    /// Ends the open transaction at `end` (the end offset of its commit event).
    fn commit(&mut self, end: u64, timestamp: u32) {
        // The transaction's last rows go while it is still open: a copy
        // beside the stream tells by its `_tw_seq` whether to hold them.
        self.flush_block();
        let stream = self.stream.as_mut().expect("streaming");
        let Some(txn) = stream.txn.take() else {
            return;
        };
        stream.boundary = Some(end);
        if let (Some(state), Some((domain, server, seq))) = (stream.gtid.as_mut(), txn.maria_gtid) {
            state.update(domain, server, seq);
        }
        if let (Some(set), Some((sid, gno))) = (stream.mysql_gtids.as_mut(), txn.mysql_gtid) {
            set.add(sid, gno);
        }
        let position = self.position_here(end);
        if txn.begun {
            self.push_event(ChangeEvent::Commit(CommitInfo {
                seq: txn.seq,
                position: position.to_string(),
                ack: position.seq(),
                commit_ts_us: if timestamp > 0 {
                    i64::from(timestamp) * 1_000_000
                } else {
                    txn.commit_ts_us
                },
                txid: txn.txid,
            }));
        } else {
            // Nothing captured in it: a point the pipeline may acknowledge.
            self.push_event(ChangeEvent::Heartbeat {
                ack: position.seq(),
                position: position.to_string(),
            });
        }
    }

    /// Emits `Begin` for the open transaction if it has not been yet.
    /// Emits `Begin` if needed and reserves `rows` ords in the open
    /// transaction; returns the first.
    fn begin_if_needed(&mut self, end: u64) -> u64 {
        self.reserve_ords(end, 1)
    }

    fn reserve_ords(&mut self, end: u64, rows: u64) -> u64 {
        let stream = self.stream.as_mut().expect("streaming");
        if stream.txn.is_none() {
            // Rows without a GTID/BEGIN before them (only if we started inside
            // a transaction): the rows event's own position orders them.
            let seq = BinlogPosition::seq_of(&stream.file, end);
            self.open_txn(seq, 0, None, None, false);
        }
        let stream = self.stream.as_mut().expect("streaming");
        let txn = stream.txn.as_mut().expect("opened above");
        if !txn.begun {
            txn.begun = true;
            let commit = CommitInfo {
                seq: txn.seq,
                position: txn.start.clone(),
                ack: 0,
                commit_ts_us: txn.commit_ts_us,
                txid: txn.txid.clone(),
            };
            self.push_event(ChangeEvent::Begin(commit));
        }
        let txn = self
            .stream
            .as_mut()
            .expect("streaming")
            .txn
            .as_mut()
            .expect("open");
        let first = txn.ord + 1;
        txn.ord += rows;
        first
    }

    async fn on_query(
        &mut self,
        schema: &str,
        sql: &str,
        end: u64,
        timestamp: u32,
    ) -> Result<(), MysqlError> {
        let statement = sql.trim_start();
        let head: String = statement
            .chars()
            .take(16)
            .collect::<String>()
            .to_ascii_uppercase();
        if head.starts_with("XA ") {
            return Err(MysqlError::Unsupported {
                event_type: kind::QUERY,
                position: self.position_here(end).to_string(),
                hint: "XA transactions (a prepared XA transaction may still roll back); \
                       they are not replicated yet",
            });
        }
        if head.starts_with("BEGIN") {
            let stream = self.stream.as_mut().expect("streaming");
            match stream.txn.as_mut() {
                // MySQL: GTID, then BEGIN for a transaction (DDL has none).
                Some(txn) => txn.standalone = false,
                None => {
                    let seq = BinlogPosition::seq_of(&stream.file, end);
                    self.open_txn(seq, timestamp, None, None, false);
                }
            }
            return Ok(());
        }
        if head.starts_with("COMMIT") {
            self.commit(end, timestamp);
            return Ok(());
        }
        if head.starts_with("SAVEPOINT") || head.starts_with("ROLLBACK TO") {
            // Inside a transaction that touched non-transactional tables.
            return Ok(());
        }
        if head.starts_with("ROLLBACK") {
            // Non-transactional tables only: what was logged happened.
            self.commit(end, timestamp);
            return Ok(());
        }
        if let Statement::Data { kind, reach } = statement::classify(statement, schema) {
            self.on_statement_data(&kind, reach, end);
        }
        for table in renamed_tables(statement, schema) {
            if self.config.filter.matches(&table)
                && !catalog::is_system_database(&table.schema)
                && !self.tables.contains(&table)
            {
                if self.config.recopy_on_schema_change {
                    info!(table = %table, position = %self.position_here(end), "a table was renamed into source.tables: copying it");
                    self.queue_copies(std::slice::from_ref(&table));
                } else {
                    warn!(table = %table, position = %self.position_here(end), "a table was renamed into source.tables: captured from its next change on, without its earlier rows (source.recopy_on_schema_change = false)");
                }
            }
        }
        // A statement: DDL (or DML on a table without row logging). Table
        // maps reveal column changes; the catalog cache must not outlive it.
        self.catalog_cache.clear();
        if let Some(table) = ddl_table(statement, schema) {
            if self.tables.contains(&table) {
                if let Some(change) = rewriting_change(statement) {
                    if self.config.recopy_on_schema_change {
                        warn!(table = %table, change, "rows not changed since hold other values in the source than in the lake's log; copying the table again");
                        self.queue_copies(std::slice::from_ref(&table));
                    } else {
                        warn!(table = %table, change, "rows not changed since keep their old values in the lake's log (source.recopy_on_schema_change = false)");
                    }
                }
            }
            if self.config.filter.matches(&table) {
                let stream = self.stream.as_ref().expect("streaming");
                // The statement's own transaction: before every row it shapes.
                let seq = stream.txn.as_ref().map_or_else(
                    || BinlogPosition::seq_of(&stream.file, end).saturating_sub(1),
                    |t| t.seq,
                );
                let mut statement = statement.trim_end().to_string();
                if statement.len() > MAX_DDL_BYTES {
                    let mut cut = MAX_DDL_BYTES;
                    while !statement.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    statement.truncate(cut);
                    statement.push_str(" …");
                }
                self.last_ddl.insert(table.clone(), statement.clone());
                self.push_event(ChangeEvent::Ddl {
                    table,
                    seq,
                    statement,
                });
            }
        }
        if let Some(table) = truncated_table(statement, schema) {
            if self.tables.contains(&table) {
                self.truncate(table, end).await?;
            }
        }
        let standalone = self
            .stream
            .as_ref()
            .and_then(|s| s.txn.as_ref())
            .is_none_or(|t| t.standalone);
        if standalone {
            if self.stream.as_ref().expect("streaming").txn.is_some() {
                self.commit(end, timestamp);
            } else {
                let position = self.position_here(end);
                self.push_event(ChangeEvent::Heartbeat {
                    ack: position.seq(),
                    position: position.to_string(),
                });
            }
        }
        Ok(())
    }

    /// A data-changing statement logged as SQL text (the session's
    /// `binlog_format` was not ROW): the rows it changed are in no event.
    /// Every captured table it may have written stops — loudly, with the
    /// position and the fix — so none streams on with a gap.
    fn on_statement_data(&mut self, kind: &str, reach: Reach, end: u64) {
        let position = self.position_here(end).to_string();
        let reached: Vec<TableId> = match reach {
            Reach::Any => self.tables.clone(),
            Reach::Tables(names) => names
                .into_iter()
                .filter(|t| {
                    self.tables.contains(t)
                        || (self.config.filter.matches(t)
                            && !catalog::is_system_database(&t.schema)
                            && !self.stopped.contains(t))
                })
                .collect(),
        };
        if reached.is_empty() {
            // Nothing captured was written; still never silent. Names are
            // not logged: a double-quoted value may have been read as one.
            warn!(position = %position, statement = kind, "a data change was logged as a statement (binlog_format is not ROW for some session); it names no captured table, so nothing stops — but every session must log ROW");
            return;
        }
        for table in reached {
            let reason = format!(
                "a statement-logged {kind} at {position} may have changed the table: its rows                  are in no binlog event (the session's binlog_format was STATEMENT or MIXED).                  Fix: SET GLOBAL binlog_format = 'ROW' (and binlog_format=ROW in the server                  config) and keep every session on ROW (no client may SET SESSION                  binlog_format), then copy the table again:                  `tidewater snapshot --config <file> --table {table}`"
            );
            self.stop_table(&table, reason);
        }
    }

    /// The catalog's columns of `table`. The control connection sits idle
    /// while streaming and the server may have closed it (`wait_timeout`):
    /// a failed read reconnects once.
    async fn catalog_columns(&mut self, table: &TableId) -> Result<Vec<CatalogColumn>, MysqlError> {
        match catalog::table_columns(&mut self.conn, table).await {
            Ok(columns) => Ok(columns),
            Err(err)
                if tidewater_core::Classified::class(&err)
                    == tidewater_core::ErrorClass::Transient =>
            {
                debug!("control connection lost; reconnecting");
                self.conn = open(&self.opts).await?;
                catalog::table_columns(&mut self.conn, table).await
            }
            Err(err) => Err(err),
        }
    }

    async fn truncate(&mut self, table: TableId, end: u64) -> Result<(), MysqlError> {
        if !self.schemas.contains_key(&table) {
            let columns = self.catalog_columns(&table).await?;
            let schema = Arc::new(TableSchema {
                table: table.clone(),
                version: 1,
                columns: catalog::schema_columns(&table, &columns)?,
            });
            self.schemas.insert(table.clone(), schema.clone());
            self.push_event(ChangeEvent::Schema(schema));
        }
        let ord = self.begin_if_needed(end);
        self.push_event(ChangeEvent::Row(RowChange {
            table,
            op: Op::Truncate,
            ord,
            values: Vec::new(),
        }));
        Ok(())
    }

    async fn on_table_map(&mut self, data: &[u8], end: u64) -> Result<(), MysqlError> {
        let map = tablemap::parse_table_map(data)
            .map_err(|source| self.decode_error("-", end, source))?;
        let stream = self.stream.as_ref().expect("streaming");
        if stream
            .maps
            .get(&map.table_id)
            .is_some_and(|m| m.raw == data)
        {
            return Ok(());
        }
        let table = TableId::new(map.schema.clone(), map.table.clone());
        if !self.tables.contains(&table)
            && !self.copy_queue.contains(&table)
            && !self.stopped.contains(&table)
            && self.config.filter.matches(&table)
            && !catalog::is_system_database(&table.schema)
        {
            // Not there when the pipeline started, so created since: every
            // row it ever had is in the binlog from here on.
            info!(table = %table, "a new table matches source.tables: capturing it");
            self.tables.push(table.clone());
        }
        if !self.tables.contains(&table) {
            let stream = self.stream.as_mut().expect("streaming");
            stream.maps.insert(
                map.table_id,
                Mapped {
                    raw: data.to_vec(),
                    target: None,
                },
            );
            return Ok(());
        }
        let stream = self.stream.as_mut().expect("streaming");
        let in_copy = self.hold.as_ref().is_some_and(|h| {
            h.table == table && stream.txn.as_ref().is_some_and(|t| t.seq <= h.floor)
        });
        if in_copy {
            // A transaction the copy holds: its rows are not decoded, and
            // the table as it was then is no schema version (the copy's
            // schema is newer). Not cached: the next map is planned again.
            stream.builders.remove(&map.table_id);
            stream.maps.insert(
                map.table_id,
                Mapped {
                    raw: Vec::new(),
                    target: None,
                },
            );
            return Ok(());
        }
        if !self.catalog_cache.contains_key(&table) {
            let columns = self.catalog_columns(&table).await?;
            self.catalog_cache.insert(table.clone(), columns);
        }
        let catalog_columns = &self.catalog_cache[&table];
        // The catalog describes the table now; the table map describes it at
        // this point of the binlog. Use the catalog's details only when both
        // name the same columns.
        let same_shape = catalog_columns.len() == map.columns.len()
            && catalog_columns
                .iter()
                .zip(&map.columns)
                .all(|(c, m)| m.name.as_deref() == Some(c.name.as_str()));
        let overrides: Vec<rows::ColumnOverride> = if same_shape {
            catalog_columns
                .iter()
                .zip(&map.columns)
                .map(|(c, m)| {
                    let mut o = c.override_for_stream();
                    // The catalog is today's; the table map is this event's.
                    // A special type applies only to the base type it is
                    // stored as (a replayed change from before an ALTER keeps
                    // its old type).
                    if !o.special.as_ref().is_none_or(|s| special_fits(s, m.type_code)) {
                        warn!(table = %table, column = %c.name, "the catalog's type no longer matches this binlog event (a later ALTER); decoding it as its stored type");
                        o = rows::ColumnOverride::default();
                    }
                    o
                })
                .collect()
        } else {
            warn!(table = %table, "the catalog no longer matches this binlog table map (a later DDL); types the table map cannot express land as their base type");
            Vec::new()
        };
        let charsets = self.charsets.clone();
        let plan = rows::plan(&map, &overrides, &|id| charsets.get(&id).cloned())
            .map_err(|source| self.decode_error(&table.to_string(), end, source))?;
        let columns: Vec<Column> = plan.columns();
        let schema = match self.schemas.get(&table) {
            Some(current) if current.columns == columns => current.clone(),
            current => {
                let version = current.map_or(1, |s| s.version + 1);
                if current.is_some() {
                    info!(table = %table, version, "table schema changed in the binlog");
                }
                let schema = Arc::new(TableSchema {
                    table: table.clone(),
                    version,
                    columns,
                });
                self.schemas.insert(table.clone(), schema.clone());
                self.push_event(ChangeEvent::Schema(schema.clone()));
                schema
            }
        };
        let stream = self.stream.as_mut().expect("streaming");
        stream.builders.remove(&map.table_id);
        stream.maps.insert(
            map.table_id,
            Mapped {
                raw: data.to_vec(),
                target: Some((schema, Arc::new(plan))),
            },
        );
        Ok(())
    }

    fn on_rows(&mut self, event_type: u8, data: &[u8], end: u64) -> Result<(), MysqlError> {
        // Every rows event (compressed ones too) starts with the 6-byte table id.
        let Some(table_id) = data.get(..6).map(|b| {
            b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
        }) else {
            return Err(self.decode_error(
                "-",
                end,
                event::DecodeError::Truncated {
                    what: "rows event table id",
                    offset: 0,
                    needed: 6,
                },
            ));
        };
        let stream = self.stream.as_ref().expect("streaming");
        let Some(mapped) = stream.maps.get(&table_id) else {
            return Err(MysqlError::BadPosition {
                what: format!(
                    "a rows event at {} refers to table id {table_id} without a table map before it",
                    self.position_here(end)
                ),
            });
        };
        let Some((schema, plan)) = mapped.target.clone() else {
            return Ok(());
        };
        match self.decode_rows(event_type, data, end, table_id, &schema, &plan) {
            // A row of this table cannot be followed: it stops alone.
            Err(error)
                if tidewater_core::Classified::class(&error)
                    == tidewater_core::ErrorClass::Definite =>
            {
                self.stop_table(&schema.table, tidewater_core::error_chain(&error));
                Ok(())
            }
            other => other,
        }
    }

    /// Stops capturing `table` in this run; the coordinator records why.
    fn stop_table(&mut self, table: &TableId, reason: String) {
        let reason = match self.last_ddl.get(table) {
            Some(statement) => {
                let short: String = statement.chars().take(300).collect();
                format!("{reason} (the last DDL on the table in this run: {short})")
            }
            None => reason,
        };
        self.stopped.push(table.clone());
        self.tables.retain(|t| t != table);
        if self.hold.as_ref().is_some_and(|h| &h.table == table) {
            self.hold = None;
        }
        if let Some(stream) = self.stream.as_mut() {
            for mapped in stream.maps.values_mut() {
                if mapped
                    .target
                    .as_ref()
                    .is_some_and(|(s, _)| &s.table == table)
                {
                    mapped.target = None;
                }
            }
        }
        self.push_event(ChangeEvent::TableFailed {
            table: table.clone(),
            reason,
        });
    }

    /// Tables an earlier run stopped: not captured by this one.
    pub fn set_stopped(&mut self, tables: impl IntoIterator<Item = TableId>) {
        self.stopped.extend(tables);
    }

    fn decode_rows(
        &mut self,
        event_type: u8,
        data: &[u8],
        end: u64,
        table_id: u64,
        schema: &Arc<TableSchema>,
        plan: &Arc<RowPlan>,
    ) -> Result<(), MysqlError> {
        // Straight into Arrow. Consecutive rows events of this table in
        // this transaction accumulate in one block, sent when anything else
        // happens (see `push_event`) or once it is large. Any other rows
        // numbered since (or another table) end the open block first, so a
        // block's ords are always contiguous.
        let next_ord = self
            .stream
            .as_ref()
            .and_then(|s| s.txn.as_ref())
            .map(|t| t.ord + 1);
        if self
            .stream_mut()
            .open_block
            .as_ref()
            .is_some_and(|b| b.table_id != table_id || Some(b.first_ord + b.rows) != next_ord)
        {
            self.flush_block();
        }
        let mut out = self
            .stream_mut()
            .builders
            .remove(&table_id)
            .unwrap_or_else(|| rows::ColumnarRows::new(plan));
        let before = out.len();
        let decoded = rows::decode_rows_columnar(event_type, data, plan, &mut out);
        let stats = match decoded {
            Ok(stats) => stats,
            Err(source) => {
                // The buffer may hold part of this event: drop it, and the
                // open block with it (the error stops the table or the run).
                let stream = self.stream_mut();
                if stream
                    .open_block
                    .as_ref()
                    .is_some_and(|b| b.table_id == table_id)
                {
                    stream.open_block = None;
                }
                return Err(self.decode_error(&schema.table.to_string(), end, source));
            }
        };
        let added = (out.len() - before) as u64;
        self.stream_mut().builders.insert(table_id, out);
        if stats.zero_dates > 0 {
            self.on_zero_dates(&schema.table, stats.zero_dates, end)?;
        }
        if added == 0 {
            return Ok(());
        }
        // Numbers the rows (and sends the transaction's Begin first, if
        // these are its first rows: there is no open block then).
        let first_ord = self.reserve_ords(end, added);
        let stream = self.stream_mut();
        match stream.open_block.as_mut() {
            Some(open) if open.table_id == table_id && open.first_ord + open.rows == first_ord => {
                open.rows += added;
            }
            _ => {
                stream.open_block = Some(OpenBlock {
                    table_id,
                    table: schema.table.clone(),
                    first_ord,
                    rows: added,
                });
            }
        }
        if stream
            .open_block
            .as_ref()
            .is_some_and(|b| b.rows >= OPEN_BLOCK_ROWS)
        {
            self.flush_block();
        }
        Ok(())
    }

    fn on_zero_dates(&mut self, table: &TableId, count: u64, end: u64) -> Result<(), MysqlError> {
        if self.config.zero_dates == ZeroDates::Fail {
            return Err(MysqlError::SnapshotValue {
                table: table.clone(),
                column: "(a date column)".into(),
                what: format!(
                    "zero date at {} and source.zero_dates = \"fail\"",
                    self.position_here(end)
                ),
            });
        }
        self.zero_dates += count;
        if !self.zero_date_tables.contains(table) {
            self.zero_date_tables.push(table.clone());
            warn!(table = %table, "zero dates land as NULL (source.zero_dates = \"null\"); further ones are counted, not logged");
        }
        Ok(())
    }

    pub async fn close(mut self) {
        if let Some(snapshot) = self.snapshot.take() {
            snapshot.task.abort();
        }
        if let Some(stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.binlog.close()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.disconnect()).await;
    }
}

impl tidewater_core::Source for MysqlSource {
    type Error = MysqlError;
    type Ack = BinlogAcknowledger;

    async fn tables(&mut self) -> Result<Vec<TableId>, MysqlError> {
        MysqlSource::tables(self).await
    }

    async fn preflight(
        &mut self,
        tables: &[TableId],
    ) -> Result<Vec<tidewater_core::Problem>, MysqlError> {
        MysqlSource::preflight(self, tables).await
    }

    async fn replica(&mut self) -> Result<tidewater_core::Replica, MysqlError> {
        Ok(tidewater_core::Replica::Nothing)
    }

    async fn retains(&mut self, position: &str) -> Result<bool, MysqlError> {
        match BinlogPosition::parse(position) {
            Some(position) => self.binlog_available(&position).await,
            None => Ok(false),
        }
    }

    async fn resume_schema(&mut self, table: &TableId) -> Result<Option<TableSchema>, MysqlError> {
        Ok(Some(self.table_schema(table).await?))
    }

    async fn start(
        &mut self,
        start: tidewater_core::Start,
    ) -> Result<Option<tidewater_core::state::SnapshotPlan>, MysqlError> {
        use tidewater_core::{ResumePoint, Start};
        let parse = |text: &str| {
            BinlogPosition::parse(text).ok_or(MysqlError::Misuse {
                what: "a start from a position this source did not produce",
            })
        };
        match start {
            Start::Snapshot { tables, copy, .. } => self.start_snapshot(tables, copy).await?,
            Start::ResumeSnapshot {
                tables,
                from: ResumePoint::Keys { position, keys },
            } => {
                self.resume_snapshot(tables, parse(&position)?, keys)
                    .await?
            }
            Start::ResumeSnapshot { .. } => {
                return Err(MysqlError::Misuse {
                    what: "a binlog snapshot resumes by keys, not by chunks",
                })
            }
            Start::Stream {
                streamed,
                copies,
                stopped,
                from,
            } => {
                let from = match from {
                    Some(text) => parse(&text)?,
                    None => self.current_position().await?,
                };
                self.queue_copies(&copies);
                self.set_stopped(stopped);
                self.start_streaming(&streamed, from).await?;
            }
        }
        Ok(None)
    }

    async fn next_event(&mut self) -> Result<ChangeEvent, MysqlError> {
        MysqlSource::next_event(self).await
    }

    fn ready_event(&mut self) -> Option<ChangeEvent> {
        MysqlSource::ready_event(self)
    }

    fn copy_requests(&self) -> Option<tidewater_core::CopyRequestQueue> {
        Some(self.requests.clone())
    }

    fn acknowledger(&self) -> BinlogAcknowledger {
        BinlogAcknowledger
    }

    async fn close(self) {
        MysqlSource::close(self).await
    }
}

/// The acknowledger of a binlog source: the server keeps no replica state,
/// so there is nothing to tell it; the pipeline records the acknowledged
/// position next to the lake instead (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct BinlogAcknowledger;

impl tidewater_core::Acknowledger for BinlogAcknowledger {
    fn ack(&self, _value: u64) {}
}

/// File and offset from a `SHOW MASTER STATUS` row, and on MySQL its
/// `Executed_Gtid_Set` (5th column) when GTIDs are on.
fn status_position(row: &mysql_async::Row) -> BinlogPosition {
    let mut position = BinlogPosition::new(
        row.get::<String, _>(0).unwrap_or_default(),
        row.get::<u64, _>(1).unwrap_or_default(),
    );
    let executed: Option<String> = row.get_opt(4).and_then(Result::ok);
    position.gtid = executed
        .map(|set| set.split_whitespace().collect::<String>())
        .filter(|set| !set.is_empty());
    position
}

/// JSON text without the blanks outside string literals.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Whether a catalog-only type can describe a column the table map stores
/// as `type_code`.
fn special_fits(special: &rows::Special, type_code: u8) -> bool {
    use crate::tablemap::column_type as t;
    match special {
        rows::Special::Uuid | rows::Special::Inet6 | rows::Special::Inet4 => {
            matches!(type_code, t::STRING | t::VAR_STRING | t::VARCHAR)
        }
        rows::Special::Json => matches!(
            type_code,
            t::BLOB | t::TINY_BLOB | t::MEDIUM_BLOB | t::LONG_BLOB | t::JSON
        ),
        rows::Special::TemporalPrecision { .. } => matches!(
            type_code,
            t::TIMESTAMP | t::DATETIME | t::TIME | t::TIMESTAMP2 | t::DATETIME2 | t::TIME2
        ),
    }
}

/// The table a `TRUNCATE [TABLE] [db.]name` statement names.
/// What in an `ALTER TABLE` gives the rows already in the table values no
/// row event carries: a renamed column, or a column added with a default.
/// Read from the text (keywords outside quotes); a false alarm costs a copy.
fn rewriting_change(statement: &str) -> Option<&'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in statement.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' || c == '`' => {
                quote = Some(c);
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                words.push("?".to_string());
            }
            None if c.is_alphanumeric() || c == '_' => word.push(c.to_ascii_uppercase()),
            None => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                if c == ',' {
                    words.push(",".into());
                }
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    if words.first().map(String::as_str) != Some("ALTER") {
        return None;
    }
    let mut clause_adds = false;
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "," => clause_adds = false,
            "RENAME" if words.get(i + 1).is_some_and(|n| n == "COLUMN") => {
                return Some("a column was renamed")
            }
            // CHANGE [COLUMN] old new: a rename unless both names match.
            "CHANGE" => {
                let mut rest = words[i + 1..].iter().filter(|w| *w != "COLUMN");
                let (old, new) = (rest.next(), rest.next());
                if old != new || old.is_some_and(|o| o == "?") {
                    return Some("a column was renamed (CHANGE)");
                }
            }
            "ADD" => clause_adds = true,
            "DEFAULT" if clause_adds && words.get(i + 1).is_some_and(|n| n != "NULL") => {
                return Some("a column was added with a default")
            }
            _ => {}
        }
    }
    None
}

/// The new names of `RENAME TABLE a TO b[, c TO d]` and `ALTER TABLE a
/// RENAME [TO|AS] b`.
fn renamed_tables(statement: &str, default_db: &str) -> Vec<TableId> {
    let name = |text: &str| table_name(text, default_db);
    let text = statement.trim_start();
    let mut found = Vec::new();
    if let Some(rest) = strip_keyword(text, "rename").and_then(|r| strip_keyword(r, "table")) {
        let mut rest = rest;
        while let Some((_, used)) = name(rest) {
            let Some(after) = strip_keyword(rest[used..].trim_start(), "to") else {
                break;
            };
            let Some((target, used)) = name(after) else {
                break;
            };
            found.push(target);
            match after[used..].trim_start().strip_prefix(',') {
                Some(next) => rest = next.trim_start(),
                None => break,
            }
        }
    } else if let Some(table) = ddl_table(text, default_db) {
        let upper = text.to_ascii_uppercase();
        if let Some(at) = upper.find(" RENAME ") {
            let rest = text[at + 8..].trim_start();
            if strip_keyword(rest, "column").is_none()
                && strip_keyword(rest, "index").is_none()
                && strip_keyword(rest, "key").is_none()
            {
                let rest = strip_keyword(rest, "to")
                    .or_else(|| strip_keyword(rest, "as"))
                    .unwrap_or(rest);
                if let Some((target, _)) = name(rest) {
                    if target != table {
                        found.push(target);
                    }
                }
            }
        }
    }
    found
}

/// How often the server's binlog files are counted (for the metrics).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// DDL longer than this is kept in the schema history cut short.
const MAX_DDL_BYTES: usize = 64 * 1024;

/// The table an `ALTER TABLE` or `CREATE TABLE` statement is about.
fn ddl_table(statement: &str, default_db: &str) -> Option<TableId> {
    let text = statement.trim_start();
    let rest = if let Some(rest) = strip_keyword(text, "alter") {
        let rest = strip_keyword(rest, "online").unwrap_or(rest);
        let rest = strip_keyword(rest, "ignore").unwrap_or(rest);
        let rest = strip_keyword(rest, "table")?;
        strip_keyword(rest, "if")
            .and_then(|r| strip_keyword(r, "exists"))
            .unwrap_or(rest)
    } else {
        let rest = strip_keyword(text, "create")?;
        let rest = strip_keyword(rest, "or")
            .and_then(|r| strip_keyword(r, "replace"))
            .unwrap_or(rest);
        let rest = strip_keyword(rest, "temporary").unwrap_or(rest);
        let rest = strip_keyword(rest, "table")?;
        strip_keyword(rest, "if")
            .and_then(|r| strip_keyword(r, "not"))
            .and_then(|r| strip_keyword(r, "exists"))
            .unwrap_or(rest)
    };
    table_name(rest, default_db).map(|(table, _)| table)
}

fn truncated_table(statement: &str, default_db: &str) -> Option<TableId> {
    let rest = strip_keyword(statement.trim_start(), "truncate")?;
    let rest = strip_keyword(rest, "table").unwrap_or(rest);
    table_name(rest, default_db).map(|(table, _)| table)
}

/// A table name, `db.table` or `table` (in `default_db`), at the start of
/// `text`, and how many bytes of `text` it took.
fn table_name(text: &str, default_db: &str) -> Option<(TableId, usize)> {
    let (first, rest) = identifier(text)?;
    let (table, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let (second, rest) = identifier(after)?;
            (TableId::new(first, second), rest)
        }
        None => (TableId::new(default_db, first), rest),
    };
    Some((table, text.len() - rest.len()))
}

/// `text` after a leading case-insensitive keyword and the blanks after it.
fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword) && rest.starts_with(char::is_whitespace))
        .then(|| rest.trim_start())
}

/// One identifier, backtick-quoted (with `` for a backtick) or bare, and the
/// text after it.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('`') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '`' {
                if chars.peek().is_some_and(|(_, n)| *n == '`') {
                    chars.next();
                    name.push('`');
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text
            .find(|c: char| c.is_whitespace() || matches!(c, '.' | ';' | ',' | '('))
            .unwrap_or(text.len());
        (end > 0).then(|| (text[..end].to_string(), &text[end..]))
    }
}

/// The snapshot reader: one task per snapshot, owning the snapshot
/// connection and its transaction.
/// Rows per block of a snapshot copy.
const SNAPSHOT_BLOCK_ROWS: usize = 8192;

/// Parallel readers of the initial snapshot (MySQL/MariaDB).
#[derive(Clone)]
struct ParallelRead {
    opts: Endpoint,
    workers: usize,
    chunk_rows: u64,
}

/// Blocks a range reader may hold ahead of the consumer.
const RANGE_BLOCKS_AHEAD: usize = 4;

/// How the rows of one table are turned into values.
struct RowDecode {
    schema: Arc<TableSchema>,
    geometry: Vec<bool>,
    native_json: Vec<bool>,
    policy: ZeroDates,
    zero_dates: std::sync::atomic::AtomicU64,
}

impl RowDecode {
    fn row(&self, raw: Vec<Value>) -> Result<Vec<Datum>, MysqlError> {
        let table = &self.schema.table;
        let mut values = Vec::with_capacity(raw.len());
        for (i, (v, column)) in raw.into_iter().zip(&self.schema.columns).enumerate() {
            let mut zero = 0u64;
            let mut datum =
                value::datum(&column.ty, v, &mut zero).map_err(|e| MysqlError::SnapshotValue {
                    table: table.clone(),
                    column: column.name.clone(),
                    what: e.0,
                })?;
            if zero > 0 {
                if self.policy == ZeroDates::Fail {
                    return Err(MysqlError::SnapshotValue {
                        table: table.clone(),
                        column: column.name.clone(),
                        what: "zero date and source.zero_dates = \"fail\"".into(),
                    });
                }
                self.zero_dates
                    .fetch_add(zero, std::sync::atomic::Ordering::Relaxed);
            }
            if self.native_json[i] {
                if let Datum::Text(text) = &datum {
                    datum = Datum::Text(compact_json(text));
                }
            }
            if self.geometry[i] {
                if let Datum::Bytes(internal) = &datum {
                    datum = Datum::Bytes(rows::geometry_to_wkb(internal).map_err(|what| {
                        MysqlError::SnapshotValue {
                            table: table.clone(),
                            column: column.name.clone(),
                            what: what.into(),
                        }
                    })?);
                }
            }
            values.push(datum);
        }
        Ok(values)
    }
}

type BlockSender = mpsc::Sender<Result<(Vec<arrow_array::ArrayRef>, u64), MysqlError>>;

/// Runs one snapshot query, sending its rows as blocks of Arrow columns.
async fn read_query(
    conn: &mut Conn,
    sql: String,
    params: Vec<Value>,
    decode: &RowDecode,
    out: &BlockSender,
) -> Result<(), MysqlError> {
    let table = &decode.schema.table;
    let params = if params.is_empty() {
        mysql_async::Params::Empty
    } else {
        mysql_async::Params::Positional(params)
    };
    let mut result = conn
        .exec_iter(sql, params)
        .await
        .map_err(query_error(format!("reading {table} for the snapshot")))?;
    let mut block: Vec<Vec<Datum>> = Vec::with_capacity(SNAPSHOT_BLOCK_ROWS);
    while let Some(row) = result
        .next()
        .await
        .map_err(query_error(format!("reading {table} for the snapshot")))?
    {
        block.push(decode.row(row.unwrap())?);
        if block.len() >= SNAPSHOT_BLOCK_ROWS {
            let rows = block.len() as u64;
            let columns = build_columns(&decode.schema, &mut block)?;
            if out.send(Ok((columns, rows))).await.is_err() {
                return Ok(());
            }
        }
    }
    drop(result);
    if !block.is_empty() {
        let rows = block.len() as u64;
        let columns = build_columns(&decode.schema, &mut block)?;
        let _ = out.send(Ok((columns, rows))).await;
    }
    Ok(())
}

/// Forwards one query's blocks as `Read` rows numbered on from `row_number`.
async fn drain_blocks(
    mut blocks: mpsc::Receiver<Result<(Vec<arrow_array::ArrayRef>, u64), MysqlError>>,
    tx: &mpsc::Sender<Result<SnapshotMsg, MysqlError>>,
    schema: &TableSchema,
    row_number: &mut u64,
) -> Result<(), MysqlError> {
    while let Some(item) = blocks.recv().await {
        let (columns, rows) = item?;
        let block = RowBlock {
            table: schema.table.clone(),
            ops: vec![Op::Read; rows as usize],
            first_ord: *row_number + 1,
            columns,
        };
        *row_number += rows;
        if tx
            .send(Ok(SnapshotMsg::Event(ChangeEvent::Block(block))))
            .await
            .is_err()
        {
            return Err(MysqlError::Misuse {
                what: "snapshot consumer gone",
            });
        }
    }
    Ok(())
}

/// Key ranges to read `schema`'s table in, in key order, when it has a
/// single integer key and at least two chunks' worth of rows: `(condition,
/// its parameters)` per range, the first open below and the last above.
async fn key_ranges(
    conn: &mut Conn,
    schema: &TableSchema,
    filter: &str,
    params: &[Value],
    estimate: u64,
    parallel: &ParallelRead,
) -> Result<Option<Vec<(String, Vec<Value>)>>, MysqlError> {
    let keys: Vec<&tidewater_core::Column> = schema.key_columns().collect();
    let integer = matches!(
        keys.as_slice(),
        [c] if matches!(
            c.ty,
            tidewater_core::ColumnType::Int8 | tidewater_core::ColumnType::Int16 | tidewater_core::ColumnType::Int32 | tidewater_core::ColumnType::Int64
                | tidewater_core::ColumnType::UInt8 | tidewater_core::ColumnType::UInt16 | tidewater_core::ColumnType::UInt32 | tidewater_core::ColumnType::UInt64
        )
    );
    let chunk = parallel.chunk_rows.max(1);
    if !integer || parallel.workers < 2 || estimate < 2 * chunk {
        return Ok(None);
    }
    let key = quote_ident(&keys[0].name);
    let sql = format!(
        "SELECT CAST(MIN({key}) AS CHAR), CAST(MAX({key}) AS CHAR) FROM {}{filter}",
        quote_table(&schema.table)
    );
    let params = if params.is_empty() {
        mysql_async::Params::Empty
    } else {
        mysql_async::Params::Positional(params.to_vec())
    };
    let row: Option<(Option<String>, Option<String>)> = conn
        .exec_first(sql, params)
        .await
        .map_err(query_error(format!(
            "reading the key range of {}",
            schema.table
        )))?;
    let Some((Some(low), Some(high))) = row else {
        return Ok(None);
    };
    let (Ok(low), Ok(high)) = (low.parse::<i128>(), high.parse::<i128>()) else {
        return Ok(None);
    };
    let count = estimate.div_ceil(chunk).clamp(2, 64) as i128;
    let width = ((high - low + 1) / count).max(1);
    let bounds: Vec<i128> = (1..count)
        .map(|i| low + i * width)
        .filter(|b| *b <= high)
        .collect();
    if bounds.is_empty() {
        return Ok(None);
    }
    let bound = |b: i128| -> Value {
        match i64::try_from(b) {
            Ok(v) => Value::Int(v),
            Err(_) => Value::UInt(b as u64),
        }
    };
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    ranges.push((format!("{key} < ?"), vec![bound(bounds[0])]));
    for pair in bounds.windows(2) {
        ranges.push((
            format!("{key} >= ? AND {key} < ?"),
            vec![bound(pair[0]), bound(pair[1])],
        ));
    }
    ranges.push((
        format!("{key} >= ?"),
        vec![bound(*bounds.last().expect("not empty"))],
    ));
    Ok(Some(ranges))
}

/// Arrow columns of `rows` (emptied).
fn build_columns(
    schema: &TableSchema,
    rows: &mut Vec<Vec<Datum>>,
) -> Result<Vec<arrow_array::ArrayRef>, MysqlError> {
    let mut columns = Vec::with_capacity(schema.columns.len());
    for (index, column) in schema.columns.iter().enumerate() {
        let values: Vec<&Datum> = rows.iter().map(|r| &r[index]).collect();
        columns.push(
            tidewater_core::build_array(&tidewater_core::arrow_type(&column.ty), &values).map_err(
                |e| MysqlError::SnapshotValue {
                    table: schema.table.clone(),
                    column: column.name.clone(),
                    what: e.to_string(),
                },
            )?,
        );
    }
    rows.clear();
    Ok(columns)
}

/// A key value as a statement parameter, for the types a resumed snapshot
/// can restart after (integers and text); `None` for others.
fn key_param(datum: &Datum) -> Option<Value> {
    Some(match datum {
        Datum::Int8(v) => Value::Int(i64::from(*v)),
        Datum::Int16(v) => Value::Int(i64::from(*v)),
        Datum::Int32(v) => Value::Int(i64::from(*v)),
        Datum::Int64(v) => Value::Int(*v),
        Datum::UInt(v) => Value::UInt(*v),
        Datum::Text(v) => Value::Bytes(v.clone().into_bytes()),
        Datum::Bytes(v) => Value::Bytes(v.clone()),
        _ => return None,
    })
}

/// Whether a snapshot interrupted after `key` can resume there.
pub fn resumable_key(key: &[Datum]) -> bool {
    !key.is_empty() && key.iter().all(|d| key_param(d).is_some())
}

async fn read_snapshot(
    mut conn: Conn,
    tables: Vec<TableId>,
    zero_dates_policy: ZeroDates,
    resume: &HashMap<TableId, (u64, Vec<Datum>)>,
    parallel: Option<ParallelRead>,
    tx: &mpsc::Sender<Result<SnapshotMsg, MysqlError>>,
) -> Result<SnapshotMsg, MysqlError> {
    let mut total = 0u64;
    let mut zero_dates = 0u64;
    for table in tables {
        let catalog_columns = catalog::table_columns(&mut conn, &table).await?;
        match read_snapshot_table(
            &mut conn,
            &table,
            &catalog_columns,
            zero_dates_policy,
            resume,
            parallel.as_ref(),
            tx,
        )
        .await
        {
            Ok(Some((rows, zeros))) => {
                total += rows;
                zero_dates += zeros;
            }
            Ok(None) => {}
            Err(error @ MysqlError::Misuse { .. }) => return Err(error),
            // The SELECT is built from the catalog read above and its values
            // decoded by it; a DDL between the two (a column renamed, dropped
            // or retyped) fails the read. Copied again from a new snapshot,
            // the table is read as it is then; never a broken table.
            Err(error) => {
                let now = catalog::table_columns(&mut conn, &table).await?;
                let same = |a: &CatalogColumn, b: &CatalogColumn| {
                    a.name == b.name && a.column_type == b.column_type
                };
                if now.len() != catalog_columns.len()
                    || !now.iter().zip(&catalog_columns).all(|(a, b)| same(a, b))
                {
                    return Err(MysqlError::CopyRaced {
                        table,
                        source: Box::new(error),
                    });
                }
                return Err(error);
            }
        }
    }
    conn.query_drop("COMMIT")
        .await
        .map_err(query_error("closing the snapshot transaction"))?;
    let _ = conn.disconnect().await;
    Ok(SnapshotMsg::Done {
        rows: total,
        zero_dates,
    })
}

/// Copies one table in the open snapshot: its rows and zero dates, or None
/// when it has no columns (it no longer exists).
async fn read_snapshot_table(
    conn: &mut Conn,
    table: &TableId,
    catalog_columns: &[CatalogColumn],
    zero_dates_policy: ZeroDates,
    resume: &HashMap<TableId, (u64, Vec<Datum>)>,
    parallel: Option<&ParallelRead>,
    tx: &mpsc::Sender<Result<SnapshotMsg, MysqlError>>,
) -> Result<Option<(u64, u64)>, MysqlError> {
    let table = table.clone();
    let columns = catalog::schema_columns(&table, catalog_columns)?;
    let schema = Arc::new(TableSchema {
        table: table.clone(),
        version: 1,
        columns,
    });
    if tx
        .send(Ok(SnapshotMsg::Event(ChangeEvent::Schema(schema.clone()))))
        .await
        .is_err()
    {
        return Err(MysqlError::Misuse {
            what: "snapshot consumer gone",
        });
    }
    if schema.columns.is_empty() {
        return Ok(None);
    }
    let geometry: Vec<bool> = catalog_columns
        .iter()
        .map(|c| {
            matches!(
                c.data_type.as_str(),
                "geometry"
                    | "point"
                    | "linestring"
                    | "polygon"
                    | "multipoint"
                    | "multilinestring"
                    | "multipolygon"
                    | "geometrycollection"
                    | "geomcollection"
            )
        })
        .collect();
    // MySQL's native JSON comes back as text with blanks after `:` and
    // `,`; the binlog decoder writes it compact. MariaDB's JSON is text as
    // stored on both paths.
    let native_json: Vec<bool> = catalog_columns
        .iter()
        .map(|c| c.data_type == "json")
        .collect();
    let select: Vec<String> = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    // In key order (InnoDB's clustered order: free), so that an
    // interrupted snapshot can resume after the last row it committed.
    let keys: Vec<String> = schema.key_columns().map(|c| quote_ident(&c.name)).collect();
    let order = if keys.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", keys.join(", "))
    };
    let (filter, params, start) = match resume.get(&table) {
        Some((ord, key)) if !keys.is_empty() && key.len() == keys.len() => {
            let params: Vec<Value> = key.iter().filter_map(key_param).collect();
            let marks = vec!["?"; keys.len()].join(", ");
            (
                format!(" WHERE ({}) > ({marks})", keys.join(", ")),
                params,
                *ord,
            )
        }
        _ => (String::new(), Vec::new(), 0),
    };
    let sql = format!(
        "SELECT {} FROM {}{filter}{order}",
        select.join(", "),
        quote_table(&table)
    );
    // Statistics, for progress (InnoDB's estimate).
    let estimate: Option<Option<u64>> = conn
        .exec_first(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.schema, &table.table),
        )
        .await
        .map_err(query_error(format!("estimating the rows of {table}")))?;
    let estimate = estimate.flatten();
    if tx
        .send(Ok(SnapshotMsg::Event(ChangeEvent::CopyEstimate {
            table: table.clone(),
            rows: estimate.unwrap_or(0),
        })))
        .await
        .is_err()
    {
        return Err(MysqlError::Misuse {
            what: "snapshot consumer gone",
        });
    }
    info!(table = %table, estimated_rows = estimate.unwrap_or(0), "snapshot copy started");
    let decode = Arc::new(RowDecode {
        schema: schema.clone(),
        geometry,
        native_json,
        policy: zero_dates_policy,
        zero_dates: std::sync::atomic::AtomicU64::new(0),
    });
    let mut row_number = start;
    let ranges = match &parallel {
        Some(p) => key_ranges(conn, &schema, &filter, &params, estimate.unwrap_or(0), p).await?,
        None => None,
    };
    match (ranges, &parallel) {
        (Some(ranges), Some(p)) => {
            info!(table = %table, ranges = ranges.len(), workers = p.workers, "reading key ranges in parallel");
            let mut receivers = Vec::with_capacity(ranges.len());
            let mut jobs = std::collections::VecDeque::new();
            for (bounds, bound_params) in ranges {
                let (btx, brx) = mpsc::channel(RANGE_BLOCKS_AHEAD);
                receivers.push(brx);
                let where_ = if filter.is_empty() {
                    format!(" WHERE {bounds}")
                } else {
                    format!("{filter} AND {bounds}")
                };
                let sql = format!(
                    "SELECT {} FROM {}{where_}{order}",
                    select.join(", "),
                    quote_table(&table)
                );
                let mut all = params.clone();
                all.extend(bound_params);
                jobs.push_back((sql, all, btx));
            }
            let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..p.workers.min(receivers.len()) {
                let jobs = jobs.clone();
                let decode = decode.clone();
                let opts = p.opts.clone();
                workers.spawn(async move {
                    let mut worker = match open(&opts).await {
                        Ok(c) => c,
                        Err(err) => {
                            if let Some((_, _, btx)) = jobs.lock().await.pop_front() {
                                let _ = btx.send(Err(err)).await;
                            }
                            return;
                        }
                    };
                    // Its own consistent snapshot, at a point after the
                    // main one: the binlog from the main one's position
                    // replays whatever changed in between.
                    if let Err(err) = worker
                        .query_drop(
                            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                             START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                        )
                        .await
                    {
                        if let Some((_, _, btx)) = jobs.lock().await.pop_front() {
                            let _ = btx
                                .send(Err(query_error("opening a snapshot worker's transaction")(
                                    err,
                                )))
                                .await;
                        }
                        return;
                    }
                    loop {
                        let next = jobs.lock().await.pop_front();
                        let Some((sql, params, btx)) = next else {
                            break;
                        };
                        if let Err(err) = read_query(&mut worker, sql, params, &decode, &btx).await
                        {
                            let _ = btx.send(Err(err)).await;
                            break;
                        }
                    }
                    let _ = worker.query_drop("COMMIT").await;
                    let _ = worker.disconnect().await;
                });
            }
            for brx in receivers {
                drain_blocks(brx, tx, &schema, &mut row_number).await?;
            }
            workers.shutdown().await;
        }
        _ => {
            let (btx, brx) = mpsc::channel(RANGE_BLOCKS_AHEAD);
            let (read, drained) = tokio::join!(
                async {
                    let result = read_query(conn, sql, params, &decode, &btx).await;
                    drop(btx);
                    result
                },
                drain_blocks(brx, tx, &schema, &mut row_number)
            );
            read?;
            drained?;
        }
    }
    let zero_dates = decode.zero_dates.load(std::sync::atomic::Ordering::Relaxed);
    info!(table = %table, rows = row_number, "snapshot copy done");
    Ok(Some((row_number - start, zero_dates)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_statements() {
        assert_eq!(
            truncated_table("TRUNCATE TABLE t1", "shop"),
            Some(TableId::new("shop", "t1"))
        );
        assert_eq!(
            truncated_table("truncate `my db`.`we.ird`", "shop"),
            Some(TableId::new("my db", "we.ird"))
        );
        assert_eq!(
            truncated_table("truncate table a.`b``c`;", "shop"),
            Some(TableId::new("a", "b`c"))
        );
        assert_eq!(truncated_table("ALTER TABLE t ADD c INT", "shop"), None);
        assert_eq!(truncated_table("TRUNCATEX t", "shop"), None);
    }

    #[test]
    fn ddl_that_rewrites_rows() {
        assert!(rewriting_change("ALTER TABLE t RENAME COLUMN a TO b").is_some());
        assert!(rewriting_change("alter table t change a b int").is_some());
        assert!(rewriting_change("ALTER TABLE t CHANGE COLUMN a a BIGINT").is_none());
        assert!(rewriting_change("ALTER TABLE t ADD COLUMN f INT NOT NULL DEFAULT 1").is_some());
        assert!(rewriting_change("ALTER TABLE t ADD c INT, ALTER d SET DEFAULT 2").is_none());
        assert!(rewriting_change("ALTER TABLE t ADD c VARCHAR(9) COMMENT 'DEFAULT x'").is_none());
        assert!(rewriting_change("ALTER TABLE t MODIFY a BIGINT").is_none());
        assert!(rewriting_change("ALTER TABLE t ADD x INT DEFAULT NULL").is_none());
        assert!(rewriting_change("CREATE TABLE t (a INT DEFAULT 1)").is_none());
    }

    #[test]
    fn renamed_table_targets() {
        assert_eq!(
            renamed_tables("RENAME TABLE a TO b, db2.c TO `d d`", "shop"),
            vec![TableId::new("shop", "b"), TableId::new("shop", "d d")]
        );
        assert_eq!(
            renamed_tables("ALTER TABLE x RENAME TO y.z", "shop"),
            vec![TableId::new("y", "z")]
        );
        assert!(renamed_tables("ALTER TABLE x RENAME COLUMN a TO b", "shop").is_empty());
        assert!(renamed_tables("ALTER TABLE x ADD c INT", "shop").is_empty());
    }

    #[test]
    fn ddl_statements_name_their_table() {
        let t = |db: &str, name: &str| Some(TableId::new(db, name));
        assert_eq!(ddl_table("ALTER TABLE t ADD c INT", "shop"), t("shop", "t"));
        assert_eq!(
            ddl_table(
                "alter online ignore table if exists `a b`.c modify x int",
                "shop"
            ),
            t("a b", "c")
        );
        assert_eq!(
            ddl_table("CREATE OR REPLACE TABLE IF NOT EXISTS x.y (id int)", "shop"),
            t("x", "y")
        );
        assert_eq!(
            ddl_table("create temporary table tmp (id int)", "shop"),
            t("shop", "tmp")
        );
        assert_eq!(ddl_table("CREATE VIEW v AS SELECT 1", "shop"), None);
        assert_eq!(ddl_table("ALTER USER u IDENTIFIED BY 'x'", "shop"), None);
        assert_eq!(ddl_table("CREATE TABLEX t (id int)", "shop"), None);
    }

    #[test]
    fn json_text_is_compacted_outside_strings() {
        assert_eq!(
            compact_json(r#"{"a b": [1, 2.5], "c": "x, \"y\": z", "d": {"e": null}}"#),
            r#"{"a b":[1,2.5],"c":"x, \"y\": z","d":{"e":null}}"#
        );
    }

    #[test]
    fn server_ids_are_stable_and_high() {
        let a = MysqlConfig::server_id_for("shop");
        assert_eq!(a, MysqlConfig::server_id_for("shop"));
        assert_ne!(a, MysqlConfig::server_id_for("shop2"));
        assert!(a >= 0x4000_0000);
    }
}
