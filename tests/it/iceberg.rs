//! The lake in Apache Iceberg (`sink.format = "iceberg"`): the Delta lake's
//! contract on Iceberg tables in the default SQLite catalog — every value
//! lands as the source has it, read back by engines tidewater did not write
//! (pyiceberg, DuckDB's iceberg extension); commits carry the marks a
//! restart reads back; another writer's commits are built upon.

use std::path::Path;

use serde_json::Value;

use crate::pg_roundtrip::{random_row, Rng, DDL};
use crate::support::lake::{self, read_iceberg_with, read_log, LogRow};
use crate::support::{pg, Pipeline};

/// The source's current state compared with what `rows` (a change log read
/// by some reader) says it is.
async fn compare_with_source(
    client: &tokio_postgres::Client,
    table: &str,
    rows: &[LogRow],
    reader: &str,
) {
    let mut lake = lake::current_state(rows, "id");
    let mut source = lake::source_state(client, table, "id").await;
    let decimals = lake::decimal_columns(client, table).await;
    lake::trim_decimals(&mut lake, &decimals);
    lake::trim_decimals(&mut source, &decimals);
    if let Err(diff) = lake::compare(&source, &lake) {
        panic!("{reader} reads the Iceberg table unlike the source:\n{diff}");
    }
}

