//! The checkpoint coordinator: source events in, durable commits out,
//! acknowledgements back — always in that order.
//!
//! ```text
//!  source task ──(bounded channel: backpressure)──▶ coordinator ──▶ Batcher
//!       ▲                                               │ full / flush_interval / snapshot done
//!       │                                               ▼
//!       └── acknowledger.ack(pos) ◀── after commit ◀── Sink.write(batches) + commit(position)
//! ```
//!
//! The coordinator holds the source's acknowledger itself: an
//! acknowledgement reaches the server without waiting for the source's next
//! event (an idle database sends none).
//!
//! A checkpoint cuts every open batch, writes and commits each table (the data
//! and its mark in one commit), and only then acknowledges the last
//! *complete* source transaction. A cut inside a large transaction commits its
//! rows (their marks protect against duplicates) but acknowledges only the
//! transaction before it. On start, every table's committed mark is read back
//! and every change at or below it is skipped.
//!
//! Invariants (tested in `tests` below with a scripted feed and a real lake):
//! nothing is acknowledged before its commit; nothing is committed inside an
//! open snapshot chunk; a table's stop is recorded before anything after it
//! is acknowledged; replays are skipped exactly at the mark.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tidewater_core::state::{Phase, SourcePosition, StateStore, StoppedTables};
use tidewater_core::{
    Acknowledger, Batcher, ChangeEvent, Classified, ErrorClass, Mark, Sink, SnapshotPhase, Source,
    StoppedTable, TableId,
};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, info_span, warn, Instrument};

use super::error::{sink_error, stop_reason, SinkFailure};
use super::progress::CopyProgress;
use super::requests::Requests;
use super::source_task::{source_loop, Queued, EVENT_CHANNEL_CAPACITY};
use super::{Mode, Outcome, PipelineError, Settings};

/// How often an idle coordinator lets the sink do its housekeeping (the sink
/// keeps its own, longer intervals).
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);

/// Events the coordinator takes from the channel in one go before it looks
/// at shutdown and the flush timer again.
const DRAIN_BURST: usize = 1024;

/// At most this long between commits of a snapshot (at chunk ends).
const SNAPSHOT_COMMIT_EVERY: Duration = Duration::from_secs(30);

/// What the source does first.
pub(super) struct DriveStart {
    /// The initial snapshot.
    pub snapshot_running: bool,
    /// Copies of single tables, taken while the others stream.
    pub copies: Vec<TableId>,
    /// Tables an earlier run stopped, minus those copied again now.
    pub stopped: Vec<StoppedTable>,
    /// The stopped tables as recorded.
    pub recorded_stopped: Vec<StoppedTable>,
    /// The phase as recorded now (it flips to `stream` when the snapshot
    /// is committed).
    pub phase: Option<Phase>,
    /// Record acknowledged positions in the state store (sources without
    /// server-side replica state).
    pub record_position: bool,
}

/// What the coordinator is tuned by (from [`Settings`]).
pub(super) struct Tuning {
    pub limits: tidewater_core::BatchLimits,
    /// Between chunks, the snapshot commits once this much is staged.
    pub snapshot_commit_bytes: u64,
    pub metrics: crate::metrics::Metrics,
    pub lineage: crate::lineage::Lineage,
}

impl Tuning {
    fn of(settings: &Settings) -> Tuning {
        Tuning {
            limits: settings.limits,
            snapshot_commit_bytes: settings.snapshot_commit_bytes,
            metrics: settings.metrics.clone(),
            lineage: settings.lineage.clone(),
        }
    }
}

