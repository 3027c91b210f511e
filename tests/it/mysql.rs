//! The MySQL/MariaDB binlog source end to end against a private MariaDB:
//! snapshot + stream equality over every type, binlog rotation, SIGKILL
//! restarts, a server restart, and a purged resume position.

use std::collections::HashSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::lake;
use crate::support::mariadb::{maria, MariaServer};
use crate::support::{output_within, tidewater, Pipeline};

/// Every MySQL type family with edge values (DESIGN §4). `k` is the key.
pub(crate) const TYPES_DDL: &str = "CREATE TABLE types (
    k INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED, b BOOLEAN,
    d1 DECIMAL(10,2), d2 DECIMAL(65,30), d3 DECIMAL(5,5), d4 DECIMAL(38,0),
    f FLOAT, db DOUBLE, bit1 BIT(1), bit64 BIT(64),
    dt DATE, dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME, tm6 TIME(6), y YEAR,
    c CHAR(10), vc VARCHAR(200), tx TEXT, lat VARCHAR(20) CHARACTER SET latin1,
    bn BINARY(4), vb VARBINARY(20), bl BLOB,
    e ENUM('small','medium','large'), st SET('a','b','c','d'),
    j JSON, g GEOMETRY, u UUID, ip6 INET6
) CHARACTER SET utf8mb4";