/// Both independent readers see exactly the change log tidewater wrote.
async fn every_reader_agrees(path: &Path, client: &tokio_postgres::Client, table: &str) -> Value {
    let ours = read_log(path).await.expect("read with tidewater's reader");
    let mut summary = Value::Null;
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, read_summary) = read_iceberg_with(path, reader)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), ours.len(), "{reader}: rows of the change log");
        for (theirs, mine) in rows.iter().zip(&ours) {
            assert_eq!(
                (theirs.seq, theirs.ord, &theirs.op),
                (mine.seq, mine.ord, &mine.op),
                "{reader}: marks"
            );
        }
        compare_with_source(client, table, &rows, reader).await;
        summary = read_summary;
    }
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_type_lands_in_iceberg_and_other_engines_read_it_as_the_source_has_it() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("iceberg round-trip seed {seed}");
    let client = pg().create_database("ice_types").await;
    client.batch_execute(DDL).await.unwrap();
    let mut rng = Rng(seed);
    let insert = |rows: Vec<Vec<String>>| {
        let values: Vec<String> = rows.iter().map(|r| format!("({})", r.join(", "))).collect();
        format!("INSERT INTO r VALUES {}", values.join(", "))
    };
    let first: Vec<_> = (1..=100).map(|id| random_row(&mut rng, id)).collect();
    client
        .batch_execute(&insert(first))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    // Arrays of the types Iceberg narrows or holds natively.
    client
        .batch_execute(
            "CREATE TABLE arr (id int PRIMARY KEY, au uuid[], atz timestamptz[], an numeric(8,3)[],
                               ai2 int2[], ad date[]);
             INSERT INTO arr VALUES
               (1, ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, NULL],
                   ARRAY['2024-02-29 12:00:00.123456+00'::timestamptz], ARRAY[1.5, NULL, -2.125]::numeric(8,3)[],
                   ARRAY[-32768, 32767]::int2[], ARRAY['0001-01-01'::date, '9999-12-31']),
               (2, ARRAY[]::uuid[], NULL, ARRAY[]::numeric(8,3)[], NULL, NULL);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "ice_types",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_types")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "r").await;
    // Streamed: inserts, rows replaced, deletes (REPLICA IDENTITY DEFAULT:
    // no unchanged TOAST values in these small rows).
    let second: Vec<_> = (101..=200).map(|id| random_row(&mut rng, id)).collect();
    client.batch_execute(&insert(second)).await.unwrap();
    for id in (1..=200).step_by(9) {
        let row = random_row(&mut rng, id);
        client
            .batch_execute(&format!(
                "DELETE FROM r WHERE id = {id}; {}",
                insert(vec![row])
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute("DELETE FROM r WHERE id % 13 = 0")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "r").await;
    pipeline.wait_equal(&client, "arr").await;
    every_reader_agrees(&pipeline.table_path("public", "arr"), &client, "public.arr").await;
    let path = pipeline.table_path("public", "r");
    let summary = every_reader_agrees(&path, &client, "public.r").await;

    // Each snapshot carries the mark; the table's properties mirror it.
    let snapshots = summary["snapshots"].as_array().expect("snapshots");
    assert!(snapshots.len() >= 2, "{summary}");
    for snapshot in snapshots {
        let s = &snapshot["summary"];
        assert_eq!(s["tidewater.pipeline"], "ice_types", "{snapshot}");
        assert!(s["tidewater.seq"]
            .as_str()
            .is_some_and(|v| v.parse::<u64>().is_ok()));
        assert!(s["tidewater.position"].as_str().is_some());
    }
    let properties = &summary["properties"];
    assert_eq!(properties["tidewater.source_table"], "public.r");
    let last = &snapshots.last().unwrap()["summary"];
    assert_eq!(properties["tidewater.ice_types.seq"], last["tidewater.seq"]);
    // Source types in the field docs.
    let schema = summary["schema"].as_array().expect("schema");
    let doc = |name: &str| {
        schema
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["doc"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(doc("u").contains("uuid"), "{}", doc("u"));
    assert!(
        doc("tm").contains("microseconds since midnight"),
        "{}",
        doc("tm")
    );
    assert!(doc("nw").contains("numeric(40,10)"), "{}", doc("nw"));
    let ty = |name: &str| {
        schema
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["type"].clone())
            .unwrap_or_default()
    };
    assert_eq!(ty("u"), "uuid");
    assert_eq!(ty("tz"), "timestamptz");
    assert_eq!(ty("ts"), "timestamp");
    assert_eq!(ty("i2"), "int");
    assert_eq!(ty("n"), "decimal(12, 2)");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_marks_and_another_writers_commits_are_kept() {
    let client = pg().create_database("ice_marks").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n int);
             INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "ice_marks",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_marks")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    client
        .batch_execute("UPDATE t SET v = 'x' WHERE id <= 10")
        .await
        .unwrap();
    pipeline.wait_log_rows("t", 60).await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));

    // A foreign writer appends (pyiceberg), tidewater stopped.
    let path = pipeline.table_path("public", "t");
    let lake_dir = pipeline.lake.clone();
    let (namespace, name) = tidewater_lake::iceberg::identifier(
        "ice_marks",
        &tidewater_core::TableId::new("public", "t"),
    );
    let output = std::process::Command::new(crate::support::readers_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/iceberg_append.py"))
        .args([
            "--catalog-uri",
            &format!("sqlite:///{}", lake_dir.join("tidewater_catalog.db").display()),
        ])
        .args(["--warehouse", &format!("file://{}", lake_dir.display())])
        .args(["--catalog-name", "tidewater"])
        .args(["--table", &format!("{namespace}.{name}")])
        .args([
            "--rows",
            r#"[{"id": 9999, "v": "foreign", "_tw_op": "c", "_tw_seq": 0, "_tw_ord": 0, "_tw_position": "pyiceberg", "_tw_commit_ts": "2026-01-01T00:00:00"}]"#,
        ])
        .output()
        .expect("run iceberg_append.py");
    assert!(
        output.status.success(),
        "pyiceberg append: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Changes while stopped, then a restart: nothing twice, nothing lost,
    // the foreign row kept.
    client
        .batch_execute("INSERT INTO t VALUES (51, 'new', 51); DELETE FROM t WHERE id = 2")
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_log_rows("t", 63).await;
    let log = read_log(&path).await.unwrap();
    assert_eq!(
        log.iter().filter(|r| r.position == "pyiceberg").count(),
        1,
        "the foreign writer's row is kept"
    );
    let ours: Vec<LogRow> = log
        .into_iter()
        .filter(|r| r.position != "pyiceberg")
        .collect();
    lake::assert_each_change_once(&ours);
    assert_eq!(lake::count_op(&ours, "r"), 50);
    assert_eq!(lake::count_op(&ours, "u"), 10);
    assert_eq!(lake::count_op(&ours, "c"), 1);
    assert_eq!(lake::count_op(&ours, "d"), 1);
    compare_with_source(&client, "public.t", &ours, "tidewater's reader").await;
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, _) = read_iceberg_with(&path, reader).await.unwrap();
        assert_eq!(rows.len(), 63, "{reader}");
    }
    let status = pipeline.status_json();
    let table = status["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["table"] == "public.t"))
        .expect("status of public.t");
    assert_eq!(table["state"], "streaming", "{status}");
    assert_eq!(table["snapshot"], "done", "{status}");
    assert_eq!(table["rows"], 63, "{status}");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// The SQL catalog on Postgres, shared: tidewater registers and commits
/// there, pyiceberg and DuckDB find the tables through the same catalog
/// rows; two pipelines share one catalog database under one catalog name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_catalog_is_shared_with_pyiceberg() {
    use crate::support::lake::read_iceberg_in;
    let catalog_db = "ice_catalog";
    pg().create_database(catalog_db).await;
    let client = pg().create_database("ice_pgcat").await;
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "ice_pgcat",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_pgcat")
        ),
        &format!(
            "[sink.catalog]\nuri = \"{}\"\nname = \"shared\"\n",
            pg().url(catalog_db)
        ),
    );
    pipeline.start();
    let path = pipeline.table_path("public", "t");
    let catalog = tidewater_lake::SqlCatalog::new(
        tidewater_lake::SqlBackend::Postgres(tidewater_endpoint::url::SecretUrl::new(
            pg().url(catalog_db),
        )),
        "shared",
    );
    let rows_in_lake = |n: usize| wait_iceberg_rows(&path, &catalog, n, 60);
    rows_in_lake(20).await;
    client
        .batch_execute("UPDATE t SET v = 'x' WHERE id <= 5; DELETE FROM t WHERE id = 20")
        .await
        .unwrap();
    rows_in_lake(26).await;
    assert!(
        !pipeline.lake.join("tidewater_catalog.db").exists(),
        "no SQLite catalog when a Postgres one is named"
    );
    let uri = pg()
        .url(catalog_db)
        .replace("postgres://", "postgresql+psycopg2://");
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, summary) = read_iceberg_in(&path, reader, &uri, "shared")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 26, "{reader}: {summary}");
        compare_with_source(&client, "public.t", &rows, reader).await;
    }
    // The catalog rows are pyiceberg's layout: one per table, namespace
    // `<pipeline>_<schema>`.
    let catalog_client = pg().client(catalog_db).await;
    let rows = catalog_client
        .query(
            "SELECT table_namespace, table_name, iceberg_type FROM iceberg_tables \
             WHERE catalog_name = 'shared'",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        names,
        vec![("ice_pgcat_public".into(), "t".into(), Some("TABLE".into()))]
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// The Iceberg REST catalog test server (tests/support/iceberg_rest.py)
/// over a SQLite SQL catalog in `dir`, catalog name `rest`.
struct RestServer {
    child: std::process::Child,
    port: u16,
    db: std::path::PathBuf,
}

impl RestServer {
    fn start(dir: &Path, warehouse: &Path) -> RestServer {
        RestServer::start_with(dir, warehouse, &[])
    }

    fn start_with(dir: &Path, warehouse: &Path, extra: &[&str]) -> RestServer {
        use std::io::BufRead;
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join("rest_catalog.db");
        let mut child = std::process::Command::new(crate::support::readers_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/iceberg_rest.py"))
            .args(["--port", "0"])
            .args(["--catalog-uri", &format!("sqlite:///{}", db.display())])
            .args(["--warehouse", &format!("file://{}", warehouse.display())])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.join("rest.log")).unwrap())
            .spawn()
            .expect("start the REST catalog server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("REST server said {line:?}"));
        RestServer { child, port, db }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the server's fault counters (see iceberg_rest.py).
    async fn faults(&self, faults: Value) -> Value {
        let client = reqwest_free_post(self.port, "/_test/faults", &faults.to_string()).await;
        serde_json::from_str(&client).unwrap_or(Value::Null)
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request (the tests have no HTTP client crate).
async fn reqwest_free_post(port: u16, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the REST server");
    let method = if body.is_empty() { "GET" } else { "POST" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Through an Iceberg REST catalog: tables created and committed over the
/// REST protocol (the server writes the metadata), readable by pyiceberg
/// and DuckDB; commits whose answer is lost (500 after applying, a dropped
/// connection) or refused (503) land exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_rest_catalog_with_lost_and_refused_answers_each_change_lands_once() {
    use crate::support::lake::{read_iceberg_in, read_iceberg_log_in};
    let client = pg().create_database("ice_rest").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let dir = crate::support::temp_dir("tidewater-ice-rest");
    let mut pipeline = Pipeline::with_sink(
        "ice_rest",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_rest")
        ),
        |lake| {
            // The server is started below; its port goes in by placeholder.
            format!(
                "[sink]\ntype = \"lake\"\nuri = \"file://{}\"\nflush_interval_ms = 200\n\
                 format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"${{ICE_REST_URI}}\"\n",
                lake.display()
            )
        },
    );
    let server = RestServer::start(&dir, &pipeline.lake);
    pipeline.env.push(("ICE_REST_URI".into(), server.uri()));
    pipeline.start();
    let path = pipeline.table_path("public", "t");
    let catalog = tidewater_lake::SqlCatalog::new(
        tidewater_lake::SqlBackend::Sqlite(server.db.clone()),
        "rest",
    );
    let rows_in_lake = |n: usize| wait_iceberg_rows(&path, &catalog, n, 90);
    rows_in_lake(30).await;
    // Each kind of bad answer, one commit each.
    server
        .faults(serde_json::json!({"reject_commits": 1, "fail_commits": 1, "drop_commits": 1}))
        .await;
    for (i, statement) in [
        "UPDATE t SET v = 'a' WHERE id <= 3",
        "INSERT INTO t VALUES (31, 'new')",
        "DELETE FROM t WHERE id = 30",
        "UPDATE t SET v = 'b' WHERE id = 4",
    ]
    .iter()
    .enumerate()
    {
        client.batch_execute(statement).await.unwrap();
        // One transaction per flush, so each fault meets its own commit.
        rows_in_lake(30 + [3, 4, 5, 6][i]).await;
    }
    let faults = server.faults(serde_json::json!({})).await;
    assert_eq!(faults["commits_rejected"], 1, "{faults}");
    assert_eq!(faults["commits_failed"], 1, "{faults}");
    assert_eq!(faults["commits_dropped"], 1, "{faults}");
    let log = read_iceberg_log_in(&path, catalog.clone()).await.unwrap();
    lake::assert_each_change_once(&log);
    compare_with_source(&client, "public.t", &log, "tidewater's reader").await;
    let uri = format!("sqlite:///{}", server.db.display());
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, _) = read_iceberg_in(&path, reader, &uri, "rest").await.unwrap();
        assert_eq!(rows.len(), 36, "{reader}");
        compare_with_source(&client, "public.t", &rows, reader).await;
    }
    // A restart reads the marks back through the REST catalog.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    client
        .batch_execute("INSERT INTO t VALUES (32, 'after')")
        .await
        .unwrap();
    pipeline.start();
    rows_in_lake(37).await;
    lake::assert_each_change_once(&read_iceberg_log_in(&path, catalog).await.unwrap());
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

const MYSQL_GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/mysql-iceberg-type-mapping.json"
);

/// Every MySQL/MariaDB type into Iceberg, snapshot then stream: pyiceberg
/// and DuckDB read what the source holds, value by value; the Iceberg
/// columns (type, doc) are the golden file `schemas/mysql-iceberg-type-mapping.json`
/// (regenerate with `TIDEWATER_BLESS=1 cargo test mysql_every_type_into_iceberg`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_every_type_into_iceberg_reads_as_the_source_has_it() {
    use crate::mysql::{exec, type_rows, TYPES_DDL};
    use crate::support::mariadb::{decimal_columns_mysql, maria, source_state_mysql};
    let server = maria();
    let mut conn = server.create_database("my_ice_types").await;
    exec(&mut conn, "SET SESSION sql_mode = ''").await;
    exec(&mut conn, TYPES_DDL).await;
    exec(
        &mut conn,
        &format!("INSERT INTO types VALUES {}", type_rows(0)),
    )
    .await;
    let mut pipeline = Pipeline::iceberg("my_ice_types", &server.source_toml("my_ice_types"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_ice_types", "types", "k")
        .await;
    exec(
        &mut conn,
        &format!("INSERT INTO types VALUES {}", type_rows(10)),
    )
    .await;
    exec(
        &mut conn,
        "UPDATE types SET vc = 'changed', mi = -1, d2 = -0.000000000000000000000000000001, \
         tm6 = '-12:34:56.789012', st = 'b,d', e = NULL WHERE k IN (1, 11)",
    )
    .await;
    exec(&mut conn, "DELETE FROM types WHERE k IN (0, 12)").await;
    pipeline
        .wait_equal_mysql(&mut conn, "my_ice_types", "types", "k")
        .await;
    let path = pipeline.table_path("my_ice_types", "types");
    let ours = read_log(&path).await.unwrap();
    let mut summary = Value::Null;
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, read) = read_iceberg_with(&path, reader)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), ours.len(), "{reader}");
        let mut lake = lake::current_state(&rows, "k");
        let mut source = source_state_mysql(&mut conn, "my_ice_types.types", "k").await;
        let decimals = decimal_columns_mysql(&mut conn, "my_ice_types.types").await;
        lake::trim_decimals(&mut lake, &decimals);
        lake::trim_decimals(&mut source, &decimals);
        if let Err(diff) = lake::compare(&source, &lake) {
            panic!("{reader} reads the Iceberg table unlike MariaDB:\n{diff}");
        }
        summary = read;
    }
    let mut out = String::from("[\n");
    let fields: Vec<&Value> = summary["schema"]
        .as_array()
        .expect("schema")
        .iter()
        .filter(|f| !f["name"].as_str().unwrap_or_default().starts_with("_tw_"))
        .collect();
    for (i, field) in fields.iter().enumerate() {
        out.push_str(&format!(
            "  {{\"column\": {}, \"iceberg\": {}, \"doc\": {}}}{}\n",
            field["name"],
            field["type"],
            field["doc"],
            if i + 1 < fields.len() { "," } else { "" }
        ));
    }
    out.push_str("]\n");
    if std::env::var_os("TIDEWATER_BLESS").is_some() {
        std::fs::write(MYSQL_GOLDEN, &out).unwrap();
    }
    let golden = std::fs::read_to_string(MYSQL_GOLDEN).unwrap_or_default();
    assert_eq!(
        golden, out,
        "schemas/mysql-iceberg-type-mapping.json differs from the lake: review, then TIDEWATER_BLESS=1 cargo test mysql_every_type_into_iceberg"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// Schema changes while streaming into a day-partitioned Iceberg table:
/// added columns, the widenings Iceberg does in place (int → bigint, real →
/// double, numeric precision), a change it cannot (numeric scale, text →
/// integer) into a versioned column; pyiceberg and DuckDB read every row as
/// the source has it, old files through the new schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_while_streaming_into_a_partitioned_table() {
    let client = pg().create_database("ice_evolve").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, n int, r real, m numeric(5,2), s numeric(6,2), c text);
             INSERT INTO t VALUES (1, 1, 1.5, 1.25, 2.50, '10'), (2, 2, 2.5, 2.25, 3.50, '20');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "ice_evolve",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_evolve")
        ),
        "partitioning = \"commit_date\"\n",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    for (i, step) in [
        "ALTER TABLE t ADD COLUMN added text; INSERT INTO t VALUES (3, 3, 3.5, 3.25, 4.50, '30', 'x')",
        "ALTER TABLE t ALTER COLUMN n TYPE bigint; INSERT INTO t VALUES (4, 5000000000, 4.5, 4.25, 5.50, '40', 'y')",
        "ALTER TABLE t ALTER COLUMN r TYPE double precision; UPDATE t SET r = 0.1 WHERE id = 1",
        "ALTER TABLE t ALTER COLUMN m TYPE numeric(12,2); UPDATE t SET m = 1234567890.12 WHERE id = 2",
        "ALTER TABLE t ALTER COLUMN s TYPE numeric(8,4); UPDATE t SET s = 1.2345 WHERE id = 3",
        "ALTER TABLE t ALTER COLUMN c TYPE int USING c::int; UPDATE t SET c = 99 WHERE id = 4",
    ]
    .iter()
    .enumerate()
    {
        client.batch_execute(step).await.unwrap();
        pipeline.wait_equal(&client, "t").await;
        eprintln!("step {i} landed");
    }
    let path = pipeline.table_path("public", "t");
    let summary = every_reader_agrees(&path, &client, "public.t").await;
    let schema = summary["schema"].as_array().expect("schema");
    let field = |name: &str| {
        schema
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no column {name}: {summary}"))
    };
    // Widened in place: the same field id, the wider type.
    assert_eq!(field("n")["type"], "long");
    assert_eq!(field("r")["type"], "double");
    assert_eq!(field("m")["type"], "decimal(12, 2)");
    assert_eq!(field("n")["id"], 2, "kept its id");
    // Not widenable in place: a versioned column.
    assert_eq!(field("s")["type"], "decimal(6, 2)");
    assert_eq!(field("s__v2")["type"], "decimal(8, 4)");
    assert_eq!(field("c")["type"], "string");
    assert_eq!(field("c__v2")["type"], "int");
    assert_eq!(field("added")["type"], "string");
    // Partitioned by day(_tw_commit_ts), and the files say so.
    let spec = summary["partition_spec"].as_array().expect("spec");
    assert_eq!(spec.len(), 1, "{summary}");
    assert_eq!(spec[0]["name"], "_tw_commit_date");
    assert_eq!(spec[0]["transform"], "day");
    let data = path.join("data");
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.is_empty());
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// An Iceberg lake on S3 (moto behind the fault proxy; the catalog on the
/// harness Postgres): connections dropped, 503 and 500 answers, delays and
/// lost answers while changes stream (and current-state merges run); once
/// the faults stop the table equals the source, each change once, its
/// current-state table equals the source one row per key, and pyiceberg and
/// DuckDB read both from S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iceberg_lake_on_s3_survives_network_faults() {
    use crate::support::lake::{read_iceberg_by, read_iceberg_store};
    use crate::support::s3::{s3, Fault, FaultProxy, ACCESS_KEY, SECRET_KEY};
    let server = s3();
    server.create_bucket("tw-ice");
    let proxy = FaultProxy::start(server.port).await;
    let catalog_db = "s3ice_catalog";
    pg().create_database(catalog_db).await;
    let client = pg().create_database("s3ice").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
             INSERT INTO t SELECT g, 'v' || g, g / 4.0 FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let endpoint = proxy.endpoint();
    let mut pipeline = Pipeline::with_sink(
        "s3ice",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("s3ice")
        ),
        |_| {
            format!(
                "[sink]\ntype = \"lake\"\nuri = \"s3://tw-ice/lake\"\nflush_interval_ms = 200\n\
                 format = \"iceberg\"\ncurrent_state = true\ncurrent_state_interval_ms = 500\n\
                 [sink.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n\
                 [sink.catalog]\nuri = \"{}\"\n",
                pg().url(catalog_db)
            )
        },
    );
    pipeline.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    pipeline.start();
    let table = tidewater_core::TableId::new("public", "t");
    let read = || {
        let store = tidewater_lake::LakeStore::open(tidewater_lake::LakeLocation::S3 {
            url: url::Url::parse("s3://tw-ice/lake").unwrap(),
            options: crate::support::s3::storage_options(&server.endpoint()),
        })
        .unwrap();
        let catalog = tidewater_lake::SqlCatalog::new(
            tidewater_lake::SqlBackend::Postgres(tidewater_endpoint::url::SecretUrl::new(
                pg().url(catalog_db),
            )),
            "tidewater",
        );
        let table = table.clone();
        async move { read_iceberg_store(store, "s3ice", &table, catalog).await }
    };
    // The current-state table (`s3ice_current_public.t`), read the same way.
    let read_current = || {
        let store = tidewater_lake::LakeStore::open(tidewater_lake::LakeLocation::S3 {
            url: url::Url::parse("s3://tw-ice/lake").unwrap(),
            options: crate::support::s3::storage_options(&server.endpoint()),
        })
        .unwrap();
        let catalog = tidewater_lake::SqlCatalog::new(
            tidewater_lake::SqlBackend::Postgres(tidewater_endpoint::url::SecretUrl::new(
                pg().url(catalog_db),
            )),
            "tidewater",
        );
        let table = table.clone();
        async move {
            let rows = read_iceberg_store(store, "s3ice.current", &table, catalog).await?;
            if lake::current_state(&rows, "id").len() != rows.len() {
                return Err(format!("{} rows, not one per key", rows.len()));
            }
            Ok(rows)
        }
    };
    s3_equal(&mut pipeline, &client, &read).await;
    let faults = [
        Fault::Drop,
        Fault::Unavailable,
        Fault::ServerError,
        Fault::Delay,
        Fault::LoseAnswer,
    ];
    let mut nudges = 0;
    for (round, fault) in faults.iter().enumerate() {
        proxy.set(*fault);
        for i in 0..6 {
            let id = 10_000 + round * 100 + i;
            client
                .batch_execute(&format!(
                    "INSERT INTO t VALUES ({id}, 'during {fault:?}', {i});
                     UPDATE t SET v = 'changed in round {round}' WHERE id = {};
                     DELETE FROM t WHERE id = {};",
                    round * 10 + i + 1,
                    500 + round * 10 + i
                ))
                .await
                .unwrap();
            // Spreads the changes over several flushes: the load, not a wait.
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        let held = std::time::Instant::now();
        while proxy.hits(*fault) == 0 && held.elapsed() < std::time::Duration::from_secs(30) {
            client
                .batch_execute(&format!(
                    "INSERT INTO t VALUES ({}, 'nudge', 0)",
                    50_000 + nudges
                ))
                .await
                .unwrap();
            nudges += 1;
            // The polling interval of this wait.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        proxy.set(Fault::None);
        // A moment without faults between two: the load's shape.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    client
        .batch_execute("INSERT INTO t VALUES (99999, 'after the faults', 1)")
        .await
        .unwrap();
    s3_equal(&mut pipeline, &client, &read).await;
    let log = read().await.unwrap();
    lake::assert_each_change_once(&log);
    // The current-state merges met the same faults and caught up.
    s3_equal(&mut pipeline, &client, &read_current).await;
    for fault in faults {
        assert!(proxy.hits(fault) > 0, "no request met {fault:?}");
    }
    let uri = pg()
        .url(catalog_db)
        .replace("postgres://", "postgresql+psycopg2://");
    let properties = vec![
        format!("s3.endpoint={}", server.endpoint()),
        format!("s3.access-key-id={ACCESS_KEY}"),
        format!("s3.secret-access-key={SECRET_KEY}"),
        "s3.region=us-east-1".to_string(),
    ];
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, _) = read_iceberg_by(
            "s3ice",
            &table,
            reader,
            &uri,
            "tidewater",
            "s3://tw-ice/lake",
            &properties,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), log.len(), "{reader}");
        compare_with_source(&client, "public.t", &rows, reader).await;
        let (current, _) = read_iceberg_by(
            "s3ice.current",
            &table,
            reader,
            &uri,
            "tidewater",
            "s3://tw-ice/lake",
            &properties,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            lake::current_state(&current, "id").len(),
            current.len(),
            "{reader}: one row per key"
        );
        compare_with_source(&client, "public.t", &current, reader).await;
    }
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// Waits until what `read` reads equals the source's `public.t`.
async fn s3_equal<F, Fut>(pipeline: &mut Pipeline, client: &tokio_postgres::Client, read: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<LogRow>, String>>,
{
    let mut attempts = 0;
    crate::support::eventually(
        "the S3 Iceberg table equals the source",
        std::time::Duration::from_secs(120),
        || {
            attempts += 1;
            if attempts % 8 == 0 {
                pipeline.assert_running();
            }
            async move {
                let log = read().await?;
                lake::compare(
                    &lake::source_state(client, "public.t", "id").await,
                    &lake::current_state(&log, "id"),
                )
            }
        },
    )
    .await;
}

/// `check` proves the Iceberg catalog usable, naming it and the fix when
/// it is not (a catalog database that does not answer; a REST catalog
/// that does not answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_an_unusable_catalog() {
    pg().create_database("ice_check").await;
    let dead = crate::support::free_port();
    for catalog in [
        format!("uri = \"postgres://postgres@127.0.0.1:{dead}/nothing\"\n"),
        format!("type = \"rest\"\nuri = \"http://127.0.0.1:{dead}\"\n"),
    ] {
        let pipeline = Pipeline::iceberg(
            "ice_check",
            &format!(
                "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
                pg().url("ice_check")
            ),
            &format!("[sink.catalog]\n{catalog}"),
        );
        let mut cmd = crate::support::tidewater();
        cmd.args(["check", "--config"]).arg(&pipeline.config);
        let out = crate::support::output_within(cmd, 60);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(
            text.contains("the Iceberg catalog is not usable") && text.contains("sink.catalog.uri"),
            "{catalog}: {text}"
        );
    }
}

