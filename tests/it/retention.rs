//! `changelog_retention`: change-log rows older than the retention go, each
//! key's latest row stays (a deleted key keeps its delete), rows inside the
//! window stay, a table whose retention is `forever` keeps everything, and
//! the current state — from the log and in the current-state table — is
//! the source's throughout.

use std::time::{Duration, Instant};

use crate::support::lake::{self, LogRow};
use crate::support::{eventually, pg, Pipeline};

/// Log rows per key of a change log.
fn rows_per_key(log: &[LogRow]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for row in log {
        let id = row.values["id"].as_str().unwrap_or_default().to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_superseded_change_log_rows_go_and_the_current_state_stays() {
    // Long enough that the whole history is seen before any of it goes.
    const RETENTION_S: u64 = 15;
    let client = pg().create_database("retain").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int);
             CREATE TABLE keep_all (id int PRIMARY KEY, v int);
             INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g;
             INSERT INTO keep_all SELECT g, 0 FROM generate_series(1, 5) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "retain",
        &pg().url("retain"),
        &format!(
            "current_state = true\ncurrent_state_interval_ms = 300\n\
             changelog_retention = \"{RETENTION_S}s\"\nchangelog_retention_interval_ms = 1000\n\
             [sink.changelog_retention_tables]\n\"public.keep_*\" = \"forever\"\n"
        ),
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    // History: every key of t changed three times, one deleted; keep_all
    // likewise.
    for round in 1..=3 {
        client
            .batch_execute(&format!(
                "UPDATE t SET v = {round}; UPDATE keep_all SET v = {round};"
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute("DELETE FROM t WHERE id = 3")
        .await
        .unwrap();
    let t = pipeline.table_path("public", "t");
    let keep_all = pipeline.table_path("public", "keep_all");
    pipeline.wait_equal(&client, "t").await;
    pipeline.wait_equal(&client, "keep_all").await;
    let history = lake::read_log(&t).await.unwrap();
    assert_eq!(history.len(), 20 * 4 + 1, "the whole history landed");

    // Past the retention: one row per key is left (id 3's delete).
    eventually(
        "superseded rows past the retention dropped",
        Duration::from_secs(90),
        || {
            let t = t.clone();
            async move {
                let log = lake::read_log(&t).await?;
                let counts = rows_per_key(&log);
                (counts.len() == 20 && counts.values().all(|n| *n == 1))
                    .then_some(())
                    .ok_or(format!("{} rows: {counts:?}", log.len()))
            }
        },
    )
    .await;
    let log = lake::read_log(&t).await.unwrap();
    let deleted = log
        .iter()
        .find(|r| r.values["id"] == "3")
        .expect("id 3 keeps a row");
    assert_eq!(deleted.op, "d", "a deleted key keeps its delete");
    lake::assert_each_change_once(&log);
    pipeline.wait_equal(&client, "t").await;
    // The current-state table says the same.
    let current = pipeline.lake.join("retain.current/public/t");
    eventually("the current-state table", Duration::from_secs(60), || {
        let (current, client) = (current.clone(), &client);
        async move {
            let rows = lake::read_current(&current).await?;
            let state: std::collections::BTreeMap<_, _> = rows
                .into_iter()
                .map(|r| (r.values["id"].to_string(), r.values))
                .collect();
            let source = lake::source_state(client, "public.t", "id").await;
            lake::compare(&source, &state)
        }
    })
    .await;
    // A table kept for ever keeps its whole history.
    assert_eq!(lake::read_log(&keep_all).await.unwrap().len(), 5 * 4);

    // Inside the window nothing goes: two changes of key 5 land and stay
    // until they are older than the retention.
    client
        .batch_execute("UPDATE t SET v = 100 WHERE id = 5; UPDATE t SET v = 101 WHERE id = 5;")
        .await
        .unwrap();
    let landed = Instant::now();
    eventually("the new changes", Duration::from_secs(30), || {
        let t = t.clone();
        async move {
            let log = lake::read_log(&t).await?;
            let n = rows_per_key(&log)["5"];
            (n == 3).then_some(()).ok_or(format!("{n} rows of key 5"))
        }
    })
    .await;
    if landed.elapsed() < Duration::from_secs(RETENTION_S - 2) {
        // Read well inside the window: still all three rows of key 5.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let log = lake::read_log(&t).await.unwrap();
        assert_eq!(rows_per_key(&log)["5"], 3, "rows inside the window stay");
    }
    eventually(
        "key 5's older rows dropped",
        Duration::from_secs(90),
        || {
            let t = t.clone();
            async move {
                let log = lake::read_log(&t).await?;
                let n = rows_per_key(&log)["5"];
                (n == 1).then_some(()).ok_or(format!("{n} rows of key 5"))
            }
        },
    )
    .await;
    pipeline.wait_equal(&client, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_change_logs_keep_each_keys_latest_row_past_the_retention() {
    let client = pg().create_database("retain_whs").await;
    let warehouse = pg().create_database("retain_whd").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int);
             CREATE TABLE keep_all (id int PRIMARY KEY, v int);
             INSERT INTO t SELECT g, 0 FROM generate_series(1, 10) g;
             INSERT INTO keep_all SELECT g, 0 FROM generate_series(1, 4) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "retain_wh",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("retain_whs")
        ),
        &pg().url("retain_whd"),
        "changelog = true\nchangelog_retention = \"15s\"\nchangelog_retention_interval_ms = 1000\n\
         [sink.changelog_retention_tables]\n\"public.keep_*\" = \"forever\"\n",
    );
    pipeline.start();
    let count = |sql: &'static str| {
        let warehouse = &warehouse;
        async move {
            warehouse
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| e.to_string())
        }
    };
    eventually("the snapshot", Duration::from_secs(60), || async {
        let n = count("SELECT count(*) FROM public.keep_all__changes").await?;
        let m = count("SELECT count(*) FROM public.t__changes").await?;
        (n == 4 && m == 10)
            .then_some(())
            .ok_or(format!("{m} and {n} rows"))
    })
    .await;
    for round in 1..=3 {
        client
            .batch_execute(&format!(
                "UPDATE t SET v = {round}; UPDATE keep_all SET v = {round};"
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute("DELETE FROM t WHERE id = 2; BEGIN; TRUNCATE keep_all; INSERT INTO keep_all VALUES (9, 9); COMMIT;")
        .await
        .unwrap();
    eventually(
        "the whole history landed",
        Duration::from_secs(60),
        || async {
            let n = count("SELECT count(*) FROM public.t__changes").await?;
            (n == 10 * 4 + 1).then_some(()).ok_or(format!("{n} rows"))
        },
    )
    .await;
    eventually("one row per key left", Duration::from_secs(90), || async {
        let rows = count("SELECT count(*) FROM public.t__changes").await?;
        let keys = count("SELECT count(DISTINCT id) FROM public.t__changes").await?;
        (rows == 10 && keys == 10)
            .then_some(())
            .ok_or(format!("{rows} rows for {keys} keys"))
    })
    .await;
    let deleted =
        count("SELECT count(*) FROM public.t__changes WHERE id = 2 AND _tw_op = 'd'").await;
    assert_eq!(deleted, Ok(1), "a deleted key keeps its delete");
    let current = count("SELECT count(*) FROM public.t WHERE v = 3").await;
    assert_eq!(current, Ok(9), "the current table is untouched");
    // Kept for ever: every row, the truncate too.
    let kept = count("SELECT count(*) FROM public.keep_all__changes").await;
    assert_eq!(kept, Ok(4 * 4 + 2));
    pipeline.assert_running();
}
