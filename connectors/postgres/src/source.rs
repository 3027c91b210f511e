//! The Postgres source: consistent snapshot, then the pgoutput stream.
//!
//! ```text
//!            control connection (tokio-postgres)      replication connection
//!                     │                                 (replication.rs)
//!  start_snapshot ────┼── CREATE PUBLICATION (if missing)      │
//!                     │                          CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT
//!                     │                               ──▶ consistent point CP, snapshot S
//!                     │  BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S
//!                     │  COPY each table ──▶ Row(r), _tw_seq = CP-1
//!                     │  COMMIT       (chunks: crate::chunks) │
//!                     │                               START_REPLICATION SLOT … LOGICAL 0/0
//!  next_event ◀───────┼──────────────── Begin/Relation/Insert/Update/Delete/Truncate/Commit
//!  acknowledger ──────┼─────────────────▶ standby status update (flush = acked end LSN),
//!    .ack(end LSN)    │                     at once, whether events flow or not
//! ```
//!
//! The slot keeps the replication connection idle while the COPYs run, which
//! keeps the exported snapshot alive; starting replication on that same session
//! then streams exactly the transactions that committed after CP — no gap, no
//! double count. Snapshot rows carry `_tw_seq = CP - 1` so they sort before any
//! streamed transaction (whose commit LSN is at least CP).
//!
//! Progress: the source never acknowledges anything on its own. Its
//! [`LsnAcknowledger`] is given the `ack` of the last transaction durable in
//! every table — that commit's end LSN, which is what the server needs to skip
//! it on the next start — or a keepalive's WAL end when nothing is pending.
//! The handle lives as long as the source, outside the replication stream:
//! it can be cloned out before streaming starts, a stream reports its value
//! from its first status update, and reporting needs no further event.
//! Restarting always asks for LSN 0/0, i.e. the slot's confirmed position.
//!
//! Copies while streaming (a table that joins, `snapshot --table`, a copy
//! again after a schema change, see [`PostgresSource::start_table_copies`])
//! run beside the stream, in the manner of DBLog's and Debezium's
//! incremental snapshots: the other tables keep their latency. The copy
//! reads one exported snapshot, consistent point CP, its rows at
//! `_tw_seq` F = CP-1 and `_tw_ord` = chunk << 32 | row, in chunks on
//! connections of its own; between two of its blocks the stream delivers
//! whole transactions (for at most [`STREAM_TURN`], else while the server
//! has them ready), and the copy's `Begin` is sent again before its next
//! block:
//!
//! ```text
//!  Schema(t) Begin(F) TableSnapshot(t) Block(t) │ Begin(x) Row(u) Commit(x) │ Begin(F) Block(t) … │ held(t) TableSnapshotDone(t, F)
//! ```
//!
//! The copied table t itself never interleaves with its copy. A change of
//! t in a transaction at or below F is in the copy: dropped, from the
//! copy's start (and after its end by the coordinator, whose mark of t
//! becomes (F, max)). A change above F is held, with t's new schemas,
//! until t's last copy row, then goes before `TableSnapshotDone` in stream
//! order with its own (`_tw_seq`, `_tw_ord`). So t's rows reach the sink in
//! mark order — the truncate of a copy taken again (F, 0) < copy rows (F,
//! …) < held changes (> F) — and the latest row per key is the source's.
//! Sending t's changes at once would break that order: a batch of copy rows
//! committed after a streamed change of t sorts below the table's mark and
//! is taken for a replay (dropped), and an update's unchanged TOAST value
//! could not be restored from a row not copied yet. Held events are bounded
//! ([`PostgresConfig::copy_hold_bytes`]): past that, the stream waits for
//! the copy to end, as before copies interleaved — between transactions,
//! or inside the transaction that crossed the bound (the copy's blocks then
//! come between two of its rows, and the transaction goes on after a
//! `Begin` of its own again, like a transaction cut by a checkpoint).
//!
//! The main slot is acknowledged as the stream's transactions become
//! durable, past changes of t that are still held. That is safe because a
//! table whose copy is not recorded complete is copied again after a crash,
//! from a new snapshot whose consistent point CP2 is past everything
//! acknowledged, and nothing after the copy's start is acknowledged while
//! the lake still records t as complete from an earlier copy: the
//! `TableSnapshot` events of every table of the copy come before any stream
//! event, and for a table the lake holds the coordinator then stages a
//! truncate row, which keeps every acknowledgement waiting until a commit
//! has recorded the table as being copied (a table the lake lacks has no
//! record, which counts as not copied).
//! What the lake holds of t from the interrupted copy — copy rows at F <
//! F2, released changes of transactions committed before CP2, whose commit
//! LSN (their `_tw_seq`) ends before CP2 and so is below F2 = CP2-1 — sorts
//! below the new copy's truncate (F2, 0): superseded, never duplicated.
//! Once `TableSnapshotDone` is recorded the held changes are committed with
//! it or before. Commits of a copy while streaming may land inside a chunk:
//! such a copy is never resumed, only taken again.
//!
//! Large transactions (protocol 2, PG14+): once a transaction outgrows the
//! server's `logical_decoding_work_mem`, the server streams it in chunks
//! before it commits. Each chunk is appended to a spill file of that
//! transaction under `spill_dir` (nothing of it is decoded yet: a Relation
//! inside it describes the table as that transaction sees it); a Stream Abort
//! drops the file or marks a subtransaction as rolled back; a Stream Commit
//! replays the file, in order and skipping rolled-back subtransactions, as one
//! ordinary transaction. Memory stays bounded by the batch size whatever the
//! transaction's size, and the server never spills to its own disk. Spill
//! files are scratch: after a restart the server resends every transaction
//! that had not committed downstream, so they are deleted at start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidewater_core::state::{PlannedChunks, SnapshotPlan};
use tidewater_core::{
    ChangeEvent, Column, CommitInfo, Datum, Op, RowChange, TableFilter, TableId, TableSchema,
};
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::catalog::{
    list_tables, quote_ident, quote_table, table_columns, TypeNames, HAS_REPLICA_IDENTITY,
};
use crate::chunks::{ChunkJob, CopyItem};
use crate::copy_arrow::CopyFormat;
use crate::error::{query_error, PostgresError};
use crate::pgoutput::{self, Cell, Message, OldTuple, Relation};
use crate::replication::{
    status_interval, ConnectParams, Host, Lsn, LsnAcknowledger, ReplicationConnection,
    ReplicationStream, WalMessage,
};
use crate::types::column_type_dims;
use crate::value;

/// Session settings that make the server's text output what [`value`] parses.
const SESSION_SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
];

/// Microseconds between 1970-01-01 and 2000-01-01, the Postgres epoch.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The `wal_sender_timeout` assumed when the server's cannot be read (its
/// default): status updates are timed from it ([`status_interval`]).
const DEFAULT_WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long shutdown waits for the last acknowledgement to go out.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// The prefix of the logical messages tidewater emits as heartbeats.
pub const HEARTBEAT_PREFIX: &str = "tidewater_heartbeat";

/// How often what the server retains for the slot is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Buffer of each spill file, writing and replaying.
const SPILL_BUFFER: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: tidewater_endpoint::url::SecretUrl,
    pub filter: TableFilter,
    pub slot: String,
    pub publication: String,
    pub application_name: String,
    /// Where in-progress transactions streamed by the server are spilled.
    pub spill_dir: PathBuf,
    /// After this long without WAL data from the server, emit a logical
    /// message so the slot has something to confirm; `None` disables.
    pub heartbeat: Option<Duration>,
    /// Ask pgoutput for binary values when every captured column's type has
    /// a binary decoder ([`crate::binary`]).
    pub binary: bool,
    /// How often the catalog is read for new tables matching `filter` while
    /// streaming; `None` disables.
    pub discovery: Option<Duration>,
    /// Copy a table again after a change that gives its existing rows other
    /// values than the log holds (a renamed column, a column added with a
    /// default).
    pub recopy_on_schema_change: bool,
    /// Connections reading the chunks of the initial snapshot in parallel.
    pub snapshot_workers: usize,
    /// Heap bytes per snapshot chunk (a table smaller than this is one chunk).
    pub snapshot_chunk_bytes: u64,
    /// Estimated heap bytes of the stream's changes of tables being copied
    /// while streaming, held until their copy ends; past it the stream
    /// waits for the copy.
    pub copy_hold_bytes: usize,
}

/// How the initial snapshot split each table, recorded next to the lake so
/// that a resumed snapshot reads the same chunks (see [`crate::chunks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTable {
    pub table: TableId,
    pub chunk_pages: u64,
    pub chunks: u32,
}

/// Where an interrupted initial snapshot stood: the chunk plan, and for each
/// table how many of its chunks (in plan order) the lake holds.
#[derive(Debug, Clone, Default)]
pub struct SnapshotResume {
    pub consistent_point: u64,
    pub plan: Vec<PlannedTable>,
    pub chunks_done: HashMap<TableId, u32>,
}

/// Set when a column binary mode cannot read appeared while streaming: from
/// then on this process streams in text mode (the retry reconnects).
static BINARY_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl PostgresConfig {
    /// Slot and publication names derived from a pipeline name.
    pub fn names_for(pipeline: &str) -> (String, String) {
        let clean: String = pipeline
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        (format!("tidewater_{clean}"), format!("tidewater_{clean}"))
    }
}

/// State of the replication slot as the server reports it.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// False when the slot belongs to another database or output plugin.
    pub ours: bool,
    pub owner: String,
    pub confirmed_flush: Option<Lsn>,
    pub active_pid: Option<i32>,
    pub wal_status: Option<String>,
    pub retained_bytes: Option<i64>,
}

struct SnapshotCopy {
    /// Holds the slot whose exported snapshot the copy reads: the pipeline's
    /// own for the initial snapshot, a temporary one for copies while
    /// streaming (dropped once the copy's workers imported the snapshot).
    repl: ReplicationConnection,
    commit: CommitInfo,
    begun: bool,
    /// A copy of tables that join while the stream runs (see
    /// [`PostgresSource::start_table_copies`]), not the initial snapshot.
    while_streaming: Option<TableCopies>,
    /// The chunks, read by parallel workers.
    chunks: Option<crate::chunks::ParallelCopy>,
    /// Events to send right after `Begin` (the schemas of the tables).
    prologue: Vec<ChangeEvent>,
    /// Server estimates of table rows, sent when a table's first chunk starts.
    estimates: HashMap<TableId, u64>,
}

impl SnapshotCopy {
    /// The initial snapshot at the slot's consistent point: its rows sort
    /// just before the first streamed transaction.
    fn initial(repl: ReplicationConnection, consistent_point: Lsn) -> Self {
        SnapshotCopy {
            repl,
            commit: CommitInfo {
                seq: consistent_point.0.saturating_sub(1),
                position: consistent_point.to_string(),
                ack: consistent_point.0,
                commit_ts_us: now_us(),
                txid: None,
            },
            begun: false,
            while_streaming: None,
            chunks: None,
            prologue: Vec::new(),
            estimates: HashMap::new(),
        }
    }
}

