//! REPLICA IDENTITY FULL: pgoutput sends the whole old row with every update,
//! yet only an update that changes the row's primary key is logged as a
//! delete of the old key before the new image; one that keeps it is a single
//! `u` row (issue 18, point 9). The lake's log, its current-state table and
//! the warehouse are compared with the source row by row.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Client;

use crate::support::lake::{compare, current_state, read_log, source_state, LogRow};
use crate::support::{eventually, pg, Pipeline};

/// `f`: a primary key and a TOASTed column (9 600 bytes stored out of line,
/// so pgoutput sends it as unchanged in the new image when an update leaves
/// it alone); `pair`: a two-column primary key; `loose`: no primary key.
const TABLES: &str = "
    CREATE TABLE f (id int PRIMARY KEY, n int, note text, body text);
    ALTER TABLE f ALTER COLUMN body SET STORAGE EXTERNAL;
    ALTER TABLE f REPLICA IDENTITY FULL;
    INSERT INTO f SELECT g, g, 'n' || g, repeat(md5(g::text), 300) FROM generate_series(1, 12) g;
    CREATE TABLE pair (a int, b text, v int, PRIMARY KEY (a, b));
    ALTER TABLE pair REPLICA IDENTITY FULL;
    INSERT INTO pair VALUES (1, 'x', 1), (2, 'y', 2);
    CREATE TABLE loose (a int, b text);
    ALTER TABLE loose REPLICA IDENTITY FULL;
    INSERT INTO loose VALUES (1, 'one'), (2, 'two');";

/// Updates that keep their key (one of them sets the key to itself, one
/// changes nothing at all), a key change, two updates of one row in one
/// transaction, and the same on the other tables.
const CHANGES: &str = "
    UPDATE f SET n = n + 1 WHERE id <= 3;
    UPDATE f SET id = id, note = 'same key' WHERE id = 4;
    UPDATE f SET n = n WHERE id = 5;
    UPDATE f SET id = 100 WHERE id = 10;
    BEGIN;
    UPDATE f SET body = 'short' WHERE id = 6;
    UPDATE f SET n = 0 WHERE id = 6;
    COMMIT;
    UPDATE pair SET v = v + 10;
    UPDATE pair SET b = 'z' WHERE a = 2;
    UPDATE loose SET b = 'uno' WHERE a = 1;
    DELETE FROM loose WHERE a = 2;";

/// Binary mode (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_identity_update_that_keeps_its_key_is_one_update() {
    full_identity_into_the_lake("fullid", true).await;
}

/// The same in text mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_identity_update_that_keeps_its_key_is_one_update_in_text_mode() {
    full_identity_into_the_lake("fullid_text", false).await;
}

