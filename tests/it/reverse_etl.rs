//! Reverse ETL end to end: lakes fed by the Postgres and MariaDB sources,
//! summaries and typed rows pushed into Postgres and MariaDB tables by the
//! real binary, then source changes → lake → a second push that writes only
//! the difference (row versions prove untouched rows were not rewritten),
//! mirror deletes, dry runs that write nothing, no echo of a push through
//! capture, a schedule under `tidewater run`, lock waits retried, a push
//! killed midway that a re-run completes, and an Iceberg lake read as the
//! Delta lake is, through a column promoted in place and one added.

use std::collections::BTreeMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::mariadb::maria;
use crate::support::{eventually, output_within, pg, tidewater, Pipeline};

type Rows = Vec<Vec<Option<String>>>;

/// Text of each column of each row, ordered by the first column.
async fn pg_rows(client: &tokio_postgres::Client, sql: &str) -> Rows {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

async fn my_rows(conn: &mut mysql_async::Conn, sql: &str) -> Rows {
    let rows: Vec<mysql_async::Row> = conn
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<Option<String>, _>(i).flatten())
                .collect()
        })
        .collect()
}

/// Runs `tidewater reverse-etl` with `args`; its stdout, one line per job.
fn reverse_etl(p: &Pipeline, args: &[&str]) -> BTreeMap<String, String> {
    let mut cmd = tidewater();
    cmd.args(["reverse-etl", "--config"])
        .arg(&p.config)
        .args(args);
    let out = output_within(cmd, 120);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "reverse-etl {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The counts of a report line: (added, changed, deleted, unchanged).
fn counts(line: &str) -> (usize, usize, usize, usize) {
    let number = |word: &str| -> usize {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
        line[at + word.len()..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count after {word:?} in {line:?}"))
    };
    if line.contains("dry run") {
        let unchanged = line
            .split("; ")
            .find(|p| p.ends_with(" unchanged"))
            .and_then(|p| p.trim_end_matches(" unchanged").parse().ok())
            .expect("unchanged count");
        (
            number("would add"),
            number("change"),
            number("delete"),
            unchanged,
        )
    } else {
        let unchanged = line
            .split("; ")
            .find(|p| p.ends_with(" unchanged"))
            .and_then(|p| p.trim_end_matches(" unchanged").parse().ok())
            .expect("unchanged count");
        (
            number("added"),
            number("changed"),
            number("deleted"),
            unchanged,
        )
    }
}

const LTV_QUERY: &str = "SELECT customer_id, sum(total) AS ltv, count(*) AS orders, \
     max(placed_at) AS last_order, max(note) AS note FROM public.orders GROUP BY customer_id";
const ORDERS_QUERY: &str =
    "SELECT id, customer_id, total, placed_at, local_at, day, paid, score, note \
     FROM public.orders";

/// What the summary must be, computed by the source itself.
const PG_LTV_EXPECTED: &str = "SELECT customer_id::text, sum(total)::text, count(*)::text, \
     to_char(max(placed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), max(note) \
     FROM orders GROUP BY customer_id ORDER BY orders.customer_id";
const PG_LTV_TARGET: &str = "SELECT customer_id::text, ltv::text, orders::text, \
     to_char(last_order AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), note \
     FROM customer_ltv ORDER BY customer_ltv.customer_id";
const MY_LTV_TARGET: &str =
    "SELECT CAST(customer_id AS CHAR), CAST(ltv AS CHAR), CAST(orders AS CHAR), \
     DATE_FORMAT(last_order, '%Y-%m-%d %H:%i:%s.%f'), note FROM customer_ltv ORDER BY customer_ltv.customer_id";
const PG_ORDERS_TEXT: &str = "SELECT id::text, customer_id::text, total::text, \
     to_char(placed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(local_at, 'YYYY-MM-DD HH24:MI:SS.US'), day::text, \
     CASE WHEN paid THEN '1' WHEN NOT paid THEN '0' END, score::text, note FROM orders ORDER BY orders.id";
const MY_ORDERS_TEXT: &str = "SELECT CAST(id AS CHAR), CAST(customer_id AS CHAR), CAST(total AS CHAR), \
     DATE_FORMAT(placed_at, '%Y-%m-%d %H:%i:%s.%f'), DATE_FORMAT(local_at, '%Y-%m-%d %H:%i:%s.%f'), \
     CAST(day AS CHAR), CAST(paid AS CHAR), CAST(score AS CHAR), note FROM orders_copy ORDER BY id";

fn job(name: &str, query: &str, url: &str, table: &str, key: &str, mode: &str) -> String {
    format!(
        "\n[[reverse_etl]]\nname = \"{name}\"\nquery = \"{query}\"\ntarget_url = \"{url}\"\n\
         target_table = \"{table}\"\nkey = [\"{key}\"]\nmode = \"{mode}\"\nbatch_rows = 3\n"
    )
}

fn append(p: &Pipeline, text: &str) {
    let mut config = std::fs::read_to_string(&p.config).expect("config");
    config.push_str(text);
    std::fs::write(&p.config, config).expect("write config");
}

/// Row versions (xmin) of a Postgres table by key: a rewritten row gets a
/// new one.
async fn versions(
    client: &tokio_postgres::Client,
    table: &str,
    key: &str,
) -> BTreeMap<String, String> {
    client
        .query(&format!("SELECT {key}::text, xmin::text FROM {table}"), &[])
        .await
        .expect("xmin")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lake_pushed_into_postgres_and_mariadb_tables_by_difference() {
    let server = pg();
    let source = server.create_database("rev_src").await;
    source
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, \
               total numeric(12,2), placed_at timestamptz, local_at timestamp, day date, \
               paid boolean, score double precision, note text);
             INSERT INTO orders SELECT g, g % 5, (g * 7.25)::numeric(12,2) - 20, \
               timestamptz '2024-03-01 10:00:00.123456+00' + g * interval '1 hour 1.000001 second', \
               timestamp '1999-12-31 23:59:59.999999' + g * interval '1 day', \
               date '2000-02-28' + g, g % 2 = 0, g * 0.5 - 3.25, \
               CASE WHEN g % 5 = 3 THEN NULL ELSE 'nöte ' || g || ' ‘q’' END \
             FROM generate_series(1, 40) g;
             UPDATE orders SET total = NULL, paid = NULL, score = NULL, placed_at = NULL WHERE id = 7;",
        )
        .await
        .expect("source table");
    let pg_target = server.create_database("rev_tgt").await;
    let mut my = maria().create_database("rev_tgt").await;

    let mut p = Pipeline::with_source(
        "revpg",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n\
             table_discovery_interval_ms = 300\n",
            server.url("rev_src")
        ),
        "",
    );
    let my_url = maria().root_url("rev_tgt");
    // The summary lands in the source database itself: it must not be
    // captured back. The typed rows go to a second Postgres database and
    // to MariaDB.
    append(
        &p,
        &[
            job(
                "ltv_pg",
                LTV_QUERY,
                &server.url("rev_src"),
                "public.customer_ltv",
                "customer_id",
                "mirror",
            ),
            job(
                "ltv_my",
                LTV_QUERY,
                &my_url,
                "customer_ltv",
                "customer_id",
                "mirror",
            ),
            job(
                "orders_pg",
                ORDERS_QUERY,
                &server.url("rev_tgt"),
                "public.orders",
                "id",
                "upsert",
            ),
            job(
                "orders_my",
                ORDERS_QUERY,
                &my_url,
                "rev_tgt.orders_copy",
                "id",
                "upsert",
            ),
        ]
        .concat(),
    );
    p.start();
    p.wait_equal(&source, "orders").await;

    // Dry run: the counts, and nothing created.
    let dry = reverse_etl(&p, &["--dry-run"]);
    assert_eq!(counts(&dry["ltv_pg"]), (5, 0, 0, 0), "{dry:?}");
    assert_eq!(counts(&dry["orders_my"]), (40, 0, 0, 0), "{dry:?}");
    assert!(dry["ltv_my"].contains("would create"), "{dry:?}");
    let exists = source
        .query_one("SELECT to_regclass('public.customer_ltv') IS NOT NULL", &[])
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(!exists, "a dry run created the target table");

    // First push: everything is new; each target equals what the source
    // computes, value by value.
    let first = reverse_etl(&p, &[]);
    assert_eq!(counts(&first["ltv_pg"]), (5, 0, 0, 0), "{first:?}");
    assert_eq!(counts(&first["ltv_my"]), (5, 0, 0, 0), "{first:?}");
    assert_eq!(counts(&first["orders_pg"]), (40, 0, 0, 0), "{first:?}");
    assert!(
        first["orders_pg"].contains("14 transactions"),
        "batch_rows bounds transactions: {first:?}"
    );
    let expected_ltv = pg_rows(&source, PG_LTV_EXPECTED).await;
    assert_eq!(pg_rows(&source, PG_LTV_TARGET).await, expected_ltv);
    assert_eq!(my_rows(&mut my, MY_LTV_TARGET).await, expected_ltv);
    let expected_orders = pg_rows(&source, PG_ORDERS_TEXT).await;
    assert_eq!(pg_rows(&pg_target, PG_ORDERS_TEXT).await, expected_orders);
    assert_eq!(my_rows(&mut my, MY_ORDERS_TEXT).await, expected_orders);
    // The created columns carry the lake's types.
    let types = pg_rows(
        &pg_target,
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_name = 'orders' AND column_name IN ('total', 'placed_at', 'local_at') ORDER BY 1",
    )
    .await;
    assert_eq!(
        types,
        vec![
            vec![
                Some("local_at".into()),
                Some("timestamp without time zone".into())
            ],
            vec![
                Some("placed_at".into()),
                Some("timestamp with time zone".into())
            ],
            vec![Some("total".into()), Some("numeric".into())],
        ]
    );

    // A second push with nothing changed in the lake writes nothing.
    let ltv_versions = versions(&source, "customer_ltv", "customer_id").await;
    let order_versions = versions(&pg_target, "orders", "id").await;
    let again = reverse_etl(&p, &[]);
    for name in ["ltv_pg", "ltv_my", "orders_pg", "orders_my"] {
        let (added, changed, deleted, _) = counts(&again[name]);
        assert_eq!((added, changed, deleted), (0, 0, 0), "{name}: {again:?}");
        assert!(again[name].contains(" 0 transactions"), "{name}: {again:?}");
    }
    assert_eq!(
        versions(&source, "customer_ltv", "customer_id").await,
        ltv_versions
    );
    assert_eq!(versions(&pg_target, "orders", "id").await, order_versions);

    // Source changes: customer 1 spends more, customer 2 leaves entirely,
    // customer 9 is new.
    source
        .batch_execute(
            "UPDATE orders SET total = total + 100.05, note = NULL WHERE id = 1;
             DELETE FROM orders WHERE customer_id = 2;
             INSERT INTO orders VALUES (100, 9, 0.01, '1970-01-01 00:00:00+00', '2038-01-19 03:14:08', \
               '1970-01-01', true, -0.5, '');",
        )
        .await
        .expect("source changes");
    p.wait_equal(&source, "orders").await;
    let dry = reverse_etl(&p, &["--dry-run", "--job", "ltv_pg"]);
    assert_eq!(dry.len(), 1, "--job runs one job: {dry:?}");
    assert_eq!(counts(&dry["ltv_pg"]), (1, 1, 1, 3), "{dry:?}");
    assert_eq!(
        pg_rows(&source, PG_LTV_TARGET).await,
        expected_ltv,
        "a dry run wrote"
    );

    let second = reverse_etl(&p, &[]);
    assert_eq!(counts(&second["ltv_pg"]), (1, 1, 1, 3), "{second:?}");
    assert_eq!(counts(&second["ltv_my"]), (1, 1, 1, 3), "{second:?}");
    // Upsert: 8 orders of customer 2 left the result but stay in the target.
    assert_eq!(counts(&second["orders_pg"]), (1, 1, 0, 31), "{second:?}");
    assert_eq!(counts(&second["orders_my"]), (1, 1, 0, 31), "{second:?}");
    let expected_ltv = pg_rows(&source, PG_LTV_EXPECTED).await;
    assert_eq!(pg_rows(&source, PG_LTV_TARGET).await, expected_ltv);
    assert_eq!(my_rows(&mut my, MY_LTV_TARGET).await, expected_ltv);
    let after = versions(&source, "customer_ltv", "customer_id").await;
    for customer in ["0", "3", "4"] {
        assert_eq!(
            after[customer], ltv_versions[customer],
            "customer {customer} was rewritten"
        );
    }
    assert_ne!(after["1"], ltv_versions["1"]);
    assert!(!after.contains_key("2"), "mirror did not delete customer 2");
    let mut expected_orders_now = pg_rows(&source, PG_ORDERS_TEXT).await;
    let mut kept: Rows = expected_orders
        .iter()
        .filter(|r| r[1].as_deref() == Some("2"))
        .cloned()
        .collect();
    assert_eq!(kept.len(), 8);
    expected_orders_now.append(&mut kept);
    expected_orders_now.sort_by_key(|r| r[0].as_ref().and_then(|id| id.parse::<i64>().ok()));
    assert_eq!(
        pg_rows(&pg_target, PG_ORDERS_TEXT).await,
        expected_orders_now
    );
    assert_eq!(my_rows(&mut my, MY_ORDERS_TEXT).await, expected_orders_now);

    // No echo: the pipeline streams on (a later change arrives) and never
    // captured the table the job writes into its own database.
    source
        .batch_execute("UPDATE orders SET note = 'later' WHERE id = 3")
        .await
        .unwrap();
    p.wait_equal(&source, "orders").await;
    assert!(
        !p.table_path("public", "customer_ltv").exists(),
        "the pushed table came back through capture"
    );
    assert!(
        p.log(1).contains("not capturing this table"),
        "{}",
        p.log(1)
    );
    assert_eq!(p.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_lake_pushed_on_a_schedule_and_by_hand() {
    let server = maria();
    let mut src = server.create_database("rev_msrc").await;
    src.query_drop(
        "CREATE TABLE payments (id INT PRIMARY KEY, account VARCHAR(20) NOT NULL, \
           amount DECIMAL(10,3) NOT NULL, at DATETIME(6) NULL, memo TEXT NULL)",
    )
    .await
    .unwrap();
    for i in 1..=30 {
        src.query_drop(format!(
            "INSERT INTO payments VALUES ({i}, 'acct-{}', {}.125, '2024-05-0{} 01:02:03.{:06}', {})",
            i % 4,
            i * 3,
            1 + i % 9,
            i * 1001,
            if i % 7 == 0 { "NULL".to_string() } else { format!("'memo {i} ✓'") }
        ))
        .await
        .unwrap();
    }
    let pg_target = pg().create_database("rev_mtgt").await;
    let mut p = Pipeline::with_source("revmy", &server.source_toml("rev_msrc"), "");
    let summary = "SELECT account, sum(amount) AS total, count(*) AS n, max(at) AS last_at \
                   FROM rev_msrc.payments GROUP BY account";
    // One job on a schedule into Postgres (mirror), one by hand into a
    // table of the source database itself (upsert; not captured back).
    append(
        &p,
        &format!(
            "{}every = \"1s\"\n{}",
            job(
                "accounts_pg",
                summary,
                &pg().url("rev_mtgt"),
                "public.accounts",
                "account",
                "mirror"
            ),
            job(
                "accounts_my",
                summary,
                &server.root_url("rev_msrc"),
                "account_totals",
                "account",
                "upsert"
            ),
        ),
    );
    p.start();
    p.wait_equal_mysql(&mut src, "rev_msrc", "payments", "id")
        .await;

    const EXPECTED: &str = "SELECT account, CAST(sum(amount) AS CHAR), CAST(count(*) AS CHAR), \
         DATE_FORMAT(max(at), '%Y-%m-%d %H:%i:%s.%f') FROM payments GROUP BY account ORDER BY account";
    let pg_sql =
        "SELECT account, total::text, n::text, to_char(last_at, 'YYYY-MM-DD HH24:MI:SS.US') \
                  FROM accounts ORDER BY account";
    let want = my_rows(&mut src, EXPECTED).await;
    eventually(
        "the scheduled job pushed the summary",
        Duration::from_secs(60),
        || {
            let want = want.clone();
            let pg_target = &pg_target;
            async move {
                let exists: bool = pg_target
                    .query_one("SELECT to_regclass('public.accounts') IS NOT NULL", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if !exists {
                    return Err("no table yet".into());
                }
                let got = pg_rows(pg_target, pg_sql).await;
                (got == want)
                    .then_some(())
                    .ok_or(format!("{got:?}\n!=\n{want:?}"))
            }
        },
    )
    .await;

    // By hand, into the source database.
    let first = reverse_etl(&p, &["--job", "accounts_my"]);
    assert_eq!(counts(&first["accounts_my"]), (4, 0, 0, 0), "{first:?}");
    let my_sql = "SELECT account, CAST(total AS CHAR), CAST(n AS CHAR), \
                  DATE_FORMAT(last_at, '%Y-%m-%d %H:%i:%s.%f') FROM account_totals ORDER BY account";
    assert_eq!(my_rows(&mut src, my_sql).await, want);

    // Changes flow on: the schedule picks them up, the manual job pushes
    // only the difference.
    src.query_drop(
        "UPDATE payments SET amount = amount + 0.001 WHERE id = 1; \
         DELETE FROM payments WHERE account = 'acct-2'; \
         INSERT INTO payments VALUES (99, 'acct-new', 1.5, NULL, NULL)",
    )
    .await
    .unwrap();
    p.wait_equal_mysql(&mut src, "rev_msrc", "payments", "id")
        .await;
    let want = my_rows(&mut src, EXPECTED).await;
    eventually(
        "the schedule pushed the changes",
        Duration::from_secs(60),
        || {
            let want = want.clone();
            let pg_target = &pg_target;
            async move {
                let got = pg_rows(pg_target, pg_sql).await;
                (got == want)
                    .then_some(())
                    .ok_or(format!("{got:?}\n!=\n{want:?}"))
            }
        },
    )
    .await;
    let second = reverse_etl(&p, &["--job", "accounts_my"]);
    assert_eq!(counts(&second["accounts_my"]), (1, 1, 0, 2), "{second:?}");
    let mut got = my_rows(&mut src, my_sql).await;
    // Upsert keeps the account that left the result.
    got.retain(|r| r[0].as_deref() != Some("acct-2"));
    assert_eq!(got, want);
    assert!(
        !p.table_path("rev_msrc", "account_totals").exists(),
        "the pushed table came back through capture"
    );
    assert_eq!(p.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_push_is_finished_by_the_next_run_and_lock_waits_are_retried() {
    let server = pg();
    let source = server.create_database("rev_big").await;
    source
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
             INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    let target = server.create_database("rev_big_tgt").await;
    let p = Pipeline::new("revbig", &server.url("rev_big"), "");
    let mut cmd = tidewater();
    cmd.args(["snapshot", "--drop-slot", "--config"])
        .arg(&p.config);
    let out = output_within(cmd, 120);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    append(
        &p,
        &format!(
            "{}max_rows_per_second = 600\nstatement_timeout_ms = 400\nmax_retries = 30\n",
            job(
                "items",
                "SELECT id, v FROM public.items",
                &server.url("rev_big_tgt"),
                "public.items",
                "id",
                "upsert"
            )
            .replace("batch_rows = 3", "batch_rows = 50"),
        ),
    );

    // Killed about a second in: part of the rows are committed.
    let mut child = tidewater()
        .args(["reverse-etl", "--config"])
        .arg(&p.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        "part of the push committed",
        Duration::from_secs(60),
        || {
            let target = &target;
            async move {
                let n: i64 = target
                    .query_one("SELECT count(*) FROM items", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                (n >= 300).then_some(()).ok_or(format!("{n} rows"))
            }
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let landed: i64 = target
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        landed < 3000,
        "the push finished before the kill ({landed} rows)"
    );

    // The application holds a lock on the table for a while: the re-run's
    // lock waits time out and are retried until it is released.
    let blocker = server.client("rev_big_tgt").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE items IN SHARE MODE")
        .await
        .unwrap();
    // Released once a lock wait of the re-run timed out and it waits again
    // (a retry): two of its lock waits, told apart by their start.
    let watcher = server.client("rev_big_tgt").await;
    let release = tokio::spawn(async move {
        let mut waits = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while waits.len() < 2 {
            for row in watcher
                .query(
                    "SELECT query_start::text FROM pg_stat_activity \
                     WHERE datname = 'rev_big_tgt' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
            {
                waits.insert(row.get::<_, String>(0));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the re-run never waited twice for the lock: {waits:?}"
            );
            // The polling interval of this wait (a lock wait lasts 100 ms).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        blocker.batch_execute("ROLLBACK").await.unwrap();
        blocker
    });
    let rerun = reverse_etl(&p, &[]);
    let _blocker = release.await.unwrap();
    let line = &rerun["items"];
    let (added, changed, deleted, unchanged) = counts(line);
    assert_eq!((changed, deleted), (0, 0), "{line}");
    assert_eq!(added + unchanged, 3000, "{line}");
    assert!(
        unchanged as i64 >= landed - 50 && added > 0,
        "the re-run did not continue where the killed run stopped: {line}, {landed} had landed"
    );
    let retries: usize = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" retries"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retries in {line}"));
    assert!(retries > 0, "the lock wait was not retried: {line}");
    let equal: i64 = target
        .query_one(
            "SELECT count(*) FROM items t \
             JOIN (SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g) s USING (id) \
             WHERE t.v = s.v",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let total: i64 = target
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((equal, total), (3000, 3000), "the target is not the result");

    // An existing table whose columns do not fit is refused, naming each
    // problem, before anything is written.
    target
        .batch_execute(
            "CREATE TABLE items_bad (id int PRIMARY KEY, v int, extra text NOT NULL); \
             CREATE TABLE items_nokey (id int, v text)",
        )
        .await
        .unwrap();
    append(
        &p,
        &[
            job(
                "bad",
                "SELECT id, v FROM public.items",
                &server.url("rev_big_tgt"),
                "items_bad",
                "id",
                "upsert",
            ),
            job(
                "nokey",
                "SELECT id, v FROM public.items",
                &server.url("rev_big_tgt"),
                "items_nokey",
                "id",
                "upsert",
            ),
        ]
        .concat(),
    );
    for (name, wanted) in [
        (
            "bad",
            vec![
                "column v is integer",
                "column extra is NOT NULL without a default",
            ],
        ),
        (
            "nokey",
            vec!["no primary key or unique index on exactly (id)"],
        ),
    ] {
        let mut cmd = tidewater();
        cmd.args(["reverse-etl", "--job", name, "--config"])
            .arg(&p.config);
        let out = output_within(cmd, 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{name}: no {w:?} in:\n{stderr}");
        }
    }
    let written: i64 = target
        .query_one(
            "SELECT (SELECT count(*) FROM items_bad) + (SELECT count(*) FROM items_nokey)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0);
}

/// Files under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                1
            }
        })
        .sum()
}

/// Starts `tidewater reverse-etl` and SIGKILLs it once `landed` (a count
/// on the target) reaches 1000 while the spill directory holds files;
/// returns `landed` after the kill.
async fn kill_midway(
    p: &Pipeline,
    target: &tokio_postgres::Client,
    spill: &std::path::Path,
    what: &str,
    landed: &str,
) -> i64 {
    let log = p.dir.join("reverse-etl-killed.log");
    let child = tidewater()
        .args(["reverse-etl", "--config"])
        .arg(&p.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log = &log;
    let child = std::sync::Mutex::new(child);
    let child = &child;
    eventually(what, Duration::from_secs(120), || async move {
        if let Some(status) = child.lock().unwrap().try_wait().unwrap() {
            panic!(
                "reverse-etl ended ({status}) before it was killed; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let n: i64 = target
            .query_one(landed, &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let spilled = files_under(spill);
        (n >= 1000 && spilled > 0).then_some(()).ok_or(format!(
            "{n} rows written, {spilled} spill files; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ))
    })
    .await;
    {
        let mut child = child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
    target
        .query_one(landed, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
}

/// Reverse ETL in bounded memory, killed mid-run: a job whose query does
/// not fit its memory (`memory_mb = 4`, ~13 MB of result) spills to its
/// spill directory while it writes; SIGKILLed then, the re-run finishes
/// the push (and removes what the killed run left in the spill
/// directory). Then the source changes (updates, deletes, inserts) and the
/// mirror push of the difference is killed midway too: the re-run leaves
/// the target equal to the source row by row. Duplicate and NULL keys
/// still stop a run with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_killed_while_its_query_spills_is_finished_by_the_next_run() {
    const ROWS: i64 = 20_000;
    let server = pg();
    let source = server.create_database("rev_spill").await;
    source
        .batch_execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, g int NOT NULL, v text NOT NULL);
             INSERT INTO big SELECT g, g % 97, repeat(md5(g::text), 20) \
               FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    let target = server.create_database("rev_spill_tgt").await;
    let mut p = Pipeline::new("revspill", &server.url("rev_spill"), "");
    append(
        &p,
        &format!(
            "{}max_rows_per_second = 2000\nmemory_mb = 4\n",
            job(
                "spill",
                "SELECT id, g, v FROM public.big",
                &server.url("rev_spill_tgt"),
                "public.big",
                "id",
                "mirror"
            )
            .replace("batch_rows = 3", "batch_rows = 100"),
        ),
    );
    p.start();
    p.wait_equal(&source, "big").await;
    let spill = p.dir.join("state/reverse_etl/spill.spill");
    const ROWS_SQL: &str = "SELECT id::text, g::text, v FROM big ORDER BY id";

    // 1. The first push, killed while its sort has spilled.
    let landed = kill_midway(
        &p,
        &target,
        &spill,
        "the first push writing while its query spills",
        "SELECT count(*) FROM big",
    )
    .await;
    assert!(
        landed < ROWS,
        "the push finished before the kill ({landed} rows)"
    );
    assert!(
        files_under(&spill) > 0,
        "the killed run left no spill files"
    );
    let rerun = reverse_etl(&p, &[]);
    let (added, changed, deleted, unchanged) = counts(&rerun["spill"]);
    assert_eq!((changed, deleted), (0, 0), "{rerun:?}");
    assert_eq!(added + unchanged, ROWS as usize, "{rerun:?}");
    assert!(
        unchanged as i64 >= landed - 100 && added > 0,
        "the re-run did not continue where the killed run stopped: {rerun:?}, {landed} had landed"
    );
    assert_eq!(
        pg_rows(&target, ROWS_SQL).await,
        pg_rows(&source, ROWS_SQL).await
    );
    assert_eq!(
        files_under(&spill),
        0,
        "spill files left after a finished run"
    );

    // 2. Changes: 4 000 updated, 1 000 deleted, 500 new; the mirror push of
    // the difference is killed midway.
    source
        .batch_execute(&format!(
            "UPDATE big SET v = 'changed ' || id WHERE id % 5 = 0;
             DELETE FROM big WHERE id % 20 = 1;
             INSERT INTO big SELECT g, g % 97, md5(g::text) \
               FROM generate_series({}, {}) g;",
            ROWS + 1,
            ROWS + 500
        ))
        .await
        .unwrap();
    p.wait_equal(&source, "big").await;
    let updated = kill_midway(
        &p,
        &target,
        &spill,
        "the second push writing while its query spills",
        "SELECT count(*) FROM big WHERE v LIKE 'changed %'",
    )
    .await;
    assert!(
        updated < 4000,
        "the second push finished before the kill ({updated} rows updated)"
    );
    let rerun = reverse_etl(&p, &[]);
    let (added, changed, deleted, _) = counts(&rerun["spill"]);
    assert!(
        added + changed + deleted < 5500,
        "the re-run did not continue where the killed run stopped: {rerun:?}"
    );
    assert_eq!(
        pg_rows(&target, ROWS_SQL).await,
        pg_rows(&source, ROWS_SQL).await,
        "the target is not the query's result"
    );
    let again = reverse_etl(&p, &[]);
    assert_eq!(counts(&again["spill"]).0 + counts(&again["spill"]).1, 0);

    // A key that is not unique, or NULL, stops the run with the reason
    // (found where the sorted result has them: NULL keys last, after the
    // rows before them were written, journaled).
    append(
        &p,
        &[
            job(
                "dup",
                "SELECT id % 97 AS id, v FROM public.big",
                &server.url("rev_spill_tgt"),
                "public.dup",
                "id",
                "upsert",
            ),
            job(
                "nullkey",
                "SELECT CASE WHEN id > 10 THEN id END AS id, v FROM public.big",
                &server.url("rev_spill_tgt"),
                "public.nullkey",
                "id",
                "upsert",
            ),
        ]
        .concat(),
    );
    for (name, wanted) in [
        ("dup", "two result rows have the same key (id)"),
        ("nullkey", "key column id is NULL in a result row"),
    ] {
        let mut cmd = tidewater();
        cmd.args(["reverse-etl", "--job", name, "--config"])
            .arg(&p.config);
        let out = output_within(cmd, 120);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(wanted),
            "{name}: no {wanted:?} in:\n{stderr}"
        );
    }
    // Rows with a key went out before the NULL ones (last) stopped the
    // run; none without one.
    let (written, nulls): (i64, i64) = {
        let row = target
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE id IS NULL) FROM nullkey",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(written > 0 && written <= 19_990, "{written} rows written");
    assert_eq!(nulls, 0);
    assert_eq!(p.terminate(), 0);
}

/// The rows of the wide push, as the source has them.
const PG_WIDE_TEXT: &str = "SELECT id::text, customer_id::text, qty::text, total::text, note, tag \
     FROM orders ORDER BY orders.id";

/// The change log's rows by op, as a target holds them.
const PG_OPS_TARGET: &str = "SELECT op, n::text FROM ops ORDER BY op";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iceberg_lake_pushed_by_difference_through_a_promoted_and_an_added_column() {
    let server = pg();
    let source = server.create_database("rev_isrc").await;
    source
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, qty int, \
               total numeric(12,2), note text);
             INSERT INTO orders SELECT g, g % 4, g * 3, (g * 1.25)::numeric(12,2), \
               CASE WHEN g % 6 = 0 THEN NULL ELSE 'n ' || g END \
             FROM generate_series(1, 30) g;",
        )
        .await
        .expect("source table");
    let target = server.create_database("rev_itgt").await;
    let mut p = Pipeline::iceberg(
        "reviceberg",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            server.url("rev_isrc")
        ),
        "",
    );
    // The current state (upsert) and the change log by op (mirror).
    append(
        &p,
        &[
            job(
                "orders_now",
                "SELECT id, customer_id, total, note FROM public.orders",
                &server.url("rev_itgt"),
                "public.orders",
                "id",
                "mirror",
            ),
            job(
                "ops",
                "SELECT _tw_op AS op, count(*) AS n FROM public.orders__changes GROUP BY _tw_op",
                &server.url("rev_itgt"),
                "public.ops",
                "op",
                "mirror",
            ),
        ]
        .concat(),
    );
    p.start();
    p.wait_equal(&source, "orders").await;
    let first = reverse_etl(&p, &[]);
    assert_eq!(counts(&first["orders_now"]), (30, 0, 0, 0), "{first:?}");
    assert_eq!(counts(&first["ops"]), (1, 0, 0, 0), "{first:?}");
    let now =
        "SELECT id::text, customer_id::text, total::text, note FROM orders ORDER BY orders.id";
    assert_eq!(pg_rows(&target, now).await, pg_rows(&source, now).await);
    assert_eq!(
        pg_rows(&target, PG_OPS_TARGET).await,
        vec![vec![Some("r".to_string()), Some("30".to_string())]]
    );

    // While streaming: qty int → bigint (Iceberg promotes the column in
    // place: the older files keep ints), a column added, values beyond
    // int, an insert, updates and a delete.
    source
        .batch_execute(
            "ALTER TABLE orders ALTER COLUMN qty TYPE bigint;
             ALTER TABLE orders ADD COLUMN tag text;
             UPDATE orders SET qty = 5000000000 + id, tag = 'big', note = 'changed' WHERE id <= 3;
             INSERT INTO orders VALUES (100, 9, 6000000000, 1.00, 'new', 'fresh');
             DELETE FROM orders WHERE id = 30;",
        )
        .await
        .expect("source changes");
    p.wait_equal(&source, "orders").await;
    // The lake holds qty both ways: as int in the files written before the
    // change (promoted in place, no versioned column), as long after.
    let mut qty_types = std::collections::BTreeSet::new();
    let mut pending = vec![p.table_path("public", "orders").join("data")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("data dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap();
                let schema = reader.schema();
                assert!(schema.field_with_name("qty__v2").is_err(), "{schema:?}");
                qty_types.insert(
                    schema
                        .field_with_name("qty")
                        .map(|f| f.data_type().to_string())
                        .unwrap_or_default(),
                );
            }
        }
    }
    assert_eq!(
        qty_types.into_iter().collect::<Vec<_>>(),
        ["Int32", "Int64"],
        "qty in the data files"
    );
    // A job over the new shape: every row, the old ones read from files
    // with an int qty and no tag.
    append(
        &p,
        &job(
            "wide",
            "SELECT id, customer_id, qty, total, note, tag FROM public.orders",
            &server.url("rev_itgt"),
            "public.orders_wide",
            "id",
            "mirror",
        ),
    );
    let second = reverse_etl(&p, &[]);
    assert_eq!(counts(&second["orders_now"]), (1, 3, 1, 26), "{second:?}");
    assert_eq!(counts(&second["ops"]), (3, 0, 0, 1), "{second:?}");
    assert_eq!(counts(&second["wide"]), (30, 0, 0, 0), "{second:?}");
    assert_eq!(pg_rows(&target, now).await, pg_rows(&source, now).await);
    let wide = PG_WIDE_TEXT.replace(
        "FROM orders ORDER BY orders.id",
        "FROM orders_wide ORDER BY orders_wide.id",
    );
    assert_eq!(
        pg_rows(&target, &wide).await,
        pg_rows(&source, PG_WIDE_TEXT).await
    );
    let types = pg_rows(
        &target,
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_name = 'orders_wide' AND column_name IN ('qty', 'tag') ORDER BY 1",
    )
    .await;
    assert_eq!(
        types,
        vec![
            vec![Some("qty".into()), Some("bigint".into())],
            vec![Some("tag".into()), Some("text".into())],
        ]
    );
    let ops = |rows: &[(&str, &str)]| -> Rows {
        rows.iter()
            .map(|(op, n)| vec![Some(op.to_string()), Some(n.to_string())])
            .collect()
    };
    assert_eq!(
        pg_rows(&target, PG_OPS_TARGET).await,
        ops(&[("c", "1"), ("d", "1"), ("r", "30"), ("u", "3")])
    );
    // Nothing changed since: nothing written.
    let again = reverse_etl(&p, &[]);
    for name in ["orders_now", "ops", "wide"] {
        let (added, changed, deleted, _) = counts(&again[name]);
        assert_eq!((added, changed, deleted), (0, 0, 0), "{name}: {again:?}");
    }
    assert_eq!(p.terminate(), 0, "{}", p.log(1));
}

/// Reverse ETL over an Iceberg lake on S3 (moto): the scan reads the
/// files the manifests name through the S3 store at the lake root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iceberg_lake_on_s3_is_pushed_as_the_source_has_it() {
    use crate::support::s3::s3;
    let server = s3();
    server.create_bucket("tw-rev-ice");
    let source = pg().create_database("revices3").await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g;",
        )
        .await
        .unwrap();
    let target = pg().create_database("revices3_tgt").await;
    let mut p = crate::lake_s3::s3_pipeline("revices3", "tw-rev-ice", &server.endpoint());
    let text = std::fs::read_to_string(&p.config).unwrap();
    let text = text.replace(
        "uri = \"s3://tw-rev-ice/lake\"",
        "uri = \"s3://tw-rev-ice/lake\"\nformat = \"iceberg\"",
    ) + &format!(
        "\n[sink.catalog]\nuri = \"sqlite://{}\"\n",
        p.lake.with_file_name("catalog.db").display()
    );
    std::fs::write(&p.config, text).unwrap();
    append(
        &p,
        &[
            job(
                "rows",
                "SELECT id, v FROM public.t",
                &pg().url("revices3_tgt"),
                "public.t",
                "id",
                "mirror",
            ),
            job(
                "ops",
                "SELECT _tw_op AS op, count(*) AS n FROM public.t__changes GROUP BY _tw_op",
                &pg().url("revices3_tgt"),
                "public.ops",
                "op",
                "mirror",
            ),
        ]
        .concat(),
    );
    p.start();
    let rows = "SELECT id::text, v FROM t ORDER BY t.id";
    push_until_equal(&p, &source, &target, rows).await;
    source
        .batch_execute(
            "UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 190;
             INSERT INTO t VALUES (1000, 'new');",
        )
        .await
        .unwrap();
    push_until_equal(&p, &source, &target, rows).await;
    let ops = |rows: &[(&str, &str)]| -> Rows {
        rows.iter()
            .map(|(op, n)| vec![Some(op.to_string()), Some(n.to_string())])
            .collect()
    };
    assert_eq!(
        pg_rows(&target, PG_OPS_TARGET).await,
        ops(&[("c", "1"), ("d", "10"), ("r", "200"), ("u", "10")])
    );
    assert_eq!(p.terminate(), 0, "{}", p.log(1));
}

/// Runs the pipeline's jobs (with its environment) until `rows` (a query)
/// reads the same in the target as in the source. Until the pipeline
/// created the lake table, a job says the lake has no such table: tried
/// again.
async fn push_until_equal(
    p: &Pipeline,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    rows: &str,
) {
    let expected = pg_rows(source, rows).await;
    eventually(
        "the push from the lake equals the source",
        Duration::from_secs(90),
        || {
            let mut cmd = tidewater();
            cmd.args(["reverse-etl", "--config"])
                .arg(&p.config)
                .envs(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let out = output_within(cmd, 120);
            let expected = &expected;
            async move {
                if !out.status.success() {
                    return Err(format!(
                        "reverse-etl failed:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let got = pg_rows(target, rows).await;
                if &got == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{} rows pushed, {} in the source",
                        got.len(),
                        expected.len()
                    ))
                }
            }
        },
    )
    .await;
}
