//! The coordinator's invariants, checked in milliseconds: a scripted event
//! feed drives the real coordinator into the real lake sink on a temporary
//! directory. The sink, the state store and the acknowledger are wrapped to
//! record every call in one log, in the order they happen; at every
//! acknowledgement and sink call (and after every event) the log is checked
//! against what the lake made durable:
//!
//! 1. nothing is acknowledged before its commit: every acknowledged
//!    transaction's rows are committed, or their table's stop is recorded;
//! 2. no commit lands while a snapshot chunk is half received;
//! 3. a table's stop is recorded before anything after it is acknowledged
//!    (the same check as 1 for the stopped table's rows);
//! 4. replays are skipped exactly at the mark: a restart feeding the same
//!    transactions again lands only what is above each table's mark.
//!
//! What the lake holds at the end is read back with a separate lake sink,
//! as a restart would.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewater_core::state::{RecordKind, StateStore, StoppedTables};
use tidewater_core::{
    Acknowledger, BatchLimits, ChangeBatch, ChangeEvent, Column, ColumnType, CommitInfo, Datum,
    Mark, Op, RowChange, Sink, SnapshotPhase, TableId, TableSchema,
};
use tidewater_lake::{LakeError, LakeSink, LakeState, LakeStore};

use super::coordinator::{Coordinator, DriveStart, Tuning};

/// One transaction of the script: its sequence, ack value and rows.
#[derive(Clone)]
struct Txn {
    seq: u64,
    rows: Vec<(TableId, u64)>,
}

impl Txn {
    fn ack(&self) -> u64 {
        self.seq * 10
    }
}

/// What the recorders saw, in order, and what they check.
#[derive(Default)]
struct Log {
    calls: Vec<String>,
    /// Rows written since the last commit, per table: their marks.
    written: BTreeMap<TableId, Vec<Mark>>,
    /// Every row written, per table, in the order written.
    order: BTreeMap<TableId, Vec<Mark>>,
    /// Highest committed mark per table.
    durable: BTreeMap<TableId, Mark>,
    /// Tables whose stop is recorded.
    stopped: Vec<TableId>,
    /// Every transaction fed so far.
    fed: Vec<Txn>,
    /// A snapshot chunk is half received.
    chunk_open: bool,
    violations: Vec<String>,
}

impl Log {
    /// Invariants 1 and 3 for the acknowledged value `acked`.
    fn check(&mut self, acked: u64, at: &str) {
        for txn in &self.fed {
            if txn.ack() > acked {
                continue;
            }
            for (table, ord) in &txn.rows {
                let mark = Mark::new(txn.seq, *ord);
                let durable = self.durable.get(table).is_some_and(|d| mark <= *d);
                if !durable && !self.stopped.contains(table) {
                    self.violations.push(format!(
                        "{at}: transaction {} acknowledged (ack {acked}) while {table} row {mark} \
                         is neither committed nor its table's stop recorded",
                        txn.seq
                    ));
                }
            }
        }
    }
}

type Shared = Arc<Mutex<Log>>;

/// The real lake sink, every call recorded and checked.
struct Recording {
    lake: LakeSink,
    log: Shared,
    acked: Arc<AtomicU64>,
}

impl Recording {
    fn note(&self, call: String) {
        let acked = self.acked.load(Ordering::SeqCst);
        let mut log = self.log.lock().unwrap();
        log.check(acked, &call);
        log.calls.push(call);
    }
}

/// `_tw_seq`/`_tw_ord` of every row of a batch.
fn marks_of(batch: &ChangeBatch) -> Vec<Mark> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    let column = |name: &str| {
        let array = batch.batch.column_by_name(name).expect("metadata column");
        arrow_cast(array)
    };
    fn arrow_cast(array: &arrow_array::ArrayRef) -> Vec<u64> {
        if let Some(values) = array.as_primitive_opt::<UInt64Type>() {
            return values.values().to_vec();
        }
        array
            .as_primitive::<arrow_array::types::Int64Type>()
            .values()
            .iter()
            .map(|v| *v as u64)
            .collect()
    }
    let seqs = column("_tw_seq");
    let ords = column("_tw_ord");
    seqs.into_iter()
        .zip(ords)
        .map(|(s, o)| Mark::new(s, o))
        .collect()
}

