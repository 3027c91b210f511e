//! `[masking]`: columns left out, made constant or hashed at capture. The
//! lake (change logs, current-state tables, schema history, Delta logs) and
//! the warehouse database are searched byte by byte for the clear values —
//! and for a control value that is not masked, so the search is shown to
//! find what is there. Hashes are checked against pgcrypto's HMAC, an
//! implementation that is not tidewater's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde_json::Value;
use tokio_postgres::Client;

use crate::support::lake::{self, Row};
use crate::support::mariadb::maria;
use crate::support::{eventually, pg, Pipeline};

const KEY: &str = "test-hash-key-0123456789abcdef";
/// Distinct tokens per column (no four bytes shared, so a compressor never
/// hides one behind another): what must never land, and the control.
const EMAIL: &str = "EMLQX";
const SSN: &str = "SSNZK";
const NICK: &str = "NICKJV";

pub(crate) const MASKING: &str = r#"
[masking]
hash_key = "${TW_TEST_HASH_KEY}"

[[masking.columns]]
table = "*.people"
columns = ["id", "email"]
action = "hash"

[[masking.columns]]
table = "*.people"
columns = ["ss?"]
action = "exclude"

[[masking.columns]]
table = "*.people"
columns = ["born"]
action = "constant"
value = "withheld"

[[masking.columns]]
table = "*.orders"
columns = ["person_email"]
action = "hash"
"#;

pub(crate) fn masked_pipeline(pipeline: &mut Pipeline) {
    pipeline.env.push(("TW_TEST_HASH_KEY".into(), KEY.into()));
}

/// HMAC-SHA-256 of each text under [`KEY`], by pgcrypto.
async fn pg_hmacs(texts: &[String]) -> Vec<String> {
    static PGCRYPTO: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let client = pg().client("postgres").await;
    PGCRYPTO
        .get_or_init(|| async {
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
                .await
                .unwrap()
        })
        .await;
    let rows = client
        .query(
            "SELECT encode(hmac(t, $2, 'sha256'), 'hex') FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            &[&texts, &KEY],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Every file under `dir`, read whole.
pub(crate) fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// No file under `dir` holds a masked token; some file holds the control.
fn assert_no_clear_values(dir: &Path, what: &str) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "no files under {}", dir.display());
    for (path, bytes) in &files {
        for token in [EMAIL, SSN, KEY] {
            assert!(
                !contains(bytes, token),
                "{what}: {} holds the clear token {token}",
                path.display()
            );
        }
    }
    assert!(
        files.iter().any(|(_, bytes)| contains(bytes, NICK)),
        "{what}: no file holds the unmasked control {NICK}: the search proves nothing"
    );
}

/// Lake rows of `people` as the masking should make them, from the source.
async fn expected_people_pg(client: &Client) -> BTreeMap<String, Row> {
    let rows = client
        .query(
            "SELECT id::text, email, born IS NULL, nick, note FROM people",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let emails: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, Option<String>>(1).unwrap_or_default())
        .collect();
    let id_hashes = pg_hmacs(&ids).await;
    let email_hashes = pg_hmacs(&emails).await;
    let mut state = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let mut values = Row::new();
        let id = Value::String(id_hashes[i].clone());
        values.insert("id".into(), id.clone());
        values.insert(
            "email".into(),
            match row.get::<_, Option<String>>(1) {
                Some(_) => Value::String(email_hashes[i].clone()),
                None => Value::Null,
            },
        );
        let born_null: bool = row.get(2);
        values.insert(
            "born".into(),
            if born_null {
                Value::Null
            } else {
                Value::String("withheld".into())
            },
        );
        values.insert("nick".into(), Value::String(row.get(3)));
        values.insert("note".into(), Value::String(row.get(4)));
        state.insert(id.to_string(), values);
    }
    state
}

fn keyed(rows: Vec<lake::LogRow>) -> BTreeMap<String, Row> {
    rows.into_iter()
        .map(|r| {
            let key = r
                .values
                .get("id")
                .cloned()
                .unwrap_or(Value::Null)
                .to_string();
            (key, r.values)
        })
        .collect()
}

const PG_TABLES: &str = "
    CREATE TABLE people (id int PRIMARY KEY, email text, ssn text, born date, nick text,
        note text);
    -- note is stored out of line and uncompressed: an update that leaves it
    -- alone sends it as 'unchanged TOAST', restored by the hashed key.
    ALTER TABLE people ALTER note SET STORAGE EXTERNAL;
    CREATE TABLE orders (id int PRIMARY KEY, person_email text, amount numeric(10,2));
