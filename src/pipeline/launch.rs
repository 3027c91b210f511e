//! Carrying out a start, for any [`Source`]: list and check its tables,
//! read the records back (upgrading any an earlier release wrote), ask the
//! source what its server keeps, let [`start::decide`] choose, then do what
//! it decided and hand over to the coordinator.
//!
//! Order matters where a crash can fall between two steps: a fresh snapshot
//! records its phase before it removes anything or creates its slot, so a
//! crash anywhere after reads as an interrupted snapshot; a snapshot's plan
//! is recorded before its first commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tidewater_core::state::{
    Phase, SnapshotPlan, SourcePosition, StateStore, StoppedTables, TableStates,
};
use tidewater_core::{
    Classified, ErrorClass, Mark, Replica, ResumePoint, Source, Start, StoppedTable, TableId,
};
use tidewater_mysql::BinlogPosition;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::coordinator::{drive, DriveStart};
use super::error::sink_error;
use super::sink::{AnySink, AnyState};
use super::start::{self, Asked, Recorded, Resume, StartPlan};
use super::{Mode, Outcome, PipelineError, Settings};

/// One start of any source: see the module docs.
pub(super) async fn launch<S>(
    settings: &Settings,
    mut source: S,
    mode: Mode,
    shutdown: watch::Receiver<bool>,
    started: &AtomicBool,
) -> Result<Outcome, PipelineError>
where
    S: Source + Send + 'static,
    S::Error: Send + 'static,
    PipelineError: From<S::Error>,
{
    let tables = source.tables().await?;
    let problems = source.preflight(&tables).await?;
    if !problems.is_empty() {
        return Err(PipelineError::Preflight(problems));
    }
    let mut sink = AnySink::open(settings).await?;
    if let Some(kafka) = &settings.kafka {
        settings.metrics.kafka(kafka.stats.clone());
    }
    let state = sink.state();
    let replica = source.replica().await?;
    // A source without server-side replica state resumes from the
    // position the pipeline records.
    let binlog = replica == Replica::Nothing;
    let recorded = read_recorded(&mut sink, &state, binlog).await?;
    let asked = Asked {
        snapshot: settings.snapshot,
        recopy: &settings.recopy,
        mode,
    };
    let mut marks = marks_of(&recorded.tables);
    let begin = match start::decide(&replica, &tables, &recorded, asked)? {
        StartPlan::AlreadySnapshotted => return Ok(Outcome::AlreadySnapshotted),
        StartPlan::Stream(stream) => {
            if let Some(phase) = &stream.phase {
                state.write(phase).await.map_err(sink_error)?;
            }
            log_stopped(&stream.stopped);
            log_copies(&stream.copies);
            source
                .start(Start::Stream {
                    streamed: stream.streamed,
                    copies: stream.copies.clone(),
                    stopped: stream.stopped.iter().map(|s| s.table.clone()).collect(),
                    from: stream.from.map(|from| from.to_string()),
                })
                .await?;
            DriveStart {
                snapshot_running: false,
                phase: stream.phase.or(recorded.phase),
                copies: stream.copies,
                stopped: stream.stopped,
                recorded_stopped: stream.recorded_stopped,
                record_position: binlog,
            }
        }
        StartPlan::Snapshot(snapshot) => {
            let phase = Phase::Snapshot {
                slot: match &replica {
                    Replica::Slot { name, .. } => Some(name.clone()),
                    Replica::Nothing => None,
                },
            };
            let resume = match snapshot.resume {
                Some(Resume::Ready(point)) => Some(point),
                Some(Resume::Keys { from }) => {
                    resume_keys(&mut sink, &mut source, &recorded.tables, from).await?
                }
                None => None,
            };
            let plan = match resume {
                Some(from) => {
                    source
                        .start(Start::ResumeSnapshot {
                            tables: tables.clone(),
                            from,
                        })
                        .await?
                }
                None => {
                    start_over(&mut sink, &state, &phase, snapshot.interrupted).await?;
                    marks.clear();
                    info!(
                        tables = tables.len(),
                        copy = snapshot.copy,
                        "starting consistent snapshot"
                    );
                    source
                        .start(Start::Snapshot {
                            tables: tables.clone(),
                            copy: snapshot.copy,
                            drop_slot: snapshot.drop_slot,
                        })
                        .await?
                }
            };
            // Recorded before the first commit, so that an interrupted
            // snapshot reads the same chunks again.
            if let Some(plan) = plan {
                state.write(&plan).await.map_err(sink_error)?;
            }
            DriveStart {
                snapshot_running: true,
                phase: Some(phase),
                copies: Vec::new(),
                stopped: Vec::new(),
                recorded_stopped: Vec::new(),
                record_position: binlog,
            }
        }
    };
    started.store(true, Ordering::SeqCst);
    drive(settings, source, sink, state, marks, begin, mode, shutdown).await
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

/// Where an interrupted snapshot that copies in key order (binlog) can go
/// on, if it can: the server still has its log at `from`, and every table's
/// last copied row has a key the source can restart after (the
/// destination reads it at the table's mark).
async fn resume_keys<S>(
    sink: &mut AnySink,
    source: &mut S,
    tables: &TableStates,
    from: BinlogPosition,
) -> Result<Option<ResumePoint>, PipelineError>
where
    S: Source,
    PipelineError: From<S::Error>,
{
    let position = from.to_string();
    if !source.retains(&position).await? {
        warn!(position = %from, "the binlog of the interrupted snapshot is gone; starting over");
        return Ok(None);
    }
    let mut keys = HashMap::new();
    for (table, table_state) in tables {
        if table_state.mark == Mark::ZERO {
            continue;
        }
        let Some(schema) = source.resume_schema(table).await? else {
            return Ok(None);
        };
        match sink.key_at_mark(&schema, table_state.mark).await? {
            Some(key) if tidewater_mysql::resumable_key(&key) => {
                keys.insert(table.clone(), (table_state.mark.ord, key));
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(ResumePoint::Keys { position, keys }))
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
