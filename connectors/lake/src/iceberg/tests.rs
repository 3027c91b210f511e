//! The Iceberg sink over a real lake on disk and a SQLite catalog: commits,
//! restart, schema changes, a foreign writer's commit and a second writer.

use std::sync::Arc;
use std::time::Duration;

use tidewater_core::{BatchLimits, Batcher, Column, ColumnType, CommitInfo, Op, RowChange};

use super::catalog::{SqlBackend, SqlCatalog};
use super::*;

pub(super) fn column(name: &str, ty: ColumnType, source: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        ty,
        source_type: source.into(),
        key,
    }
}

pub(super) fn schema(columns: Vec<Column>) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        table: TableId::new("app", "t"),
        version: 1,
        columns,
    })
}

pub(super) fn base() -> Vec<Column> {
    vec![
        column("id", ColumnType::Int32, "integer", true),
        column("v", ColumnType::Text, "text", false),
    ]
}

pub(super) async fn commit_rows(
    sink: &mut IcebergSink,
    schema: Arc<TableSchema>,
    seq: u64,
    rows: &[(Op, Vec<Datum>)],
) {
    commit_rows_at(sink, schema, seq, rows, 1_700_000_000_000_000).await
}

/// [`commit_rows`] of a source commit at `commit_ts_us`.
pub(super) async fn commit_rows_at(
    sink: &mut IcebergSink,
    schema: Arc<TableSchema>,
    seq: u64,
    rows: &[(Op, Vec<Datum>)],
    commit_ts_us: i64,
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
        commit_ts_us,
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
    Sink::prepare(sink, &schema).await.expect("prepare");
    for batch in batcher.cut_all().expect("cut") {
        Sink::write(sink, batch).await.expect("write");
    }
    Sink::commit(sink, &format!("pos-{seq}"), None)
        .await
        .expect("commit");
}

pub(super) fn open(dir: &std::path::Path) -> IcebergSink {
    let store = LakeStore::local(&dir.join("lake"));
    let catalog = SqlCatalog::new(SqlBackend::Sqlite(dir.join("catalog.db")), "tidewater");
    IcebergSink::new(store, "p", catalog)
}

pub(super) fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tw-iceberg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn row(id: i32, v: &str) -> (Op, Vec<Datum>) {
    (Op::Insert, vec![Datum::Int32(id), Datum::Text(v.into())])
}

#[tokio::test]
async fn commits_carry_the_mark_and_a_restart_reads_it_back() {
    let dir = scratch("marks");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    commit_rows(&mut sink, schema(base()), 10, &[row(1, "a"), row(2, "b")]).await;
    commit_rows(&mut sink, schema(base()), 11, &[row(3, "c")]).await;
    let files = sink.data_files(&table).await.unwrap();
    assert_eq!(files.len(), 2);
    for entry in &files {
        let path = entry
            .file
            .path
            .strip_prefix("file://")
            .expect("a local file");
        assert_eq!(
            std::fs::metadata(path).unwrap().len() as i64,
            entry.file.size,
            "the manifest's size of {path}"
        );
    }
    assert_eq!(files.iter().map(|f| f.file.record_count).sum::<i64>(), 3);
    // Sequence numbers: the first commit's file is sequence 1, inherited.
    let mut seqs: Vec<i64> = files.iter().filter_map(|f| f.sequence_number).collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2]);
    // id bounds of the second file.
    let second = files.iter().find(|f| f.sequence_number == Some(2)).unwrap();
    assert_eq!(second.file.lower_bounds[&1], 3i32.to_le_bytes().to_vec());

    let mut again = open(&dir);
    let state = again.table_state(&table).await.unwrap().expect("state");
    assert_eq!(state.mark, Mark { seq: 11, ord: 1 });
    assert_eq!(state.position, "pos-11");
    assert_eq!(state.commits, 2);
    assert!(state.snapshot_done);
    // A batch at or below the mark is skipped.
    commit_rows(&mut again, schema(base()), 11, &[row(3, "c")]).await;
    assert_eq!(again.data_files(&table).await.unwrap().len(), 2);
}