/// A copy while streaming, interleaved with the stream (see
/// [`PostgresSource::interleave_step`]).
struct TableCopies {
    /// Chunks of each table's copy, to tell its last one.
    chunks: HashMap<TableId, u32>,
    /// Rows copied of each table so far.
    rows: HashMap<TableId, u64>,
    /// The copy's `Begin` is the coordinator's open transaction: no stream
    /// event came since it was sent.
    in_copy_txn: bool,
    /// The stream's turn began then: whole transactions go while the server
    /// has them ready, for at most [`STREAM_TURN`].
    stream_turn: Option<tokio::time::Instant>,
}

/// The stream events of a table being copied while streaming, held until
/// its copy ends (see [`PostgresSource::start_table_copies`]).
struct Hold {
    /// The copy's `_tw_seq`: rows of transactions at or below it are in
    /// the copy.
    floor: u64,
    events: Vec<ChangeEvent>,
    /// The transaction whose `Begin` the held events carry last.
    begun: Option<u64>,
    /// Estimated heap bytes of the held rows.
    bytes: usize,
}

/// The longest turn of the stream between two blocks of a copy while
/// streaming: ended at the first transaction boundary after it. Short
/// enough that the copy keeps going at a fair pace under a stream that
/// never pauses (a block of 8192 rows per turn at least), long enough that a
/// burst of small transactions goes in one turn.
const STREAM_TURN: Duration = Duration::from_millis(50);

struct RelationState {
    included: bool,
    schema: Option<Arc<TableSchema>>,
    /// Base type oid of each column, for binary values.
    oids: Arc<[u32]>,
    /// The message of an excluded relation, read again once its table joins.
    relation: Option<Relation>,
}

/// A streamed, not yet committed transaction on disk: records of
/// `[u32 length][u32 subtransaction xid][pgoutput message]`.
struct Spill {
    path: PathBuf,
    writer: BufWriter<File>,
    aborted: HashSet<u32>,
    messages: u64,
    bytes: u64,
}

/// A committed spilled transaction being turned into events.
struct Replay {
    path: PathBuf,
    file: File,
    /// Read ahead in large blocks; each message is a zero-copy slice of it.
    buf: bytes::BytesMut,
    aborted: HashSet<u32>,
    commit: CommitInfo,
}

pub struct PostgresSource {
    config: PostgresConfig,
    client: Client,
    /// The url without its TLS settings, for more tokio-postgres connections.
    pg_config: tokio_postgres::Config,
    params: ConnectParams,
    server_version: i32,
    snapshot: Option<SnapshotCopy>,
    repl: Option<ReplicationStream>,
    /// The top-level xid of the stream block being received.
    stream_block: Option<u32>,
    spills: HashMap<u32, Spill>,
    replay: Option<Replay>,
    /// When the server last sent WAL data (or a heartbeat was emitted).
    last_activity: tokio::time::Instant,
    heartbeat: Option<Duration>,
    /// This session asked for binary values.
    binary: bool,
    relations: HashMap<u32, RelationState>,
    /// The tables this run replicates: resolved from the config at start,
    /// joined by those copied while streaming.
    tables: Vec<TableId>,
    /// Tables to copy while streaming, at the next transaction boundary.
    copy_queue: Vec<TableId>,
    /// Tables an operator asked to copy again (see `Source::copy_requests`).
    requests: tidewater_core::CopyRequestQueue,
    /// Tables being copied while streaming: their stream events wait here
    /// until their copy ends.
    holds: HashMap<TableId, Hold>,
    /// A transaction of the stream is open (between Begin and Commit).
    in_transaction: bool,
    /// The `Begin` of the stream transaction being decoded (live or
    /// replayed from a spill file).
    txn: Option<CommitInfo>,
    /// A copy's events went out inside that transaction: its `Begin` goes
    /// out again before the rest of it.
    rebegin: bool,
    /// When the catalog was last read for new tables.
    discovered_at: tokio::time::Instant,
    /// When the slot's retained WAL was last sampled.
    sampled_at: tokio::time::Instant,
    /// Tables found unfit to add, with why: warned about once.
    refused: HashMap<TableId, String>,
    /// Tables stopped by a definite error, in this run or an earlier one.
    stopped: HashSet<TableId>,
    /// Column numbers (`attnum`) by name of each captured table at its last
    /// schema: a new name with the number of a vanished column is a rename.
    attnums: HashMap<TableId, HashMap<String, i16>>,
    schemas: HashMap<TableId, Arc<TableSchema>>,
    type_names: TypeNames,
    pending: VecDeque<ChangeEvent>,
    ord: u64,
    /// What the coordinator acknowledged; every stream reports it.
    acked: LsnAcknowledger,
    /// A copy for `tidewater verify` ([`PostgresSource::start_copy_only`]):
    /// its end is the end of the run, no stream follows.
    copy_only: bool,
}