";

fn pg_people(from: i32, to: i32) -> String {
    format!(
        "INSERT INTO people SELECT g, 'p' || g || '.{EMAIL}@example.com', '{SSN}-' || g,
             date '1980-01-01' + g, '{NICK}' || g, repeat(md5(g::text), 100)
           FROM generate_series({from}, {to}) g;
         INSERT INTO orders SELECT g, 'p' || (g % {to} + 1) || '.{EMAIL}@example.com', g * 1.5
           FROM generate_series({from}, {to}) g;"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_masking_keeps_clear_values_out_of_the_lake() {
    let client = pg().create_database("mask_pg").await;
    client.batch_execute(PG_TABLES).await.unwrap();
    client.batch_execute(&pg_people(1, 40)).await.unwrap();
    let mut pipeline = Pipeline::with_source(
        "mask_pg",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("mask_pg")
        ),
        &format!(
            "current_state = true\ncurrent_state_interval_ms = 300\n{MASKING}\n\
             [[reverse_etl]]\nname = \"orders_per_person\"\n\
             query = \"SELECT p.id, count(o.id) AS orders FROM public.people p \
             JOIN public.orders o ON o.person_email = p.email GROUP BY p.id\"\n\
             target_url = \"{}\"\ntarget_table = \"public.people_orders\"\nkey = [\"id\"]\n",
            pg().url("mask_pg")
        ),
    );
    masked_pipeline(&mut pipeline);
    // `check` lists what masking does to each column.
    let mut cmd = crate::support::tidewater();
    cmd.args(["check", "--config"])
        .arg(&pipeline.config)
        .env("TW_TEST_HASH_KEY", KEY);
    let (code, output) = crate::support::code_and_output_within(cmd, 120);
    assert_eq!(code, 0, "{output}");
    for line in [
        "masking: public.people.id: hmac-sha256 key ",
        "masking: public.people.ssn: excluded",
        "masking: public.people.born: constant (was date)",
        "masking: public.orders.person_email: hmac-sha256 key ",
    ] {
        assert!(output.contains(line), "{line:?} in:\n{output}");
    }
    pipeline.start();

    let people = pipeline.table_path("public", "people");
    let current = pipeline.lake.join("mask_pg.current/public/people");
    let check = |path: std::path::PathBuf, current_state: bool| {
        let client = &client;
        async move {
            let expected = expected_people_pg(client).await;
            let got = if current_state {
                keyed(lake::read_current(&path).await?)
            } else {
                lake::current_state(&lake::read_log(&path).await?, "id")
            };
            lake::compare(&expected, &got)
        }
    };
    eventually("the masked snapshot", Duration::from_secs(90), || {
        check(people.clone(), false)
    })
    .await;

    // Streaming: inserts, updates that leave the TOASTed note alone (it is
    // restored from the lake by the hashed key), a born made NULL, deletes.
    client
        .batch_execute(&format!(
            "{}
             UPDATE people SET email = 'new' || id || '.{EMAIL}@example.com' WHERE id % 3 = 0;
             UPDATE people SET born = NULL WHERE id = 5;
             UPDATE people SET nick = '{NICK}x' || id WHERE id % 7 = 0;
             DELETE FROM people WHERE id IN (2, 41);
             UPDATE orders SET person_email = 'p7.{EMAIL}@example.com' WHERE id = 1;",
            pg_people(41, 60)
        ))
        .await
        .unwrap();
    eventually("the masked stream", Duration::from_secs(90), || {
        check(people.clone(), false)
    })
    .await;
    eventually(
        "the masked current-state table",
        Duration::from_secs(90),
        || check(current.clone(), true),
    )
    .await;
    pipeline.assert_running();

    // Joins on hashed values still work: every order's hashed e-mail of a
    // person who has it is that person's hashed e-mail.
    let orders = lake::current_state(
        &lake::read_log(&pipeline.table_path("public", "orders"))
            .await
            .unwrap(),
        "id",
    );
    let people_now = lake::current_state(&lake::read_log(&people).await.unwrap(), "id");
    let lake_emails: std::collections::BTreeSet<String> = people_now
        .values()
        .filter_map(|r| r.get("email").map(Value::to_string))
        .collect();
    let joined = orders
        .values()
        .filter(|o| lake_emails.contains(&o["person_email"].to_string()))
        .count();
    let source_joined: i64 = client
        .query_one(
            "SELECT count(*) FROM orders o JOIN people p ON p.email = o.person_email",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(source_joined > 10, "the fixture joins ({source_joined})");
    assert_eq!(joined as i64, source_joined, "joins on hashed e-mails");

    // The schema history records how each column is masked.
    let history = std::fs::read_to_string(people.join("_tidewater_schema_history.json"))
        .expect("schema history");
    let history: Value = serde_json::from_str(&history).unwrap();
    let columns = history["versions"][0]["columns"].as_array().unwrap();
    let source_type = |name: &str| {
        columns
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["source_type"].as_str().unwrap().to_string())
    };
    assert!(source_type("ssn").is_none(), "ssn is excluded: {columns:?}");
    let id_type = source_type("id").unwrap();
    assert!(
        id_type.starts_with("hmac-sha256 key ") && id_type.ends_with("(was integer)"),
        "{id_type}"
    );
    assert_eq!(source_type("born").unwrap(), "constant (was date)");

    pipeline.terminate();

    // Reverse ETL joins on the hashed values and writes hashed keys back.
    let mut cmd = crate::support::tidewater();
    cmd.args(["reverse-etl", "--config"])
        .arg(&pipeline.config)
        .env("TW_TEST_HASH_KEY", KEY);
    let (code, output) = crate::support::code_and_output_within(cmd, 120);
    assert_eq!(code, 0, "{output}");
    let source_counts = client
        .query(
            "SELECT p.id::text, count(o.id) FROM people p JOIN orders o ON o.person_email = p.email \
             GROUP BY p.id ORDER BY p.id",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<String> = source_counts.iter().map(|r| r.get(0)).collect();
    let hashed = pg_hmacs(&ids).await;
    let expected: BTreeMap<String, i64> = hashed
        .into_iter()
        .zip(source_counts.iter().map(|r| r.get::<_, i64>(1)))
        .collect();
    let pushed: BTreeMap<String, i64> = client
        .query("SELECT id, orders FROM public.people_orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(expected.len() > 10, "the fixture joins");
    assert_eq!(pushed, expected, "reverse ETL on hashed keys");

    assert_no_clear_values(&pipeline.lake, "the lake");
    for start in 1..=pipeline.starts {
        let log = pipeline.log(start);
        assert!(!log.contains(EMAIL) && !log.contains(KEY), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_masking_keeps_clear_values_out_of_the_warehouse() {
    let client = pg().create_database("mask_whs").await;
    let warehouse = pg().create_database("mask_whd").await;
    client.batch_execute(PG_TABLES).await.unwrap();
    client.batch_execute(&pg_people(1, 30)).await.unwrap();
    let mut pipeline = Pipeline::warehouse(
        "mask_wh",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("mask_whs")
        ),
        &pg().url("mask_whd"),
        &format!("changelog = true\n{MASKING}"),
    );
    masked_pipeline(&mut pipeline);
    pipeline.start();
    let same = || {
        let (client, warehouse) = (&client, &warehouse);
        async move {
            let exists: bool = warehouse
                .query_one("SELECT to_regclass('public.people') IS NOT NULL", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if !exists {
                return Err("no warehouse table yet".to_string());
            }
            let expected = expected_people_pg(client).await;
            let got = lake::source_state(warehouse, "public.people", "id").await;
            lake::compare(&expected, &got)
        }
    };
    eventually(
        "the masked warehouse snapshot",
        Duration::from_secs(90),
        same,
    )
    .await;
    client
        .batch_execute(&format!(
            "{}
             UPDATE people SET email = 'w' || id || '.{EMAIL}@example.com' WHERE id % 4 = 0;
             DELETE FROM people WHERE id = 3;",
            pg_people(31, 45)
        ))
        .await
        .unwrap();
    eventually("the masked warehouse stream", Duration::from_secs(90), same).await;
    let change_log_rows: i64 = warehouse
        .query_one("SELECT count(*) FROM public.people__changes", &[])
        .await
        .unwrap()
        .get(0);
    assert!(change_log_rows > 45, "{change_log_rows} change-log rows");
    pipeline.terminate();

    // Every page of the warehouse database, on disk.
    warehouse.batch_execute("CHECKPOINT").await.unwrap();
    let row = warehouse
        .query_one(
            "SELECT current_setting('data_directory'), oid::text FROM pg_database \
             WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let (data_dir, oid): (String, String) = (row.get(0), row.get(1));
    assert_no_clear_values(
        &Path::new(&data_dir).join("base").join(oid),
        "the warehouse database",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_masking_keeps_clear_values_out_of_the_lake() {
    let server = maria();
    let mut conn = server.create_database("mask_my").await;
    let people = |from: i32, to: i32| {
        format!(
            "INSERT INTO people (id, email, ssn, born, nick) \
             SELECT seq, CONCAT('p', seq, '.{EMAIL}@example.com'), CONCAT('{SSN}-', seq), \
               DATE_ADD('1980-01-01', INTERVAL seq DAY), CONCAT('{NICK}', seq) \
             FROM seq_{from}_to_{to}"
        )
    };
    conn.query_drop(
        "CREATE TABLE people (id int PRIMARY KEY, email varchar(100), ssn varchar(20), \
         born date, nick varchar(20)) ENGINE=InnoDB",
    )
    .await
    .unwrap();
    conn.query_drop(people(1, 40)).await.unwrap();
    let mut pipeline = Pipeline::with_source("mask_my", &server.source_toml("mask_my"), MASKING);
    masked_pipeline(&mut pipeline);
    pipeline.start();
    let path = pipeline.table_path("mask_my", "people");

    let expected_rows = |rows: Vec<(i32, Option<String>, bool, String)>| async move {
        let ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        let emails: Vec<String> = rows
            .iter()
            .map(|r| r.1.clone().unwrap_or_default())
            .collect();
        let (ids, emails) = (pg_hmacs(&ids).await, pg_hmacs(&emails).await);
        let mut state = BTreeMap::new();
        for (i, (_, email, born_null, nick)) in rows.into_iter().enumerate() {
            let mut row = Row::new();
            let id = Value::String(ids[i].clone());
            row.insert("id".into(), id.clone());
            row.insert(
                "email".into(),
                email.map_or(Value::Null, |_| Value::String(emails[i].clone())),
            );
            row.insert(
                "born".into(),
                if born_null {
                    Value::Null
                } else {
                    Value::String("withheld".into())
                },
            );
            row.insert("nick".into(), Value::String(nick));
            state.insert(id.to_string(), row);
        }
        state
    };
    for phase in ["snapshot", "stream"] {
        if phase == "stream" {
            conn.query_drop(people(41, 70)).await.unwrap();
            conn.query_drop(format!(
                "UPDATE people SET email = CONCAT('n', id, '.{EMAIL}@example.com') WHERE id % 3 = 0; \
                 UPDATE people SET born = NULL WHERE id = 4; \
                 DELETE FROM people WHERE id IN (2, 50)"
            ))
            .await
            .unwrap();
        }
        let source: Vec<(i32, Option<String>, bool, String)> = conn
            .query("SELECT id, email, born IS NULL, nick FROM people")
            .await
            .unwrap();
        let expected = expected_rows(source).await;
        eventually(
            &format!("the masked {phase} in the lake"),
            Duration::from_secs(90),
            || {
                let (path, expected) = (path.clone(), &expected);
                async move {
                    let got = lake::current_state(&lake::read_log(&path).await?, "id");
                    lake::compare(expected, &got)
                }
            },
        )
        .await;
    }
    pipeline.terminate();
    assert_no_clear_values(&pipeline.lake, "the lake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluding_a_key_column_stops_with_a_config_error() {
    let client = pg().create_database("mask_key").await;
    client
        .batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, iban text); INSERT INTO accounts VALUES (1, 'x')")
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source(
        "mask_key",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("mask_key")
        ),
        "\n[[masking.columns]]\ntable = \"public.accounts\"\ncolumns = [\"i*\"]\naction = \"constant\"\nvalue = \"-\"\n",
    );
    // `check` says so before any run.
    let mut cmd = crate::support::tidewater();
    cmd.args(["check", "--config"]).arg(&pipeline.config);
    let (code, output) = crate::support::code_and_output_within(cmd, 120);
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("masking: column id of public.accounts is part of the row key"),
        "{output}"
    );
    pipeline.start();
    let code = pipeline.wait_exit(Duration::from_secs(60)).await;
    let log = pipeline.log(1);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("column id of public.accounts is part of the row key")
            && log.contains("action = \"hash\""),
        "{log}"
    );
    assert!(
        !pipeline
            .table_path("public", "accounts")
            .join("_delta_log")
            .exists(),
        "nothing landed"
    );
}
