//! The Kafka sink end to end, on a real Kafka-compatible broker (tansu):
//! Postgres and MariaDB changes as Debezium change events, read back from
//! the topics and compared with the source row by row; restarts that
//! resume exactly after the last committed transaction; SIGKILL under load
//! on both sources with no loss; schema changes carried by the events.
//!
//! tansu does not hide aborted transactions from `read_committed`
//! consumers, so these tests prove no loss and the format; the count of
//! duplicates a killed commit leaves is printed (on Kafka those records are
//! aborted and invisible).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::kafka::{broker, read_topic, sink_toml, Record};
use crate::support::mariadb::maria;
use crate::support::{crash_rng, eventually, pg, Pipeline};

/// A Connect `Decimal` (base64 of big-endian two's complement) as its
/// unscaled integer.
fn unscaled(value: &Value) -> Option<i128> {
    let text = value.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut full = [fill; 16];
    full[16 - bytes.len()..].copy_from_slice(&bytes);
    Some(i128::from_be_bytes(full))
}

/// The current state the events of `records` describe: key → `after`,
/// applied in order (deletes remove, truncates clear).
fn replay(records: &[Record]) -> Result<BTreeMap<String, Value>, String> {
    let mut rows = BTreeMap::new();
    for record in records {
        let Some(payload) = record.payload() else {
            continue; // a tombstone
        };
        match payload["op"].as_str() {
            Some("r" | "c" | "u") => {
                let key = record.key.as_ref().ok_or("an event without a key")?;
                let key = key.get("payload").unwrap_or(key).to_string();
                rows.insert(key, payload["after"].clone());
            }
            Some("d") => {
                let key = record.key.as_ref().ok_or("a delete without a key")?;
                rows.remove(&key.get("payload").unwrap_or(key).to_string());
            }
            Some("t") => rows.clear(),
            other => return Err(format!("unknown op {other:?}")),
        }
    }
    Ok(rows)
}

/// Every delete is followed by a tombstone with its key.
fn tombstones_follow_deletes(records: &[Record]) -> Result<(), String> {
    for (i, record) in records.iter().enumerate() {
        if record.payload().and_then(|p| p["op"].as_str()) == Some("d") {
            let next = records.get(i + 1).ok_or("a delete is the last record")?;
            if next.value.is_some() || next.key != record.key {
                return Err(format!(
                    "delete at offset {} has no tombstone",
                    record.offset
                ));
            }
        }
    }
    Ok(())
}

/// How many events carry a mark (`tidewater.seq`/`ord` headers) an earlier
/// event already carried: the duplicates a reader sees.
fn duplicates(records: &[Record]) -> usize {
    let mut seen = HashMap::new();
    for r in records.iter().filter(|r| r.value.is_some()) {
        *seen.entry(r.mark()).or_insert(0usize) += 1;
    }
    seen.values().map(|n| n - 1).sum()
}

