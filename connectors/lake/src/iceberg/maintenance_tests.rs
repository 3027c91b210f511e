//! Iceberg maintenance over a real lake on disk and a SQLite catalog:
//! compaction keeps every row and the mark, a commit between plan and
//! commit is kept, expiry deletes only what no kept snapshot reaches,
//! orphan cleanup only old unreachable files.

use std::time::{Duration, SystemTime};

use deltalake::arrow::array::new_null_array;
use deltalake::arrow::compute::cast;
use deltalake::arrow::util::display::array_value_to_string;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tidewater_core::{ColumnType, Op};

use super::tests::{base, column, commit_rows, commit_rows_at, open, row, schema, scratch};
use super::*;
use crate::Compaction;

const SMALL: Compaction = Compaction {
    target_file_bytes: 1 << 20,
    min_files: 4,
};

/// Every row of the table's live files, read by column NAME (independent
/// of the field-id alignment compaction uses), each value as text, in
/// (`_tw_seq`, `_tw_ord`) order; and whether each file's rows were in that
/// order.
async fn table_rows(sink: &mut IcebergSink, table: &TableId) -> (Vec<Vec<String>>, bool) {
    let files = sink.data_files(table).await.unwrap();
    let fields = sink.tables[table].metadata.fields();
    let mut rows = Vec::new();
    let mut ordered = true;
    for entry in files {
        let bytes = sink.read_file(table, &entry.file.path).await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let mut last = (i64::MIN, i64::MIN);
        for batch in reader {
            let batch = batch.unwrap();
            let columns: Vec<_> = fields
                .iter()
                .map(|f| match batch.column_by_name(&f.name) {
                    Some(c) => cast(c, &f.ty.arrow()).unwrap(),
                    None => new_null_array(&f.ty.arrow(), batch.num_rows()),
                })
                .collect();
            for r in 0..batch.num_rows() {
                let values: Vec<String> = columns
                    .iter()
                    .map(|c| array_value_to_string(c, r).unwrap())
                    .collect();
                let at = mark_of(&fields, &values);
                ordered &= at > last;
                last = at;
                rows.push(values);
            }
        }
    }
    rows.sort_by_key(|values| mark_of(&fields, values));
    (rows, ordered)
}

fn mark_of(fields: &[IcebergField], values: &[String]) -> (i64, i64) {
    let at = |name: &str| {
        let i = fields.iter().position(|f| f.name == name).unwrap();
        values[i].parse::<i64>().unwrap()
    };
    (at("_tw_seq"), at("_tw_ord"))
}

fn wider() -> Arc<TableSchema> {
    schema(vec![
        column("id", ColumnType::Int64, "bigint", true),
        column("v", ColumnType::Text, "text", false),
        column("w", ColumnType::Bool, "boolean", false),
    ])
}

fn wide_row(id: i64, v: &str, w: bool) -> (Op, Vec<Datum>) {
    (
        Op::Update,
        vec![Datum::Int64(id), Datum::Text(v.into()), Datum::Bool(w)],
    )
}

use std::sync::Arc;

fn on_disk(sink: &IcebergSink, uri: &str) -> bool {
    let rel = sink.store.rel_of(uri).unwrap();
    sink.store.local_path(&rel).unwrap().exists()
}

