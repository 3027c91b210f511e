//! Pipeline records written by the releases before record formats (a
//! one-line slot marker, the lake's and the warehouse's two spellings of
//! the stopped tables, a bare binlog position) are read, upgraded in place
//! and resumed from exactly once: nothing is copied again, a stopped table
//! stays stopped, every change lands once.
//!
//! Each test runs a pipeline, stops it, rewrites its records in the old
//! text (exactly what the earlier release wrote), adds changes, and
//! starts again.

use std::path::Path;
use std::time::Duration;

use crate::support::mariadb::maria;
use crate::support::{eventually, lake, pg, table_state, Pipeline};

/// The stopped-tables file as the lake wrote it before formats.
fn legacy_lake_stopped(schema: &str, name: &str, position: &str) -> String {
    format!(
        "{{\n  \"tables\": [\n    {{\n      \"name\": \"{name}\",\n      \"position\": \"{position}\",\n      \
         \"reason\": \"stopped by hand for the test\",\n      \"schema\": \"{schema}\",\n      \
         \"stopped_at\": 1700000000,\n      \"table\": \"{schema}.{name}\"\n    }}\n  ]\n}}\n"
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The record at `path` is in the current format, `"format":1`.
fn assert_current(path: &Path) {
    let text = read(path);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON after the upgrade ({e}): {text}",
            path.display()
        )
    });
    assert_eq!(value["format"], 1, "{}: {text}", path.display());
}

