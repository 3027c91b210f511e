//! Carrying out a start: connect and check the source, read the records
//! back (upgrading any an earlier release wrote), gather the facts for
//! [`start::decide`], then do what it decided and hand over to the
//! coordinator.
//!
//! Order matters where a crash can fall between two steps: a fresh snapshot
//! records its phase before it removes anything or creates its slot, so a
//! crash anywhere after reads as an interrupted snapshot; a snapshot's plan
//! is recorded before its first commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tidewater_core::state::{
    Phase, PlannedChunks, SnapshotPlan, SourcePosition, StateStore, StoppedTables, TableStates,
};
use tidewater_core::{Classified, Datum, ErrorClass, Mark, StoppedTable, TableId};
use tidewater_mysql::{BinlogPosition, MysqlConfig, MysqlSource};
use tidewater_postgres::{PostgresConfig, PostgresSource, SnapshotResume};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::coordinator::{drive, DriveStart};
use super::error::sink_error;
use super::source_task::AnySource;
use super::start::{self, Asked, Recorded, Resume, SlotFacts, SourceFacts, StartPlan};
use super::{Mode, Outcome, PipelineError, Settings};
use crate::sink::{AnySink, AnyState};

pub(super) async fn postgres(
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
    let state = sink.state();
    let recorded = read_recorded(&mut sink, &state, false).await?;
    let slot = source.slot_state().await?;
    let facts = SourceFacts::Postgres {
        slot_name: config.slot.clone(),
        slot: slot.map(|s| SlotFacts {
            ours: s.ours,
            owner: s.owner,
            active_pid: s.active_pid,
            lost: s.wal_status.as_deref() == Some("lost"),
            confirmed_flush: s.confirmed_flush.map(|l| l.0),
        }),
    };
    let asked = Asked {
        snapshot: settings.snapshot,
        recopy: &settings.recopy,
        mode,
    };
    let mut marks = marks_of(&recorded.tables);
    let begin = match start::decide(&facts, &tables, &recorded, asked)? {
        StartPlan::AlreadySnapshotted => return Ok(Outcome::AlreadySnapshotted),
        StartPlan::Stream(stream) => {
            if let Some(phase) = &stream.phase {
                state.write(phase).await.map_err(sink_error)?;
            }
            log_stopped(&stream.stopped);
            log_copies(&stream.copies);
            source.set_stopped(stream.stopped.iter().map(|s| s.table.clone()));
            source
                .start_streaming(&stream.streamed, &stream.copies)
                .await?;
            DriveStart {
                snapshot_running: false,
                phase: stream.phase.or(recorded.phase),
                copies: stream.copies,
                stopped: stream.stopped,
                recorded_stopped: stream.recorded_stopped,
                record_position: false,
            }
        }
        StartPlan::Snapshot(snapshot) => {
            let phase = Phase::Snapshot {
                slot: Some(config.slot.clone()),
            };
            if let Some(Resume::Postgres(resume)) = snapshot.resume {
                let plan = source
                    .resume_snapshot(tables.clone(), resume.clone())
                    .await?;
                let resumed = SnapshotResume { plan, ..resume };
                state
                    .write(&plan_record(&config.slot, &resumed))
                    .await
                    .map_err(sink_error)?;
            } else {
                start_over(&mut sink, &state, &phase, snapshot.interrupted).await?;
                marks.clear();
                if snapshot.drop_slot {
                    source.drop_slot().await?;
                }
                info!(
                    tables = tables.len(),
                    copy = snapshot.copy,
                    "starting consistent snapshot"
                );
                let started = source.start_snapshot(tables.clone(), snapshot.copy).await?;
                state
                    .write(&plan_record(&config.slot, &started))
                    .await
                    .map_err(sink_error)?;
            }
            DriveStart {
                snapshot_running: true,
                phase: Some(phase),
                copies: Vec::new(),
                stopped: Vec::new(),
                recorded_stopped: Vec::new(),
                record_position: false,
            }
        }
    };
    started.store(true, Ordering::SeqCst);
    drive(
        settings,
        AnySource::Postgres(Box::new(source)),
        sink,
        state,
        marks,
        begin,
        mode,
        shutdown,
    )
    .await
}