#[tokio::test]
async fn compaction_rewrites_small_files_of_older_schemas_into_one_with_every_row_and_the_mark() {
    let dir = scratch("compact");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    for seq in 1..=3u64 {
        let id = seq as i32 * 10;
        commit_rows(
            &mut sink,
            schema(base()),
            seq,
            &[row(id, "a"), row(id + 1, "b"), row(id + 2, "c")],
        )
        .await;
    }
    // id int → long (promoted in place), a new column w: the older files
    // hold ints and no w.
    for seq in 4..=6u64 {
        let id = seq as i64 * 10;
        commit_rows(
            &mut sink,
            wider(),
            seq,
            &[wide_row(id, "x", true), wide_row(id + 1, "y", false)],
        )
        .await;
    }
    assert_eq!(sink.data_files(&table).await.unwrap().len(), 6);
    let (before, _) = table_rows(&mut sink, &table).await;
    assert_eq!(before.len(), 15);
    let properties = sink.tables[&table].metadata.json["properties"].clone();
    // Below min_files: nothing.
    let strict = Compaction {
        min_files: 7,
        ..SMALL
    };
    assert!(sink.compact(&table, &strict).await.unwrap().is_none());

    let report = sink
        .compact(&table, &SMALL)
        .await
        .unwrap()
        .expect("compacted");
    assert_eq!(
        (report.files_removed, report.files_added, report.rows),
        (6, 1, 15)
    );
    let files = sink.data_files(&table).await.unwrap();
    assert_eq!(files.len(), 1);
    let (after, ordered) = table_rows(&mut sink, &table).await;
    assert_eq!(after, before, "every row, every value");
    assert!(ordered, "rows in (_tw_seq, _tw_ord) order in the new file");
    // The new file's columns carry the table's field ids.
    let bytes = sink.read_file(&table, &files[0].file.path).await.unwrap();
    let file_schema = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .schema()
        .clone();
    for field in sink.tables[&table].metadata.fields() {
        let column = file_schema.field_with_name(&field.name).unwrap();
        assert_eq!(column.data_type(), &field.ty.arrow(), "{}", field.name);
        assert_eq!(
            schema::field_id(&Arc::new(column.clone())),
            Some(field.id),
            "{}",
            field.name
        );
    }
    // One replace snapshot, the mark and the properties unchanged.
    let metadata = sink.tables[&table].metadata.clone();
    let summary = &metadata.current_snapshot().unwrap()["summary"];
    assert_eq!(summary["operation"], "replace");
    assert_eq!(summary["tidewater.seq"], "6");
    assert_eq!(summary["tidewater.ord"], "2");
    assert_eq!(summary["deleted-data-files"], "6");
    assert_eq!(summary["total-data-files"], "1");
    assert_eq!(summary["total-records"], "15");
    assert_eq!(metadata.json["properties"], properties);
    let mut again = open(&dir);
    let state = again.table_state(&table).await.unwrap().expect("state");
    assert_eq!(state.mark, Mark { seq: 6, ord: 2 });
    assert_eq!(state.commits, 6);
    // The stream goes on on top of it.
    commit_rows(&mut again, wider(), 7, &[wide_row(70, "z", true)]).await;
    let (rows, _) = table_rows(&mut again, &table).await;
    assert_eq!(rows.len(), 16);
    assert_eq!(&rows[..15], &before[..]);
}

#[tokio::test]
async fn a_commit_between_plan_and_commit_is_kept_and_a_stale_plan_is_dropped() {
    let dir = scratch("compact-race");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    for seq in 1..=4u64 {
        commit_rows(&mut sink, schema(base()), seq, &[row(seq as i32, "a")]).await;
    }
    let plan = |sink: &IcebergSink| {
        sink.compaction_job(vec![table.clone()], &SMALL)
            .expect("a job")
    };
    let first = plan(&sink).run().await.unwrap().expect("a group");
    let second = plan(&sink).run().await.unwrap().expect("a group");
    // Another process of the pipeline commits meanwhile: this sink's view
    // is stale, its swap loses and the compaction is rebuilt on the newer
    // table.
    let mut other = open(&dir);
    commit_rows(&mut other, schema(base()), 5, &[row(5, "e")]).await;
    let report = sink.commit_compaction(first).await.unwrap().expect("kept");
    assert_eq!((report.files_removed, report.files_added), (4, 1));
    let mut fresh = open(&dir);
    let (rows, _) = table_rows(&mut fresh, &table).await;
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        vec!["1", "2", "3", "4", "5"],
        "the commit made meanwhile is kept"
    );
    assert_eq!(fresh.data_files(&table).await.unwrap().len(), 2);
    let state = fresh.table_state(&table).await.unwrap().unwrap();
    assert_eq!(state.mark, Mark { seq: 5, ord: 1 });
    assert_eq!(state.commits, 5);
    // The second plan replaces files that are gone: dropped, its files
    // deleted, nothing twice.
    let written: Vec<String> = second.written.clone();
    assert!(sink.commit_compaction(second).await.unwrap().is_none());
    for rel in written {
        assert!(!sink.store.local_path(&rel).unwrap().exists(), "{rel}");
    }
    let (rows, _) = table_rows(&mut fresh, &table).await;
    assert_eq!(rows.len(), 5);
    // The other process, whose view predates the compaction, takes it for
    // another writer's commit (its commit count did not move) and builds on
    // it.
    commit_rows(&mut other, schema(base()), 6, &[row(6, "f")]).await;
    let mut fresh = open(&dir);
    let (rows, _) = table_rows(&mut fresh, &table).await;
    assert_eq!(rows.len(), 6);
    let state = fresh.table_state(&table).await.unwrap().unwrap();
    assert_eq!((state.mark, state.commits), (Mark { seq: 6, ord: 1 }, 6));
}