/// Runs the source task and the coordinator until shutdown or error.
#[allow(clippy::too_many_arguments)] // one caller per source, each naming every part
pub(super) async fn drive<Src, K, S>(
    settings: &Settings,
    source: Src,
    sink: K,
    state: S,
    marks: HashMap<TableId, Mark>,
    start: DriveStart,
    mode: Mode,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, PipelineError>
where
    Src: Source + Send + 'static,
    Src::Error: Send + 'static,
    PipelineError: From<Src::Error>,
    K: Sink,
    S: StateStore,
{
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let acknowledger = source.acknowledger();
    let requests = Requests::new(
        source.copy_requests(),
        settings.signal_table.clone(),
        Some(settings.source.filter().clone()),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let span = match &settings.source {
        super::SourceSettings::Postgres(_) => info_span!("postgres-source"),
        super::SourceSettings::Mysql(_) => info_span!("mysql-source"),
    };
    let source_task = tokio::spawn(
        source_loop(source, settings.masking.clone(), event_tx, stop_rx).instrument(span),
    );
    let mut coordinator = Coordinator::new(
        Tuning::of(settings),
        sink,
        state,
        marks,
        start,
        acknowledger,
    );
    coordinator.requests = requests;
    let result = coordinator.drive(event_rx, &mut shutdown, mode).await;
    if result.is_ok() {
        coordinator.record_acked_position(true).await?;
    }
    let _ = stop_tx.send(true);
    let _ = source_task.await;
    result
}

#[derive(Default)]
struct Stats {
    rows: u64,
    skipped: u64,
    started: Option<Instant>,
    /// Events since the last report to the metrics.
    events: u64,
}

/// Drives one sink through the [`Sink`] contract, keeping the pipeline's
/// records in `state`.
pub(super) struct Coordinator<K, S, A> {
    sink: K,
    state: S,
    /// The phase as recorded.
    phase: Option<Phase>,
    batcher: Batcher,
    /// Batches cut early (by a schema change), written at the next checkpoint.
    held: Vec<tidewater_core::ChangeBatch>,
    marks: HashMap<TableId, Mark>,
    /// Tells the source's server what is durable, at once.
    acknowledger: A,
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
    lineage: crate::lineage::Lineage,
    /// Tables written since the last commit, for lineage.
    lineage_pending: Vec<(std::sync::Arc<tidewater_core::TableSchema>, u64)>,
    /// Source commit time of the last complete transaction (µs).
    last_complete_ts_us: i64,
    /// The server's log position as its heartbeats last said (Postgres: WAL end).
    server_position: u64,
    /// Acknowledged positions are written to `state` (sources without
    /// server-side replica state).
    record_position: bool,
    acked_position: Option<String>,
    recorded_at: Option<Instant>,
    /// Copies asked for while streaming (see [`super::requests`]).
    requests: Requests,
    /// When the record of erasures asked for was last read.
    erasures_polled: Option<Instant>,
}

impl<K: Sink, S: StateStore, A: Acknowledger> Coordinator<K, S, A> {
    pub(super) fn new(
        tuning: Tuning,
        sink: K,
        state: S,
        marks: HashMap<TableId, Mark>,
        start: DriveStart,
        acknowledger: A,
    ) -> Self {
        Coordinator {
            sink,
            state,
            phase: start.phase,
            batcher: Batcher::new(tuning.limits),
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
            metrics: tuning.metrics,
            lineage: tuning.lineage,
            lineage_pending: Vec::new(),
            last_complete_ts_us: 0,
            server_position: 0,
            record_position: start.record_position,
            acked_position: None,
            recorded_at: None,
            chunk_open: false,
            snapshot_commit_bytes: tuning.snapshot_commit_bytes,
            snapshot_committed_at: Instant::now(),
            requests: Requests::none(),
            erasures_polled: None,
        }
    }

    pub(super) async fn drive(
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
        if self.snapshot_running {
            self.lineage.snapshot_started();
        }
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
                        self.erase_requested().await;
                    }
                    self.poll_requests().await;
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
    /// The column names of `table`'s current schema.
    fn column_names(&self, table: &TableId) -> Vec<String> {
        self.batcher
            .schema(table)
            .map(|s| s.columns.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Copies asked for from the command line, handed to the source. A
    /// stopped table asked for streams again once copied.
    pub(super) async fn poll_requests(&mut self) {
        for table in self.requests.poll(&self.state).await {
            self.stopped.retain(|s| s.table != table);
        }
    }

    /// Erasures asked for (`tidewater forget`), done between commits, each
    /// moved to the audit record with what it removed (or why it failed:
    /// the command that asked prints it; asking again retries). A record
    /// that cannot be read or written now (a store that does not answer)
    /// is tried again at the next poll: an erasure is never dropped, and
    /// the stream is never stopped for one.
    async fn erase_requested(&mut self) {
        const POLL: Duration = Duration::from_secs(2);
        if self.erasures_polled.is_some_and(|at| at.elapsed() < POLL) {
            return;
        }
        self.erasures_polled = Some(Instant::now());
        if let Err(err) = self.erase_recorded().await {
            warn!(error = %tidewater_core::error_chain(&err), "the erasure records do not read or write; erasures asked for wait for the next try");
        }
    }

    async fn erase_recorded(&mut self) -> Result<(), SinkFailure> {
        const POLL_WAIT: Duration = Duration::from_millis(500);
        use tidewater_core::state::{Erasure, Erasures, ForgetRequests};
        // The poll never holds the stream up: a store slow to answer is
        // asked again at the next poll.
        let Ok(asked) = tokio::time::timeout(POLL_WAIT, self.state.read::<ForgetRequests>()).await
        else {
            return Ok(());
        };
        let asked = asked.map_err(SinkFailure::new)?.unwrap_or_default();
        for request in asked.requests {
            let table = TableId::new(&request.schema, &request.table);
            let keys: std::collections::HashSet<u128> = request
                .keys
                .iter()
                .filter_map(|k| u128::from_str_radix(k, 16).ok())
                .collect();
            let (outcome, erased) = match self.sink.forget(&table, &keys).await {
                Ok(Some(erased)) => ("erased".to_string(), erased),
                Ok(None) => (
                    "failed: this sink cannot erase rows (tidewater forget works on Delta lakes \
                     and warehouses)"
                        .to_string(),
                    Default::default(),
                ),
                Err(err) => {
                    warn!(table = %table, error = %tidewater_core::error_chain(&err), "an erasure failed");
                    (
                        format!("failed: {}", tidewater_core::error_chain(&err)),
                        Default::default(),
                    )
                }
            };
            // The audit first, then the request goes: a crash between the
            // two does the (idempotent) erasure once more.
            let mut audit = self
                .state
                .read::<Erasures>()
                .await
                .map_err(SinkFailure::new)?
                .unwrap_or_default();
            audit.erasures.push(Erasure {
                id: request.id.clone(),
                schema: request.schema.clone(),
                table: request.table.clone(),
                key_hashes: request.key_hashes.clone(),
                requested_at: request.requested_at.clone(),
                done_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                outcome,
                changelog_rows: erased.log_rows,
                current_rows: erased.current_rows,
                files_rewritten: erased.files_rewritten as u64,
                log_entries_deleted: erased.log_entries_deleted as u64,
            });
            self.state.write(&audit).await.map_err(SinkFailure::new)?;
            // Asked for meanwhile: kept for the next poll.
            let mut left = self
                .state
                .read::<ForgetRequests>()
                .await
                .map_err(SinkFailure::new)?
                .unwrap_or_default();
            left.requests.retain(|r| r.id != request.id);
            self.state.write(&left).await.map_err(SinkFailure::new)?;
        }
        Ok(())
    }

    /// Copies a signal row asks for: recorded before the row can commit.
    async fn ask(&mut self, tables: Vec<TableId>) -> Result<(), PipelineError> {
        if tables.is_empty() {
            return Ok(());
        }
        self.requests
            .ask(&self.state, tables.clone())
            .await
            .map_err(sink_error)?;
        for table in tables {
            self.stopped.retain(|s| s.table != table);
        }
        Ok(())
    }

    pub(super) async fn handle(&mut self, event: ChangeEvent) -> Result<bool, PipelineError> {
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
                if row
                    .values
                    .iter()
                    .any(|v| matches!(v, tidewater_core::Datum::Unchanged))
                {
                    // The row's previous image may be in a block (a copy's
                    // rows) the restore cannot read: committed first.
                    if let Some(cut) = self
                        .batcher
                        .cut_if_blocks(&row.table)
                        .map_err(PipelineError::Batch)?
                    {
                        self.held.push(cut);
                    }
                }
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
                let asked = self
                    .requests
                    .signalled_by_row(&row, &self.column_names(&row.table));
                self.ask(asked).await?;
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
                let asked = self
                    .requests
                    .signalled_by_block(&block, &self.column_names(&block.table));
                self.ask(asked).await?;
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
                self.lineage.snapshot_done();
                // Committed in every table: a restart streams from here.
                if let Some(Phase::Snapshot { slot }) = &self.phase {
                    let streaming = Phase::Stream { slot: slot.clone() };
                    self.state.write(&streaming).await.map_err(sink_error)?;
                    self.phase = Some(streaming);
                }
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
            ChangeEvent::TableSnapshot { table } if self.is_stopped(&table) => {}
            ChangeEvent::TableSnapshotDone { table, .. } if self.is_stopped(&table) => {
                // Stopped while being copied: it stays stopped.
                if self.copies_pending.remove(&table) && self.copies_pending.is_empty() {
                    self.checkpoint(None).await?;
                    return Ok(true);
                }
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
                self.requests
                    .done(&self.state, &table)
                    .await
                    .map_err(sink_error)?;
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
                    self.state
                        .write(&StoppedTables(self.recorded_stopped.clone()))
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
        self.state
            .write(&StoppedTables(self.recorded_stopped.clone()))
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
        if self.record_position {
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
        if self.record_position {
            self.acked_position = Some(position.to_string());
            self.record_acked_position(false).await?;
        }
        Ok(())
    }

    /// Writes the acknowledged position next to the lake, at most once a
    /// second unless `now` (checkpoints and shutdown).
    pub(super) async fn record_acked_position(&mut self, now: bool) -> Result<(), PipelineError> {
        if !self.record_position {
            return Ok(());
        }
        let due = now
            || self
                .recorded_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !due {
            return Ok(());
        }
        if let Some(position) = self.acked_position.take() {
            self.state
                .write(&SourcePosition { position })
                .await
                .map_err(sink_error)?;
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

    pub(super) async fn checkpoint(
        &mut self,
        phase: Option<SnapshotPhase>,
    ) -> Result<(), PipelineError> {
        self.resolve_unchanged().await?;
        let mut batches = std::mem::take(&mut self.held);
        batches.extend(self.batcher.cut_all().map_err(PipelineError::Batch)?);
        let rows: usize = batches.iter().map(|b| b.batch.num_rows()).sum();
        let written: Vec<(std::sync::Arc<tidewater_core::TableSchema>, u64)> = batches
            .iter()
            .map(|b| (b.schema.clone(), b.batch.num_rows() as u64))
            .collect();
        self.lineage_pending.extend(written);
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
        self.lineage
            .committed(std::mem::take(&mut self.lineage_pending));
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
            if tables > 0 {
                self.metrics.transaction_latency(lag);
            }
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

    fn block(first_ord: u64, len: usize) -> tidewater_core::RowBlock {
        tidewater_core::RowBlock {
            table: TableId::new("d", "t"),
            ops: vec![tidewater_core::Op::Insert; len],
            first_ord,
            columns: Vec::new(),
        }
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