#[tokio::test]
async fn new_columns_promotions_and_type_changes_evolve_the_schema() {
    let dir = scratch("evolve");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    commit_rows(&mut sink, schema(base()), 1, &[row(1, "a")]).await;
    // id int → bigint widens in place; w is new; v text → int is versioned.
    let wider = schema(vec![
        column("id", ColumnType::Int64, "bigint", true),
        column("v", ColumnType::Int32, "integer", false),
        column("w", ColumnType::Bool, "boolean", false),
    ]);
    commit_rows(
        &mut sink,
        wider,
        2,
        &[(
            Op::Insert,
            vec![Datum::Int64(2), Datum::Int32(7), Datum::Bool(true)],
        )],
    )
    .await;
    let open = sink.tables.get(&table).unwrap();
    let fields = open.metadata.fields();
    let by_name: HashMap<&str, &IcebergField> =
        fields.iter().map(|f| (f.name.as_str(), f)).collect();
    assert_eq!(by_name["id"].ty, schema::IcebergType::Long);
    assert_eq!(by_name["id"].id, 1, "promoted in place keeps its id");
    assert_eq!(by_name["v"].ty, schema::IcebergType::String);
    assert_eq!(by_name["v__v2"].ty, schema::IcebergType::Int);
    assert_eq!(by_name["w"].ty, schema::IcebergType::Boolean);
    assert_eq!(open.metadata.current_schema_id(), 1);
    assert!(open.metadata.last_column_id() >= by_name["v__v2"].id);
}

#[tokio::test]
async fn a_second_process_of_the_pipeline_stops_and_a_foreign_commit_is_built_upon() {
    let dir = scratch("writers");
    let table = TableId::new("app", "t");
    let mut first = open(&dir);
    commit_rows(&mut first, schema(base()), 1, &[row(1, "a")]).await;
    let mut second = open(&dir);
    second.table_state(&table).await.unwrap();
    commit_rows(&mut first, schema(base()), 2, &[row(2, "b")]).await;
    // The second process's view is stale, and the table moved by a commit
    // of this pipeline: it stops.
    Sink::prepare(&mut second, &schema(base())).await.unwrap();
    let mut batcher = Batcher::new(BatchLimits {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
        max_delay: Duration::from_secs(3600),
    });
    batcher.set_schema(schema(base())).unwrap();
    batcher.begin(CommitInfo {
        seq: 3,
        position: "pos-3".into(),
        ack: 3,
        commit_ts_us: 1_700_000_000_000_000,
        txid: None,
    });
    let (op, values) = row(3, "c");
    batcher
        .push(RowChange {
            table: table.clone(),
            op,
            ord: 1,
            values,
        })
        .unwrap();
    for batch in batcher.cut_all().unwrap() {
        Sink::write(&mut second, batch).await.unwrap();
    }
    let err = Sink::commit(&mut second, "pos-3", None).await.unwrap_err();
    assert!(matches!(err, LakeError::ConcurrentWriter { .. }), "{err}");
    // A commit made by someone else (not this pipeline) between our read
    // and our swap: rebuilt on top of it, both kept.
    let stale = first.tables.get(&table).unwrap().metadata.clone();
    commit_rows(&mut first, schema(base()), 4, &[row(4, "d")]).await;
    let newer = first.tables.get(&table).unwrap().metadata.clone();
    // Pretend `first` never saw its own last commit, with the commit count
    // of the newer metadata lowered as if another pipeline made it.
    let mut foreign = newer.json.clone();
    foreign["properties"]["tidewater.p.commits"] = Value::from("3");
    let (ns, name) = identifier("p", &table);
    let rel = format!(
        "p/app/t/metadata/{}",
        metadata_file_name(newer.version() + 1)
    );
    first.store.write(&rel, &foreign.to_string()).await.unwrap();
    let foreign_at = first.store.uri_of(&rel);
    let Catalog::Sql(catalog) = &first.catalog else {
        panic!("a SQL catalog")
    };
    assert_eq!(
        catalog
            .swap(&ns, &name, &newer.location, &foreign_at)
            .await
            .unwrap(),
        Swap::Done
    );
    let mut stale_open = first.tables.remove(&table).unwrap();
    stale_open.metadata = stale;
    stale_open.state = Some(TableState {
        mark: Mark { seq: 4, ord: 1 },
        position: "pos-4".into(),
        snapshot_done: true,
        version: 0,
        commits: 3,
    });
    first.tables.insert(table.clone(), stale_open);
    commit_rows(&mut first, schema(base()), 5, &[row(5, "e")]).await;
    let files = first.data_files(&table).await.unwrap();
    assert_eq!(
        files.iter().map(|f| f.file.record_count).sum::<i64>(),
        4,
        "rows of seq 1, 2, 4 and 5"
    );
}

