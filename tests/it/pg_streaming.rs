//! Large Postgres transactions streamed before their commit (pgoutput
//! protocol 2): spilled, replayed at commit, rolled-back parts dropped.

use crate::support::lake::read_log;
use crate::support::{pg, Pipeline};

/// Rows the server streams in chunks: the database's
/// `logical_decoding_work_mem` is set to its 64 kB minimum, so each of these
/// transactions is streamed long before it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_land_whole_and_rollbacks_vanish() {
    let client = pg().create_database("bigtx").await;
    client
        .batch_execute(
            "ALTER DATABASE bigtx SET logical_decoding_work_mem = '64kB';
             CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL, n numeric(12,2));
             CREATE TABLE u (id int PRIMARY KEY, v int);
             INSERT INTO t SELECT g, 'seed ' || g, g FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("bigtx", &pg().url("bigtx"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;

    // A: a large transaction with a rolled-back savepoint, left open.
    let a = pg().client("bigtx").await;
    a.batch_execute(
        "BEGIN;
         INSERT INTO t SELECT g, repeat(md5(g::text), 4), g * 1.25 FROM generate_series(1000, 20999) g;
         SAVEPOINT s1;
         INSERT INTO t SELECT g, 'rolled back ' || g, 0 FROM generate_series(500000, 505000) g;
         UPDATE t SET payload = 'never' WHERE id < 50;
         ROLLBACK TO SAVEPOINT s1;
         SAVEPOINT s2;
         UPDATE t SET payload = payload || ' kept' WHERE id % 7 = 0;
         RELEASE SAVEPOINT s2;
         DELETE FROM t WHERE id % 11 = 0;",
    )
    .await
    .unwrap();
    // B: small transactions commit while A is open.
    let b = pg().client("bigtx").await;
    b.batch_execute("INSERT INTO u VALUES (1, 1); INSERT INTO u VALUES (2, 2);")
        .await
        .unwrap();
    // C: a large transaction that rolls back entirely.
    let c = pg().client("bigtx").await;
    c.batch_execute(
        "BEGIN;
         INSERT INTO t SELECT g, repeat('x', 100), 1 FROM generate_series(200000, 230000) g;
         ROLLBACK;",
    )
    .await
    .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("UPDATE u SET v = 20 WHERE id = 2")
        .await
        .unwrap();

    pipeline.wait_equal(&client, "t").await;
    pipeline.wait_equal(&client, "u").await;

    // The server did stream: A and C at least.
    let streamed: i64 = client
        .query_one(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'tidewater_bigtx'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(streamed >= 2, "server streamed {streamed} transactions");

    // A landed as one transaction: one seq, ords 1..=n in order, after B's
    // first commit and before B's last.
    let log = read_log(&pipeline.table_path("public", "t")).await.unwrap();
    let streamed_rows: Vec<_> = log.iter().filter(|r| r.op != "r").collect();
    let seq = streamed_rows[0].seq;
    assert!(
        streamed_rows.iter().all(|r| r.seq == seq),
        "one transaction"
    );
    let ords: Vec<i64> = streamed_rows.iter().map(|r| r.ord).collect();
    assert!(ords.windows(2).all(|w| w[0] < w[1]), "ords increase");
    let inserts = streamed_rows.iter().filter(|r| r.op == "c").count();
    assert_eq!(
        inserts, 20_000,
        "the rolled-back savepoint's inserts are gone"
    );
    let u_log = read_log(&pipeline.table_path("public", "u")).await.unwrap();
    assert!(u_log.iter().filter(|r| r.op == "c").all(|r| r.seq < seq));
    assert!(u_log.iter().any(|r| r.op == "u" && r.seq > seq));
    assert_eq!(streamed_rows[0].txid, log.last().unwrap().txid);

    // Nothing of the rolled-back work anywhere, and no spill file left.
    assert!(!log.iter().any(|r| r
        .values
        .get("id")
        .and_then(|v| v.as_i64())
        .is_some_and(|id| id >= 200_000)));
    let spill = pipeline.dir.join("state").join("spill");
    let left: Vec<_> = std::fs::read_dir(&spill)
        .expect("spill dir exists")
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "spill files left: {left:?}");
    assert_eq!(pipeline.terminate(), 0);
}

/// An idle database: the daemon writes heartbeat messages into its WAL and
/// the slot confirms them, so it pins no WAL while nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_the_slot_of_an_idle_database() {
    let client = pg().create_database("hb").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('hb_probe', 'test_decoding')")
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source(
        "hb",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nheartbeat_interval_ms = 300\n",
            pg().url("hb")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    crate::support::eventually(
        "a heartbeat in the WAL, confirmed by the pipeline's slot",
        std::time::Duration::from_secs(60),
        || {
            let client = &client;
            async move {
                let rows = client
                    .query(
                        "SELECT lsn::text FROM pg_logical_slot_peek_changes('hb_probe', NULL, NULL) \
                         WHERE data LIKE 'message: transactional: 0 prefix: tidewater_heartbeat%'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(last) = rows.last().map(|r| r.get::<_, String>(0)) else {
                    return Err("no heartbeat message yet".to_string());
                };
                let confirmed: bool = client
                    .query_one(
                        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots \
                         WHERE slot_name = 'tidewater_hb'",
                        &[&last],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                confirmed
                    .then_some(())
                    .ok_or(format!("heartbeat at {last} not confirmed yet"))
            }
        },
    )
    .await;
    client
        .batch_execute("SELECT pg_drop_replication_slot('hb_probe')")
        .await
        .unwrap();
    assert_eq!(pipeline.terminate(), 0);
}

/// Binary mode meets a column type it cannot read (added while streaming):
/// the source reconnects in text mode and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_falls_back_to_text_for_a_new_column_type() {
    let client = pg().create_database("binfall").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v numeric, at timestamptz);
             INSERT INTO t VALUES (1, 1.5, '2024-01-01 00:00:00+00');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("binfall", &pg().url("binfall"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    client
        .batch_execute(
            "INSERT INTO t VALUES (2, 'NaN', 'infinity');
             ALTER TABLE t ADD COLUMN addr inet;
             INSERT INTO t VALUES (3, -0.000001, '1999-01-08 04:05:06+02', '10.1.2.3/8');
             UPDATE t SET addr = '::1' WHERE id = 1;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    let log = pipeline.log(1);
    assert!(log.contains("mode=\"binary\""), "{log}");
    assert!(log.contains("which binary mode cannot read"), "{log}");
    assert!(log.contains("mode=\"text\""), "{log}");
    assert_eq!(pipeline.terminate(), 0);
}

/// A slot the server invalidated (`max_slot_wal_keep_size` exceeded while the
/// daemon was stopped): the next start stops with an error naming the slot
/// and the re-snapshot fix, instead of streaming with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_slot_is_a_clear_error() {
    // A server of its own: the setting is server-wide.
    let server = crate::support::PgServer::start("logical");
    let admin = server.client("postgres").await;
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
        "CREATE DATABASE inval",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let client = server.client("inval").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
             CREATE TABLE junk (x text);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source(
        "inval",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.t\"]\n",
            server.url("inval")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0);
    crate::support::eventually(
        "the server invalidated the stopped pipeline's slot",
        std::time::Duration::from_secs(120),
        || {
            let client = &client;
            async move {
                for sql in [
                    "INSERT INTO junk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 5000) g",
                    "SELECT pg_switch_wal()",
                    "CHECKPOINT",
                ] {
                    client.batch_execute(sql).await.map_err(|e| e.to_string())?;
                }
                let status: Option<String> = client
                    .query_one(
                        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'tidewater_inval'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                (status.as_deref() == Some("lost"))
                    .then_some(())
                    .ok_or(format!("wal_status {status:?}"))
            }
        },
    )
    .await;
    pipeline.start();
    let code = pipeline.wait_exit(std::time::Duration::from_secs(60)).await;
    let log = pipeline.log(2);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("\"tidewater_inval\" was invalidated") && log.contains("re-snapshot"),
        "{log}"
    );
}

/// SIGKILL while a large transaction is being spilled and again while its
/// replay is landing in the lake: the server resends it, the lake holds it
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_spill_and_replay_keeps_exactly_once() {
    let client = pg().create_database("bigcrash").await;
    client
        .batch_execute(
            "ALTER DATABASE bigcrash SET logical_decoding_work_mem = '64kB';
             CREATE TABLE items (id int PRIMARY KEY, v int, note text);
             INSERT INTO items SELECT g, g, 'seed' FROM generate_series(1, 10) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("bigcrash", &pg().url("bigcrash"), "max_batch_rows = 500\n");
    pipeline.start();
    pipeline.wait_equal(&client, "items").await;

    let writer = pg().client("bigcrash").await;
    writer
        .batch_execute(
            "BEGIN;
             INSERT INTO items SELECT g, g, repeat('x', 50) FROM generate_series(100, 30099) g;
             SAVEPOINT s;
             DELETE FROM items WHERE id < 5000;
             ROLLBACK TO SAVEPOINT s;
             UPDATE items SET v = -v WHERE id % 6 = 0;",
        )
        .await
        .unwrap();
    // Killed while the transaction streams in (spilled, not committed):
    // once the daemon has opened the transaction's spill file.
    let spill_dir = pipeline.dir.join("state").join("spill");
    crate::support::eventually(
        "the large transaction spilling in the daemon",
        std::time::Duration::from_secs(60),
        || {
            let spill_dir = spill_dir.clone();
            async move {
                let spilling = std::fs::read_dir(&spill_dir)
                    .map_err(|e| format!("{}: {e}", spill_dir.display()))?
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".spill"));
                spilling
                    .then_some(())
                    .ok_or_else(|| "no spill file yet".to_string())
            }
        },
    )
    .await;
    pipeline.kill();
    pipeline.start();
    writer.batch_execute("COMMIT").await.unwrap();
    // Killed once part of the replayed transaction is in the lake.
    let path = pipeline.table_path("public", "items");
    crate::support::eventually(
        "part of the large transaction in the lake",
        std::time::Duration::from_secs(90),
        || {
            let path = path.clone();
            async move {
                let n = read_log(&path).await?.len();
                (n > 10).then_some(()).ok_or(format!("{n} rows"))
            }
        },
    )
    .await;
    pipeline.kill();
    pipeline.start();
    pipeline.wait_equal(&client, "items").await;

    let log = read_log(&path).await.unwrap();
    assert_eq!(log.iter().filter(|r| r.op == "c").count(), 30_000);
    // Ids divisible by 6 among 1..=10 and 100..=30099.
    assert_eq!(log.iter().filter(|r| r.op == "u").count(), 5001);
    assert_eq!(log.iter().filter(|r| r.op == "d").count(), 0);
    let mut marks: Vec<_> = log.iter().map(|r| (r.seq, r.ord)).collect();
    marks.sort();
    marks.dedup();
    assert_eq!(marks.len(), log.len(), "a (_tw_seq, _tw_ord) repeats");
    assert_eq!(pipeline.terminate(), 0);
}

/// The server crashes (immediate restart) and is cleanly restarted while
/// the pipeline streams: each time the daemon retries with backoff, resumes
/// from the slot and its marks, and the lake ends equal to the source with
/// every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_restarts_mid_stream_lose_nothing() {
    let server = crate::support::PgServer::start("logical");
    server
        .client("postgres")
        .await
        .batch_execute("CREATE DATABASE pgrestart")
        .await
        .unwrap();
    let mut client = server.client("pgrestart").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source(
        "pgrestart",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.t\"]\n",
            server.url("pgrestart")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let mut next = 1001;
    for mode in ["immediate", "fast"] {
        // Changes right before the restart may or may not have been
        // streamed yet: either way they must land once.
        client
            .batch_execute(&format!(
                "INSERT INTO t SELECT g, 'w' || g FROM generate_series({next}, {}) g;
                 UPDATE t SET v = v || '+' WHERE id % 97 = 0; DELETE FROM t WHERE id % 101 = 0;",
                next + 499
            ))
            .await
            .unwrap();
        next += 500;
        server.restart(mode);
        client = server.client("pgrestart").await;
        client
            .batch_execute(&format!(
                "INSERT INTO t SELECT g, 'x' || g FROM generate_series({next}, {}) g;",
                next + 499
            ))
            .await
            .unwrap();
        next += 500;
        pipeline.wait_equal(&client, "t").await;
    }
    let log = read_log(&pipeline.table_path("public", "t")).await.unwrap();
    crate::support::lake::assert_each_change_once(&log);
    let all = pipeline.log(pipeline.starts);
    assert!(all.contains("retrying"), "the daemon retried:\n{all}");
    assert_eq!(pipeline.terminate(), 0, "{all}");
}
