//! The checkpoint coordinator: source events in, durable lake commits out,
//! acknowledgements back — always in that order.
//!
//! ```text
//!  source task ──(bounded channel: backpressure)──▶ coordinator ──▶ Batcher
//!       ▲                                               │ full / flush_interval / snapshot done
//!       │                                               ▼
//!       └── acknowledger.ack(pos) ◀── after commit ◀── LakeSink.write(batches) + commit(position)
//! ```
//!
//! The coordinator holds the source's acknowledger itself: an
//! acknowledgement reaches the server without waiting for the source's next
//! event (an idle database sends none).
//!
//! A checkpoint cuts every open batch, writes and commits each table (the data
//! and its mark in one Delta commit), and only then acknowledges the last
//! *complete* source transaction. A cut inside a large transaction commits its
//! rows (their marks protect against duplicates) but acknowledges only the
//! transaction before it. On start, every table's committed mark is read back
//! and every change at or below it is skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidewater_core::{
    Acknowledger, BatchLimits, Batcher, ChangeEvent, Classified, ErrorClass, Mark, Problem, Sink,
    SnapshotPhase, Source, StoppedTable, TableId,
};
use tidewater_lake::{LakeStore, MaintenancePolicy, SlotMarker, TableState};
use tidewater_mysql::{BinlogPosition, MysqlConfig, MysqlError, MysqlSource, ZeroDates};
use tidewater_postgres::{
    Lsn, PlannedTable, PostgresConfig, PostgresError, PostgresSource, SlotState, SnapshotResume,
    TableFilter,
};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::{Config, ConfigError, SinkConfig, SnapshotMode, SourceConfig, ZeroDatesPolicy};
use crate::sink::{AnySink, PositionStore};

/// Events buffered between the source task and the coordinator.
const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Arrow bytes of row blocks that may wait between the source task and the
/// coordinator, in KiB: blocks are large (thousands of rows), so the event
/// count alone would not bound memory.
const QUEUED_BLOCK_KIB: usize = 32 * 1024;

/// An event in flight, with the share of the block budget it holds.
type Queued = (
    Result<ChangeEvent, PipelineError>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// How often an idle coordinator lets the sink do its housekeeping (the sink
/// keeps its own, longer intervals).
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);

/// Events the coordinator takes from the channel in one go before it looks
/// at shutdown and the flush timer again.
const DRAIN_BURST: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] PostgresError),
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    #[error(transparent)]
    Sink(SinkFailure),
    #[error("building a batch")]
    Batch(#[source] tidewater_core::ArrowError),
    #[error("the source server is not ready for replication:\n{}", format_problems(.0))]
    Preflight(Vec<Problem>),
    #[error("the source task stopped unexpectedly")]
    SourceGone,
    #[error(
        "an update of {table} left the TOASTed column {column} unchanged, the server did not \
         send its value, and the lake holds no earlier image of that row\n\
         hint: ALTER TABLE {table} REPLICA IDENTITY FULL; makes Postgres send it; then take a \
         new snapshot of the table"
    )]
    UnresolvedToast { table: TableId, column: String },
    #[error(
        "table {0} is not selected by source.tables (or does not exist)\n\
         hint: --table takes a table the config captures, as the lake names it (schema.table)"
    )]
    NotSelected(TableId),
    #[error(
        "the lake has no completed initial snapshot yet\n\
         hint: run `tidewater snapshot` without --table first"
    )]
    NoLakeYet,
    /// A definite sink error about one table stopped that table (recorded);
    /// what the sink held of the other tables is sent again.
    #[error("table {0} stopped on a sink error; the other tables go on from their durable marks")]
    SinkStoppedTable(TableId),
}

impl PipelineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Source(err) => err.class(),
            PipelineError::Mysql(err) => err.class(),
            PipelineError::Sink(err) => err.class,
            PipelineError::Batch(_) => ErrorClass::Internal,
            PipelineError::Preflight(_) => ErrorClass::Config,
            PipelineError::SourceGone => ErrorClass::Internal,
            PipelineError::UnresolvedToast { .. } => ErrorClass::Definite,
            PipelineError::NotSelected(_) | PipelineError::NoLakeYet => ErrorClass::Config,
            PipelineError::SinkStoppedTable(_) => ErrorClass::Transient,
        }
    }
}

/// A sink's error, whatever its type, with its class and the table it is
/// about (if one) kept for the policy.
#[derive(Debug)]
pub struct SinkFailure {
    class: ErrorClass,
    table: Option<TableId>,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkFailure {
    pub fn new<E: Classified>(err: E) -> SinkFailure {
        SinkFailure {
            class: err.class(),
            table: err.table().cloned(),
            error: Box::new(err),
        }
    }
}

impl Classified for SinkFailure {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn table(&self) -> Option<&TableId> {
        self.table.as_ref()
    }
}

impl std::fmt::Display for SinkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SinkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

fn sink_error<E: Classified>(err: E) -> PipelineError {
    PipelineError::Sink(SinkFailure::new(err))
}

/// What a table stopped by a sink error records as its reason: the error
/// and its causes on one line, without the server's DETAIL lines (a
/// constraint violation's DETAIL shows the failing row's values).
fn stop_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        let text: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("DETAIL:"))
            .collect();
        let text = text.join(" ");
        // A wrapper that prints its cause is followed by that cause.
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

impl From<tidewater_lake::LakeError> for PipelineError {
    fn from(err: tidewater_lake::LakeError) -> Self {
        sink_error(err)
    }
}

pub fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {}\n    fix: {}", p.what, p.fix))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `run` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Snapshot if needed, then stream until shutdown.
    Continuous,
    /// Snapshot if needed, then stop.
    SnapshotOnly,
}

/// How a run ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Shutdown,
    SnapshotComplete,
    AlreadySnapshotted,
}

/// The source a pipeline reads, resolved from the config.
#[derive(Clone)]
pub enum SourceSettings {
    Postgres(PostgresConfig),
    Mysql(MysqlConfig),
}

pub struct Settings {
    pub pipeline: String,
    pub source: SourceSettings,
    pub snapshot: SnapshotMode,
    pub lake: LakeStore,
    pub limits: BatchLimits,
    /// Tables to copy again before streaming (`snapshot --table`).
    pub recopy: Vec<TableId>,
    pub maintenance: MaintenancePolicy,
    /// The size data files aim at (`sink.target_file_size_bytes`).
    pub target_file_bytes: u64,
    /// New change-log tables are partitioned by commit date.
    pub partition_by_date: bool,
    /// Between chunks, a snapshot commits once this much is staged.
    pub snapshot_commit_bytes: u64,
    /// Set for `[sink] type = "warehouse"`: the pipeline writes there, and
    /// `lake` is unused.
    pub warehouse: Option<tidewater_warehouse::WarehouseSettings>,
    pub metrics: crate::metrics::Metrics,
}

