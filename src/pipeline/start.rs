//! The start-up decision, as a pure function of what the destination
//! recorded, what the source says and what was asked.
//!
//! Every start (a first run, a restart after a crash, a retry after a
//! transient error) reads the pipeline's records back and decides one of:
//!
//! ```text
//!   recorded state ─┐
//!   source facts ───┼─▶ decide() ─▶ refuse (an error naming the fix)
//!   asked (config) ─┘               already snapshotted (snapshot-only run)
//!                                   snapshot: fresh, or resume an interrupted one
//!                                   stream: from the slot / a binlog position,
//!                                           copying some tables while streaming
//! ```
//!
//! Keeping it free of I/O is what lets every case be tested in a table
//! (below) instead of by crashing servers: the caller gathers the facts,
//! calls [`decide`], then carries the plan out. The one decision that needs
//! more I/O — whether a MySQL snapshot's binlog and resume keys are still
//! there — is returned as a candidate the caller verifies, falling back to
//! a fresh snapshot.
//!
//! The rules, shared by both sources: the phase record is written before a
//! snapshot creates anything, and flips to `stream` once the snapshot is
//! committed in every table. A `snapshot` phase (or, with no phase record, a
//! table whose copy is not done) means nothing was streamed yet and the
//! exported snapshot died with its process: resume it if its pieces are
//! all still there, else start over. Under `stream`, a table whose copy is
//! not done was being copied while the others streamed: it is copied again.

use std::collections::HashMap;

use tidewater_core::state::{Phase, SnapshotPlan, TableStates};
use tidewater_core::{Mark, Replica, ResumePoint, SlotInfo, StoppedTable, TableId};
use tidewater_mysql::BinlogPosition;
use tidewater_postgres::{Lsn, PostgresError};

use super::{Mode, PipelineError};
use crate::config::SnapshotMode;

/// What the destination recorded (see [`tidewater_core::state`]).
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub phase: Option<Phase>,
    pub tables: TableStates,
    pub stopped: Vec<StoppedTable>,
    /// Read only under a `snapshot` phase (the only time it matters).
    pub plan: Option<SnapshotPlan>,
    /// The acknowledged position of a binlog source, if it parses.
    pub position: Option<BinlogPosition>,
}

/// What this run was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub snapshot: SnapshotMode,
    /// `snapshot --table`.
    pub recopy: &'a [TableId],
    pub mode: Mode,
}

#[derive(Debug)]
pub enum StartPlan {
    /// A snapshot-only run with nothing to copy.
    AlreadySnapshotted,
    Snapshot(SnapshotStart),
    Stream(StreamStart),
}

#[derive(Debug)]
pub struct SnapshotStart {
    /// Copy rows (`snapshot = initial`), or only create the slot.
    pub copy: bool,
    /// An earlier snapshot did not complete.
    pub interrupted: bool,
    /// The slot exists and must go before a fresh snapshot creates it.
    pub drop_slot: bool,
    /// Where the interrupted snapshot can resume; else it starts over
    /// (removing what it wrote).
    pub resume: Option<Resume>,
}

#[derive(Debug)]
pub enum Resume {
    /// Every chunk the tables hold is whole; read the rest.
    Ready(ResumePoint),
    /// A candidate (binlog): the caller checks the server still has the log
    /// at `from` and reads the key each table's copy stopped at.
    Keys { from: BinlogPosition },
}

#[derive(Debug)]
pub struct StreamStart {
    /// Binlog: where to resume (None: the server's current position).
    pub from: Option<BinlogPosition>,
    /// Tables copied while the others stream.
    pub copies: Vec<TableId>,
    pub streamed: Vec<TableId>,
    /// Tables an earlier run stopped, minus those copied again now (each
    /// named in the log at every start).
    pub stopped: Vec<StoppedTable>,
    /// The stopped tables as recorded.
    pub recorded_stopped: Vec<StoppedTable>,
    /// The phase to record first, when it changes.
    pub phase: Option<Phase>,
}

