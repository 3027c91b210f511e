//! The warehouse sink end to end: Postgres and MariaDB sources into a
//! warehouse database of the shared Postgres server, with SIGKILL restarts
//! while changes stream, an unchanged TOAST value restored from the
//! warehouse, the change log, schema changes, both apply paths (MERGE and
//! INSERT … ON CONFLICT) and a least-privilege warehouse user. Warehouse tables are
//! compared with the sources column type by column type and row by row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use crate::support::mariadb::maria;
use crate::support::{crash_rng, eventually, pg, Pipeline};

/// Column (name, type) pairs and every row as text, ordered by `key`. Text
/// is each type's canonical output, so with equal column types equal text
/// is an equal value.
type Table = (Vec<(String, String)>, Vec<Vec<Option<String>>>);

async fn pg_table(client: &Client, table: &str, key: &str) -> Result<Table, String> {
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(|e| format!("columns of {table}: {e}"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let select: Vec<String> = columns
        .iter()
        .map(|(c, _)| format!("\"{c}\"::text"))
        .collect();
    let rows = client
        .query(
            &format!("SELECT {} FROM {table} ORDER BY {key}", select.join(", ")),
            &[],
        )
        .await
        .map_err(|e| format!("rows of {table}: {e}"))?
        .iter()
        .map(|r| (0..columns.len()).map(|i| r.get(i)).collect())
        .collect();
    Ok((columns, rows))
}

/// Source types as the warehouse maps them (README, warehouse type mapping).
fn warehouse_type(source: &str) -> String {
    if source.starts_with("character varying") {
        "text".into()
    } else {
        source.to_string()
    }
}

/// Ok when the warehouse table equals the source table exactly.
async fn same_table(
    source: &Client,
    warehouse: &Client,
    table: &str,
    target: &str,
    key: &str,
) -> Result<(), String> {
    let (source_columns, source_rows) = pg_table(source, table, key).await?;
    let (target_columns, target_rows) = pg_table(warehouse, target, key).await?;
    let expected: Vec<(String, String)> = source_columns
        .iter()
        .map(|(c, t)| (c.clone(), warehouse_type(t)))
        .collect();
    if expected != target_columns {
        return Err(format!(
            "columns differ:\n source   {expected:?}\n warehouse {target_columns:?}"
        ));
    }
    if source_rows.len() != target_rows.len() {
        return Err(format!(
            "{} source rows, {} warehouse rows",
            source_rows.len(),
            target_rows.len()
        ));
    }
    for (s, w) in source_rows.iter().zip(&target_rows) {
        if s != w {
            return Err(format!("row differs:\n source    {s:?}\n warehouse {w:?}"));
        }
    }
    Ok(())
}

/// Random transactions over `items` and `audit` until `stop`.
async fn write_load(url: String, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connect");
    tokio::spawn(connection);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next_id: i64 = 1_000;
    let mut transactions = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.gen_range(1..10) {
            match rng.gen_range(0..10) {
                0..=5 => {
                    next_id += 1;
                    sql.push_str(&format!(
                        "INSERT INTO items (id, v, amount, note, tags, at) VALUES \
                         ({next_id}, {}, {}.{:02}, 'n{next_id}', ARRAY['x', 'y\"{next_id}'], \
                          now()); INSERT INTO audit (id, item) VALUES ({next_id}, {next_id});",
                        rng.gen_range(0..1000),
                        rng.gen_range(-999..999),
                        rng.gen_range(0..100),
                    ));
                }
                6..=8 => sql.push_str(&format!(
                    "UPDATE items SET v = v + 1, note = 'u' || v, flag = NOT coalesce(flag, false) \
                     WHERE id = {};",
                    rng.gen_range(1..next_id)
                )),
                _ => sql.push_str(&format!(
                    "DELETE FROM items WHERE id = {};",
                    rng.gen_range(1..next_id)
                )),
            }
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.expect("load transaction");
        transactions += 1;
        // The writer's pace (part of the random load), not a wait.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..5))).await;
    }
    transactions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_into_warehouse_survives_sigkill_and_restores_toast() {
    let source = pg().create_database("wh_src").await;
    let warehouse = pg().create_database("wh_dst").await;
    source
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v int, amount numeric(12,2), note text,
                 flag boolean, tags text[], at timestamptz, day date, u uuid, doc jsonb,
                 raw bytea, ratio double precision, small smallint, label varchar(20),
                 days date[], ats timestamptz[], clocks time[]);
             INSERT INTO items SELECT g, g, g * 1.25, 'seed', g % 2 = 0, ARRAY['a', NULL],
                 '2024-02-29 12:34:56.123456+00', '1999-12-31', gen_random_uuid(),
                 '{\"k\": [1, \"x\"]}', '\\x00ff', 1.0 / 3, -32768, 'l',
                 ARRAY[date '2000-02-29' + g, NULL, '0044-03-15 BC'],
                 ARRAY[timestamptz '1969-12-31 23:59:59.999999+00' + g * interval '1 hour'],
                 ARRAY[time '24:00:00', time '00:00:00.000001' + g * interval '1 minute']
               FROM generate_series(1, 500) g;
             CREATE TABLE audit (id bigint PRIMARY KEY, item bigint);
             -- A value stored out of line (TOASTed): large and incompressible.
             CREATE TABLE docs (id int PRIMARY KEY, v int, body text);
             INSERT INTO docs SELECT 1, 0, string_agg(md5(g::text || random()::text), '')
               FROM generate_series(1, 400) g;",
        )
        .await
        .unwrap();
    let mut rng = crash_rng("warehouse crash test");
    let mut pipeline = Pipeline::warehouse(
        "whpg",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("wh_src")
        ),
        &pg().url("wh_dst"),
        "max_batch_rows = 300\n",
    );
    pipeline.start();
    eventually(
        "the snapshot in the warehouse",
        Duration::from_secs(90),
        || same_table(&source, &warehouse, "items", "public.items", "id"),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(pg().url("wh_src"), stop.clone(), rng.gen()));
    // The random moments of the kills and restarts (replayable from the
    // seed) are what this test is about, not waits.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
        pipeline.assert_running();
        pipeline.kill();
        eprintln!("round {round}: killed the daemon");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        pipeline.start();
    }
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(transactions > 0, "the load ran");
    // The update leaves `body` unchanged: Postgres does not resend it, and
    // the warehouse's current row supplies it.
    source
        .batch_execute("UPDATE docs SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    for (table, target) in [
        ("items", "public.items"),
        ("audit", "public.audit"),
        ("docs", "public.docs"),
    ] {
        eventually(
            &format!("warehouse {table} equal to the source"),
            Duration::from_secs(120),
            || same_table(&source, &warehouse, table, target, "id"),
        )
        .await;
    }
    let docs = warehouse
        .query_one("SELECT v, length(body) FROM public.docs", &[])
        .await
        .unwrap();
    assert_eq!(
        (docs.get::<_, i32>(0), docs.get::<_, i32>(1)),
        (1, 400 * 32)
    );
    // The state table holds each table's mark, in the same database.
    let states = warehouse
        .query(
            "SELECT source_table, snapshot_done, seq > 0 FROM tidewater.table_state \
             WHERE pipeline = 'whpg' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let states: Vec<(String, bool, bool)> = states
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        states,
        vec![
            ("audit".to_string(), true, true),
            ("docs".to_string(), true, true),
            ("items".to_string(), true, true)
        ]
    );
    assert_eq!(pipeline.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changelog_and_schema_changes_in_the_warehouse() {
    let source = pg().create_database("whs_src").await;
    let warehouse = pg().create_database("whs_dst").await;
    source
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, amount integer, label varchar(10), gone text);
             INSERT INTO acct VALUES (1, 10, 'a', 'g1'), (2, 20, 'b', 'g2'), (3, 30, 'c', 'g3');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "whschema",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("whs_src")
        ),
        &pg().url("whs_dst"),
        "changelog = true\nschema = \"analytics\"\ntable = \"{schema}_{table}\"\n",
    );
    pipeline.start();
    eventually("the snapshot", Duration::from_secs(60), || {
        same_table(&source, &warehouse, "acct", "analytics.public_acct", "id")
    })
    .await;
    source
        .batch_execute(
            "INSERT INTO acct VALUES (4, 40, 'd', 'g4');
             UPDATE acct SET amount = 11 WHERE id = 1;
             DELETE FROM acct WHERE id = 2;",
        )
        .await
        .unwrap();
    eventually("the changes", Duration::from_secs(60), || {
        same_table(&source, &warehouse, "acct", "analytics.public_acct", "id")
    })
    .await;
    // Schema changes: a new column, a widened type, a dropped column.
    source
        .batch_execute(
            "ALTER TABLE acct ADD COLUMN extra numeric(8,3);
             ALTER TABLE acct ALTER COLUMN amount TYPE bigint;
             ALTER TABLE acct DROP COLUMN gone;
             INSERT INTO acct VALUES (5, 5000000000, 'e', 1.5);
             UPDATE acct SET amount = 6000000000, extra = -2.25 WHERE id = 3;",
        )
        .await
        .unwrap();
    let expected_columns = vec![
        ("id".to_string(), "integer".to_string()),
        ("amount".to_string(), "bigint".to_string()),
        ("label".to_string(), "text".to_string()),
        ("gone".to_string(), "text".to_string()),
        ("extra".to_string(), "numeric(8,3)".to_string()),
    ];
    let expected_rows: Vec<Vec<Option<String>>> = [
        ["1", "11", "a", "g1", ""],
        // Changed after `gone` was dropped: NULL there from then on.
        ["3", "6000000000", "c", "", "-2.250"],
        ["4", "40", "d", "g4", ""],
        ["5", "5000000000", "e", "", "1.500"],
    ]
    .iter()
    .map(|row| {
        row.iter()
            .map(|v| (!v.is_empty()).then(|| v.to_string()))
            .collect()
    })
    .collect();
    eventually("the schema changes", Duration::from_secs(60), || async {
        let got = pg_table(&warehouse, "analytics.public_acct", "id").await?;
        if got != (expected_columns.clone(), expected_rows.clone()) {
            return Err(format!("warehouse holds {got:?}"));
        }
        Ok(())
    })
    .await;
    // A truncate empties the table; rows after it land.
    source
        .batch_execute("TRUNCATE acct; INSERT INTO acct VALUES (9, 9, 'z', NULL);")
        .await
        .unwrap();
    eventually("the truncate", Duration::from_secs(60), || async {
        let (_, rows) = pg_table(&warehouse, "analytics.public_acct", "id").await?;
        if rows.len() != 1 || rows[0][0].as_deref() != Some("9") {
            return Err(format!("warehouse holds {rows:?}"));
        }
        Ok(())
    })
    .await;
    // The change log: every change once, in commit order, typed.
    let log = warehouse
        .query(
            "SELECT _tw_op, id, amount::text, format_type(pg_typeof(_tw_seq), NULL), \
                    _tw_position <> '', _tw_commit_ts IS NOT NULL \
             FROM analytics.public_acct__changes ORDER BY _tw_seq, _tw_ord",
            &[],
        )
        .await
        .unwrap();
    let log: Vec<(String, Option<i32>, Option<String>)> = log
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, String>(3), "bigint");
            assert!(r.get::<_, bool>(4) && r.get::<_, bool>(5));
            (r.get(0), r.get(1), r.get(2))
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        log,
        vec![
            ("r".into(), Some(1), s("10")),
            ("r".into(), Some(2), s("20")),
            ("r".into(), Some(3), s("30")),
            ("c".into(), Some(4), s("40")),
            ("u".into(), Some(1), s("11")),
            // A delete carries the key (the default replica identity).
            ("d".into(), Some(2), None),
            ("c".into(), Some(5), s("5000000000")),
            ("u".into(), Some(3), s("6000000000")),
            ("t".into(), None, None),
            ("c".into(), Some(9), s("9")),
        ]
    );
    let status = crate::support::output_within(
        {
            let mut cmd = crate::support::tidewater();
            cmd.args(["status", "--config"]).arg(&pipeline.config);
            cmd
        },
        60,
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status failed: {text}");
    assert!(
        text.contains("public.acct") && text.contains("streaming"),
        "status shows the table: {text}"
    );
    // A renamed column follows the lake's rule: a new column under the new
    // name, and the table copied again so every row has its value there;
    // the old column stays, NULL from then on.
    source
        .batch_execute(
            "INSERT INTO acct VALUES (10, 10, 'y', NULL);
             ALTER TABLE acct RENAME COLUMN label TO tag;
             UPDATE acct SET amount = amount + 1 WHERE id = 9;",
        )
        .await
        .unwrap();
    eventually("the rename", Duration::from_secs(60), || async {
        let (columns, rows) = pg_table(&warehouse, "analytics.public_acct", "id").await?;
        let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        // (`pg_table` orders by the key's text.)
        let want = vec![
            vec![s("10"), s("10"), None, None, None, s("y")],
            vec![s("9"), s("10"), None, None, None, s("z")],
        ];
        if names != ["id", "amount", "label", "gone", "extra", "tag"] || rows != want {
            return Err(format!("warehouse holds {columns:?} {rows:?}"));
        }
        Ok(())
    })
    .await;
    assert_eq!(pipeline.terminate(), 0);
}

