//! Lake tables stay healthy while streaming: the small files every flush
//! makes are compacted, the files compaction replaced are deleted after the
//! retention, and the table reads the same — in our reader and in the
//! Python `deltalake` package — before and after.

use std::time::Duration;

use crate::support::lake::read_log;
use crate::support::{eventually, pg, Pipeline};

/// Parquet files under a table directory (data files, live or not).
fn parquet_files(table: &std::path::Path) -> usize {
    std::fs::read_dir(table)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .count()
}

/// Files in the table's current version, from `tidewater status`.
fn live_files(pipeline: &Pipeline, table: &str) -> u64 {
    let mut cmd = crate::support::tidewater();
    cmd.args(["status", "--format", "json", "--config"])
        .arg(&pipeline.config);
    let out = crate::support::output_within(cmd, 60);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .and_then(|t| t["files"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_compacted_and_old_ones_deleted_while_streaming() {
    let client = pg().create_database("tidy").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2), at timestamptz);
             INSERT INTO t SELECT g, 'v' || g, g, now() FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "tidy",
        &pg().url("tidy"),
        "compaction_interval_ms = 700\ncompaction_min_files = 4\n\
         target_file_size_bytes = 1048576\nvacuum_interval_ms = 1500\nvacuum_retention_hours = 0\n",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let path = pipeline.table_path("public", "t");
    // Many small commits: a file each.
    let mut most_live = 0;
    for round in 0..60 {
        client
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({id}, 'new', {round}, now());
                 UPDATE t SET v = 'round {round}', at = now() WHERE id = {round} + 1;
                 ALTER TABLE t ADD COLUMN IF NOT EXISTS late int;
                 UPDATE t SET late = {round} WHERE id = 1;",
                id = 1000 + round
            ))
            .await
            .unwrap();
        // Paces the writes over many flushes (every 200 ms): the workload
        // that makes small files, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(80)).await;
        if round % 20 == 19 {
            most_live = most_live.max(live_files(&pipeline, "public.t"));
        }
    }
    pipeline.wait_equal(&client, "t").await;
    client
        .batch_execute("UPDATE t SET v = 'last' WHERE id = 2")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    // Compaction and vacuum catch up with the writes.
    eventually(
        "the table compacted and vacuumed",
        Duration::from_secs(60),
        || {
            let log = pipeline.log(1);
            let (live, on_disk) = (live_files(&pipeline, "public.t"), parquet_files(&path));
            async move {
                (log.contains("compacted small files")
                    && log.contains("deleted files no version needs any more")
                    && live <= 12
                    && on_disk <= 30)
                    .then_some(())
                    .ok_or(format!(
                        "live files {live}, parquet files on disk {on_disk}"
                    ))
            }
        },
    )
    .await;
    let log = pipeline.log(1);
    assert!(log.contains("compacted small files"), "{log}");
    // The snapshot reported its progress (not a terminal: log lines).
    assert!(
        log.contains("snapshot progress") && log.contains("rows=50") && log.contains("done=true"),
        "{log}"
    );
    assert!(
        log.contains("deleted files no version needs any more"),
        "{log}"
    );
    let live = live_files(&pipeline, "public.t");
    let on_disk = parquet_files(&path);
    eprintln!(
        "live files {live} (at most {most_live} while writing), parquet files on disk {on_disk}"
    );
    assert!(
        live <= 12 && most_live <= 30,
        "live files {live}, at most {most_live}"
    );
    assert!(on_disk <= 30, "parquet files on disk {on_disk}");
    // Vacuum keeps tidewater's own files next to the table.
    assert!(path.join("_tidewater_schema_history.json").is_file());
    // Same rows through another reader; each change once.
    let rows = read_log(&path).await.unwrap();
    crate::support::lake::assert_each_change_once(&rows);
    // Compaction and a vacuum with retention 0 go on meanwhile: a reader
    // whose version lost its files to the vacuum mid-read reads again (with
    // no retention, that is what a reader gets).
    let mut summary = crate::replication::try_python_summary(&path);
    for _ in 0..3 {
        if summary.is_ok() {
            break;
        }
        summary = crate::replication::try_python_summary(&path);
    }
    let summary = summary.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        summary["rows"].as_u64(),
        Some(rows.len() as u64),
        "{summary}"
    );
    // A restart reads the same state back and streams on.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    pipeline.start();
    client
        .batch_execute("INSERT INTO t VALUES (5000, 'after restart', 1, now())")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    let again = read_log(&path).await.unwrap();
    assert_eq!(again.len(), rows.len() + 1);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// `current_state = true`: next to each change log a table with one row per