impl PostgresSource {
    /// Opens the control connection. Nothing is changed on the server.
    pub async fn connect(config: PostgresConfig) -> Result<Self, PostgresError> {
        let (mut pg_config, tls_options) = crate::tls::parse_url(config.url.expose())
            .map_err(|source| PostgresError::TlsConfig { source })?;
        // Every session of the pipeline carries its name, so a stop can
        // cancel what they wait for ([`cancel_sessions`]).
        pg_config.application_name(&config.application_name);
        let tls = crate::tls::TlsSetup::new(&tls_options)
            .map_err(|source| PostgresError::TlsConfig { source })?;
        let target = describe_target(&pg_config);
        let (client, connection) = open_client(&pg_config, &tls, &target).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, "control connection closed");
            }
        });
        let settings: String = SESSION_SETTINGS
            .iter()
            .map(|(k, v)| format!("SET {k} = '{v}';"))
            .collect();
        client
            .batch_execute(&settings)
            .await
            .map_err(query_error("setting session parameters"))?;
        let server_version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(query_error("reading the server version"))?
            .get(0);
        let params = connect_params(&pg_config, &config, tls)?;
        let heartbeat = config.heartbeat;
        Ok(Self {
            config,
            client,
            pg_config,
            params,
            server_version,
            snapshot: None,
            repl: None,
            stream_block: None,
            spills: HashMap::new(),
            replay: None,
            last_activity: tokio::time::Instant::now(),
            heartbeat,
            binary: false,
            relations: HashMap::new(),
            tables: Vec::new(),
            copy_queue: Vec::new(),
            requests: Default::default(),
            holds: HashMap::new(),
            in_transaction: false,
            txn: None,
            rebegin: false,
            discovered_at: tokio::time::Instant::now(),
            sampled_at: tokio::time::Instant::now(),
            refused: HashMap::new(),
            stopped: HashSet::new(),
            attnums: HashMap::new(),
            schemas: HashMap::new(),
            type_names: TypeNames::default(),
            pending: VecDeque::new(),
            ord: 0,
            acked: LsnAcknowledger::default(),
            copy_only: false,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Cancels every statement the pipeline's sessions (control, snapshot
    /// workers, the walsender creating the slot) are running, from a session
    /// of its own: a stop while they wait for a lock must not wait for the
    /// lock's holder, and a cancelled `CREATE_REPLICATION_SLOT` or `CREATE
    /// PUBLICATION` leaves nothing behind. Closing the connections alone
    /// would not do: the server notices a closed socket only after the
    /// statement, which would then still create the slot. Returns how many
    /// sessions were asked.
    pub async fn cancel_sessions(config: &PostgresConfig) -> Result<i64, PostgresError> {
        let (mut pg_config, tls_options) = crate::tls::parse_url(config.url.expose())
            .map_err(|source| PostgresError::TlsConfig { source })?;
        pg_config.application_name(format!("{} stop", config.application_name));
        let tls = crate::tls::TlsSetup::new(&tls_options)
            .map_err(|source| PostgresError::TlsConfig { source })?;
        let target = describe_target(&pg_config);
        let (client, connection) = open_client(&pg_config, &tls, &target).await?;
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid() \
                   AND datname = current_database()",
                &[&config.application_name],
            )
            .await
            .map_err(query_error("cancelling the pipeline's statements"))?;
        Ok(row.get(0))
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// Opens a replication connection and asks for the system id: `check`'s
    /// proof that the walsender takes this role over this url (REPLICATION,
    /// pg_hba.conf, TLS) without creating anything on the server.
    pub async fn probe_replication(&self) -> Result<(), PostgresError> {
        let mut repl = ReplicationConnection::connect(&self.params).await?;
        repl.query("IDENTIFY_SYSTEM").await?;
        Ok(())
    }

    /// Tables the config selects, as they exist now.
    pub async fn tables(&self) -> Result<Vec<TableId>, PostgresError> {
        list_tables(&self.client, &self.config.filter)
            .await
            .map_err(query_error("listing tables"))
    }

    pub async fn slot_state(&self) -> Result<Option<SlotState>, PostgresError> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active_pid, wal_status, \
                   (pg_current_wal_lsn() - restart_lsn)::int8, \
                   slot_type = 'logical' AND plugin = 'pgoutput' AND database = current_database(), \
                   slot_type || ' slot of database ' || coalesce(database, '-') || \
                     ' with plugin ' || coalesce(plugin, '-') \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(query_error("reading the replication slot"))?;
        Ok(row.map(|row| SlotState {
            ours: row.get(4),
            owner: row.get(5),
            confirmed_flush: row
                .get::<_, Option<String>>(0)
                .and_then(|s| Lsn::parse(&s).ok()),
            active_pid: row.get(1),
            wal_status: row.get(2),
            retained_bytes: row.get(3),
        }))
    }

    /// Drops the pipeline's slot, if it exists. A slot stays active for a
    /// moment after the session that used it closed (the server ends its
    /// walsender asynchronously): "in use" is waited out for a few seconds,
    /// so `snapshot --drop-slot` right after its own stream closed works.
    pub async fn drop_slot(&self) -> Result<(), PostgresError> {
        const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
        let started = std::time::Instant::now();
        loop {
            let result = self
                .client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1",
                    &[&self.config.slot],
                )
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(err)
                    if err.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                        && started.elapsed() < IN_USE_WAIT =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(err) => return Err(query_error("dropping the replication slot")(err)),
            }
        }
    }

    /// Creates the publication over `tables` when it is missing. When it exists
    /// but lacks some of them: before a snapshot that is an error (the table
    /// would be copied and then never updated); while streaming, a warning.
    async fn ensure_publication(
        &self,
        tables: &[TableId],
        strict: bool,
    ) -> Result<(), PostgresError> {
        let exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.config.publication],
            )
            .await
            .map_err(query_error("reading publications"))?
            .is_some();
        if exists {
            let rows = self
                .client
                .query(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
                    &[&self.config.publication],
                )
                .await
                .map_err(query_error("reading the publication's tables"))?;
            let published: Vec<TableId> = rows
                .iter()
                .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| !published.contains(t))
                .map(|t| t.to_string())
                .collect();
            if !missing.is_empty() && strict {
                return Err(PostgresError::PublicationIncomplete {
                    publication: self.config.publication.clone(),
                    tables: missing,
                });
            }
            if !missing.is_empty() {
                warn!(
                    publication = %self.config.publication,
                    tables = %missing.join(", "),
                    "tables match the config but are not in the publication; they are not replicated"
                );
            }
            return Ok(());
        }
        let list: Vec<String> = tables.iter().map(quote_table).collect();
        // Partitioned tables publish their changes under the root's name, the
        // name the snapshot copied them under.
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            quote_ident(&self.config.publication),
            list.join(", ")
        );
        self.client
            .batch_execute(&sql)
            .await
            .map_err(query_error(format!(
                "creating publication {}",
                self.config.publication
            )))?;
        info!(publication = %self.config.publication, tables = tables.len(), "created publication");
        Ok(())
    }

    /// Creates the slot with an exported snapshot and, when `copy`, queues a
    /// consistent copy of `tables`; `next_event` then yields the snapshot and
    /// continues with the stream of `tables`. The slot must not exist.
    pub async fn start_snapshot(
        &mut self,
        tables: Vec<TableId>,
        copy: bool,
    ) -> Result<SnapshotResume, PostgresError> {
        self.ensure_publication(&tables, true).await?;
        self.tables = tables.clone();
        self.clear_spill_dir()?;
        let mut repl = ReplicationConnection::connect(&self.params).await?;
        let rows = repl
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(&self.config.slot)
            ))
            .await?;
        let (consistent_point, snapshot_name) = exported_snapshot(&rows)?;
        info!(slot = %self.config.slot, consistent_point = %consistent_point, "created replication slot");
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot_name.replace('\'', "''")
            ))
            .await
            .map_err(query_error("opening the snapshot transaction"))?;
        self.snapshot = Some(SnapshotCopy::initial(repl, consistent_point));
        let plan = if copy {
            self.start_chunked_copy(&tables, &snapshot_name, None)
                .await?
        } else {
            Vec::new()
        };
        Ok(SnapshotResume {
            consistent_point: consistent_point.0,
            plan,
            chunks_done: HashMap::new(),
        })
    }

    /// A consistent copy of `tables` and nothing else, for `tidewater
    /// verify`: a temporary slot (gone with its connection, so a killed
    /// verify leaves nothing on the server) exports the snapshot; the
    /// pipeline's slot and publication are not touched. `next_event` yields
    /// the copy as the initial snapshot's, then `Commit` and `SnapshotDone`
    /// at the copy's point, and no stream after. Returns that point's
    /// commit: the copy holds every transaction at or below its `seq`.
    pub async fn start_copy_only(
        &mut self,
        tables: Vec<TableId>,
    ) -> Result<CommitInfo, PostgresError> {
        self.tables = tables.clone();
        self.copy_only = true;
        let slot = verify_slot_name(&self.config.slot);
        let mut repl = ReplicationConnection::connect(&self.params).await?;
        let rows = repl
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(&slot)
            ))
            .await?;
        let (consistent_point, snapshot_name) = exported_snapshot(&rows)?;
        debug!(slot = %slot, consistent_point = %consistent_point, "verify copy: temporary slot created");
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot_name.replace('\'', "''")
            ))
            .await
            .map_err(query_error("opening the snapshot transaction"))?;
        let phase = SnapshotCopy::initial(repl, consistent_point);
        let commit = phase.commit.clone();
        self.snapshot = Some(phase);
        self.start_chunked_copy(&tables, &snapshot_name, None)
            .await?;
        Ok(commit)
    }

    /// Resumes an interrupted initial snapshot: the slot (created by the
    /// earlier run, never acknowledged) still stands at the snapshot's
    /// consistent point, so every change since is still in its stream. The
    /// chunks the lake lacks are read in a new snapshot; rows that changed
    /// after the consistent point may be read in their newer state, and the
    /// stream, which starts at that point, then replays their changes on top
    /// — the current state of every row converges to the source's, as in a
    /// DBLog-style watermark copy.
    pub async fn resume_snapshot(
        &mut self,
        tables: Vec<TableId>,
        resume: SnapshotResume,
    ) -> Result<Vec<PlannedTable>, PostgresError> {
        self.ensure_publication(&tables, true).await?;
        self.tables = tables.clone();
        self.clear_spill_dir()?;
        let repl = ReplicationConnection::connect(&self.params).await?;
        let snapshot_name: String = {
            self.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(query_error("opening the snapshot transaction"))?;
            self.client
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(query_error("exporting the snapshot for copy workers"))?
                .get(0)
        };
        let consistent_point = Lsn(resume.consistent_point);
        info!(
            slot = %self.config.slot,
            consistent_point = %consistent_point,
            chunks_in_lake = resume.chunks_done.values().sum::<u32>(),
            "resuming the interrupted snapshot after its committed chunks"
        );
        self.snapshot = Some(SnapshotCopy::initial(repl, consistent_point));
        self.start_chunked_copy(&tables, &snapshot_name, Some(&resume))
            .await
    }

    /// Plans the chunks of `tables` (or takes the plan being resumed), and
    /// starts the workers on those the lake lacks.
    async fn start_chunked_copy(
        &mut self,
        tables: &[TableId],
        snapshot_name: &str,
        resume: Option<&SnapshotResume>,
    ) -> Result<Vec<PlannedTable>, PostgresError> {
        let planned = self.plan_copy(tables, resume).await?;
        let chunks = self.start_workers(snapshot_name, planned.jobs).await?;
        let phase = self.snapshot.as_mut().expect("set by the caller");
        phase.chunks = Some(chunks);
        phase.prologue = planned
            .schemas
            .into_iter()
            .map(ChangeEvent::Schema)
            .collect();
        phase.estimates = planned.estimates;
        Ok(planned.plan)
    }

    /// The copy workers, each in the exported snapshot `snapshot_name`,
    /// reading `jobs`.
    async fn start_workers(
        &self,
        snapshot_name: &str,
        jobs: Vec<ChunkJob>,
    ) -> Result<crate::chunks::ParallelCopy, PostgresError> {
        let session: String = SESSION_SETTINGS
            .iter()
            .map(|(k, v)| format!("SET {k} = '{v}';"))
            .collect();
        info!(
            chunks = jobs.len(),
            workers = self.config.snapshot_workers,
            "snapshot copy planned"
        );
        crate::chunks::ParallelCopy::start(
            &self.pg_config,
            &self.params.tls,
            &session,
            snapshot_name,
            self.config.snapshot_workers,
            jobs,
        )
        .await
    }

    /// The chunks of a copy of `tables`, read from the catalog by the control
    /// connection (inside the copy's snapshot), or the plan being resumed.
    async fn plan_copy(
        &mut self,
        tables: &[TableId],
        resume: Option<&SnapshotResume>,
    ) -> Result<CopyPlan, PostgresError> {
        let chunk_pages = (self.config.snapshot_chunk_bytes / 8192).max(1);
        let mut planned_copy = CopyPlan::default();
        for table in tables {
            let schema = self.copy_schema(table).await?;
            planned_copy.schemas.push(schema.clone());
            if schema.columns.is_empty() {
                continue;
            }
            let facts = self.copy_facts(table).await?;
            planned_copy.estimates.insert(table.clone(), facts.estimate);
            let planned = match resume.and_then(|r| r.plan.iter().find(|p| &p.table == table)) {
                Some(planned) => planned.clone(),
                None => PlannedTable {
                    table: table.clone(),
                    chunk_pages,
                    chunks: if facts.partitioned || self.server_version < 140_000 {
                        1
                    } else {
                        crate::chunks::chunk_count(facts.pages, chunk_pages)
                    },
                },
            };
            let done = resume
                .and_then(|r| r.chunks_done.get(table).copied())
                .unwrap_or(0);
            let format = if facts.oids.iter().all(|&oid| crate::binary::supported(oid)) {
                CopyFormat::Binary
            } else {
                CopyFormat::Text
            };
            let select: Vec<String> = schema
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect();
            // Inheritance children are tables of their own: copy only the
            // parent's rows. A partitioned table's rows live in its partitions.
            let from = format!(
                "{}{}",
                if facts.partitioned { "" } else { "ONLY " },
                quote_table(table)
            );
            for (index, pages) in crate::chunks::page_ranges(planned.chunk_pages, planned.chunks)
                .into_iter()
                .enumerate()
                .skip(done as usize)
            {
                planned_copy.jobs.push(ChunkJob {
                    schema: schema.clone(),
                    oids: facts.oids.clone(),
                    format,
                    from: from.clone(),
                    select: select.join(", "),
                    index: index as u32,
                    pages,
                });
            }
            planned_copy.plan.push(planned);
        }
        Ok(planned_copy)
    }

    /// Reads `table`'s columns for a copy and issues its schema version.
    async fn copy_schema(&mut self, table: &TableId) -> Result<Arc<TableSchema>, PostgresError> {
        let columns = table_columns(&self.client, table)
            .await
            .map_err(query_error(format!("reading the columns of {table}")))?;
        let attnums: HashMap<String, i16> = self
            .client
            .query(
                "SELECT attname::text, attnum FROM pg_attribute \
                 WHERE attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                   AND attnum > 0 AND NOT attisdropped",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(query_error(format!("reading the columns of {table}")))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        self.attnums.insert(table.clone(), attnums);
        let version = self.schemas.get(table).map_or(1, |known| {
            if known.columns == columns {
                known.version
            } else {
                known.version + 1
            }
        });
        let schema = Arc::new(TableSchema {
            table: table.clone(),
            version,
            columns,
        });
        self.schemas.insert(table.clone(), schema.clone());
        Ok(schema)
    }

    /// What planning a copy of `table` needs from the catalog.
    async fn copy_facts(&self, table: &TableId) -> Result<CopyFacts, PostgresError> {
        let row = self
            .client
            .query_one(
                "SELECT c.relkind = 'p', \
                   pg_relation_size(c.oid) / current_setting('block_size')::int8, \
                   (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)::int8 FROM pg_class p \
                     WHERE p.oid = c.oid \
                        OR p.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf)) \
                 FROM pg_class c \
                 WHERE c.oid = (quote_ident($1) || '.' || quote_ident($2))::regclass",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(query_error(format!("reading the size of {table}")))?;
        let oids: Vec<u32> = self
            .client
            .query(
                "SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 ORDER BY a.attnum",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(query_error(format!("reading the column types of {table}")))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(CopyFacts {
            partitioned: row.get(0),
            pages: row.get::<_, i64>(1).max(0) as u64,
            estimate: row.get::<_, i64>(2).max(0) as u64,
            oids: oids.into(),
        })
    }

    /// Starts streaming `tables` from the slot's confirmed position; the
    /// tables of `copies` (not in the lake, or with an interrupted copy)
    /// are copied first and join the stream after their copy.
    pub async fn start_streaming(
        &mut self,
        tables: &[TableId],
        copies: &[TableId],
    ) -> Result<(), PostgresError> {
        self.ensure_publication(tables, false).await?;
        self.tables = tables.to_vec();
        self.copy_queue = copies.to_vec();
        self.clear_spill_dir()?;
        let repl = ReplicationConnection::connect(&self.params).await?;
        self.repl = Some(self.start_replication(repl).await?);
        info!(slot = %self.config.slot, "streaming from replication slot");
        Ok(())
    }

    /// Reports the WAL the slot retains (for the metrics); a failed query
    /// only skips the sample.
    async fn sample_slot(&mut self) {
        self.sampled_at = tokio::time::Instant::now();
        let row = self
            .client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await;
        match row {
            Ok(Some(row)) => {
                let retained: Option<i64> = row.get(0);
                self.pending.push_back(ChangeEvent::SourceStatus {
                    retained_bytes: retained.map(|b| b.max(0) as u64),
                    files_behind: None,
                });
            }
            Ok(None) => {}
            Err(error) => debug!(error = %error, "sampling the slot's retained WAL"),
        }
    }

    /// Tables an operator asked to copy again join the copy queue: they are
    /// copied beside the stream like a table that joins (a table already in
    /// the lake starts over with a truncate; a stopped one streams again).
    fn take_copy_requests(&mut self) {
        for table in tidewater_core::take_copy_requests(&self.requests) {
            if !self.copy_queue.contains(&table) {
                info!(table = %table, "copying the table again, as asked");
                self.stopped.remove(&table);
                self.copy_queue.push(table);
            }
        }
    }

    fn discovery_due(&self) -> bool {
        self.config
            .discovery
            .is_some_and(|every| self.discovered_at.elapsed() >= every)
    }

    /// Reads the catalog for tables that match the config and are not
    /// streamed yet (created after the start, or renamed into the
    /// patterns); each is queued for a copy.
    async fn discover_tables(&mut self) -> Result<(), PostgresError> {
        self.discovered_at = tokio::time::Instant::now();
        for table in self.tables().await? {
            if !self.tables.contains(&table)
                && !self.copy_queue.contains(&table)
                && !self.stopped.contains(&table)
            {
                self.copy_queue.push(table);
            }
        }
        Ok(())
    }

    /// Starts copying the queued tables in the exported snapshot of a
    /// temporary slot, beside the stream (see "Copies while streaming" in
    /// the module docs).
    ///
    /// ```text
    ///  ALTER PUBLICATION p ADD TABLE t      commit A: t is published for every
    ///                                       transaction that begins after A
    ///  CREATE_REPLICATION_SLOT tmp TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT
    ///      (waits for the transactions running at its start) ──▶ CP > A, snapshot S
    ///  control: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S; plan the chunks; COMMIT
    ///  workers: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S  (then COPY chunk after chunk)
    ///  DROP_REPLICATION_SLOT tmp           the workers hold S from here on
    /// ```
    ///
    /// A transaction that began before A is not published for t even if it
    /// commits later, but it ended before CP, so S holds its changes; every
    /// transaction committing after CP began after A and reaches the stream.
    /// Nothing here depends on the main slot's position, so an interrupted
    /// copy is simply taken again.
    async fn start_table_copies(&mut self) -> Result<(), PostgresError> {
        let mut tables = Vec::new();
        for table in std::mem::take(&mut self.copy_queue) {
            let verdict = match self.copy_refusal(&table).await? {
                None => self.add_to_publication(&table).await?,
                refusal => refusal,
            };
            match verdict {
                None => {
                    self.refused.remove(&table);
                    tables.push(table);
                }
                Some(reason) => {
                    if self.refused.get(&table) != Some(&reason) {
                        warn!(table = %table, reason = %reason, "table matches source.tables but is not replicated yet");
                        self.refused.insert(table, reason);
                    }
                }
            }
        }
        if tables.is_empty() {
            return Ok(());
        }
        let temporary_slot = copy_slot_name(&self.config.slot);
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        info!(tables = %names.join(", "), slot = %temporary_slot, "copying tables that joined while streaming (waits for running transactions)");
        let mut repl = ReplicationConnection::connect(&self.params).await?;
        let rows = repl
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(&temporary_slot)
            ))
            .await?;
        let (consistent_point, snapshot_name) = exported_snapshot(&rows)?;
        let commit = CommitInfo {
            seq: consistent_point.0.saturating_sub(1),
            position: consistent_point.to_string(),
            ack: 0,
            commit_ts_us: now_us(),
            txid: None,
        };
        // Captured from now on: a Relation message the stream sent while a
        // table was not is read again (its schema goes out before the
        // copy's), and every stream event of the tables is held from here
        // until their copy ends.
        for table in &tables {
            if !self.tables.contains(table) {
                self.tables.push(table.clone());
            }
            let waiting: Vec<Relation> = self
                .relations
                .values()
                .filter_map(|state| state.relation.as_ref())
                .filter(|r| r.namespace == table.schema && r.name == table.table)
                .cloned()
                .collect();
            for relation in waiting {
                self.on_relation(relation).await?;
            }
        }
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot_name.replace('\'', "''")
            ))
            .await
            .map_err(query_error(
                "opening the snapshot transaction of a table copy",
            ))?;
        let planned = self.plan_copy(&tables, None).await;
        // The control connection serves the stream meanwhile: out of the
        // snapshot at once.
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(query_error("closing the snapshot transaction"))?;
        let planned = planned?;
        let chunks = self.start_workers(&snapshot_name, planned.jobs).await?;
        // The workers hold the snapshot now: the temporary slot, which
        // would keep WAL and catalog rows for as long as the copy runs, goes.
        if let Err(error) = repl
            .query(&format!(
                "DROP_REPLICATION_SLOT {}",
                quote_ident(&temporary_slot)
            ))
            .await
        {
            debug!(error = %error, "dropping the temporary slot of a table copy");
        }
        // Every table's copy begins now, for the coordinator too (each is
        // recorded as being copied, and what the lake held of it is
        // superseded, before anything after this point is acknowledged).
        let mut chunk_counts = HashMap::new();
        for planned_table in &planned.plan {
            chunk_counts.insert(planned_table.table.clone(), planned_table.chunks);
        }
        for schema in planned.schemas {
            let table = schema.table.clone();
            self.pending.push_back(ChangeEvent::Schema(schema));
            self.pending.push_back(ChangeEvent::Begin(commit.clone()));
            self.pending.push_back(ChangeEvent::TableSnapshot {
                table: table.clone(),
            });
            if chunk_counts.contains_key(&table) {
                self.holds.insert(
                    table,
                    Hold {
                        floor: commit.seq,
                        events: Vec::new(),
                        begun: None,
                        bytes: 0,
                    },
                );
            } else {
                // No column, no chunk: nothing more to copy.
                self.pending.push_back(ChangeEvent::TableSnapshotDone {
                    table,
                    seq: commit.seq,
                });
            }
        }
        self.snapshot = Some(SnapshotCopy {
            repl,
            commit,
            begun: true,
            while_streaming: Some(TableCopies {
                chunks: chunk_counts,
                rows: HashMap::new(),
                in_copy_txn: false,
                stream_turn: None,
            }),
            chunks: Some(chunks),
            prologue: Vec::new(),
            estimates: planned.estimates,
        });
        Ok(())
    }

    /// Why `table` cannot join the stream now, if it cannot: gone, not
    /// readable, or without a replica identity (publishing it would make
    /// Postgres reject the application's UPDATEs and DELETEs on it).
    async fn copy_refusal(&self, table: &TableId) -> Result<Option<String>, PostgresError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT has_table_privilege(c.oid, 'SELECT'), {HAS_REPLICA_IDENTITY} \
                       OR EXISTS (SELECT 1 FROM pg_publication_tables p \
                                  WHERE p.pubname = $3 AND p.schemaname = $1 AND p.tablename = $2) \
                     FROM pg_class c \
                     WHERE c.oid = to_regclass(quote_ident($1) || '.' || quote_ident($2))"
                ),
                &[&table.schema, &table.table, &self.config.publication],
            )
            .await
            .map_err(query_error(format!("checking {table} before copying it")))?;
        let Some(row) = row else {
            return Ok(Some("it no longer exists".into()));
        };
        if !row.get::<_, bool>(0) {
            return Ok(Some(format!(
                "the role cannot SELECT from it; fix: GRANT SELECT ON {} TO <role>",
                quote_table(table)
            )));
        }
        if !row.get::<_, bool>(1) {
            return Ok(Some(format!(
                "it has no replica identity (no primary key): once published, Postgres would \
                 reject every UPDATE and DELETE on it; fix: ALTER TABLE {} REPLICA IDENTITY FULL \
                 (or add a primary key, or list it in source.exclude)",
                quote_table(table)
            )));
        }
        Ok(None)
    }

    /// Adds `table` to the publication unless it is in it; a refusal (not
    /// the owner) is the reason it cannot join, not an error of the stream.
    async fn add_to_publication(&self, table: &TableId) -> Result<Option<String>, PostgresError> {
        let published = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&self.config.publication, &table.schema, &table.table],
            )
            .await
            .map_err(query_error("reading the publication's tables"))?
            .is_some();
        if published {
            return Ok(None);
        }
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(&self.config.publication),
            quote_table(table)
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => {
                info!(table = %table, publication = %self.config.publication, "added table to the publication");
                Ok(None)
            }
            Err(error) if error.as_db_error().is_some() => Ok(Some(format!(
                "it cannot be added to publication {}: {}; fix: {sql}; as the table's owner",
                self.config.publication,
                error.as_db_error().map_or("", |e| e.message())
            ))),
            Err(error) => Err(query_error(format!("adding {table} to the publication"))(
                error,
            )),
        }
    }

    /// pgoutput options: protocol 2 with streaming of large in-progress
    /// transactions where the server has it (PG14+), else protocol 1.
    fn plugin_options(&self) -> Vec<(&'static str, String)> {
        let mut options = vec![
            ("publication_names", quote_ident(&self.config.publication)),
            ("messages", "true".to_string()),
        ];
        if self.server_version >= 140_000 {
            options.insert(0, ("proto_version", "2".to_string()));
            options.push(("streaming", "on".to_string()));
            if self.binary {
                options.push(("binary", "true".to_string()));
            }
        } else {
            options.insert(0, ("proto_version", "1".to_string()));
        }
        options
    }

    async fn start_replication(
        &mut self,
        repl: ReplicationConnection,
    ) -> Result<ReplicationStream, PostgresError> {
        self.binary = self.binary_possible().await?;
        info!(
            mode = if self.binary { "binary" } else { "text" },
            "pgoutput value format"
        );
        let interval = status_interval(self.wal_sender_timeout().await);
        Ok(repl
            .start(
                &self.config.slot,
                Lsn::ZERO,
                &self.plugin_options(),
                interval,
                self.acked.clone(),
            )
            .await?)
    }

    /// The server's `wal_sender_timeout` (zero: off), which bounds how long
    /// the stream may go without a status update.
    async fn wal_sender_timeout(&self) -> Duration {
        let setting = self
            .client
            .query_one(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'",
                &[],
            )
            .await;
        match setting {
            Ok(row) => Duration::from_millis(row.get::<_, i64>(0).max(0) as u64),
            Err(error) => {
                debug!(error = %error, "wal_sender_timeout unknown, assuming its default");
                DEFAULT_WAL_SENDER_TIMEOUT
            }
        }
    }

    /// Binary values only when configured, the server has them (PG14+), and
    /// every column of every captured table has a type [`crate::binary`]
    /// reads; domains count as their base type.
    async fn binary_possible(&self) -> Result<bool, PostgresError> {
        use std::sync::atomic::Ordering;
        if !self.config.binary
            || self.server_version < 140_000
            || BINARY_REFUSED.load(Ordering::Relaxed)
        {
            return Ok(false);
        }
        for table in &self.tables {
            let rows = self
                .client
                .query(
                    "SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                       AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&table.schema, &table.table],
                )
                .await
                .map_err(query_error(format!("reading the column types of {table}")))?;
            if rows
                .iter()
                .any(|row| !crate::binary::supported(row.get::<_, u32>(0)))
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Spill files of an earlier run are void: the server resends those
    /// transactions.
    fn clear_spill_dir(&self) -> Result<(), PostgresError> {
        let dir = &self.config.spill_dir;
        let spill_error = |source| PostgresError::Spill {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(spill_error)?;
        let prefix = format!("{}-", self.config.slot);
        for entry in std::fs::read_dir(dir).map_err(spill_error)? {
            let path = entry.map_err(spill_error)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&prefix) && name.ends_with(".spill") {
                std::fs::remove_file(&path).map_err(|source| PostgresError::Spill {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The next change. Cancel-safe only between events of the stream phase.
    /// An event already decoded, if any: never waits.
    pub fn ready_event(&mut self) -> Option<ChangeEvent> {
        self.pending.pop_front()
    }

    pub async fn next_event(&mut self) -> Result<ChangeEvent, PostgresError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let interleaved = self
                .snapshot
                .as_ref()
                .is_some_and(|phase| phase.while_streaming.is_some());
            if self.snapshot.is_some() && !interleaved {
                self.snapshot_step().await?;
            } else if self.repl.is_some()
                && self.replay.is_none()
                && !self.in_transaction
                && self.stream_block.is_none()
            {
                if interleaved {
                    // Between transactions, a copy running: its blocks and
                    // the stream's transactions take turns.
                    self.interleave_step().await?;
                    continue;
                }
                // Between transactions: the place for tables to join.
                if self.discovery_due() {
                    self.discover_tables().await?;
                }
                if self.sampled_at.elapsed() >= SAMPLE_EVERY {
                    self.sample_slot().await;
                }
                self.take_copy_requests();
                if !self.copy_queue.is_empty() {
                    self.start_table_copies().await?;
                    continue;
                }
                self.stream_step().await?;
            } else if interleaved && self.stream_block.is_none() && self.held_over_budget() {
                // Inside a transaction that brought the held changes past
                // the budget: the copy goes on alone, the transaction after
                // it (or after the copy of the table whose changes it
                // holds), from a `Begin` of its own again.
                self.interleave_step().await?;
                self.rebegin = true;
            } else if self.rebegin {
                self.rebegin = false;
                if let Some(copies) = self
                    .snapshot
                    .as_mut()
                    .and_then(|phase| phase.while_streaming.as_mut())
                {
                    copies.in_copy_txn = false;
                }
                if let Some(txn) = &self.txn {
                    self.pending.push_back(ChangeEvent::Begin(txn.clone()));
                }
            } else if self.replay.is_some() {
                self.replay_step().await?;
            } else if self.repl.is_some() {
                self.stream_step().await?;
            } else {
                return Err(PostgresError::Misuse {
                    what: "next_event before start_snapshot or start_streaming",
                });
            }
        }
    }

    /// The stream events held for copies reached the budget
    /// ([`PostgresConfig::copy_hold_bytes`]).
    fn held_over_budget(&self) -> bool {
        self.holds.values().map(|h| h.bytes).sum::<usize>() >= self.config.copy_hold_bytes
    }

    /// The initial snapshot: its chunks, then the stream.
    async fn snapshot_step(&mut self) -> Result<(), PostgresError> {
        let phase = self.snapshot.as_mut().expect("checked by caller");
        if !phase.begun {
            phase.begun = true;
            self.pending
                .push_back(ChangeEvent::Begin(phase.commit.clone()));
            self.pending.extend(phase.prologue.drain(..));
            return Ok(());
        }
        let Some(chunks) = phase.chunks.as_mut() else {
            return self.finish_snapshot().await;
        };
        match chunks.next().await {
            None => {
                phase.chunks = None;
                return self.finish_snapshot().await;
            }
            Some(item) => match item? {
                CopyItem::Start { table, index } => {
                    if let Some(rows) = phase.estimates.remove(&table) {
                        info!(table = %table, estimated_rows = rows, "snapshot copy started");
                        self.pending.push_back(ChangeEvent::CopyEstimate {
                            table: table.clone(),
                            rows,
                        });
                    }
                    debug!(table = %table, chunk = index, "snapshot chunk started");
                    self.pending.push_back(ChangeEvent::SnapshotChunk {
                        table,
                        index,
                        done: false,
                    });
                }
                CopyItem::Block(block) => self.pending.push_back(ChangeEvent::Block(block)),
                CopyItem::Done { table, index, rows } => {
                    debug!(table = %table, chunk = index, rows, "snapshot chunk done");
                    self.pending.push_back(ChangeEvent::SnapshotChunk {
                        table,
                        index,
                        done: true,
                    });
                }
            },
        }
        Ok(())
    }

    /// One step of a copy while streaming, between stream transactions: the
    /// stream's turn goes on while the server has whole transactions ready
    /// (for at most [`STREAM_TURN`]); else the copy's next item, or — when
    /// the copy has none ready — the stream's next message.
    async fn interleave_step(&mut self) -> Result<(), PostgresError> {
        // Past the budget the stream waits for the copies to end, which
        // releases what they hold.
        let stream_may = !self.held_over_budget();
        let phase = self.snapshot.as_mut().expect("checked by caller");
        let copies = phase.while_streaming.as_mut().expect("checked by caller");
        let repl = self.repl.as_mut().expect("checked by caller");
        if let Some(since) = copies.stream_turn {
            if stream_may && since.elapsed() < STREAM_TURN {
                if let Some(received) = futures_util::FutureExt::now_or_never(repl.recv()) {
                    copies.in_copy_txn = false;
                    return self.on_received(received).await;
                }
            }
            copies.stream_turn = None;
        }
        let Some(chunks) = phase.chunks.as_mut() else {
            return self.finish_snapshot().await;
        };
        // Both are cancel-safe: the one not taken loses nothing.
        let next = tokio::select! {
            biased;
            item = chunks.next() => Ok(item),
            received = repl.recv(), if stream_may => Err(received),
        };
        let item = match next {
            Err(received) => {
                copies.in_copy_txn = false;
                copies.stream_turn = Some(tokio::time::Instant::now());
                return self.on_received(received).await;
            }
            Ok(None) => {
                phase.chunks = None;
                return self.finish_snapshot().await;
            }
            Ok(Some(item)) => item?,
        };
        match item {
            CopyItem::Start { table, index } => {
                if let Some(rows) = phase.estimates.remove(&table) {
                    info!(table = %table, estimated_rows = rows, "snapshot copy started");
                    self.pending
                        .push_back(ChangeEvent::CopyEstimate { table, rows });
                } else {
                    debug!(table = %table, chunk = index, "snapshot chunk started");
                }
            }
            CopyItem::Block(block) => {
                if !self.holds.contains_key(&block.table) {
                    // Stopped while being copied.
                    return Ok(());
                }
                *copies.rows.entry(block.table.clone()).or_default() += block.len() as u64;
                if !copies.in_copy_txn {
                    copies.in_copy_txn = true;
                    self.pending
                        .push_back(ChangeEvent::Begin(phase.commit.clone()));
                }
                self.pending.push_back(ChangeEvent::Block(block));
                copies.stream_turn = Some(tokio::time::Instant::now());
            }
            CopyItem::Done { table, index, .. } => {
                if copies.chunks.get(&table).is_none_or(|&n| index + 1 < n) {
                    return Ok(());
                }
                // The table is copied: what the stream brought of it since
                // the copy's point follows, in stream order, and then the
                // end of its copy.
                let rows = copies.rows.get(&table).copied().unwrap_or(0);
                let seq = phase.commit.seq;
                copies.in_copy_txn = false;
                if let Some(hold) = self.holds.remove(&table) {
                    info!(
                        table = %table,
                        rows,
                        held_events = hold.events.len(),
                        "snapshot copy done"
                    );
                    self.pending.extend(hold.events);
                    self.pending
                        .push_back(ChangeEvent::TableSnapshotDone { table, seq });
                } else {
                    // Stopped while being copied: the coordinator knows.
                    self.pending
                        .push_back(ChangeEvent::TableSnapshotDone { table, seq });
                }
            }
        }
        Ok(())
    }

    async fn finish_snapshot(&mut self) -> Result<(), PostgresError> {
        let phase = self.snapshot.take().expect("checked by caller");
        if phase.while_streaming.is_some() {
            // The workers ended their transactions; the temporary slot went
            // when they had imported the snapshot.
            self.holds.clear();
            info!("tables copied while streaming; they stream on");
            return Ok(());
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(query_error("closing the snapshot transaction"))?;
        if self.copy_only {
            // The temporary slot goes with its connection.
            drop(phase.repl);
        } else {
            self.repl = Some(self.start_replication(phase.repl).await?);
            info!(slot = %self.config.slot, "snapshot complete, streaming");
        }
        self.pending
            .push_back(ChangeEvent::Commit(phase.commit.clone()));
        self.pending.push_back(ChangeEvent::SnapshotDone {
            seq: phase.commit.seq,
            position: phase.commit.position,
        });
        Ok(())
    }

    async fn stream_step(&mut self) -> Result<(), PostgresError> {
        let repl = self.repl.as_mut().expect("checked by caller");
        let received = match self.heartbeat {
            Some(every) => {
                match tokio::time::timeout_at(self.last_activity + every, repl.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        self.emit_heartbeat().await;
                        return Ok(());
                    }
                }
            }
            None => repl.recv().await,
        };
        self.on_received(received).await
    }

    /// What the replication stream sent.
    async fn on_received(
        &mut self,
        received: Result<WalMessage, crate::replication::ReplicationError>,
    ) -> Result<(), PostgresError> {
        let data = match received.map_err(|e| self.stream_error(e))? {
            WalMessage::XLogData { data, .. } => {
                self.last_activity = tokio::time::Instant::now();
                data
            }
            WalMessage::KeepAlive { wal_end } => {
                // Between stream blocks only: inside one, an acknowledgement
                // is held until the block ends (the coordinator holds it while
                // a transaction is open anyway).
                if self.stream_block.is_none() {
                    self.pending.push_back(ChangeEvent::Heartbeat {
                        ack: wal_end.0,
                        position: wal_end.to_string(),
                    });
                }
                return Ok(());
            }
        };
        if let Some(top) = self.stream_block {
            return self.on_stream_data(top, data);
        }
        let (message, _) =
            pgoutput::decode_in(data, false).map_err(|source| PostgresError::Decode { source })?;
        match message {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                self.ord = 0;
                self.in_transaction = true;
                let begin = CommitInfo {
                    seq: final_lsn,
                    position: Lsn(final_lsn).to_string(),
                    ack: 0,
                    commit_ts_us: commit_time.saturating_add(PG_EPOCH_OFFSET_US),
                    txid: Some(xid.to_string()),
                };
                self.txn = Some(begin.clone());
                self.pending.push_back(ChangeEvent::Begin(begin));
            }
            Message::Commit {
                lsn,
                end_lsn,
                commit_time,
            } => self.push_commit(lsn, end_lsn, commit_time),
            Message::StreamStart { xid, first } => {
                self.stream_block = Some(xid);
                if !self.spills.contains_key(&xid) {
                    if !first {
                        debug!(
                            xid,
                            "stream block of a transaction begun before this session"
                        );
                    }
                    let spill = self.open_spill(xid)?;
                    self.spills.insert(xid, spill);
                }
            }
            Message::StreamStop => {
                return Err(PostgresError::Misuse {
                    what: "Stream Stop outside a stream block",
                })
            }
            Message::StreamCommit {
                xid,
                lsn,
                end_lsn,
                commit_time,
            } => {
                let Some(spill) = self.spills.remove(&xid) else {
                    return Err(PostgresError::Misuse {
                        what: "Stream Commit of a transaction never streamed",
                    });
                };
                self.start_replay(spill, xid, lsn, end_lsn, commit_time)?;
            }
            Message::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    if let Some(spill) = self.spills.remove(&xid) {
                        debug!(
                            xid,
                            messages = spill.messages,
                            "streamed transaction rolled back"
                        );
                        drop(spill.writer);
                        remove_spill(&spill.path);
                    }
                } else if let Some(spill) = self.spills.get_mut(&xid) {
                    spill.aborted.insert(subxid);
                }
            }
            Message::Logical {
                transactional: false,
                lsn,
                prefix,
                ..
            } if prefix == HEARTBEAT_PREFIX => {
                self.pending.push_back(ChangeEvent::Heartbeat {
                    ack: lsn,
                    position: Lsn(lsn).to_string(),
                });
            }
            other => self.on_message(other).await?,
        }
        Ok(())
    }

    /// The walsender's refusal to go on because the slot was invalidated
    /// (55000 "can no longer get changes from replication slot") becomes the
    /// error that names the slot and the fix.
    fn stream_error(&self, error: crate::replication::ReplicationError) -> PostgresError {
        match &error {
            crate::replication::ReplicationError::Server(e)
                if e.code == "55000" && e.message.contains("replication slot") =>
            {
                PostgresError::SlotInvalidated {
                    slot: self.config.slot.clone(),
                }
            }
            _ => PostgresError::Replication { source: error },
        }
    }

    /// Writes a non-transactional logical message into the WAL of this
    /// database: it reaches the slot like any change, gives it a position to
    /// confirm when the database is idle (WAL written by other databases is
    /// confirmed through keepalives; this also covers a server that writes
    /// nothing else) and measures the path end to end. Failing (e.g. a user
    /// without EXECUTE on the function) only turns heartbeats off.
    async fn emit_heartbeat(&mut self) {
        self.last_activity = tokio::time::Instant::now();
        let emitted = self
            .client
            .execute(
                "SELECT pg_logical_emit_message(false, $1, '')",
                &[&HEARTBEAT_PREFIX],
            )
            .await;
        if let Err(error) = emitted {
            warn!(
                error = %error,
                "cannot emit heartbeat messages (pg_logical_emit_message); heartbeats are off \
                 for this run, the slot still follows keepalives"
            );
            self.heartbeat = None;
        }
    }

    fn push_commit(&mut self, lsn: u64, end_lsn: u64, commit_time: i64) {
        self.in_transaction = false;
        self.pending.push_back(ChangeEvent::Commit(CommitInfo {
            seq: lsn,
            position: Lsn(lsn).to_string(),
            // The server skips a transaction on restart when its commit
            // record starts before the confirmed position: acknowledge the
            // end of the record.
            ack: end_lsn,
            commit_ts_us: commit_time.saturating_add(PG_EPOCH_OFFSET_US),
            txid: None,
        }));
    }

    /// A message inside a stream block: appended to its transaction's spill
    /// file, undecoded, tagged with its subtransaction.
    fn on_stream_data(&mut self, top: u32, data: Bytes) -> Result<(), PostgresError> {
        if data.first() == Some(&b'E') {
            self.stream_block = None;
            return Ok(());
        }
        let subxid = match data.first() {
            Some(b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M') if data.len() >= 5 => {
                u32::from_be_bytes([data[1], data[2], data[3], data[4]])
            }
            _ => top,
        };
        let spill = self.spills.get_mut(&top).ok_or(PostgresError::Misuse {
            what: "stream data without Stream Start",
        })?;
        let length = u32::try_from(data.len()).map_err(|_| PostgresError::Misuse {
            what: "pgoutput message over 4 GiB",
        })?;
        let written = spill
            .writer
            .write_all(&length.to_be_bytes())
            .and_then(|()| spill.writer.write_all(&subxid.to_be_bytes()))
            .and_then(|()| spill.writer.write_all(&data));
        written.map_err(|source| PostgresError::Spill {
            path: spill.path.clone(),
            source,
        })?;
        spill.messages += 1;
        spill.bytes += u64::from(length) + 8;
        Ok(())
    }

    fn open_spill(&self, xid: u32) -> Result<Spill, PostgresError> {
        let path = self
            .config
            .spill_dir
            .join(format!("{}-{xid}.spill", self.config.slot));
        let file = File::create(&path).map_err(|source| PostgresError::Spill {
            path: path.clone(),
            source,
        })?;
        Ok(Spill {
            path,
            writer: BufWriter::with_capacity(SPILL_BUFFER, file),
            aborted: HashSet::new(),
            messages: 0,
            bytes: 0,
        })
    }

    fn start_replay(
        &mut self,
        spill: Spill,
        xid: u32,
        lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    ) -> Result<(), PostgresError> {
        let Spill {
            path,
            writer,
            aborted,
            messages,
            bytes,
        } = spill;
        let spill_error = |source| PostgresError::Spill {
            path: path.clone(),
            source,
        };
        writer
            .into_inner()
            .map_err(|e| spill_error(e.into_error()))?;
        let file = File::open(&path).map_err(spill_error)?;
        info!(
            xid,
            messages, bytes, "replaying a streamed transaction from its spill file"
        );
        self.ord = 0;
        let commit = CommitInfo {
            seq: lsn,
            position: Lsn(lsn).to_string(),
            ack: end_lsn,
            commit_ts_us: commit_time.saturating_add(PG_EPOCH_OFFSET_US),
            txid: Some(xid.to_string()),
        };
        let begin = CommitInfo {
            ack: 0,
            ..commit.clone()
        };
        self.txn = Some(begin.clone());
        self.pending.push_back(ChangeEvent::Begin(begin));
        self.replay = Some(Replay {
            path,
            file,
            buf: bytes::BytesMut::new(),
            aborted,
            commit,
        });
        Ok(())
    }

    /// Decodes the next spilled message of the transaction being replayed.
    async fn replay_step(&mut self) -> Result<(), PostgresError> {
        let replay = self.replay.as_mut().expect("checked by caller");
        let spill_error = |path: &PathBuf| {
            let path = path.clone();
            move |source| PostgresError::Spill { path, source }
        };
        // A whole record in the buffer, reading more as needed. The end of
        // the file is the end of the transaction; a record cut short is an
        // error.
        let mut need = 8;
        loop {
            if replay.buf.len() >= 8 {
                let length = u32::from_be_bytes([
                    replay.buf[0],
                    replay.buf[1],
                    replay.buf[2],
                    replay.buf[3],
                ]) as usize;
                need = 8 + length;
            }
            if replay.buf.len() >= need {
                break;
            }
            let have = replay.buf.len();
            let want = (need - have).max(SPILL_BUFFER);
            replay.buf.resize(have + want, 0);
            let read = replay
                .file
                .read(&mut replay.buf[have..])
                .map_err(spill_error(&replay.path))?;
            replay.buf.truncate(have + read);
            if read == 0 {
                if have == 0 {
                    let replay = self.replay.take().expect("checked above");
                    remove_spill(&replay.path);
                    self.pending.push_back(ChangeEvent::Commit(replay.commit));
                    return Ok(());
                }
                return Err(spill_error(&replay.path)(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "spill record cut short",
                )));
            }
        }
        let mut record = replay.buf.split_to(need);
        let subxid = u32::from_be_bytes([record[4], record[5], record[6], record[7]]);
        bytes::Buf::advance(&mut record, 8);
        let data = record.freeze();
        if replay.aborted.contains(&subxid) {
            return Ok(());
        }
        let (message, _) =
            pgoutput::decode_in(data, true).map_err(|source| PostgresError::Decode { source })?;
        self.on_message(message).await
    }

    /// A message of a transaction. A definite error decoding a row of one
    /// table (a value the lake cannot hold, a TOAST value that cannot be
    /// restored) stops that table only: [`ChangeEvent::TableFailed`], and its
    /// rows are ignored from then on.
    async fn on_message(&mut self, message: Message) -> Result<(), PostgresError> {
        let relation = match &message {
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => Some(*relation),
            _ => None,
        };
        match self.on_message_of_table(message).await {
            Err(error) if error.class() == tidewater_core::ErrorClass::Definite => {
                let table = relation
                    .and_then(|oid| self.relations.get(&oid))
                    .and_then(|state| state.schema.as_ref())
                    .map(|schema| schema.table.clone());
                match table {
                    Some(table) => {
                        self.stop_table(&table, tidewater_core::error_chain(&error));
                        Ok(())
                    }
                    None => Err(error),
                }
            }
            other => other,
        }
    }

    /// Stops replicating `table` in this run; the coordinator records why.
    fn stop_table(&mut self, table: &TableId, reason: String) {
        self.stopped.insert(table.clone());
        self.tables.retain(|t| t != table);
        self.holds.remove(table);
        for state in self.relations.values_mut() {
            if state.schema.as_ref().is_some_and(|s| &s.table == table) {
                state.included = false;
            }
        }
        self.pending.push_back(ChangeEvent::TableFailed {
            table: table.clone(),
            reason,
        });
    }

    /// Tables stopped by an earlier run (see [`ChangeEvent::TableFailed`]):
    /// never streamed nor copied by this one.
    pub fn set_stopped(&mut self, tables: impl IntoIterator<Item = TableId>) {
        self.stopped.extend(tables);
    }

    async fn on_message_of_table(&mut self, message: Message) -> Result<(), PostgresError> {
        match message {
            Message::Relation(relation) => self.on_relation(relation).await?,
            Message::Insert { relation, new } => {
                // Every row message numbers `_tw_ord`, included or not, so the
                // numbering of a transaction does not depend on the config.
                self.ord += 1;
                if let Some(d) = self.included_schema(relation)? {
                    let values = datums(&d, &new, None)?;
                    self.push_row(&d.schema, Op::Insert, values);
                }
            }
            Message::Update { relation, old, new } => {
                self.ord += 1;
                if let Some(d) = self.included_schema(relation)? {
                    let schema = d.schema.clone();
                    let values = datums(&d, &new, old.as_ref())?;
                    // A changed key: the row under the old key is gone, so
                    // the log says so with a delete before the new image.
                    // Only the key columns count: under FULL the old image
                    // is sent with every update, and an update that keeps
                    // the key is its new image alone.
                    if let Some(old) = &old {
                        let old_values = datums(&d, old.cells(), None)?;
                        let key_changed = schema
                            .columns
                            .iter()
                            .enumerate()
                            .any(|(i, c)| c.key && old_values[i] != values[i]);
                        if key_changed {
                            if let Some(column) = schema
                                .columns
                                .iter()
                                .zip(&values)
                                .find(|(_, v)| matches!(v, Datum::Unchanged))
                                .map(|(c, _)| c)
                            {
                                // Its previous image is under the old key.
                                return Err(unchanged(&schema, column));
                            }
                            self.push_row(&schema, Op::Delete, old_values);
                            self.ord += 1;
                        }
                    }
                    self.push_row(&schema, Op::Update, values);
                }
            }
            Message::Delete { relation, old } => {
                self.ord += 1;
                if let Some(d) = self.included_schema(relation)? {
                    let values = datums(&d, old.cells(), None)?;
                    self.push_row(&d.schema, Op::Delete, values);
                }
            }
            Message::Truncate { relations, .. } => {
                for relation in relations {
                    self.ord += 1;
                    if let Some(d) = self.included_schema(relation)? {
                        self.push_row(&d.schema, Op::Truncate, Vec::new());
                    }
                }
            }
            Message::Type { .. } | Message::Origin { .. } | Message::Logical { .. } => {}
            Message::Begin { .. }
            | Message::Commit { .. }
            | Message::StreamStart { .. }
            | Message::StreamStop
            | Message::StreamCommit { .. }
            | Message::StreamAbort { .. } => {
                return Err(PostgresError::Misuse {
                    what: "transaction framing inside a streamed transaction",
                })
            }
        }
        Ok(())
    }

    fn push_row(&mut self, schema: &TableSchema, op: Op, values: Vec<Datum>) {
        let row = RowChange {
            table: schema.table.clone(),
            op,
            ord: self.ord,
            values,
        };
        let Some(hold) = self.holds.get_mut(&schema.table) else {
            self.pending.push_back(ChangeEvent::Row(row));
            return;
        };
        // The table is being copied: a change at or below the copy's point
        // is in the copy; a later one waits for the copy's end.
        let Some(txn) = &self.txn else {
            self.pending.push_back(ChangeEvent::Row(row));
            return;
        };
        if txn.seq <= hold.floor {
            return;
        }
        if hold.begun != Some(txn.seq) {
            hold.begun = Some(txn.seq);
            hold.events.push(ChangeEvent::Begin(txn.clone()));
        }
        hold.bytes += held_bytes(&row.values);
        hold.events.push(ChangeEvent::Row(row));
    }

    /// A new schema of `table`: sent on, or held with the table's changes
    /// while it is being copied (the copy's rows have the schema the copy
    /// began with).
    fn push_schema(&mut self, schema: Arc<TableSchema>) {
        match self.holds.get_mut(&schema.table) {
            Some(hold) => hold.events.push(ChangeEvent::Schema(schema)),
            None => self.pending.push_back(ChangeEvent::Schema(schema)),
        }
    }

    /// The schema and column type oids of an included relation.
    fn included_schema(&self, oid: u32) -> Result<Option<Decoding>, PostgresError> {
        let state = self
            .relations
            .get(&oid)
            .ok_or(PostgresError::UnknownRelation { oid })?;
        Ok(match (&state.schema, state.included) {
            (Some(schema), true) => Some(Decoding {
                schema: schema.clone(),
                oids: state.oids.clone(),
            }),
            _ => None,
        })
    }

    async fn on_relation(&mut self, relation: Relation) -> Result<(), PostgresError> {
        let relation_oid = relation.oid;
        let table = TableId::new(relation.namespace.clone(), relation.name.clone());
        // Only the tables resolved at start: a partition's Relation message may
        // arrive although its rows are published under the partitioned root.
        let included = self.tables.contains(&table);
        let mut columns = Vec::with_capacity(relation.columns.len());
        let mut oids = Vec::with_capacity(relation.columns.len());
        // Declared array dimensions (the Relation message does not carry
        // them), column numbers and defaults, from the catalog as it is now.
        let catalog: HashMap<String, CatalogColumn> = if included {
            self.client
                .query(
                    "SELECT a.attname::text, a.attndims::int4, a.attnum, \
                       a.atthasdef OR a.atthasmissing, \
                       coalesce(a.attnum = ANY(pk.indkey::int2[]), false) \
                     FROM pg_attribute a \
                     LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary \
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&relation.oid],
                )
                .await
                .map_err(query_error(format!("reading the columns of {table}")))?
                .iter()
                .map(|row| {
                    (
                        row.get(0),
                        CatalogColumn {
                            dims: row.get(1),
                            attnum: row.get(2),
                            has_default: row.get(3),
                            primary_key: row.get(4),
                        },
                    )
                })
                .collect()
        } else {
            HashMap::new()
        };
        let dims: HashMap<String, i32> = catalog
            .iter()
            .map(|(name, c)| (name.clone(), c.dims))
            .collect();
        for column in &relation.columns {
            let source_type = self
                .type_names
                .name(&self.client, column.type_oid, column.type_modifier)
                .await
                .map_err(query_error("naming a column type"))?;
            let (base_oid, base_modifier) = self
                .type_names
                .base(&self.client, column.type_oid, column.type_modifier)
                .await
                .map_err(query_error("resolving a column's domain type"))?;
            if included && self.binary && !crate::binary::supported(base_oid) {
                BINARY_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(PostgresError::BinaryUnsupported {
                    table,
                    column: column.name.clone(),
                    type_name: source_type,
                });
            }
            oids.push(base_oid);
            columns.push(Column {
                name: column.name.clone(),
                ty: column_type_dims(
                    base_oid,
                    base_modifier,
                    dims.get(&column.name).copied().unwrap_or(1),
                ),
                source_type,
                key: row_key(&relation, column, &catalog),
            });
        }
        let schema = match self.schemas.get(&table).cloned() {
            Some(known) if known.columns == columns => known,
            known => {
                if let (Some(known), true) = (&known, included) {
                    self.after_schema_change(&table, known, &columns, &catalog);
                }
                let schema = Arc::new(TableSchema {
                    table: table.clone(),
                    version: known.map_or(1, |k| k.version + 1),
                    columns,
                });
                self.schemas.insert(table.clone(), schema.clone());
                if included {
                    self.push_schema(schema.clone());
                }
                schema
            }
        };
        if included {
            // The numbers of the columns this relation names. The catalog is
            // read now, and may be ahead of the decoded stream (a rename
            // committed since, or later in the same transaction): a name it
            // no longer has keeps the number it had, so the rename is still
            // recognised when the relation with the new name arrives.
            let previous = self.attnums.remove(&table).unwrap_or_default();
            let numbers = schema
                .columns
                .iter()
                .filter_map(|c| {
                    let number = catalog
                        .get(&c.name)
                        .map(|now| now.attnum)
                        .or_else(|| previous.get(&c.name).copied())?;
                    Some((c.name.clone(), number))
                })
                .collect();
            self.attnums.insert(table.clone(), numbers);
        }
        let relation = (!included).then_some(relation);
        self.relations.insert(
            relation_oid,
            RelationState {
                included,
                schema: Some(schema),
                oids: oids.into(),
                relation,
            },
        );
        Ok(())
    }

    /// A new column that existing rows hold a value of — a renamed column
    /// (its number is a vanished column's), or one added with a default —
    /// leaves the lake's log behind the source for the rows not changed
    /// since: the table is copied again (unless configured off), so its
    /// current state is the source's.
    fn after_schema_change(
        &mut self,
        table: &TableId,
        known: &TableSchema,
        columns: &[Column],
        catalog: &HashMap<String, CatalogColumn>,
    ) {
        let previous = self.attnums.get(table);
        let mut changes = Vec::new();
        for column in columns {
            if known.columns.iter().any(|k| k.name == column.name) {
                continue;
            }
            let Some(now) = catalog.get(&column.name) else {
                continue;
            };
            let renamed_from = previous.and_then(|p| {
                p.iter()
                    .find(|(name, attnum)| {
                        **attnum == now.attnum && !columns.iter().any(|c| &c.name == *name)
                    })
                    .map(|(name, _)| name.clone())
            });
            match renamed_from {
                Some(old) => changes.push(format!("column {old} renamed to {}", column.name)),
                None if now.has_default => {
                    changes.push(format!("column {} added with a default", column.name))
                }
                None => {}
            }
        }
        if changes.is_empty() {
            return;
        }
        if self.config.recopy_on_schema_change {
            warn!(
                table = %table,
                changes = %changes.join("; "),
                "rows not changed since hold other values in the source than in the lake's log; \
                 copying the table again"
            );
            if !self.copy_queue.contains(table) {
                self.copy_queue.push(table.clone());
            }
        } else {
            warn!(
                table = %table,
                changes = %changes.join("; "),
                "rows not changed since keep their old values in the lake's log \
                 (source.recopy_on_schema_change = false)"
            );
        }
    }

    /// The handle that tells the server that the WAL up to an LSN (a
    /// commit's end LSN or a heartbeat's WAL end, see [`ChangeEvent`]) is
    /// durable downstream: shared by every clone, reported at once.
    pub fn acknowledger(&self) -> LsnAcknowledger {
        self.acked.clone()
    }

    /// Stops streaming after the last acknowledgement reached the server.
    pub async fn close(mut self) {
        if let Some(repl) = self.repl.take() {
            repl.close(FINAL_ACK_WAIT).await;
        }
        for (_, spill) in self.spills.drain() {
            drop(spill.writer);
            remove_spill(&spill.path);
        }
        if let Some(replay) = self.replay.take() {
            remove_spill(&replay.path);
        }
    }
}