impl Settings {
    /// The settings `config` names, with the lake's store built: an S3
    /// store that cannot be built is a config error naming `sink.uri` (never
    /// a local directory in its place).
    pub fn from_config(config: &Config) -> Result<Settings, ConfigError> {
        let (source, snapshot) = match &config.source {
            SourceConfig::Postgres(pg) => {
                let (slot, publication) = PostgresConfig::names_for(&config.pipeline.name);
                (
                    SourceSettings::Postgres(PostgresConfig {
                        url: tidewater_core::conn_url::SecretUrl::new(pg.url.expose()),
                        filter: TableFilter {
                            include: pg.tables.clone(),
                            exclude: with_echo_exclusions(&pg.exclude, config),
                        },
                        slot: pg.slot_name.clone().unwrap_or(slot),
                        publication: pg.publication.clone().unwrap_or(publication),
                        application_name: format!("tidewater:{}", config.pipeline.name),
                        spill_dir: config.pipeline.state_dir().join("spill"),
                        heartbeat: (pg.heartbeat_interval_ms > 0)
                            .then(|| Duration::from_millis(pg.heartbeat_interval_ms)),
                        binary: pg.binary,
                        discovery: (pg.table_discovery_interval_ms > 0)
                            .then(|| Duration::from_millis(pg.table_discovery_interval_ms)),
                        recopy_on_schema_change: pg.recopy_on_schema_change,
                        snapshot_workers: pg.snapshot_workers,
                        snapshot_chunk_bytes: pg.snapshot_chunk_bytes,
                    }),
                    pg.snapshot,
                )
            }
            SourceConfig::Mysql(my) => (
                SourceSettings::Mysql(MysqlConfig {
                    url: tidewater_core::conn_url::SecretUrl::new(my.url.expose()),
                    filter: TableFilter {
                        include: my.include(),
                        exclude: with_echo_exclusions(&my.exclude, config),
                    },
                    server_id: my
                        .server_id
                        .unwrap_or_else(|| MysqlConfig::server_id_for(&config.pipeline.name)),
                    zero_dates: match my.zero_dates {
                        ZeroDatesPolicy::Null => ZeroDates::Null,
                        ZeroDatesPolicy::Fail => ZeroDates::Fail,
                    },
                    recopy_on_schema_change: my.recopy_on_schema_change,
                    snapshot_workers: my.snapshot_workers,
                    snapshot_chunk_rows: my.snapshot_chunk_rows,
                }),
                my.snapshot,
            ),
        };
        let warehouse = match &config.sink {
            SinkConfig::Lake(_) => None,
            SinkConfig::Warehouse(w) => Some(tidewater_warehouse::WarehouseSettings {
                url: tidewater_core::conn_url::SecretUrl::new(w.url.expose()),
                pipeline: config.pipeline.name.clone(),
                target_schema: w.schema.clone(),
                target_table: w.table.clone(),
                state_schema: w.state_schema.clone(),
                changelog: w.changelog,
                apply: match w.apply {
                    crate::config::WarehouseApply::Auto => tidewater_warehouse::ApplyMode::Auto,
                    crate::config::WarehouseApply::Merge => tidewater_warehouse::ApplyMode::Merge,
                    crate::config::WarehouseApply::OnConflict => {
                        tidewater_warehouse::ApplyMode::OnConflict
                    }
                },
            }),
        };
        Ok(match &config.sink {
            SinkConfig::Lake(lake) => Settings {
                pipeline: config.pipeline.name.clone(),
                source,
                snapshot,
                lake: LakeStore::open(lake.location()).map_err(|err| ConfigError::Invalid {
                    key: "sink.uri".into(),
                    message: format!(
                        "the object store for {:?} cannot be built: {}\n\
                         hint: fix sink.uri (s3://bucket[/prefix]) or sink.s3, or the AWS_* \
                         environment variables the store reads, then start again",
                        lake.uri,
                        store_causes(&err)
                    ),
                })?,
                limits: BatchLimits {
                    max_rows: lake.max_batch_rows,
                    max_bytes: lake.max_batch_bytes,
                    max_delay: Duration::from_millis(lake.flush_interval_ms),
                },
                recopy: Vec::new(),
                maintenance: lake.maintenance(),
                target_file_bytes: lake.target_file_size_bytes,
                partition_by_date: lake.partitioning == crate::config::Partitioning::CommitDate,
                snapshot_commit_bytes: lake.target_file_size_bytes,
                warehouse,
                metrics: crate::metrics::Metrics::default(),
            },
            SinkConfig::Warehouse(w) => Settings {
                pipeline: config.pipeline.name.clone(),
                source,
                snapshot,
                lake: LakeStore::local(&config.pipeline.state_dir().join("no-lake")),
                limits: BatchLimits {
                    max_rows: w.max_batch_rows,
                    max_bytes: w.max_batch_bytes,
                    max_delay: Duration::from_millis(w.flush_interval_ms),
                },
                recopy: Vec::new(),
                maintenance: MaintenancePolicy::default(),
                target_file_bytes: w.snapshot_commit_bytes,
                partition_by_date: false,
                snapshot_commit_bytes: w.snapshot_commit_bytes,
                warehouse,
                metrics: crate::metrics::Metrics::default(),
            },
        })
    }
}

/// Why a lake store could not be built: the causes below the error (which
/// only repeats the uri), each said once (the storage libraries wrap an
/// error in one that repeats its text).
fn store_causes(err: &tidewater_lake::LakeError) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut cause = std::error::Error::source(err);
    while let Some(current) = cause {
        let text = current.to_string();
        if !out.last().is_some_and(|last| last.contains(&text)) {
            out.push(text);
        }
        cause = current.source();
    }
    if out.is_empty() {
        out.push(err.to_string());
    }
    out.join(": ")
}

/// `exclude` plus the reverse-ETL target tables that live in the source
/// database: their pushes must not come back through capture.
fn with_echo_exclusions(exclude: &[String], config: &Config) -> Vec<String> {
    let mut out = exclude.to_vec();
    for table in crate::reverse::echo_exclusions(config) {
        if !out.contains(&table) {
            out.push(table);
        }
    }
    out
}

/// The connected source, whichever kind.
enum AnySource {
    Postgres(Box<PostgresSource>),
    Mysql(Box<MysqlSource>),
}

impl AnySource {
    async fn next_event(&mut self) -> Result<ChangeEvent, PipelineError> {
        Ok(match self {
            AnySource::Postgres(source) => Source::next_event(source.as_mut()).await?,
            AnySource::Mysql(source) => Source::next_event(source.as_mut()).await?,
        })
    }

    /// An event already decoded, without waiting for the server.
    fn ready_event(&mut self) -> Option<ChangeEvent> {
        match self {
            AnySource::Postgres(source) => source.ready_event(),
            AnySource::Mysql(source) => source.ready_event(),
        }
    }

    fn acknowledger(&self) -> AnyAcknowledger {
        match self {
            AnySource::Postgres(source) => AnyAcknowledger::Postgres(source.acknowledger()),
            AnySource::Mysql(source) => {
                AnyAcknowledger::Mysql(Source::acknowledger(source.as_ref()))
            }
        }
    }

    async fn close(self) {
        match self {
            AnySource::Postgres(source) => source.close().await,
            AnySource::Mysql(source) => source.close().await,
        }
    }
}

/// The acknowledger of the connected source, whichever kind.
#[derive(Clone)]
enum AnyAcknowledger {
    Postgres(<PostgresSource as Source>::Ack),
    Mysql(<MysqlSource as Source>::Ack),
}

impl Acknowledger for AnyAcknowledger {
    fn ack(&self, value: u64) {
        match self {
            AnyAcknowledger::Postgres(ack) => ack.ack(value),
            AnyAcknowledger::Mysql(ack) => ack.ack(value),
        }
    }
}

/// One run of the pipeline, from connecting to shutdown or error. The caller
/// retries transient errors by calling it again: every start re-reads the
/// durable marks, so a retry is the same as a restart after a crash.
///
/// A stop during the start (connecting, preflight, creating the
/// publication and the slot, opening the snapshot) ends it at once: what
/// the source server is doing for it is cancelled (a statement waiting for
/// another session's lock would otherwise wait for it, and then still
/// create the slot). Once the pipeline runs, a stop flushes, commits and
/// acknowledges first.
pub async fn run(
    settings: &Settings,
    mode: Mode,
    shutdown: watch::Receiver<bool>,
) -> Result<Outcome, PipelineError> {
    let started = AtomicBool::new(false);
    // Boxed so that dropping it below really ends it (closing its sessions).
    let mut work = Box::pin(async {
        match &settings.source {
            SourceSettings::Postgres(config) => {
                run_postgres(settings, config, mode, shutdown.clone(), &started).await
            }
            SourceSettings::Mysql(config) => {
                run_mysql(settings, config, mode, shutdown.clone(), &started).await
            }
        }
    });
    let mut stop = shutdown.clone();
    tokio::select! {
        result = &mut work => return result,
        _ = stopped(&mut stop) => {}
    }
    if started.load(Ordering::SeqCst) {
        return work.await;
    }
    info!("stopped while starting: cancelling what the source server does for this pipeline");
    // Cancel first, while the sessions are still open (the statements fail
    // and roll back), then drop them with the unfinished start.
    let cancelled = match &settings.source {
        SourceSettings::Postgres(config) => {
            tokio::time::timeout(CANCEL_WAIT, PostgresSource::cancel_sessions(config))
                .await
                .map(|r| r.map_err(|e| tidewater_core::error_chain(&e)))
        }
        SourceSettings::Mysql(_) => Ok(Ok(0)),
    };
    match cancelled {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            warn!(error = %error, "could not cancel the pipeline's statements on the source")
        }
        Err(_) => warn!("cancelling the pipeline's statements on the source took too long"),
    }
    drop(work);
    Ok(Outcome::Shutdown)
}

