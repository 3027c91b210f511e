//! Logs and error messages never carry row values or secrets: a run with
//! distinctive values (including one that stops the pipeline) and a password
//! in the source url, then a search of everything the daemon printed.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::mariadb::maria;
use crate::support::{eventually, pg, Pipeline};

const SECRET: &str = "Pa55w0rdCanary";
const CANARY: &str = "RowValueCanary";

fn assert_clean(pipeline: &Pipeline) {
    for start in 1..=pipeline.starts {
        let log = pipeline.log(start);
        assert!(!log.is_empty(), "no log written");
        assert!(
            !log.contains(SECRET),
            "the password reached the log:\n{log}"
        );
        assert!(!log.contains(CANARY), "a row value reached the log:\n{log}");
        assert!(
            !log.contains("31337"),
            "a row value reached the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_logs_hold_no_values_or_passwords() {
    let client = pg().create_database("canary_pg").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text, n int, grid int[]);
             INSERT INTO t VALUES (1, '{CANARY}', 31337, '{{1,2}}');"
        ))
        .await
        .unwrap();
    let url = pg()
        .url("canary_pg")
        .replace("postgres@", &format!("postgres:{SECRET}@"));
    let mut pipeline = Pipeline::new("canary_pg", &url, "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    // A value the source cannot map stops its table: the error names the
    // table and column, never the value (also in status and the lake's
    // record of stopped tables).
    client
        .batch_execute(&format!(
            "INSERT INTO t VALUES (2, '{CANARY}', 31337, '{{{{1,2}},{{3,31337}}}}')"
        ))
        .await
        .unwrap();
    table_stopped(&mut pipeline).await;
    let log = pipeline.log(pipeline.starts);
    assert!(log.contains("public.t") && log.contains("grid"), "{log}");
    let record = std::fs::read_to_string(
        pipeline
            .lake
            .join("canary_pg/_tidewater_stopped_tables.json"),
    )
    .expect("stopped tables recorded");
    assert!(
        record.contains("grid") && !record.contains("31337") && !record.contains(CANARY),
        "{record}"
    );
    let mut cmd = crate::support::tidewater();
    cmd.args(["status", "--config"]).arg(&pipeline.config);
    let out = crate::support::output_within(cmd, 60);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("STOPPED") && !text.contains("31337") && !text.contains(SECRET),
        "{text}"
    );
    assert_clean(&pipeline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_logs_hold_no_values_or_passwords() {
    let server = maria();
    let mut conn = server.create_database("canary_my").await;
    conn.query_drop(format!(
        "CREATE USER IF NOT EXISTS canary@'%' IDENTIFIED BY '{SECRET}';
         GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO canary@'%';
         CREATE TABLE t (id INT PRIMARY KEY, note TEXT, n INT, d DATE);
         INSERT INTO t VALUES (1, '{CANARY}', 31337, '2020-01-01');"
    ))
    .await
    .unwrap();
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"mysql://canary:{SECRET}@127.0.0.1:{}/canary_my\"\nzero_dates = \"fail\"\n",
        server.port
    );
    let mut pipeline = Pipeline::with_source("canary_my", &source, "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "canary_my", "t", "id")
        .await;
    // A zero date with zero_dates = "fail" stops the table.
    conn.query_drop(format!(
        "SET SESSION sql_mode = ''; INSERT INTO t VALUES (2, '{CANARY}', 31337, '0000-00-00')"
    ))
    .await
    .unwrap();
    table_stopped(&mut pipeline).await;
    let log = pipeline.log(pipeline.starts);
    assert!(
        log.contains("zero date") && log.contains("canary_my.t"),
        "{log}"
    );
    assert_clean(&pipeline);
}

/// Waits for the log to say a table stopped, then stops the daemon.
async fn table_stopped(pipeline: &mut Pipeline) {
    eventually("the table stop in the log", Duration::from_secs(60), || {
        let log = pipeline.log(pipeline.starts);
        async move {
            log.contains("table stopped")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}