impl tidewater_core::Source for PostgresSource {
    type Error = PostgresError;
    type Ack = LsnAcknowledger;

    async fn tables(&mut self) -> Result<Vec<TableId>, PostgresError> {
        PostgresSource::tables(self).await
    }

    async fn preflight(
        &mut self,
        tables: &[TableId],
    ) -> Result<Vec<tidewater_core::Problem>, PostgresError> {
        crate::preflight(&self.client, &self.config, tables).await
    }

    async fn replica(&mut self) -> Result<tidewater_core::Replica, PostgresError> {
        let slot = self.slot_state().await?;
        Ok(tidewater_core::Replica::Slot {
            name: self.config.slot.clone(),
            slot: slot.map(|s| tidewater_core::SlotInfo {
                ours: s.ours,
                owner: s.owner,
                active_pid: s.active_pid,
                lost: s.wal_status.as_deref() == Some("lost"),
                confirmed_flush: s.confirmed_flush.map(|l| l.0),
            }),
        })
    }

    async fn start(
        &mut self,
        start: tidewater_core::Start,
    ) -> Result<Option<SnapshotPlan>, PostgresError> {
        use tidewater_core::{ResumePoint, Start};
        match start {
            Start::Snapshot {
                tables,
                copy,
                drop_slot,
            } => {
                if drop_slot {
                    self.drop_slot().await?;
                }
                let started = self.start_snapshot(tables, copy).await?;
                Ok(Some(
                    self.plan_record(started.consistent_point, &started.plan),
                ))
            }
            Start::ResumeSnapshot {
                tables,
                from: ResumePoint::Chunks { plan, done },
            } => {
                let resume = SnapshotResume {
                    consistent_point: plan.consistent_point,
                    plan: plan
                        .tables
                        .iter()
                        .map(|p| PlannedTable {
                            table: p.table.clone(),
                            chunk_pages: p.chunk_pages,
                            chunks: p.chunks,
                        })
                        .collect(),
                    chunks_done: done,
                };
                let planned = self.resume_snapshot(tables, resume).await?;
                Ok(Some(self.plan_record(plan.consistent_point, &planned)))
            }
            Start::ResumeSnapshot { .. } => Err(PostgresError::Misuse {
                what: "a Postgres snapshot resumes by chunks, not by keys",
            }),
            Start::Stream {
                streamed,
                copies,
                stopped,
                from: _,
            } => {
                self.set_stopped(stopped);
                self.start_streaming(&streamed, &copies).await?;
                Ok(None)
            }
        }
    }

