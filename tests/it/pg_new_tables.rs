//! Postgres tables that join a running pipeline: created after its start
//! (CREATE TABLE, CREATE TABLE … AS), renamed into the include patterns, or
//! keyless until they get a replica identity. Each is added to the
//! publication, copied in a snapshot of its own and then streamed; the lake
//! must equal the source, also across a SIGKILL in the middle of a copy.

use std::time::Duration;

use crate::support::lake::read_log;
use crate::support::{eventually, pg, Pipeline};

const FAST_DISCOVERY: &str = "table_discovery_interval_ms = 300\n";

fn pipeline(name: &str, extra_sink: &str) -> Pipeline {
    Pipeline::with_source(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\nexclude = [\"public.staging_*\"]\n{FAST_DISCOVERY}",
            pg().url(name)
        ),
        extra_sink,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_while_streaming_are_copied_then_streamed() {
    let client = pg().create_database("newtables").await;
    client
        .batch_execute(
            "CREATE TABLE first (id int PRIMARY KEY, v text);
             INSERT INTO first VALUES (1, 'a');",
        )
        .await
        .unwrap();
    let mut pipeline = pipeline("newtables", "");
    pipeline.start();
    pipeline.wait_equal(&client, "first").await;

    // A transaction that began before the new table joins the publication
    // and commits after: its changes of the table are in no stream (its
    // catalog snapshot predates the table's publication), only in the copy.
    let other = pg().client("newtables").await;
    other
        .batch_execute("BEGIN; INSERT INTO first VALUES (3, 'c');")
        .await
        .unwrap();
    // A table created and filled while streaming, changed again right after.
    client
        .batch_execute(
            "CREATE TABLE second (id int PRIMARY KEY, v text, n numeric(8,2));
             INSERT INTO second SELECT g, 'v' || g, g / 4.0 FROM generate_series(1, 500) g;
             CREATE TABLE third AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50) g;
             ALTER TABLE third ADD PRIMARY KEY (id);",
        )
        .await
        .unwrap();
    other
        .batch_execute(
            "INSERT INTO second VALUES (1000, 'early', 1); UPDATE second SET v = 'early' WHERE id = 1;",
        )
        .await
        .unwrap();
    // It commits once the daemon has added `second` to the publication (the
    // rows it locks keep the UPDATE below waiting until then).
    let watcher = pg().client("newtables").await;
    let committer = tokio::spawn(async move {
        eventually("second in the publication", Duration::from_secs(60), || {
            let watcher = &watcher;
            async move {
                let published = watcher
                    .query_opt(
                        "SELECT 1 FROM pg_publication_tables \
                             WHERE schemaname = 'public' AND tablename = 'second'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                published
                    .map(|_| ())
                    .ok_or_else(|| "not published yet".to_string())
            }
        })
        .await;
        other.batch_execute("COMMIT").await.unwrap();
        other
    });
    client
        .batch_execute(
            "UPDATE second SET v = 'changed' WHERE id <= 10;
             DELETE FROM second WHERE id BETWEEN 11 AND 20;
             INSERT INTO first VALUES (2, 'b');",
        )
        .await
        .unwrap();
    let _other = committer.await.unwrap();
    pipeline.wait_equal(&client, "second").await;
    pipeline.wait_equal(&client, "third").await;
    pipeline.wait_equal(&client, "first").await;

    // Keyless: not published (its UPDATEs would fail) until it has an identity.
    client
        .batch_execute(
            "CREATE TABLE keyless (id int, v text);
             INSERT INTO keyless VALUES (1, 'k1'), (2, 'k2');",
        )
        .await
        .unwrap();
    eventually(
        "the warning about the keyless table",
        Duration::from_secs(60),
        || {
            let text = pipeline.log(1);
            async move {
                (text.contains("public.keyless") && text.contains("REPLICA IDENTITY FULL"))
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
    client
        .batch_execute(
            "UPDATE keyless SET v = 'still works' WHERE id = 1;
             ALTER TABLE keyless REPLICA IDENTITY FULL;
             UPDATE keyless SET v = 'after' WHERE id = 2;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "keyless").await;

    // Renamed into the patterns (from an excluded name), then changed. An
    // included table created in the same transaction shows when the daemon
    // has seen both: by then the excluded one must not be copied, nor
    // published.
    client
        .batch_execute(
            "BEGIN;
             CREATE TABLE staging_orders (id int PRIMARY KEY, v text);
             INSERT INTO staging_orders SELECT g, 's' || g FROM generate_series(1, 30) g;
             CREATE TABLE beside_staging (id int PRIMARY KEY);
             INSERT INTO beside_staging VALUES (1);
             COMMIT;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "beside_staging").await;
    assert!(!pipeline.table_path("public", "staging_orders").exists());
    let published = client
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE tablename = 'staging_orders'",
            &[],
        )
        .await
        .unwrap();
    assert!(published.is_none(), "the excluded table is published");
    client
        .batch_execute(
            "ALTER TABLE staging_orders RENAME TO orders;
             UPDATE orders SET v = 'renamed' WHERE id < 5;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "orders").await;

    // Restarted: the copied tables stream on, and are not copied again.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    client
        .batch_execute(
            "INSERT INTO second VALUES (2000, 'after restart', 2);
             DELETE FROM third WHERE id = 1;",
        )
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_equal(&client, "second").await;
    pipeline.wait_equal(&client, "third").await;
    let second = read_log(&pipeline.table_path("public", "second"))
        .await
        .unwrap();
    let reads = second.iter().filter(|r| r.op == "r").count();
    assert!(
        (490..=501).contains(&reads),
        "one copy of the table: {reads} read rows"
    );
    assert!(
        second.iter().all(|r| r.op != "t"),
        "a complete copy is never taken again"
    );
    assert!(!pipeline.log(2).contains("copying a table while streaming"));
    let log = pipeline.log(1);
    assert!(
        log.contains("snapshot progress")
            && log.contains("table=public.second")
            && log.contains("done=true"),
        "{log}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// SIGKILL while a table joining the stream is being copied (its copy is
/// committed in several pieces): the restart takes the copy again, the lake
/// forgets the partial one (a truncate row), and equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_table_copy_is_taken_again() {
    let client = pg().create_database("copykill").await;
    client
        .batch_execute(
            "CREATE TABLE first (id int PRIMARY KEY, v text); INSERT INTO first VALUES (1, 'a');",
        )
        .await
        .unwrap();
    let mut pipeline = pipeline("copykill", "max_batch_rows = 2000\n");
    pipeline.start();
    pipeline.wait_equal(&client, "first").await;
    client
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text);
             INSERT INTO big SELECT g, repeat('x', 20) || g FROM generate_series(1, 150000) g;",
        )
        .await
        .unwrap();
    // Kill once part of the copy is committed.
    let path = pipeline.table_path("public", "big");
    eventually(
        "a partial copy in the lake",
        Duration::from_secs(120),
        || {
            let path = path.clone();
            async move {
                let log = read_log(&path).await?;
                (!log.is_empty() && log.len() < 150000)
                    .then_some(())
                    .ok_or(format!("{} rows", log.len()))
            }
        },
    )
    .await;
    pipeline.kill();
    client
        .batch_execute(
            "UPDATE big SET v = 'changed' WHERE id % 1000 = 0;
             DELETE FROM big WHERE id > 149990;",
        )
        .await
        .unwrap();
    pipeline.start();
    pipeline
        .wait_equal_within(&client, "big", Duration::from_secs(240))
        .await;
    let log = read_log(&path).await.unwrap();
    assert!(
        log.iter().any(|r| r.op == "t"),
        "the partial copy is superseded"
    );
    assert!(pipeline.log(2).contains("copying a table while streaming"));
    client
        .batch_execute("UPDATE big SET v = 'streamed' WHERE id = 7")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "big").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// A change tidewater cannot follow (here an array whose lower bound is not
/// 1, which a list cannot hold) stops only its table: the others keep
/// streaming, the stop survives restarts and shows in `status`, and after
/// the fix `tidewater snapshot --table` copies the table again, from where
/// it streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_be_followed_stops_alone() {
    let client = pg().create_database("stopone").await;
    client
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY, v text);
             CREATE TABLE bad (id int PRIMARY KEY, a int[]);
             INSERT INTO good VALUES (1, 'a');
             INSERT INTO bad VALUES (1, '{1,2}'), (2, '{3}');",
        )
        .await
        .unwrap();
    let mut pipeline = pipeline("stopone", "");
    pipeline.start();
    pipeline.wait_equal(&client, "good").await;
    pipeline.wait_equal(&client, "bad").await;
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO good VALUES (2, 'b');
             UPDATE bad SET a = '[0:1]={7,8}' WHERE id = 1;
             INSERT INTO good VALUES (3, 'c');
             COMMIT;
             INSERT INTO bad VALUES (3, '{9}');
             INSERT INTO good VALUES (4, 'd');",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "good").await;
    let log = pipeline.log(1);
    assert!(
        log.contains("table stopped") && log.contains("public.bad") && log.contains("column a"),
        "{log}"
    );
    assert!(!log.contains("7,8"), "no row value in the log");
    // The bound the value has, and the rule (not "lower bounds are 1").
    assert!(
        log.contains("lower bound 0 in dimension 1") && !log.contains("lower bounds are 1"),
        "{log}"
    );
    let report = pipeline.status_json();
    assert_eq!(
        crate::support::table_state(&report, "public.bad"),
        Some("stopped".into()),
        "{report}"
    );
    assert!(
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["last_commit"].is_string()),
        "{report}"
    );
    assert_eq!(
        crate::support::table_state(&report, "public.good"),
        Some("streaming".into()),
        "{report}"
    );
    let bad_log = read_log(&pipeline.table_path("public", "bad"))
        .await
        .unwrap();
    assert_eq!(
        bad_log.len(),
        2,
        "nothing of bad after its stop: {bad_log:?}"
    );

    // A restart keeps it stopped, and says so.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    pipeline.start();
    client
        .batch_execute("INSERT INTO good VALUES (5, 'e'); UPDATE bad SET a = '{10}' WHERE id = 2;")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "good").await;
    assert!(
        pipeline.log(2).contains("table is stopped"),
        "{}",
        pipeline.log(2)
    );
    assert_eq!(
        read_log(&pipeline.table_path("public", "bad"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));

    // The fix, then a copy of that table alone.
    client
        .batch_execute("UPDATE bad SET a = '{7,8}' WHERE id = 1")
        .await
        .unwrap();
    let snapshot = |table: &str| pipeline.snapshot_tables(&[table]);
    let out = snapshot("public.nope");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not selected by source.tables"));
    let out = snapshot("public.bad");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Copied again and no longer stopped; no process runs the pipeline now.
    let report = pipeline.status_json();
    assert_eq!(
        crate::support::table_state(&report, "public.bad"),
        Some("not running".into()),
        "{report}"
    );
    let good_before = read_log(&pipeline.table_path("public", "good"))
        .await
        .unwrap()
        .len();
    pipeline.start();
    client
        .batch_execute("UPDATE bad SET a = '{11}' WHERE id = 3; INSERT INTO good VALUES (6, 'f');")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "bad").await;
    pipeline.wait_equal(&client, "good").await;
    let good = read_log(&pipeline.table_path("public", "good"))
        .await
        .unwrap();
    assert_eq!(good.len(), good_before + 1, "good is not copied again");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(3));
}