/// The `items` rows of the Postgres source as the events must carry them
/// (the decimal as its unscaled integer).
async fn pg_items(client: &Client) -> Result<BTreeMap<String, Value>, String> {
    let rows = client
        .query(
            "SELECT json_build_object('id', id)::text, json_build_object(
                 'id', id, 'v', v, 'amount', (amount * 100)::bigint, 'note', note,
                 'flag', flag, 'tags', tags,
                 'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                 'day', day - date '1970-01-01', 'doc', doc::text)::text
             FROM items",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for row in rows {
        let key: Value = serde_json::from_str(row.get(0)).map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(row.get(1)).map_err(|e| e.to_string())?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// The topic's `items` state with decimals as unscaled integers.
fn topic_items(records: &[Record]) -> Result<BTreeMap<String, Value>, String> {
    let mut rows = replay(records)?;
    for after in rows.values_mut() {
        let amount = unscaled(&after["amount"]).map_or(Value::Null, |v| json!(v as i64));
        after["amount"] = amount;
        // The source's `doc::text` is what a jsonb value is.
    }
    Ok(rows)
}

fn same(source: &BTreeMap<String, Value>, topic: &BTreeMap<String, Value>) -> Result<(), String> {
    if source.len() != topic.len() {
        let missing: Vec<&String> = source
            .keys()
            .filter(|k| !topic.contains_key(*k))
            .take(5)
            .collect();
        return Err(format!(
            "{} source rows, {} in the topic (missing e.g. {missing:?})",
            source.len(),
            topic.len()
        ));
    }
    for (key, row) in source {
        let Some(got) = topic.get(key) else {
            return Err(format!(
                "row {key} is not in the topic (it has e.g. {:?})",
                topic.keys().next()
            ));
        };
        if got != row {
            return Err(format!("row {key} differs:\n source {row}\n topic  {got}"));
        }
    }
    Ok(())
}

async fn items_equal(client: &Client, brokers: &str, topic: &str) -> Result<(), String> {
    let records = read_topic(brokers, topic);
    same(&pg_items(client).await?, &topic_items(&records)?)
}

/// Random transactions over `items` until `stop`.
async fn write_load(url: String, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connect");
    tokio::spawn(connection);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next_id: i64 = 10_000;
    let mut transactions = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.gen_range(1..20) {
            match rng.gen_range(0..10) {
                0..=5 => {
                    next_id += 1;
                    sql.push_str(&format!(
                        "INSERT INTO items VALUES ({next_id}, {}, {}.{:02}, 'n{next_id}', true, \
                         ARRAY['x', 'y\"{next_id}'], now(), current_date, '{{\"k\": {next_id}}}');",
                        rng.gen_range(0..1000),
                        rng.gen_range(-999..999),
                        rng.gen_range(0..100),
                    ));
                }
                6..=8 => sql.push_str(&format!(
                    "UPDATE items SET v = v + 1, note = NULL WHERE id = {};",
                    rng.gen_range(1..next_id)
                )),
                _ => sql.push_str(&format!(
                    "DELETE FROM items WHERE id = {};",
                    rng.gen_range(1..next_id)
                )),
            }
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.expect("write");
        transactions += 1;
        // A steady load (a few thousand changes a second), not a flood the
        // pipeline needs minutes to catch up with on this broker.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    transactions
}

/// The `[source]` section of a pipeline on `database` of the shared server.
pub(crate) fn pg_source(database: &str) -> String {
    format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
        pg().url(database)
    )
}

const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, v int, amount numeric(12,2),
     note text, flag boolean, tags text[], at timestamptz, day date, doc jsonb);
     INSERT INTO items SELECT g, g, g * 1.25, 'seed', g % 2 = 0, ARRAY['a', NULL],
         '2024-02-29 12:34:56.123456+00', '1969-07-20', '{\"k\": [1, \"x\"]}'
       FROM generate_series(1, 2000) g;";

/// Snapshot, stream, every kind of change, and a restart that resumes
/// exactly after the last committed transaction (no event twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_arrive_as_debezium_events_exactly_once_across_restarts() {
    let source = pg().create_database("kafka_pg").await;
    source.batch_execute(ITEMS).await.unwrap();
    let kafka = broker();
    let brokers = kafka.brokers();
    let mut pipeline = Pipeline::with_sink("kpg", &pg_source("kafka_pg"), |_| {
        sink_toml(kafka, "kpg", "max_batch_rows = 500\n")
    });
    pipeline.start();
    let topic = "kpg.public.items";
    eventually("the snapshot in the topic", Duration::from_secs(90), || {
        items_equal(&source, &brokers, topic)
    })
    .await;
    let snapshot = read_topic(&brokers, topic);
    assert_eq!(snapshot.len(), 2000, "one `r` event per row");
    for record in &snapshot {
        let payload = record.payload().unwrap();
        assert_eq!(payload["op"], "r");
        assert_eq!(payload["source"]["snapshot"], "true");
        assert_eq!(payload["source"]["connector"], "postgresql");
        assert_eq!(payload["source"]["db"], "kafka_pg");
        assert_eq!(payload["source"]["table"], "items");
        assert_eq!(payload["before"], Value::Null);
        assert!(record.headers.contains_key("tidewater.position"));
    }
    source
        .batch_execute(
            "INSERT INTO items VALUES (5001, 1, -0.01, 'new', NULL, NULL, NULL, NULL, NULL);
             UPDATE items SET note = 'changed', amount = 99999.99 WHERE id = 7;
             DELETE FROM items WHERE id = 8;",
        )
        .await
        .unwrap();
    eventually("the changes in the topic", Duration::from_secs(60), || {
        items_equal(&source, &brokers, topic)
    })
    .await;
    // A clean stop and a start: nothing is sent twice.
    assert_eq!(pipeline.terminate(), 0);
    source
        .batch_execute("UPDATE items SET v = -1 WHERE id <= 3; DELETE FROM items WHERE id = 4")
        .await
        .unwrap();
    pipeline.start();
    eventually(
        "the changes after the restart",
        Duration::from_secs(60),
        || items_equal(&source, &brokers, topic),
    )
    .await;
    let records = read_topic(&brokers, topic);
    tombstones_follow_deletes(&records).unwrap();
    assert_eq!(
        duplicates(&records),
        0,
        "a clean restart sends nothing twice"
    );
    let ops: Vec<&str> = records
        .iter()
        .filter_map(|r| r.payload().and_then(|p| p["op"].as_str()))
        .collect();
    // 2000 r, 1 c, 4 u (id 7, ids 1-3), 2 d (ids 8, 4)
    assert_eq!(ops.iter().filter(|o| **o == "r").count(), 2000);
    assert_eq!(ops.iter().filter(|o| **o == "c").count(), 1);
    assert_eq!(ops.iter().filter(|o| **o == "u").count(), 4);
    assert_eq!(ops.iter().filter(|o| **o == "d").count(), 2);
    let delete = records
        .iter()
        .find(|r| r.payload().and_then(|p| p["op"].as_str()) == Some("d"))
        .unwrap();
    assert_eq!(delete.key, Some(json!({"id": 8})));
    assert_eq!(delete.payload().unwrap()["before"]["id"], 8);
    // A truncate is an event of its own (key null), after which the topic
    // describes an empty table.
    source.batch_execute("TRUNCATE items").await.unwrap();
    eventually("the truncate", Duration::from_secs(60), || async {
        let records = read_topic(&brokers, topic);
        match records.last().and_then(|r| r.payload()) {
            Some(p) if p["op"] == "t" => Ok(()),
            _ => Err("no truncate event yet".to_string()),
        }
    })
    .await;
    items_equal(&source, &brokers, topic).await.unwrap();
    // status names the topic and its committed events.
    let status = pipeline.status_json();
    let table = &status["tables"][0];
    assert_eq!(status["sink"], "kafka");
    assert_eq!(table["topic"], topic);
    assert_eq!(table["snapshot"], "done");
    assert_eq!(pipeline.terminate(), 0);
}