/// MariaDB rows and warehouse rows in one canonical text form per column.
async fn maria_rows(conn: &mut mysql_async::Conn) -> Vec<Vec<Option<String>>> {
    let rows: Vec<mysql_async::Row> = conn
        .exec(
            "SELECT k, CAST(big AS CHAR), CAST(price AS CHAR), name, \
                    DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f'), ratio, HEX(raw), \
                    CAST(d AS CHAR), \
                    TIMESTAMPDIFF(MICROSECOND, '2000-01-01 00:00:00', TIMESTAMP('2000-01-01', t)) \
             FROM whm.things ORDER BY k",
            (),
        )
        .await
        .expect("source rows");
    rows.into_iter()
        .map(|row| {
            row.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    mysql_async::Value::Int(i) => Some(i.to_string()),
                    mysql_async::Value::UInt(i) => Some(i.to_string()),
                    mysql_async::Value::Double(f) => Some(f.to_string()),
                    other => Some(format!("{other:?}")),
                })
                .collect()
        })
        .collect()
}

async fn warehouse_rows(client: &Client) -> Result<Vec<Vec<Option<String>>>, String> {
    let rows = client
        .query(
            "SELECT k::text, big::text, price::text, name, \
                    to_char(at, 'YYYY-MM-DD HH24:MI:SS.US'), ratio::text, upper(encode(raw, 'hex')), \
                    d::text, (extract(epoch FROM t) * 1000000)::bigint::text \
             FROM whm.things w ORDER BY w.k",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| (0..9).map(|i| r.get::<_, Option<String>>(i)).collect())
        .collect())
}