/// Live data files of an Iceberg table of the lake's default catalog, as
/// tidewater's own reader lists them.
async fn iceberg_live_files(path: &Path, pipeline: &str, table: &str) -> usize {
    let lake_dir = path.ancestors().nth(3).expect("lake root");
    let catalog = tidewater_lake::SqlCatalog::new(
        tidewater_lake::SqlBackend::Sqlite(lake_dir.join("tidewater_catalog.db")),
        "tidewater",
    );
    iceberg_live_files_in(path, pipeline, table, catalog).await
}

/// [`iceberg_live_files`] through `catalog`.
async fn iceberg_live_files_in(
    path: &Path,
    pipeline: &str,
    table: &str,
    catalog: tidewater_lake::SqlCatalog,
) -> usize {
    let lake_dir = path.ancestors().nth(3).expect("lake root");
    let mut sink = tidewater_lake::IcebergSink::new(
        tidewater_lake::LakeStore::local(lake_dir),
        pipeline,
        catalog,
    );
    sink.data_files(&tidewater_core::TableId::new("public", table))
        .await
        .map(|files| files.len())
        .unwrap_or(usize::MAX)
}

/// Parquet files under the table's `data/`, live or not.
fn iceberg_files_on_disk(path: &Path) -> usize {
    std::fs::read_dir(path.join("data"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                .count()
        })
        .unwrap_or(0)
}

