//! `tidewater verify`: the source and the lake compared at one source
//! position while the pipeline streams and writes keep coming (no false
//! alarm), then each kind of break — a change the pipeline never saw, a
//! data file deleted from the lake — found with its keys, and repaired
//! through the running pipeline's copy path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::mariadb::maria;
use crate::support::{code_and_output_within, pg, tidewater, Pipeline};

/// `tidewater verify --config … [args]`: exit code and output.
fn verify(pipeline: &Pipeline, args: &[&str]) -> (i32, String) {
    let mut cmd = tidewater();
    cmd.arg("verify")
        .arg("--config")
        .arg(&pipeline.config)
        .args(["--wait", "90"])
        .args(args);
    code_and_output_within(cmd, 300)
}

/// The lines of `output` about `table`.
fn about(output: &str, table: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with(&format!("{table}:")))
        .map(str::to_string)
        .collect()
}

/// Writes to `busy` and to `acct` rows above 1000 until stopped: the
/// pipeline streams while verify runs.
fn pg_writer(database: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let database = database.to_string();
    tokio::spawn(async move {
        let client = pg().client(&database).await;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            client
                .batch_execute(&format!(
                    "INSERT INTO busy VALUES ({n}, 'b{n}');
                     INSERT INTO acct VALUES (1000 + {n}, {n}.5, 'w{n}', now());
                     UPDATE acct SET amount = amount + 1 WHERE id = 1000 + {n} / 2;
                     DELETE FROM acct WHERE id = 1000 + {n} / 3 AND {n} % 5 = 0;"
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    })
}

/// The parquet files of a Delta table's current snapshot, as the log adds
/// and removes them.
fn live_files(table: &std::path::Path) -> Vec<String> {
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    logs.sort();
    let mut live: Vec<String> = Vec::new();
    for log in logs {
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                live.push(path.to_string());
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                live.retain(|p| p != path);
            }
        }
    }
    live
}

