//! Snapshot + streaming land exactly what the source holds, value by value,
//! for every supported type; transactions keep their order; truncates and
//! deletes apply; SIGTERM flushes and acknowledges; other readers can read it.

use std::process::Command;
use std::time::Duration;

use tokio_postgres::Client;

use crate::support::lake::read_log;
use crate::support::{eventually, output_within, pg, tidewater, Pipeline};

const TYPED_DDL: &str = "CREATE TABLE typed (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8,
    n numeric(12,2), nbig numeric(50,5), nfree numeric,
    f4 real, f8 double precision, b boolean,
    t text, vc varchar(20), c char(5), by bytea,
    d date, ts timestamp, tstz timestamptz, tm time,
    u uuid, j json, jb jsonb,
    ai int[], at text[], an numeric(8,3)[], ad date[], atz timestamptz[], ab bytea[], au uuid[], af8 float8[],
    m2 int[][], mt text[][], mn numeric[][]
)";

/// Edge values of every supported type, rows `base+1 ..= base+4`.
async fn insert_edge_rows(client: &Client, base: i32) {
    let sql = format!(
        r#"INSERT INTO typed VALUES
        ({a}, 32767, 2147483647, 9223372036854775807, 9999999999.99,
         123456789012345678901234567890123456789012345.12345, 'NaN',
         3.4028235e38, 1.7976931348623157e308, true,
         E'tab\there\nnew line \\ back "q" ünï 🦀', 'exactly twenty chars', 'ab', '\x00ff5c0a',
         '0044-03-15 BC', '2024-02-29 23:59:59.999999', '1999-12-31 23:59:59.5+05:30', '24:00:00',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": [1, 2.5, null]}}', '{{"z": 1, "a": "é"}}',
         '{{1,NULL,-3}}', '{{"a,b","q\"x",NULL,"NULL","", "{{}}"}}', '{{1.5,NULL,-0.001}}',
         '{{2020-01-01,infinity}}', '{{"2020-01-01 00:00:00+00"}}', '{{"\\x00", "\\x5c22"}}',
         '{{00000000-0000-0000-0000-000000000000}}', '{{NaN,Infinity,-0}}',
         '{{{{1,2,3}},{{4,NULL,6}}}}', '{{{{"a b","{{c}}"}},{{NULL,"\\"}}}}', '{{{{1.5}},{{NaN}}}}'),
        ({b}, -32768, -2147483648, -9223372036854775808, -9999999999.99,
         -0.00001, 'Infinity',
         '-Infinity', 'NaN', false,
         '', '', '     ', '',
         'infinity', '-infinity', 'infinity', '00:00:00',
         'ffffffff-ffff-ffff-ffff-ffffffffffff', '[]', 'null',
         '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}'),
        ({c}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL),
        ({d}, 0, 0, 0, 0, 0, '-Infinity',
         1.4e-45, 5e-324, NULL,
         'NULL', '\N', NULL, '\x',
         '1970-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '12:34:56.000001',
         NULL, '"just a string"', '[1, "two", {{"three": 3}}]',
         '{{NULL}}', '{{NULL}}', '{{NULL}}', NULL, NULL, NULL, NULL, '{{-0.0,5e-324}}',
         '{{{{7}}}}', NULL, '{{}}')"#,
        a = base + 1,
        b = base + 2,
        c = base + 3,
        d = base + 4,
    );
    client.batch_execute(&sql).await.expect("insert edge rows");
}

/// Streaming in binary mode (the default: every column of `typed` has a
/// binary decoder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_survives_snapshot_and_streaming() {
    every_type("types", true).await;
}

/// The same values streamed in text mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_survives_streaming_in_text_mode() {
    every_type("types_text", false).await;
}