/// The Delta maintenance keys drive Iceberg tables too: while the stream
/// commits a small file a flush into a table partitioned by commit date
/// (and a column is added and widened int → bigint), compaction folds them into `replace` snapshots, expiry drops
/// the old snapshots and the files only they reached; the table ends equal
/// to the source in pyiceberg and DuckDB, each change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_compacted_and_old_snapshots_expired_while_streaming() {
    use crate::support::eventually;
    use std::time::Duration;
    let client = pg().create_database("ice_tidy").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n int);
             INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "ice_tidy",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_tidy")
        ),
        "compaction_interval_ms = 500\ncompaction_min_files = 4\n\
         target_file_size_bytes = 1048576\nvacuum_interval_ms = 1000\nvacuum_retention_hours = 0\n\
         partitioning = \"commit_date\"\n",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let path = pipeline.table_path("public", "t");
    let mut most_live = 0;
    for round in 0..40 {
        let widen = if round == 20 {
            "ALTER TABLE t ALTER COLUMN n TYPE bigint;"
        } else {
            ""
        };
        client
            .batch_execute(&format!(
                "{widen}
                 INSERT INTO t VALUES ({id}, 'new', {big});
                 UPDATE t SET v = 'round {round}' WHERE id = {round} + 1;
                 ALTER TABLE t ADD COLUMN IF NOT EXISTS late int;
                 UPDATE t SET late = {round} WHERE id = 1;",
                id = 1000 + round,
                big = if round >= 20 {
                    5_000_000_000i64 + round
                } else {
                    round
                },
            ))
            .await
            .unwrap();
        // Paces the writes over many flushes: the workload that makes small
        // files, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(80)).await;
        if round % 10 == 9 {
            most_live = most_live.max(iceberg_live_files(&path, "ice_tidy", "t").await);
        }
    }
    pipeline.wait_equal(&client, "t").await;
    eventually(
        "the Iceberg table compacted and vacuumed",
        Duration::from_secs(90),
        || {
            let log = pipeline.log(1);
            let path = path.clone();
            async move {
                let live = iceberg_live_files(&path, "ice_tidy", "t").await;
                let on_disk = iceberg_files_on_disk(&path);
                (log.contains("compacted the Iceberg table")
                    && log.contains("vacuumed the Iceberg table")
                    && live <= 4
                    && on_disk <= live + 2)
                    .then_some(())
                    .ok_or(format!(
                        "live files {live}, parquet files on disk {on_disk}"
                    ))
            }
        },
    )
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let daemon = pipeline.log(1);
    for trouble in [
        "compacting an Iceberg table failed",
        "committing an Iceberg compaction failed",
        "the Iceberg compaction task died",
        "expiring the Iceberg table's snapshots failed",
        "vacuuming the Iceberg table failed",
        "the Iceberg vacuum task died",
    ] {
        assert!(!daemon.contains(trouble), "{trouble}:\n{daemon}");
    }
    let log = read_log(&path).await.expect("read the log");
    lake::assert_each_change_once(&log);
    let commits: std::collections::BTreeSet<i64> = log.iter().map(|r| r.seq).collect();
    let summary = every_reader_agrees(&path, &client, "public.t").await;
    let files = summary["files"].as_u64().expect("files in the summary");
    let snapshots = summary["snapshots"].as_array().expect("snapshots").len();
    eprintln!(
        "{} commits, live files at most {most_live} while writing, {files} at the end, {snapshots} snapshots",
        commits.len()
    );
    assert!(commits.len() >= 40, "{} commits", commits.len());
    assert!(
        files <= 4 && (files as usize) < commits.len(),
        "{files} files after {} commits",
        commits.len()
    );
    assert!(snapshots < commits.len(), "{snapshots} snapshots kept");
    assert_eq!(
        summary["partition_spec"][0]["name"], "_tw_commit_date",
        "{summary}"
    );
    // Fewer files than the stream's commits (a file each).
    let flushes: usize = summary["properties"]["tidewater.ice_tidy.commits"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("the commit count");
    assert!(
        (files as usize) < flushes,
        "{files} files after {flushes} commits"
    );
    let last = &summary["snapshots"].as_array().unwrap().last().unwrap()["summary"];
    assert_eq!(
        summary["properties"]["tidewater.ice_tidy.seq"], last["tidewater.seq"],
        "{summary}"
    );
}