    async fn next_event(&mut self) -> Result<ChangeEvent, PostgresError> {
        PostgresSource::next_event(self).await
    }

    fn ready_event(&mut self) -> Option<ChangeEvent> {
        PostgresSource::ready_event(self)
    }

    fn copy_requests(&self) -> Option<tidewater_core::CopyRequestQueue> {
        Some(self.requests.clone())
    }

    fn acknowledger(&self) -> LsnAcknowledger {
        PostgresSource::acknowledger(self)
    }

    async fn close(self) {
        PostgresSource::close(self).await
    }
}

impl PostgresSource {
    /// The record of a snapshot's chunk plan (kept by the pipeline, so that
    /// an interrupted snapshot reads the same chunks again).
    fn plan_record(&self, consistent_point: u64, plan: &[PlannedTable]) -> SnapshotPlan {
        SnapshotPlan {
            slot: self.config.slot.clone(),
            consistent_point,
            tables: plan
                .iter()
                .map(|p| PlannedChunks {
                    table: p.table.clone(),
                    chunk_pages: p.chunk_pages,
                    chunks: p.chunks,
                })
                .collect(),
        }
    }
}

impl From<crate::replication::ReplicationError> for PostgresError {
    fn from(source: crate::replication::ReplicationError) -> Self {
        PostgresError::Replication { source }
    }
}

