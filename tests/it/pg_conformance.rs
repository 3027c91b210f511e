//! Replays the public Postgres type test DDL (`../shared/conformance/postgres/`)
//! against a running pipeline and fills every table it creates with values of
//! each column's type (the tables join the stream: each is copied, then
//! streamed), then changes them again (inserts, updates, deletes); every table
//! of the lake must equal the source. A second pipeline takes the same
//! database through its initial snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::Client;

use crate::support::lake::{compare, current_state, read_log, source_state};
use crate::support::{eventually, output_within, pg, tidewater, Pipeline};

/// One value of each type, as a literal the type's input function reads.
fn sample(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "int2" => "7",
        "int4" => "42",
        "int8" => "9000000000",
        "float4" => "1.5",
        "float8" => "-2.25e-300",
        "numeric" => "1.23",
        "bool" => "t",
        "oid" => "12345",
        "text" | "varchar" | "bpchar" | "name" => "ab",
        "char" => "a",
        "citext" => "Ab",
        "bytea" => "\\x00ff5c",
        "inet" => "192.168.0.1/24",
        "cidr" => "10.0.0.0/8",
        "macaddr" => "08:00:2b:01:02:03",
        "money" => "12.34",
        "bit" => "1",
        "varbit" => "10",
        "timestamp" => "2020-02-29 12:34:56.789",
        "timestamptz" => "2020-02-29 12:34:56.789+02",
        "date" => "2020-02-29",
        "time" => "12:34:56.789",
        "timetz" => "12:34:56.789+05:30",
        "interval" => "1 year 2 mons 3 days 04:05:06.789",
        "json" => "{\"a\": [1, 2.5, null]}",
        "jsonb" => "{\"b\": null, \"a\": \"é\"}",
        "xml" => "<a>x &amp; y</a>",
        "uuid" => "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "point" => "(1.5,-2)",
        "box" => "(1,1),(0,0)",
        "circle" => "<(1,2),3>",
        "line" => "{1,-1,0}",
        "lseg" => "[(0,0),(1,1)]",
        "path" => "[(0,0),(1,1)]",
        "polygon" => "((0,0),(1,0),(1,1))",
        "tsrange" => "[\"2020-01-01 00:00:00\",\"2020-02-01 00:00:00\")",
        "tstzrange" => "[\"2020-01-01 00:00:00+00\",)",
        "daterange" => "[2020-01-01,2020-02-01)",
        "int4range" => "[1,10)",
        "int8range" => "[1,)",
        "numrange" => "(1.5,2.5]",
        "ltree" => "a.b.c",
        "isbn" => "978-0-393-04002-9",
        "hstore" => "\"a\"=>\"1\", \"b\"=>NULL",
        "tsvector" => "a fat:1 cat:2B",
        "tidewater_mood" => "happy",
        "tidewater_pair" => "(1,\"x, y\")",
        _ => return None,
    })
}

struct ColumnInfo {
    name: String,
    /// `format_type` text, for the cast.
    declared: String,
    type_name: String,
    element: Option<String>,
    not_null: bool,
    has_default: bool,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

async fn columns(client: &Client, table: &str) -> Vec<ColumnInfo> {
    client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, \
               et.typname::text, a.attnotnull, a.atthasdef \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| ColumnInfo {
            name: r.get(0),
            declared: r.get(1),
            type_name: r.get(2),
            element: r.get(3),
            not_null: r.get(4),
            has_default: r.get(5),
        })
        .collect()
}

/// The literal of a value of `column`'s type: the sample, or for arrays a
/// two-element array of the element's sample and NULL.
fn value_of(column: &ColumnInfo) -> Result<String, String> {
    let text = match &column.element {
        Some(element) => {
            let item = sample(element).ok_or(format!("no sample for {element}[]"))?;
            format!(
                "{{\"{}\",NULL}}",
                item.replace('\\', "\\\\").replace('"', "\\\"")
            )
        }
        None => sample(&column.type_name)
            .ok_or(format!("no sample for {}", column.type_name))?
            .to_string(),
    };
    Ok(format!("{}::{}", literal(&text), column.declared))
}