/// How long a stop during the start waits for the source server to take
/// its cancel request.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Resolves once `shutdown` is true (never if its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_postgres(
    settings: &Settings,
    config: &PostgresConfig,
    mode: Mode,
    shutdown: watch::Receiver<bool>,
    started: &AtomicBool,
) -> Result<Outcome, PipelineError> {
    let mut source = PostgresSource::connect(config.clone()).await?;
    let tables = source.tables().await?;
    let problems = tidewater_postgres::preflight(source.client(), source.config(), &tables).await?;
    if !problems.is_empty() {
        return Err(PipelineError::Preflight(problems));
    }
    let mut sink = AnySink::open(settings).await?;
    let slot = source.slot_state().await?;
    if let Some(slot) = &slot {
        if !slot.ours {
            return Err(PostgresError::SlotForeign {
                slot: config.slot.clone(),
                detail: slot.owner.clone(),
            }
            .into());
        }
        if let Some(pid) = slot.active_pid {
            return Err(PostgresError::SlotBusy {
                slot: config.slot.clone(),
                pid,
            }
            .into());
        }
    }
    // Every table this pipeline has in the lake, matched by the config or not.
    let mut states: HashMap<TableId, TableState> = HashMap::new();
    for table in sink.existing_tables().await? {
        if let Some(state) = sink.table_state(&table).await? {
            states.insert(table, state);
        }
    }
    let any_done = states.values().any(|s| s.snapshot_done);
    let marker = sink.marker().await?;
    // The marker is written before a snapshot creates its slot and flips to
    // "stream" only once the snapshot is committed in every table; in a lake
    // without a marker, a table still marked "running" says the same. Either
    // way nothing has been streamed yet, and the exported snapshot died with
    // the process. Under a "stream" marker, a table marked "running" is a
    // copy taken while streaming that did not complete: it is taken again.
    let streaming_lake = matches!(marker, Some(SlotMarker::Stream(_)));
    let interrupted = matches!(marker, Some(SlotMarker::Snapshot(_)))
        || (!streaming_lake && states.values().any(|s| !s.snapshot_done));
    let owned = marker.is_some() || any_done;

    let stream = match (&slot, interrupted, settings.snapshot) {
        // Nothing to copy again without a snapshot: continue our own slot.
        (Some(_), true, SnapshotMode::Never) => true,
        (_, true, _) => false,
        (None, false, _) if owned => {
            let position = states
                .values()
                .filter_map(|s| Lsn::parse(&s.position).ok())
                .min()
                .map(|lsn| lsn.to_string());
            return Err(PostgresError::SlotLost {
                slot: config.slot.clone(),
                position: position.unwrap_or_else(|| "its start".into()),
            }
            .into());
        }
        (None, false, _) => false,
        (Some(slot), false, _) if slot.wal_status.as_deref() == Some("lost") => {
            return Err(PostgresError::SlotInvalidated {
                slot: config.slot.clone(),
            }
            .into());
        }
        (Some(_), false, _) if owned => true,
        // A slot with our name that this lake never recorded: another
        // deployment's, or a leftover. Never adopt or drop it blindly.
        (Some(_), false, _) => {
            return Err(PostgresError::SlotWithoutLake {
                slot: config.slot.clone(),
            }
            .into());
        }
    };

    if stream {
        if let Some(SlotMarker::Snapshot(slot)) = &marker {
            sink.write_marker(&SlotMarker::Stream(slot.clone())).await?;
        }
        if let Some(table) = settings.recopy.iter().find(|t| !tables.contains(t)) {
            return Err(PipelineError::NotSelected(table.clone()));
        }
        let recorded = sink.stopped_tables().await?;
        let stopped = still_stopped(&recorded, &settings.recopy);
        let is_stopped = |t: &TableId| stopped.iter().any(|s| &s.table == t);
        let missing: Vec<TableId> = tables
            .iter()
            .filter(|t| !states.get(*t).is_some_and(|s| s.snapshot_done) && !is_stopped(t))
            .cloned()
            .collect();
        // Tables without a complete copy in the lake are copied while the
        // others stream, then join them.
        let mut copies = match settings.snapshot {
            SnapshotMode::Initial => missing,
            SnapshotMode::Never => Vec::new(),
        };
        for table in &settings.recopy {
            if !copies.contains(table) {
                copies.push(table.clone());
            }
        }
        if mode == Mode::SnapshotOnly && copies.is_empty() {
            return Ok(Outcome::AlreadySnapshotted);
        }
        let streamed: Vec<TableId> = tables
            .iter()
            .filter(|t| !copies.contains(t) && !is_stopped(t))
            .cloned()
            .collect();
        if !copies.is_empty() {
            info!(
                tables = copies.len(),
                "tables without a complete copy in the lake are copied first"
            );
        }
        source.set_stopped(stopped.iter().map(|s| s.table.clone()));
        source.start_streaming(&streamed, &copies).await?;
        let marks: HashMap<TableId, Mark> =
            states.iter().map(|(t, s)| (t.clone(), s.mark)).collect();
        started.store(true, Ordering::SeqCst);
        return drive(
            settings,
            AnySource::Postgres(Box::new(source)),
            sink,
            marks,
            DriveStart {
                snapshot_running: false,
                copies,
                stopped,
                recorded_stopped: recorded,
            },
            false,
            mode,
            shutdown,
        )
        .await;
    } else {
        if !settings.recopy.is_empty() {
            return Err(PipelineError::NoLakeYet);
        }
        let resume = match (&marker, &slot) {
            (Some(SlotMarker::Snapshot(marked)), Some(slot))
                if interrupted
                    && settings.snapshot == SnapshotMode::Initial
                    && marked == &config.slot =>
            {
                resumable(&sink, slot, &config.slot, &tables, &states).await?
            }
            _ => None,
        };
        if let Some(resume) = resume {
            let plan = source
                .resume_snapshot(tables.clone(), resume.clone())
                .await?;
            sink.write_snapshot_plan(&plan_json(&config.slot, &SnapshotResume { plan, ..resume }))
                .await?;
        } else {
            if interrupted {
                warn!("the previous initial snapshot did not complete; removing what it wrote and starting over");
            }
            // Marker first, so a crash anywhere below still reads as an
            // interrupted snapshot; then every table this pipeline has in the lake
            // (with a commit or not), then the old slot.
            sink.write_marker(&SlotMarker::Snapshot(config.slot.clone()))
                .await?;
            for table in sink.existing_tables().await? {
                warn!(table = %table, "removing a partial snapshot from the lake");
                sink.remove_table(&table).await?;
            }
            sink.write_stopped_tables(&[]).await?;
            states.clear();
            if slot.is_some() {
                source.drop_slot().await?;
            }
            let copy = settings.snapshot == SnapshotMode::Initial;
            info!(tables = tables.len(), copy, "starting consistent snapshot");
            let started = source.start_snapshot(tables.clone(), copy).await?;
            sink.write_snapshot_plan(&plan_json(&config.slot, &started))
                .await?;
        }
    }
    let marks: HashMap<TableId, Mark> = states.iter().map(|(t, s)| (t.clone(), s.mark)).collect();
    started.store(true, Ordering::SeqCst);
    drive(
        settings,
        AnySource::Postgres(Box::new(source)),
        sink,
        marks,
        DriveStart {
            snapshot_running: true,
            copies: Vec::new(),
            stopped: Vec::new(),
            recorded_stopped: Vec::new(),
        },
        false,
        mode,
        shutdown,
    )
    .await
}