/// The consistent point and snapshot name of `CREATE_REPLICATION_SLOT …
/// EXPORT_SNAPSHOT`.
fn exported_snapshot(rows: &[crate::replication::TextRow]) -> Result<(Lsn, String), PostgresError> {
    let field = |i: usize| -> Option<String> { rows.first()?.get(i)?.clone() };
    let consistent_point =
        field(1)
            .and_then(|s| Lsn::parse(&s).ok())
            .ok_or(PostgresError::Misuse {
                what: "CREATE_REPLICATION_SLOT returned no consistent point",
            })?;
    let snapshot_name = field(2).ok_or(PostgresError::Misuse {
        what: "CREATE_REPLICATION_SLOT returned no snapshot name",
    })?;
    Ok((consistent_point, snapshot_name))
}

/// The temporary slot of copies while streaming: the pipeline slot's name
/// with a suffix, within the 63 bytes of a slot name.
fn copy_slot_name(slot: &str) -> String {
    suffixed_slot_name(slot, "_copy")
}

/// The temporary slot of a `tidewater verify` copy.
fn verify_slot_name(slot: &str) -> String {
    suffixed_slot_name(slot, "_verify")
}

/// `slot` with `SUFFIX`, cut to Postgres' 63-byte names.
fn suffixed_slot_name(slot: &str, suffix: &str) -> String {
    let keep = slot.len().min(63 - suffix.len());
    let mut end = keep;
    while !slot.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &slot[..end])
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn remove_spill(path: &std::path::Path) {
    if let Err(error) = std::fs::remove_file(path) {
        warn!(path = %path.display(), error = %error, "could not remove a spill file");
    }
}

