//! tidewater's Kafka events against Debezium's own, field by field.
//!
//! The same tables and the same DML are captured by Debezium 3.6's
//! embedded engine (`tests/support/debezium_capture.py`, Kafka Connect's
//! JsonConverter with schemas) and by tidewater into the tansu broker
//! (`format = "debezium-json-schema"`). Every key, every value schema and
//! every payload must be equal once the differences the README lists are
//! set aside ([`normalize`]); anything else fails the test with both events.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::kafka::{broker, read_topic, sink_toml, Record};
use crate::support::mariadb::maria_as_mysql57;
use crate::support::{eventually, pg, readers_python, temp_dir, Pipeline};

const PG_SETUP: &str = r#"
CREATE TABLE public.types (
  id integer PRIMARY KEY,
  c_smallint smallint, c_integer integer, c_bigint bigint,
  c_num12_2 numeric(12,2), c_num38_0 numeric(38,0), c_num50_5 numeric(50,5), c_numeric numeric,
  c_real real, c_double double precision, c_bool boolean,
  c_text text, c_varchar varchar(20), c_char char(5), c_bytea bytea,
  c_date date, c_ts timestamp, c_tstz timestamptz, c_time time,
  c_uuid uuid, c_json json, c_jsonb jsonb,
  c_int_arr integer[], c_text_arr text[], c_num_arr numeric(8,3)[], c_tstz_arr timestamptz[], c_uuid_arr uuid[],
  c_interval interval, c_inet inet, c_money money, c_timetz timetz, c_macaddr macaddr,
  c_bit3 bit(3), c_xml xml, c_int4range int4range, c_point point,
  c_tsvector tsvector, c_inet_arr inet[]
);
CREATE TABLE public.full_ident (id integer PRIMARY KEY, name text, amount numeric(12,2));
ALTER TABLE public.full_ident REPLICA IDENTITY FULL;
INSERT INTO public.types VALUES
 (1, -32768, -2147483648, -9223372036854775808, -1234567890.12, 12345678901234567890123456789012345678,
  -123456789012345678901234567890123456789012345.12345, 3.14159265358979323846264338327950288,
  -1.5, 2.718281828459045, true, 'héllo wörld ✓ 日本', 'varchar', 'ab', '\xdeadbeef00',
  '1969-07-20', '1969-07-20 20:17:40.123456', '2024-02-29 12:34:56.789+02', '23:59:59.999999',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, null], "b": "x"}', '{"b": "x", "a": [1, 2.50, null]}',
  '{1,-2,NULL}', '{"a","b c",NULL,"ü"}', '{1.5,-2.125,NULL}', '{"2024-01-01 00:00:00+00","1960-06-01 12:00:00.5+00"}',
  '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
  '1 year 2 mons 3 days 04:05:06.789', '192.168.0.1/24', '-1234.56', '10:11:12.345+05:30', '08:00:2b:01:02:03',
  B'101', '<a>x</a>', '[1,10)', '(1.5,-2)', 'a fat cat', '{10.0.0.1,NULL}');
INSERT INTO public.types (id) VALUES (2);
INSERT INTO public.full_ident VALUES (1, 'one', 1.00), (2, 'two', 2.00), (4, 'four', -4.00);
-- A value stored out of line (TOASTed: large, incompressible) that an update
-- leaves unchanged: Postgres does not resend it.
CREATE TABLE public.toasted (id integer PRIMARY KEY, v integer, body text);
INSERT INTO public.toasted SELECT 1, 0, string_agg(md5(g::text), '') FROM generate_series(1, 400) g;
"#;

const PG_STREAM: &str = r#"
INSERT INTO public.types VALUES
 (3, 32767, 2147483647, 9223372036854775807, 0.01, -1, 0.00001, 'NaN',
  'Infinity', '-Infinity', false, '', 'x', 'abcde', '\x',
  '0001-01-01', '2262-04-11 23:47:16.854775', '1970-01-01 00:00:00+00', '00:00:00',
  '00000000-0000-0000-0000-000000000000', '[]', '{}',
  '{}', '{}', '{}', '{}', '{}',
  '-1 day -00:00:01', '::1', '0', '00:00:00-08', 'ff:ff:ff:ff:ff:ff',
  B'000', '<r/>', 'empty', '(0,0)', '', '{}');