#[tokio::test]
async fn past_a_hundred_manifests_a_commit_folds_them_and_every_file_keeps_its_sequence() {
    let dir = scratch("fold");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    let commits = maintenance::MERGE_MANIFESTS as i32 + 5;
    for seq in 1..=commits {
        commit_rows(&mut sink, schema(base()), seq as u64, &[row(seq, "v")]).await;
    }
    let snapshot = sink
        .tables
        .get(&table)
        .unwrap()
        .metadata
        .current_snapshot()
        .cloned()
        .unwrap();
    let manifests = sink.manifests_of(&table, &snapshot).await.unwrap();
    assert!(
        manifests.len() < 10,
        "{} manifests after {commits} commits",
        manifests.len()
    );
    let files = sink.data_files(&table).await.unwrap();
    assert_eq!(
        files.len(),
        commits as usize,
        "every file still listed once"
    );
    let mut seqs: Vec<i64> = files.iter().filter_map(|f| f.sequence_number).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=commits as i64).collect::<Vec<_>>(),
        "sequence numbers kept"
    );
    // Each file still holds its row, read back through the folded manifest.
    for entry in &files {
        let id = long_lower(entry, 1);
        assert_eq!(Some(id), entry.sequence_number, "file of commit {id}");
    }
    // A restart reads the mark as before.
    let state = open(&dir).table_state(&table).await.unwrap().unwrap();
    assert_eq!(
        state.mark,
        Mark {
            seq: commits as u64,
            ord: 1
        }
    );
}

/// The lower bound of field `id` of a file, as an int.
fn long_lower(entry: &ManifestEntry, id: i32) -> i64 {
    i64::from(i32::from_le_bytes(
        entry.file.lower_bounds[&id][..4].try_into().unwrap(),
    ))
}

/// The rows (`id`, `v`) of `table`'s current-state table in the lake at
/// `dir`, sorted; and how many live files hold them.
async fn current_rows(dir: &std::path::Path, table: &TableId) -> (Vec<(i32, String)>, usize) {
    let store = LakeStore::local(&dir.join("lake"));
    let catalog = SqlCatalog::new(SqlBackend::Sqlite(dir.join("catalog.db")), "tidewater");
    // The current table is what a pipeline called `p.current` would name it.
    let mut reader = IcebergSink::new(store, "p.current", catalog);
    let files = reader.data_files(table).await.expect("current files");
    let mut rows = Vec::new();
    for entry in &files {
        let bytes = reader.read_file(table, &entry.file.path).await.unwrap();
        let batches =
            deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes,
            )
            .unwrap()
            .build()
            .unwrap();
        for batch in batches {
            let batch = batch.unwrap();
            let ids = batch
                .column_by_name("id")
                .unwrap()
                .as_primitive::<deltalake::arrow::datatypes::Int32Type>();
            let vs = batch.column_by_name("v").unwrap().as_string::<i32>();
            assert!(
                batch.column_by_name("_tw_op").is_none(),
                "no _tw_op in a current table"
            );
            for i in 0..batch.num_rows() {
                rows.push((ids.value(i), vs.value(i).to_string()));
            }
        }
    }
    rows.sort();
    (rows, files.len())
}