#[tokio::test]
async fn expiry_removes_old_snapshots_and_only_files_no_kept_snapshot_reaches() {
    let dir = scratch("expire");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    for seq in 1..=5u64 {
        commit_rows(&mut sink, schema(base()), seq, &[row(seq as i32, "a")]).await;
    }
    let old: Vec<String> = sink
        .data_files(&table)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.file.path)
        .collect();
    sink.compact(&table, &SMALL)
        .await
        .unwrap()
        .expect("compacted");
    let (before, _) = table_rows(&mut sink, &table).await;
    assert_eq!(sink.tables[&table].metadata.snapshots().len(), 6);

    // Within the retention: nothing expires, nothing is deleted.
    let report = sink
        .vacuum(&table, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report, VacuumReport::default());
    assert!(old.iter().all(|f| on_disk(&sink, f)));

    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = sink.vacuum(&table, Duration::ZERO).await.unwrap();
    assert_eq!(report.expired, 5);
    let metadata = sink.tables[&table].metadata.clone();
    assert_eq!(metadata.snapshots().len(), 1);
    assert_eq!(
        metadata.json["snapshot-log"].as_array().unwrap().len(),
        1,
        "{}",
        metadata.json["snapshot-log"]
    );
    assert_eq!(
        metadata.json["refs"]["main"]["snapshot-id"],
        Value::from(metadata.current_snapshot_id().unwrap())
    );
    // The replaced files went, and the expired snapshots' lists.
    for file in &old {
        assert!(!on_disk(&sink, file), "{file} is only in expired snapshots");
    }
    assert!(report.deleted.iter().any(|f| f.contains("/metadata/snap-")));
    // Everything the kept metadata names is there, and the table reads the
    // same, through a fresh sink too.
    let current = metadata.current_snapshot().unwrap().clone();
    let list = current["manifest-list"].as_str().unwrap();
    assert!(on_disk(&sink, list));
    for manifest in sink.manifests_of(&table, &current).await.unwrap() {
        assert!(on_disk(&sink, &manifest.path), "{}", manifest.path);
    }
    for entry in sink.data_files(&table).await.unwrap() {
        assert!(on_disk(&sink, &entry.file.path));
    }
    for logged in metadata.logged_metadata() {
        assert!(on_disk(&sink, &logged), "{logged}");
    }
    let mut fresh = open(&dir);
    let (after, _) = table_rows(&mut fresh, &table).await;
    assert_eq!(after, before);
    let state = fresh.table_state(&table).await.unwrap().unwrap();
    assert_eq!(state.mark, Mark { seq: 5, ord: 1 });
    assert_eq!(state.commits, 5);
    let data = std::fs::read_dir(dir.join("lake/p/app/t/data"))
        .unwrap()
        .count();
    assert_eq!(data, 1, "only the compacted file is left");
    // The pipeline commits on top of the expired table.
    commit_rows(&mut fresh, schema(base()), 6, &[row(6, "f")]).await;
    assert_eq!(table_rows(&mut fresh, &table).await.0.len(), 6);
}