/// The schema-carrying format: every key and value has its Connect schema;
/// a column added at the source is in the next events' schema, and the
/// state topic's history records the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_schemas_follow_a_schema_change() {
    let source = pg().create_database("kafka_schema").await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric(8,3), at timestamp(3));
             INSERT INTO t VALUES (1, 'a', 1.5, '2024-01-01 00:00:00.123');",
        )
        .await
        .unwrap();
    let kafka = broker();
    let brokers = kafka.brokers();
    let mut pipeline = Pipeline::with_sink("kschema", &pg_source("kafka_schema"), |_| {
        sink_toml(kafka, "ks", "format = \"debezium-json-schema\"\n")
    });
    pipeline.start();
    let topic = "ks.public.t";
    eventually("the snapshot", Duration::from_secs(60), || async {
        (read_topic(&brokers, topic).len() == 1)
            .then_some(())
            .ok_or_else(|| "no event yet".to_string())
    })
    .await;
    source
        .batch_execute(
            "ALTER TABLE t ADD COLUMN extra int; INSERT INTO t VALUES (2, 'b', -2, NULL, 7);",
        )
        .await
        .unwrap();
    eventually("the new column", Duration::from_secs(60), || async {
        (read_topic(&brokers, topic).len() == 2)
            .then_some(())
            .ok_or_else(|| "no second event yet".to_string())
    })
    .await;
    let records = read_topic(&brokers, topic);
    let field_names = |record: &Record| -> Vec<String> {
        let schema = &record.value.as_ref().unwrap()["schema"];
        assert_eq!(schema["name"], "ks.public.t.Envelope");
        let after = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == "after")
            .unwrap();
        assert_eq!(after["name"], "ks.public.t.Value");
        after["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(field_names(&records[0]), ["id", "name", "amount", "at"]);
    assert_eq!(
        field_names(&records[1]),
        ["id", "name", "amount", "at", "extra"]
    );
    let first = &records[0].value.as_ref().unwrap();
    let after_schema = first["schema"]["fields"][1]["fields"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        after_schema[2]["name"],
        "org.apache.kafka.connect.data.Decimal"
    );
    assert_eq!(after_schema[2]["parameters"]["scale"], "3");
    assert_eq!(after_schema[3]["name"], "io.debezium.time.Timestamp");
    assert_eq!(first["payload"]["after"]["at"], 1_704_067_200_123i64);
    assert_eq!(unscaled(&first["payload"]["after"]["amount"]), Some(1500));
    let key = records[1].key.as_ref().unwrap();
    assert_eq!(key["schema"]["name"], "ks.public.t.Key");
    assert_eq!(key["payload"], json!({"id": 2}));
    assert_eq!(records[1].payload().unwrap()["after"]["extra"], 7);
    // The history in the state topic: both versions.
    let state = read_topic(&brokers, "tidewater.kschema.state");
    let history: Vec<&str> = state
        .iter()
        .filter_map(|r| r.key.as_ref()?.as_str())
        .filter(|k| k.starts_with("history/public.t/"))
        .collect();
    assert_eq!(history.len(), 2, "two schema versions in {history:?}");
    assert!(state
        .iter()
        .any(|r| r.key.as_ref().and_then(Value::as_str) == Some("table/public.t")));
    // `status --history` reads them back.
    let out = crate::support::output_within(
        {
            let mut cmd = crate::support::tidewater();
            cmd.args([
                "status",
                "--table",
                "public.t",
                "--history",
                "--format",
                "json",
                "--config",
            ])
            .arg(&pipeline.config);
            cmd
        },
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["columns"][4]["name"], "extra", "{history}");
    assert_eq!(pipeline.terminate(), 0);
}

