//! The checkpoint coordinator: source events in, durable lake commits out,
//! acknowledgements back — always in that order.
//!
//! ```text
//!  source task ──(bounded channel: backpressure)──▶ coordinator ──▶ Batcher
//!       ▲                                               │ full / flush_interval / snapshot done
//!       │                                               ▼
//!       └── ack(seq) ◀── after commit ◀── LakeSink.write(batches) + commit(position)
//! ```
//!
//! A checkpoint cuts every open batch, writes and commits each table (the data
//! and its mark in one Delta commit), and only then acknowledges the last
//! *complete* source transaction. A cut inside a large transaction commits its
//! rows (their marks protect against duplicates) but acknowledges only the
//! transaction before it. On start, every table's committed mark is read back
//! and every change at or below it is skipped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tidewater_core::{
    BatchLimits, Batcher, ChangeEvent, Classified, ErrorClass, Mark, Problem, Sink, SnapshotPhase,
    Source, TableId,
};
use tidewater_lake::{LakeSink, SlotMarker, TableState};
use tidewater_postgres::{Lsn, PostgresConfig, PostgresError, PostgresSource, TableFilter};
use tokio::sync::{mpsc, watch};
use tracing::{info, info_span, warn, Instrument};

use crate::config::{Config, SinkConfig, SnapshotMode, SourceConfig};

/// Events buffered between the source task and the coordinator.
const EVENT_CHANNEL_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] PostgresError),
    #[error(transparent)]
    Sink(SinkFailure),
    #[error("building a batch")]
    Batch(#[source] tidewater_core::ArrowError),
    #[error("the source server is not ready for replication:\n{}", format_problems(.0))]
    Preflight(Vec<Problem>),
    #[error("the source task stopped unexpectedly")]
    SourceGone,
    #[error(
        "tables {} are not in the lake, and a snapshot of single tables while streaming is not supported yet\n\
         hint: exclude them from source.tables, or start a new pipeline to snapshot everything",
        .0.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
    )]
    SnapshotImpossible(Vec<TableId>),
}

impl PipelineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Source(err) => err.class(),
            PipelineError::Sink(err) => err.class,
            PipelineError::Batch(_) => ErrorClass::Internal,
            PipelineError::Preflight(_) => ErrorClass::Config,
            PipelineError::SourceGone => ErrorClass::Internal,
            PipelineError::SnapshotImpossible(_) => ErrorClass::Config,
        }
    }
}

/// A sink's error, whatever its type, with its class kept for the policy.
#[derive(Debug)]
pub struct SinkFailure {
    class: ErrorClass,
    error: Box<dyn std::error::Error + Send + Sync>,
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
    PipelineError::Sink(SinkFailure {
        class: err.class(),
        error: Box::new(err),
    })
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

pub struct Settings {
    pub pipeline: String,
    pub source: PostgresConfig,
    pub snapshot: SnapshotMode,
    pub lake_root: PathBuf,
    pub limits: BatchLimits,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let SourceConfig::Postgres(pg) = &config.source;
        let SinkConfig::Lake(lake) = &config.sink;
        let (slot, publication) = PostgresConfig::names_for(&config.pipeline.name);
        Settings {
            pipeline: config.pipeline.name.clone(),
            source: PostgresConfig {
                url: pg.url.expose().to_string(),
                filter: TableFilter {
                    include: pg.tables.clone(),
                    exclude: pg.exclude.clone(),
                },
                slot: pg.slot_name.clone().unwrap_or(slot),
                publication: pg.publication.clone().unwrap_or(publication),
                application_name: format!("tidewater:{}", config.pipeline.name),
            },
            snapshot: pg.snapshot,
            lake_root: lake.root(),
            limits: BatchLimits {
                max_rows: lake.max_batch_rows,
                max_bytes: lake.max_batch_bytes,
                max_delay: Duration::from_millis(lake.flush_interval_ms),
            },
        }
    }
}