pub(super) async fn mysql(
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
    let state = sink.state();
    let recorded = read_recorded(&mut sink, &state, true).await?;
    let asked = Asked {
        snapshot: settings.snapshot,
        recopy: &settings.recopy,
        mode,
    };
    let mut marks = marks_of(&recorded.tables);
    let begin = match start::decide(&SourceFacts::Mysql, &tables, &recorded, asked)? {
        StartPlan::AlreadySnapshotted => return Ok(Outcome::AlreadySnapshotted),
        StartPlan::Stream(stream) => {
            let from = match stream.from {
                Some(from) => from,
                // snapshot = never on a fresh destination: the server's
                // current position.
                None => source.current_position().await?,
            };
            if let Some(phase) = &stream.phase {
                state.write(phase).await.map_err(sink_error)?;
            }
            log_stopped(&stream.stopped);
            log_copies(&stream.copies);
            source.queue_copies(&stream.copies);
            source.set_stopped(stream.stopped.iter().map(|s| s.table.clone()));
            source.start_streaming(&stream.streamed, from).await?;
            DriveStart {
                snapshot_running: false,
                phase: stream.phase.or(recorded.phase),
                copies: stream.copies,
                stopped: stream.stopped,
                recorded_stopped: stream.recorded_stopped,
                record_position: true,
            }
        }
        StartPlan::Snapshot(snapshot) => {
            let phase = Phase::Snapshot { slot: None };
            let resumed = match snapshot.resume {
                Some(Resume::Mysql { from }) => {
                    mysql_resume_keys(&mut sink, &mut source, &recorded.tables, from).await?
                }
                _ => None,
            };
            if let Some((from, resume)) = resumed {
                source.resume_snapshot(tables.clone(), from, resume).await?;
            } else {
                start_over(&mut sink, &state, &phase, snapshot.interrupted).await?;
                marks.clear();
                info!(
                    tables = tables.len(),
                    copy = snapshot.copy,
                    "starting consistent snapshot"
                );
                source.start_snapshot(tables.clone(), snapshot.copy).await?;
            }
            DriveStart {
                snapshot_running: true,
                phase: Some(phase),
                copies: Vec::new(),
                stopped: Vec::new(),
                recorded_stopped: Vec::new(),
                record_position: true,
            }
        }
    };
    started.store(true, Ordering::SeqCst);
    drive(
        settings,
        AnySource::Mysql(Box::new(source)),
        sink,
        state,
        marks,
        begin,
        mode,
        shutdown,
    )
    .await
}

/// What the destination recorded. Records an earlier release wrote are
/// rewritten in the current format first (see [`StateStore::upgrade`]).
async fn read_recorded(
    sink: &mut AnySink,
    state: &AnyState,
    binlog: bool,
) -> Result<Recorded, PipelineError> {
    let upgraded = state.upgrade().await.map_err(sink_error)?;
    if !upgraded.is_empty() {
        info!(records = ?upgraded, "pipeline records upgraded to the current format");
    }
    let mut tables = TableStates::new();
    for table in sink.existing_tables().await? {
        if let Some(table_state) = sink.table_state(&table).await? {
            tables.insert(table, table_state);
        }
    }
    let phase = state.read::<Phase>().await.map_err(sink_error)?;
    let stopped = state
        .read::<StoppedTables>()
        .await
        .map_err(sink_error)?
        .unwrap_or_default()
        .0;
    let plan = match (&phase, binlog) {
        (Some(Phase::Snapshot { .. }), false) => {
            state.read::<SnapshotPlan>().await.map_err(sink_error)?
        }
        _ => None,
    };
    // Only a shortcut: replaying from the tables' own positions is always
    // safe, so a position that does not read is ignored (with a warning).
    let position = match state.read::<SourcePosition>().await {
        Ok(Some(recorded)) if binlog => {
            let parsed = BinlogPosition::parse(&recorded.position);
            if parsed.is_none() {
                warn!("the recorded source position is not a binlog position; resuming from the oldest table position");
            }
            parsed
        }
        Ok(_) => None,
        Err(err) if err.class() == ErrorClass::Config => {
            warn!(error = %tidewater_core::error_chain(&err), "the recorded source position is unreadable; resuming from the oldest table position");
            None
        }
        Err(err) => return Err(sink_error(err)),
    };
    Ok(Recorded {
        phase,
        tables,
        stopped,
        plan,
        position,
    })
}