async fn every_type(name: &str, binary: bool) {
    let client = pg().create_database(name).await;
    client.batch_execute(TYPED_DDL).await.unwrap();
    insert_edge_rows(&client, 0).await;

    let mut pipeline = Pipeline::with_source(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nbinary = {binary}\n",
            pg().url(name)
        ),
        "",
    );
    pipeline.start();
    // Snapshot path (COPY text).
    pipeline.wait_equal(&client, "typed").await;

    // Streaming path (pgoutput): the same values again, then updates that set
    // every column to the other edge row's values, and deletes.
    insert_edge_rows(&client, 10).await;
    client
        .batch_execute(
            "BEGIN;
             UPDATE typed t SET (i2, i4, i8, n, nbig, nfree, f4, f8, b, t, vc, c, by, d, ts, tstz, tm, u, j, jb,
                                 ai, at, an, ad, atz, ab, au, af8, m2, mt, mn) =
               (SELECT i2, i4, i8, n, nbig, nfree, f4, f8, b, t, vc, c, by, d, ts, tstz, tm, u, j, jb,
                       ai, at, an, ad, atz, ab, au, af8, m2, mt, mn FROM typed s WHERE s.id = 12)
             WHERE t.id = 11;
             DELETE FROM typed WHERE id = 13;
             COMMIT;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "typed").await;

    let mode = if binary {
        "mode=\"binary\""
    } else {
        "mode=\"text\""
    };
    assert!(pipeline.log(1).contains(mode), "{}", pipeline.log(1));
    let log = read_log(&pipeline.table_path("public", "typed"))
        .await
        .unwrap();
    let ops: Vec<(&str, String)> = log
        .iter()
        .map(|r| (r.op.as_str(), r.values["id"].to_string()))
        .collect();
    let snapshot: Vec<_> = ops.iter().filter(|(op, _)| *op == "r").collect();
    assert_eq!(snapshot.len(), 4, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|(op, _)| *op == "c").count(),
        4,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|(op, _)| *op == "u").count(),
        1,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|(op, _)| *op == "d").count(),
        1,
        "{ops:?}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));

    // The lake schema names each column's source type.
    let py = python_summary(&pipeline.table_path("public", "typed"));
    assert_eq!(py["rows"], log.len(), "{py}");
    assert_eq!(py["source_types"]["nbig"], "numeric(50,5)", "{py}");
    assert_eq!(
        py["source_types"]["tstz"], "timestamp with time zone",
        "{py}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_truncate_and_acks() {
    let client = pg().create_database("shop_tx").await;
    client
        .batch_execute(
            "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
             CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int, total numeric(10,2), note text);
             INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 50) g;
             INSERT INTO orders (customer_id, total) SELECT g % 50 + 1, g * 1.5 FROM generate_series(1, 200) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("shop_tx", &pg().url("shop_tx"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "orders").await;

    // One transaction touching two tables with several statements.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO customers (name) VALUES ('new');
             INSERT INTO orders (customer_id, total) VALUES (51, 10), (51, 20), (51, 30);
             UPDATE orders SET note = 'changed', total = total + 1 WHERE id <= 3;
             DELETE FROM orders WHERE id BETWEEN 4 AND 5;
             UPDATE customers SET name = 'renamed' WHERE id = 1;
             COMMIT;",
        )
        .await
        .unwrap();
    // Truncate inside a transaction, then new rows after it.
    client
        .batch_execute(
            "BEGIN;
             TRUNCATE orders;
             INSERT INTO orders (customer_id, total) VALUES (7, 70.5), (8, 80.25);
             COMMIT;
             INSERT INTO orders (customer_id, total) VALUES (9, 99.99);",
        )
        .await
        .unwrap();
    let before_last = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    client
        .batch_execute("UPDATE customers SET name = 'last' WHERE id = 2")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "orders").await;
    pipeline.wait_equal(&client, "customers").await;

    let orders = read_log(&pipeline.table_path("public", "orders"))
        .await
        .unwrap();
    let customers = read_log(&pipeline.table_path("public", "customers"))
        .await
        .unwrap();
    // The multi-statement transaction: one seq and txid across both tables,
    // ords strictly increasing in statement order.
    let first_tx: Vec<_> = orders
        .iter()
        .chain(customers.iter())
        .filter(|r| r.op != "r")
        .collect();
    let seq = orders.iter().find(|r| r.op == "c").unwrap().seq;
    let mut tx: Vec<_> = first_tx.iter().filter(|r| r.seq == seq).collect();
    tx.sort_by_key(|r| r.ord);
    let shape: Vec<(String, i64)> = tx.iter().map(|r| (r.op.clone(), r.ord)).collect();
    assert_eq!(
        shape,
        vec![
            ("c".into(), 1),
            ("c".into(), 2),
            ("c".into(), 3),
            ("c".into(), 4),
            ("u".into(), 5),
            ("u".into(), 6),
            ("u".into(), 7),
            ("d".into(), 8),
            ("d".into(), 9),
            ("u".into(), 10)
        ]
    );
    assert!(tx.iter().all(|r| r.txid.is_some() && r.txid == tx[0].txid));
    // Deletes under REPLICA IDENTITY DEFAULT carry the key.
    let delete = orders.iter().find(|r| r.op == "d").unwrap();
    assert_eq!(delete.values["id"], "4");
    assert_eq!(delete.values["total"], serde_json::Value::Null);
    // The truncate is one `t` row, before the rows inserted after it.
    let truncates: Vec<_> = orders.iter().filter(|r| r.op == "t").collect();
    assert_eq!(truncates.len(), 1);
    let after: Vec<_> = orders
        .iter()
        .filter(|r| (r.seq, r.ord) > (truncates[0].seq, truncates[0].ord))
        .collect();
    assert_eq!(after.len(), 3);
    // (_tw_seq, _tw_ord) never repeats.
    let mut marks: Vec<_> = orders.iter().map(|r| (r.seq, r.ord)).collect();
    marks.dedup();
    assert_eq!(marks.len(), orders.len());

    // SIGTERM: flush, commit, acknowledge, exit 0.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let confirmed_past_last = client
        .query_one(
            "SELECT confirmed_flush_lsn > $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'tidewater_shop_tx'",
            &[&before_last],
        )
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(
        confirmed_past_last,
        "the slot was not acknowledged past the last transaction"
    );

    // A restart with nothing new writes nothing twice: once it streams again,
    // a sentinel change lands and nothing else does.
    pipeline.start();
    let start = pipeline.starts;
    eventually(
        "the restarted daemon streams",
        Duration::from_secs(60),
        || {
            let streaming = pipeline
                .log(start)
                .contains("streaming from replication slot");
            async move { streaming.then_some(()).ok_or("not yet".to_string()) }
        },
    )
    .await;
    client
        .batch_execute("UPDATE customers SET name = 'sentinel' WHERE id = 3")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "customers").await;
    let customers_after = read_log(&pipeline.table_path("public", "customers"))
        .await
        .unwrap();
    assert_eq!(
        customers_after.len(),
        customers.len() + 1,
        "only the sentinel was added"
    );
    assert_eq!(pipeline.terminate(), 0);
    let again = read_log(&pipeline.table_path("public", "orders"))
        .await
        .unwrap();
    assert_eq!(again.len(), orders.len());

    // `status` shows the committed position per table.
    let mut cmd = crate::support::tidewater();
    cmd.args(["status", "--format", "json", "--config"])
        .arg(&pipeline.config);
    let out = crate::support::output_within(cmd, 60);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tables = status["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2, "{status}");
    assert!(tables.iter().all(|t| t["snapshot"] == "done"), "{status}");
    assert_eq!(status["source"]["slot"], "tidewater_shop_tx");
}