UPDATE public.types SET c_integer = 42, c_text = 'updated' WHERE id = 1;
DELETE FROM public.types WHERE id = 3;
INSERT INTO public.full_ident VALUES (3, 'three', 3.00);
UPDATE public.full_ident SET name = 'uno', amount = 1.50 WHERE id = 1;
DELETE FROM public.full_ident WHERE id = 2;
TRUNCATE public.full_ident;
INSERT INTO public.full_ident VALUES (9, 'after truncate', 9.99);
UPDATE public.toasted SET v = 1;
"#;

const MY_SETUP: &str = r#"
CREATE TABLE types (
  id int PRIMARY KEY,
  c_tinyint tinyint, c_tinyint_u tinyint unsigned, c_smallint smallint, c_mediumint mediumint,
  c_int int, c_int_u int unsigned, c_bigint bigint, c_bigint_u bigint unsigned,
  c_dec12_2 decimal(12,2), c_dec65_10 decimal(65,10), c_float float, c_double double,
  c_bit1 bit(1), c_bit10 bit(10), c_bool boolean,
  c_char char(5), c_varchar varchar(20), c_text text, c_blob blob, c_binary binary(4), c_varbinary varbinary(10),
  c_date date, c_datetime datetime, c_datetime3 datetime(3), c_datetime6 datetime(6),
  c_timestamp timestamp NULL DEFAULT NULL, c_timestamp6 timestamp(6) NULL DEFAULT NULL,
  c_time time, c_time6 time(6), c_year year,
  c_enum enum('a','b'), c_set set('x','y'), c_json json
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO types VALUES
 (1, -128, 255, -32768, -8388608, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
  -1234567890.12, -12345678901234567890123456789012345678901234567890.1234567891, -1.5, 2.718281828459045,
  b'1', b'1010101011', true,
  'ab', 'héllo ✓ 日本', 'text ü', x'DEADBEEF00', x'01020304', x'0A0B',
  '1969-07-20', '1969-07-20 20:17:40', '2024-02-29 12:34:56.789', '1969-07-20 20:17:40.123456',
  '2024-02-29 12:34:56', '2024-02-29 12:34:56.123456',
  '-838:59:59', '23:59:59.999999', 1901,
  'b', 'x,y', '{"a": [1, 2.50, null], "b": "x"}'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL);
"#;

const MY_STREAM: &str = r#"
INSERT INTO types VALUES
 (3, 127, 0, 32767, 8388607, 2147483647, 0, 9223372036854775807, 0,
  0.01, 0.0000000001, 3.4e38, -1e-300,
  b'0', b'0000000000', false,
  '', '', '', x'', x'00000000', x'',
  '1000-01-01', '9999-12-31 23:59:59', '1970-01-01 00:00:00.001', '2038-01-19 03:14:07.999999',
  '1970-01-01 00:00:01', '2038-01-19 03:14:07.999999',
  '838:59:59', '00:00:00.000001', 2155,
  'a', '', '[]');
UPDATE types SET c_int = 42, c_text = 'updated' WHERE id = 1;
DELETE FROM types WHERE id = 3;
INSERT INTO types (id, c_int) VALUES (4, 4), (5, 5);
DELETE FROM types WHERE id IN (4, 5);
TRUNCATE TABLE types;
INSERT INTO types (id, c_int) VALUES (9, 9);
"#;

/// Debezium's capture, running.
struct Capture {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Capture {
    fn start(args: &[String], dir: &Path) -> Capture {
        let out = dir.join("debezium.jsonl");
        let log = dir.join("debezium.log");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/debezium_capture.py"
        );
        let child = Command::new(readers_python())
            .arg(script)
            .args(args)
            .args(["--schemas", "true", "--set", "skipped.operations=none"])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the Debezium capture");
        Capture { child, out, log }
    }

    fn lines(&self) -> usize {
        std::fs::read_to_string(&self.out)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Waits until the capture has `n` records.
    async fn wait_lines(&mut self, n: usize) {
        let started = Instant::now();
        while self.lines() < n {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "the Debezium capture ended ({status}) with {} records:\n{}",
                    self.lines(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "Debezium: {} of {n} records after 240 s:\n{}",
                self.lines(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the capture to end; its records (topic, key, value).
    async fn finish(mut self) -> Vec<(String, Option<Value>, Option<Value>)> {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "the Debezium capture did not end"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            status.success(),
            "the Debezium capture failed:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        std::fs::read_to_string(&self.out)
            .expect("capture output")
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).expect("capture line");
                let opt = |x: &Value| (!x.is_null()).then(|| x.clone());
                (
                    v["topic"].as_str().unwrap_or_default().to_string(),
                    opt(&v["key"]),
                    opt(&v["value"]),
                )
            })
            .collect()
    }
}

/// An event with the differences the README accepts set aside:
/// * `source`: the version string, the position fields tidewater does not
///   carry per row (Postgres `lsn`/`sequence`; MySQL `pos`/`row`/`gtid`/
///   `server_id`), during a snapshot the snapshot's own transaction and
///   times, and Debezium's first/last snapshot markers (tidewater writes
///   `"true"` for every snapshot row);
/// * the top-level `ts_ms`/`ts_us`/`ts_ns` (when the event was made);
/// * `before` of an update (tidewater does not keep old images of updates).
fn normalize(value: &Value) -> Value {
    let mut value = value.clone();
    let payload = match value.get_mut("payload") {
        Some(p) => p,
        None => &mut value,
    };
    let Some(event) = payload.as_object_mut() else {
        return value;
    };
    for key in ["ts_ms", "ts_us", "ts_ns"] {
        event.remove(key);
    }
    let op = event
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if op == "u" {
        event.remove("before");
    }
    if let Some(source) = event.get_mut("source").and_then(Value::as_object_mut) {
        for key in [
            "version",
            "lsn",
            "sequence",
            "pos",
            "row",
            "gtid",
            "server_id",
        ] {
            source.remove(key);
        }
        if op == "r" {
            for key in ["ts_ms", "ts_us", "ts_ns", "txId", "file"] {
                source.remove(key);
            }
            source.insert("snapshot".into(), Value::from("true"));
        }
    }
    value
}

/// The paths where `a` and `b` differ, with both values (at most a few).
fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= 12 {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (l, r) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                if !x.contains_key(key) || !y.contains_key(key) {
                    out.push(format!(
                        "{path}.{key}: debezium {:?}, tidewater {:?}",
                        x.get(key),
                        y.get(key)
                    ));
                } else {
                    json_diff(l, r, &format!("{path}.{key}"), out);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                // Connect schemas list fields by position: name them.
                let name = l
                    .get("field")
                    .and_then(Value::as_str)
                    .map_or(i.to_string(), str::to_string);
                json_diff(l, r, &format!("{path}[{name}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: debezium {a}, tidewater {b}")),
        _ => {}
    }
}

/// Every difference between Debezium's events and tidewater's, per topic.
fn differences(
    debezium: &[(String, Option<Value>, Option<Value>)],
    topic: &str,
    ours: &[Record],
) -> Vec<String> {
    let theirs: Vec<&(String, Option<Value>, Option<Value>)> =
        debezium.iter().filter(|(t, _, _)| t == topic).collect();
    let mut out = Vec::new();
    if theirs.len() != ours.len() {
        out.push(format!(
            "{topic}: Debezium wrote {} records, tidewater {}",
            theirs.len(),
            ours.len()
        ));
    }
    for (i, ((_, key, value), record)) in theirs.iter().zip(ours).enumerate() {
        if key != &record.key {
            out.push(format!(
                "{topic} #{i}: keys differ\n  debezium  {key:?}\n  tidewater {:?}",
                record.key
            ));
        }
        let (a, b) = (
            value.as_ref().map(normalize),
            record.value.as_ref().map(normalize),
        );
        if a != b {
            let mut paths = Vec::new();
            json_diff(
                a.as_ref().unwrap_or(&Value::Null),
                b.as_ref().unwrap_or(&Value::Null),
                "",
                &mut paths,
            );
            out.push(format!(
                "{topic} #{i}: values differ\n  {}",
                paths.join("\n  ")
            ));
        }
    }
    out
}

async fn wait_records(brokers: &str, topic: &str, n: usize) {
    eventually(
        &format!("{n} records in {topic}"),
        Duration::from_secs(90),
        || async {
            let got = read_topic(brokers, topic).len();
            (got >= n)
                .then_some(())
                .ok_or_else(|| format!("{got} records"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_match_debeziums() {
    let source = pg().create_database("kdbz").await;
    source.batch_execute(PG_SETUP).await.unwrap();
    let dir = temp_dir("tidewater-dbz-pg");
    let mut capture = Capture::start(
        &[
            "--connector",
            "postgres",
            "--port",
            &pg().port.to_string(),
            "--user",
            "postgres",
            "--password",
            "postgres",
            "--database",
            "kdbz",
            "--tables",
            "public.types,public.full_ident,public.toasted",
            "--topic-prefix",
            "pg",
            "--slot",
            "dbz_compare",
            "--publication",
            "dbz_compare",
            "--events",
            "17",
            "--linger",
            "2",
        ]
        .map(String::from),
        &dir,
    );
    let kafka = broker();
    let brokers = kafka.brokers();
    let mut pipeline = Pipeline::with_sink("kdbzpg", &crate::kafka::pg_source("kdbz"), |_| {
        sink_toml(kafka, "pg", "format = \"debezium-json-schema\"\n")
    });
    pipeline.start();
    capture.wait_lines(6).await;
    wait_records(&brokers, "pg.public.types", 2).await;
    wait_records(&brokers, "pg.public.full_ident", 3).await;
    wait_records(&brokers, "pg.public.toasted", 1).await;
    source.batch_execute(PG_STREAM).await.unwrap();
    let debezium = capture.finish().await;
    let mut problems = Vec::new();
    for (topic, n) in [
        ("pg.public.types", 6),
        ("pg.public.full_ident", 9),
        ("pg.public.toasted", 2),
    ] {
        wait_records(&brokers, topic, n).await;
        problems.extend(differences(&debezium, topic, &read_topic(&brokers, topic)));
    }
    source
        .batch_execute("SELECT pg_drop_replication_slot('dbz_compare')")
        .await
        .unwrap();
    assert_eq!(pipeline.terminate(), 0);
    assert!(
        problems.is_empty(),
        "{} difference(s) from Debezium:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_events_match_debeziums() {
    let server = maria_as_mysql57();
    let mut conn = server.create_database("kdbz").await;
    {
        use mysql_async::prelude::Queryable;
        conn.query_drop(MY_SETUP).await.unwrap();
    }
    let dir = temp_dir("tidewater-dbz-my");
    let mut capture = Capture::start(
        &[
            "--connector",
            "mysql",
            "--port",
            &server.port.to_string(),
            "--user",
            "root",
            "--password",
            "",
            "--database",
            "kdbz",
            "--tables",
            "kdbz.types",
            "--topic-prefix",
            "my",
            "--server-id",
            "5411",
            // the mode tidewater's events follow for BIGINT UNSIGNED
            "--set",
            "bigint.unsigned.handling.mode=precise",
            "--events",
            "20",
            "--linger",
            "2",
        ]
        .map(String::from),
        &dir,
    );
    let kafka = broker();
    let brokers = kafka.brokers();
    let mut pipeline = Pipeline::with_sink("kdbzmy", &server.source_toml("kdbz"), |_| {
        sink_toml(kafka, "my", "format = \"debezium-json-schema\"\n")
    });
    pipeline.start();
    // Debezium's schema change events (6, on the topic `my`) come first.
    capture.wait_lines(8).await;
    wait_records(&brokers, "my.kdbz.types", 2).await;
    {
        use mysql_async::prelude::Queryable;
        conn.query_drop(MY_STREAM).await.unwrap();
    }
    let debezium = capture.finish().await;
    wait_records(&brokers, "my.kdbz.types", 14).await;
    let problems = differences(
        &debezium,
        "my.kdbz.types",
        &read_topic(&brokers, "my.kdbz.types"),
    );
    assert_eq!(pipeline.terminate(), 0);
    assert!(
        problems.is_empty(),
        "{} difference(s) from Debezium:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