/// Two rows per table: every column set, and every nullable column NULL.
async fn fill(client: &Client, table: &str) -> Result<(), String> {
    let columns = columns(client, table).await;
    let mut full = Vec::new();
    let mut sparse = Vec::new();
    for column in &columns {
        if column.has_default {
            full.push("DEFAULT".to_string());
            sparse.push("DEFAULT".to_string());
            continue;
        }
        let value = value_of(column)?;
        sparse.push(if column.not_null {
            value.clone()
        } else {
            "NULL".into()
        });
        full.push(value);
    }
    let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({}), ({})",
        names.join(", "),
        full.join(", "),
        sparse.join(", ")
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("{table}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_type_ddl_replays_through_snapshot_and_streaming() {
    let client = pg().create_database("pgconf").await;
    client
        // Dropped by the corpus's first statement (DROP SCHEMA public
        // CASCADE): a captured table dropped while streaming.
        .batch_execute(
            "CREATE TABLE sentinel (id int PRIMARY KEY); INSERT INTO sentinel VALUES (1)",
        )
        .await
        .unwrap();
    let source_toml = format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"*\"]\ntable_discovery_interval_ms = 500\n",
        pg().url("pgconf")
    );
    let mut pipeline = Pipeline::with_source("pgconf", &source_toml, "");
    pipeline.start();
    pipeline.wait_equal(&client, "sentinel").await;
    for file in [
        "init_database.ddl",
        "postgres_create_tables.ddl",
        "postgres_create_multiple_tables.ddl",
    ] {
        let ddl = std::fs::read_to_string(crate::support::conformance("postgres").join(file))
            .expect("conformance ddl");
        client
            .batch_execute(&ddl)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // Types the corpus does not cover: an enum, a composite type, tsvector.
    client
        .batch_execute(
            "CREATE TYPE tidewater_mood AS ENUM ('sad', 'happy');
             CREATE TYPE tidewater_pair AS (a int, b text);
             CREATE TABLE extra_types (pk serial PRIMARY KEY, m tidewater_mood,
               c tidewater_pair, tv tsvector, am tidewater_mood[]);",
        )
        .await
        .unwrap();
    let tables: Vec<(String, String)> = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(tables.len() >= 25, "{tables:?}");
    let qualified =
        |(schema, table): &(String, String)| format!("{}.{}", quote(schema), quote(table));
    let mut missing = Vec::new();
    for table in &tables {
        if let Err(e) = fill(&client, &qualified(table)).await {
            missing.push(e);
        }
    }
    assert!(missing.is_empty(), "{missing:?}");

    // The keyless table would make the application's UPDATEs fail once
    // published: the running pipeline leaves it out, `check` says so and
    // names the fix.
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
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("table_without_pk matches source.tables but has no replica identity")
            && text.contains("REPLICA IDENTITY FULL"),
        "{text}"
    );
    client
        .batch_execute("ALTER TABLE public.table_without_pk REPLICA IDENTITY FULL")
        .await
        .unwrap();
    wait_all_equal(&mut pipeline, &client, &tables).await;

    // Streaming: two more rows per table, an update of every column of one
    // row to the other's values, a delete.
    for table in &tables {
        let name = qualified(table);
        fill(&client, &name).await.unwrap();
        let columns = columns(&client, &name).await;
        let key = if columns.iter().any(|c| c.name == "pk") {
            "pk"
        } else {
            "id"
        };
        let set: Vec<String> = columns
            .iter()
            .filter(|c| c.name != key)
            .map(|c| quote(&c.name))
            .collect();
        if !set.is_empty() {
            client
                .batch_execute(&format!(
                    "UPDATE {name} t SET ({set}) = (SELECT {set} FROM {name} s WHERE s.{key} = \
                       (SELECT max({key}) FROM {name})) \
                     WHERE t.{key} = (SELECT min({key}) FROM {name});
                     DELETE FROM {name} WHERE {key} = (SELECT min({key}) + 1 FROM {name});",
                    set = set.join(", ")
                ))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    wait_all_equal(&mut pipeline, &client, &tables).await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));

    // The same tables through an initial snapshot.
    let mut snapshot = Pipeline::with_source("pgconf_snapshot", &source_toml, "");
    snapshot.start();
    wait_all_equal(&mut snapshot, &client, &tables).await;
    assert_eq!(snapshot.terminate(), 0, "{}", snapshot.log(1));
}

async fn wait_all_equal(pipeline: &mut Pipeline, client: &Client, tables: &[(String, String)]) {
    for (schema, table) in tables {
        let path = pipeline.table_path(schema, table);
        let name = format!("{}.{}", quote(schema), quote(table));
        let key = if columns(client, &name).await.iter().any(|c| c.name == "pk") {
            "pk"
        } else {
            "id"
        };
        eventually(
            &format!("lake {name} equals the source"),
            Duration::from_secs(90),
            || {
                let path = path.clone();
                let name = name.clone();
                async move {
                    let log = read_log(&path).await?;
                    let lake: BTreeMap<_, _> = current_state(&log, key);
                    let source = source_state(client, &name, key).await;
                    compare(&source, &lake)
                }
            },
        )
        .await;
    }
    pipeline.assert_running();
}
