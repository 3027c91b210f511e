//! MariaDB schema changes while streaming: the row schemas come from the
//! binlog's table maps (DDL text only feeds the schema history and the
//! decision to copy a table again); after each change and the rows written
//! under it, the lake's current state must equal the source.

use mysql_async::prelude::Queryable;

use crate::support::lake::read_log;
use crate::support::mariadb::maria;
use crate::support::Pipeline;

/// The schema changes of both tests, each followed by rows written under it.
const STEPS: [&str; 8] = [
    "ALTER TABLE t ADD COLUMN c1 INT;
     INSERT INTO t (id, a, d, s, n, c1) VALUES (3, 30, 3.75, 'three', 'z', 33);
     UPDATE t SET c1 = 11 WHERE id = 1;",
    "ALTER TABLE t DROP COLUMN gone;
     INSERT INTO t (id, a, d, s, n) VALUES (4, 40, 4.5, 'four', 'w');",
    "ALTER TABLE t MODIFY a BIGINT;
     INSERT INTO t (id, a, d, s, n) VALUES (5, 9000000000, 5.5, 'five', 'v');
     UPDATE t SET a = a * 1000000 WHERE id = 2;",
    "ALTER TABLE t MODIFY d DECIMAL(12,4);
     INSERT INTO t (id, a, d, s, n) VALUES (6, 6, 12345678.1234, 'six', 'u');",
    "ALTER TABLE t MODIFY s VARCHAR(200);
     INSERT INTO t (id, a, d, s, n) VALUES (7, 7, 7, REPEAT('long', 40), 't');",
    "ALTER TABLE t MODIFY n VARCHAR(20) NULL;
     INSERT INTO t (id, a, d, s, n) VALUES (8, 8, 8, 'eight', NULL);",
    // Consecutive transactions around a change, and a column added in
    // the middle of the row.
    "INSERT INTO t (id, a, d, s, n) VALUES (9, 9, 9, 'nine', 'before');
     ALTER TABLE t ADD COLUMN c3 TINYINT(1) AFTER a;
     INSERT INTO t (id, a, c3, d, s, n) VALUES (10, 10, 1, 10, 'ten', 'after');
     UPDATE t SET c3 = 0 WHERE id = 9;",
    "DELETE FROM t WHERE a > 2147483647;
     ALTER TABLE t MODIFY a INT;
     INSERT INTO t (id, a, d, s, n) VALUES (11, 11, 11, 'eleven', 's');
     DELETE FROM t WHERE id = 4;",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_column_changes_while_streaming_land_in_the_lake() {
    let server = maria();
    let mut conn = server.create_database("my_evolve").await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, a INT, d DECIMAL(5,2), s VARCHAR(10),
                         n VARCHAR(20) NOT NULL, gone TEXT);
         INSERT INTO t VALUES (1, 10, 1.25, 'one', 'x', 'g1'), (2, 20, 2.5, 'two', 'y', 'g2');",
    )
    .await
    .unwrap();
    let mut pipeline = Pipeline::with_source("my_evolve", &server.source_toml("my_evolve"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_evolve", "t", "id")
        .await;

    let steps = STEPS;
    for step in steps {
        conn.query_drop(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        pipeline
            .wait_equal_mysql(&mut conn, "my_evolve", "t", "id")
            .await;
    }
    let log = read_log(&pipeline.table_path("my_evolve", "t"))
        .await
        .unwrap();
    assert!(log.len() > 11);
    let text = pipeline.log(1);
    assert!(
        text.contains("lake_column=a__v2") && text.contains("lake_column=d__v2"),
        "{text}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let history = crate::pg_schema::check_history(&pipeline, "my_evolve.t", 8);
    // Each later version carries the statement that made it, from the binlog.
    let versions = history["versions"].as_array().unwrap();
    assert!(versions[0]["ddl"].is_null(), "{history:#}");
    let ddl = |i: usize| versions[i]["ddl"].as_str().unwrap_or_default().to_string();
    assert!(ddl(1).contains("ADD COLUMN c1"), "{history:#}");
    assert!(ddl(2).contains("DROP COLUMN gone"), "{history:#}");
    assert!(ddl(3).contains("MODIFY a BIGINT"), "{history:#}");
    assert!(
        versions[1..].iter().all(|v| v["ddl"].is_string()),
        "{history:#}"
    );
}

/// Debezium's DDL parser corpus (`mysql-test-statements.ddl`), every
/// statement MariaDB accepts, replayed into a captured database while the
/// pipeline streams — plus DDL about things tidewater does not capture
/// (users, grants, procedures, views, another database). Nothing stops; a
/// row then written into every table the corpus left lands equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_ddl_corpus_replays_against_a_streaming_pipeline() {
    use crate::support::lake::WHOLE_ROW;
    let server = maria();
    let mut conn = server.create_database("cf_ddl").await;
    conn.query_drop(
        "CREATE TABLE sentinel (id INT PRIMARY KEY, v INT); INSERT INTO sentinel VALUES (1, 1)",
    )
    .await
    .unwrap();
    let mut other = server.create_database("not_captured").await;
    let mut pipeline = Pipeline::with_source(
        "cf_ddl",
        &format!(
            "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"cf_ddl.*\"]\n",
            server.url("cf_ddl")
        ),
        "",
    );
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "cf_ddl", "sentinel", "id")
        .await;

    let text = std::fs::read_to_string(
        crate::mysql_conformance::corpus().join("mysql-test-statements.ddl"),
    )
    .expect("ddl corpus");
    let (mut accepted, mut refused) = (0, 0);
    for statement in crate::mysql_conformance::statements(&text) {
        match conn.query_drop(&statement).await {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("DDL corpus: MariaDB accepted {accepted}, refused {refused}");
    assert!(accepted >= 20, "accepted {accepted}");
    for statement in [
        "CREATE USER IF NOT EXISTS 'tw_other'@'localhost' IDENTIFIED BY 'x'",
        "GRANT SELECT ON not_captured.* TO 'tw_other'@'localhost'",
        "CREATE TABLE not_captured.elsewhere (id INT PRIMARY KEY)",
        "INSERT INTO not_captured.elsewhere VALUES (1)",
        "ALTER TABLE not_captured.elsewhere ADD COLUMN x TEXT",
        "CREATE OR REPLACE VIEW cf_ddl.v_sentinel AS SELECT id FROM cf_ddl.sentinel",
        "CREATE PROCEDURE cf_ddl.p_noop() BEGIN SELECT 1; END",
        "DROP PROCEDURE cf_ddl.p_noop",
        "REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'tw_other'@'localhost'",
        "DROP USER 'tw_other'@'localhost'",
        "DROP DATABASE not_captured",
    ] {
        other
            .query_drop(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    pipeline.assert_running();

    // One row (every column at its implicit default) into each table left.
    conn.query_drop("SET SESSION sql_mode = ''").await.unwrap();
    let tables: Vec<String> = conn
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'cf_ddl' AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME <> 'sentinel' \
             ORDER BY 1",
            (),
        )
        .await
        .unwrap();
    let mut filled = Vec::new();
    for table in &tables {
        if conn
            .query_drop(format!("INSERT INTO `{table}` () VALUES ()"))
            .await
            .is_ok()
        {
            filled.push(table.clone());
        }
    }
    conn.query_drop("UPDATE sentinel SET v = 2").await.unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, "cf_ddl", "sentinel", "id")
        .await;
    for table in &filled {
        let key_columns: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = 'cf_ddl' AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'",
                (table,),
            )
            .await
            .unwrap();
        let key = match key_columns.as_slice() {
            [one] => one.clone(),
            _ => WHOLE_ROW.to_string(),
        };
        pipeline
            .wait_equal_mysql(&mut conn, "cf_ddl", table, &key)
            .await;
    }
    eprintln!("{} tables compared after the replay", filled.len());
    assert!(filled.len() >= 5, "{filled:?}");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// The same changes back to back while the daemon is killed (SIGKILL) at
/// random moments in between: every restart resumes with the right schema
/// for every row (table maps are re-read from the resumed binlog position),
/// and the lake ends equal to the source with no change twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_between_schema_changes_resumes_with_the_right_schema() {
    use rand::Rng;
    let mut rng = crate::support::crash_rng("schema crash test");
    let server = maria();
    let mut conn = server.create_database("my_evolvekill").await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, a INT, d DECIMAL(5,2), s VARCHAR(10),
                         n VARCHAR(20) NOT NULL, gone TEXT);
         INSERT INTO t VALUES (1, 10, 1.25, 'one', 'x', 'g1'), (2, 20, 2.5, 'two', 'y', 'g2');",
    )
    .await
    .unwrap();
    let mut pipeline = Pipeline::with_source(
        "my_evolvekill",
        &server.source_toml("my_evolvekill"),
        "max_batch_rows = 2\n",
    );
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_evolvekill", "t", "id")
        .await;
    for (i, step) in STEPS.iter().enumerate() {
        conn.query_drop(*step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        if i % 2 == 1 {
            // A random kill point (replayable from the seed): the thing
            // under test, not a wait.
            tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(0..1500))).await;
            pipeline.kill();
            pipeline.start();
        }
    }
    pipeline
        .wait_equal_mysql(&mut conn, "my_evolvekill", "t", "id")
        .await;
    let log = read_log(&pipeline.table_path("my_evolvekill", "t"))
        .await
        .unwrap();
    crate::support::lake::assert_each_change_once(&log);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}