/// Compaction and expiry through the REST catalog (`add-snapshot` of a
/// `replace` snapshot, `remove-snapshots`), with lost answers meeting
/// whichever commit comes first — the stream's or maintenance's (a
/// compaction, an expiry, a current-state merge): the table ends compacted,
/// equal to the source, each change once, and its current-state table
/// equal to the source, one row per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_rest_catalog_compaction_and_expiry_keep_each_change_once() {
    use crate::support::lake::{read_iceberg_in, read_iceberg_log_in};
    use std::time::Duration;
    let client = pg().create_database("ice_rest_tidy").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let dir = crate::support::temp_dir("tidewater-ice-rest-tidy");
    let mut pipeline = Pipeline::with_sink(
        "ice_rest_tidy",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_rest_tidy")
        ),
        |lake| {
            format!(
                "[sink]\ntype = \"lake\"\nuri = \"file://{}\"\nflush_interval_ms = 200\n\
                 format = \"iceberg\"\ncompaction_interval_ms = 300\ncompaction_min_files = 3\n\
                 target_file_size_bytes = 1048576\nvacuum_interval_ms = 700\nvacuum_retention_hours = 0\n\
                 current_state = true\ncurrent_state_interval_ms = 400\n\
                 [sink.catalog]\ntype = \"rest\"\nuri = \"${{ICE_REST_URI}}\"\n",
                lake.display()
            )
        },
    );
    let server = RestServer::start(&dir, &pipeline.lake);
    pipeline.env.push(("ICE_REST_URI".into(), server.uri()));
    pipeline.start();
    let path = pipeline.table_path("public", "t");
    let catalog = tidewater_lake::SqlCatalog::new(
        tidewater_lake::SqlBackend::Sqlite(server.db.clone()),
        "rest",
    );
    let rows_in_lake = |n: usize| wait_iceberg_rows(&path, &catalog, n, 90);
    rows_in_lake(20).await;
    server
        .faults(serde_json::json!({"fail_commits": 1, "drop_commits": 1}))
        .await;
    for round in 0..20 {
        client
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({id}, 'new'); UPDATE t SET v = 'r{round}' WHERE id = {k};",
                id = 100 + round,
                k = round + 1
            ))
            .await
            .unwrap();
        // Paces the writes over many flushes (small files), not a wait.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    rows_in_lake(60).await;
    crate::support::eventually(
        "the Iceberg table compacted and vacuumed through the REST catalog",
        Duration::from_secs(90),
        || {
            let log = pipeline.log(1);
            let (path, catalog) = (path.clone(), catalog.clone());
            async move {
                let live = iceberg_live_files_in(&path, "ice_rest_tidy", "t", catalog).await;
                let on_disk = iceberg_files_on_disk(&path);
                (log.contains("compacted the Iceberg table")
                    && log.contains("vacuumed the Iceberg table")
                    && live <= 4
                    && on_disk <= live + 2)
                    .then_some(())
                    .ok_or(format!(
                        "live files {live}, parquet files on disk {on_disk}"
                    ))
            }
        },
    )
    .await;
    // The current-state table, merged through the same catalog (whose
    // refused and dropped answers may have met a merge's commit).
    let current = pipeline.lake.join("ice_rest_tidy.current/public/t");
    crate::support::eventually(
        "the current-state table through the REST catalog",
        Duration::from_secs(90),
        || {
            let (current, catalog, client) = (current.clone(), catalog.clone(), &client);
            async move {
                let rows = read_iceberg_log_in(&current, catalog).await?;
                let state = lake::current_state(&rows, "id");
                if state.len() != rows.len() {
                    return Err(format!("{} rows for {} keys", rows.len(), state.len()));
                }
                lake::compare(&lake::source_state(client, "public.t", "id").await, &state)
            }
        },
    )
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let faults = server.faults(serde_json::json!({})).await;
    assert_eq!(faults["commits_failed"], 1, "{faults}");
    assert_eq!(faults["commits_dropped"], 1, "{faults}");
    let log = read_iceberg_log_in(&path, catalog).await.unwrap();
    lake::assert_each_change_once(&log);
    assert_eq!(log.len(), 60, "20 snapshot rows, 20 inserts, 20 updates");
    compare_with_source(&client, "public.t", &log, "tidewater's reader").await;
    let uri = format!("sqlite:///{}", server.db.display());
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, summary) = read_iceberg_in(&path, reader, &uri, "rest").await.unwrap();
        assert_eq!(rows.len(), 60, "{reader}");
        compare_with_source(&client, "public.t", &rows, reader).await;
        let files = summary["files"].as_u64().unwrap_or(u64::MAX);
        let snapshots = summary["snapshots"].as_array().map_or(usize::MAX, Vec::len);
        assert!(
            files <= 4 && snapshots < 20,
            "{reader}: {files} files, {snapshots} snapshots"
        );
    }
}