/// The plan for this start. Pure: see the module docs.
pub fn decide(
    source: &Replica,
    tables: &[TableId],
    recorded: &Recorded,
    asked: Asked<'_>,
) -> Result<StartPlan, PipelineError> {
    match source {
        Replica::Slot { name, slot } => {
            decide_postgres(name, slot.as_ref(), tables, recorded, asked)
        }
        Replica::Nothing => decide_mysql(tables, recorded, asked),
    }
}

fn decide_postgres(
    slot_name: &str,
    slot: Option<&SlotInfo>,
    tables: &[TableId],
    recorded: &Recorded,
    asked: Asked<'_>,
) -> Result<StartPlan, PipelineError> {
    if let Some(slot) = slot {
        if !slot.ours {
            return Err(PostgresError::SlotForeign {
                slot: slot_name.to_string(),
                detail: slot.owner.clone(),
            }
            .into());
        }
        if let Some(pid) = slot.active_pid {
            return Err(PostgresError::SlotBusy {
                slot: slot_name.to_string(),
                pid,
            }
            .into());
        }
    }
    let states = &recorded.tables;
    let streaming = matches!(recorded.phase, Some(Phase::Stream { .. }))
        || snapshot_committed(tables, recorded);
    let interrupted = !streaming
        && (matches!(recorded.phase, Some(Phase::Snapshot { .. }))
            || states.values().any(|s| !s.snapshot_done));
    let owned = recorded.phase.is_some() || states.values().any(|s| s.snapshot_done);
    let stream = match (slot, interrupted, asked.snapshot) {
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
                slot: slot_name.to_string(),
                position: position.unwrap_or_else(|| "its start".into()),
            }
            .into());
        }
        (None, false, _) => false,
        (Some(slot), false, _) if slot.lost => {
            return Err(PostgresError::SlotInvalidated {
                slot: slot_name.to_string(),
            }
            .into());
        }
        (Some(_), false, _) if owned => true,
        // A slot with our name this destination never recorded: another
        // deployment's, or a leftover. Never adopt or drop it blindly.
        (Some(_), false, _) => {
            return Err(PostgresError::SlotWithoutLake {
                slot: slot_name.to_string(),
            }
            .into());
        }
    };
    if stream {
        let phase = match &recorded.phase {
            Some(Phase::Snapshot { slot }) => Some(Phase::Stream { slot: slot.clone() }),
            _ => None,
        };
        return stream_plan(tables, recorded, asked, None, phase);
    }
    if !asked.recopy.is_empty() {
        return Err(PipelineError::NoLakeYet);
    }
    let resume = match (&recorded.phase, slot) {
        (Some(Phase::Snapshot { slot: Some(marked) }), Some(slot))
            if interrupted && asked.snapshot == SnapshotMode::Initial && marked == slot_name =>
        {
            postgres_resume(slot, slot_name, tables, recorded).map(Resume::Ready)
        }
        _ => None,
    };
    Ok(StartPlan::Snapshot(SnapshotStart {
        copy: asked.snapshot == SnapshotMode::Initial,
        interrupted,
        drop_slot: slot.is_some() && resume.is_none(),
        resume,
    }))
}

/// The recorded plan of an interrupted Postgres snapshot, if it can be
/// resumed: the plan is this slot's, the slot never confirmed anything past
/// the snapshot's consistent point, and every table holds only snapshot
/// rows of whole chunks (what `SnapshotChunk` commits guarantee).
fn postgres_resume(
    slot: &SlotInfo,
    slot_name: &str,
    tables: &[TableId],
    recorded: &Recorded,
) -> Option<ResumePoint> {
    let plan = recorded.plan.as_ref()?;
    let point = plan.consistent_point;
    if plan.slot != slot_name || slot.confirmed_flush != Some(point) {
        return None;
    }
    let mut done = HashMap::new();
    for (table, state) in &recorded.tables {
        if !tables.contains(table) || state.snapshot_done {
            return None;
        }
        let chunks = tidewater_postgres::chunks_committed(state.mark, point)?;
        let planned = plan.tables.iter().find(|p| &p.table == table)?;
        if planned.chunks < chunks {
            return None;
        }
        done.insert(table.clone(), chunks);
    }
    Some(ResumePoint::Chunks {
        plan: plan.clone(),
        done,
    })
}