pub(crate) fn type_rows(from: i32) -> String {
    let rows = [
        "(0, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, \
          -9223372036854775808, 18446744073709551615, true, \
          -12345678.90, '-99999999999999999999999999999999999.999999999999999999999999999999', 0.00001, \
          99999999999999999999999999999999999999, \
          -3.402823466e38, 1.7976931348623157e308, b'1', b'1111111111111111111111111111111111111111111111111111111111111111', \
          '1000-01-01', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.001', \
          '-838:59:59', '-00:00:00.500000', 1901, \
          'pad  ', 'ünïcødé 🦀', 'text', 'café €', \
          x'61620000', x'00ff00', x'deadbeef00', \
          'small', 'a,c', '{\"k\": [1, 2.5, \"x\", null, true]}', ST_GeomFromText('POINT(1 2)'), \
          '123e4567-e89b-12d3-a456-426614174000', '2001:db8::1')",
        "(1, 127, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0, false, \
          0.01, '99999999999999999999999999999999999.999999999999999999999999999999', -0.99999, -1, \
          1.5, -0.0, b'0', b'0', \
          '9999-12-31', '9999-12-31 23:59:59', '2020-02-29 12:34:56.000001', '2038-01-19 03:14:07.999', \
          '838:59:59', '12:00:00.000001', 2155, \
          '', '', '', '', x'', x'', x'', \
          'large', '', '[]', ST_GeomFromText('LINESTRING(0 0, 1 1)', 4326), \
          '00000000-0000-0000-0000-000000000000', '::ffff:1.2.3.4')",
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          NULL, NULL, NULL, NULL, '0000-00-00', '0000-00-00 00:00:00', NULL, NULL, NULL, NULL, 0, \
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    ];
    rows.iter()
        .map(|r| r.replacen('(', &format!("({} + ", from), 1))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) async fn exec(conn: &mut mysql_async::Conn, sql: &str) {
    conn.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_every_type_snapshot_then_stream() {
    let server = maria();
    let mut conn = server.create_database("my_types").await;
    exec(&mut conn, "SET SESSION sql_mode = ''").await;
    exec(&mut conn, TYPES_DDL).await;
    exec(
        &mut conn,
        &format!("INSERT INTO types VALUES {}", type_rows(0)),
    )
    .await;
    let mut pipeline = Pipeline::with_source("my_types", &server.source_toml("my_types"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_types", "types", "k")
        .await;

    // The same edge values through the binlog, then updates and deletes.
    exec(
        &mut conn,
        &format!("INSERT INTO types VALUES {}", type_rows(10)),
    )
    .await;
    exec(
        &mut conn,
        "UPDATE types SET vc = 'changed', mi = -1, d2 = -0.000000000000000000000000000001, \
         tm6 = '-12:34:56.789012', st = 'b,d', e = NULL WHERE k IN (1, 11)",
    )
    .await;
    exec(&mut conn, "DELETE FROM types WHERE k IN (0, 12)").await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_types", "types", "k")
        .await;

    let log = lake::read_log(&pipeline.table_path("my_types", "types"))
        .await
        .expect("lake log");
    let ops: Vec<&str> = log.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "r").count(), 3, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "c").count(), 3, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "u").count(), 2, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "d").count(), 2, "{ops:?}");
    // A delete carries the old image: the deleted row 10's values.
    let deleted = log
        .iter()
        .find(|r| r.op == "d" && r.values["k"] == serde_json::json!("12"))
        .expect("delete of k=12");
    assert_eq!(deleted.values["y"], serde_json::json!("0"));
    // MariaDB GTIDs name the transactions; positions are file:offset.
    let streamed = log.iter().find(|r| r.op == "c").expect("an insert");
    assert!(
        streamed
            .txid
            .as_deref()
            .is_some_and(|t| t.split('-').count() == 3),
        "{:?}",
        streamed.txid
    );
    assert!(streamed.position.contains(":"), "{}", streamed.position);
    // Snapshot (catalog) and stream (table map) agree on every column type.
    assert!(
        !pipeline.log(1).contains("table schema changed"),
        "{}",
        pipeline.log(1)
    );
    // The mapping every type took, as the lake's own schema says.
    check_golden(&pipeline.table_path("my_types", "types"));
    let status = output_within(
        {
            let mut cmd = tidewater();
            cmd.args(["status", "--format", "json", "--config"])
                .arg(&pipeline.config);
            cmd
        },
        60,
    );
    assert!(status.status.success(), "{status:?}");
    assert_eq!(pipeline.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rotation_truncate_and_transactions() {
    let server = maria();
    let mut conn = server.create_database("my_rotate").await;
    exec(
        &mut conn,
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(20)); \
         CREATE TABLE b (id BIGINT UNSIGNED PRIMARY KEY, n DECIMAL(12,4))",
    )
    .await;
    exec(&mut conn, "INSERT INTO a VALUES (1, 'one'), (2, 'two')").await;
    let mut pipeline = Pipeline::with_source("my_rotate", &server.source_toml("my_rotate"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_rotate", "a", "id")
        .await;
    for round in 0..3u64 {
        exec(
            &mut conn,
            &format!(
                "START TRANSACTION; INSERT INTO a VALUES ({0}, 'x'), ({1}, 'y'); \
                 INSERT INTO b VALUES ({0}, {0}.5); UPDATE a SET v = 'z' WHERE id = 1; COMMIT",
                100 + round * 2,
                101 + round * 2
            ),
        )
        .await;
        exec(&mut conn, "FLUSH BINARY LOGS").await;
        // A rolled-back transaction never reaches the binlog.
        exec(
            &mut conn,
            "START TRANSACTION; INSERT INTO a VALUES (999, 'gone'); ROLLBACK",
        )
        .await;
    }
    // A key change: the old key leaves the current state.
    exec(&mut conn, "UPDATE a SET id = 500 WHERE id = 2").await;
    exec(&mut conn, "TRUNCATE TABLE b").await;
    exec(
        &mut conn,
        "INSERT INTO b VALUES (18446744073709551615, -0.0001)",
    )
    .await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_rotate", "a", "id")
        .await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_rotate", "b", "id")
        .await;

    let log = lake::read_log(&pipeline.table_path("my_rotate", "b"))
        .await
        .expect("lake log");
    assert!(log.iter().any(|r| r.op == "t"), "truncate is in the log");
    let log = lake::read_log(&pipeline.table_path("my_rotate", "a"))
        .await
        .expect("lake log");
    // Marks strictly increase across binlog files.
    for pair in log.windows(2) {
        assert!(
            (pair[0].seq, pair[0].ord) < (pair[1].seq, pair[1].ord),
            "marks out of order: {:?} {:?}",
            (pair[0].seq, pair[0].ord, &pair[0].position),
            (pair[1].seq, pair[1].ord, &pair[1].position)
        );
    }
    let files: HashSet<String> = log
        .iter()
        .filter(|r| r.op != "r")
        .map(|r| r.position.split(':').next().unwrap_or_default().to_string())
        .collect();
    assert!(
        files.len() >= 3,
        "changes span the rotated files: {files:?}"
    );
    assert_eq!(pipeline.terminate(), 0);
}

/// SIGKILL the daemon repeatedly while a writer commits transactions over
/// two tables: the lake ends equal to the source with no duplicate change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_loses_nothing_duplicates_nothing() {
    mysql_kills_while_streaming("my_crash", "").await;
}

/// The same kills into Iceberg tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_into_iceberg_loses_nothing_duplicates_nothing() {
    mysql_kills_while_streaming("my_crash_ice", "format = \"iceberg\"\n").await;
}