/// The recorded plan of an interrupted Postgres snapshot, if it can be
/// resumed: the plan is this slot's, the slot never confirmed anything past
/// the snapshot's consistent point, and every table in the lake holds only
/// snapshot rows of whole chunks (what `SnapshotChunk` commits guarantee).
/// Anything else starts the snapshot over; a plan that does not parse is
/// an error (config class: a person restores or removes it).
async fn resumable(
    sink: &AnySink,
    slot: &SlotState,
    slot_name: &str,
    tables: &[TableId],
    states: &HashMap<TableId, TableState>,
) -> Result<Option<SnapshotResume>, PipelineError> {
    let Some(text) = sink.snapshot_plan().await? else {
        return Ok(None);
    };
    let (plan_slot, mut resume) =
        parse_plan(&text).map_err(|problem| sink.corrupt_plan(problem))?;
    let point = resume.consistent_point;
    if plan_slot != slot_name || slot.confirmed_flush.map(|l| l.0) != Some(point) {
        return Ok(None);
    }
    for (table, state) in states {
        if !tables.contains(table) || state.snapshot_done {
            return Ok(None);
        }
        let done = match state.mark {
            Mark::ZERO => 0,
            mark if mark.seq == point.saturating_sub(1) => (mark.ord >> 32) as u32 + 1,
            _ => return Ok(None),
        };
        let planned = resume.plan.iter().find(|p| &p.table == table);
        if planned.is_none_or(|p| p.chunks < done) {
            return Ok(None);
        }
        resume.chunks_done.insert(table.clone(), done);
    }
    Ok(Some(resume))
}