#[tokio::test]
async fn orphan_cleanup_deletes_old_unreachable_files_only() {
    let dir = scratch("orphans");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    commit_rows(&mut sink, schema(base()), 1, &[row(1, "a")]).await;
    commit_rows(&mut sink, schema(base()), 2, &[row(2, "b")]).await;
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let age = |path: &std::path::Path, when: SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    };
    // Every file of the table is old, the live ones too.
    let table_dir = dir.join("lake/p/app/t");
    for sub in ["data", "metadata"] {
        for entry in std::fs::read_dir(table_dir.join(sub)).unwrap() {
            age(&entry.unwrap().path(), two_hours_ago);
        }
    }
    let write = |name: &str, when: SystemTime| {
        let path = table_dir.join(name);
        std::fs::write(&path, b"not committed").unwrap();
        age(&path, when);
        path
    };
    let old_orphan = write("data/crashed.parquet", two_hours_ago);
    let old_manifest = write("metadata/crashed-m0.avro", two_hours_ago);
    let young_orphan = write("data/in-flight.parquet", SystemTime::now());
    let (before, _) = table_rows(&mut sink, &table).await;
    let report = sink
        .vacuum(&table, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        report.expired, 0,
        "no snapshot was replaced over an hour ago"
    );
    let mut deleted = report.deleted.clone();
    deleted.sort();
    assert_eq!(
        deleted,
        vec![
            "p/app/t/data/crashed.parquet".to_string(),
            "p/app/t/metadata/crashed-m0.avro".to_string(),
        ]
    );
    assert!(!old_orphan.exists() && !old_manifest.exists());
    assert!(young_orphan.exists(), "younger than the retention");
    // Live files, however old, stay; the table reads the same.
    let (after, _) = table_rows(&mut sink, &table).await;
    assert_eq!(after, before);
    let metadata = sink.tables[&table].metadata.clone();
    assert!(on_disk(&sink, &metadata.location));
    for logged in metadata.logged_metadata() {
        assert!(on_disk(&sink, &logged), "{logged}");
    }

    // Older than the retention but younger than this process: a commit of
    // this process may be writing it; never an orphan.
    let recent = write("data/recent.parquet", two_hours_ago);
    sink.clock.started = SystemTime::now() - Duration::from_secs(10_800);
    let report = sink
        .vacuum(&table, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.deleted.is_empty(), "{:?}", report.deleted);
    assert!(recent.exists());
}