/// Current-state merges on Iceberg: the first one builds the table from the
/// log; a later one rewrites only the files whose key bounds hold a changed
/// key (copy-on-write), drops deletes, and a truncate empties the table;
/// the table equals the log's last image per key after each.
#[tokio::test]
async fn current_state_merges_rewrite_only_the_files_holding_changed_keys() {
    let dir = scratch("current");
    let mut sink = open(&dir);
    sink.set_target_file_size(2048);
    let s = schema(base());
    let table = s.table.clone();
    for chunk in 0..10 {
        let rows: Vec<_> = (chunk * 100..chunk * 100 + 100)
            .map(|id| row(id, &format!("v{id}")))
            .collect();
        commit_rows(&mut sink, s.clone(), chunk as u64 + 1, &rows).await;
    }
    let first = sink.merge_current(&table).await.expect("first merge");
    assert_eq!(first.changed_keys, 1000);
    let (rows, files) = current_rows(&dir, &table).await;
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[7], (7, "v7".to_string()));
    assert!(
        files >= 3,
        "small target size: several current files, not {files}"
    );
    // Nothing new: a merge does nothing.
    assert_eq!(sink.merge_current(&table).await.unwrap().files_rewritten, 0);

    // Two keys change, one goes: only the files holding them are rewritten.
    commit_rows(
        &mut sink,
        s.clone(),
        20,
        &[
            (
                Op::Update,
                vec![Datum::Int32(5), Datum::Text("five".into())],
            ),
            (Op::Update, vec![Datum::Int32(6), Datum::Text("six".into())]),
            (Op::Delete, vec![Datum::Int32(7), Datum::Null]),
            row(5000, "new"),
        ],
    )
    .await;
    let second = sink.merge_current(&table).await.expect("second merge");
    assert_eq!(second.changed_keys, 4);
    assert!(
        second.files_rewritten >= 1 && second.files_rewritten < files,
        "rewrote {} of {files} files",
        second.files_rewritten
    );
    let (rows, _) = current_rows(&dir, &table).await;
    assert_eq!(rows.len(), 1000);
    assert!(rows.contains(&(5, "five".to_string())) && rows.contains(&(6, "six".to_string())));
    assert!(!rows.iter().any(|(id, _)| *id == 7));
    assert!(rows.contains(&(5000, "new".to_string())));
    assert!(rows.contains(&(999, "v999".to_string())));

    // With a vacuum policy, a merge then expires the current table's
    // replaced snapshots and deletes the files only they reached.
    sink.set_maintenance(crate::MaintenancePolicy {
        vacuum: Some((Duration::ZERO, Duration::from_secs(3600))),
        ..Default::default()
    });
    commit_rows(
        &mut sink,
        s.clone(),
        21,
        &[(
            Op::Update,
            vec![Datum::Int32(500), Datum::Text("half".into())],
        )],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    sink.merge_current(&table)
        .await
        .expect("merge with a vacuum");
    let (rows, live) = current_rows(&dir, &table).await;
    assert!(rows.contains(&(500, "half".to_string())));
    let on_disk = std::fs::read_dir(dir.join("lake/p.current/app/t/data"))
        .unwrap()
        .count();
    assert_eq!(on_disk, live, "replaced files deleted, live ones kept");
    sink.set_maintenance(crate::MaintenancePolicy::default());

    // A restart merges on from the mark the table records.
    drop(sink);
    let mut sink = open(&dir);
    sink.set_target_file_size(2048);
    sink.table_state(&table).await.unwrap();
    assert_eq!(sink.merge_current(&table).await.unwrap().changed_keys, 0);
    commit_rows(
        &mut sink,
        s.clone(),
        30,
        &[(Op::Truncate, Vec::new()), row(1, "after")],
    )
    .await;
    sink.merge_current(&table)
        .await
        .expect("merge after a truncate");
    let (rows, files) = current_rows(&dir, &table).await;
    assert_eq!(rows, vec![(1, "after".to_string())]);
    assert_eq!(files, 1);
}