/// The initial snapshot committed in every table, but the phase record
/// still says `snapshot`: a crash fell between the last commit and the
/// flip to `stream`. Every captured table holds its whole copy (each
/// snapshotted table is created in the destination, even an empty one, and
/// its final commit records it done), so it streams on instead of copying
/// everything again.
fn snapshot_committed(tables: &[TableId], recorded: &Recorded) -> bool {
    matches!(recorded.phase, Some(Phase::Snapshot { .. }))
        && !tables.is_empty()
        && tables.iter().all(|t| {
            recorded
                .tables
                .get(t)
                .is_some_and(|state| state.snapshot_done)
        })
        && recorded.tables.values().all(|state| state.snapshot_done)
}

/// A MySQL/MariaDB source: the server keeps no replica state, so the
/// records hold everything: the phase says whether the initial snapshot
/// completed, the acknowledged position where to resume (else the oldest
/// table position), and every table's mark filters what is replayed.
fn decide_mysql(
    tables: &[TableId],
    recorded: &Recorded,
    asked: Asked<'_>,
) -> Result<StartPlan, PipelineError> {
    let states = &recorded.tables;
    // Once the phase says stream, the initial snapshot is committed: a
    // table without a complete copy then is a copy taken while streaming
    // (copied again beside the stream), never a reason to start over.
    let interrupted = !snapshot_committed(tables, recorded)
        && match recorded.phase {
            Some(Phase::Snapshot { .. }) => true,
            Some(Phase::Stream { .. }) => false,
            None => states.values().any(|s| !s.snapshot_done),
        };
    let owned = recorded.phase.is_some() || states.values().any(|s| s.snapshot_done);
    let resume_from = || {
        recorded.position.clone().or_else(|| {
            states
                .values()
                .filter_map(|s| BinlogPosition::parse(&s.position))
                .min_by_key(BinlogPosition::seq)
        })
    };
    let from = match (owned, interrupted, asked.snapshot) {
        (true, false, _) | (true, true, SnapshotMode::Never) => resume_from(),
        _ => None,
    };
    let snapshotting = from.is_none() && !(owned && asked.snapshot == SnapshotMode::Never);
    if snapshotting && !asked.recopy.is_empty() {
        return Err(PipelineError::NoLakeYet);
    }
    if !snapshotting {
        let phase = (!matches!(recorded.phase, Some(Phase::Stream { .. })))
            .then_some(Phase::Stream { slot: None });
        return stream_plan(tables, recorded, asked, from, phase);
    }
    if let Some(table) = asked.recopy.iter().find(|t| !tables.contains(t)) {
        return Err(PipelineError::NotSelected(table.clone()));
    }
    let resume = (interrupted
        && asked.snapshot == SnapshotMode::Initial
        && matches!(recorded.phase, Some(Phase::Snapshot { .. })))
    .then(|| mysql_resume(tables, recorded))
    .flatten();
    Ok(StartPlan::Snapshot(SnapshotStart {
        copy: asked.snapshot == SnapshotMode::Initial,
        interrupted,
        drop_slot: false,
        resume,
    }))
}

/// Where an interrupted MySQL/MariaDB snapshot may resume: every table
/// holds only snapshot rows of the same snapshot (one position), none
/// complete. Whether its binlog and keys are still there is the caller's
/// check.
fn mysql_resume(tables: &[TableId], recorded: &Recorded) -> Option<Resume> {
    let mut from: Option<BinlogPosition> = None;
    for (table, state) in &recorded.tables {
        let position = BinlogPosition::parse(&state.position)?;
        if !tables.contains(table)
            || state.snapshot_done
            || from.as_ref().is_some_and(|f| f.seq() != position.seq())
            || (state.mark != Mark::ZERO && state.mark.seq != position.seq().saturating_sub(1))
        {
            return None;
        }
        from = Some(position);
    }
    from.map(|from| Resume::Keys { from })
}