/// SIGKILL at random moments while a load streams: every change arrives
/// (the topic's state equals the source), and the duplicates a consumer
/// sees on this broker are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_into_kafka_survives_sigkill_under_load() {
    let source = pg().create_database("kafka_crash").await;
    source.batch_execute(ITEMS).await.unwrap();
    let kafka = broker();
    let brokers = kafka.brokers();
    let mut rng = crash_rng("kafka crash test");
    // A commit per up to 3 000 changes: each Kafka commit costs ~0.2 s on
    // this broker.
    let mut pipeline = Pipeline::with_sink("kcrash", &pg_source("kafka_crash"), |_| {
        sink_toml(kafka, "kcrash", "max_batch_rows = 3000\n")
    });
    pipeline.start();
    let topic = "kcrash.public.items";
    // The snapshot first: the kills land while the stream runs. (A kill
    // during an initial snapshot makes the resumed copy read the table
    // anew; the aborted copy's `r` events stay visible on this broker,
    // which does not isolate aborted transactions, and would bring back
    // rows deleted in between. A read_committed consumer of Kafka never
    // sees them.)
    eventually("the snapshot in the topic", Duration::from_secs(90), || {
        items_equal(&source, &brokers, topic)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(pg().url("kafka_crash"), stop.clone(), rng.gen()));
    // The random moments of the kills (replayable from the seed) are what
    // this test is about, not waits.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2500))).await;
        pipeline.assert_running();
        pipeline.kill();
        eprintln!("round {round}: killed the daemon");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        pipeline.start();
    }
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(transactions > 0, "the load ran");
    eventually(
        "the topic equal to the source",
        Duration::from_secs(120),
        || items_equal(&source, &brokers, topic),
    )
    .await;
    let records = read_topic(&brokers, topic);
    tombstones_follow_deletes(&records).unwrap();
    eprintln!(
        "kafka crash test: {transactions} transactions, {} records, {} duplicate events \
         (from commits killed midway; a read_committed consumer on Kafka does not see them)",
        records.len(),
        duplicates(&records)
    );
    assert_eq!(pipeline.terminate(), 0);
}