/// Orphan cleanup lists a table's files on S3 too: every object below the
/// prefix, at any depth, with its modification time; nothing beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_files_are_listed_on_s3_with_their_ages() {
    use crate::support::s3::{s3, storage_options};
    let server = s3();
    server.create_bucket("tw-ice-list");
    let store = tidewater_lake::LakeStore::open(tidewater_lake::LakeLocation::S3 {
        url: url::Url::parse("s3://tw-ice-list/lake").unwrap(),
        options: storage_options(&server.endpoint()),
    })
    .unwrap();
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for rel in [
        "p/s/t/data/a.parquet",
        "p/s/t/data/_tw_commit_date=2026-12-07/b.parquet",
        "p/s/t/metadata/00001-x.metadata.json",
        "p/s/t2/data/other.parquet",
    ] {
        store.write(rel, "x").await.unwrap();
    }
    let mut listed = store.list_files("p/s/t").await.unwrap();
    listed.sort();
    let names: Vec<&str> = listed.iter().map(|(rel, _)| rel.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "p/s/t/data/_tw_commit_date=2026-12-07/b.parquet",
            "p/s/t/data/a.parquet",
            "p/s/t/metadata/00001-x.metadata.json",
        ]
    );
    let after = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    assert!(listed.iter().all(|(_, at)| *at > before && *at < after));
    assert!(store.list_files("p/s/none").await.unwrap().is_empty());
}