#[tokio::test]
async fn a_table_partitioned_by_commit_date_is_compacted_one_day_at_a_time() {
    let dir = scratch("compact-days");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    sink.set_partition_by_date(true);
    const DAY_US: i64 = 86_400_000_000;
    let first_day = 1_700_000_000_000_000 / DAY_US * DAY_US;
    // Days interleaved: each day's files are small and many.
    for seq in 1..=8u64 {
        let at = first_day + (seq as i64 % 2) * DAY_US + seq as i64;
        commit_rows_at(&mut sink, schema(base()), seq, &[row(seq as i32, "a")], at).await;
    }
    let (before, _) = table_rows(&mut sink, &table).await;
    let days = |files: &[ManifestEntry]| {
        let mut days: Vec<Option<i32>> = files.iter().map(|f| f.file.partition[0].1).collect();
        days.sort();
        days
    };
    assert_eq!(sink.data_files(&table).await.unwrap().len(), 8);
    let report = sink
        .compact(&table, &SMALL)
        .await
        .unwrap()
        .expect("one day");
    assert_eq!((report.files_removed, report.files_added), (4, 1));
    let report = sink
        .compact(&table, &SMALL)
        .await
        .unwrap()
        .expect("the other");
    assert_eq!((report.files_removed, report.files_added), (4, 1));
    assert!(sink.compact(&table, &SMALL).await.unwrap().is_none());
    let files = sink.data_files(&table).await.unwrap();
    let day = (first_day / DAY_US) as i32;
    assert_eq!(days(&files), vec![Some(day), Some(day + 1)]);
    // Each new file holds only its day's rows.
    for entry in &files {
        let bytes = sink.read_file(&table, &entry.file.path).await.unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            assert_eq!(
                partition_of(&sink.tables[&table].metadata.default_spec().2, &batch),
                entry.file.partition
            );
        }
    }
    let (after, _) = table_rows(&mut sink, &table).await;
    assert_eq!(after, before);
    // The manifests were folded: one with the last compaction's entries,
    // one with the rest.
    let current = sink.tables[&table]
        .metadata
        .current_snapshot()
        .unwrap()
        .clone();
    assert_eq!(sink.manifests_of(&table, &current).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_table_with_a_column_tidewater_does_not_write_is_not_compacted() {
    let dir = scratch("compact-foreign");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    for seq in 1..=4u64 {
        commit_rows(&mut sink, schema(base()), seq, &[row(seq as i32, "a")]).await;
    }
    // Another writer adds a map column (a type tidewater never writes).
    let metadata = sink.tables[&table].metadata.clone();
    let mut json = metadata.json.clone();
    let mut schema_json = metadata.current_schema().unwrap().clone();
    schema_json["schema-id"] = Value::from(7);
    schema_json["fields"].as_array_mut().unwrap().push(json!({
        "id": 900, "name": "tags", "required": false,
        "type": {"type": "map", "key-id": 901, "key": "string", "value-id": 902,
                 "value": "string", "value-required": false},
    }));
    json["schemas"].as_array_mut().unwrap().push(schema_json);
    json["current-schema-id"] = Value::from(7);
    json["last-column-id"] = Value::from(902);
    let rel = format!(
        "p/app/t/metadata/{}",
        metadata_file_name(metadata.version() + 1)
    );
    sink.store.write(&rel, &json.to_string()).await.unwrap();
    let (ns, name) = identifier("p", &table);
    let Catalog::Sql(catalog) = &sink.catalog else {
        panic!("a SQL catalog")
    };
    let location = sink.store.uri_of(&rel);
    assert_eq!(
        catalog
            .swap(&ns, &name, &metadata.location, &location)
            .await
            .unwrap(),
        Swap::Done
    );
    let mut fresh = open(&dir);
    fresh.table_state(&table).await.unwrap();
    assert!(fresh.compact(&table, &SMALL).await.unwrap().is_none());
    assert_eq!(fresh.data_files(&table).await.unwrap().len(), 4);
}

#[tokio::test]
async fn beyond_a_hundred_manifests_a_compaction_folds_them_into_one() {
    let dir = scratch("compact-fold");
    let table = TableId::new("app", "t");
    let mut sink = open(&dir);
    // Big files (text that does not compress), one manifest each.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect()
    };
    let big = MERGE_MANIFESTS as u64 + 1;
    for seq in 1..=big {
        commit_rows(
            &mut sink,
            schema(base()),
            seq,
            &[row(seq as i32, &noise(8000))],
        )
        .await;
    }
    // Then small ones.
    for seq in big + 1..=big + 4 {
        commit_rows(&mut sink, schema(base()), seq, &[row(seq as i32, "s")]).await;
    }
    let files = sink.data_files(&table).await.unwrap();
    let largest_small = files
        .iter()
        .map(|f| f.file.size)
        .filter(|s| *s < 6000)
        .max()
        .unwrap();
    let smallest_big = files
        .iter()
        .map(|f| f.file.size)
        .filter(|s| *s >= 6000)
        .min()
        .unwrap();
    assert!(largest_small < smallest_big);
    let policy = Compaction {
        target_file_bytes: smallest_big as u64,
        min_files: 4,
    };
    let (before, _) = table_rows(&mut sink, &table).await;
    let report = sink
        .compact(&table, &policy)
        .await
        .unwrap()
        .expect("compacted");
    assert_eq!((report.files_removed, report.files_added), (4, 1));
    let current = sink.tables[&table]
        .metadata
        .current_snapshot()
        .unwrap()
        .clone();
    let manifests = sink.manifests_of(&table, &current).await.unwrap();
    // Commits fold the manifests once there are 100 (see `fold_manifests`),
    // so the compaction finds few: the replace manifest and the rest.
    assert!(
        manifests.len() <= 3,
        "the replace manifest and few of the rest: {}",
        manifests.len()
    );
    let rest: u64 = manifests[1..]
        .iter()
        .map(|m| (m.existing_files + m.added_files) as u64)
        .sum();
    assert_eq!(rest, big, "the big files, each listed once");
    let (after, _) = table_rows(&mut sink, &table).await;
    assert_eq!(after, before);
}