/// The MariaDB `things` rows as the events must carry them.
async fn maria_things(conn: &mut mysql_async::Conn) -> BTreeMap<String, Value> {
    let rows: Vec<String> = conn
        .query(
            "SELECT JSON_OBJECT('k', k, 'big', CAST(big AS CHAR), 'price', CAST(price * 100 AS SIGNED),
                 'name', name, 'd', DATEDIFF(d, '1970-01-01'),
                 'at', CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', at) AS SIGNED),
                 't', CAST(TIME_TO_SEC(t) * 1000000 AS SIGNED))
             FROM things",
        )
        .await
        .unwrap();
    rows.iter()
        .map(|text| {
            let v: Value = serde_json::from_str(text).unwrap();
            (json!({"k": v["k"]}).to_string(), v)
        })
        .collect()
}

fn topic_things(records: &[Record]) -> Result<BTreeMap<String, Value>, String> {
    let mut rows = replay(records)?;
    for after in rows.values_mut() {
        after["price"] = unscaled(&after["price"]).map_or(Value::Null, |v| json!(v as i64));
        after["big"] = unscaled(&after["big"]).map_or(Value::Null, |v| json!(v.to_string()));
    }
    Ok(rows)
}

/// MariaDB through the binlog: the snapshot and a stream under SIGKILLs,
/// every row in the topic as the source has it (BIGINT UNSIGNED in full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_into_kafka_survives_sigkill() {
    let mut conn = maria().create_database("kmaria").await;
    conn.query_drop(
        "CREATE TABLE things (k INT PRIMARY KEY, big BIGINT UNSIGNED, price DECIMAL(12,2),
             name VARCHAR(40), d DATE, at DATETIME(6), t TIME(6))",
    )
    .await
    .unwrap();
    conn.query_drop(
        "INSERT INTO things SELECT seq, 18446744073709551615 - seq, seq * 1.5, CONCAT('n', seq),
             '1000-01-01', '2024-02-29 12:34:56.123456', '-838:59:59'
         FROM seq_1_to_1000",
    )
    .await
    .unwrap();
    let kafka = broker();
    let brokers = kafka.brokers();
    let mut pipeline = Pipeline::with_sink("kmaria", &maria().source_toml("kmaria"), |_| {
        sink_toml(kafka, "km", "max_batch_rows = 200\n")
    });
    pipeline.start();
    let topic = "km.kmaria.things";
    eventually("the snapshot", Duration::from_secs(90), || {
        things_equal(&brokers, topic)
    })
    .await;
    let mut rng = crash_rng("kafka mariadb crash test");
    for round in 0..3 {
        for step in 0..30 {
            let k = 2000 + round * 100 + step;
            conn.query_drop(format!(
                "BEGIN; INSERT INTO things VALUES ({k}, {k}, -{k}.25, 'x{k}', '9999-12-31', '1970-01-01 00:00:00.000001', '12:00:00.5');
                 UPDATE things SET price = price + 1, name = NULL WHERE k = {};
                 DELETE FROM things WHERE k = {}; COMMIT",
                rng.gen_range(1..1000),
                rng.gen_range(1..1000)
            ))
            .await
            .unwrap();
        }
        // A random kill point (replayable from the seed).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
        pipeline.assert_running();
        pipeline.kill();
        eprintln!("round {round}: killed the daemon");
        pipeline.start();
    }
    conn.query_drop("UPDATE things SET name = 'last', big = 0 WHERE k = 2000")
        .await
        .unwrap();
    eventually("the stream", Duration::from_secs(90), || {
        things_equal(&brokers, topic)
    })
    .await;
    let records = read_topic(&brokers, topic);
    tombstones_follow_deletes(&records).unwrap();
    let first = records[0].payload().unwrap();
    assert_eq!(first["source"]["connector"], "mysql");
    assert_eq!(first["source"]["db"], "kmaria");
    eprintln!(
        "kafka mariadb crash test: {} records, {} duplicate events",
        records.len(),
        duplicates(&records)
    );
    assert_eq!(pipeline.terminate(), 0);
}