impl Sink for Recording {
    type Error = LakeError;

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), LakeError> {
        self.note(format!("prepare {}", schema.table));
        Sink::prepare(&mut self.lake, schema).await
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, LakeError> {
        Sink::mark(&mut self.lake, table).await
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), LakeError> {
        let marks = marks_of(&batch);
        self.note(format!("write {} {} rows", batch.table, marks.len()));
        {
            let mut log = self.log.lock().unwrap();
            log.order
                .entry(batch.table.clone())
                .or_default()
                .extend(marks.iter().copied());
            log.written
                .entry(batch.table.clone())
                .or_default()
                .extend(marks);
        }
        Sink::write(&mut self.lake, batch).await
    }

    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, LakeError> {
        Sink::latest_rows(&mut self.lake, schema, keys).await
    }

    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String) {
        Sink::note_ddl(&mut self.lake, table, seq, statement)
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        Sink::table_phase(&mut self.lake, table, phase, mark)
    }

    fn staged_bytes(&self) -> u64 {
        Sink::staged_bytes(&self.lake)
    }

    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, LakeError> {
        {
            let mut log = self.log.lock().unwrap();
            if log.chunk_open {
                log.violations.push(format!(
                    "commit at {position} inside an open snapshot chunk"
                ));
            }
        }
        self.note(format!("commit {position}"));
        let committed = Sink::commit(&mut self.lake, position, phase).await?;
        let mut log = self.log.lock().unwrap();
        for (table, marks) in std::mem::take(&mut log.written) {
            if let Some(last) = marks.into_iter().max() {
                let durable = log.durable.entry(table).or_insert(Mark::ZERO);
                *durable = (*durable).max(last);
            }
        }
        Ok(committed)
    }
}

/// The acknowledgements, recorded and checked at the moment they are made.
#[derive(Clone)]
struct RecordingAck {
    log: Shared,
    acked: Arc<AtomicU64>,
}

impl Acknowledger for RecordingAck {
    fn ack(&self, value: u64) {
        self.acked.fetch_max(value, Ordering::SeqCst);
        let mut log = self.log.lock().unwrap();
        let call = format!("ack {value}");
        log.check(value, &call);
        log.calls.push(call);
    }
}

/// The real lake state store, every write recorded.
#[derive(Clone)]
struct RecordingState {
    state: LakeState,
    log: Shared,
}

impl StateStore for RecordingState {
    type Error = LakeError;

    async fn get(&self, kind: RecordKind) -> Result<Option<String>, LakeError> {
        self.state.get(kind).await
    }

    async fn put(&self, kind: RecordKind, text: &str) -> Result<(), LakeError> {
        self.state.put(kind, text).await?;
        let stopped = match kind {
            RecordKind::StoppedTables => self.state.read::<StoppedTables>().await?,
            _ => None,
        };
        let mut log = self.log.lock().unwrap();
        log.calls.push(format!("record {}", kind.key()));
        if let Some(StoppedTables(tables)) = stopped {
            log.stopped = tables.into_iter().map(|s| s.table).collect();
        }
        Ok(())
    }

    async fn delete(&self, kind: RecordKind) -> Result<(), LakeError> {
        self.state.delete(kind).await
    }

    fn corrupt(&self, kind: RecordKind, problem: String) -> LakeError {
        self.state.corrupt(kind, problem)
    }
}

fn table(name: &str) -> TableId {
    TableId::new("app", name)
}

fn schema(name: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        table: table(name),
        version: 1,
        columns: vec![
            Column {
                name: "id".into(),
                ty: ColumnType::Int64,
                source_type: "bigint".into(),
                key: true,
            },
            Column {
                name: "v".into(),
                ty: ColumnType::Text,
                source_type: "text".into(),
                key: false,
            },
        ],
    })
}