fn plan_json(slot: &str, snapshot: &SnapshotResume) -> String {
    let tables: Vec<serde_json::Value> = snapshot
        .plan
        .iter()
        .map(|p| {
            serde_json::json!({
                "schema": p.table.schema,
                "name": p.table.table,
                "chunk_pages": p.chunk_pages,
                "chunks": p.chunks,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "slot": slot,
        "consistent_point": snapshot.consistent_point,
        "tables": tables,
    }))
    .expect("JSON values serialize");
    format!("{text}\n")
}

/// The snapshot plan as [`plan_json`] writes it.
#[derive(serde::Deserialize)]
struct PlanFile {
    slot: String,
    consistent_point: u64,
    tables: Vec<PlanEntry>,
}

#[derive(serde::Deserialize)]
struct PlanEntry {
    schema: String,
    name: String,
    chunk_pages: u64,
    chunks: u32,
}

/// The slot and plan of a recorded snapshot plan; what is wrong with it
/// (where, never its content) when it does not parse.
fn parse_plan(text: &str) -> Result<(String, SnapshotResume), String> {
    let file: PlanFile =
        serde_json::from_str(text).map_err(|err| tidewater_core::state_file::json_problem(&err))?;
    let plan = file
        .tables
        .into_iter()
        .map(|t| PlannedTable {
            table: TableId::new(t.schema, t.name),
            chunk_pages: t.chunk_pages,
            chunks: t.chunks,
        })
        .collect();
    Ok((
        file.slot,
        SnapshotResume {
            consistent_point: file.consistent_point,
            plan,
            chunks_done: HashMap::new(),
        },
    ))
}

/// Where an interrupted MySQL/MariaDB snapshot can resume, if it can: every
/// table in the lake holds only snapshot rows of the same snapshot, read in
/// key order (so the rows it holds are the first ones by key), with a key
/// tidewater can restart after; and the binlog at the snapshot's position is
/// still on the server. Anything else starts the snapshot over.
async fn mysql_resumable(
    sink: &mut AnySink,
    source: &mut MysqlSource,
    tables: &[TableId],
    states: &HashMap<TableId, TableState>,
) -> Result<
    Option<(
        BinlogPosition,
        HashMap<TableId, (u64, Vec<tidewater_core::Datum>)>,
    )>,
    PipelineError,
> {
    let mut from: Option<BinlogPosition> = None;
    for state in states.values() {
        let Some(position) = BinlogPosition::parse(&state.position) else {
            return Ok(None);
        };
        if state.snapshot_done
            || from.as_ref().is_some_and(|f| f.seq() != position.seq())
            || (state.mark != Mark::ZERO && state.mark.seq != position.seq().saturating_sub(1))
        {
            return Ok(None);
        }
        from = Some(position);
    }
    let Some(from) = from else {
        return Ok(None);
    };
    if !source.binlog_available(&from).await? {
        warn!(position = %from, "the binlog of the interrupted snapshot is gone; starting over");
        return Ok(None);
    }
    let mut resume = HashMap::new();
    for (table, state) in states {
        if !tables.contains(table) {
            return Ok(None);
        }
        if state.mark == Mark::ZERO {
            continue;
        }
        let schema = source.table_schema(table).await?;
        match sink.key_at_mark(&schema, state.mark).await? {
            Some(key) if tidewater_mysql::resumable_key(&key) => {
                resume.insert(table.clone(), (state.mark.ord, key));
            }
            _ => return Ok(None),
        }
    }
    Ok(Some((from, resume)))
}

/// Startup for a MySQL/MariaDB source. The server keeps no replica state, so
/// the lake holds everything: the marker says whether the initial snapshot
/// completed, `_tidewater_source_position` where to resume (else the oldest
/// table position), and every table's mark filters what is replayed.
async fn run_mysql(
    settings: &Settings,
    config: &MysqlConfig,
    mode: Mode,
    shutdown: watch::Receiver<bool>,
    started: &AtomicBool,
) -> Result<Outcome, PipelineError> {
    let mut source = MysqlSource::connect(config.clone()).await?;
    let tables = source.tables().await?;
    let problems = source.preflight(&tables).await?;
    if !problems.is_empty() {
        return Err(PipelineError::Preflight(problems));
    }
    let mut sink = AnySink::open(settings).await?;
    let mut states: HashMap<TableId, TableState> = HashMap::new();
    for table in sink.existing_tables().await? {
        if let Some(state) = sink.table_state(&table).await? {
            states.insert(table, state);
        }
    }
    let marker = sink.marker().await?;
    let interrupted = matches!(marker, Some(SlotMarker::Snapshot(_)))
        || states.values().any(|s| !s.snapshot_done);
    let owned = marker.is_some() || states.values().any(|s| s.snapshot_done);
    let recorded_position = sink.source_position().await?;
    let resume = || -> Result<Option<BinlogPosition>, PipelineError> {
        if let Some(text) = recorded_position.clone() {
            match BinlogPosition::parse(&text) {
                Some(position) => return Ok(Some(position)),
                // Replaying from the tables' own positions is always safe.
                None => {
                    warn!(content = %text, "the lake's _tidewater_source_position is not a binlog position; resuming from the oldest table position")
                }
            }
        }
        Ok(states
            .values()
            .filter_map(|s| BinlogPosition::parse(&s.position))
            .min_by_key(BinlogPosition::seq))
    };
    let from = match (owned, interrupted, settings.snapshot) {
        (true, false, _) | (true, true, SnapshotMode::Never) => resume()?,
        _ => None,
    };
    let snapshotting = from.is_none() && !(owned && settings.snapshot == SnapshotMode::Never);
    if snapshotting && !settings.recopy.is_empty() {
        return Err(PipelineError::NoLakeYet);
    }
    if let Some(table) = settings.recopy.iter().find(|t| !tables.contains(t)) {
        return Err(PipelineError::NotSelected(table.clone()));
    }
    let recorded = if snapshotting {
        Vec::new()
    } else {
        sink.stopped_tables().await?
    };
    let stopped = still_stopped(&recorded, &settings.recopy);
    let is_stopped = |t: &TableId| stopped.iter().any(|s| &s.table == t);
    // Tables without a complete copy in the lake (an interrupted copy, a
    // table that matched the config after the snapshot) and those asked
    // for are copied while the others stream.
    let mut copies: Vec<TableId> = if snapshotting || settings.snapshot == SnapshotMode::Never {
        Vec::new()
    } else {
        tables
            .iter()
            .filter(|t| !states.get(*t).is_some_and(|s| s.snapshot_done) && !is_stopped(t))
            .cloned()
            .collect()
    };
    for table in &settings.recopy {
        if !copies.contains(table) {
            copies.push(table.clone());
        }
    }
    if mode == Mode::SnapshotOnly && !snapshotting && copies.is_empty() {
        return Ok(Outcome::AlreadySnapshotted);
    }
    let resumed = if snapshotting
        && interrupted
        && settings.snapshot == SnapshotMode::Initial
        && matches!(marker, Some(SlotMarker::Snapshot(_)))
    {
        mysql_resumable(&mut sink, &mut source, &tables, &states).await?
    } else {
        None
    };
    if let Some((from, resume)) = resumed {
        source.resume_snapshot(tables.clone(), from, resume).await?;
    } else if snapshotting {
        if interrupted {
            warn!("the previous initial snapshot did not complete; removing what it wrote and starting over");
        }
        sink.write_marker(&SlotMarker::Snapshot("binlog".into()))
            .await?;
        sink.clear_source_position().await?;
        sink.write_stopped_tables(&[]).await?;
        for table in sink.existing_tables().await? {
            warn!(table = %table, "removing a partial snapshot from the lake");
            sink.remove_table(&table).await?;
        }
        states.clear();
        let copy = settings.snapshot == SnapshotMode::Initial;
        info!(tables = tables.len(), copy, "starting consistent snapshot");
        source.start_snapshot(tables.clone(), copy).await?;
    } else {
        let from = match from {
            Some(from) => from,
            // snapshot = never on a fresh lake: start at the server's
            // current position.
            None => source.current_position().await?,
        };
        if !matches!(marker, Some(SlotMarker::Stream(_))) {
            sink.write_marker(&SlotMarker::Stream("binlog".into()))
                .await?;
        }
        if !copies.is_empty() {
            info!(
                tables = copies.len(),
                "tables without a complete copy in the lake are copied first"
            );
        }
        let streamed: Vec<TableId> = tables
            .iter()
            .filter(|t| !copies.contains(t) && !is_stopped(t))
            .cloned()
            .collect();
        source.queue_copies(&copies);
        source.set_stopped(stopped.iter().map(|s| s.table.clone()));
        source.start_streaming(&streamed, from).await?;
    }
    let marks: HashMap<TableId, Mark> = states.iter().map(|(t, s)| (t.clone(), s.mark)).collect();
    started.store(true, Ordering::SeqCst);
    drive(
        settings,
        AnySource::Mysql(Box::new(source)),
        sink,
        marks,
        DriveStart {
            snapshot_running: snapshotting,
            copies,
            stopped,
            recorded_stopped: recorded,
        },
        true,
        mode,
        shutdown,
    )
    .await
}

/// The recorded stopped tables that stay stopped in this run: their changes
/// since the stop are not in the lake, so only a new copy (`recopy`) lifts
/// the stop. Each is named in the log at every start.
fn still_stopped(recorded: &[StoppedTable], recopy: &[TableId]) -> Vec<StoppedTable> {
    let stopped: Vec<StoppedTable> = recorded
        .iter()
        .filter(|s| !recopy.contains(&s.table))
        .cloned()
        .collect();
    for s in &stopped {
        error!(
            table = %s.table,
            position = %s.position,
            error = %s.reason,
            "table is stopped and not replicated; fix the cause, then copy it again with \
             `tidewater snapshot --config <file> --table {}`",
            s.table
        );
    }
    stopped
}

/// What the source does first.
struct DriveStart {
    /// The initial snapshot.
    snapshot_running: bool,
    /// Copies of single tables, taken while the others stream.
    copies: Vec<TableId>,
    /// Tables an earlier run stopped, minus those copied again now.
    stopped: Vec<StoppedTable>,
    /// The stopped tables as recorded in the lake.
    recorded_stopped: Vec<StoppedTable>,
}

/// Runs the source task and the coordinator until shutdown or error.
#[allow(clippy::too_many_arguments)]
async fn drive(
    settings: &Settings,
    source: AnySource,
    sink: AnySink,
    marks: HashMap<TableId, Mark>,
    start: DriveStart,
    record_position: bool,
    mode: Mode,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, PipelineError> {
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let acknowledger = source.acknowledger();
    let (stop_tx, stop_rx) = watch::channel(false);
    let span = match &source {
        AnySource::Postgres(_) => info_span!("postgres-source"),
        AnySource::Mysql(_) => info_span!("mysql-source"),
    };
    let source_task = tokio::spawn(source_loop(source, event_tx, stop_rx).instrument(span));
    let record_position = record_position.then(|| sink.position_store());
    let mut coordinator = Coordinator {
        sink,
        batcher: Batcher::new(settings.limits),
        held: Vec::new(),
        marks,
        acknowledger,
        acked: 0,
        in_transaction: false,
        current_seq: 0,
        begin_position: String::new(),
        last_complete: None,
        snapshot_running: start.snapshot_running,
        copies_pending: start.copies.into_iter().collect(),
        stopped: start.stopped,
        recorded_stopped: start.recorded_stopped,
        stats: Stats::default(),
        progress: CopyProgress::default(),
        metrics: settings.metrics.clone(),
        last_complete_ts_us: 0,
        server_position: 0,
        record_position,
        acked_position: None,
        recorded_at: None,
        chunk_open: false,
        snapshot_commit_bytes: settings.snapshot_commit_bytes,
        snapshot_committed_at: Instant::now(),
    };
    let result = coordinator.drive(event_rx, &mut shutdown, mode).await;
    if result.is_ok() {
        coordinator.record_acked_position(true).await?;
    }
    let _ = stop_tx.send(true);
    let _ = source_task.await;
    result
}

/// Reads events from the source. It is the only owner of the source, and
/// never cancels `next_event` except at shutdown, so no event is lost halfway
/// through decoding. Acknowledgements do not pass here: the coordinator
/// holds the source's acknowledger.
async fn source_loop(
    mut source: AnySource,
    events: mpsc::Sender<Queued>,
    mut stop: watch::Receiver<bool>,
) {
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(QUEUED_BLOCK_KIB));
    loop {
        // Events the source has already decoded need no select: only a wait
        // for the server must be interruptible by `stop`.
        let event = match source.ready_event() {
            Some(event) if !*stop.borrow() => Ok(event),
            Some(_) => break,
            None => tokio::select! {
                biased;
                _ = stop.changed() => break,
                event = source.next_event() => event,
            },
        };
        let failed = event.is_err();
        let permit = match &event {
            Ok(ChangeEvent::Block(block)) => {
                let bytes: usize = block
                    .columns
                    .iter()
                    .map(|c| c.get_array_memory_size())
                    .sum();
                let kib = (bytes / 1024).clamp(1, QUEUED_BLOCK_KIB) as u32;
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    permit = budget.clone().acquire_many_owned(kib) => permit.ok(),
                }
            }
            _ => None,
        };
        let event = (event, permit);
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => tokio::select! {
                biased;
                _ = stop.changed() => break,
                sent = events.send(event) => if sent.is_err() { break },
            },
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
        if failed {
            break;
        }
    }
    source.close().await;
}

#[derive(Default)]
struct Stats {
    rows: u64,
    skipped: u64,
    started: Option<Instant>,
    /// Events since the last report to the metrics.
    events: u64,
}

/// Progress of the snapshot copies: per table rows done against the server's
/// estimate, reported every [`PROGRESS_EVERY`] — one rewritten line on a
/// terminal, log lines otherwise.
#[derive(Default)]
struct CopyProgress {
    tables: std::collections::BTreeMap<TableId, TableProgress>,
    reported: Option<Instant>,
    rows_since_check: u64,
}

struct TableProgress {
    estimate: u64,
    done: u64,
    started: Instant,
    finished: bool,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// At most this long between commits of a snapshot (at chunk ends).
const SNAPSHOT_COMMIT_EVERY: Duration = Duration::from_secs(30);

impl CopyProgress {
    fn start(&mut self, table: TableId, estimate: u64) {
        // Copies run one table after the other: a new one ends the last.
        if !self.tables.is_empty() {
            self.finish_all();
        }
        self.tables.insert(
            table,
            TableProgress {
                estimate,
                done: 0,
                started: Instant::now(),
                finished: false,
            },
        );
        self.reported.get_or_insert_with(Instant::now);
    }

