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

/// A password with every character that ends a url's userinfo early. Its
/// 3-character pieces appear in no message tidewater prints by itself.
const RESERVED_PASSWORD: &str = "Zq7@v/W#k?3j";
/// The same, percent-encoded as the README shows.
const ENCODED_PASSWORD: &str = "Zq7%40v%2FW%23k%3F3j";

/// Fails when `out` holds any piece of 3 or more characters of the password.
fn assert_no_password_piece(out: &str, what: &str) {
    let password = RESERVED_PASSWORD;
    for len in 3..=password.len() {
        for start in 0..=password.len() - len {
            let piece = &password[start..start + len];
            assert!(
                !out.contains(piece),
                "{what}: a piece of the password ({piece:?}) was printed:\n{out}"
            );
        }
    }
}

/// Issue 18 (4): a url whose password holds `@ / # ?` as is stops at
/// config validation — exit 2, naming the key and the percent-encoding —
/// and nothing printed holds a piece of the password (MariaDB used to log
/// part of it as the host on every retry); encoded, the same password
/// connects and the table replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_password_with_reserved_characters_is_never_printed() {
    use crate::support::run_with_source;
    let server = maria();
    let mut conn = server.create_database("pw_my").await;
    conn.query_drop(format!(
        "CREATE USER IF NOT EXISTS tw_pw@'%' IDENTIFIED BY '{RESERVED_PASSWORD}';
         GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO tw_pw@'%';
         CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO t VALUES (1, 'a'), (2, 'b');"
    ))
    .await
    .unwrap();
    let source = |password: &str| {
        format!(
            "[source]\ntype = \"mysql\"\nurl = \"mysql://tw_pw:{password}@127.0.0.1:{}/pw_my\"\n",
            server.port
        )
    };
    for command in ["check", "run", "status"] {
        let (code, out) = run_with_source(command, &source(RESERVED_PASSWORD), &[]);
        assert_eq!(code, 2, "{command}: {out}");
        assert!(
            out.contains("source.url") && out.contains("percent-encode") && out.contains("%40"),
            "{command}: {out}"
        );
        assert_no_password_piece(&out, command);
    }
    let (code, out) = run_with_source("check", &source(ENCODED_PASSWORD), &[]);
    assert_eq!(code, 0, "{out}");
    assert_no_password_piece(&out, "check");
    let mut pipeline = Pipeline::with_source("pw_my", &source(ENCODED_PASSWORD), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "pw_my", "t", "id")
        .await;
    conn.query_drop("INSERT INTO t VALUES (3, 'c'); UPDATE t SET v = 'z' WHERE id = 1")
        .await
        .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, "pw_my", "t", "id")
        .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    assert_no_password_piece(&pipeline.log(1), "run");
}

/// The same on Postgres (a server that checks passwords: scram over TLS),
/// which used to say only "invalid connection string".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_password_with_reserved_characters_is_never_printed() {
    use crate::support::{pg_tls, run_with_source};
    let server = pg_tls();
    let client = server.create_database("pw_pg").await;
    client
        .batch_execute(&format!(
            "CREATE ROLE tw_pw WITH LOGIN REPLICATION PASSWORD '{RESERVED_PASSWORD}';
             CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t VALUES (1, 'a'), (2, 'b');
             ALTER TABLE t OWNER TO tw_pw;
             GRANT CREATE ON DATABASE pw_pg TO tw_pw;"
        ))
        .await
        .unwrap();
    let source = |password: &str| {
        format!(
            "[source]\ntype = \"postgres\"\nurl = \"postgres://tw_pw:{password}@127.0.0.1:{}/pw_pg?sslmode=require\"\n",
            server.port
        )
    };
    for command in ["check", "run", "status"] {
        let (code, out) = run_with_source(command, &source(RESERVED_PASSWORD), &[]);
        assert_eq!(code, 2, "{command}: {out}");
        assert!(
            out.contains("source.url") && out.contains("percent-encode") && out.contains("%40"),
            "{command}: {out}"
        );
        assert_no_password_piece(&out, command);
    }
    // The encoded password is the right one: a wrong one is refused.
    let (code, out) = run_with_source("check", &source("Zq7%40v"), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    let (code, out) = run_with_source("check", &source(ENCODED_PASSWORD), &[]);
    assert_eq!(code, 0, "{out}");
    assert_no_password_piece(&out, "check");
    let mut pipeline = Pipeline::with_source("pw_pg", &source(ENCODED_PASSWORD), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    client
        .batch_execute("INSERT INTO t VALUES (3, 'c'); UPDATE t SET v = 'z' WHERE id = 1")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    assert_no_password_piece(&pipeline.log(1), "run");
}