async fn mysql_kills_while_streaming(db: &str, format: &str) {
    let server = maria();
    let mut conn = server.create_database(db).await;
    exec(
        &mut conn,
        "CREATE TABLE orders (id INT PRIMARY KEY, total DECIMAL(10,2), note TEXT); \
         CREATE TABLE items (id INT PRIMARY KEY, order_id INT, qty INT)",
    )
    .await;
    exec(&mut conn, "INSERT INTO orders VALUES (0, 0, 'seed')").await;
    let mut pipeline = Pipeline::with_source(db, &server.source_toml(db), format);
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, db, "orders", "id")
        .await;

    let writer_url = server.root_url(db);
    let writer = tokio::spawn(async move {
        let mut conn =
            mysql_async::Conn::new(mysql_async::Opts::from_url(&writer_url).expect("url"))
                .await
                .expect("writer connects");
        for i in 1..=600 {
            let sql = format!(
                "START TRANSACTION; INSERT INTO orders VALUES ({i}, {i}.25, 'n{i}'); \
                 INSERT INTO items VALUES ({i}, {i}, {q}); \
                 UPDATE orders SET total = total + 1 WHERE id = {prev}; {delete} COMMIT",
                q = i % 7,
                prev = i - 1,
                delete = if i % 10 == 0 {
                    format!("DELETE FROM items WHERE id = {};", i - 5)
                } else {
                    String::new()
                }
            );
            conn.query_drop(sql).await.expect("writer transaction");
            if i % 50 == 0 {
                // The writer's pace (the load), not a wait.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The kills land at moments the writer does not know of: the timing
    // is what this test is about, not a wait for anything.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        pipeline.kill();
        pipeline.start();
    }
    writer.await.expect("writer");
    pipeline
        .wait_equal_mysql(&mut conn, db, "orders", "id")
        .await;
    pipeline
        .wait_equal_mysql(&mut conn, db, "items", "id")
        .await;
    for table in ["orders", "items"] {
        let log = lake::read_log(&pipeline.table_path(db, table))
            .await
            .expect("lake log");
        let mut seen = HashSet::new();
        for row in &log {
            assert!(
                seen.insert((row.seq, row.ord)),
                "duplicate change {} {} in {table}",
                row.seq,
                row.ord
            );
        }
        // Every change exactly once: inserts + updates + deletes.
        let expected = match table {
            "orders" => 1 + 600 + 600,
            _ => 600 + 60,
        };
        assert_eq!(log.len(), expected, "changes in {table}");
    }
    assert_eq!(pipeline.terminate(), 0);
}

/// Disruptive cases get a server of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_server_restart_and_purged_position() {
    let server = MariaServer::start_new();
    let mut conn = server.create_database("my_restart").await;
    exec(&mut conn, "CREATE TABLE t (id INT PRIMARY KEY, v INT)").await;
    exec(&mut conn, "INSERT INTO t VALUES (1, 1)").await;
    let mut pipeline = Pipeline::with_source("my_restart", &server.source_toml("my_restart"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_restart", "t", "id")
        .await;

    // The server goes away while streaming and comes back: the daemon
    // retries and resumes without loss.
    drop(conn);
    server.restart();
    let mut conn = server.conn("my_restart").await;
    exec(&mut conn, "INSERT INTO t VALUES (2, 2), (3, 3)").await;
    exec(&mut conn, "UPDATE t SET v = 10 WHERE id = 1").await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_restart", "t", "id")
        .await;

    // MariaDB's compressed binlog (QUERY and rows events, zlib) decodes too.
    exec(
        &mut conn,
        "SET GLOBAL log_bin_compress = ON; SET GLOBAL log_bin_compress_min_len = 10; \
         CREATE TABLE z (id INT PRIMARY KEY, body TEXT)",
    )
    .await;
    exec(
        &mut conn,
        "INSERT INTO z SELECT seq, REPEAT(CONCAT('compress me ', seq), 50) FROM seq_1_to_200; \
         UPDATE z SET body = REPEAT('x', 300) WHERE id % 3 = 0; DELETE FROM z WHERE id % 5 = 0",
    )
    .await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_restart", "z", "id")
        .await;
    exec(&mut conn, "SET GLOBAL log_bin_compress = OFF").await;
    assert_eq!(pipeline.terminate(), 0);

    // While the daemon is stopped, the binlogs it needs are purged.
    exec(&mut conn, "INSERT INTO t VALUES (4, 4)").await;
    exec(&mut conn, "FLUSH BINARY LOGS").await;
    exec(&mut conn, "INSERT INTO t VALUES (5, 5)").await;
    exec(&mut conn, "FLUSH BINARY LOGS").await;
    // MariaDB keeps a binlog until its checkpoint is durable: purge until
    // only the current file is left.
    let mut purged = false;
    for _ in 0..50 {
        exec(&mut conn, "FLUSH BINARY LOGS").await;
        let status: Option<mysql_async::Row> = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .expect("status");
        let file: String = status.expect("binlog on").get(0).expect("file");
        exec(&mut conn, &format!("PURGE BINARY LOGS TO '{file}'")).await;
        let logs: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.expect("logs");
        if logs.len() == 1 {
            purged = true;
            break;
        }
        // The polling interval of this wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(purged, "the server would not purge its binlogs");
    let output = output_within(
        {
            let mut cmd = tidewater();
            cmd.args(["run", "--config"]).arg(&pipeline.config);
            cmd
        },
        120,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no longer has the binlog at") && stderr.contains("snapshot"),
        "{stderr}"
    );
    let acknowledged = std::fs::read_to_string(
        pipeline
            .lake
            .join("my_restart")
            .join("_tidewater_source_position"),
    )
    .expect("position file");
    let acknowledged: serde_json::Value = serde_json::from_str(&acknowledged).unwrap();
    let file = acknowledged["position"]
        .as_str()
        .and_then(|p| p.split(':').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        stderr.contains(&file),
        "error names the position {file}: {stderr}"
    );

    // Preflight names every missing setting and privilege with its fix.
    exec(
        &mut conn,
        "SET GLOBAL binlog_row_metadata = 'MINIMAL'; SET GLOBAL binlog_row_image = 'MINIMAL'; \
         CREATE USER weak@'%' IDENTIFIED BY 'weak'; GRANT SELECT ON my_restart.* TO weak@'%'",
    )
    .await;
    let weak = Pipeline::with_source(
        "my_weak",
        &format!(
            "[source]\ntype = \"mysql\"\nurl = \"mysql://weak:weak@127.0.0.1:{}/my_restart\"\n",
            server.port
        ),
        "",
    );
    for command in ["check", "run"] {
        let output = output_within(
            {
                let mut cmd = tidewater();
                cmd.args([command, "--config"]).arg(&weak.config);
                cmd
            },
            60,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(3), "{command}: {text}");
        for fix in [
            "SET GLOBAL binlog_row_metadata = 'FULL'",
            "SET GLOBAL binlog_row_image = 'FULL'",
            "GRANT REPLICATION SLAVE",
            "GRANT BINLOG MONITOR",
        ] {
            assert!(text.contains(fix), "{command} names {fix:?}: {text}");
        }
    }
    exec(
        &mut conn,
        "SET GLOBAL binlog_row_metadata = 'FULL'; SET GLOBAL binlog_row_image = 'FULL'",
    )
    .await;
}

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/mysql-type-mapping.json"
);

/// The MySQL → lake type mapping golden file, generated from a real table's
/// Parquet schema (column, declared MySQL type, Delta type, lake encoding).
/// Regenerate with `TIDEWATER_BLESS=1 cargo test mysql_every_type`.
fn check_golden(table: &std::path::Path) {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let file = std::fs::read_dir(table)
        .expect("table dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .expect("a parquet file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .expect("parquet");
    let schema = reader.schema().clone();
    let mut out = String::from("[\n");
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with("_tw_"))
        .collect();
    for (i, field) in fields.iter().enumerate() {
        let kernel: deltalake::kernel::StructType =
            (&deltalake::arrow::datatypes::Schema::new(vec![field.as_ref().clone()]))
                .try_into_kernel()
                .expect("delta type");
        let delta = kernel.fields().next().expect("one").data_type().to_string();
        let meta = |k: &str| {
            field
                .metadata()
                .get(k)
                .map_or("null".to_string(), |v| format!("{v:?}"))
        };
        out.push_str(&format!(
            "  {{\"column\": {:?}, \"mysql\": {}, \"delta\": {:?}, \"lake_encoding\": {}}}{}\n",
            field.name(),
            meta("tidewater.source_type"),
            delta,
            meta("tidewater.lake_encoding"),
            if i + 1 < fields.len() { "," } else { "" }
        ));
    }
    out.push_str("]\n");
    if std::env::var_os("TIDEWATER_BLESS").is_some() {
        std::fs::write(GOLDEN, &out).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    assert_eq!(
        golden, out,
        "schemas/mysql-type-mapping.json differs from the lake: review, then TIDEWATER_BLESS=1 cargo test mysql_every_type"
    );
}

/// `tidewater snapshot` on MariaDB, a crash in the middle of a snapshot, and
/// `run` continuing from the snapshot's position with nothing missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_snapshot_command_and_crash_during_snapshot() {
    let server = maria();
    let mut conn = server.create_database("my_snap").await;
    exec(
        &mut conn,
        "CREATE TABLE big (id INT PRIMARY KEY, body VARCHAR(200)); \
         INSERT INTO big SELECT seq, REPEAT('b', 150) FROM seq_1_to_300000; \
         CREATE TABLE small (id INT PRIMARY KEY, v INT); INSERT INTO small VALUES (1, 1)",
    )
    .await;
    let mut pipeline = Pipeline::with_source("my_snap", &server.source_toml("my_snap"), "");
    // Killed while copying: the next start throws the partial copy away.
    pipeline.start();
    let marker = pipeline.lake.join("my_snap").join("_tidewater_slot");
    crate::support::eventually("snapshot under way", Duration::from_secs(60), || {
        let marker = marker.clone();
        async move {
            match std::fs::read_to_string(&marker) {
                Ok(text) if text.contains("\"phase\":\"snapshot\"") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    pipeline.kill();
    // A change while nothing runs, then a one-off snapshot.
    exec(&mut conn, "UPDATE small SET v = 2 WHERE id = 1").await;
    let output = output_within(
        {
            let mut cmd = tidewater();
            cmd.args(["snapshot", "--config"]).arg(&pipeline.config);
            cmd
        },
        300,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Changes between the snapshot and `run` are streamed, not lost.
    exec(
        &mut conn,
        "INSERT INTO small VALUES (2, 2); DELETE FROM big WHERE id <= 10",
    )
    .await;
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_snap", "small", "id")
        .await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_snap", "big", "id")
        .await;
    let log = lake::read_log(&pipeline.table_path("my_snap", "big"))
        .await
        .expect("lake log");
    assert_eq!(log.iter().filter(|r| r.op == "r").count(), 300_000);
    assert_eq!(log.iter().filter(|r| r.op == "d").count(), 10);
    assert_eq!(pipeline.terminate(), 0);
}

/// SIGKILL in the middle of a MariaDB snapshot once part of it is committed:
/// the restart resumes in key order after the last committed row (what was
/// committed stays and is not read again), and the binlog from the
/// snapshot's position reconciles what changed meanwhile — the lake equals
/// the source and each untouched row was read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_during_snapshot_resumes_after_committed_rows() {
    mysql_kill_during_snapshot("my_resume", "").await;
}

/// The same kill into Iceberg tables: the key to resume after is read back
/// from the Iceberg change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_during_snapshot_into_iceberg_resumes_after_committed_rows() {
    mysql_kill_during_snapshot("my_resume_ice", "format = \"iceberg\"\n").await;
}

async fn mysql_kill_during_snapshot(db: &str, format: &str) {
    const ROWS: i64 = 200_000;
    let server = maria();
    let mut conn = server.create_database(db).await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE big (id INT PRIMARY KEY, body VARCHAR(200), n INT); \
             INSERT INTO big SELECT seq, REPEAT('b', 150), seq FROM seq_1_to_{ROWS}; \
             ANALYZE TABLE big"
        ),
    )
    .await;
    // Ranges of ~20 000 keys read by two workers, each in a consistent
    // snapshot of its own.
    let mut pipeline = Pipeline::with_source(
        db,
        &format!(
            "{}\nsnapshot_workers = 2\nsnapshot_chunk_rows = 20000\n",
            server.source_toml(db).trim_end()
        ),
        &format!("max_batch_rows = 5000\n{format}"),
    );
    pipeline.start();
    let path = pipeline.table_path(db, "big");
    crate::support::eventually(
        "part of the snapshot committed",
        Duration::from_secs(60),
        || {
            let path = path.clone();
            async move {
                // The commits' own row counts: no data file read, so the
                // kill follows while the snapshot is still incomplete.
                let rows = lake::committed_rows(&path).await?;
                (rows >= 5_000 && rows < ROWS as usize / 2)
                    .then_some(())
                    .ok_or(format!("{rows} rows"))
            }
        },
    )
    .await;
    pipeline.kill();
    assert!(
        pipeline.log(1).contains("reading key ranges in parallel"),
        "{}",
        pipeline.log(1)
    );
    let before = lake::read_log(&path).await.expect("lake log");
    assert!(
        before.len() < ROWS as usize,
        "killed before the snapshot completed"
    );
    // Rows already copied and rows not yet copied change while nothing runs.
    exec(
        &mut conn,
        &format!(
            "UPDATE big SET n = -1 WHERE id <= 3; DELETE FROM big WHERE id = 4; \
             UPDATE big SET n = -2 WHERE id = {last}; DELETE FROM big WHERE id = {gone}; \
             INSERT INTO big VALUES ({new}, 'new', 0)",
            last = ROWS - 1,
            gone = ROWS - 2,
            new = ROWS + 1
        ),
    )
    .await;
    pipeline.start();
    pipeline.wait_equal_mysql(&mut conn, db, "big", "id").await;
    let restart = pipeline.log(pipeline.starts);
    assert!(
        restart.contains("resuming the interrupted snapshot"),
        "{restart}"
    );
    assert!(!restart.contains("starting over"), "{restart}");
    let log = lake::read_log(&path).await.expect("lake log");
    let marks: HashSet<(i64, i64)> = log.iter().map(|r| (r.seq, r.ord)).collect();
    assert_eq!(marks.len(), log.len(), "a (_tw_seq, _tw_ord) repeats");
    assert!(before.iter().all(|r| marks.contains(&(r.seq, r.ord))));
    let mut reads: std::collections::HashMap<String, usize> = Default::default();
    for row in log.iter().filter(|r| r.op == "r") {
        let id = row.values["id"].as_str().expect("id as text").to_string();
        *reads.entry(id).or_default() += 1;
    }
    for id in 5..ROWS - 2 {
        assert_eq!(reads.get(&id.to_string()), Some(&1), "id {id} read once");
    }
    assert_eq!(pipeline.terminate(), 0);
}

/// Issue 20 (4): a MariaDB table copied again on demand while the pipeline
/// streams, by `snapshot --table` beside the running `run` and by an insert
/// into `source.signal_table`: each copy starts with a truncate and the
/// table ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_tables_are_copied_again_on_demand_while_streaming() {
    let server = maria();
    let mut conn = server.create_database("my_backfill").await;
    exec(
        &mut conn,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); \
         CREATE TABLE signal_t (id BIGINT AUTO_INCREMENT PRIMARY KEY, tables TEXT NOT NULL)",
    )
    .await;
    exec(
        &mut conn,
        "INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_2000",
    )
    .await;
    let mut pipeline = Pipeline::with_source(
        "my_backfill",
        &format!(
            "{}signal_table = \"my_backfill.signal_t\"\n",
            server.source_toml("my_backfill")
        ),
        "",
    );
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_backfill", "t", "id")
        .await;
    let path = pipeline.table_path("my_backfill", "t");
    let copies = |want: (usize, usize)| {
        let path = path.clone();
        async move {
            crate::support::eventually("the copies of t", Duration::from_secs(90), || {
                let path = path.clone();
                async move {
                    let log = lake::read_log(&path).await?;
                    let got = (
                        log.iter().filter(|r| r.op == "r").count(),
                        log.iter().filter(|r| r.op == "t").count(),
                    );
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("(snapshot rows, truncates) = {got:?}"))
                    }
                }
            })
            .await
        }
    };
    copies((2000, 0)).await;
    exec(&mut conn, "UPDATE t SET v = 'changed' WHERE id <= 10").await;
    let out = tidewater()
        .args(["snapshot", "--config"])
        .arg(&pipeline.config)
        .args(["--table", "my_backfill.t"])
        .output()
        .expect("tidewater snapshot");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exec(&mut conn, "DELETE FROM t WHERE id = 20").await;
    copies((2000 + 1999, 1)).await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_backfill", "t", "id")
        .await;
    exec(
        &mut conn,
        "INSERT INTO signal_t (tables) VALUES ('my_backfill.t')",
    )
    .await;
    copies((2000 + 1999 * 2, 2)).await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_backfill", "t", "id")
        .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