/// DDL that gives rows no binlog event touches new values — a renamed
/// column, a column added with a default — and a table renamed into the
/// patterns make tidewater copy the table while the others stream (the
/// binlog connection is closed for the copy and resumed where it stood):
/// the current state equals the source for every row. `snapshot --table`
/// copies one table again on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_renames_defaults_and_renamed_tables_keep_every_row_equal() {
    let server = maria();
    let db = "my_recopy";
    let mut conn = server.create_database(db).await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(20));
         INSERT INTO t SELECT seq, seq, CONCAT('b', seq) FROM seq_1_to_300;
         CREATE TABLE other (id INT PRIMARY KEY, v TEXT);",
    )
    .await
    .unwrap();
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.*\"]\nexclude = [\"{db}.staging_*\"]\n",
        server.url(db)
    );
    let mut pipeline = Pipeline::with_source(db, &source, "");
    pipeline.start();
    pipeline.wait_equal_mysql(&mut conn, db, "t", "id").await;
    for step in [
        "ALTER TABLE t RENAME COLUMN b TO title;
         UPDATE t SET a = a + 1000 WHERE id <= 5;
         INSERT INTO other VALUES (1, 'during');",
        "ALTER TABLE t ADD COLUMN flag TINYINT NOT NULL DEFAULT 1;
         INSERT INTO t (id, a, title, flag) VALUES (1000, 1, 'new', 0);",
        "ALTER TABLE t ADD COLUMN later INT;
         UPDATE t SET later = 7 WHERE id = 1;",
    ] {
        conn.query_drop(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        pipeline.wait_equal_mysql(&mut conn, db, "t", "id").await;
        pipeline
            .wait_equal_mysql(&mut conn, db, "other", "id")
            .await;
    }
    // Renamed into the patterns from an excluded name.
    conn.query_drop(
        "CREATE TABLE staging_orders (id INT PRIMARY KEY, v TEXT);
         INSERT INTO staging_orders SELECT seq, CONCAT('s', seq) FROM seq_1_to_40;",
    )
    .await
    .unwrap();
    conn.query_drop(
        "RENAME TABLE staging_orders TO orders;
         UPDATE orders SET v = 'renamed' WHERE id < 5;",
    )
    .await
    .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, db, "orders", "id")
        .await;
    conn.query_drop("INSERT INTO other VALUES (2, 'after')")
        .await
        .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, db, "other", "id")
        .await;
    // Created while streaming: captured from its first row (no copy needed);
    // dropped: its lake table keeps the log, the rest goes on.
    conn.query_drop(
        "CREATE TABLE fresh (id INT PRIMARY KEY, v TEXT);
         INSERT INTO fresh VALUES (1, 'x'), (2, 'y');
         UPDATE fresh SET v = 'z' WHERE id = 2;
         CREATE TABLE doomed (id INT PRIMARY KEY);
         INSERT INTO doomed VALUES (1);",
    )
    .await
    .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, db, "fresh", "id")
        .await;
    pipeline
        .wait_equal_mysql(&mut conn, db, "doomed", "id")
        .await;
    conn.query_drop("DROP TABLE doomed; INSERT INTO fresh VALUES (3, 'after the drop');")
        .await
        .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, db, "fresh", "id")
        .await;
    assert_eq!(
        read_log(&pipeline.table_path(db, "doomed"))
            .await
            .unwrap()
            .len(),
        1
    );
    let fresh = read_log(&pipeline.table_path(db, "fresh")).await.unwrap();
    assert!(
        fresh.iter().all(|r| r.op != "r"),
        "a new table is not copied: {fresh:?}"
    );
    let log = pipeline.log(1);
    assert!(log.contains("a column was renamed"), "{log}");
    assert!(log.contains("a column was added with a default"), "{log}");
    assert!(log.contains("renamed into source.tables"), "{log}");
    let rows = read_log(&pipeline.table_path(db, "t")).await.unwrap();
    assert_eq!(
        rows.iter().filter(|r| r.op == "t").count(),
        2,
        "one copy per change that needs it"
    );
    let orders = read_log(&pipeline.table_path(db, "orders")).await.unwrap();
    assert_eq!(orders.iter().filter(|r| r.op == "r").count(), 40);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));

    // One table again on demand; the others keep their logs.
    let other_before = read_log(&pipeline.table_path(db, "other"))
        .await
        .unwrap()
        .len();
    let out = pipeline.snapshot_tables(&[&format!("{db}.t")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = read_log(&pipeline.table_path(db, "t")).await.unwrap();
    assert_eq!(rows.iter().filter(|r| r.op == "t").count(), 3);
    pipeline.start();
    conn.query_drop(
        "UPDATE t SET title = 'streamed' WHERE id = 9; INSERT INTO other VALUES (3, 'x');",
    )
    .await
    .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "t", "id").await;
    pipeline
        .wait_equal_mysql(&mut conn, db, "other", "id")
        .await;
    let other = read_log(&pipeline.table_path(db, "other")).await.unwrap();
    assert_eq!(other.len(), other_before + 1, "other is not copied again");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// A row tidewater cannot follow (a zero date under `zero_dates = "fail"`)
/// stops only its table on MariaDB too; the stop survives a restart; after
/// the fix `snapshot --table` copies the table again and it streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_table_that_cannot_be_followed_stops_alone() {
    let server = maria();
    let db = "my_stopone";
    let mut conn = server.create_database(db).await;
    conn.query_drop(
        "CREATE TABLE good (id INT PRIMARY KEY, v TEXT);
         CREATE TABLE bad (id INT PRIMARY KEY, d DATE);
         INSERT INTO good VALUES (1, 'a');
         INSERT INTO bad VALUES (1, '2020-01-01');",
    )
    .await
    .unwrap();
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.*\"]\nzero_dates = \"fail\"\n",
        server.url(db)
    );
    let mut pipeline = Pipeline::with_source(db, &source, "");
    pipeline.start();
    pipeline.wait_equal_mysql(&mut conn, db, "good", "id").await;
    pipeline.wait_equal_mysql(&mut conn, db, "bad", "id").await;
    conn.query_drop(
        "SET SESSION sql_mode = '';
         BEGIN;
         INSERT INTO good VALUES (2, 'b');
         INSERT INTO bad VALUES (2, '0000-00-00');
         INSERT INTO good VALUES (3, 'c');
         COMMIT;
         INSERT INTO bad VALUES (3, '2021-01-01');
         INSERT INTO good VALUES (4, 'd');",
    )
    .await
    .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "good", "id").await;
    assert!(
        pipeline.log(1).contains("table stopped"),
        "{}",
        pipeline.log(1)
    );
    assert_eq!(
        log_len(&pipeline, db, "bad").await,
        1,
        "nothing of bad after its stop"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    pipeline.start();
    conn.query_drop("INSERT INTO good VALUES (5, 'e'); INSERT INTO bad VALUES (4, '2022-02-02');")
        .await
        .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "good", "id").await;
    assert!(
        pipeline.log(2).contains("table is stopped"),
        "{}",
        pipeline.log(2)
    );
    assert_eq!(
        log_len(&pipeline, db, "bad").await,
        1,
        "nothing of bad after its stop"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));

    conn.query_drop("UPDATE bad SET d = '2020-02-02' WHERE id = 2")
        .await
        .unwrap();
    let out = pipeline.snapshot_tables(&[&format!("{db}.bad")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pipeline.start();
    conn.query_drop(
        "UPDATE bad SET d = '2023-03-03' WHERE id = 3; INSERT INTO good VALUES (6, 'f');",
    )
    .await
    .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "bad", "id").await;
    pipeline.wait_equal_mysql(&mut conn, db, "good", "id").await;
    assert!(
        !pipeline.log(3).contains("table is stopped"),
        "{}",
        pipeline.log(3)
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(3));
}