fn marks_of(tables: &TableStates) -> HashMap<TableId, Mark> {
    tables.iter().map(|(t, s)| (t.clone(), s.mark)).collect()
}

/// Before a fresh snapshot: the phase first (so a crash anywhere below
/// still reads as an interrupted snapshot), then everything the pipeline
/// wrote before (every table it has, a copy or not).
async fn start_over(
    sink: &mut AnySink,
    state: &AnyState,
    phase: &Phase,
    interrupted: bool,
) -> Result<(), PipelineError> {
    if interrupted {
        warn!("the previous initial snapshot did not complete; removing what it wrote and starting over");
    }
    state.write(phase).await.map_err(sink_error)?;
    state.remove::<SourcePosition>().await.map_err(sink_error)?;
    state
        .write(&StoppedTables::default())
        .await
        .map_err(sink_error)?;
    for table in sink.existing_tables().await? {
        warn!(table = %table, "removing a partial snapshot from the lake");
        sink.remove_table(&table).await?;
    }
    Ok(())
}

/// The keys an interrupted MySQL/MariaDB snapshot stopped at, if it can go
/// on: its binlog is still on the server, and every table's last copied
/// row (read in key order) has a key tidewater can restart after.
#[allow(clippy::type_complexity)]
async fn mysql_resume_keys(
    sink: &mut AnySink,
    source: &mut MysqlSource,
    tables: &TableStates,
    from: BinlogPosition,
) -> Result<Option<(BinlogPosition, HashMap<TableId, (u64, Vec<Datum>)>)>, PipelineError> {
    if !source.binlog_available(&from).await? {
        warn!(position = %from, "the binlog of the interrupted snapshot is gone; starting over");
        return Ok(None);
    }
    let mut resume = HashMap::new();
    for (table, table_state) in tables {
        if table_state.mark == Mark::ZERO {
            continue;
        }
        let schema = source.table_schema(table).await?;
        match sink.key_at_mark(&schema, table_state.mark).await? {
            Some(key) if tidewater_mysql::resumable_key(&key) => {
                resume.insert(table.clone(), (table_state.mark.ord, key));
            }
            _ => return Ok(None),
        }
    }
    Ok(Some((from, resume)))
}

/// The plan record of a Postgres snapshot.
fn plan_record(slot: &str, snapshot: &SnapshotResume) -> SnapshotPlan {
    SnapshotPlan {
        slot: slot.to_string(),
        consistent_point: snapshot.consistent_point,
        tables: snapshot
            .plan
            .iter()
            .map(|p| PlannedChunks {
                table: p.table.clone(),
                chunk_pages: p.chunk_pages,
                chunks: p.chunks,
            })
            .collect(),
    }
}

/// Each stopped table is named at every start: it is not replicated until
/// it is copied again.
fn log_stopped(stopped: &[StoppedTable]) {
    for s in stopped {
        error!(
            table = %s.table,
            position = %s.position,
            error = %s.reason,
            "table is stopped and not replicated; fix the cause, then copy it again with \
             `tidewater snapshot --config <file> --table {}`",
            s.table
        );
    }
}

fn log_copies(copies: &[TableId]) {
    if !copies.is_empty() {
        info!(
            tables = copies.len(),
            "tables without a complete copy in the lake are copied first"
        );
    }
}