/// key, merged from the log every interval, equal to `SELECT *` on the
/// source after inserts, updates, deletes, a key change, a new column and a
/// truncate; read the same by Python's `deltalake`; a SIGKILL between merges
/// neither loses nor repeats a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_tables_follow_the_source() {
    use crate::support::lake::{compare, current_state, source_state};
    let client = pg().create_database("curstate").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
             INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 300) g;
             CREATE TABLE u (id int PRIMARY KEY, w text);
             INSERT INTO u SELECT g, 'w' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "curstate",
        &pg().url("curstate"),
        "current_state = true\ncurrent_state_interval_ms = 300\n\
         vacuum_interval_ms = 500\nvacuum_retention_hours = 0\n",
    );
    let current = |table: &str| pipeline.lake.join("curstate.current/public").join(table);
    let (t_path, u_path) = (current("t"), current("u"));
    pipeline.start();
    let equal = |path: std::path::PathBuf, table: &'static str| {
        let client = &client;
        async move {
            eventually(
                &format!("current state of {table}"),
                Duration::from_secs(90),
                || {
                    let path = path.clone();
                    async move {
                        let rows = read_log(&path).await?;
                        let lake = current_state(&rows, "id");
                        if lake.len() != rows.len() {
                            return Err(format!("{} rows for {} keys", rows.len(), lake.len()));
                        }
                        compare(
                            &source_state(client, &format!("public.{table}"), "id").await,
                            &lake,
                        )
                    }
                },
            )
            .await
        }
    };
    equal(t_path.clone(), "t").await;
    for step in [
        "INSERT INTO t SELECT g, 'new', g FROM generate_series(1000, 1100) g;
         UPDATE t SET v = 'changed' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;",
        "UPDATE t SET id = 5000 WHERE id = 1;
         ALTER TABLE t ADD COLUMN extra int;
         UPDATE t SET extra = id WHERE id < 50;",
        "TRUNCATE u; INSERT INTO u VALUES (100, 'after the truncate');",
        "DELETE FROM t WHERE id BETWEEN 200 AND 260; INSERT INTO t (id, v) VALUES (200, 'back');",
    ] {
        client.batch_execute(step).await.unwrap();
        equal(t_path.clone(), "t").await;
        equal(u_path.clone(), "u").await;
    }
    pipeline.kill();
    client
        .batch_execute("UPDATE t SET v = 'after the kill' WHERE id < 100; DELETE FROM u;")
        .await
        .unwrap();
    pipeline.start();
    equal(t_path.clone(), "t").await;
    equal(u_path.clone(), "u").await;
    // Another reader: Python's deltalake sees one row per source row.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            // os._exit: the package's threads can abort a normal interpreter exit.
            "import os, sys; from deltalake import DeltaTable; \
             print(DeltaTable(sys.argv[1]).to_pyarrow_table().num_rows, flush=True); os._exit(0)",
        ])
        .arg(&t_path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        count.to_string()
    );
    // The merges vacuum the current tables (retention 0): past the
    // vacuum's storage-clock margin, one more change and its merge leave
    // only the live files on disk — none of the files earlier merges
    // replaced.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .batch_execute("UPDATE t SET v = 'vacuum' WHERE id = 2")
        .await
        .unwrap();
    eventually(
        "the current table vacuumed",
        Duration::from_secs(60),
        || {
            let path = t_path.clone();
            async move {
                let on_disk = std::fs::read_dir(&path)
                    .map_err(|e| e.to_string())?
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                    .count();
                let url = deltalake::ensure_table_uri(path.to_string_lossy())
                    .map_err(|e| e.to_string())?;
                let live = deltalake::open_table(url)
                    .await
                    .map_err(|e| e.to_string())?
                    .get_file_uris()
                    .map_err(|e| e.to_string())?
                    .count();
                (on_disk <= live + 1)
                    .then_some(())
                    .ok_or(format!("{on_disk} parquet files for {live} live ones"))
            }
        },
    )
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// `partitioning = "commit_date"`: change logs land in one directory per
/// commit day, compaction never mixes days, and the table reads the same
/// through our reader and Python's `deltalake` (which fills the partition
/// column from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_logs_partitioned_by_commit_date() {
    let client = pg().create_database("bydate").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "bydate",
        &pg().url("bydate"),
        "partitioning = \"commit_date\"\ncompaction_interval_ms = 500\ncompaction_min_files = 3\n\
         target_file_size_bytes = 1048576\nvacuum_interval_ms = 1000\nvacuum_retention_hours = 0\n",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    for round in 0..12 {
        client
            .batch_execute(&format!(
                "UPDATE t SET v = 'round {round}' WHERE id = {}",
                round + 1
            ))
            .await
            .unwrap();
        if round == 5 {
            // A column added to a partitioned change log.
            client
                .batch_execute(
                    "ALTER TABLE t ADD COLUMN extra int; UPDATE t SET extra = id WHERE id < 4;",
                )
                .await
                .unwrap();
        }
        // Paces the rounds over several flushes (every 200 ms): the
        // workload that makes small files, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pipeline.wait_equal(&client, "t").await;
    let path = pipeline.table_path("public", "t");
    // Compaction and vacuum catch up with the writes, in every partition.
    let day_files = |path: &std::path::Path| -> usize {
        std::fs::read_dir(path)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("_tw_commit_date=")
            })
            .map(|e| parquet_files(&e.path()))
            .sum()
    };
    eventually(
        "the partitions compacted and vacuumed",
        Duration::from_secs(60),
        || {
            let log = pipeline.log(1);
            let live = live_files(&pipeline, "public.t") as usize;
            let on_disk = day_files(&path);
            async move {
                (log.contains("compacted small files")
                    && log.contains("deleted files no version needs any more")
                    && on_disk <= live + 6)
                    .then_some(())
                    .ok_or(format!(
                        "{on_disk} parquet files on disk for {live} live ones"
                    ))
            }
        },
    )
    .await;
    let days: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("_tw_commit_date="))
        .collect();
    assert!(
        !days.is_empty(),
        "no partition directories in {}",
        path.display()
    );
    // Vacuum reached into the partition directories (the wait above counts
    // their files; the daemon still compacts, so a count taken again here
    // could meet files a newer compaction just removed).
    let rows = read_log(&path).await.unwrap();
    crate::support::lake::assert_each_change_once(&rows);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; from deltalake import DeltaTable; \
             t = DeltaTable(sys.argv[1]).to_pyarrow_table(); \
             print(t.num_rows, t.column('_tw_commit_date').null_count, flush=True); os._exit(0)",
        ])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} 0", rows.len())
    );
    assert!(
        pipeline.log(1).contains("compacted small files"),
        "{}",
        pipeline.log(1)
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// Issue 20: current-state merges run on a task of their own. A SIGKILL
/// while one runs (its files written, its commit not) leaves the current
/// table as the last merge left it; after a restart the next merge brings
/// it to the source's state, each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_background_merge_loses_and_repeats_nothing() {
    use crate::support::lake::{compare, current_state, source_state};
    let client = pg().create_database("curkill").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, repeat('v', 40) || g FROM generate_series(1, 60000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "curkill",
        &pg().url("curkill"),
        // Small files: a merge of scattered keys rewrites many of them.
        "current_state = true\ncurrent_state_interval_ms = 100\ntarget_file_size_bytes = 65536\n",
    );
    pipeline.env = vec![("TIDEWATER_LOG".into(), "tidewater_lake=debug".into())];
    let path = pipeline.lake.join("curkill.current/public/t");
    let equal = || {
        let (client, path) = (&client, path.clone());
        async move {
            eventually("current state of t", Duration::from_secs(120), || {
                let path = path.clone();
                async move {
                    let rows = read_log(&path).await?;
                    let lake = current_state(&rows, "id");
                    if lake.len() != rows.len() {
                        return Err(format!("{} rows for {} keys", rows.len(), lake.len()));
                    }
                    compare(&source_state(client, "public.t", "id").await, &lake)
                }
            })
            .await
        }
    };
    pipeline.start();
    equal().await;
    // Scattered updates until a merge is seen started and not ended, then
    // SIGKILL at once.
    let started = |log: &str| log.matches("merging the current-state table").count();
    let ended = |log: &str| log.matches("current state merged").count();
    let mut step = 0;
    'updates: loop {
        step += 1;
        assert!(step < 400, "no merge seen running: {}", pipeline.log(1));
        client
            .batch_execute(&format!(
                "UPDATE t SET v = v || 'x' WHERE id % 97 = {}",
                step % 97
            ))
            .await
            .unwrap();
        for _ in 0..50 {
            let log = pipeline.log(1);
            if started(&log) > ended(&log) {
                break 'updates;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pipeline.kill();
    client
        .batch_execute("UPDATE t SET v = 'after the kill' WHERE id % 1000 = 0;")
        .await
        .unwrap();
    pipeline.start();
    equal().await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// Issue 20: compaction rewrites a group of files on a task of its own
/// while the stream commits; only its commit is the pipeline's. A SIGKILL
/// while one runs (its files being written or written, its commit not
/// made) loses and repeats nothing: after a restart the log equals the
/// source with each change once, and compaction goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_background_compaction_loses_and_repeats_nothing() {
    let client = pg().create_database("compkill").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, repeat('v', 40) || g FROM generate_series(1, 40000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "compkill",
        &pg().url("compkill"),
        // Every file is small: each compaction rewrites the table so far,
        // which takes a while.
        "compaction_interval_ms = 100\ncompaction_min_files = 2\n\
         target_file_size_bytes = 16777216\n",
    );
    pipeline.env = vec![("TIDEWATER_LOG".into(), "tidewater_lake=debug".into())];
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    // Scattered updates until a compaction is seen started and not ended,
    // then SIGKILL at once.
    let started = |log: &str| log.matches("compaction started").count();
    let ended = |log: &str| log.matches("compaction ended").count();
    let mut step = 0;
    'updates: loop {
        step += 1;
        assert!(
            step < 400,
            "no compaction seen running: {}",
            pipeline.log(1)
        );
        client
            .batch_execute(&format!(
                "UPDATE t SET v = v || 'x' WHERE id % 97 = {}",
                step % 97
            ))
            .await
            .unwrap();
        for _ in 0..50 {
            let log = pipeline.log(1);
            if started(&log) > ended(&log) {
                break 'updates;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pipeline.kill();
    client
        .batch_execute("UPDATE t SET v = 'after the kill' WHERE id % 1000 = 0;")
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let path = pipeline.table_path("public", "t");
    crate::support::lake::assert_each_change_once(&read_log(&path).await.unwrap());
    // Compaction goes on after the restart, and the table still reads the
    // same, each change once.
    for round in 0..3 {
        client
            .batch_execute(&format!("UPDATE t SET v = 'round {round}' WHERE id < 10"))
            .await
            .unwrap();
        pipeline.wait_equal(&client, "t").await;
    }
    eventually(
        "a compaction after the restart",
        Duration::from_secs(60),
        || {
            let log = pipeline.log(2);
            async move {
                log.contains("compacted small files")
                    .then_some(())
                    .ok_or("no compaction yet".to_string())
            }
        },
    )
    .await;
    pipeline.wait_equal(&client, "t").await;
    crate::support::lake::assert_each_change_once(&read_log(&path).await.unwrap());
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

use crate::support::readers_python;

/// The actions of every commit of the Delta table at `path`, in order.
fn delta_commits(path: &std::path::Path) -> Vec<Vec<serde_json::Value>> {
    let mut files: Vec<_> = std::fs::read_dir(path.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect()
}

/// Issue 20, `current_state_deletion_vectors = true`: current-state merges
/// of changes spread over the whole table (updates, deletes, a truncate, a
/// SIGKILL during a merge) rewrite none of the table's data files — each is
/// re-added with a deletion vector — and the table reads the same as
/// `SELECT id, v` on the source row by row in our DV-aware reader, DuckDB's
/// `delta_scan` and Polars. Read without its DVs it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_with_deletion_vectors_reads_right_in_every_reader() {
    use crate::support::lake::{compare, current_state, read_current, source_state};
    let client = pg().create_database("curdv").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, md5(g::text) || md5((-g)::text) FROM generate_series(1, 20000) g;
             CREATE TABLE u (id int PRIMARY KEY, v text);
             INSERT INTO u SELECT g, repeat('u', 40) || g FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "curdv",
        &pg().url("curdv"),
        // Small files: changes spread over the table touch many of them.
        "current_state = true\ncurrent_state_deletion_vectors = true\n\
         current_state_interval_ms = 100\ntarget_file_size_bytes = 65536\n",
    );
    pipeline.env = vec![("TIDEWATER_LOG".into(), "tidewater_lake=debug".into())];
    let current = |table: &str| pipeline.lake.join("curdv.current/public").join(table);
    let (t_path, u_path) = (current("t"), current("u"));
    let equal = |path: std::path::PathBuf, table: &'static str| {
        let client = &client;
        async move {
            eventually(
                &format!("current state of {table}"),
                Duration::from_secs(120),
                || {
                    let path = path.clone();
                    async move {
                        let rows = read_current(&path).await?;
                        let lake = current_state(&rows, "id");
                        if lake.len() != rows.len() {
                            return Err(format!("{} rows for {} keys", rows.len(), lake.len()));
                        }
                        compare(
                            &source_state(client, &format!("public.{table}"), "id").await,
                            &lake,
                        )
                    }
                },
            )
            .await
        }
    };
    pipeline.start();
    equal(t_path.clone(), "t").await;
    equal(u_path.clone(), "u").await;
    // Deletion vectors on (since the first merge): reader 3 / writer 7
    // naming only them, and the table property.
    let commits = delta_commits(&t_path);
    let last = |name: &str| {
        commits
            .iter()
            .flatten()
            .rev()
            .find_map(|a| a.get(name))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        last("protocol"),
        serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]})
    );
    assert_eq!(
        last("metaData")["configuration"]["delta.enableDeletionVectors"],
        "true"
    );
    // The table's full-size files before any change (small ones may be
    // folded into a merge's output, by design).
    let live = |path: &std::path::Path| -> std::collections::BTreeMap<String, serde_json::Value> {
        let mut files = std::collections::BTreeMap::new();
        for commit in delta_commits(path) {
            for action in commit {
                if let Some(remove) = action.get("remove") {
                    files.remove(remove["path"].as_str().unwrap());
                }
                if let Some(add) = action.get("add") {
                    files.insert(add["path"].as_str().unwrap().to_string(), add.clone());
                }
            }
        }
        files
    };
    let before: Vec<String> = live(&t_path)
        .into_iter()
        .filter(|(_, add)| add["size"].as_u64().unwrap() >= 65536 / 2)
        .map(|(path, _)| path)
        .collect();
    assert!(before.len() >= 3, "{before:?}");
    let commits_before = delta_commits(&t_path).len();
    for step in [
        "UPDATE t SET v = v || 'x' WHERE id % 97 = 1;
         DELETE FROM t WHERE id % 89 = 2;
         INSERT INTO t SELECT g, 'new' FROM generate_series(40000, 40100) g;",
        "UPDATE t SET v = 'again' WHERE id % 97 = 1 OR id % 101 = 5;",
        "TRUNCATE u; INSERT INTO u SELECT g, 'after' || g FROM generate_series(1, 3000) g;",
        "UPDATE u SET v = 'later' WHERE id % 50 = 0; DELETE FROM u WHERE id % 77 = 0;",
    ] {
        client.batch_execute(step).await.unwrap();
        equal(t_path.clone(), "t").await;
        equal(u_path.clone(), "u").await;
    }
    // Scattered updates until a merge is seen started and not ended, then
    // SIGKILL at once.
    let started = |log: &str| log.matches("merging the current-state table").count();
    let ended = |log: &str| log.matches("current state merged").count();
    let mut step = 0;
    'updates: loop {
        step += 1;
        assert!(step < 400, "no merge seen running: {}", pipeline.log(1));
        client
            .batch_execute(&format!(
                "UPDATE t SET v = v || 'k' WHERE id % 97 = {}; DELETE FROM t WHERE id = {};",
                step % 97,
                step * 71
            ))
            .await
            .unwrap();
        for _ in 0..50 {
            let log = pipeline.log(1);
            if started(&log) > ended(&log) {
                break 'updates;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pipeline.kill();
    client
        .batch_execute(
            "UPDATE t SET v = 'after the kill' WHERE id % 1000 = 0;
             DELETE FROM u WHERE id % 3 = 0;",
        )
        .await
        .unwrap();
    pipeline.start();
    equal(t_path.clone(), "t").await;
    equal(u_path.clone(), "u").await;
    // No merge rewrote a file of the table: every removal of one is its
    // re-add with a (new) deletion vector in the same commit, and all of
    // them are still live, most with a DV.
    let commits = delta_commits(&t_path);
    for (version, commit) in commits.iter().enumerate().skip(commits_before) {
        for remove in commit.iter().filter_map(|a| a.get("remove")) {
            let path = remove["path"].as_str().unwrap();
            if !before.iter().any(|p| p == path) {
                continue;
            }
            assert!(
                commit
                    .iter()
                    .filter_map(|a| a.get("add"))
                    .any(|add| add["path"] == path
                        && add["deletionVector"].is_object()
                        && add["stats"]
                            .as_str()
                            .is_some_and(|s| s.contains("numRecords"))),
                "version {version} removed {path} without re-adding it with a DV"
            );
        }
    }
    let after = live(&t_path);
    for path in &before {
        assert!(after.contains_key(path), "{path} was rewritten");
    }
    let marked = before
        .iter()
        .filter(|p| after[*p]["deletionVector"].is_object())
        .count();
    assert!(
        marked * 2 >= before.len(),
        "{marked} of {} files with a DV",
        before.len()
    );
    // Read without its deletion vectors the table is wrong: the DVs matter.
    let blind = read_log(&t_path).await.unwrap();
    assert!(
        blind.len() > current_state(&blind, "id").len(),
        "no row of t's current table is deleted by a DV"
    );
    // DuckDB's delta_scan and Polars: the source's rows, row by row.
    for (path, table) in [(&t_path, "t"), (&u_path, "u")] {
        let out = std::process::Command::new(readers_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/read_current_dv.py"
            ))
            .arg(path)
            .output()
            .expect("readers' python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reader output");
        let source: Vec<serde_json::Value> = client
            .query(&format!("SELECT id, v FROM {table} ORDER BY id"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::json!([r.get::<_, i32>(0), r.get::<_, String>(1)]))
            .collect();
        for reader in ["duckdb", "polars"] {
            let rows = read[reader].as_array().unwrap();
            assert_eq!(rows.len(), source.len(), "{reader} on {table}");
            for (got, want) in rows.iter().zip(&source) {
                assert_eq!(got, want, "{reader} on {table}");
            }
        }
    }
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}