/// The first host of a url: a name, an address, or a Unix socket directory.
fn first_host(config: &tokio_postgres::Config) -> String {
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{}:{port}", first_host(config))
}

/// A tokio-postgres connection under the url's `sslmode`; the caller
/// spawns the connection future.
pub(crate) async fn open_client(
    pg: &tokio_postgres::Config,
    tls: &crate::tls::TlsSetup,
    target: &str,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            crate::tls::RustlsStream<tokio_postgres::Socket>,
        >,
    ),
    PostgresError,
> {
    pg.connect(tls.connector()).await.map_err(|source| {
        match crate::tls::TlsError::find(target, tls, &source) {
            Some(refused) => PostgresError::Tls(Box::new(refused)),
            None => PostgresError::Connect {
                target: target.to_string(),
                source,
            },
        }
    })
}

fn connect_params(
    pg: &tokio_postgres::Config,
    config: &PostgresConfig,
    tls: crate::tls::TlsSetup,
) -> Result<ConnectParams, PostgresError> {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => Host::Unix(p.clone()),
        None => Host::Tcp("localhost".into()),
    };
    let user = pg
        .get_user()
        .ok_or(PostgresError::UrlPart { what: "user" })?;
    let database = pg
        .get_dbname()
        .ok_or(PostgresError::UrlPart { what: "database" })?;
    let options: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect();
    Ok(ConnectParams {
        host,
        port: pg.get_ports().first().copied().unwrap_or(5432),
        user: user.to_string(),
        password: pg.get_password().map(<[u8]>::to_vec),
        database: database.to_string(),
        application_name: config.application_name.clone(),
        options: options.join(" "),
        tls,
    })
}