/// One run of the pipeline, from connecting to shutdown or error. The caller
/// retries transient errors by calling it again: every start re-reads the
/// durable marks, so a retry is the same as a restart after a crash.
pub async fn run(
    settings: &Settings,
    mode: Mode,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, PipelineError> {
    let mut source = PostgresSource::connect(settings.source.clone()).await?;
    let tables = source.tables().await?;
    let problems = tidewater_postgres::preflight(source.client(), source.config(), &tables).await?;
    if !problems.is_empty() {
        return Err(PipelineError::Preflight(problems));
    }
    let mut sink = LakeSink::new(&settings.lake_root, &settings.pipeline);
    let slot = source.slot_state().await?;
    if let Some(slot) = &slot {
        if !slot.ours {
            return Err(PostgresError::SlotForeign {
                slot: settings.source.slot.clone(),
                detail: slot.owner.clone(),
            }
            .into());
        }
        if let Some(pid) = slot.active_pid {
            return Err(PostgresError::SlotBusy {
                slot: settings.source.slot.clone(),
                pid,
            }
            .into());
        }
    }
    // Every table this pipeline has in the lake, matched by the config or not.
    let mut states: HashMap<TableId, TableState> = HashMap::new();
    for table in sink.existing_tables() {
        if let Some(state) = sink.table_state(&table).await? {
            states.insert(table, state);
        }
    }
    let any_done = states.values().any(|s| s.snapshot_done);
    let marker = sink.marker();
    // The marker is written before a snapshot creates its slot and flips to
    // "stream" only once the snapshot is committed in every table; a table
    // still marked "running" says the same. Either way nothing has been
    // streamed yet, and the exported snapshot died with the process.
    let interrupted = matches!(marker, Some(SlotMarker::Snapshot(_)))
        || states.values().any(|s| !s.snapshot_done);
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
                slot: settings.source.slot.clone(),
                position: position.unwrap_or_else(|| "its start".into()),
            }
            .into());
        }
        (None, false, _) => false,
        (Some(slot), false, _) if slot.wal_status.as_deref() == Some("lost") => {
            return Err(PostgresError::SlotInvalidated {
                slot: settings.source.slot.clone(),
            }
            .into());
        }
        (Some(_), false, _) if owned => true,
        // A slot with our name that this lake never recorded: another
        // deployment's, or a leftover. Never adopt or drop it blindly.
        (Some(_), false, _) => {
            return Err(PostgresError::SlotWithoutLake {
                slot: settings.source.slot.clone(),
            }
            .into());
        }
    };

    if stream {
        if let Some(SlotMarker::Snapshot(slot)) = &marker {
            sink.write_marker(&SlotMarker::Stream(slot.clone()))?;
        }
        let missing: Vec<TableId> = tables
            .iter()
            .filter(|t| !states.get(*t).is_some_and(|s| s.snapshot_done))
            .cloned()
            .collect();
        if mode == Mode::SnapshotOnly {
            if settings.snapshot == SnapshotMode::Never || missing.is_empty() {
                return Ok(Outcome::AlreadySnapshotted);
            }
            return Err(PipelineError::SnapshotImpossible(missing));
        }
        if settings.snapshot == SnapshotMode::Initial {
            for table in &missing {
                warn!(table = %table, "table is not in the lake and was not part of the initial snapshot; only changes published for it are replicated");
            }
        }
        source.start_streaming(&tables).await?;
    } else {
        if interrupted {
            warn!("the previous initial snapshot did not complete; removing what it wrote and starting over");
        }
        // Marker first, so a crash anywhere below still reads as an
        // interrupted snapshot; then every table this pipeline has in the lake
        // (with a commit or not), then the old slot.
        sink.write_marker(&SlotMarker::Snapshot(settings.source.slot.clone()))?;
        for table in sink.existing_tables() {
            warn!(table = %table, "removing a partial snapshot from the lake");
            sink.remove_table(&table)?;
        }
        states.clear();
        if slot.is_some() {
            source.drop_slot().await?;
        }
        let copy = settings.snapshot == SnapshotMode::Initial;
        info!(tables = tables.len(), copy, "starting consistent snapshot");
        source.start_snapshot(tables.clone(), copy).await?;
    }
    let streamed_before = stream;

    let marks: HashMap<TableId, Mark> = states.iter().map(|(t, s)| (t.clone(), s.mark)).collect();
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let source_task = tokio::spawn(
        source_loop(source, event_tx, ack_rx, stop_rx).instrument(info_span!("postgres-source")),
    );

    let mut coordinator = Coordinator {
        sink,
        batcher: Batcher::new(settings.limits),
        held: Vec::new(),
        marks,
        ack_tx,
        in_transaction: false,
        current_seq: 0,
        begin_position: String::new(),
        last_complete: None,
        snapshot_running: !streamed_before,
        stats: Stats::default(),
    };
    let result = coordinator.drive(event_rx, &mut shutdown, mode).await;
    let _ = stop_tx.send(true);
    let _ = source_task.await;
    result
}