    fn row(&mut self, table: &TableId) {
        self.rows(table, 1);
    }

    fn rows(&mut self, table: &TableId, n: u64) {
        if let Some(t) = self.tables.get_mut(table) {
            t.done += n;
            self.rows_since_check += n;
            // The clock is read once per few thousand rows, not per row.
            if self.rows_since_check >= 4096 {
                self.rows_since_check = 0;
                if self
                    .reported
                    .is_some_and(|at| at.elapsed() >= PROGRESS_EVERY)
                {
                    self.report(false);
                }
            }
        }
    }

    fn finish(&mut self, table: &TableId) {
        if let Some(t) = self.tables.get_mut(table) {
            t.finished = true;
        }
        self.report(true);
    }

    /// Rows done and estimated over the copies running now.
    fn totals(&self) -> (u64, u64) {
        self.tables
            .values()
            .fold((0, 0), |(d, e), t| (d + t.done, e + t.estimate.max(t.done)))
    }

    fn finish_all(&mut self) {
        for t in self.tables.values_mut() {
            t.finished = true;
        }
        self.report(true);
    }

    fn report(&mut self, last: bool) {
        use std::io::IsTerminal;
        self.reported = Some(Instant::now());
        let terminal = std::io::stderr().is_terminal();
        for (table, t) in &self.tables {
            let seconds = t.started.elapsed().as_secs_f64().max(1e-3);
            let rate = t.done as f64 / seconds;
            let total = t.estimate.max(t.done);
            let percent = if total > 0 {
                100.0 * t.done as f64 / total as f64
            } else {
                100.0
            };
            let eta = if t.finished || rate <= 0.0 {
                0.0
            } else {
                (total.saturating_sub(t.done)) as f64 / rate
            };
            if t.finished && !last {
                continue;
            }
            if terminal {
                eprint!(
                    "\rsnapshot {table}: {} / ~{} rows ({percent:.0}%), {rate:.0} rows/s, ETA {eta:.0} s   ",
                    t.done, total
                );
                if t.finished {
                    eprintln!();
                }
            } else {
                info!(
                    table = %table,
                    rows = t.done,
                    estimated_rows = total,
                    percent = format!("{percent:.0}"),
                    rows_per_second = format!("{rate:.0}"),
                    eta_seconds = format!("{eta:.0}"),
                    done = t.finished,
                    "snapshot progress"
                );
            }
        }
        self.tables.retain(|_, t| !t.finished);
    }
}

/// Drives one sink through the [`Sink`] contract.
struct Coordinator<K> {
    sink: K,
    batcher: Batcher,
    /// Batches cut early (by a schema change), written at the next checkpoint.
    held: Vec<tidewater_core::ChangeBatch>,
    marks: HashMap<TableId, Mark>,
    /// Tells the source's server what is durable, at once.
    acknowledger: AnyAcknowledger,
    /// The last value acknowledged.
    acked: u64,
    in_transaction: bool,
    current_seq: u64,
    begin_position: String,
    /// (ack value, position) of the last transaction whose rows are all in the
    /// batcher.
    last_complete: Option<(u64, String)>,
    snapshot_running: bool,
    /// A chunk of the initial snapshot is being received: no commit may
    /// land until it ends (see [`ChangeEvent::SnapshotChunk`]).
    chunk_open: bool,
    /// Between chunks, the snapshot commits once this much is staged.
    snapshot_commit_bytes: u64,
    snapshot_committed_at: Instant,
    /// Tables copied while streaming whose copy the start asked for and
    /// that are not complete yet (a snapshot-only run ends with the last).
    copies_pending: std::collections::HashSet<TableId>,
    /// Tables stopped by a definite error (this run or earlier): their
    /// changes are dropped until they are copied again.
    stopped: Vec<StoppedTable>,
    /// What the lake records as stopped: also the tables being copied
    /// again, until their copy completes.
    recorded_stopped: Vec<StoppedTable>,
    stats: Stats,
    progress: CopyProgress,
    metrics: crate::metrics::Metrics,
    /// Source commit time of the last complete transaction (µs).
    last_complete_ts_us: i64,
    /// The server's log position as its heartbeats last said (Postgres: WAL end).
    server_position: u64,
    /// Where acknowledged positions are written, for sources without
    /// server-side replica state.
    record_position: Option<PositionStore>,
    acked_position: Option<String>,
    recorded_at: Option<Instant>,
}

impl<K: Sink> Coordinator<K> {
    async fn drive(
        &mut self,
        mut events: mpsc::Receiver<Queued>,
        shutdown: &mut watch::Receiver<bool>,
        mode: Mode,
    ) -> Result<Outcome, PipelineError> {
        self.stats.started = Some(Instant::now());
        self.metrics.phase(
            if self.snapshot_running {
                "snapshotting"
            } else {
                "streaming"
            },
            "",
        );
        self.metrics.stopped_tables(self.stopped.len() as u64);
        // Housekeeping also runs on an idle pipeline, whose checkpoints stop.
        let mut housekeeping = tokio::time::interval(MAINTENANCE_TICK);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.batcher.deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    info!("shutdown requested: flushing");
                    self.checkpoint(None).await?;
                    return Ok(Outcome::Shutdown);
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.checkpoint(None).await?;
                }
                _ = housekeeping.tick() => {
                    // An acknowledgement not yet written (they are written
                    // at most once a second) is written now, idle or not.
                    self.record_acked_position(false).await?;
                    if self.nothing_pending() && !self.in_transaction {
                        self.sink.maintain().await;
                    }
                }
                event = events.recv() => {
                    // The permit (a block's share of the queue budget) is
                    // released once the block is in the batcher.
                    let (event, _permit) = event.ok_or(PipelineError::SourceGone)?;
                    if self.handle(event?).await? && mode == Mode::SnapshotOnly {
                        return Ok(Outcome::SnapshotComplete);
                    }
                    // Whatever else is already queued goes without another
                    // round through the select (and its timer) per event.
                    // A stop is looked at between events: a burst of
                    // snapshot chunks commits after each, which adds up.
                    for _ in 0..DRAIN_BURST {
                        if shutdown.has_changed().unwrap_or(false) {
                            break;
                        }
                        let Ok((event, _permit)) = events.try_recv() else { break };
                        if self.handle(event?).await? && mode == Mode::SnapshotOnly {
                            return Ok(Outcome::SnapshotComplete);
                        }
                    }
                }
            }
        }
    }

    /// Applies one event; true when the snapshot just completed.
    async fn handle(&mut self, event: ChangeEvent) -> Result<bool, PipelineError> {
        self.stats.events += 1;
        match event {
            ChangeEvent::Begin(commit) => {
                self.in_transaction = true;
                self.current_seq = commit.seq;
                self.begin_position = commit.position.clone();
                self.batcher.begin(commit);
            }
            ChangeEvent::Schema(schema) if self.is_stopped(&schema.table) => {}
            ChangeEvent::Row(row) if self.is_stopped(&row.table) => {}
            ChangeEvent::Block(block) if self.is_stopped(&block.table) => {}
            ChangeEvent::Schema(schema) => {
                // A schema change cuts the table's open batch: its unchanged
                // values must be resolved before it becomes Arrow.
                if self.batcher.unresolved_tables().contains(&schema.table) {
                    self.resolve_unchanged().await?;
                }
                if let Err(err) = self.sink.prepare(&schema).await {
                    return Err(self.sink_failed(err).await);
                }
                if !self.marks.contains_key(&schema.table) {
                    if let Some(mark) = self.sink.mark(&schema.table).await.map_err(sink_error)? {
                        self.marks.insert(schema.table.clone(), mark);
                    }
                }
                if let Some(cut) = self
                    .batcher
                    .set_schema(schema)
                    .map_err(PipelineError::Batch)?
                {
                    self.held.push(cut);
                }
            }
            ChangeEvent::Row(row) => {
                let mark = Mark::new(self.current_seq, row.ord);
                if self
                    .marks
                    .get(&row.table)
                    .is_some_and(|durable| mark <= *durable)
                {
                    self.stats.skipped += 1;
                    return Ok(false);
                }
                self.stats.rows += 1;
                if row.op == tidewater_core::Op::Read {
                    self.progress.row(&row.table);
                }
                self.batcher.push(row).map_err(PipelineError::Batch)?;
                if self.batcher.is_full() {
                    self.checkpoint(None).await?;
                }
            }
            ChangeEvent::Block(block) => {
                // Rows at or below the table's durable mark were committed
                // before a restart: the block's head, or all of it.
                let skip = self
                    .marks
                    .get(&block.table)
                    .map_or(0, |durable| durable_rows(durable, self.current_seq, &block));
                self.stats.skipped += skip as u64;
                if skip == block.len() {
                    return Ok(false);
                }
                let block = if skip > 0 { block.skip(skip) } else { block };
                self.stats.rows += block.len() as u64;
                if block.ops.first() == Some(&tidewater_core::Op::Read) {
                    self.progress.rows(&block.table, block.len() as u64);
                }
                self.batcher
                    .push_block(block)
                    .map_err(PipelineError::Batch)?;
                if self.batcher.is_full() {
                    self.checkpoint(None).await?;
                }
            }
            ChangeEvent::Commit(commit) => {
                self.in_transaction = false;
                self.last_complete = Some((commit.ack, commit.position.clone()));
                self.last_complete_ts_us = commit.commit_ts_us;
                if self.nothing_pending() {
                    // Nothing of this transaction is waiting: it is as durable
                    // as it will ever need to be.
                    self.ack(commit.ack, &commit.position).await?;
                } else if self.batcher.is_full() {
                    self.checkpoint(None).await?;
                }
            }
            ChangeEvent::Heartbeat { ack, position } => {
                self.server_position = self.server_position.max(ack);
                if !self.in_transaction && self.nothing_pending() {
                    self.ack(ack, &position).await?;
                    // Caught up: everything the server sent is durable.
                    self.metrics.lag(0.0, self.lag_bytes());
                }
            }
            ChangeEvent::SnapshotDone { position, .. } => {
                self.progress.finish_all();
                self.metrics.phase("streaming", "");
                self.checkpoint(Some(SnapshotPhase::Done)).await?;
                self.snapshot_running = false;
                let elapsed = self
                    .stats
                    .started
                    .map_or(0.0, |s| s.elapsed().as_secs_f64());
                info!(
                    rows = self.stats.rows,
                    seconds = format!("{elapsed:.1}"),
                    rows_per_second = format!("{:.0}", self.stats.rows as f64 / elapsed.max(1e-3)),
                    position = %position,
                    "snapshot committed"
                );
                return Ok(true);
            }
            ChangeEvent::TableSnapshot { table } => {
                self.sink.table_phase(
                    &table,
                    SnapshotPhase::Running,
                    Mark::new(self.current_seq, 0),
                );
                // What the lake holds of the table (an interrupted copy) is
                // superseded: the copy starts with a truncate.
                if self.marks.contains_key(&table) {
                    self.batcher
                        .push(tidewater_core::RowChange {
                            table: table.clone(),
                            op: tidewater_core::Op::Truncate,
                            ord: 0,
                            values: Vec::new(),
                        })
                        .map_err(PipelineError::Batch)?;
                }
                info!(table = %table, "copying a table while streaming");
            }
            ChangeEvent::TableSnapshotDone { table, seq } => {
                self.progress.finish(&table);
                self.in_transaction = false;
                // The stream's changes of the table up to the copy's point
                // are in the copy.
                self.marks.insert(table.clone(), Mark::new(seq, u64::MAX));
                self.sink
                    .table_phase(&table, SnapshotPhase::Done, Mark::new(seq, 0));
                if self.recorded_stopped.iter().any(|s| s.table == table) {
                    // Copied again: it streams from here on. Its copy's
                    // rows are committed before the record goes.
                    self.checkpoint(None).await?;
                    self.recorded_stopped.retain(|s| s.table != table);
                    self.sink
                        .record_stopped(&self.recorded_stopped)
                        .await
                        .map_err(sink_error)?;
                    info!(table = %table, "stopped table copied again; it streams from now on");
                }
                if self.copies_pending.remove(&table) && self.copies_pending.is_empty() {
                    self.checkpoint(None).await?;
                    info!("the tables to copy are in the lake");
                    return Ok(true);
                }
            }
            ChangeEvent::TableFailed { table, reason } => self.stop_table(table, reason).await?,
            ChangeEvent::Ddl {
                table,
                seq,
                statement,
            } => self.sink.note_ddl(&table, seq, statement),
            ChangeEvent::CopyEstimate { table, rows } => self.progress.start(table, rows),
            ChangeEvent::SnapshotChunk { done, .. } => {
                self.chunk_open = !done;
                // Whole chunks only are committed; commits between them
                // come once a file's worth is staged (or now and then), so
                // a resumed snapshot loses little and files stay large.
                if done
                    && (self.sink.staged_bytes() >= self.snapshot_commit_bytes
                        || self.snapshot_committed_at.elapsed() >= SNAPSHOT_COMMIT_EVERY)
                {
                    self.checkpoint(None).await?;
                }
            }
            ChangeEvent::SourceStatus {
                retained_bytes,
                files_behind,
            } => self.metrics.source_status(retained_bytes, files_behind),
        }
        Ok(false)
    }

    fn is_stopped(&self, table: &TableId) -> bool {
        self.stopped.iter().any(|s| &s.table == table)
    }

    /// Stops `table` only: its held rows are dropped and the stop is
    /// recorded next to the lake before anything later is acknowledged, so
    /// a restart keeps it stopped instead of streaming it with a gap.
    async fn stop_table(&mut self, table: TableId, reason: String) -> Result<(), PipelineError> {
        if self.is_stopped(&table) {
            return Ok(());
        }
        let dropped = self.batcher.discard(&table);
        self.held.retain(|batch| batch.table != table);
        let position = self.begin_position.clone();
        error!(
            table = %table,
            position = %position,
            error = %reason,
            dropped_rows = dropped,
            "table stopped: the other tables go on; fix the cause, then copy it again with \
             `tidewater snapshot --config <file> --table {table}`"
        );
        let stopped = StoppedTable {
            table,
            position,
            reason,
            stopped_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.recorded_stopped.retain(|s| s.table != stopped.table);
        self.recorded_stopped.push(stopped.clone());
        self.stopped.push(stopped);
        self.metrics.stopped_tables(self.stopped.len() as u64);
        self.sink
            .record_stopped(&self.recorded_stopped)
            .await
            .map_err(sink_error)?;
        Ok(())
    }

    /// The error a failed sink write, commit or table set-up ends the
    /// pipeline with. A definite error about one table stops that table
    /// first, recorded (see [`Self::stop_table`]) before anything later is
    /// acknowledged; the pipeline then starts again from the durable marks
    /// without it, as after a transient error. Going back to the marks is
    /// what keeps the other tables exactly once: a failed write or commit
    /// leaves the sink's staged rows of every table undefined (the warehouse
    /// transaction is aborted, a lake commit may have landed for some tables
    /// only), and nothing after the last acknowledgement is acknowledged
    /// until it is committed again. Any other error is the sink's own.
    async fn sink_failed(&mut self, err: K::Error) -> PipelineError {
        let err = SinkFailure::new(err);
        let table = match err.table() {
            // A table stopped already (its stop did not keep the sink from
            // failing on it again) stops the pipeline, never a restart loop.
            Some(table) if err.class() == ErrorClass::Definite && !self.is_stopped(table) => {
                table.clone()
            }
            _ => return PipelineError::Sink(err),
        };
        let reason = stop_reason(&err);
        if let Err(stop) = self.stop_table(table.clone(), reason).await {
            return stop;
        }
        PipelineError::SinkStoppedTable(table)
    }

    /// True when no change is held anywhere short of a lake commit.
    fn nothing_pending(&self) -> bool {
        self.batcher.is_empty() && self.held.is_empty()
    }

    /// WAL bytes between the server's position and the acknowledged one
    /// (Postgres; a binlog position packs file and offset, not a length).
    fn lag_bytes(&self) -> Option<u64> {
        if self.record_position.is_some() {
            return None;
        }
        Some(self.server_position.saturating_sub(self.acked))
    }

    async fn ack(&mut self, value: u64, position: &str) -> Result<(), PipelineError> {
        if value <= self.acked {
            return Ok(());
        }
        self.acked = value;
        self.acknowledger.ack(value);
        if self.record_position.is_some() {
            self.acked_position = Some(position.to_string());
            self.record_acked_position(false).await?;
        }
        Ok(())
    }

    /// Writes the acknowledged position next to the lake, at most once a
    /// second unless `now` (checkpoints and shutdown).
    async fn record_acked_position(&mut self, now: bool) -> Result<(), PipelineError> {
        let Some(file) = &self.record_position else {
            return Ok(());
        };
        let due = now
            || self
                .recorded_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !due {
            return Ok(());
        }
        if let Some(position) = self.acked_position.take() {
            file.write(&position).await?;
            self.recorded_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Cuts, writes and commits every open batch, then acknowledges the last
    /// complete transaction.
    /// Fills the values a source did not resend (`Datum::Unchanged`, from
    /// Postgres' unchanged TOAST columns) with the row's previous image: an
    /// earlier held row with the same key, else the lake's latest image. Held
    /// batches of those tables are committed first, so the lake has every
    /// earlier change.
    async fn resolve_unchanged(&mut self) -> Result<(), PipelineError> {
        let tables = self.batcher.unresolved_tables();
        if tables.is_empty() {
            return Ok(());
        }
        if self.held.iter().any(|b| tables.contains(&b.table)) {
            for batch in std::mem::take(&mut self.held) {
                if let Err(err) = self.sink.write(batch).await {
                    return Err(self.sink_failed(err).await);
                }
            }
            let position = self.commit_position();
            let phase = self.snapshot_running.then_some(SnapshotPhase::Running);
            if let Err(err) = self.sink.commit(&position, phase).await {
                return Err(self.sink_failed(err).await);
            }
        }
        for table in tables {
            let Some(schema) = self.batcher.schema(&table).cloned() else {
                continue;
            };
            let keys = self.batcher.unresolved_keys(&table);
            let previous = self
                .sink
                .latest_rows(&schema, &keys)
                .await
                .map_err(sink_error)?;
            if let Err(column) = self.batcher.resolve_unchanged(&table, previous) {
                let error = PipelineError::UnresolvedToast {
                    table: table.clone(),
                    column,
                };
                self.stop_table(table, error.to_string()).await?;
            }
        }
        Ok(())
    }

    /// The position a commit records: the last complete transaction's.
    fn commit_position(&self) -> String {
        self.last_complete
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.begin_position.clone())
    }

    async fn checkpoint(&mut self, phase: Option<SnapshotPhase>) -> Result<(), PipelineError> {
        self.resolve_unchanged().await?;
        let mut batches = std::mem::take(&mut self.held);
        batches.extend(self.batcher.cut_all().map_err(PipelineError::Batch)?);
        let rows: usize = batches.iter().map(|b| b.batch.num_rows()).sum();
        for batch in batches {
            self.metrics.batch(
                &batch.table.to_string(),
                batch.batch.num_rows() as u64,
                batch.batch.get_array_memory_size() as u64,
            );
            if let Err(err) = self.sink.write(batch).await {
                return Err(self.sink_failed(err).await);
            }
        }
        if self.snapshot_running && self.chunk_open {
            // Written, not committed: a chunk is half received.
            return Ok(());
        }
        if self.snapshot_running {
            self.snapshot_committed_at = Instant::now();
        }
        let phase = phase.or(self.snapshot_running.then_some(SnapshotPhase::Running));
        let position = self.commit_position();
        let started = Instant::now();
        let tables = match self.sink.commit(&position, phase).await {
            Ok(tables) => tables,
            Err(err) => return Err(self.sink_failed(err).await),
        };
        if tables > 0 {
            self.metrics.commit(started.elapsed().as_secs_f64());
            info!(
                tables,
                rows,
                commit_ms = started.elapsed().as_millis() as u64,
                position = %position,
                "checkpoint committed"
            );
        }
        self.metrics.events(std::mem::take(&mut self.stats.events));
        let (done, estimate) = self.progress.totals();
        self.metrics.snapshot_rows(done, estimate);
        if let Some((ack, position)) = self.last_complete.clone() {
            self.ack(ack, &position).await?;
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let lag = (now_us - self.last_complete_ts_us).max(0) as f64 / 1e6;
            self.metrics.lag(lag, self.lag_bytes());
        }
        self.record_acked_position(true).await?;
        if self.nothing_pending() && !self.in_transaction {
            self.sink.maintain().await;
        }
        Ok(())
    }
}

/// How many leading rows of `block` (in the transaction `seq`) are at or
/// below `durable`.
fn durable_rows(durable: &Mark, seq: u64, block: &tidewater_core::RowBlock) -> usize {
    match seq.cmp(&durable.seq) {
        std::cmp::Ordering::Less => block.len(),
        std::cmp::Ordering::Greater => 0,
        std::cmp::Ordering::Equal if durable.ord < block.first_ord => 0,
        std::cmp::Ordering::Equal => usize::try_from(durable.ord - block.first_ord + 1)
            .map_or(block.len(), |n| n.min(block.len())),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_plan_reads_back_and_a_damaged_one_says_where() {
        let resume = SnapshotResume {
            consistent_point: 42,
            plan: vec![PlannedTable {
                table: TableId::new("public", "orders"),
                chunk_pages: 128,
                chunks: 3,
            }],
            chunks_done: HashMap::new(),
        };
        let text = plan_json("tidewater_p", &resume);
        let (slot, back) = parse_plan(&text).unwrap();
        assert_eq!(slot, "tidewater_p");
        assert_eq!(back.consistent_point, 42);
        assert_eq!(back.plan, resume.plan);
        // Truncated: where, not what it held.
        let cut = &text[..text.find("orders").unwrap() + 3];
        let problem = parse_plan(cut).unwrap_err();
        assert!(problem.starts_with("it ends too early"), "{problem}");
        assert!(problem.contains(" at line "), "{problem}");
        assert!(!problem.contains("ord"), "{problem}");
        // A chunk count out of range is not read as some other number.
        let wrong = text.replace("\"chunks\": 3", "\"chunks\": -3");
        let problem = parse_plan(&wrong).unwrap_err();
        assert!(problem.contains("not the structure"), "{problem}");
    }

    fn block(first_ord: u64, len: usize) -> tidewater_core::RowBlock {
        tidewater_core::RowBlock {
            table: TableId::new("d", "t"),
            ops: vec![tidewater_core::Op::Insert; len],
            first_ord,
            columns: Vec::new(),
        }
    }

    #[test]
    fn a_sink_stop_reason_keeps_the_chain_and_drops_row_details() {
        #[derive(Debug, thiserror::Error)]
        #[error("ERROR: new row violates check constraint \"small\"\nDETAIL: Failing row contains (2, 987654).")]
        struct Db;
        #[derive(Debug, thiserror::Error)]
        #[error("applying a batch of public.bad")]
        struct Step(#[source] Db);
        let reason = stop_reason(&Step(Db));
        assert_eq!(
            reason,
            "applying a batch of public.bad: ERROR: new row violates check constraint \"small\""
        );
    }

    #[test]
    fn durable_heads_of_blocks() {
        let durable = Mark::new(10, 5);
        assert_eq!(durable_rows(&durable, 9, &block(1, 3)), 3);
        assert_eq!(durable_rows(&durable, 11, &block(1, 3)), 0);
        assert_eq!(durable_rows(&durable, 10, &block(6, 3)), 0);
        assert_eq!(durable_rows(&durable, 10, &block(4, 3)), 2);
        assert_eq!(durable_rows(&durable, 10, &block(1, 3)), 3);
    }
}