async fn things_equal(brokers: &str, topic: &str) -> Result<(), String> {
    let mut conn = maria().conn("kmaria").await;
    let expected = maria_things(&mut conn).await;
    same(&expected, &topic_things(&read_topic(brokers, topic))?)
}

/// `delivery = "at-least-once"` (no transactions): SIGKILLs lose nothing,
/// every message carries its mark in headers (what a consumer drops
/// duplicates by), and the metrics endpoint counts what was produced.
/// `check` sees the brokers and the topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_delivery_loses_nothing_and_is_measured() {
    let source = pg().create_database("kafka_alo").await;
    source.batch_execute(ITEMS).await.unwrap();
    let kafka = broker();
    let brokers = kafka.brokers();
    let port = crate::support::free_port();
    let mut pipeline = Pipeline::with_sink("kalo", &pg_source("kafka_alo"), |_| {
        format!(
            "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            sink_toml(
                kafka,
                "kalo",
                "delivery = \"at-least-once\"\nmax_batch_rows = 200\n"
            )
        )
    });
    let check = crate::support::output_within(
        {
            let mut cmd = crate::support::tidewater();
            cmd.args(["check", "--config"]).arg(&pipeline.config);
            cmd
        },
        60,
    );
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("kafka: topic kalo.public.items: can be created"),
        "{said}"
    );
    pipeline.start();
    let topic = "kalo.public.items";
    eventually("the snapshot", Duration::from_secs(90), || {
        items_equal(&source, &brokers, topic)
    })
    .await;
    let (status, body) = crate::metrics::get(port, "/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {body}"))
    };
    assert!(
        value("tidewater_kafka_produced_messages_total ") >= 2000.0,
        "{body}"
    );
    assert!(value("tidewater_kafka_produced_bytes_total ") > 0.0);
    assert_eq!(value("tidewater_kafka_delivery_errors_total "), 0.0);
    assert_eq!(
        value("tidewater_kafka_topic_events{topic=\"kalo.public.items\"} "),
        2000.0
    );
    let mut rng = crash_rng("kafka at-least-once test");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(pg().url("kafka_alo"), stop.clone(), rng.gen()));
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
        pipeline.assert_running();
        pipeline.kill();
        eprintln!("round {round}: killed the daemon");
        pipeline.start();
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    eventually(
        "the topic equal to the source",
        Duration::from_secs(120),
        || items_equal(&source, &brokers, topic),
    )
    .await;
    let records = read_topic(&brokers, topic);
    assert!(records
        .iter()
        .all(|r| r.mark().0 > 0 && r.headers.contains_key("tidewater.position")));
    eprintln!(
        "at-least-once: {} records, {} duplicates",
        records.len(),
        duplicates(&records)
    );
    assert_eq!(pipeline.terminate(), 0);
}
