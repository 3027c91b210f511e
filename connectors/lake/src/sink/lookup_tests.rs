//! Lookups by key over a real lake on disk: the right latest images, and
//! only the files and pages their statistics allow read.

use std::time::Duration;

use tidewater_core::{BatchLimits, Batcher, Column, ColumnType, CommitInfo, Op, RowChange, Sink};

use super::*;

fn schema() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        table: TableId::new("app", "t"),
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

/// Commits one transaction `seq` of `rows` (op, id, v) to the lake.
async fn commit(lake: &mut LakeSink, seq: u64, rows: &[(Op, i64, &str)]) {
    let rows: Vec<(Op, Vec<Datum>)> = rows
        .iter()
        .map(|(op, id, v)| match op {
            Op::Truncate => (*op, Vec::new()),
            _ => (*op, vec![Datum::Int64(*id), Datum::Text(v.to_string())]),
        })
        .collect();
    commit_values(lake, schema(), seq, &rows).await
}

/// Commits one transaction `seq` of `rows` (op, values of `schema`'s
/// columns) to the lake.
async fn commit_values(
    lake: &mut LakeSink,
    schema: Arc<TableSchema>,
    seq: u64,
    rows: &[(Op, Vec<Datum>)],
) {
    let mut batcher = Batcher::new(BatchLimits {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
        max_delay: Duration::from_secs(3600),
    });
    batcher.set_schema(schema.clone()).expect("schema");
    batcher.begin(CommitInfo {
        seq,
        position: format!("pos-{seq}"),
        ack: seq,
        commit_ts_us: 1_700_000_000_000_000,
        txid: None,
    });
    for (ord, (op, values)) in rows.iter().enumerate() {
        batcher
            .push(RowChange {
                table: schema.table.clone(),
                op: *op,
                ord: ord as u64 + 1,
                values: values.clone(),
            })
            .expect("push");
    }
    lake.prepare(&schema).await.expect("prepare");
    for batch in batcher.cut_all().expect("cut") {
        Sink::write(lake, batch).await.expect("write");
    }
    Sink::commit(lake, &format!("pos-{seq}"), None)
        .await
        .expect("commit");
}

fn inserts(ids: std::ops::RangeInclusive<i64>) -> Vec<(Op, i64, &'static str)> {
    ids.map(|id| (Op::Insert, id, "first")).collect()
}