/// A column as `pg_attribute` has it now.
struct CatalogColumn {
    dims: i32,
    attnum: i16,
    has_default: bool,
    /// Part of the table's primary key.
    primary_key: bool,
}

/// Whether `column` is part of the key rows are told apart by in the lake
/// (the current state, an update that changes the key, TOAST restores).
///
/// The Relation message flags the replica identity's columns. Under `DEFAULT`
/// and `USING INDEX` that is the key: the old image of a delete or a key
/// change carries exactly those columns. Under `FULL` it flags every column,
/// yet the row's key is still its primary key (the old image carries all of
/// it) — read from the catalog, as the snapshot does (`catalog::
/// table_columns`). A `FULL` table without a primary key has no key: an
/// update is its new image alone, as for a MySQL table without one.
fn row_key(
    relation: &Relation,
    column: &pgoutput::RelationColumn,
    catalog: &HashMap<String, CatalogColumn>,
) -> bool {
    if relation.replica_identity == b'f' {
        catalog.get(&column.name).is_some_and(|c| c.primary_key)
    } else {
        column.key
    }
}

/// The chunks of a copy, and what goes with them.
#[derive(Default)]
struct CopyPlan {
    /// Every table's schema, in order (a table without columns has no chunk).
    schemas: Vec<Arc<TableSchema>>,
    plan: Vec<PlannedTable>,
    /// The chunks still to read, in plan order.
    jobs: Vec<ChunkJob>,
    estimates: HashMap<TableId, u64>,
}

/// What planning a table's copy needs.
struct CopyFacts {
    partitioned: bool,
    /// Heap pages now (the last chunk is open-ended: growth is read too).
    pages: u64,
    /// The server's row estimate (statistics), for progress.
    estimate: u64,
    /// Base type oid of each column, in order.
    oids: Arc<[u32]>,
}

/// What decoding a relation's tuples needs.
struct Decoding {
    schema: Arc<TableSchema>,
    oids: Arc<[u32]>,
}

/// Decodes a tuple into values; an unchanged TOAST cell takes the value from a
/// full old image when the server sent one, else stays `Datum::Unchanged` for
/// the coordinator to resolve by key (a table without key columns cannot be
/// resolved: an error).
fn datums(
    decoding: &Decoding,
    cells: &[Cell],
    old: Option<&OldTuple>,
) -> Result<Vec<Datum>, PostgresError> {
    let schema = &decoding.schema;
    let mut values = Vec::with_capacity(schema.columns.len());
    for (index, column) in schema.columns.iter().enumerate() {
        let cell = match cells.get(index) {
            Some(Cell::Unchanged) => match old {
                Some(OldTuple::Full(old_cells)) => match old_cells.get(index) {
                    Some(cell @ (Cell::Text(_) | Cell::Binary(_) | Cell::Null)) => cell,
                    _ => return Err(unchanged(schema, column)),
                },
                // The coordinator takes it from the row's previous image (in
                // the batch, else in the lake), found by the row's key — which
                // must itself be known.
                _ if !column.key && schema.key_columns().next().is_some() => {
                    values.push(Datum::Unchanged);
                    continue;
                }
                _ => return Err(unchanged(schema, column)),
            },
            Some(cell) => cell,
            None => &Cell::Null,
        };
        values.push(match cell {
            Cell::Null => Datum::Null,
            Cell::Text(text) => parse_text(schema, column, text)?,
            Cell::Binary(bytes) => {
                let oid = decoding.oids.get(index).copied().unwrap_or(0);
                crate::binary::decode(oid, &column.ty, bytes).map_err(|source| {
                    PostgresError::Value {
                        table: schema.table.clone(),
                        column: column.name.clone(),
                        source,
                    }
                })?
            }
            Cell::Unchanged => return Err(unchanged(schema, column)),
        });
    }
    Ok(values)
}

/// Estimated heap bytes of a held row's values.
fn held_bytes(values: &[Datum]) -> usize {
    fn size(datum: &Datum) -> usize {
        match datum {
            Datum::Text(s) => 24 + s.len(),
            Datum::Bytes(b) => 24 + b.len(),
            Datum::List(items) => 24 + items.iter().map(size).sum::<usize>(),
            _ => 24,
        }
    }
    96 + values.iter().map(size).sum::<usize>()
}

fn unchanged(schema: &TableSchema, column: &Column) -> PostgresError {
    PostgresError::UnchangedToast {
        table: schema.table.clone(),
        column: column.name.clone(),
    }
}

fn parse_text(schema: &TableSchema, column: &Column, text: &[u8]) -> Result<Datum, PostgresError> {
    let value_error = |source| PostgresError::Value {
        table: schema.table.clone(),
        column: column.name.clone(),
        source,
    };
    let text = std::str::from_utf8(text).map_err(|_| {
        value_error(value::ValueError {
            what: "UTF-8 text".into(),
            length: text.len(),
        })
    })?;
    value::parse(&column.ty, text).map_err(value_error)
}