/// Issue 20 (4): a table copied again on demand while the pipeline streams,
/// from the command line (`snapshot --table` beside a running `run`) and by
/// an insert into `source.signal_table`: each copy starts with a truncate,
/// runs beside the stream (another table keeps landing), and the table ends
/// equal to the source; the request record is gone once the copies are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_copied_again_on_demand_while_streaming() {
    let client = pg().create_database("backfill").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g;
             CREATE TABLE other (id int PRIMARY KEY);
             CREATE TABLE tidewater_signal (id bigserial PRIMARY KEY, tables text NOT NULL);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source(
        "backfill",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\nsignal_table = \"public.tidewater_signal\"\n",
            pg().url("backfill")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let log_path = pipeline.lake.join("backfill/public/t");
    let copies = |want_reads: usize, want_truncates: usize| {
        let path = log_path.clone();
        async move {
            eventually("the copies of t", Duration::from_secs(90), || {
                let path = path.clone();
                async move {
                    let log = read_log(&path).await?;
                    let reads = log.iter().filter(|r| r.op == "r").count();
                    let truncates = log.iter().filter(|r| r.op == "t").count();
                    if (reads, truncates) == (want_reads, want_truncates) {
                        Ok(())
                    } else {
                        Err(format!("{reads} snapshot rows, {truncates} truncates"))
                    }
                }
            })
            .await
        }
    };
    copies(3000, 0).await;

    // From the command line, beside the running pipeline.
    client
        .batch_execute("UPDATE t SET v = 'changed' WHERE id <= 10; INSERT INTO other VALUES (1);")
        .await
        .unwrap();
    let out = crate::support::tidewater()
        .args(["snapshot", "--config"])
        .arg(&pipeline.config)
        .args(["--table", "public.t"])
        .output()
        .expect("tidewater snapshot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("asked it to copy public.t again"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    client
        .batch_execute("INSERT INTO other VALUES (2); DELETE FROM t WHERE id = 20;")
        .await
        .unwrap();
    copies(3000 + 2999, 1).await;
    pipeline.wait_equal(&client, "t").await;
    pipeline.wait_equal(&client, "other").await;

    // By a row in the signal table; a name outside the pipeline is left out.
    client
        .batch_execute(
            "INSERT INTO tidewater_signal (tables) VALUES ('public.t, elsewhere.x');
             INSERT INTO other VALUES (3);",
        )
        .await
        .unwrap();
    copies(3000 + 2999 * 2, 2).await;
    pipeline.wait_equal(&client, "t").await;
    pipeline.wait_equal(&client, "other").await;
    let record = pipeline.lake.join("backfill/_tidewater_copy_requests.json");
    eventually("the request record to go", Duration::from_secs(30), || {
        let record = record.clone();
        async move {
            match record.exists() {
                false => Ok(()),
                true => Err(std::fs::read_to_string(&record).unwrap_or_default()),
            }
        }
    })
    .await;
    let log = pipeline.log(1);
    assert_eq!(log.matches("copy asked for").count(), 2, "{log}");
    assert!(log.contains("does not replicate"), "{log}");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