/// The warehouse types of `whm.things` (README, warehouse type mapping).
fn columns() -> Vec<(String, String)> {
    [
        ("k", "integer"),
        ("big", "numeric(20,0)"),
        ("price", "numeric(12,2)"),
        ("name", "text"),
        ("at", "timestamp without time zone"),
        ("ratio", "double precision"),
        ("raw", "bytea"),
        ("d", "date"),
        ("t", "interval"),
    ]
    .iter()
    .map(|(c, t)| (c.to_string(), t.to_string()))
    .collect()
}

async fn same_things(warehouse: &Client) -> Result<(), String> {
    let (got_columns, _) = pg_table(warehouse, "whm.things", "k").await?;
    if got_columns != columns() {
        return Err(format!("columns {got_columns:?}"));
    }
    let mut conn = maria().conn("whm").await;
    let source = maria_rows(&mut conn).await;
    let target = warehouse_rows(warehouse).await?;
    if source != target {
        let first = source.iter().zip(&target).find(|(s, t)| s != t);
        return Err(format!(
            "{} source rows, {} warehouse rows; first difference {first:?}",
            source.len(),
            target.len()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_into_warehouse_survives_sigkill() {
    let mut conn = maria().create_database("whm").await;
    conn.query_drop(
        "CREATE TABLE things (k INT PRIMARY KEY, big BIGINT UNSIGNED, price DECIMAL(12,2),
             name VARCHAR(40), at DATETIME(6), ratio DOUBLE, raw BLOB, d DATE, t TIME(6))",
    )
    .await
    .unwrap();
    conn.query_drop(
        "INSERT INTO things SELECT seq, 18446744073709551615 - seq, seq * 1.5, CONCAT('n', seq),
             '2024-02-29 12:34:56.123456', seq / 7, UNHEX('00FF'), '1000-01-01', '-838:59:59'
         FROM seq_1_to_300",
    )
    .await
    .unwrap();
    let warehouse = pg().create_database("wh_maria").await;
    // The warehouse user has exactly the grants the README lists.
    warehouse
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE wh_writer LOGIN; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT CONNECT, TEMPORARY, CREATE ON DATABASE wh_maria TO wh_writer;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "whmaria",
        &maria().source_toml("whm"),
        &pg().url("wh_maria").replace("postgres@", "wh_writer@"),
        "apply = \"on_conflict\"\nmax_batch_rows = 100\n",
    );
    pipeline.start();
    eventually("the snapshot", Duration::from_secs(90), || {
        same_things(&warehouse)
    })
    .await;
    let mut rng = crash_rng("warehouse mariadb crash test");
    for round in 0..2 {
        for step in 0..20 {
            let k = 1000 + round * 100 + step;
            conn.query_drop(format!(
                "BEGIN; INSERT INTO things VALUES ({k}, {k}, -{k}.25, 'x{k}', '1970-01-01 00:00:00.000001', -0.5, NULL, '9999-12-31', '12:00:00.5');
                 UPDATE things SET price = price + 1, name = NULL WHERE k = {};
                 DELETE FROM things WHERE k = {}; COMMIT",
                rng.gen_range(1..300),
                rng.gen_range(1..300)
            ))
            .await
            .unwrap();
        }
        // A random kill point (replayable from the seed): the thing under
        // test, not a wait.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1200))).await;
        pipeline.assert_running();
        pipeline.kill();
        eprintln!("round {round}: killed the daemon");
        pipeline.start();
    }
    // A change after the last start: the restarted daemon streams.
    conn.query_drop("UPDATE things SET name = 'last', big = 0 WHERE k = 1000")
        .await
        .unwrap();
    eventually("the stream", Duration::from_secs(90), || {
        same_things(&warehouse)
    })
    .await;
    // A rename read from the binlog's ALTER TABLE text: the table is copied
    // again, every row has its value under the new name, the old column is
    // NULL from then on.
    conn.query_drop("ALTER TABLE things RENAME COLUMN name TO title")
        .await
        .unwrap();
    conn.query_drop("UPDATE things SET price = price + 1 WHERE k = 1")
        .await
        .unwrap();
    let source: Vec<(i32, Option<String>)> = conn
        .exec("SELECT k, title FROM whm.things ORDER BY k", ())
        .await
        .unwrap();
    let source: Vec<(String, Option<String>, Option<String>)> = source
        .into_iter()
        .map(|(k, title)| (k.to_string(), title, None))
        .collect();
    eventually("the rename", Duration::from_secs(90), || async {
        let rows = warehouse
            .query(
                "SELECT k::text, title, name FROM whm.things w ORDER BY w.k",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let got: Vec<(String, Option<String>, Option<String>)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if got != source {
            return Err(format!(
                "{} rows, first difference {:?}",
                got.len(),
                got.iter().zip(&source).find(|(g, s)| g != s)
            ));
        }
        Ok(())
    })
    .await;
    assert_eq!(pipeline.terminate(), 0);
}

/// Name templates that send two source tables to one warehouse table are
/// refused before anything is written there, naming both tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_source_tables_never_share_a_warehouse_table() {
    let source = pg().create_database("whdup_src").await;
    let warehouse = pg().create_database("whdup_dst").await;
    source
        .batch_execute(
            "CREATE SCHEMA other;
             CREATE TABLE public.dup (id int PRIMARY KEY, v text);
             CREATE TABLE other.dup (id int PRIMARY KEY, v text);
             INSERT INTO public.dup VALUES (1, 'public');
             INSERT INTO other.dup VALUES (1, 'other');",
        )
        .await
        .unwrap();
    let pipeline = Pipeline::warehouse(
        "whdup",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\", \"other.*\"]\n",
            pg().url("whdup_src")
        ),
        &pg().url("whdup_dst"),
        "schema = \"raw\"\ntable = \"{table}\"\n",
    );
    let mut cmd = crate::support::tidewater();
    cmd.args(["snapshot", "--config"]).arg(&pipeline.config);
    let out = crate::support::output_within(cmd, 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"raw\".\"dup\"") && stderr.contains("is written there too"),
        "{stderr}"
    );
    let rows = warehouse
        .query_one("SELECT count(*) FROM raw.dup", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0);
    assert!(rows <= 1, "one table's rows at most, got {rows}");
}