fn commit_info(seq: u64) -> CommitInfo {
    CommitInfo {
        seq,
        position: format!("pos-{seq}"),
        ack: seq * 10,
        commit_ts_us: 1_700_000_000_000_000 + seq as i64,
        txid: Some(seq.to_string()),
    }
}

fn row(name: &str, ord: u64, id: i64) -> RowChange {
    RowChange {
        table: table(name),
        op: Op::Insert,
        ord,
        values: vec![Datum::Int64(id), Datum::Text(format!("v{id}"))],
    }
}

/// A coordinator over a recorded lake in `dir`, started with `marks`.
struct Harness {
    coordinator: Coordinator<Recording, RecordingState, RecordingAck>,
    log: Shared,
    acked: Arc<AtomicU64>,
    dir: std::path::PathBuf,
}

impl Harness {
    fn new(
        dir: &std::path::Path,
        marks: HashMap<TableId, Mark>,
        max_rows: usize,
        snapshot_running: bool,
    ) -> Harness {
        let store = LakeStore::local(dir);
        let log: Shared = Arc::default();
        let acked = Arc::new(AtomicU64::new(0));
        let acknowledger = RecordingAck {
            log: log.clone(),
            acked: acked.clone(),
        };
        let sink = Recording {
            lake: LakeSink::new(store.clone(), "p"),
            log: log.clone(),
            acked: acked.clone(),
        };
        let state = RecordingState {
            state: LakeState::new(store, "p"),
            log: log.clone(),
        };
        let tuning = Tuning {
            limits: BatchLimits {
                max_rows,
                max_bytes: 64 << 20,
                max_delay: Duration::from_secs(3600),
            },
            snapshot_commit_bytes: 0,
            metrics: crate::metrics::Metrics::default(),
            lineage: crate::lineage::Lineage::default(),
        };
        let start = DriveStart {
            snapshot_running,
            copies: Vec::new(),
            stopped: Vec::new(),
            recorded_stopped: Vec::new(),
            phase: None,
            record_position: false,
        };
        Harness {
            coordinator: Coordinator::new(tuning, sink, state, marks, start, acknowledger),
            log,
            acked,
            dir: dir.to_path_buf(),
        }
    }

    async fn feed(&mut self, event: ChangeEvent) {
        if let ChangeEvent::SnapshotChunk { done, .. } = &event {
            // The chunk is open from its start event until its end event
            // has been handled.
            if !done {
                self.log.lock().unwrap().chunk_open = true;
            }
        }
        let closes_chunk = matches!(event, ChangeEvent::SnapshotChunk { done: true, .. });
        if closes_chunk {
            self.log.lock().unwrap().chunk_open = false;
        }
        let what = format!("{event:?}");
        self.coordinator.handle(event).await.expect("handled");
        let acked = self.acked.load(Ordering::SeqCst);
        self.log
            .lock()
            .unwrap()
            .check(acked, &format!("after {}", &what[..what.len().min(60)]));
    }

    /// Feeds one transaction (schemas first, as a source sends them).
    async fn txn(&mut self, txn: &Txn) {
        self.log.lock().unwrap().fed.push(txn.clone());
        self.feed(ChangeEvent::Begin(commit_info(txn.seq))).await;
        for (i, (t, ord)) in txn.rows.iter().enumerate() {
            self.feed(ChangeEvent::Row(row(
                &t.table,
                *ord,
                (txn.seq * 100 + i as u64) as i64,
            )))
            .await;
        }
        self.feed(ChangeEvent::Commit(commit_info(txn.seq))).await;
    }

    /// The flush timer firing.
    async fn tick(&mut self) {
        self.coordinator.checkpoint(None).await.expect("checkpoint");
        let acked = self.acked.load(Ordering::SeqCst);
        self.log
            .lock()
            .unwrap()
            .check(acked, "after a timed checkpoint");
    }

