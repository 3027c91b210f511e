//! Soft deletes: deleted rows stay in the current-state tables with
//! `_tw_deleted = true` and the delete's commit time in `_tw_deleted_at`,
//! and a key that comes back is live again. The times are checked against
//! the change log's `_tw_commit_ts` of the delete (or the truncate).

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::support::lake;
use crate::support::{eventually, pg, Pipeline};

type WarehouseRow = (i32, Option<i32>, Option<String>, bool, Option<String>);

const TABLE: &str = "CREATE TABLE acct (id int PRIMARY KEY, amount int, label text);
    -- Deletes carry the whole old row, so a row deleted in the batch that
    -- inserted it lands with its values.
    ALTER TABLE acct REPLICA IDENTITY FULL;
    INSERT INTO acct SELECT g, g * 10, 'l' || g FROM generate_series(1, 6) g;";

async fn warehouse_rows(warehouse: &Client) -> Result<Vec<WarehouseRow>, String> {
    Ok(warehouse
        .query(
            "SELECT id, amount, label, _tw_deleted, _tw_deleted_at::text FROM public.acct ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
}

/// The commit time of the last change of `op` to key `id` (any key for a
/// truncate) in the warehouse change log.
async fn logged_ts(warehouse: &Client, op: &str, id: Option<i32>) -> Option<String> {
    warehouse
        .query_one(
            "SELECT max(_tw_commit_ts)::text FROM public.acct__changes \
             WHERE _tw_op = $1 AND ($2::int IS NULL OR id = $2)",
            &[&op, &id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn warehouse_soft_deletes(name: &str, apply: &str) {
    let source = pg().create_database(&format!("{name}_src")).await;
    let warehouse = pg().create_database(&format!("{name}_dst")).await;
    source.batch_execute(TABLE).await.unwrap();
    let mut pipeline = Pipeline::warehouse(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url(&format!("{name}_src"))
        ),
        &pg().url(&format!("{name}_dst")),
        &format!("changelog = true\nsoft_deletes = true\napply = \"{apply}\"\n"),
    );
    pipeline.start();
    let live = |id: i32, amount: i32, label: &str| -> WarehouseRow {
        (id, Some(amount), Some(label.to_string()), false, None)
    };
    let snapshot: Vec<WarehouseRow> = (1..=6).map(|i| live(i, i * 10, &format!("l{i}"))).collect();
    eventually("the snapshot", Duration::from_secs(60), || async {
        let got = warehouse_rows(&warehouse).await?;
        (got == snapshot).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;

    source
        .batch_execute(
            "DELETE FROM acct WHERE id IN (2, 3);
             BEGIN; INSERT INTO acct VALUES (7, 70, 'l7'); DELETE FROM acct WHERE id = 7; COMMIT;
             UPDATE acct SET amount = 41 WHERE id = 4;",
        )
        .await
        .unwrap();
    // Only after the delete of 3 has landed does it come back: a later batch.
    eventually("the deletes", Duration::from_secs(60), || async {
        let got = warehouse_rows(&warehouse).await?;
        let flagged: Vec<i32> = got.iter().filter(|r| r.3).map(|r| r.0).collect();
        (flagged == [2, 3, 7])
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;
    source
        .batch_execute("INSERT INTO acct VALUES (3, 33, 'back')")
        .await
        .unwrap();
    let deleted_at = |id| logged_ts(&warehouse, "d", Some(id));
    let expected = vec![
        live(1, 10, "l1"),
        (2, Some(20), Some("l2".into()), true, deleted_at(2).await),
        live(3, 33, "back"),
        live(4, 41, "l4"),
        live(5, 50, "l5"),
        live(6, 60, "l6"),
        (7, Some(70), Some("l7".into()), true, deleted_at(7).await),
    ];
    assert!(expected[1].4.is_some(), "the change log holds the delete");
    eventually(
        "deletes kept, a key back",
        Duration::from_secs(60),
        || async {
            let got = warehouse_rows(&warehouse).await?;
            (got == expected)
                .then_some(())
                .ok_or(format!("got {got:?}\nexpected {expected:?}"))
        },
    )
    .await;

    // A truncate flags every live row (rows deleted before keep their
    // time); a row written after it in the same transaction is live.
    source
        .batch_execute("BEGIN; TRUNCATE acct; INSERT INTO acct VALUES (5, 500, 'new'); COMMIT;")
        .await
        .unwrap();
    eventually("the truncate", Duration::from_secs(60), || async {
        let truncated_at = logged_ts(&warehouse, "t", None).await;
        if truncated_at.is_none() {
            return Err("no truncate yet".to_string());
        }
        let flagged = |id: i32, amount: i32, label: &str| -> WarehouseRow {
            (
                id,
                Some(amount),
                Some(label.to_string()),
                true,
                truncated_at.clone(),
            )
        };
        let expected = vec![
            flagged(1, 10, "l1"),
            expected[1].clone(),
            flagged(3, 33, "back"),
            flagged(4, 41, "l4"),
            live(5, 500, "new"),
            flagged(6, 60, "l6"),
            expected[6].clone(),
        ];
        let got = warehouse_rows(&warehouse).await?;
        (got == expected)
            .then_some(())
            .ok_or(format!("got {got:?}\nexpected {expected:?}"))
    })
    .await;
    pipeline.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_soft_deletes_with_merge() {
    warehouse_soft_deletes("soft_merge", "merge").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_soft_deletes_with_on_conflict() {
    warehouse_soft_deletes("soft_upsert", "on_conflict").await;
}

/// (id, amount, label, deleted, deleted_at) of every row of a Delta
/// current-state table, by id.
type LakeRow = (String, Value, Value, Value, Value);

/// The rows a current-state table should hold, given its change log (None
/// while the log lacks a change they need).
type Expected = dyn Fn(&[lake::LogRow]) -> Option<Vec<LakeRow>> + Send + Sync;

fn lake_row(row: &lake::LogRow) -> LakeRow {
    (
        row.values["id"].as_str().unwrap_or_default().to_string(),
        row.values["amount"].clone(),
        row.values["label"].clone(),
        row.meta.get("_tw_deleted").cloned().unwrap_or(Value::Null),
        row.meta
            .get("_tw_deleted_at")
            .cloned()
            .unwrap_or(Value::Null),
    )
}

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

fn live(id: i32, amount: i32, label: &str) -> LakeRow {
    (
        id.to_string(),
        text(&amount.to_string()),
        text(label),
        text("false"),
        Value::Null,
    )
}

/// The row a deleted key keeps: the delete's image and its commit time,
/// from the change log.
fn deleted(log: &[lake::LogRow], id: i32) -> Option<LakeRow> {
    let row = log
        .iter()
        .rev()
        .find(|r| r.op == "d" && r.values["id"] == text(&id.to_string()))?;
    Some((
        id.to_string(),
        row.values["amount"].clone(),
        row.values["label"].clone(),
        text("true"),
        row.meta["_tw_commit_ts"].clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_current_state_keeps_soft_deleted_rows() {
    lake_soft_deletes("soft_lake", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_current_state_keeps_soft_deleted_rows_with_deletion_vectors() {
    lake_soft_deletes("soft_lake_dv", "current_state_deletion_vectors = true\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_current_state_keeps_soft_deleted_rows() {
    lake_soft_deletes("soft_ice", "format = \"iceberg\"\n").await;
}

async fn lake_soft_deletes(name: &str, extra: &str) {
    let iceberg = extra.contains("iceberg");
    let source = pg().create_database(name).await;
    source.batch_execute(TABLE).await.unwrap();
    let mut pipeline = Pipeline::new(
        name,
        &pg().url(name),
        &format!(
            "current_state = true\ncurrent_state_interval_ms = 300\nsoft_deletes = true\n{extra}"
        ),
    );
    pipeline.start();
    let log_path = pipeline.table_path("public", "acct");
    let current = pipeline.lake.join(format!("{name}.current/public/acct"));
    let check = |expected: Box<Expected>| {
        let (log_path, current) = (log_path.clone(), current.clone());
        async move {
            let log = lake::read_log(&log_path).await?;
            let expected = expected(&log).ok_or("the change log is not there yet")?;
            let rows = if iceberg {
                lake::read_log(&current).await?
            } else {
                lake::read_current(&current).await?
            };
            let mut got: Vec<LakeRow> = rows.iter().map(lake_row).collect();
            got.sort_by_key(|r| r.0.parse::<i32>().unwrap_or(0));
            (got == expected)
                .then_some(())
                .ok_or(format!("got {got:?}\nexpected {expected:?}"))
        }
    };
    eventually("the snapshot merged", Duration::from_secs(60), || {
        check(Box::new(move |_| {
            Some((1..=6).map(|i| live(i, i * 10, &format!("l{i}"))).collect())
        }))
    })
    .await;

    source
        .batch_execute(
            "DELETE FROM acct WHERE id IN (2, 3);
             BEGIN; INSERT INTO acct VALUES (7, 70, 'l7'); DELETE FROM acct WHERE id = 7; COMMIT;
             UPDATE acct SET amount = 41 WHERE id = 4;",
        )
        .await
        .unwrap();
    eventually("deletes kept and flagged", Duration::from_secs(60), || {
        check(Box::new(move |log| {
            Some(vec![
                live(1, 10, "l1"),
                deleted(log, 2)?,
                deleted(log, 3)?,
                live(4, 41, "l4"),
                live(5, 50, "l5"),
                live(6, 60, "l6"),
                deleted(log, 7)?,
            ])
        }))
    })
    .await;
    source
        .batch_execute("INSERT INTO acct VALUES (3, 33, 'back')")
        .await
        .unwrap();
    eventually("a deleted key back", Duration::from_secs(60), || {
        check(Box::new(move |log| {
            Some(vec![
                live(1, 10, "l1"),
                deleted(log, 2)?,
                live(3, 33, "back"),
                live(4, 41, "l4"),
                live(5, 50, "l5"),
                live(6, 60, "l6"),
                deleted(log, 7)?,
            ])
        }))
    })
    .await;
    // A truncate empties the current table (README: soft deletes).
    source
        .batch_execute("BEGIN; TRUNCATE acct; INSERT INTO acct VALUES (5, 500, 'new'); COMMIT;")
        .await
        .unwrap();
    eventually("the truncate merged", Duration::from_secs(60), || {
        check(Box::new(move |_| Some(vec![live(5, 500, "new")])))
    })
    .await;
    pipeline.assert_running();
}