async fn full_identity_into_the_lake(name: &str, binary: bool) {
    let client = pg().create_database(name).await;
    client.batch_execute(TABLES).await.unwrap();
    let mut pipeline = Pipeline::with_source(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nbinary = {binary}\n",
            pg().url(name)
        ),
        "current_state = true\ncurrent_state_interval_ms = 300\n",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "f").await;
    client.batch_execute(CHANGES).await.unwrap();
    pipeline.wait_equal(&client, "f").await;
    let (pair, loose) = (
        pipeline.table_path("public", "pair"),
        pipeline.table_path("public", "loose"),
    );
    // The last change of each table has landed: no more rows are coming.
    wait_log(&pair, |r| r.op == "u" && r.values["b"] == "z").await;
    wait_log(&loose, |r| r.op == "d").await;

    // `f`: one `u` per kept key with the new values (the TOASTed body taken
    // from the old image), a delete only where the key changed.
    let log = streamed(&pipeline.table_path("public", "f")).await;
    let long = "9600 bytes";
    let expected = [
        ("u", "1", "2", "n1", long),
        ("u", "2", "3", "n2", long),
        ("u", "3", "4", "n3", long),
        ("u", "4", "4", "same key", long),
        ("u", "5", "5", "n5", long),
        // The delete carries the whole old row, as FULL sends it.
        ("d", "10", "10", "n10", long),
        ("u", "100", "10", "n10", long),
        ("u", "6", "6", "n6", "short"),
        ("u", "6", "0", "n6", "short"),
    ];
    assert_eq!(
        log.iter().map(f_row).collect::<Vec<_>>(),
        expected
            .iter()
            .map(|&(op, id, n, note, body)| [op, id, n, note, body].map(str::to_string))
            .collect::<Vec<_>>(),
        "the change log of f"
    );

    // `pair`: the key is both columns; only the update of `b` changes it.
    let log = streamed(&pair).await;
    let ops: Vec<[String; 4]> = log
        .iter()
        .map(|r| {
            [
                r.op.clone(),
                text(&r.values["a"]),
                text(&r.values["b"]),
                text(&r.values["v"]),
            ]
        })
        .collect();
    let want: Vec<[String; 4]> = [
        ["u", "1", "x", "11"],
        ["u", "2", "y", "12"],
        ["d", "2", "y", "12"],
        ["u", "2", "z", "12"],
    ]
    .iter()
    .map(|row| row.map(str::to_string))
    .collect();
    assert_eq!(ops, want, "the change log of pair");
    compare(
        &source_state(&client, "public.pair", "b").await,
        &current_state(&read_log(&pair).await.unwrap(), "b"),
    )
    .unwrap();

    // `loose`: no primary key, so no key to change: an update is its new
    // image alone; a delete carries the whole old row.
    let log = streamed(&loose).await;
    let ops: Vec<[String; 3]> = log
        .iter()
        .map(|r| [r.op.clone(), text(&r.values["a"]), text(&r.values["b"])])
        .collect();
    let want: Vec<[String; 3]> = [["u", "1", "uno"], ["d", "2", "two"]]
        .iter()
        .map(|row| row.map(str::to_string))
        .collect();
    assert_eq!(ops, want, "the change log of loose");
    compare(
        &source_state(&client, "public.loose", "a").await,
        &current_state(&read_log(&loose).await.unwrap(), "a"),
    )
    .unwrap();

    // The current-state tables merge the lone `u` rows by the primary key:
    // one row per source row, equal to it.
    let current = |table: &str| -> PathBuf {
        pipeline
            .lake
            .join(format!("{name}.current/public"))
            .join(table)
    };
    for (table, key) in [("f", "id"), ("pair", "b")] {
        let path = current(table);
        let client = &client;
        eventually(
            &format!("current state of {table}"),
            Duration::from_secs(90),
            || {
                let path = path.clone();
                async move {
                    let rows = read_log(&path).await?;
                    let lake = current_state(&rows, key);
                    if lake.len() != rows.len() {
                        return Err(format!("{} rows for {} keys", rows.len(), lake.len()));
                    }
                    compare(
                        &source_state(client, &format!("public.{table}"), key).await,
                        &lake,
                    )
                }
            },
        )
        .await;
    }
    // A table without a key has no current state to keep.
    assert!(!current("loose").exists());
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// The warehouse applies the lone `u` rows by the primary key and its change
/// log holds them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_identity_updates_in_the_warehouse() {
    let source = pg().create_database("fullwh_src").await;
    let warehouse = pg().create_database("fullwh_dst").await;
    source
        .batch_execute(
            "CREATE TABLE f (id int PRIMARY KEY, n int, note text);
             ALTER TABLE f REPLICA IDENTITY FULL;
             INSERT INTO f SELECT g, g, 'n' || g FROM generate_series(1, 5) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "fullwh",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.f\"]\n",
            pg().url("fullwh_src")
        ),
        &pg().url("fullwh_dst"),
        "changelog = true\nschema = \"analytics\"\ntable = \"{schema}_{table}\"\n",
    );
    pipeline.start();
    let equal = || async {
        let want = table_rows(&source, "public.f").await?;
        let got = table_rows(&warehouse, "analytics.public_f").await?;
        (want == got)
            .then_some(())
            .ok_or(format!("source {want:?}\nwarehouse {got:?}"))
    };
    eventually("the snapshot", Duration::from_secs(90), equal).await;
    source
        .batch_execute(
            "UPDATE f SET n = n + 1 WHERE id <= 2;
             UPDATE f SET id = 50 WHERE id = 5;",
        )
        .await
        .unwrap();
    eventually("the changes", Duration::from_secs(90), equal).await;
    let log: Vec<(String, i32, i32)> = warehouse
        .query(
            "SELECT _tw_op, id, n FROM analytics.public_f__changes \
             WHERE _tw_op <> 'r' ORDER BY _tw_seq, _tw_ord",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(String, i32, i32)> = [("u", 1, 2), ("u", 2, 3), ("d", 5, 5), ("u", 50, 5)]
        .iter()
        .map(|&(op, id, n)| (op.to_string(), id, n))
        .collect();
    assert_eq!(log, want, "the warehouse change log");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// Every row of `table` as text, ordered by `id`.
async fn table_rows(client: &Client, table: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    Ok(client
        .query(
            &format!("SELECT id::text, n::text, note FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .map_err(|e| format!("rows of {table}: {e}"))?
        .iter()
        .map(|r| (0..3).map(|i| r.get(i)).collect())
        .collect())
}

/// Waits until the change log at `path` holds a row that `found` accepts.
async fn wait_log(path: &Path, found: impl Fn(&LogRow) -> bool) {
    eventually(
        &format!("the last change in {}", path.display()),
        Duration::from_secs(90),
        || {
            let found = &found;
            async move {
                let log = read_log(path).await?;
                log.iter()
                    .any(found)
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
}

/// The streamed rows of a change log (not the snapshot's), in log order.
async fn streamed(path: &Path) -> Vec<LogRow> {
    let mut log: Vec<LogRow> = read_log(path)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.op != "r")
        .collect();
    log.sort_by_key(|r| (r.seq, r.ord));
    log
}

/// A row of `f` as (op, id, n, note, body), the long bodies by their length.
fn f_row(row: &LogRow) -> [String; 5] {
    let body = text(&row.values["body"]);
    let body = if body.len() == 9600 {
        "9600 bytes".to_string()
    } else {
        body
    };
    [
        row.op.clone(),
        text(&row.values["id"]),
        text(&row.values["n"]),
        text(&row.values["note"]),
        body,
    ]
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A FULL table without a primary key has no key, and the warehouse (one row
/// per key) refuses it at its first schema, naming the table and the fix,
/// rather than keying on every column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_identity_without_primary_key_is_refused_by_the_warehouse() {
    let source = pg().create_database("fullnokey_src").await;
    pg().create_database("fullnokey_dst").await;
    source
        .batch_execute(
            "CREATE TABLE loose (a int, b text);
             ALTER TABLE loose REPLICA IDENTITY FULL;
             INSERT INTO loose VALUES (1, 'one');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "fullnokey",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.loose\"]\n",
            pg().url("fullnokey_src")
        ),
        &pg().url("fullnokey_dst"),
        "",
    );
    pipeline.start();
    let mut code = None;
    eventually("the daemon exits", Duration::from_secs(90), || {
        if code.is_none() {
            let child = pipeline.child.as_mut().expect("started");
            code = child.try_wait().expect("try_wait").map(|s| s.code());
        }
        let done = code.is_some();
        async move { done.then_some(()).ok_or_else(|| "running".to_string()) }
    })
    .await;
    let log = pipeline.log(1);
    assert_eq!(code, Some(Some(2)), "{log}");
    assert!(
        log.contains("public.loose has no key columns") && log.contains("primary key"),
        "{log}"
    );
}