/// Reads a lake table with the Python `deltalake` package and queries it with
/// DuckDB over the Arrow table it returns.
pub(crate) fn python_summary(path: &std::path::Path) -> serde_json::Value {
    try_python_summary(path).unwrap_or_else(|e| panic!("{e}"))
}

/// [`python_summary`], its failure as an error.
pub(crate) fn try_python_summary(path: &std::path::Path) -> Result<serde_json::Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/read_lake.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3");
    if !out.status.success() {
        return Err(format!(
            "read_lake.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("read_lake.py output: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_command_then_run_continues_without_a_gap() {
    let client = pg().create_database("snap_cmd").await;
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, kind text, at timestamptz DEFAULT now());
             CREATE TABLE empty_one (id int PRIMARY KEY);
             INSERT INTO events (id, kind) SELECT g, 'k' || (g % 3) FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("snap_cmd", &pg().url("snap_cmd"), "");
    let snapshot = |pipeline: &Pipeline| {
        let mut cmd = crate::support::tidewater();
        cmd.args(["snapshot", "--config"]).arg(&pipeline.config);
        crate::support::output_within(cmd, 120)
    };
    let out = snapshot(&pipeline);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = read_log(&pipeline.table_path("public", "events"))
        .await
        .unwrap();
    assert_eq!(log.len(), 1000);
    assert!(log.iter().all(|r| r.op == "r"));
    // The empty table exists in the lake too, marked as snapshotted.
    assert!(read_log(&pipeline.table_path("public", "empty_one"))
        .await
        .unwrap()
        .is_empty());

    // Changes made between `snapshot` and `run` arrive through the kept slot.
    client
        .batch_execute(
            "INSERT INTO events (id, kind) VALUES (1001, 'late'); DELETE FROM events WHERE id = 1;",
        )
        .await
        .unwrap();
    let again = snapshot(&pipeline);
    assert_eq!(again.status.code(), Some(0), "a second snapshot is a no-op");
    pipeline.start();
    pipeline.wait_equal(&client, "events").await;
    assert_eq!(pipeline.terminate(), 0);
    let log = read_log(&pipeline.table_path("public", "events"))
        .await
        .unwrap();
    assert_eq!(
        log.len(),
        1002,
        "1000 snapshot rows, one insert, one delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_and_inherited_tables_land_under_their_own_names() {
    let client = pg().create_database("parts").await;
    client
        .batch_execute(
            "CREATE TABLE m (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
             CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             INSERT INTO m SELECT g, date '2024-06-01' + g, 'v' || g FROM generate_series(1, 300) g;
             CREATE TABLE parent (id int PRIMARY KEY, v text);
             CREATE TABLE child (extra int) INHERITS (parent);
             ALTER TABLE child ADD PRIMARY KEY (id);
             INSERT INTO parent VALUES (1, 'p');
             INSERT INTO child VALUES (2, 'c', 5);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("parts", &pg().url("parts"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "m").await;
    client
        .batch_execute(
            "INSERT INTO m VALUES (1000, '2024-02-02', 'new'), (1001, '2025-03-03', 'new');
             UPDATE m SET v = 'changed' WHERE id = 1;
             DELETE FROM m WHERE id = 300;
             INSERT INTO child VALUES (3, 'c3', 7);
             INSERT INTO parent VALUES (4, 'p4');",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "m").await;
    pipeline.wait_equal(&client, "parent").await;
    pipeline.wait_equal(&client, "child").await;
    assert!(
        !pipeline.table_path("public", "m_2024").exists(),
        "partitions must not become lake tables of their own"
    );
    let parent = read_log(&pipeline.table_path("public", "parent"))
        .await
        .unwrap();
    assert_eq!(
        parent.len(),
        2,
        "the parent's log holds only its own rows: {parent:?}"
    );
    assert_eq!(pipeline.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_never_streams_only_new_changes() {
    let client = pg().create_database("never").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'old' FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("never", &pg().url("never"), "");
    let text = std::fs::read_to_string(&pipeline.config).unwrap();
    std::fs::write(
        &pipeline.config,
        text.replace(
            "tables = [\"public.*\"]",
            "tables = [\"public.*\"]\nsnapshot = \"never\"",
        ),
    )
    .unwrap();
    pipeline.start();
    let slot_ready = || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tidewater_never' AND active",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    };
    eventually("the slot is streaming", Duration::from_secs(60), || async {
        slot_ready()
            .await
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;
    client
        .batch_execute("INSERT INTO t VALUES (51, 'new'); UPDATE t SET v = 'changed' WHERE id = 1;")
        .await
        .unwrap();
    let path = pipeline.table_path("public", "t");
    pipeline.wait_log_rows("t", 2).await;
    let log = read_log(&path).await.unwrap();
    let ops: Vec<&str> = log.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(ops, vec!["c", "u"]);
    // A restart continues the same slot instead of starting over.
    assert_eq!(pipeline.terminate(), 0);
    client
        .batch_execute("DELETE FROM t WHERE id = 2")
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_log_rows("t", 3).await;
    assert_eq!(pipeline.terminate(), 0);
}

/// WAL safety: a pipeline whose database is idle while another database on
/// the same server writes must not pin that WAL — the slot's confirmed
/// position follows the server (keepalives are acknowledged when nothing is
/// pending), and `status` reports the WAL the slot retains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_follows_the_servers_wal() {
    let client = pg().create_database("idle_wal").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("idle_wal", &pg().url("idle_wal"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let other = pg().create_database("idle_wal_busy").await;
    other
        .batch_execute(
            "CREATE TABLE junk (x text); \
             INSERT INTO junk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let target: String = other
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(
        "the idle pipeline's slot confirmed past the busy database's WAL",
        Duration::from_secs(120),
        || {
            let client = &client;
            let target = target.clone();
            async move {
                let row = client
                    .query_one(
                        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn, confirmed_flush_lsn::text \
                         FROM pg_replication_slots WHERE slot_name = 'tidewater_idle_wal'",
                        &[&target],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let caught_up: bool = row.get(0);
                let at: String = row.get(1);
                caught_up
                    .then_some(())
                    .ok_or(format!("confirmed {at}, server wrote up to {target}"))
            }
        },
    )
    .await;
    // The slot's restart point follows at the next running-transactions
    // record (a checkpoint writes one): the WAL it retains shrinks, and
    // `status` says how much it is.
    let config = pipeline.config.clone();
    eventually(
        "the slot retains less than 16 MiB",
        Duration::from_secs(120),
        || {
            let other = &other;
            let config = config.clone();
            async move {
                other
                    .batch_execute("CHECKPOINT")
                    .await
                    .map_err(|e| e.to_string())?;
                let status = output_within(
                    {
                        let mut cmd = tidewater();
                        cmd.args(["status", "--format", "json", "--config"])
                            .arg(&config);
                        cmd
                    },
                    60,
                );
                let report: serde_json::Value =
                    serde_json::from_slice(&status.stdout).map_err(|e| e.to_string())?;
                let retained = report["source"]["retained_wal_bytes"]
                    .as_i64()
                    .ok_or("no retained_wal_bytes in status")?;
                (retained < 16 * 1024 * 1024)
                    .then_some(())
                    .ok_or(format!("slot retains {retained} bytes"))
            }
        },
    )
    .await;
    assert_eq!(pipeline.terminate(), 0);
}

/// Mixed-case, unicode and path-like names: each lands in one directory of
/// its own inside the lake (a table called `..` must not climb out of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_land_inside_the_lake() {
    let client = pg().create_database("odd_names").await;
    client
        .batch_execute(
            r#"CREATE SCHEMA "Mixed Case";
               CREATE TABLE "Mixed Case"."We/ird ü" (id int PRIMARY KEY, "Größe" text);
               CREATE TABLE public.".." (id int PRIMARY KEY, v int);"#,
        )
        .await
        .unwrap();
    client
        .batch_execute(
            r#"INSERT INTO "Mixed Case"."We/ird ü" VALUES (1, 'a'), (2, 'b');
               INSERT INTO public.".." VALUES (1, 1);"#,
        )
        .await
        .unwrap();
    let source = format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\", \"Mixed Case.*\"]\n",
        pg().url("odd_names")
    );
    let mut pipeline = Pipeline::with_source("odd_names", &source, "");
    pipeline.start();
    let tables = [
        ("Mixed Case", "We/ird ü", r#""Mixed Case"."We/ird ü""#),
        ("public", "..", r#"public."..""#),
    ];
    let equal = |client: &'static Client| {
        let paths: Vec<(std::path::PathBuf, &'static str)> = tables
            .iter()
            .map(|(schema, table, sql)| (pipeline.table_path(schema, table), *sql))
            .collect();
        move || {
            let paths = paths.clone();
            async move {
                for (path, sql) in paths {
                    let log = read_log(&path).await?;
                    let lake = crate::support::lake::current_state(&log, "id");
                    let source = crate::support::lake::source_state(client, sql, "id").await;
                    crate::support::lake::compare(&source, &lake)?;
                }
                Ok(())
            }
        }
    };
    let client: &'static Client = Box::leak(Box::new(client));
    eventually(
        "odd names snapshotted",
        Duration::from_secs(90),
        equal(client),
    )
    .await;
    client
        .batch_execute(
            r#"UPDATE "Mixed Case"."We/ird ü" SET "Größe" = 'ä' WHERE id = 1;
               INSERT INTO public.".." VALUES (2, 2);"#,
        )
        .await
        .unwrap();
    eventually("odd names streamed", Duration::from_secs(90), equal(client)).await;
    // Nothing outside the pipeline's folder; `..` is a directory of its own.
    let base = pipeline.lake.join("odd_names");
    assert!(base.join("public").join("~2E.").join("_delta_log").is_dir());
    assert!(base
        .join("Mixed Case")
        .join("We~2Fird ü")
        .join("_delta_log")
        .is_dir());
    let top: Vec<String> = std::fs::read_dir(&pipeline.lake)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, vec!["odd_names".to_string()]);
    assert_eq!(pipeline.terminate(), 0);
}

/// A slot dropped behind the pipeline's back: the next start refuses to
/// stream with a gap, names the slot and the lake's position, and says how to
/// take a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_slot_is_a_clear_error() {
    let client = pg().create_database("slot_gone").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("slot_gone", &pg().url("slot_gone"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0);
    client
        .batch_execute("SELECT pg_drop_replication_slot('tidewater_slot_gone')")
        .await
        .unwrap();
    let output = output_within(
        {
            let mut cmd = tidewater();
            cmd.args(["run", "--config"]).arg(&pipeline.config);
            cmd
        },
        60,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("\"tidewater_slot_gone\" does not exist") && stderr.contains("re-snapshot"),
        "{stderr}"
    );
}

/// Domains land as their base type (typed, not text), named by the domain in
/// `tidewater.source_type`, through the snapshot and the stream alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_land_as_their_base_types() {
    let client = pg().create_database("domains").await;
    client
        .batch_execute(
            "CREATE DOMAIN positive_int AS int CHECK (VALUE > 0);
             CREATE DOMAIN amount AS numeric(10,2);
             CREATE DOMAIN short_text AS varchar(20);
             CREATE TABLE d (id int PRIMARY KEY, p positive_int, m amount, s short_text);
             INSERT INTO d VALUES (1, 5, 12.5, 'x'), (2, NULL, -0.01, NULL);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("domains", &pg().url("domains"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "d").await;
    client
        .batch_execute(
            "INSERT INTO d VALUES (3, 7, 99999999.99, 'y'); UPDATE d SET m = 1 WHERE id = 1",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "d").await;
    let table = pipeline.table_path("public", "d");
    for file in std::fs::read_dir(&table)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
    {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap();
        let schema = reader.schema();
        let field = |name: &str| schema.field_with_name(name).unwrap().clone();
        assert_eq!(field("p").data_type().to_string(), "Int32");
        assert_eq!(field("m").data_type().to_string(), "Decimal128(10, 2)");
        assert_eq!(field("s").data_type().to_string(), "Utf8");
        assert_eq!(
            field("p").metadata()["tidewater.source_type"],
            "positive_int"
        );
    }
    assert!(
        !pipeline.log(1).contains("schema changed"),
        "{}",
        pipeline.log(1)
    );
    assert_eq!(pipeline.terminate(), 0);
}

/// Unchanged TOAST values (pgoutput `u`): under REPLICA IDENTITY FULL the
/// lake gets the value from the old image; under the default identity from
/// the row's previous image — earlier in the same batch, or in the lake,
/// also after a crash. Never a NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_never_null() {
    toast_values_restored("toast", "").await;
}

/// The same restores from an Iceberg lake's change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_never_null_in_iceberg() {
    toast_values_restored("toast_ice", "format = \"iceberg\"\n").await;
}

async fn toast_values_restored(name: &str, format: &str) {
    let client = pg().create_database(name).await;
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             ALTER TABLE docs REPLICA IDENTITY FULL;
             CREATE TABLE notes (id int PRIMARY KEY, title text, body text);
             ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL;
             INSERT INTO docs SELECT g, 't' || g, repeat(md5(g::text), 300) FROM generate_series(1, 5) g;
             INSERT INTO notes SELECT g, 't' || g, repeat(md5(g::text), 300) FROM generate_series(1, 6) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(name, &pg().url(name), format);
    pipeline.start();
    pipeline.wait_equal(&client, "docs").await;
    pipeline.wait_equal(&client, "notes").await;
    // `body` (9 600 bytes, stored out of line) is not sent for these updates.
    client
        .batch_execute(
            "UPDATE docs SET title = 'changed' WHERE id <= 3;
             UPDATE notes SET title = 'changed' WHERE id <= 3;
             BEGIN;
             UPDATE notes SET body = repeat(md5('new'), 300) WHERE id = 4;
             UPDATE notes SET title = 'after the new body' WHERE id = 4;
             UPDATE notes SET title = 'twice' WHERE id = 4;
             COMMIT;
             UPDATE docs SET id = 100 WHERE id = 5;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "docs").await;
    pipeline.wait_equal(&client, "notes").await;
    // After a crash the previous image comes from the lake alone.
    pipeline.kill();
    client
        .batch_execute("UPDATE notes SET title = 'after the crash' WHERE id IN (4, 5)")
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_equal(&client, "notes").await;
    for table in ["docs", "notes"] {
        let log = read_log(&pipeline.table_path("public", table))
            .await
            .unwrap();
        let updates: Vec<_> = log.iter().filter(|r| r.op == "u").collect();
        assert!(updates.len() >= 3, "{table}: {} updates", updates.len());
        assert!(
            updates
                .iter()
                .all(|r| r.values["body"].as_str().is_some_and(|b| b.len() == 9600)),
            "{table}: an update without its body"
        );
    }
    assert_eq!(pipeline.terminate(), 0);
}

/// REPLICA IDENTITY USING INDEX: an unchanged TOAST value is restored from
/// the row's previous image found by the index's columns, as under the
/// default identity; deletes carry those columns. NOTHING: Postgres itself
/// refuses UPDATE and DELETE on a table published with them, so nothing
/// lossy reaches the lake; inserts stream on, and `check` names the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_index_and_nothing() {
    use crate::support::lake::{compare, current_state, source_state};
    let client = pg().create_database("identities").await;
    client
        .batch_execute(
            "CREATE TABLE by_index (id int PRIMARY KEY, code text NOT NULL, title text, body text);
             CREATE UNIQUE INDEX by_index_code ON by_index (code);
             ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
             ALTER TABLE by_index ALTER COLUMN body SET STORAGE EXTERNAL;
             INSERT INTO by_index SELECT g, 'c' || g, 't' || g, repeat(md5(g::text), 300)
               FROM generate_series(1, 5) g;
             CREATE TABLE nothing (id int PRIMARY KEY, v text);
             INSERT INTO nothing VALUES (1, 'a');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("identities", &pg().url("identities"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "nothing").await;
    // (Before the publication exists, `run` and `check` refuse a table
    // without identity, since publishing it would break its updates.)
    client
        .batch_execute("ALTER TABLE nothing REPLICA IDENTITY NOTHING")
        .await
        .unwrap();
    // `check` warns about both identities, with the fix.
    let out = output_within(
        {
            let mut cmd = tidewater();
            cmd.args(["check", "--config"]).arg(&pipeline.config);
            cmd
        },
        60,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("public.by_index has columns stored out of line")
            && text.contains("public.nothing has REPLICA IDENTITY NOTHING")
            && text.contains("REPLICA IDENTITY FULL"),
        "{text}"
    );
    let path = pipeline.table_path("public", "by_index");
    let equal_by_code = || {
        let path = path.clone();
        let client = &client;
        async move {
            let log = read_log(&path).await?;
            compare(
                &source_state(client, "public.by_index", "code").await,
                &current_state(&log, "code"),
            )
        }
    };
    eventually(
        "lake by_index equals the source",
        Duration::from_secs(90),
        equal_by_code,
    )
    .await;
    // `body` (9 600 bytes out of line) is not sent for these updates.
    client
        .batch_execute(
            "UPDATE by_index SET title = 'changed' WHERE id <= 3;
             DELETE FROM by_index WHERE id = 5;",
        )
        .await
        .unwrap();
    eventually(
        "lake by_index equals the source",
        Duration::from_secs(90),
        equal_by_code,
    )
    .await;
    let log = read_log(&path).await.unwrap();
    let updates: Vec<_> = log.iter().filter(|r| r.op == "u").collect();
    assert_eq!(updates.len(), 3);
    assert!(updates
        .iter()
        .all(|r| r.values["body"].as_str().is_some_and(|b| b.len() == 9600)));
    let delete = log.iter().find(|r| r.op == "d").expect("the delete");
    assert_eq!(delete.values["code"], "c5", "{delete:?}");
    assert!(
        delete.values["title"].is_null(),
        "only the identity columns: {delete:?}"
    );

    for statement in ["UPDATE nothing SET v = 'b'", "DELETE FROM nothing"] {
        let error = client.batch_execute(statement).await.unwrap_err();
        assert!(
            format!("{error:?}").contains("does not have a replica identity"),
            "{statement}: {error:?}"
        );
    }
    client
        .batch_execute("INSERT INTO nothing VALUES (2, 'b')")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "nothing").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