/// Streaming: which tables stream, which are copied first, which stay
/// stopped.
fn stream_plan(
    tables: &[TableId],
    recorded: &Recorded,
    asked: Asked<'_>,
    from: Option<BinlogPosition>,
    phase: Option<Phase>,
) -> Result<StartPlan, PipelineError> {
    if let Some(table) = asked.recopy.iter().find(|t| !tables.contains(t)) {
        return Err(PipelineError::NotSelected(table.clone()));
    }
    // Only a new copy lifts a stop: the changes since it are not there.
    let stopped: Vec<StoppedTable> = recorded
        .stopped
        .iter()
        .filter(|s| !asked.recopy.contains(&s.table))
        .cloned()
        .collect();
    let is_stopped = |t: &TableId| stopped.iter().any(|s| &s.table == t);
    // Tables without a complete copy (an interrupted copy, a table that
    // matched the config after the snapshot) and those asked for are
    // copied while the others stream.
    let mut copies: Vec<TableId> = match asked.snapshot {
        SnapshotMode::Initial => tables
            .iter()
            .filter(|t| !recorded.tables.get(*t).is_some_and(|s| s.snapshot_done) && !is_stopped(t))
            .cloned()
            .collect(),
        SnapshotMode::Never => Vec::new(),
    };
    for table in asked.recopy {
        if !copies.contains(table) {
            copies.push(table.clone());
        }
    }
    if asked.mode == Mode::SnapshotOnly && copies.is_empty() {
        return Ok(StartPlan::AlreadySnapshotted);
    }
    let streamed = tables
        .iter()
        .filter(|t| !copies.contains(t) && !is_stopped(t))
        .cloned()
        .collect();
    Ok(StartPlan::Stream(StreamStart {
        from,
        copies,
        streamed,
        stopped,
        recorded_stopped: recorded.stopped.clone(),
        phase,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_core::state::{PlannedChunks, TableState};

    const SLOT: &str = "tidewater_p";

    fn t(name: &str) -> TableId {
        TableId::new("public", name)
    }

    fn state(done: bool, mark: Mark, position: &str) -> TableState {
        TableState {
            mark,
            position: position.into(),
            snapshot_done: done,
            version: 1,
            commits: 1,
        }
    }

    fn slot() -> SlotInfo {
        SlotInfo {
            ours: true,
            owner: String::new(),
            active_pid: None,
            lost: false,
            confirmed_flush: Some(0x100),
        }
    }

    fn pg(slot: Option<SlotInfo>) -> Replica {
        Replica::Slot {
            name: SLOT.into(),
            slot,
        }
    }

    fn snapshot_phase() -> Option<Phase> {
        Some(Phase::Snapshot {
            slot: Some(SLOT.into()),
        })
    }

    fn stream_phase() -> Option<Phase> {
        Some(Phase::Stream {
            slot: Some(SLOT.into()),
        })
    }

    fn recorded(phase: Option<Phase>, tables: &[(&str, TableState)]) -> Recorded {
        Recorded {
            phase,
            tables: tables.iter().map(|(n, s)| (t(n), s.clone())).collect(),
            ..Recorded::default()
        }
    }

    fn asked(snapshot: SnapshotMode, recopy: &[TableId], mode: Mode) -> Asked<'_> {
        Asked {
            snapshot,
            recopy,
            mode,
        }
    }

    const RUN: Asked<'static> = Asked {
        snapshot: SnapshotMode::Initial,
        recopy: &[],
        mode: Mode::Continuous,
    };

    /// A short name for a decision, to compare in tables.
    fn summary(result: Result<StartPlan, PipelineError>) -> String {
        match result {
            Err(PipelineError::Source(err)) => {
                let text = format!("{err:?}");
                format!(
                    "refuse {}",
                    text.split([' ', '{', '(']).next().unwrap_or("")
                )
            }
            Err(PipelineError::NotSelected(table)) => format!("refuse NotSelected {table}"),
            Err(PipelineError::NoLakeYet) => "refuse NoLakeYet".into(),
            Err(other) => format!("refuse {other}"),
            Ok(StartPlan::AlreadySnapshotted) => "already snapshotted".into(),
            Ok(StartPlan::Snapshot(s)) => format!(
                "snapshot copy={} interrupted={} drop_slot={} resume={}",
                s.copy,
                s.interrupted,
                s.drop_slot,
                match s.resume {
                    None => "no".to_string(),
                    Some(Resume::Ready(ResumePoint::Chunks { done, .. })) => {
                        let mut done: Vec<String> = done
                            .iter()
                            .map(|(t, n)| format!("{}:{n}", t.table))
                            .collect();
                        done.sort();
                        format!("chunks[{}]", done.join(","))
                    }
                    Some(Resume::Ready(ResumePoint::Keys { position, .. })) => {
                        format!("keys {position}")
                    }
                    Some(Resume::Keys { from }) => format!("binlog {from}"),
                }
            ),
            Ok(StartPlan::Stream(s)) => format!(
                "stream from={} copies=[{}] streamed=[{}] stopped=[{}] phase={}",
                s.from.map_or("-".into(), |f| f.to_string()),
                names(&s.copies),
                names(&s.streamed),
                names(
                    &s.stopped
                        .iter()
                        .map(|s| s.table.clone())
                        .collect::<Vec<_>>()
                ),
                match s.phase {
                    None => "-",
                    Some(Phase::Stream { .. }) => "stream",
                    Some(Phase::Snapshot { .. }) => "snapshot",
                }
            ),
        }
    }

    fn names(tables: &[TableId]) -> String {
        tables
            .iter()
            .map(|t| t.table.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn stopped(name: &str) -> StoppedTable {
        StoppedTable {
            table: t(name),
            position: "0/10".into(),
            reason: "r".into(),
            stopped_at: 0,
        }
    }

    #[test]
    fn postgres_start_decisions() {
        let a_b = [t("a"), t("b")];
        let done = state(true, Mark::new(5, 1), "0/50");
        let copying = state(false, Mark::ZERO, "0/100");
        let foreign = SlotInfo {
            ours: false,
            owner: "database other".into(),
            ..slot()
        };
        let busy = SlotInfo {
            active_pid: Some(42),
            ..slot()
        };
        let lost = SlotInfo {
            lost: true,
            ..slot()
        };
        let recopy_a = [t("a")];
        let recopy_x = [t("x")];
        let recopy_b = [t("b")];
        let with_stop = Recorded {
            stopped: vec![stopped("b")],
            ..recorded(stream_phase(), &[("a", done.clone()), ("b", done.clone())])
        };
        let cases: Vec<(&str, Replica, Recorded, Asked, &str)> = vec![
            (
                "first run",
                pg(None),
                Recorded::default(),
                RUN,
                "snapshot copy=true interrupted=false drop_slot=false resume=no",
            ),
            (
                "first run, snapshot = never: only the slot",
                pg(None),
                Recorded::default(),
                asked(SnapshotMode::Never, &[], Mode::Continuous),
                "snapshot copy=false interrupted=false drop_slot=false resume=no",
            ),
            (
                "another database's slot",
                pg(Some(foreign)),
                Recorded::default(),
                RUN,
                "refuse SlotForeign",
            ),
            (
                "slot in use by another process",
                pg(Some(busy)),
                recorded(stream_phase(), &[("a", done.clone())]),
                RUN,
                "refuse SlotBusy",
            ),
            (
                "streaming, slot there",
                pg(Some(slot())),
                recorded(stream_phase(), &[("a", done.clone()), ("b", done.clone())]),
                RUN,
                "stream from=- copies=[] streamed=[a,b] stopped=[] phase=-",
            ),
            (
                "streaming, no phase record (older lake): the tables say so",
                pg(Some(slot())),
                recorded(None, &[("a", done.clone()), ("b", done.clone())]),
                RUN,
                "stream from=- copies=[] streamed=[a,b] stopped=[] phase=-",
            ),
            (
                "streaming, a table new to the config is copied while streaming",
                pg(Some(slot())),
                recorded(stream_phase(), &[("a", done.clone())]),
                RUN,
                "stream from=- copies=[b] streamed=[a] stopped=[] phase=-",
            ),
            (
                "streaming, a copy while streaming was interrupted: again",
                pg(Some(slot())),
                recorded(
                    stream_phase(),
                    &[("a", done.clone()), ("b", copying.clone())],
                ),
                RUN,
                "stream from=- copies=[b] streamed=[a] stopped=[] phase=-",
            ),
            (
                "streaming, snapshot = never copies nothing",
                pg(Some(slot())),
                recorded(stream_phase(), &[("a", done.clone())]),
                asked(SnapshotMode::Never, &[], Mode::Continuous),
                "stream from=- copies=[] streamed=[a,b] stopped=[] phase=-",
            ),
            (
                "a stopped table stays stopped",
                pg(Some(slot())),
                with_stop.clone(),
                RUN,
                "stream from=- copies=[] streamed=[a] stopped=[b] phase=-",
            ),
            (
                "snapshot --table lifts a stop by copying",
                pg(Some(slot())),
                with_stop.clone(),
                asked(SnapshotMode::Initial, &recopy_b, Mode::SnapshotOnly),
                "stream from=- copies=[b] streamed=[a] stopped=[] phase=-",
            ),
            (
                "snapshot --table of a table not captured",
                pg(Some(slot())),
                with_stop.clone(),
                asked(SnapshotMode::Initial, &recopy_x, Mode::SnapshotOnly),
                "refuse NotSelected public.x",
            ),
            (
                "snapshot-only with everything copied",
                pg(Some(slot())),
                recorded(stream_phase(), &[("a", done.clone()), ("b", done.clone())]),
                asked(SnapshotMode::Initial, &[], Mode::SnapshotOnly),
                "already snapshotted",
            ),
            (
                "slot gone while streaming",
                pg(None),
                recorded(stream_phase(), &[("a", done.clone())]),
                RUN,
                "refuse SlotLost",
            ),
            (
                "slot invalidated (wal_status lost)",
                pg(Some(lost)),
                recorded(stream_phase(), &[("a", done.clone())]),
                RUN,
                "refuse SlotInvalidated",
            ),
            (
                "a slot with our name, never recorded here",
                pg(Some(slot())),
                Recorded::default(),
                RUN,
                "refuse SlotWithoutLake",
            ),
            (
                "snapshot committed everywhere, the flip to stream lost: stream on",
                pg(Some(slot())),
                recorded(
                    snapshot_phase(),
                    &[("a", done.clone()), ("b", done.clone())],
                ),
                RUN,
                "stream from=- copies=[] streamed=[a,b] stopped=[] phase=stream",
            ),
            (
                "snapshot phase, a captured table not in the destination: start over",
                pg(Some(slot())),
                recorded(snapshot_phase(), &[("a", done.clone())]),
                RUN,
                "snapshot copy=true interrupted=true drop_slot=true resume=no",
            ),
            (
                "interrupted snapshot without a plan: start over",
                pg(Some(slot())),
                recorded(snapshot_phase(), &[("a", copying.clone())]),
                RUN,
                "snapshot copy=true interrupted=true drop_slot=true resume=no",
            ),
            (
                "interrupted snapshot, slot gone: start over",
                pg(None),
                recorded(snapshot_phase(), &[("a", copying.clone())]),
                RUN,
                "snapshot copy=true interrupted=true drop_slot=false resume=no",
            ),
            (
                "interrupted snapshot, snapshot = never: stream our slot",
                pg(Some(slot())),
                recorded(snapshot_phase(), &[("a", copying.clone())]),
                asked(SnapshotMode::Never, &[], Mode::Continuous),
                "stream from=- copies=[] streamed=[a,b] stopped=[] phase=stream",
            ),
            (
                "snapshot --table before any snapshot",
                pg(None),
                Recorded::default(),
                asked(SnapshotMode::Initial, &recopy_a, Mode::SnapshotOnly),
                "refuse NoLakeYet",
            ),
        ];
        for (what, source, recorded, asked, expected) in cases {
            let got = summary(decide(&source, &a_b, &recorded, asked));
            assert_eq!(got, expected, "{what}");
        }
    }

    fn plan(chunks: u32) -> SnapshotPlan {
        SnapshotPlan {
            slot: SLOT.into(),
            consistent_point: 0x100,
            tables: vec![
                PlannedChunks {
                    table: t("a"),
                    chunk_pages: 8,
                    chunks,
                },
                PlannedChunks {
                    table: t("b"),
                    chunk_pages: 8,
                    chunks,
                },
            ],
        }
    }

    #[test]
    fn postgres_snapshot_resumes_only_from_whole_chunks_of_its_own_plan() {
        let a_b = [t("a"), t("b")];
        // Rows of chunk k carry `_tw_ord = k << 32 | row` in the
        // transaction just below the consistent point.
        let two_chunks = state(false, Mark::new(0xff, (1 << 32) | 7), "0/100");
        let interrupted = |plan: Option<SnapshotPlan>, a: TableState| Recorded {
            plan,
            ..recorded(snapshot_phase(), &[("a", a)])
        };
        let cases: Vec<(&str, SlotInfo, Recorded, &str)> = vec![
            (
                "two chunks of a committed",
                slot(),
                interrupted(Some(plan(4)), two_chunks.clone()),
                "snapshot copy=true interrupted=true drop_slot=false resume=chunks[a:2]",
            ),
            (
                "nothing of a committed yet",
                slot(),
                interrupted(Some(plan(4)), state(false, Mark::ZERO, "0/100")),
                "snapshot copy=true interrupted=true drop_slot=false resume=chunks[a:0]",
            ),
            (
                "the slot moved past the consistent point",
                SlotInfo {
                    confirmed_flush: Some(0x200),
                    ..slot()
                },
                interrupted(Some(plan(4)), two_chunks.clone()),
                "snapshot copy=true interrupted=true drop_slot=true resume=no",
            ),
            (
                "more chunks in the table than the plan has",
                slot(),
                interrupted(Some(plan(1)), two_chunks.clone()),
                "snapshot copy=true interrupted=true drop_slot=true resume=no",
            ),
            (
                "a mark from another transaction",
                slot(),
                interrupted(Some(plan(4)), state(false, Mark::new(0x50, 3), "0/100")),
                "snapshot copy=true interrupted=true drop_slot=true resume=no",
            ),
            (
                "another slot's plan",
                slot(),
                interrupted(
                    Some(SnapshotPlan {
                        slot: "other".into(),
                        ..plan(4)
                    }),
                    two_chunks.clone(),
                ),
                "snapshot copy=true interrupted=true drop_slot=true resume=no",
            ),
        ];
        for (what, slot, recorded, expected) in cases {
            let got = summary(decide(&pg(Some(slot)), &a_b, &recorded, RUN));
            assert_eq!(got, expected, "{what}");
        }
        // A table dropped from the config since: start over.
        let got = summary(decide(
            &pg(Some(slot())),
            &[t("b")],
            &interrupted(Some(plan(4)), two_chunks),
            RUN,
        ));
        assert_eq!(
            got,
            "snapshot copy=true interrupted=true drop_slot=true resume=no"
        );
    }

    #[test]
    fn mysql_start_decisions() {
        let a_b = [t("a"), t("b")];
        let pos = |offset: u64| format!("mysql-bin.000002:{offset}");
        let seq = |offset: u64| BinlogPosition::parse(&pos(offset)).unwrap().seq();
        let done = |offset: u64| state(true, Mark::new(seq(offset), 1), &pos(offset));
        let copying = state(false, Mark::ZERO, &pos(400));
        let binlog_phase = |snapshot: bool| {
            Some(if snapshot {
                Phase::Snapshot { slot: None }
            } else {
                Phase::Stream { slot: None }
            })
        };
        let streaming = |position: Option<u64>| Recorded {
            position: position.map(|p| BinlogPosition::parse(&pos(p)).unwrap()),
            ..recorded(binlog_phase(false), &[("a", done(300)), ("b", done(200))])
        };
        let recopy_a = [t("a")];
        let cases: Vec<(&str, Recorded, Asked, &str)> = vec![
            (
                "first run",
                Recorded::default(),
                RUN,
                "snapshot copy=true interrupted=false drop_slot=false resume=no",
            ),
            (
                "streaming: from the acknowledged position",
                streaming(Some(900)),
                RUN,
                "stream from=mysql-bin.000002:900 copies=[] streamed=[a,b] stopped=[] phase=-",
            ),
            (
                "streaming without a recorded position: the oldest table position",
                streaming(None),
                RUN,
                "stream from=mysql-bin.000002:200 copies=[] streamed=[a,b] stopped=[] phase=-",
            ),
            (
                "no phase record (older lake): written as stream",
                recorded(None, &[("a", done(300)), ("b", done(200))]),
                RUN,
                "stream from=mysql-bin.000002:200 copies=[] streamed=[a,b] stopped=[] phase=stream",
            ),
            (
                "a table new to the config is copied while streaming",
                recorded(binlog_phase(false), &[("a", done(300))]),
                RUN,
                "stream from=mysql-bin.000002:300 copies=[b] streamed=[a] stopped=[] phase=-",
            ),
            (
                "a copy while streaming interrupted: copied again beside the stream",
                Recorded {
                    position: Some(BinlogPosition::parse(&pos(900)).unwrap()),
                    ..recorded(binlog_phase(false), &[("a", done(300)), ("b", copying.clone())])
                },
                RUN,
                "stream from=mysql-bin.000002:900 copies=[b] streamed=[a] stopped=[] phase=-",
            ),
            (
                "snapshot --table",
                streaming(Some(900)),
                asked(SnapshotMode::Initial, &recopy_a, Mode::SnapshotOnly),
                "stream from=mysql-bin.000002:900 copies=[a] streamed=[b] stopped=[] phase=-",
            ),
            (
                "snapshot-only with everything copied",
                streaming(Some(900)),
                asked(SnapshotMode::Initial, &[], Mode::SnapshotOnly),
                "already snapshotted",
            ),
            (
                "snapshot = never on a fresh destination: the server's current position",
                Recorded::default(),
                asked(SnapshotMode::Never, &[], Mode::Continuous),
                "snapshot copy=false interrupted=false drop_slot=false resume=no",
            ),
            (
                "snapshot committed everywhere, the flip to stream lost: stream on",
                recorded(binlog_phase(true), &[("a", done(300)), ("b", done(200))]),
                RUN,
                "stream from=mysql-bin.000002:200 copies=[] streamed=[a,b] stopped=[] phase=stream",
            ),
            (
                "interrupted snapshot: a resume candidate",
                recorded(binlog_phase(true), &[("a", copying.clone())]),
                RUN,
                "snapshot copy=true interrupted=true drop_slot=false resume=binlog mysql-bin.000002:400",
            ),
            (
                "interrupted snapshot, tables of two snapshots: start over",
                recorded(
                    binlog_phase(true),
                    &[("a", copying.clone()), ("b", state(false, Mark::ZERO, &pos(500)))],
                ),
                RUN,
                "snapshot copy=true interrupted=true drop_slot=false resume=no",
            ),
            (
                "interrupted snapshot, snapshot = never: stream from the tables' position",
                recorded(binlog_phase(true), &[("a", copying.clone())]),
                asked(SnapshotMode::Never, &[], Mode::Continuous),
                "stream from=mysql-bin.000002:400 copies=[] streamed=[a,b] stopped=[] phase=stream",
            ),
            (
                "snapshot --table before any snapshot",
                Recorded::default(),
                asked(SnapshotMode::Initial, &recopy_a, Mode::SnapshotOnly),
                "refuse NoLakeYet",
            ),
        ];
        for (what, recorded, asked, expected) in cases {
            let got = summary(decide(&Replica::Nothing, &a_b, &recorded, asked));
            assert_eq!(got, expected, "{what}");
        }
    }
}