/// A SIGKILL while a compaction of an Iceberg table is written (or waits
/// for its commit): its files were never committed, so the restart loses
/// and repeats nothing, and compaction goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_iceberg_compaction_loses_and_repeats_nothing() {
    use crate::support::eventually;
    use std::time::Duration;
    let client = pg().create_database("ice_compkill").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, repeat('v', 40) || g FROM generate_series(1, 30000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "ice_compkill",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("ice_compkill")
        ),
        // Every file is small: each compaction rewrites the table so far,
        // which takes a while.
        "compaction_interval_ms = 100\ncompaction_min_files = 2\n\
         target_file_size_bytes = 16777216\n",
    );
    pipeline.env = vec![("TIDEWATER_LOG".into(), "tidewater_lake=debug".into())];
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let started = |log: &str| log.matches("Iceberg compaction started").count();
    let ended = |log: &str| log.matches("Iceberg compaction ended").count();
    let mut step = 0;
    'updates: loop {
        step += 1;
        assert!(
            step < 400,
            "no compaction seen running: {}",
            pipeline.log(1)
        );
        client
            .batch_execute(&format!(
                "UPDATE t SET v = v || 'x' WHERE id % 97 = {}",
                step % 97
            ))
            .await
            .unwrap();
        for _ in 0..50 {
            let log = pipeline.log(1);
            if started(&log) > ended(&log) {
                break 'updates;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pipeline.kill();
    client
        .batch_execute("UPDATE t SET v = 'after the kill' WHERE id % 1000 = 0;")
        .await
        .unwrap();
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let path = pipeline.table_path("public", "t");
    lake::assert_each_change_once(&read_log(&path).await.unwrap());
    for round in 0..3 {
        client
            .batch_execute(&format!("UPDATE t SET v = 'round {round}' WHERE id < 10"))
            .await
            .unwrap();
        pipeline.wait_equal(&client, "t").await;
    }
    eventually(
        "an Iceberg compaction after the restart",
        Duration::from_secs(60),
        || {
            let log = pipeline.log(2);
            async move {
                log.contains("compacted the Iceberg table")
                    .then_some(())
                    .ok_or("no compaction yet".to_string())
            }
        },
    )
    .await;
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
    lake::assert_each_change_once(&read_log(&path).await.unwrap());
    let summary = every_reader_agrees(&path, &client, "public.t").await;
    assert!(
        summary["files"].as_u64().unwrap_or(u64::MAX) < 10,
        "{summary}"
    );
}

/// A REST catalog that wants OAuth2 client credentials (as Polaris and
/// Lakekeeper do): tidewater exchanges `sink.catalog.credential` for a
/// token, renews it before it expires and when the catalog answers 401
/// (every token revoked), and a wrong secret is a config error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_catalog_with_oauth2_client_credentials() {
    use crate::support::lake::read_iceberg_log_in;
    let client = pg().create_database("ice_oauth").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;",
        )
        .await
        .unwrap();
    let dir = crate::support::temp_dir("tidewater-ice-oauth");
    let sink = |lake: &Path, secret: &str| {
        format!(
            "[sink]\ntype = \"lake\"\nuri = \"file://{}\"\nflush_interval_ms = 200\n\
             format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"${{ICE_REST_URI}}\"\n\
             credential = \"tidewater:{secret}\"\nscope = \"PRINCIPAL_ROLE:ALL\"\n",
            lake.display()
        )
    };
    let source = format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
        pg().url("ice_oauth")
    );
    let mut pipeline = Pipeline::with_sink("ice_oauth", &source, |lake| sink(lake, "s3cret"));
    // Tokens live 2 s: the run renews them.
    let server = RestServer::start_with(
        &dir,
        &pipeline.lake,
        &["--oauth", "tidewater:s3cret", "--token-seconds", "2"],
    );
    pipeline.env.push(("ICE_REST_URI".into(), server.uri()));

    // A wrong secret: `check` names the key.
    let wrong = Pipeline::with_sink("ice_oauth", &source, |lake| sink(lake, "badpass7"));
    let mut cmd = crate::support::tidewater();
    cmd.args(["check", "--config"])
        .arg(&wrong.config)
        .env("ICE_REST_URI", server.uri());
    let out = crate::support::output_within(cmd, 60);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("refused the client credentials") && text.contains("sink.catalog.credential"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret") && !text.contains("badpass7"),
        "no secret in messages: {text}"
    );

    pipeline.start();
    let path = pipeline.table_path("public", "t");
    let catalog = tidewater_lake::SqlCatalog::new(
        tidewater_lake::SqlBackend::Sqlite(server.db.clone()),
        "rest",
    );
    let rows_in_lake = |n: usize| wait_iceberg_rows(&path, &catalog, n, 60);
    rows_in_lake(10).await;
    for i in 0..6 {
        client
            .batch_execute(&format!("INSERT INTO t VALUES ({}, 'later')", 100 + i))
            .await
            .unwrap();
        rows_in_lake(11 + i).await;
        if i == 2 {
            // Every token revoked: the next request gets 401, and a new one.
            reqwest_free_post(server.port, "/_test/oauth", "{}").await;
        }
        // Past a token's life between some of the commits.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    let oauth: Value =
        serde_json::from_str(&reqwest_free_post(server.port, "/_test/oauth", "").await).unwrap();
    assert!(oauth["issued"].as_u64().unwrap_or(0) >= 3, "{oauth}");
    let log = read_iceberg_log_in(&path, catalog).await.unwrap();
    lake::assert_each_change_once(&log);
    compare_with_source(&client, "public.t", &log, "tidewater's reader").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// Waits until the Iceberg table at `path` holds `n` change-log rows, read
/// through `catalog` (within `seconds`).
async fn wait_iceberg_rows(
    path: &Path,
    catalog: &tidewater_lake::SqlCatalog,
    n: usize,
    seconds: u64,
) {
    crate::support::eventually(
        "the changes in the Iceberg table",
        std::time::Duration::from_secs(seconds),
        || {
            let catalog = catalog.clone();
            async move {
                let log = crate::support::lake::read_iceberg_log_in(path, catalog).await?;
                (log.len() == n)
                    .then_some(())
                    .ok_or(format!("{} rows, not {n}", log.len()))
            }
        },
    )
    .await;
}

/// Issue 21, `current_state = true` on Iceberg: next to each change log a
/// copy-on-write table `<pipeline>_current_<schema>.<table>` with one row
/// per key, merged from the log every interval, equal to `SELECT *` on the
/// source after inserts, updates, deletes, a key change, a new column and
/// a truncate (an integer key and a text key, whose file bounds prune the
/// merge's reads); a SIGKILL between merges neither loses nor repeats a
/// row; pyiceberg and DuckDB read it as the source has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_tables_on_iceberg_follow_the_source() {
    use crate::support::eventually;
    use std::time::Duration;
    let client = pg().create_database("icecur").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
             INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 300) g;
             CREATE TABLE u (id text PRIMARY KEY, w text);
             INSERT INTO u SELECT 'k' || g, 'w' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::iceberg(
        "icecur",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("icecur")
        ),
        "current_state = true\ncurrent_state_interval_ms = 300\ntarget_file_size_bytes = 8192\n",
    );
    let current = |table: &str| pipeline.lake.join("icecur.current/public").join(table);
    let (t_path, u_path) = (current("t"), current("u"));
    pipeline.start();
    let equal = |path: std::path::PathBuf, table: &'static str| {
        let client = &client;
        async move {
            eventually(
                &format!("current state of {table}"),
                Duration::from_secs(90),
                || {
                    let path = path.clone();
                    async move {
                        let rows = read_log(&path).await?;
                        let state = lake::current_state(&rows, "id");
                        if state.len() != rows.len() {
                            return Err(format!("{} rows for {} keys", rows.len(), state.len()));
                        }
                        let mut source =
                            lake::source_state(client, &format!("public.{table}"), "id").await;
                        let mut state = state;
                        let decimals = lake::decimal_columns(client, table).await;
                        lake::trim_decimals(&mut state, &decimals);
                        lake::trim_decimals(&mut source, &decimals);
                        lake::compare(&source, &state)
                    }
                },
            )
            .await
        }
    };
    equal(t_path.clone(), "t").await;
    equal(u_path.clone(), "u").await;
    for step in [
        "INSERT INTO t SELECT g, 'new', g FROM generate_series(1000, 1100) g;
         UPDATE t SET v = 'changed' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;
         UPDATE u SET w = 'changed' WHERE id IN ('k3', 'k14');",
        "UPDATE t SET id = 5000 WHERE id = 1;
         ALTER TABLE t ADD COLUMN extra int;
         UPDATE t SET extra = id WHERE id < 50;",
        "TRUNCATE u; INSERT INTO u VALUES ('k100', 'after the truncate');",
        "DELETE FROM t WHERE id BETWEEN 200 AND 260; INSERT INTO t (id, v) VALUES (200, 'back');",
    ] {
        client.batch_execute(step).await.unwrap();
        equal(t_path.clone(), "t").await;
        equal(u_path.clone(), "u").await;
    }
    pipeline.kill();
    client
        .batch_execute(
            "UPDATE t SET v = 'after the kill' WHERE id < 100; DELETE FROM u;
             INSERT INTO u VALUES ('z', 'last');",
        )
        .await
        .unwrap();
    pipeline.start();
    equal(t_path.clone(), "t").await;
    equal(u_path.clone(), "u").await;
    // Engines we did not write read the current table as the source has it,
    // one row per key, and see an `overwrite` snapshot (copy-on-write).
    for reader in ["pyiceberg", "duckdb"] {
        let (rows, summary) = read_iceberg_with(&t_path, reader)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            lake::current_state(&rows, "id").len(),
            rows.len(),
            "{reader}: one row per key"
        );
        compare_with_source(&client, "public.t", &rows, reader).await;
        let operations: Vec<&str> = summary["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["operation"].as_str())
            .collect();
        assert!(
            operations.contains(&"overwrite"),
            "{reader}: snapshots {operations:?}"
        );
        assert!(
            summary["delete_files"].as_array().is_none_or(Vec::is_empty),
            "copy-on-write: no delete files"
        );
    }
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}