/// The newest commit of a Delta table that adds files (not a checkpoint).
fn last_commit_with_adds(table: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !p.to_string_lossy().contains("_last_checkpoint"))
        .collect();
    logs.sort();
    let last = logs
        .into_iter()
        .rev()
        .find(|p| std::fs::read_to_string(p).unwrap().contains(r#"{"add""#))
        .expect("a commit that adds files");
    let checkpoint = last.with_extension("checkpoint.parquet");
    assert!(!checkpoint.exists(), "no checkpoint holds it");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lake_verified_while_streaming_breaks_found_and_repaired() {
    let name = "verify_pg";
    let source = pg().create_database(name).await;
    source
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, amount numeric(12,2), label text, at timestamptz);
             CREATE TABLE busy (id int PRIMARY KEY, note text);
             CREATE TABLE nokey (v int);
             ALTER TABLE nokey REPLICA IDENTITY FULL;
             INSERT INTO acct SELECT g, g * 1.25, 'l' || g, '2026-01-01'::timestamptz + g * interval '1 hour'
               FROM generate_series(1, 300) g;
             INSERT INTO nokey VALUES (1), (1);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(name, &pg().url(name), "");
    pipeline.start();
    pipeline.wait_equal(&source, "acct").await;

    // Equal, while writes keep landing: every run compares at one point.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg_writer(name, stop.clone());
    for _ in 0..2 {
        let (code, out) = verify(&pipeline, &[]);
        assert_eq!(code, 0, "{out}");
        assert!(about(&out, "public.acct")[0].contains(": equal ("), "{out}");
        assert!(about(&out, "public.busy")[0].contains(": equal ("), "{out}");
        assert!(
            about(&out, "public.nokey")[0].contains("not compared"),
            "{out}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 5, "the writer ran ({writes} rounds)");
    pipeline.wait_equal(&source, "acct").await;

    // A lost change: one transaction lands, then its commit loses the
    // file it added (edited out of the Delta log while the pipeline is
    // down), so the lake never holds it and nothing else notices.
    source
        .batch_execute(
            "BEGIN;
             UPDATE acct SET label = 'changed' WHERE id = 5;
             DELETE FROM acct WHERE id = 6;
             INSERT INTO acct VALUES (7000, 1, 'new', now());
             COMMIT;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&source, "acct").await;
    assert_eq!(pipeline.terminate(), 0);
    let table = pipeline.table_path("public", "acct");
    let last = last_commit_with_adds(&table);
    let text = std::fs::read_to_string(&last).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(r#"{"add""#))
        .collect();
    assert!(kept.len() < text.lines().count());
    std::fs::write(&last, kept.join("\n") + "\n").unwrap();
    pipeline.start();
    let (code, out) = verify(&pipeline, &["--table", "public.acct"]);
    assert_eq!(code, 1, "{out}");
    let lines = about(&out, "public.acct");
    assert!(lines[0].contains("DIFFERENT"), "{out}");
    assert!(
        out.contains(r#"public.acct: 1 keys missing from the lake: {"id":7000}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"public.acct: 1 keys extra in the lake: {"id":6}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"public.acct: 1 keys different in the lake: {"id":5}"#),
        "{out}"
    );
    assert!(!out.contains("changed"), "no value is printed: {out}");
    assert!(
        !out.contains("public.busy"),
        "only the table asked for: {out}"
    );

    // Repaired through the running pipeline, which copies the table again.
    let (code, out) = verify(&pipeline, &["--table", "public.acct", "--repair"]);
    assert!(
        out.contains(r#"1 keys extra in the lake: {"id":6}"#),
        "found first: {out}"
    );
    assert!(out.contains("repair: public.acct equal"), "{out}");
    assert_eq!(code, 0, "{out}");
    pipeline.wait_equal(&source, "acct").await;

    // A data file deleted from the lake: its rows are found missing.
    // The largest: the copy's, whose rows are the current state.
    let mut files = live_files(&table);
    files.sort_by_key(|f| std::fs::metadata(table.join(f)).map_or(0, |m| m.len()));
    let victim = files.last().expect("a live file").clone();
    std::fs::remove_file(table.join(&victim)).unwrap();
    let (code, out) = verify(&pipeline, &["--table", "public.acct", "--repair"]);
    assert!(out.contains("committed data files are gone"), "{out}");
    assert!(out.contains(&victim), "{out}");
    assert!(out.contains("keys missing from the lake"), "{out}");
    assert_eq!(code, 0, "repaired: {out}");
    assert!(out.contains("repair: public.acct equal"), "{out}");
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    pipeline.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_lake_verified_lost_change_found_and_repaired() {
    let name = "verify_my";
    let server = maria();
    let mut conn = server.create_database(name).await;
    conn.query_drop(
        "CREATE TABLE acct (id int PRIMARY KEY, amount decimal(12,2), label varchar(40), \
         at datetime(6), big bigint unsigned) ENGINE=InnoDB;
         INSERT INTO acct SELECT seq, seq * 1.25, CONCAT('l', seq), \
           '2026-01-01' + INTERVAL seq HOUR, 18446744073709551615 - seq FROM seq_1_to_300",
    )
    .await
    .unwrap();
    let mut pipeline = Pipeline::with_source(name, &server.source_toml(name), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, name, "acct", "id")
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut conn = server.conn(name).await;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                conn.query_drop(format!(
                    "INSERT INTO acct VALUES (1000 + {n}, {n}.5, 'w{n}', NOW(6), {n}); \
                     UPDATE acct SET amount = amount + 1 WHERE id = 1000 + {n} DIV 2"
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        about(&out, &format!("{name}.acct"))[0].contains(": equal ("),
        "{out}"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // A lost change: written with the binlog off for its session.
    conn.query_drop(
        "SET sql_log_bin = 0; UPDATE acct SET label = 'changed' WHERE id = 5; \
         DELETE FROM acct WHERE id = 6; SET sql_log_bin = 1",
    )
    .await
    .unwrap();
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            r#"{name}.acct: 1 keys extra in the lake: {{"id":6}}"#
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            r#"{name}.acct: 1 keys different in the lake: {{"id":5}}"#
        )),
        "{out}"
    );
    let (code, out) = verify(&pipeline, &["--repair"]);
    assert_eq!(code, 0, "{out}");
    pipeline
        .wait_equal_mysql(&mut conn, name, "acct", "id")
        .await;
    pipeline.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_warehouse_verified_while_streaming_edits_found_and_repaired() {
    let name = "verify_wh";
    let source = pg().create_database(&format!("{name}_src")).await;
    let warehouse = pg().create_database(&format!("{name}_dst")).await;
    source
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, amount numeric(12,2), label text, at timestamptz, tags int[]);
             CREATE TABLE busy (id int PRIMARY KEY, note text);
             INSERT INTO acct SELECT g, g * 1.25, 'l' || g, '2026-01-01'::timestamptz + g * interval '1 hour', ARRAY[g]
               FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    let mut pipeline =
        Pipeline::pg_warehouse(name, &format!("{name}_src"), &format!("{name}_dst"), "");
    pipeline.start();
    crate::support::eventually("the snapshot", Duration::from_secs(60), || async {
        let n: i64 = warehouse
            .query_one("SELECT count(*) FROM public.acct", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        (n == 300).then_some(()).ok_or_else(|| format!("{n} rows"))
    })
    .await;

    // Equal while writes keep landing (the warehouse is compared at its
    // own, later point: keys that changed meanwhile are compared again).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg_writer(&format!("{name}_src"), stop.clone());
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("DIFFERENT"), "{out}");
    assert!(
        about(&out, "public.busy")
            .iter()
            .any(|l| l.contains(": equal (") || l.contains("not counted as a difference")),
        "{out}"
    );
    assert!(
        about(&out, "public.acct")
            .iter()
            .any(|l| l.contains("columns not compared: tags")),
        "{out}"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // Rows edited and deleted in the warehouse by hand.
    warehouse
        .batch_execute(
            "UPDATE public.acct SET label = 'edited' WHERE id = 5;
             DELETE FROM public.acct WHERE id = 6;",
        )
        .await
        .unwrap();
    let (code, out) = verify(&pipeline, &["--table", "public.acct"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"public.acct: 1 keys missing from the warehouse: {"id":6}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"public.acct: 1 keys different in the warehouse: {"id":5}"#),
        "{out}"
    );
    assert!(!out.contains("edited"), "no value is printed: {out}");
    let (code, out) = verify(&pipeline, &["--table", "public.acct", "--repair"]);
    assert!(out.contains("repair: public.acct equal"), "{out}");
    assert_eq!(code, 0, "{out}");
    let label: String = warehouse
        .query_one("SELECT label FROM public.acct WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(label, "l5");
    pipeline.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_warehouse_edit_found_and_repaired() {
    let name = "verify_mywh";
    let server = maria();
    let mut conn = server.create_database(name).await;
    let warehouse = pg().create_database(&format!("{name}_dst")).await;
    conn.query_drop(
        "CREATE TABLE acct (id int PRIMARY KEY, amount decimal(12,2), label varchar(40), \
         at datetime(6), big bigint unsigned, flag tinyint(1)) ENGINE=InnoDB;
         INSERT INTO acct SELECT seq, seq * 1.25, CONCAT('l', seq), \
           '2026-01-01' + INTERVAL seq HOUR, 18446744073709551615 - seq, seq % 2 FROM seq_1_to_200",
    )
    .await
    .unwrap();
    let mut pipeline = Pipeline::warehouse(
        name,
        &server.source_toml(name),
        &pg().url(&format!("{name}_dst")),
        "",
    );
    pipeline.start();
    crate::support::eventually("the snapshot", Duration::from_secs(60), || async {
        let n: i64 = warehouse
            .query_one(&format!("SELECT count(*) FROM {name}.acct"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        (n == 200).then_some(()).ok_or_else(|| format!("{n} rows"))
    })
    .await;
    conn.query_drop("UPDATE acct SET label = 'streamed' WHERE id = 9")
        .await
        .unwrap();
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{name}.acct: equal (200 rows")),
        "{out}"
    );

    warehouse
        .batch_execute(&format!(
            "UPDATE {name}.acct SET big = 1 WHERE id = 3; DELETE FROM {name}.acct WHERE id = 4;"
        ))
        .await
        .unwrap();
    let (code, out) = verify(&pipeline, &["--repair"]);
    assert!(
        out.contains(&format!(
            r#"{name}.acct: 1 keys missing from the warehouse: {{"id":4}}"#
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            r#"{name}.acct: 1 keys different in the warehouse: {{"id":3}}"#
        )),
        "{out}"
    );
    assert!(out.contains(&format!("repair: {name}.acct equal")), "{out}");
    assert_eq!(code, 0, "{out}");
    pipeline.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_table_checked_against_its_log_and_repaired() {
    let name = "verify_cur";
    let source = pg().create_database(name).await;
    source
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, amount numeric(12,2), label text);
             INSERT INTO acct SELECT g, g * 1.25, 'l' || g FROM generate_series(1, 200) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        name,
        &pg().url(name),
        "current_state = true\ncurrent_state_interval_ms = 300\nsoft_deletes = true\n",
    );
    pipeline.start();
    pipeline.wait_equal(&source, "acct").await;
    source
        .batch_execute("UPDATE acct SET label = 'u' WHERE id < 20; DELETE FROM acct WHERE id = 30;")
        .await
        .unwrap();
    pipeline.wait_equal(&source, "acct").await;
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.acct: current-state table equal to its change log (199 rows"),
        "{out}"
    );

    // The current table loses the files of its last merge that added any.
    assert_eq!(pipeline.terminate(), 0);
    let current = pipeline
        .lake
        .join(format!("{name}.current"))
        .join("public")
        .join("acct");
    let last = last_commit_with_adds(&current);
    let text = std::fs::read_to_string(&last).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(r#"{"add""#))
        .collect();
    std::fs::write(&last, kept.join("\n") + "\n").unwrap();
    pipeline.start();
    let (code, out) = verify(&pipeline, &["--repair"]);
    assert!(
        out.contains("public.acct: equal (199 rows"),
        "the log itself is right: {out}"
    );
    assert!(
        out.contains("public.acct: current-state table DIFFERENT from its change log"),
        "{out}"
    );
    assert!(
        out.contains("keys missing from the current-state table"),
        "{out}"
    );
    assert!(out.contains("repair: public.acct equal"), "{out}");
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.acct: current-state table equal to its change log (199 rows"),
        "{out}"
    );
    pipeline.assert_running();
}

/// The largest Parquet data file under `dir` (not Iceberg metadata).
fn largest_data_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut found: Vec<(u64, std::path::PathBuf)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("metadata") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "parquet") {
                found.push((entry.metadata().unwrap().len(), path));
            }
        }
    }
    found.sort();
    found.pop().expect("a data file").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_lake_and_current_state_verified_and_a_lost_file_repaired() {
    let name = "verify_ice";
    let source = pg().create_database(name).await;
    source
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, ref uuid, at time, amount numeric(12,2), small smallint);
             INSERT INTO acct SELECT g, md5(g::text)::uuid, time '00:00' + g * interval '1 minute',
               g * 1.25, (g % 100)::smallint FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url(name)
        ),
        "current_state = true\ncurrent_state_interval_ms = 300\n",
    );
    pipeline.start();
    crate::support::eventually("the snapshot", Duration::from_secs(90), || async {
        let (code, out) = verify(&pipeline, &[]);
        (code == 0).then_some(()).ok_or(out)
    })
    .await;
    source
        .batch_execute("UPDATE acct SET ref = NULL WHERE id = 3; DELETE FROM acct WHERE id = 4")
        .await
        .unwrap();
    let (code, out) = verify(&pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("public.acct: equal (299 rows"), "{out}");
    assert!(
        out.contains("public.acct: current-state table equal to its change log"),
        "{out}"
    );

    let victim = largest_data_file(&pipeline.table_path("public", "acct"));
    std::fs::remove_file(&victim).unwrap();
    let (code, out) = verify(&pipeline, &["--repair"]);
    assert!(out.contains("committed data files are gone"), "{out}");
    assert!(out.contains("keys missing from the lake"), "{out}");
    assert!(out.contains("repair: public.acct equal"), "{out}");
    assert_eq!(code, 0, "{out}");
    pipeline.assert_running();
}