fn value(found: &HashMap<String, Vec<Datum>>, id: i64) -> Option<String> {
    match found.get(&key_string(&[Datum::Int64(id)]))?.get(1)? {
        Datum::Text(v) => Some(v.clone()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn lookups_read_only_the_files_and_pages_that_may_hold_the_keys() {
    let dir = std::env::temp_dir().join(format!("tw-lookup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let schema = schema();
    commit(&mut lake, 1, &inserts(1..=1000)).await;
    commit(&mut lake, 2, &inserts(1001..=21000)).await;
    commit(
        &mut lake,
        3,
        &[(Op::Update, 5, "second"), (Op::Update, 1500, "second")],
    )
    .await;
    commit(&mut lake, 4, &[(Op::Delete, 7, "")]).await;

    let keys =
        |ids: &[i64]| -> Vec<Vec<Datum>> { ids.iter().map(|&id| vec![Datum::Int64(id)]).collect() };
    let (found, report) = lake
        .lookup(&schema, &keys(&[5, 7, 1500, 1999, 30000]))
        .await
        .expect("lookup");
    assert_eq!(value(&found, 5).as_deref(), Some("second"));
    assert_eq!(value(&found, 1500).as_deref(), Some("second"));
    assert_eq!(value(&found, 1999).as_deref(), Some("first"));
    assert_eq!(value(&found, 7), None, "deleted");
    assert_eq!(value(&found, 30000), None, "never written");
    assert_eq!(report.files, 4);

    // One key in the middle of the 20 000-row file: that file only (the
    // others' key ranges are [1, 1000], [5, 1500] and [7, 7]), and only
    // the pages of its key column around the key.
    let (found, report) = lake.lookup(&schema, &keys(&[15000])).await.expect("lookup");
    assert_eq!(value(&found, 15000).as_deref(), Some("first"));
    assert_eq!(report.files_read, 1, "{report:?}");
    assert!(
        report.rows_scanned > 0 && report.rows_scanned <= 4096,
        "{report:?}"
    );
    assert!(report.fetched_bytes < report.file_bytes / 4, "{report:?}");

    // A truncate (NULL keys) is never pruned away: what came before it is gone.
    commit(&mut lake, 5, &[(Op::Truncate, 0, "")]).await;
    commit(&mut lake, 6, &[(Op::Insert, 1999, "third")]).await;
    let (found, report) = lake
        .lookup(&schema, &keys(&[5, 1999, 15000]))
        .await
        .expect("lookup");
    assert_eq!(value(&found, 1999).as_deref(), Some("third"));
    assert_eq!(value(&found, 5), None, "truncated");
    assert_eq!(value(&found, 15000), None, "truncated");
    assert!(report.files_read < report.files, "{report:?}");

    // The MySQL resume lookup: the key at a mark.
    assert_eq!(
        lake.key_at_mark(&schema, Mark::new(2, 14000))
            .await
            .expect("key at mark"),
        Some(vec![Datum::Int64(15000)])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rows of `table`'s current-state table: id → v.
async fn current_rows(lake: &LakeSink, table: &TableId) -> std::collections::BTreeMap<i64, String> {
    let current = deltalake::open_table_with_storage_options(
        lake.store.table_url(&lake.current_rel(table)).unwrap(),
        lake.store.storage_options(),
    )
    .await
    .expect("current table");
    let store = current.log_store().object_store(None);
    let mut rows = std::collections::BTreeMap::new();
    // Each file's deletion vector, applied to its rows.
    let mut dvs = super::dv::DeletionVectors::of(&current);
    let mut deleted = HashMap::new();
    for file in current.snapshot().unwrap().log_data().iter() {
        if let Some(dv) = file.deletion_vector_descriptor() {
            let rows = dvs.deleted(&dv).await.expect("deletion vector");
            deleted.insert(file.object_store_path(), rows);
        }
    }
    for file in ranged::data_files_sized(&current, table).unwrap() {
        let gone = deleted.remove(&file.path).unwrap_or_default();
        let mut at = 0u64;
        let fetched = Arc::default();
        let (mut reader, _) = ranged::read_parts(
            store.clone(),
            &file,
            table,
            None,
            ranged::Rows::All,
            &fetched,
        )
        .await
        .unwrap();
        while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path)
            .await
            .unwrap()
        {
            let ids = batch["id"].as_primitive::<Int64Type>();
            let vs = batch["v"].as_string::<i32>();
            for r in 0..batch.num_rows() {
                at += 1;
                if gone.contains(at - 1) {
                    continue;
                }
                let earlier = rows.insert(ids.value(r), vs.value(r).to_string());
                assert!(earlier.is_none(), "key {} twice", ids.value(r));
            }
        }
    }
    rows
}

/// The current table's last commit: (removed paths, added paths with
/// whether they carry a DV).
async fn last_commit(lake: &LakeSink, table: &TableId) -> (Vec<String>, Vec<(String, bool)>) {
    let log = lake
        .store
        .local_path(&lake.current_rel(table))
        .unwrap()
        .join("_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let text = std::fs::read_to_string(commits.last().unwrap()).unwrap();
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let action: Value = serde_json::from_str(line).unwrap();
        if let Some(remove) = action.get("remove") {
            removed.push(remove["path"].as_str().unwrap().to_string());
        }
        if let Some(add) = action.get("add") {
            added.push((
                add["path"].as_str().unwrap().to_string(),
                add.get("deletionVector").is_some_and(|d| !d.is_null()),
            ));
        }
    }
    (removed, added)
}

/// The number of data files of the current table and its protocol.
async fn current_files(lake: &LakeSink, table: &TableId) -> (usize, Value) {
    let current = deltalake::open_table_with_storage_options(
        lake.store.table_url(&lake.current_rel(table)).unwrap(),
        lake.store.storage_options(),
    )
    .await
    .unwrap();
    let protocol = serde_json::to_value(current.snapshot().unwrap().protocol()).unwrap();
    (
        ranged::data_files_sized(&current, table).unwrap().len(),
        protocol,
    )
}

/// Changes of every ~1000th key from `1 + round`: deletes of the even ones,
/// updates of the others, applied to `expected` too.
fn spread(
    round: i64,
    expected: &mut std::collections::BTreeMap<i64, String>,
) -> Vec<(Op, i64, &'static str)> {
    let mut changes = Vec::new();
    for id in (1 + round..=20000).step_by(997) {
        if id % 2 == 0 {
            changes.push((Op::Delete, id, ""));
            expected.remove(&id);
        } else {
            changes.push((Op::Update, id, "second"));
            expected.insert(id, "second".into());
        }
    }
    changes
}

/// `sink.current_state_deletion_vectors`: a merge of keys spread over every
/// file of the current table rewrites none of them (each is re-added with a
/// DV of its changed rows); a later merge of the same files unites the DVs;
/// a file more than half deleted is rewritten; turning the key off again
/// rewrites with the DVs applied; the table reads right throughout.
#[tokio::test]
async fn merges_with_deletion_vectors_rewrite_no_file() {
    let dir = std::env::temp_dir().join(format!("tw-merge-dv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    lake.set_target_file_size(64 << 10);
    let table = schema().table.clone();
    for chunk in 0..4 {
        commit(
            &mut lake,
            chunk + 1,
            &inserts(chunk as i64 * 5000 + 1..=(chunk as i64 + 1) * 5000),
        )
        .await;
    }
    // Created without DVs; the key turned on later upgrades it at the next
    // merge.
    lake.merge_current(&table).await.expect("merge");
    let mut expected: std::collections::BTreeMap<i64, String> =
        (1..=20000).map(|id| (id, "first".to_string())).collect();
    lake.set_current_state_deletion_vectors(true);
    let (files, _) = current_files(&lake, &table).await;
    assert!(files >= 4, "{files} current files");
    let mut seq = 10;
    for round in 0..2 {
        let changes = spread(round, &mut expected);
        seq += 1;
        commit(&mut lake, seq, &changes).await;
        let report = lake.merge_current(&table).await.expect("merge");
        assert_eq!(report.files_rewritten, 0, "round {round}: {report:?}");
        assert!(
            report.files_marked >= files.min(3),
            "round {round}: {report:?}"
        );
        let (removed, added) = last_commit(&lake, &table).await;
        for path in &removed {
            assert!(
                added.iter().any(|(p, dv)| p == path && *dv),
                "round {round}: {path} removed without its re-add with a DV"
            );
        }
        assert_eq!(added.len(), removed.len() + 1, "one file of new rows");
        let (_, protocol) = current_files(&lake, &table).await;
        assert_eq!(
            protocol,
            serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]})
        );
        assert_eq!(current_rows(&lake, &table).await, expected, "round {round}");
    }
    // Most keys of the first file (1..=~5000) deleted: that file is
    // rewritten rather than marked.
    seq += 1;
    let deletes: Vec<(Op, i64, &str)> = (1..=4000).map(|id| (Op::Delete, id, "")).collect();
    for id in 1..=4000 {
        expected.remove(&id);
    }
    commit(&mut lake, seq, &deletes).await;
    let report = lake.merge_current(&table).await.expect("merge");
    assert!(report.files_rewritten >= 1, "{report:?}");
    assert_eq!(current_rows(&lake, &table).await, expected);
    // The key off again: merges rewrite the files they touch, their DVs
    // applied (the table keeps the feature).
    lake.set_current_state_deletion_vectors(false);
    seq += 1;
    let changes = spread(7, &mut expected);
    commit(&mut lake, seq, &changes).await;
    let report = lake.merge_current(&table).await.expect("merge");
    assert_eq!(report.files_marked, 0, "{report:?}");
    assert!(report.files_rewritten >= 1, "{report:?}");
    assert_eq!(current_rows(&lake, &table).await, expected);
    let (_, added) = last_commit(&lake, &table).await;
    assert!(added.iter().all(|(_, dv)| !dv), "{added:?}");
    // A truncate: everything goes, DVs and all.
    lake.set_current_state_deletion_vectors(true);
    seq += 1;
    commit(&mut lake, seq, &[(Op::Truncate, 0, "")]).await;
    seq += 1;
    commit(&mut lake, seq, &[(Op::Insert, 5, "after")]).await;
    lake.merge_current(&table).await.expect("merge");
    assert_eq!(
        current_rows(&lake, &table).await,
        std::collections::BTreeMap::from([(5, "after".to_string())])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_merge_reads_the_new_log_files_and_rewrites_only_the_files_holding_changed_keys() {
    let dir = std::env::temp_dir().join(format!("tw-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    // Small files, so the current table has several, each a key range.
    lake.set_target_file_size(64 << 10);
    let table = schema().table.clone();
    for chunk in 0..4 {
        commit(
            &mut lake,
            chunk + 1,
            &inserts(chunk as i64 * 5000 + 1..=(chunk as i64 + 1) * 5000),
        )
        .await;
    }
    let first = lake.merge_current(&table).await.expect("merge");
    assert_eq!(first.changed_keys, 20000);
    let mut expected: std::collections::BTreeMap<i64, String> =
        (1..=20000).map(|id| (id, "first".to_string())).collect();
    assert_eq!(current_rows(&lake, &table).await, expected);

    commit(
        &mut lake,
        10,
        &[
            (Op::Update, 12345, "second"),
            (Op::Delete, 12346, ""),
            (Op::Insert, 30000, "new"),
        ],
    )
    .await;
    let second = lake.merge_current(&table).await.expect("merge");
    // Only the new commit's file of the log, and the one current file whose
    // key range holds 12345/12346 (30000 lies beyond every file).
    assert_eq!(second.log_files_read, 1, "{second:?}");
    assert_eq!(second.changed_keys, 3);
    assert_eq!(second.files_rewritten, 1, "{second:?}");
    expected.insert(12345, "second".into());
    expected.remove(&12346);
    expected.insert(30000, "new".into());
    assert_eq!(current_rows(&lake, &table).await, expected);

    // Nothing new: nothing read.
    assert_eq!(
        lake.merge_current(&table).await.expect("merge"),
        MergeReport::default()
    );

    // With a vacuum policy a merge deletes the files earlier merges
    // replaced, once older than the retention: the current table's
    // directory holds its live files only.
    let parquet_on_disk = || {
        std::fs::read_dir(dir.join("p.current/app/t"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            .count()
    };
    assert!(
        parquet_on_disk() > current_files(&lake, &table).await.0,
        "the rewritten file is still on disk"
    );
    lake.set_maintenance(crate::MaintenancePolicy {
        vacuum: Some((Duration::ZERO, Duration::from_secs(3600))),
        ..Default::default()
    });
    commit(&mut lake, 11, &[(Op::Update, 1, "third")]).await;
    // Past the storage clock margin vacuum keeps for young files.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    lake.merge_current(&table)
        .await
        .expect("merge with a vacuum");
    expected.insert(1, "third".into());
    assert_eq!(current_rows(&lake, &table).await, expected);
    assert_eq!(parquet_on_disk(), current_files(&lake, &table).await.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_first_merge_copies_snapshot_rows_without_holding_their_keys() {
    let dir = std::env::temp_dir().join(format!("tw-merge-first-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let table = schema().table.clone();
    let reads = |ids: std::ops::RangeInclusive<i64>| -> Vec<(Op, i64, &'static str)> {
        ids.map(|id| (Op::Read, id, "copied")).collect()
    };
    // A snapshot in three commits, then changes of some of its keys.
    commit(&mut lake, 1, &reads(1..=3000)).await;
    commit(&mut lake, 2, &reads(3001..=6000)).await;
    commit(&mut lake, 3, &reads(6001..=9000)).await;
    commit(
        &mut lake,
        20,
        &[
            (Op::Update, 10, "changed"),
            (Op::Delete, 11, ""),
            (Op::Insert, 20000, "new"),
        ],
    )
    .await;
    let report = lake.merge_current(&table).await.expect("merge");
    // Only the three changed keys were held; 9 000 - 2 snapshot rows copied.
    assert_eq!(report.keys_held, 3, "{report:?}");
    assert_eq!(report.rows_written, 8998 + 2, "{report:?}");
    let mut expected: std::collections::BTreeMap<i64, String> =
        (1..=9000).map(|id| (id, "copied".to_string())).collect();
    expected.insert(10, "changed".into());
    expected.remove(&11);
    expected.insert(20000, "new".into());
    assert_eq!(current_rows(&lake, &table).await, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn merges_fold_the_small_files_they_leave_behind() {
    let dir = std::env::temp_dir().join(format!("tw-merge-fold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let table = schema().table.clone();
    commit(&mut lake, 1, &inserts(1..=100)).await;
    lake.merge_current(&table).await.expect("merge");
    let mut expected: std::collections::BTreeMap<i64, String> =
        (1..=100).map(|id| (id, "first".to_string())).collect();
    for step in 0..30 {
        let id = 1000 + step;
        commit(&mut lake, 10 + step as u64, &[(Op::Insert, id, "later")]).await;
        lake.merge_current(&table).await.expect("merge");
        expected.insert(id, "later".into());
    }
    let current = deltalake::open_table_with_storage_options(
        lake.store.table_url(&lake.current_rel(&table)).unwrap(),
        lake.store.storage_options(),
    )
    .await
    .unwrap();
    let files = ranged::data_files_sized(&current, &table).unwrap().len();
    assert!(files <= FOLD_FILES_BOUND, "{files} files after 31 merges");
    assert_eq!(current_rows(&lake, &table).await, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One merge adds a file; folding starts at `FOLD_SMALL_FILES`.
const FOLD_FILES_BOUND: usize = super::current::FOLD_SMALL_FILES + 1;

#[tokio::test]
async fn compaction_works_off_a_backlog_one_group_per_call() {
    let dir = std::env::temp_dir().join(format!("tw-compact-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let table = schema().table.clone();
    for seq in 1..=12u64 {
        let first = seq as i64 * 1000;
        commit(&mut lake, seq, &inserts(first..=first + 499)).await;
    }
    let files = |lake: &LakeSink| {
        ranged::data_files_sized(&lake.tables[&table].table, &table)
            .unwrap()
            .len()
    };
    assert_eq!(files(&lake), 12);
    // Groups of about 3 of these files.
    let bytes = ranged::data_files_sized(&lake.tables[&table].table, &table).unwrap()[0]
        .size
        .unwrap();
    let policy = Compaction {
        target_file_bytes: bytes * 3,
        min_files: 2,
    };
    let first = lake.compact(&table, &policy).await.expect("compact");
    assert!(
        first.files_removed >= 2 && first.files_removed < 12,
        "{first:?}"
    );
    let mut calls = 1;
    while lake
        .compact(&table, &policy)
        .await
        .expect("compact")
        .files_removed
        > 0
    {
        calls += 1;
        assert!(calls < 12);
    }
    assert!(calls >= 3, "{calls} calls");
    assert!(files(&lake) < 12);
    let keys: Vec<Vec<Datum>> = (1..=12).map(|s| vec![Datum::Int64(s * 1000 + 7)]).collect();
    let found = lake.latest_rows(&schema(), &keys).await.expect("lookup");
    assert_eq!(found.len(), 12);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every row of `table`'s change log as its live files hold it:
/// (seq, ord, id, v), sorted.
async fn log_rows(lake: &LakeSink, table: &TableId) -> Vec<(i64, i64, i64, String)> {
    let delta = &lake.tables[table].table;
    let store = delta.log_store().object_store(None);
    let mut rows = Vec::new();
    for file in ranged::data_files_sized(delta, table).unwrap() {
        let fetched = Arc::default();
        let (mut reader, _) = ranged::read_parts(
            store.clone(),
            &file,
            table,
            None,
            ranged::Rows::All,
            &fetched,
        )
        .await
        .unwrap();
        while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path)
            .await
            .unwrap()
        {
            let seqs = batch["_tw_seq"].as_primitive::<Int64Type>();
            let ords = batch["_tw_ord"].as_primitive::<Int64Type>();
            let ids = batch["id"].as_primitive::<Int64Type>();
            let vs = batch["v"].as_string::<i32>();
            for r in 0..batch.num_rows() {
                rows.push((
                    seqs.value(r),
                    ords.value(r),
                    ids.value(r),
                    vs.value(r).to_string(),
                ));
            }
        }
    }
    rows.sort();
    let marks: std::collections::BTreeSet<(i64, i64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(marks.len(), rows.len(), "a change twice in the log");
    rows
}

/// Live data files of `table`.
fn live_files(lake: &LakeSink, table: &TableId) -> Vec<deltalake::Path> {
    ranged::data_files_sized(&lake.tables[table].table, table)
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect()
}

/// One group of every small file (they are all far below a GiB).
const ALL_IN_ONE_GROUP: Compaction = Compaction {
    target_file_bytes: 1 << 30,
    min_files: 2,
};

/// Issue 20: the rewrite runs beside the stream; the stream's commits that
/// land meanwhile stay, each row once, and the compaction commits on top of
/// them with the latest mark and position — what a restart reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_compaction_commits_on_top_of_the_stream_commits_made_meanwhile() {
    let dir = std::env::temp_dir().join(format!("tw-compact-bg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let table = schema().table.clone();
    for seq in 1..=6u64 {
        let first = seq as i64 * 1000;
        commit(&mut lake, seq, &inserts(first..=first + 199)).await;
    }
    let planned = lake.tables[&table].state.clone().unwrap();
    let job = lake
        .compaction_job(&table, &ALL_IN_ONE_GROUP)
        .expect("plan")
        .expect("a group of small files");
    let rewrite = tokio::spawn(job.run());
    // The stream goes on while the rewrite runs.
    commit(&mut lake, 7, &[(Op::Update, 1000, "second")]).await;
    commit(&mut lake, 8, &inserts(9000..=9009)).await;
    let output = rewrite.await.unwrap().expect("rewrite");
    let expected = log_rows(&lake, &table).await;
    assert_eq!(expected.len(), 6 * 200 + 1 + 10);
    let stream = lake.tables[&table].state.clone().unwrap();
    assert_eq!(live_files(&lake, &table).len(), 8);

    let report = lake.commit_compaction(output).await.expect("commit");
    assert_eq!(
        report,
        CompactionReport {
            files_removed: 6,
            files_added: 1,
            rows: 1200
        }
    );
    assert_eq!(live_files(&lake, &table).len(), 3);
    assert_eq!(log_rows(&lake, &table).await, expected);
    // The latest stream commit's mark and position, not the planned-at ones.
    let state = lake.tables[&table].state.clone().unwrap();
    assert_ne!(planned.mark, stream.mark);
    assert_eq!(state.mark, stream.mark);
    assert_eq!(state.mark, Mark::new(8, 10));
    assert_eq!(state.position, "pos-8");
    assert_eq!(state.commits, stream.commits + 1);
    assert_eq!(state.version, stream.version + 1);
    // A restart reads the same back from the compaction's commit.
    let mut again = LakeSink::new(LakeStore::local(&dir), "p");
    let read = again.table_state(&table).await.unwrap().unwrap();
    assert_eq!(
        (read.mark, read.position, read.commits, read.version),
        (state.mark, state.position, state.commits, state.version)
    );
    assert_eq!(log_rows(&again, &table).await, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 20: a compaction whose plan no longer holds when its rewrite ends
/// — a file of its group removed meanwhile, the schema evolved meanwhile —
/// is dropped and leaves the table as it is.
#[tokio::test]
async fn a_compaction_whose_plan_no_longer_holds_is_dropped() {
    let dir = std::env::temp_dir().join(format!("tw-compact-stale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let table = schema().table.clone();
    for seq in 1..=4u64 {
        let first = seq as i64 * 1000;
        commit(&mut lake, seq, &inserts(first..=first + 99)).await;
    }
    // The group's files removed meanwhile (by another compaction of them).
    let stale = lake
        .compaction_job(&table, &ALL_IN_ONE_GROUP)
        .unwrap()
        .unwrap()
        .run()
        .await
        .expect("rewrite");
    let first = lake.compact(&table, &ALL_IN_ONE_GROUP).await.unwrap();
    assert_eq!(first.files_removed, 4);
    let (state, rows, files) = (
        lake.tables[&table].state.clone().unwrap(),
        log_rows(&lake, &table).await,
        live_files(&lake, &table),
    );
    let report = lake.commit_compaction(stale).await.expect("commit");
    assert_eq!(report, CompactionReport::default());
    assert_eq!(lake.tables[&table].state.clone().unwrap(), state);
    assert_eq!(live_files(&lake, &table), files);
    assert_eq!(log_rows(&lake, &table).await, rows);

    // The schema evolved meanwhile (a column added by a commit).
    commit(&mut lake, 10, &inserts(10000..=10009)).await;
    let stale = lake
        .compaction_job(&table, &ALL_IN_ONE_GROUP)
        .unwrap()
        .unwrap()
        .run()
        .await
        .expect("rewrite");
    let mut wider = schema().as_ref().clone();
    wider.version = 2;
    wider.columns.push(Column {
        name: "w".into(),
        ty: ColumnType::Text,
        source_type: "text".into(),
        key: false,
    });
    commit_values(
        &mut lake,
        Arc::new(wider),
        11,
        &[(
            Op::Insert,
            vec![
                Datum::Int64(11000),
                Datum::Text("wide".into()),
                Datum::Text("w".into()),
            ],
        )],
    )
    .await;
    let (state, rows, files) = (
        lake.tables[&table].state.clone().unwrap(),
        log_rows(&lake, &table).await,
        live_files(&lake, &table),
    );
    assert_eq!(files.len(), 3);
    let report = lake.commit_compaction(stale).await.expect("commit");
    assert_eq!(report, CompactionReport::default());
    assert_eq!(lake.tables[&table].state.clone().unwrap(), state);
    assert_eq!(live_files(&lake, &table), files);
    assert_eq!(log_rows(&lake, &table).await, rows);
    // Planned again on the table as it is now, it commits.
    let again = lake.compact(&table, &ALL_IN_ONE_GROUP).await.unwrap();
    assert_eq!(again.files_removed, 3);
    assert_eq!(log_rows(&lake, &table).await, rows);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets the last modification time of the file at `path`.
fn touch(path: &std::path::Path, at: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// Names of the files in `dir` (not below).
fn names(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Issue 20: vacuum without a Delta commit deletes files removed longer ago
/// than the retention and never-committed files older than it; it keeps
/// live files whatever their age, recently removed ones, young ones, hidden
/// ones, and the files of a compaction planned before it and not committed
/// yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_old_unneeded_files_and_keeps_live_young_and_hidden_ones() {
    use std::time::SystemTime;
    let dir = std::env::temp_dir().join(format!("tw-vacuum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    let table = schema().table.clone();
    for seq in 1..=4u64 {
        let first = seq as i64 * 1000;
        commit(&mut lake, seq, &inserts(first..=first + 99)).await;
    }
    let removed: Vec<String> = live_files(&lake, &table)
        .iter()
        .map(|p| p.to_string())
        .collect();
    lake.compact(&table, &ALL_IN_ONE_GROUP).await.unwrap();
    let live: Vec<String> = live_files(&lake, &table)
        .iter()
        .map(|p| p.to_string())
        .collect();
    let rows = log_rows(&lake, &table).await;
    let path = dir.join("p/app/t");
    let now = SystemTime::now();
    let day_ago = now - Duration::from_secs(86_400);
    // Everything there is a day old (the live file too); then files no
    // commit added: old, young, and hidden ones.
    for name in names(&path) {
        touch(&path.join(name), day_ago);
    }
    for (name, at) in [
        ("part-never-committed-old.parquet", day_ago),
        ("part-never-committed-young.parquet", now),
        (".hidden-old", day_ago),
        ("_tidewater_other-old", day_ago),
    ] {
        std::fs::write(path.join(name), b"x").unwrap();
        touch(&path.join(name), at);
    }
    let hour = Duration::from_secs(3600);

    // Retention one hour, now: the compaction's removals are recent.
    let job = lake.vacuum_job(&table, hour, now).unwrap().unwrap();
    assert_eq!(job.run().await.expect("vacuum"), 1);
    let left = names(&path);
    assert!(
        !left.contains("part-never-committed-old.parquet"),
        "{left:?}"
    );
    for name in removed.iter().chain(&live).map(String::as_str).chain([
        "part-never-committed-young.parquet",
        ".hidden-old",
        "_tidewater_other-old",
        "_tidewater_schema_history.json",
    ]) {
        assert!(left.contains(name), "{name} deleted: {left:?}");
    }
    assert!(path.join("_delta_log").is_dir());

    // Two hours later: the removals are older than the retention, and so
    // is the young file; one written since (90 minutes on) is not.
    std::fs::write(path.join("part-later.parquet"), b"x").unwrap();
    touch(&path.join("part-later.parquet"), now + hour + hour / 2);
    let job = lake
        .vacuum_job(&table, hour, now + 2 * hour)
        .unwrap()
        .unwrap();
    assert_eq!(job.run().await.expect("vacuum"), removed.len() + 1);
    let left = names(&path);
    for name in removed
        .iter()
        .map(String::as_str)
        .chain(["part-never-committed-young.parquet"])
    {
        assert!(!left.contains(name), "{name} kept: {left:?}");
    }
    for name in live.iter().map(String::as_str).chain([
        "part-later.parquet",
        ".hidden-old",
        "_tidewater_other-old",
        "_tidewater_schema_history.json",
    ]) {
        assert!(left.contains(name), "{name} deleted: {left:?}");
    }
    assert_eq!(log_rows(&lake, &table).await, rows);

    // A compaction planned before the vacuum, its files written and not
    // committed yet: kept, however old the vacuum's clock makes them.
    commit(&mut lake, 10, &inserts(10000..=10009)).await;
    let job = lake
        .compaction_job(&table, &ALL_IN_ONE_GROUP)
        .unwrap()
        .unwrap();
    lake.start_compaction(job);
    while !lake.clock.compaction.as_ref().unwrap().handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = names(&path);
    let job = lake
        .vacuum_job(&table, hour, now + 2 * hour)
        .unwrap()
        .unwrap();
    assert_eq!(job.run().await.expect("vacuum"), 0);
    assert_eq!(names(&path), before);
    lake.finish_maintenance().await;
    assert_eq!(live_files(&lake, &table).len(), 1);
    let rows = log_rows(&lake, &table).await;
    assert_eq!(rows.len(), 4 * 100 + 10);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A current table created with deletion vectors on names them alone
/// (reader 3 / writer 7, no `invariants`: this build could not write it).
#[tokio::test]
async fn a_current_table_created_with_deletion_vectors_names_only_them() {
    let dir = std::env::temp_dir().join(format!("tw-merge-dv-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lake = LakeSink::new(LakeStore::local(&dir), "p");
    lake.set_current_state_deletion_vectors(true);
    let table = schema().table.clone();
    commit(&mut lake, 1, &inserts(1..=100)).await;
    lake.merge_current(&table).await.expect("merge");
    commit(&mut lake, 2, &[(Op::Update, 7, "second")]).await;
    let report = lake.merge_current(&table).await.expect("merge");
    assert_eq!(report.files_marked, 1, "{report:?}");
    let (_, protocol) = current_files(&lake, &table).await;
    assert_eq!(
        protocol,
        serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]})
    );
    let mut expected: std::collections::BTreeMap<i64, String> =
        (1..=100).map(|id| (id, "first".to_string())).collect();
    expected.insert(7, "second".into());
    assert_eq!(current_rows(&lake, &table).await, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
