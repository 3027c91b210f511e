//! MariaDB schema changes while streaming: the row schemas come from the
//! binlog's table maps, so no DDL is parsed; after each change and the rows
//! written under it, the lake's current state must equal the source.

use mysql_async::prelude::Queryable;

use crate::support::lake::read_log;
use crate::support::mariadb::maria;
use crate::support::Pipeline;

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

    let steps = [
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
    crate::pg_schema::check_history(&pipeline, "my_evolve.t", 8);
}