fn assert_resumed_without_copy(log: &str) {
    assert!(
        log.contains("pipeline records upgraded to the current format"),
        "{log}"
    );
    assert!(!log.contains("starting consistent snapshot"), "{log}");
    assert!(!log.contains("removing a partial snapshot"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_lake_records_of_the_earlier_release_resume_exactly_once() {
    let client = pg().create_database("upgrade_pg").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');
             CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (1, 'x');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("upgrade_pg", &pg().url("upgrade_pg"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    pipeline.wait_equal(&client, "u").await;
    client
        .batch_execute("UPDATE t SET v = 'a2' WHERE id = 1")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));

    // The records as the earlier release wrote them; u was stopped then.
    let dir = pipeline.lake.join("upgrade_pg");
    let marker = dir.join("_tidewater_slot");
    let slot = serde_json::from_str::<serde_json::Value>(&read(&marker)).unwrap()["slot"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&marker, format!("stream {slot}\n")).unwrap();
    let stopped = dir.join("_tidewater_stopped_tables.json");
    std::fs::write(&stopped, legacy_lake_stopped("public", "u", "0/1")).unwrap();

    client
        .batch_execute(
            "INSERT INTO t VALUES (3, 'c'); DELETE FROM t WHERE id = 2;
             INSERT INTO u VALUES (2, 'y');",
        )
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let log = pipeline.log(pipeline.starts);
    assert_resumed_without_copy(&log);
    let t_log = lake::read_log(&pipeline.table_path("public", "t"))
        .await
        .unwrap();
    lake::assert_each_change_once(&t_log);
    // Two snapshot rows, one update, one insert, one delete.
    assert_eq!(t_log.len(), 5, "each change of t once");
    // u stays stopped: its change is not in the lake, status says so.
    let u_log = lake::read_log(&pipeline.table_path("public", "u"))
        .await
        .unwrap();
    assert_eq!(u_log.len(), 1, "the stopped table got nothing");
    let status = pipeline.status_json();
    assert_eq!(
        table_state(&status, "public.u"),
        Some("stopped".into()),
        "{status}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
    assert_current(&marker);
    assert_current(&stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_lake_records_of_the_earlier_release_resume_exactly_once() {
    let server = maria();
    let mut conn = server.create_database("upgrade_my").await;
    use mysql_async::prelude::Queryable;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source("upgrade_my", &server.source_toml("upgrade_my"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "upgrade_my", "t", "id")
        .await;
    conn.query_drop("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, "upgrade_my", "t", "id")
        .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));

    let dir = pipeline.lake.join("upgrade_my");
    let marker = dir.join("_tidewater_slot");
    std::fs::write(&marker, "stream binlog\n").unwrap();
    let position = dir.join("_tidewater_source_position");
    let acknowledged = serde_json::from_str::<serde_json::Value>(&read(&position)).unwrap()
        ["position"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&position, format!("{acknowledged}\n")).unwrap();

    conn.query_drop("UPDATE t SET v = 'a2' WHERE id = 1; INSERT INTO t VALUES (3, 'c')")
        .await
        .unwrap();
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "upgrade_my", "t", "id")
        .await;
    assert_resumed_without_copy(&pipeline.log(pipeline.starts));
    let t_log = lake::read_log(&pipeline.table_path("upgrade_my", "t"))
        .await
        .unwrap();
    lake::assert_each_change_once(&t_log);
    // One snapshot row, then an insert, an update and an insert.
    assert_eq!(t_log.len(), 4, "each change once");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
    assert_current(&marker);
    assert_current(&position);
}

#[tokio::test(flavor = "multi_thread")]
async fn warehouse_rows_of_the_earlier_release_resume_exactly_once() {
    let source = pg().create_database("upgrade_wh_src").await;
    let warehouse = pg().create_database("upgrade_wh_dst").await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');
             CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (1, 'x');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "upgradewh",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("upgrade_wh_src")
        ),
        &pg().url("upgrade_wh_dst"),
        "changelog = true\n",
    );
    pipeline.start();
    let rows = |table: &'static str| {
        let warehouse = &warehouse;
        async move {
            warehouse
                .query(
                    &format!("SELECT id, v FROM public.{table} ORDER BY id"),
                    &[],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| e.to_string())
        }
    };
    eventually(
        "the snapshot in the warehouse",
        Duration::from_secs(60),
        || async {
            match (rows("t").await, rows("u").await) {
                (Ok(t), Ok(u)) if t.len() == 1 && u.len() == 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));

    let value = |key: &'static str| {
        let warehouse = &warehouse;
        async move {
            warehouse
                .query_one(
                    "SELECT value FROM tidewater.pipeline_state WHERE pipeline = 'upgradewh' AND key = $1",
                    &[&key],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let slot = serde_json::from_str::<serde_json::Value>(&value("slot_marker").await).unwrap()
        ["slot"]
        .as_str()
        .unwrap()
        .to_string();
    let set = |key: &'static str, text: String| {
        let warehouse = &warehouse;
        async move {
            warehouse
                .execute(
                    "INSERT INTO tidewater.pipeline_state (pipeline, key, value) VALUES ('upgradewh', $1, $2)
                     ON CONFLICT (pipeline, key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key, &text],
                )
                .await
                .unwrap();
        }
    };
    set("slot_marker", format!("stream:{slot}")).await;
    set(
        "stopped_tables",
        "[{\"position\":\"0/1\",\"reason\":\"stopped by hand for the test\",\"schema\":\"public\",\
         \"stopped_at\":1700000000,\"table\":\"u\"}]"
            .into(),
    )
    .await;

    source
        .batch_execute(
            "INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'a2' WHERE id = 1;
             INSERT INTO u VALUES (2, 'y');",
        )
        .await
        .unwrap();
    pipeline.start();
    eventually(
        "t's changes in the warehouse",
        Duration::from_secs(60),
        || async {
            match rows("t").await {
                Ok(t) if t == vec![(1, "a2".to_string()), (2, "b".to_string())] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    pipeline.assert_running();
    assert_resumed_without_copy(&pipeline.log(pipeline.starts));
    // Each change once in the change log: the snapshot row, two changes.
    let changes: i64 = warehouse
        .query_one("SELECT count(*) FROM public.t__changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changes, 3, "each change of t once");
    assert_eq!(
        rows("u").await.unwrap().len(),
        1,
        "the stopped table got nothing"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
    for key in ["slot_marker", "stopped_tables"] {
        let text = value(key).await;
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["format"], 1, "{key}: {text}");
    }
}