/// Reads events from the source and applies acknowledgements. It is the only
/// owner of the source, and never cancels `next_event` except at shutdown, so
/// no event is lost halfway through decoding.
async fn source_loop(
    mut source: PostgresSource,
    events: mpsc::Sender<Result<ChangeEvent, PostgresError>>,
    mut acks: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.changed() => break,
            event = Source::next_event(&mut source) => event,
        };
        Source::ack(&mut source, *acks.borrow_and_update());
        let failed = event.is_err();
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            sent = events.send(event) => if sent.is_err() || failed { break },
        }
    }
    Source::ack(&mut source, *acks.borrow());
    source.close().await;
}

#[derive(Default)]
struct Stats {
    rows: u64,
    skipped: u64,
    started: Option<Instant>,
}

/// Drives one sink through the [`Sink`] contract.
struct Coordinator<K> {
    sink: K,
    batcher: Batcher,
    /// Batches cut early (by a schema change), written at the next checkpoint.
    held: Vec<tidewater_core::ChangeBatch>,
    marks: HashMap<TableId, Mark>,
    ack_tx: watch::Sender<u64>,
    in_transaction: bool,
    current_seq: u64,
    begin_position: String,
    /// (ack value, position) of the last transaction whose rows are all in the
    /// batcher.
    last_complete: Option<(u64, String)>,
    snapshot_running: bool,
    stats: Stats,
}

impl<K: Sink> Coordinator<K> {
    async fn drive(
        &mut self,
        mut events: mpsc::Receiver<Result<ChangeEvent, PostgresError>>,
        shutdown: &mut watch::Receiver<bool>,
        mode: Mode,
    ) -> Result<Outcome, PipelineError> {
        self.stats.started = Some(Instant::now());
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
                event = events.recv() => {
                    let event = event.ok_or(PipelineError::SourceGone)??;
                    if self.handle(event).await? && mode == Mode::SnapshotOnly {
                        return Ok(Outcome::SnapshotComplete);
                    }
                }
            }
        }
    }

    /// Applies one event; true when the snapshot just completed.
    async fn handle(&mut self, event: ChangeEvent) -> Result<bool, PipelineError> {
        match event {
            ChangeEvent::Begin(commit) => {
                self.in_transaction = true;
                self.current_seq = commit.seq;
                self.begin_position = commit.position.clone();
                self.batcher.begin(commit);
            }
            ChangeEvent::Schema(schema) => {
                self.sink.prepare(&schema).await.map_err(sink_error)?;
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
                self.batcher.push(row).map_err(PipelineError::Batch)?;
                if self.batcher.is_full() {
                    self.checkpoint(None).await?;
                }
            }
            ChangeEvent::Commit(commit) => {
                self.in_transaction = false;
                self.last_complete = Some((commit.ack, commit.position));
                if self.nothing_pending() {
                    // Nothing of this transaction is waiting: it is as durable
                    // as it will ever need to be.
                    self.ack(commit.ack);
                } else if self.batcher.is_full() {
                    self.checkpoint(None).await?;
                }
            }
            ChangeEvent::Heartbeat { ack, .. } => {
                if !self.in_transaction && self.nothing_pending() {
                    self.ack(ack);
                }
            }
            ChangeEvent::SnapshotDone { position, .. } => {
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
        }
        Ok(false)
    }

    /// True when no change is held anywhere short of a lake commit.
    fn nothing_pending(&self) -> bool {
        self.batcher.is_empty() && self.held.is_empty()
    }

    fn ack(&mut self, value: u64) {
        self.ack_tx.send_if_modified(|acked| {
            if value > *acked {
                *acked = value;
                true
            } else {
                false
            }
        });
    }

    /// Cuts, writes and commits every open batch, then acknowledges the last
    /// complete transaction.
    async fn checkpoint(&mut self, phase: Option<SnapshotPhase>) -> Result<(), PipelineError> {
        let mut batches = std::mem::take(&mut self.held);
        batches.extend(self.batcher.cut_all().map_err(PipelineError::Batch)?);
        let rows: usize = batches.iter().map(|b| b.batch.num_rows()).sum();
        for batch in batches {
            self.sink.write(batch).await.map_err(sink_error)?;
        }
        let phase = phase.or(self.snapshot_running.then_some(SnapshotPhase::Running));
        let position = self
            .last_complete
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.begin_position.clone());
        let started = Instant::now();
        let tables = self
            .sink
            .commit(&position, phase)
            .await
            .map_err(sink_error)?;
        if tables > 0 {
            info!(
                tables,
                rows,
                commit_ms = started.elapsed().as_millis() as u64,
                position = %position,
                "checkpoint committed"
            );
        }
        if let Some((ack, _)) = &self.last_complete {
            let ack = *ack;
            self.ack(ack);
        }
        Ok(())
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