    fn assert_clean(&self) {
        let log = self.log.lock().unwrap();
        assert!(
            log.violations.is_empty(),
            "{}\ncalls:\n  {}",
            log.violations.join("\n"),
            log.calls.join("\n  ")
        );
    }

    /// Every committed mark of `name`, read back by a new lake sink.
    async fn lake_marks(&self, name: &str) -> Vec<Mark> {
        let mut lake = LakeSink::new(LakeStore::local(&self.dir), "p");
        let Some(log) = lake.read_log(&table(name)).await.unwrap() else {
            return Vec::new();
        };
        let mut marks = Vec::new();
        for batch in &log.batches {
            use arrow_array::cast::AsArray;
            use arrow_array::types::Int64Type;
            let seqs = batch
                .column_by_name("_tw_seq")
                .unwrap()
                .as_primitive::<Int64Type>();
            let ords = batch
                .column_by_name("_tw_ord")
                .unwrap()
                .as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                marks.push(Mark::new(seqs.value(i) as u64, ords.value(i) as u64));
            }
        }
        marks.sort();
        marks
    }
}

fn txn(seq: u64, rows: &[(&str, u64)]) -> Txn {
    Txn {
        seq,
        rows: rows.iter().map(|(t, o)| (table(t), *o)).collect(),
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tidewater-coordinator-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn acknowledgements_follow_commits_and_a_cut_transaction_waits_for_its_end() {
    let dir = temp_dir("acks");
    // Two rows per batch: a three-row transaction is cut in its middle.
    let mut h = Harness::new(&dir, HashMap::new(), 2, false);
    h.feed(ChangeEvent::Schema(schema("a"))).await;
    h.feed(ChangeEvent::Schema(schema("b"))).await;
    h.txn(&txn(1, &[("a", 1)])).await;
    h.txn(&txn(2, &[("a", 1), ("b", 2), ("a", 3)])).await;
    h.tick().await;
    h.txn(&txn(3, &[("b", 1)])).await;
    h.tick().await;
    // An idle heartbeat with nothing pending moves the acknowledgement on.
    h.feed(ChangeEvent::Heartbeat {
        ack: 35,
        position: "pos-3.5".into(),
    })
    .await;
    h.assert_clean();
    assert_eq!(h.acked.load(Ordering::SeqCst), 35);
    assert_eq!(
        h.lake_marks("a").await,
        vec![Mark::new(1, 1), Mark::new(2, 1), Mark::new(2, 3)]
    );
    assert_eq!(
        h.lake_marks("b").await,
        vec![Mark::new(2, 2), Mark::new(3, 1)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn no_commit_lands_inside_an_open_snapshot_chunk() {
    let dir = temp_dir("chunks");
    let mut h = Harness::new(&dir, HashMap::new(), 2, true);
    h.feed(ChangeEvent::Schema(schema("a"))).await;
    h.feed(ChangeEvent::Begin(commit_info(9))).await;
    for chunk in 0..3u32 {
        h.feed(ChangeEvent::SnapshotChunk {
            table: table("a"),
            index: chunk,
            done: false,
        })
        .await;
        for r in 1..=5u64 {
            let ord = (u64::from(chunk) << 32) | r;
            h.feed(ChangeEvent::Row(RowChange {
                op: Op::Read,
                ..row("a", ord, i64::from(chunk) * 10 + r as i64)
            }))
            .await;
        }
        // The flush timer fires mid-chunk: rows are written, not committed.
        h.tick().await;
        h.feed(ChangeEvent::SnapshotChunk {
            table: table("a"),
            index: chunk,
            done: true,
        })
        .await;
    }
    h.feed(ChangeEvent::SnapshotDone {
        seq: 9,
        position: "pos-9".into(),
    })
    .await;
    h.assert_clean();
    assert_eq!(h.lake_marks("a").await.len(), 15);
    let calls = h.log.lock().unwrap().calls.clone();
    assert!(
        calls.iter().filter(|c| c.starts_with("commit")).count() >= 3,
        "a commit between chunks: {calls:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_table_stop_is_recorded_before_anything_after_it_is_acknowledged() {
    let dir = temp_dir("stop");
    let mut h = Harness::new(&dir, HashMap::new(), 1000, false);
    h.feed(ChangeEvent::Schema(schema("a"))).await;
    h.feed(ChangeEvent::Schema(schema("b"))).await;
    h.txn(&txn(1, &[("a", 1), ("b", 2)])).await;
    h.tick().await;
    // b fails inside transaction 2: its rows there and after are dropped.
    h.log
        .lock()
        .unwrap()
        .fed
        .push(txn(2, &[("a", 1), ("b", 2)]));
    h.feed(ChangeEvent::Begin(commit_info(2))).await;
    h.feed(ChangeEvent::Row(row("a", 1, 201))).await;
    h.feed(ChangeEvent::TableFailed {
        table: table("b"),
        reason: "a change the source could not decode".into(),
    })
    .await;
    h.feed(ChangeEvent::Row(row("b", 2, 202))).await;
    h.feed(ChangeEvent::Commit(commit_info(2))).await;
    h.txn(&txn(3, &[("a", 1), ("b", 2)])).await;
    h.tick().await;
    h.assert_clean();
    assert_eq!(h.acked.load(Ordering::SeqCst), 30);
    let calls = h.log.lock().unwrap().calls.clone();
    let recorded = calls.iter().position(|c| c == "record stopped_tables");
    assert!(recorded.is_some(), "{calls:?}");
    assert_eq!(
        h.lake_marks("a").await,
        vec![Mark::new(1, 1), Mark::new(2, 1), Mark::new(3, 1)]
    );
    assert_eq!(h.lake_marks("b").await, vec![Mark::new(1, 2)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_replay_after_a_restart_is_skipped_exactly_at_each_tables_mark() {
    let dir = temp_dir("replay");
    let script = [
        txn(1, &[("a", 1), ("b", 2)]),
        txn(2, &[("a", 1), ("a", 2), ("b", 3), ("a", 4)]),
        txn(3, &[("b", 1), ("a", 2)]),
    ];
    {
        // The first run commits a cut in the middle of transaction 2.
        let mut h = Harness::new(&dir, HashMap::new(), 1000, false);
        h.feed(ChangeEvent::Schema(schema("a"))).await;
        h.feed(ChangeEvent::Schema(schema("b"))).await;
        h.txn(&script[0]).await;
        h.log.lock().unwrap().fed.push(script[1].clone());
        h.feed(ChangeEvent::Begin(commit_info(2))).await;
        h.feed(ChangeEvent::Row(row("a", 1, 201))).await;
        h.feed(ChangeEvent::Row(row("a", 2, 202))).await;
        h.tick().await;
        h.assert_clean();
        // Only transaction 1 is acknowledged: 2 is not complete.
        assert_eq!(h.acked.load(Ordering::SeqCst), 10);
    }
    // The restart reads each table's mark back and the source replays
    // from the acknowledged position: transaction 2 whole, then 3.
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let mut marks = HashMap::new();
    for name in ["a", "b"] {
        if let Some(mark) = Sink::mark(&mut lake, &table(name)).await.unwrap() {
            marks.insert(table(name), mark);
        }
    }
    assert_eq!(marks[&table("a")], Mark::new(2, 2));
    assert_eq!(marks[&table("b")], Mark::new(1, 2));
    let mut h = Harness::new(&dir, marks, 1000, false);
    h.feed(ChangeEvent::Schema(schema("a"))).await;
    h.feed(ChangeEvent::Schema(schema("b"))).await;
    h.txn(&script[1]).await;
    h.txn(&script[2]).await;
    h.tick().await;
    h.assert_clean();
    assert_eq!(
        h.lake_marks("a").await,
        vec![
            Mark::new(1, 1),
            Mark::new(2, 1),
            Mark::new(2, 2),
            Mark::new(2, 4),
            Mark::new(3, 2)
        ]
    );
    assert_eq!(
        h.lake_marks("b").await,
        vec![Mark::new(1, 2), Mark::new(2, 3), Mark::new(3, 1)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn read_row(name: &str, ord: u64, id: i64) -> ChangeEvent {
    ChangeEvent::Row(RowChange {
        op: Op::Read,
        ..row(name, ord, id)
    })
}

/// The copy's `Begin` (it has no `Commit`, nor anything to acknowledge).
fn copy_begin(seq: u64) -> ChangeEvent {
    ChangeEvent::Begin(CommitInfo {
        ack: 0,
        ..commit_info(seq)
    })
}

#[tokio::test]
async fn a_copy_interleaved_with_the_stream_lands_its_table_in_mark_order() {
    let dir = temp_dir("interleave");
    // Small batches: checkpoints land between the copy's rows.
    let mut h = Harness::new(&dir, HashMap::new(), 3, false);
    h.feed(ChangeEvent::Schema(schema("a"))).await;
    h.txn(&txn(1, &[("a", 1)])).await;
    // t is copied at 50; a's transactions go between the copy's rows; t's
    // own change in transaction 60 is held by the source and comes after
    // t's last copy row, before the copy's end.
    h.feed(ChangeEvent::Schema(schema("t"))).await;
    h.feed(copy_begin(50)).await;
    h.feed(ChangeEvent::TableSnapshot { table: table("t") })
        .await;
    for r in 1..=4u64 {
        h.feed(read_row("t", r, r as i64)).await;
    }
    h.txn(&txn(60, &[("a", 1)])).await;
    h.feed(copy_begin(50)).await;
    for r in 5..=8u64 {
        h.feed(read_row("t", r, r as i64)).await;
    }
    h.txn(&txn(70, &[("a", 1)])).await;
    h.feed(ChangeEvent::Begin(CommitInfo {
        ack: 0,
        ..commit_info(60)
    }))
    .await;
    h.feed(ChangeEvent::Row(row("t", 2, 3))).await;
    h.feed(ChangeEvent::TableSnapshotDone {
        table: table("t"),
        seq: 50,
    })
    .await;
    // A late replay of t at or below the copy's point is skipped.
    h.txn(&txn(80, &[("a", 1), ("t", 2)])).await;
    h.tick().await;
    h.assert_clean();
    assert_eq!(h.acked.load(Ordering::SeqCst), 800);
    let mut expected: Vec<Mark> = (1..=8).map(|r| Mark::new(50, r)).collect();
    expected.push(Mark::new(60, 2));
    expected.push(Mark::new(80, 2));
    assert_eq!(h.lake_marks("t").await, expected);
    // Written in that order too: a batch never sorts below the table's mark.
    let written = h.log.lock().unwrap().order[&table("t")].clone();
    assert!(written.windows(2).all(|w| w[0] < w[1]), "{written:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_table_stopped_during_its_copy_stays_stopped() {
    let dir = temp_dir("copystop");
    let mut h = Harness::new(&dir, HashMap::new(), 1000, false);
    h.feed(ChangeEvent::Schema(schema("a"))).await;
    h.feed(ChangeEvent::Schema(schema("t"))).await;
    h.feed(copy_begin(50)).await;
    h.feed(ChangeEvent::TableSnapshot { table: table("t") })
        .await;
    h.feed(read_row("t", 1, 1)).await;
    h.txn(&txn(60, &[("a", 1)])).await;
    h.feed(ChangeEvent::TableFailed {
        table: table("t"),
        reason: "a change the source could not decode".into(),
    })
    .await;
    h.feed(copy_begin(50)).await;
    h.feed(read_row("t", 2, 2)).await;
    h.feed(ChangeEvent::TableSnapshotDone {
        table: table("t"),
        seq: 50,
    })
    .await;
    h.tick().await;
    h.assert_clean();
    assert_eq!(h.log.lock().unwrap().stopped, vec![table("t")]);
    assert!(h.lake_marks("t").await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