async fn log_len(pipeline: &Pipeline, db: &str, table: &str) -> usize {
    read_log(&pipeline.table_path(db, table))
        .await
        .unwrap()
        .len()
}

/// Issue 18 (2): this sequence of schema changes, run back to back while the
/// pipeline streams, made the daemon exit 1 ("Fail to merge field 'id' due to
/// conflicting metadata … int(11) does not match int"): the catalog and the
/// binlog spelt the same column's source type two ways, and the lake refused
/// to merge the two. After it the daemon still runs, the lake's current state
/// equals the source row by row, and every lake column carried one spelling
/// of its source type in every version of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_schema_change_sequence_keeps_the_daemon_running_and_one_type_spelling() {
    let server = maria();
    let db = "my_respell";
    let mut conn = server.create_database(db).await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(10), c DECIMAL(5,2));
         INSERT INTO t SELECT seq, seq * 10, CONCAT('b', seq), seq + 0.25 FROM seq_1_to_20;
         CREATE TABLE w (id INT UNSIGNED PRIMARY KEY, ti TINYINT(1), y YEAR, f FLOAT(7,3),
                         dc DECIMAL(7,3) UNSIGNED, ch CHAR(4), cl CHAR(5) CHARACTER SET latin1,
                         vc VARCHAR(30), vb VARBINARY(8), bn BINARY(3), e ENUM('x','y''s'),
                         s SET('p','q'), dt DATETIME(3), tx TEXT) CHARACTER SET utf8mb4;
         INSERT INTO w VALUES (1, 1, 2024, 1.5, 2.125, 'ab', 'cd', 'ef', x'0102', 'g', 'x',
                               'p,q', '2024-01-02 03:04:05.678', 'text');",
    )
    .await
    .unwrap();
    let mut pipeline = Pipeline::with_source(db, &server.source_toml(db), "");
    pipeline.start();
    pipeline.wait_equal_mysql(&mut conn, db, "t", "id").await;
    pipeline.wait_equal_mysql(&mut conn, db, "w", "id").await;

    // While the daemon is down, a row of w and then a column: the restarted
    // daemon reads that row's table map when the catalog no longer matches
    // it, so its schema comes from the binlog alone.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    conn.query_drop(
        "INSERT INTO w VALUES (2, 0, 1999, -2.25, 0.5, 'ij', 'kl', 'mn', x'ff', 'o', 'y''s',
                               'q', '1999-12-31 23:59:59.999', 'more');
         ALTER TABLE w ADD COLUMN z INT;
         INSERT INTO w VALUES (3, 1, 2000, 3, 1, 'p', 'q', 'r', x'00', 's', 'x', '', NULL, NULL, 7);",
    )
    .await
    .unwrap();
    pipeline.start();
    pipeline.wait_equal_mysql(&mut conn, db, "w", "id").await;

    // The sequence of the issue, back to back while the daemon streams.
    conn.query_drop(
        "ALTER TABLE t ADD COLUMN d VARCHAR(20) DEFAULT 'dflt';
         UPDATE t SET a = a + 1 WHERE id <= 5;
         ALTER TABLE t CHANGE b bb VARCHAR(200);
         INSERT INTO t (id, a, bb, c, d) VALUES (100, 1000, REPEAT('x', 150), 1.5, 'new');
         ALTER TABLE t MODIFY a BIGINT;
         UPDATE t SET a = a * 10000000000 WHERE id IN (2, 100);
         ALTER TABLE t MODIFY c DECIMAL(12,4);
         UPDATE t SET c = 12345678.1234 WHERE id = 3;
         ALTER TABLE t DROP COLUMN d;
         DELETE FROM t WHERE id IN (4, 5);",
    )
    .await
    .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "t", "id").await;
    pipeline.wait_equal_mysql(&mut conn, db, "w", "id").await;
    // A row written after the last change lands too: the table did not stop.
    conn.query_drop("INSERT INTO t (id, a, bb, c) VALUES (101, 1, 'after', 2.5)")
        .await
        .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "t", "id").await;
    pipeline.assert_running();
    let text = pipeline.log(2);
    assert!(!text.contains("table stopped"), "{text}");

    let spellings = source_type_spellings(&pipeline.table_path(db, "t"));
    let expected = [
        ("id", "int"),
        ("a", "int"),
        ("a__v2", "bigint"),
        ("b", "varchar(10)"),
        ("bb", "varchar(200)"),
        ("c", "decimal(5,2)"),
        ("c__v2", "decimal(12,4)"),
    ];
    // `d` lands only when a change is read before the copy after its
    // DROP; whenever it does, in one spelling.
    if let Some(d) = spellings.get("d") {
        assert_eq!(
            d.iter().collect::<Vec<_>>(),
            ["varchar(20)"],
            "{spellings:?}"
        );
    }
    for (column, spelling) in expected {
        assert_eq!(
            spellings
                .get(column)
                .map(|s| s.iter().cloned().collect::<Vec<_>>()),
            Some(vec![spelling.to_string()]),
            "{column}: every version of the table spells its source type one way: {spellings:?}"
        );
    }
    // The catalog's spelling (snapshot) and the table map's (the stream, after
    // a later DDL) are one, type by type.
    let spellings = source_type_spellings(&pipeline.table_path(db, "w"));
    let expected = [
        ("id", "int unsigned"),
        ("ti", "tinyint"),
        ("y", "year"),
        ("f", "float"),
        ("dc", "decimal(7,3) unsigned"),
        ("ch", "char(4)"),
        ("cl", "char(5)"),
        ("vc", "varchar(30)"),
        ("vb", "varbinary(8)"),
        ("bn", "binary(3)"),
        ("e", "enum('x','y''s')"),
        ("s", "set('p','q')"),
        ("dt", "datetime(3)"),
        ("tx", "text"),
        ("z", "int"),
    ];
    for (column, spelling) in expected {
        assert_eq!(
            spellings
                .get(column)
                .map(|s| s.iter().cloned().collect::<Vec<_>>()),
            Some(vec![spelling.to_string()]),
            "{column}: the snapshot and the stream spell its source type one way: {spellings:?}"
        );
    }
    assert!(
        text.lines().any(
            |l| l.contains("the catalog no longer matches this binlog table map")
                && l.contains("table=my_respell.w")
        ),
        "w's row written before its ALTER was read with the binlog's spelling: {text}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// Every `tidewater.source_type` each column of a Delta table carried, over
/// every schema its log recorded.
fn source_type_spellings(
    table: &std::path::Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut spellings: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for entry in std::fs::read_dir(table.join("_delta_log")).expect("delta log") {
        let path = entry.expect("log entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("log file").lines() {
            let action: serde_json::Value = serde_json::from_str(line).expect("log action");
            let Some(schema) = action["metaData"]["schemaString"].as_str() else {
                continue;
            };
            let schema: serde_json::Value = serde_json::from_str(schema).expect("schema");
            for field in schema["fields"].as_array().expect("fields") {
                if let Some(spelling) = field["metadata"]["tidewater.source_type"].as_str() {
                    spellings
                        .entry(field["name"].as_str().expect("name").to_string())
                        .or_default()
                        .insert(spelling.to_string());
                }
            }
        }
    }
    spellings
}
