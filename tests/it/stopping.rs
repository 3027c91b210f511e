//! A stop while the start waits for another session's lock: SIGTERM ends
//! the daemon while the blocker still holds its lock, and the statement it
//! waited in is cancelled, so no slot (and no publication) appears once the
//! blocker lets go.

use std::time::Duration;

use crate::support::{eventually, pg, Pipeline};

/// Waits until a session of pipeline `name` waits for a lock; returns what
/// it runs (the wait lasts as long as the blocker's transaction).
async fn wait_for_lock_wait(client: &tokio_postgres::Client, name: &str) -> String {
    let app = format!("tidewater:{name}");
    let waiting = "SELECT query FROM pg_stat_activity \
                   WHERE application_name = $1 AND wait_event_type = 'Lock'";
    eventually(
        "the daemon waits for the blocker's lock",
        Duration::from_secs(60),
        || async {
            match client.query_opt(waiting, &[&app]).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("no session of the pipeline waits for a lock".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    client.query_one(waiting, &[&app]).await.unwrap().get(0)
}

/// SIGTERM while the start waits behind `blocker`: the daemon is gone while
/// the blocker still holds its lock, and once the blocker commits and every
/// session of the pipeline is gone, none of them created anything.
async fn stop_while_blocked(
    client: &tokio_postgres::Client,
    blocker: &tokio_postgres::Client,
    pipeline: &mut Pipeline,
    waits_in: &str,
) {
    pipeline.start();
    let query = wait_for_lock_wait(client, &pipeline.name).await;
    assert!(query.contains(waits_in), "waits in: {query}");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
    // The blocker still holds its lock: the stop did not wait for it.
    let held: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 't' AND l.mode = 'AccessExclusiveLock' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        held, 1,
        "the blocker's lock was released before the daemon stopped"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    // Had the statement not been cancelled, it would go on now.
    let app = format!("tidewater:{}", pipeline.name);
    eventually(
        "every session of the pipeline is gone",
        Duration::from_secs(30),
        || async {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} sessions left"))
            }
        },
    )
    .await;
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("tidewater_{}", pipeline.name)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a slot was created after the stop");
    assert!(
        pipeline
            .log(pipeline.starts)
            .contains("stopped while starting"),
        "{}",
        pipeline.log(pipeline.starts)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_start_waits_for_a_lock_stops_at_once_and_creates_no_slot() {
    let client = pg().create_database("stop_locked").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("stop_locked", &pg().url("stop_locked"), "");

    // 1. No publication yet: creating it waits for the table lock.
    let blocker = pg().client("stop_locked").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    stop_while_blocked(&client, &blocker, &mut pipeline, "CREATE PUBLICATION").await;
    let publications: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = 'tidewater_stop_locked'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        publications, 0,
        "the publication was created after the stop"
    );

    // 2. The publication exists (made by the owner): creating the slot
    //    waits for the blocker's transaction to end.
    client
        .batch_execute(
            "CREATE PUBLICATION tidewater_stop_locked FOR TABLE t \
             WITH (publish_via_partition_root = true)",
        )
        .await
        .unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    stop_while_blocked(&client, &blocker, &mut pipeline, "CREATE_REPLICATION_SLOT").await;

    // With the blocker gone, the next start takes the snapshot.
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}

/// MariaDB's snapshot takes no lock of its own (its consistent snapshot
/// gives the binlog position without FLUSH TABLES WITH READ LOCK), but
/// reading a table another session holds `LOCK TABLES … WRITE` on waits for
/// it: SIGTERM then stops the daemon while the blocker still holds its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sigterm_while_the_snapshot_waits_for_a_table_lock_stops_at_once() {
    use mysql_async::prelude::Queryable;
    let server = crate::support::mariadb::maria();
    let mut conn = server.create_database("stop_locked_my").await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    )
    .await
    .unwrap();
    let mut blocker = server.conn("stop_locked_my").await;
    blocker.query_drop("LOCK TABLES t WRITE").await.unwrap();
    let mut pipeline =
        Pipeline::with_source("stop_locked_my", &server.source_toml("stop_locked_my"), "");
    pipeline.start();
    let waiting = "SELECT count(*) FROM information_schema.PROCESSLIST \
                   WHERE DB = 'stop_locked_my' AND STATE LIKE 'Waiting for table metadata lock%'";
    eventually(
        "the snapshot waits for the blocker's lock",
        Duration::from_secs(60),
        || async move {
            let mut probe = server.conn("").await;
            let n: Option<i64> = probe
                .query_first(waiting)
                .await
                .map_err(|e| e.to_string())?;
            if n.unwrap_or(0) > 0 {
                Ok(())
            } else {
                Err("nothing waits yet".to_string())
            }
        },
    )
    .await;
    // Stopped while the blocker holds its lock: it is released only below.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    blocker.query_drop("UNLOCK TABLES").await.unwrap();
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "stop_locked_my", "t", "id")
        .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// SIGTERM stops `tidewater snapshot` before it completes (exit 1, with a
/// hint that says what really happens), and `snapshot` again resumes after
/// the last committed chunk: what was committed stays, the rest is read
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_snapshot_then_snapshot_again_resumes_after_the_committed_chunks() {
    // Large enough that the copy lasts seconds after its first commits: with
    // 60 000 rows it once completed (0.7 s) before the signal arrived.
    const ROWS: usize = 400_000;
    let client = pg().create_database("stop_snap").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, payload text);
             INSERT INTO big SELECT g, repeat('x', 40) || g FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    let pipeline = Pipeline::with_source(
        "stop_snap",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n\
             snapshot_chunk_bytes = 65536\nsnapshot_workers = 2\n",
            pg().url("stop_snap")
        ),
        "max_batch_rows = 2000\ntarget_file_size_bytes = 1024\n",
    );
    let stderr = pipeline.dir.join("snapshot-1.log");
    let mut child = crate::support::tidewater()
        .args(["snapshot", "--config"])
        .arg(&pipeline.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let path = pipeline.table_path("public", "big");
    eventually(
        "part of the snapshot committed",
        Duration::from_secs(60),
        || {
            let path = path.clone();
            async move {
                let log = crate::support::lake::read_log(&path).await?;
                (log.len() > 2_000 && log.len() < ROWS / 2)
                    .then_some(())
                    .ok_or(format!("{} rows", log.len()))
            }
        },
    )
    .await;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("stopped before the snapshot completed")
            && text.contains("resumes after what the lake holds"),
        "{text}"
    );
    let before = crate::support::lake::read_log(&path).await.unwrap();
    assert!(before.len() < ROWS, "stopped before the snapshot completed");

    let mut again = crate::support::tidewater();
    again.args(["snapshot", "--config"]).arg(&pipeline.config);
    let out = crate::support::output_within(again, 180);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("resuming the interrupted snapshot"), "{text}");
    assert!(!text.contains("starting over"), "{text}");
    let log = crate::support::lake::read_log(&path).await.unwrap();
    let marks: std::collections::HashSet<(i64, i64)> = log.iter().map(|r| (r.seq, r.ord)).collect();
    assert!(before.iter().all(|r| marks.contains(&(r.seq, r.ord))));
    assert_eq!(marks.len(), log.len(), "a (_tw_seq, _tw_ord) repeats");
    let mut ids: Vec<i64> = log
        .iter()
        .map(|r| r.values["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=ROWS as i64).collect::<Vec<_>>(), "each row once");
}
