//! Data changes a MariaDB session logs as statements (`binlog_format =
//! STATEMENT` or `MIXED`) carry no rows events: the tables they may touch
//! stop — loudly, with the position and the fix — instead of streaming on
//! with a silent gap (a regression test of issue 18: such events were
//! dropped and the lake lost the writes).

use mysql_async::prelude::Queryable;

use crate::support::lake::read_log;
use crate::support::mariadb::maria;
use crate::support::{eventually, table_state, Pipeline};

/// A value that must never reach the daemon's log.
const SECRET: &str = "statement-secret-7731";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_statement_logged_dml_stops_the_tables_it_may_touch() {
    let server = maria();
    let db = "my_stmt";
    let mut conn = server.create_database(db).await;
    conn.query_drop(
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(40));
         CREATE TABLE b (id INT PRIMARY KEY, v VARCHAR(40));
         CREATE TABLE keep (id INT PRIMARY KEY, v VARCHAR(40));
         CREATE TABLE audit (id INT PRIMARY KEY, v VARCHAR(40));
         INSERT INTO a VALUES (1, 'a1');
         INSERT INTO b VALUES (1, 'b1');
         INSERT INTO keep VALUES (1, 'k1');",
    )
    .await
    .unwrap();
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.*\"]\nexclude = [\"{db}.audit\"]\n",
        server.url(db)
    );
    let mut pipeline = Pipeline::with_source(db, &source, "");
    pipeline.start();
    for table in ["a", "b", "keep"] {
        pipeline.wait_equal_mysql(&mut conn, db, table, "id").await;
    }

    // Under ROW logging, CREATE TABLE … SELECT is logged as a plain CREATE
    // and its rows as rows events: no false alarm, the new table streams.
    conn.query_drop(
        "CREATE TABLE made AS SELECT * FROM keep; ALTER TABLE made ADD PRIMARY KEY (id)",
    )
    .await
    .unwrap();
    conn.query_drop("INSERT INTO made VALUES (7, 'm7')")
        .await
        .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "made", "id").await;
    assert!(
        !pipeline.log(1).contains("table stopped"),
        "{}",
        pipeline.log(1)
    );

    // One session logs statements; the others stay on ROW.
    let mut statements = server.conn(db).await;
    statements
        .query_drop("SET SESSION binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    statements
        .query_drop(format!("INSERT INTO a VALUES (2, '{SECRET}')"))
        .await
        .unwrap();
    // Not captured: nothing stops (but the log says it happened).
    statements
        .query_drop(format!("INSERT INTO audit VALUES (1, '{SECRET}')"))
        .await
        .unwrap();
    // A multi-table UPDATE reaches every captured table it names.
    statements
        .query_drop(format!(
            "UPDATE b JOIN audit ON b.id = audit.id SET b.v = '{SECRET}'"
        ))
        .await
        .unwrap();
    // Row-logged changes after it: `keep` goes on, `a` stays stopped.
    conn.query_drop("INSERT INTO keep VALUES (2, 'k2'); INSERT INTO a VALUES (3, 'a3');")
        .await
        .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "keep", "id").await;
    eventually("a and b stop", std::time::Duration::from_secs(60), || {
        let log = pipeline.log(1);
        async move {
            let stopped = log.matches("table stopped").count();
            (stopped >= 2)
                .then_some(())
                .ok_or(format!("{stopped} stopped:\n{log}"))
        }
    })
    .await;
    let log = pipeline.log(1);
    for expected in [
        "statement-logged INSERT at ",
        "statement-logged UPDATE at ",
        "binlog_format = 'ROW'",
        &format!("--table {db}.a"),
        &format!("--table {db}.b"),
        "names no captured table",
    ] {
        assert!(log.contains(expected), "{expected:?} missing:\n{log}");
    }
    assert!(!log.contains(SECRET), "a row value in the log:\n{log}");
    // The stop is visible to operators, and nothing after it landed.
    let report = pipeline.status_json();
    for table in ["a", "b"] {
        assert_eq!(
            table_state(&report, &format!("{db}.{table}")),
            Some("stopped".into()),
            "{report}"
        );
    }
    assert_eq!(
        table_state(&report, &format!("{db}.keep")),
        Some("streaming".into()),
        "{report}"
    );
    for table in ["a", "b"] {
        let log = read_log(&pipeline.table_path(db, table)).await.unwrap();
        assert_eq!(
            log.iter().map(|r| r.op.as_str()).collect::<Vec<_>>(),
            ["r"],
            "only the snapshot row of {table}"
        );
    }
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));

    // A restart keeps them stopped instead of streaming them with a gap.
    pipeline.start();
    conn.query_drop("INSERT INTO keep VALUES (3, 'k3'); INSERT INTO b VALUES (4, 'b4');")
        .await
        .unwrap();
    pipeline.wait_equal_mysql(&mut conn, db, "keep", "id").await;
    assert!(
        pipeline.log(2).contains("table is stopped"),
        "{}",
        pipeline.log(2)
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));

    // The fix: ROW for every session, then a copy of each stopped table.
    drop(statements);
    let out = pipeline.snapshot_tables(&[&format!("{db}.a"), &format!("{db}.b")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pipeline.start();
    conn.query_drop("UPDATE a SET v = 'a2' WHERE id = 2; INSERT INTO b VALUES (5, 'b5');")
        .await
        .unwrap();
    for table in ["a", "b", "keep"] {
        pipeline.wait_equal_mysql(&mut conn, db, table, "id").await;
    }
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(3));
}