/// After a type change the warehouse cannot widen (text → bytea), the
/// value of a row not written since sits in the old column only: an update
/// that leaves that TOASTed column unchanged stops the table with the hint,
/// rather than writing NULL into the new column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_is_never_taken_from_an_empty_column_version() {
    let source = pg().create_database("whtv_src").await;
    let warehouse = pg().create_database("whtv_dst").await;
    source
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, v int, body text);
             INSERT INTO docs SELECT 1, 0, string_agg(md5(g::text || random()::text), '')
               FROM generate_series(1, 400) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "whtv",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("whtv_src")
        ),
        &pg().url("whtv_dst"),
        "",
    );
    pipeline.start();
    eventually("the snapshot", Duration::from_secs(60), || {
        same_table(&source, &warehouse, "docs", "public.docs", "id")
    })
    .await;
    source
        .batch_execute(
            "ALTER TABLE docs ALTER COLUMN body TYPE bytea USING convert_to(body, 'UTF8');
             UPDATE docs SET v = v + 1;",
        )
        .await
        .unwrap();
    eventually("the table stop in the log", Duration::from_secs(60), || {
        let log = pipeline.log(pipeline.starts);
        async move {
            (log.contains("table stopped") && log.contains("TOASTed column body"))
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    let row = warehouse
        .query_one(
            "SELECT v, length(body), body__v2 IS NULL FROM public.docs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i32>(1),
            row.get::<_, bool>(2)
        ),
        (0, 400 * 32, true),
        "the row is left as it was, not rewritten with a NULL body"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}

/// The rows of warehouse table `public.bad`, as (id, v).
async fn bad_rows(warehouse: &Client) -> Vec<(i32, i32)> {
    warehouse
        .query("SELECT id, v FROM public.bad ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A definite warehouse error about one table (a CHECK constraint added to
/// its warehouse table by hand, which a new row breaks) stops that table
/// only, like a definite source error: the stop is recorded and shows in
/// `status`, the other table keeps streaming and equals its source row by
/// row, the daemon keeps running, and a restart keeps the table stopped.
/// No row value reaches the log (the server's DETAIL names the failing row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_warehouse_error_on_one_table_stops_that_table_only() {
    let source = pg().create_database("whstop_src").await;
    let warehouse = pg().create_database("whstop_dst").await;
    source
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY, v int);
             CREATE TABLE bad (id int PRIMARY KEY, v int);
             INSERT INTO good VALUES (1, 1);
             INSERT INTO bad VALUES (1, 1);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "whstop",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("whstop_src")
        ),
        &pg().url("whstop_dst"),
        "",
    );
    pipeline.start();
    eventually("the snapshot", Duration::from_secs(60), || async {
        same_table(&source, &warehouse, "good", "public.good", "id").await?;
        same_table(&source, &warehouse, "bad", "public.bad", "id").await
    })
    .await;
    warehouse
        .batch_execute("ALTER TABLE public.bad ADD CONSTRAINT small CHECK (v < 1000)")
        .await
        .unwrap();
    source
        .batch_execute(
            "BEGIN;
             INSERT INTO good VALUES (2, 2);
             INSERT INTO bad VALUES (2, 987654);
             INSERT INTO good VALUES (3, 3);
             COMMIT;
             INSERT INTO bad VALUES (3, 3);
             INSERT INTO good VALUES (4, 4);
             UPDATE good SET v = 40 WHERE id = 4;",
        )
        .await
        .unwrap();
    eventually("the table stop in the log", Duration::from_secs(60), || {
        let log = pipeline.log(1);
        async move {
            (log.contains("table stopped")
                && log.contains("public.bad")
                && log.contains("check constraint"))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    eventually("good streams on", Duration::from_secs(60), || {
        same_table(&source, &warehouse, "good", "public.good", "id")
    })
    .await;
    pipeline.assert_running();
    // Changes after the stop: good's go on, bad's are dropped.
    source
        .batch_execute(
            "INSERT INTO good VALUES (5, 5);
             DELETE FROM good WHERE id = 1;
             INSERT INTO bad VALUES (4, 4);",
        )
        .await
        .unwrap();
    eventually(
        "good streams on after the stop",
        Duration::from_secs(60),
        || same_table(&source, &warehouse, "good", "public.good", "id"),
    )
    .await;
    pipeline.assert_running();
    let log = pipeline.log(1);
    assert!(!log.contains("987654"), "no row value in the log: {log}");
    assert_eq!(
        bad_rows(&warehouse).await,
        vec![(1, 1)],
        "nothing of bad after its stop"
    );
    let report = pipeline.status_json();
    assert_eq!(
        crate::support::table_state(&report, "public.bad"),
        Some("stopped".into()),
        "{report}"
    );
    assert_eq!(
        crate::support::table_state(&report, "public.good"),
        Some("streaming".into()),
        "{report}"
    );
    let reason = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.bad")
        .map(|t| t["stopped"]["reason"].to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("check constraint") && !reason.contains("987654"),
        "{report}"
    );

    // A restart keeps it stopped, and says so.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    pipeline.start();
    source
        .batch_execute("INSERT INTO good VALUES (6, 6); UPDATE bad SET v = 5 WHERE id = 1;")
        .await
        .unwrap();
    eventually(
        "good streams after the restart",
        Duration::from_secs(60),
        || same_table(&source, &warehouse, "good", "public.good", "id"),
    )
    .await;
    pipeline.assert_running();
    assert!(
        pipeline.log(2).contains("table is stopped"),
        "{}",
        pipeline.log(2)
    );
    assert_eq!(bad_rows(&warehouse).await, vec![(1, 1)]);
    assert_eq!(
        crate::support::table_state(&pipeline.status_json(), "public.bad"),
        Some("stopped".into())
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}
