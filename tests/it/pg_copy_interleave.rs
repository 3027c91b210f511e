//! A table copied while streaming runs beside the stream: the other tables'
//! transactions keep landing while the copy goes on, the copied table's own
//! changes during its copy land after its copy rows (and win in its
//! current state), and a SIGKILL in the middle of it all loses and
//! duplicates nothing.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::lake::{
    assert_each_change_once, count_op, read_log, wait_id_beyond, wait_log_rows,
};
use crate::support::{eventually, pg, Pipeline};

/// Rows of the table that joins; large enough that its copy takes a while.
const ROWS: i64 = 200_000;

/// Rows per lake batch (also per commit of a copy, at most).
const BATCH_ROWS: usize = 20_000;

fn pipeline(name: &str, batch_rows: usize) -> Pipeline {
    pipeline_with(name, batch_rows, "")
}

fn pipeline_with(name: &str, batch_rows: usize, extra_source: &str) -> Pipeline {
    Pipeline::with_source(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n\
             table_discovery_interval_ms = 300\n{extra_source}",
            pg().url(name)
        ),
        &format!("max_batch_rows = {batch_rows}\n"),
    )
}

/// Single-row transactions into `hot` until `stop`; `last` is the id of the
/// last one committed. Returns how many were committed.
async fn write_hot(url: String, stop: Arc<AtomicBool>, last: Arc<AtomicI64>) -> i64 {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connect");
    tokio::spawn(connection);
    let mut id = 0i64;
    while !stop.load(Ordering::SeqCst) {
        id += 1;
        client
            .execute(
                "INSERT INTO hot (id, v) VALUES ($1, 'h' || $1::bigint)",
                &[&id],
            )
            .await
            .unwrap();
        last.store(id, Ordering::SeqCst);
        // The writer's pace: a steady stream of small transactions.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

/// `big`: ROWS rows, every 10 000th with a TOASTed `doc` (a later update
/// that leaves it alone sends it as "unchanged"); ~60 MiB, more than the
/// daemon queues between its source and its sink, so the copy is read
/// at the pace it is written and is still being read when `big` changes.
const CREATE_BIG: &str = "CREATE TABLE big (id bigint PRIMARY KEY, v text, doc text, pad text);
     INSERT INTO big SELECT g, 'v' || g,
       CASE WHEN g % 10000 = 0
            THEN (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i)
            ELSE 'd' || g END,
       repeat('p', 300)
     FROM generate_series(1, 200000) g;";

/// Changes of `big` made while it is being copied: 200 + 1 updates (20 of
/// them leave the TOASTed `doc` unchanged), 100 deletes, 1 insert.
const CHANGE_BIG: &str = "UPDATE big SET v = 'updated' WHERE id % 1000 = 0;
     DELETE FROM big WHERE id BETWEEN 100 AND 199;
     INSERT INTO big VALUES (300000, 'new', 'n', 'p');
     UPDATE big SET v = 'late' WHERE id = 199999;";

async fn wait_copy_started(pipeline: &Pipeline, start: u32) {
    eventually(
        "the copy of big under way",
        Duration::from_secs(120),
        || {
            let log = pipeline.log(start);
            async move {
                log.lines()
                    .any(|l| l.contains("snapshot copy started") && l.contains("public.big"))
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_tables_keep_streaming_while_a_table_is_copied() {
    let client = pg().create_database("interleave").await;
    client
        .batch_execute("CREATE TABLE hot (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut pipeline = pipeline("interleave", BATCH_ROWS);
    pipeline.start();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn(write_hot(
        pg().url("interleave"),
        stop.clone(),
        last.clone(),
    ));
    wait_log_rows(&pipeline.table_path("public", "hot"), 5).await;

    client.batch_execute(CREATE_BIG).await.unwrap();
    wait_copy_started(&pipeline, 1).await;
    // Committed after the copy's snapshot was taken: in no copy row.
    let after_copy_began = last.load(Ordering::SeqCst);
    client.batch_execute(CHANGE_BIG).await.unwrap();

    // A row of `hot` committed after the copy began reaches the lake while
    // most of `big` is still to come (the lake is read in that order: hot
    // first, big after).
    let hot_path = pipeline.table_path("public", "hot");
    let big_path = pipeline.table_path("public", "big");
    wait_id_beyond(
        &pipeline.table_path("public", "hot"),
        after_copy_began,
        || pipeline.log(pipeline.starts),
    )
    .await;
    let copied_by_then = count_op(&read_log(&big_path).await.unwrap_or_default(), "r");
    eprintln!("rows of big copied when hot's later row landed: {copied_by_then}");
    assert!(
        copied_by_then < ROWS as usize - 2 * BATCH_ROWS,
        "hot waited for the copy: {copied_by_then} of {ROWS} rows of big copied by then"
    );

    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    pipeline
        .wait_equal_within(&client, "big", Duration::from_secs(240))
        .await;
    pipeline.wait_equal(&client, "hot").await;
    let held = pipeline
        .log(1)
        .lines()
        .find(|l| l.contains("snapshot copy done") && l.contains("public.big"))
        .map(str::to_string);
    eprintln!("{held:?}");

    let big = read_log(&big_path).await.unwrap();
    assert_each_change_once(&big);
    assert_eq!(
        count_op(&big, "r"),
        ROWS as usize,
        "one copy, every row once"
    );
    assert_eq!(
        count_op(&big, "u"),
        201,
        "each update of the copy's time once"
    );
    assert_eq!(count_op(&big, "d"), 100, "each delete once");
    assert_eq!(count_op(&big, "c"), 1, "the insert once");
    assert_eq!(count_op(&big, "t"), 0, "a first copy supersedes nothing");
    // Every change streamed during the copy sorts after every copy row.
    let last_read = big.iter().rfind(|r| r.op == "r").unwrap();
    assert!(
        big.iter()
            .filter(|r| r.op != "r")
            .all(|r| (r.seq, r.ord) > (last_read.seq, last_read.ord)),
        "a streamed change of big sorts before a copy row"
    );
    let hot = read_log(&hot_path).await.unwrap();
    assert_each_change_once(&hot);
    assert_eq!(hot.len() as i64, inserted, "each row of hot once");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// SIGKILL while a table is copied beside a busy stream, with changes of
/// that table held until its copy ends: the restart copies it again (its
/// partial copy superseded by a truncate), the other table resumes from
/// its marks, and both equal the source with every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_interleaved_copy_loses_and_duplicates_nothing() {
    let client = pg().create_database("interleave_kill").await;
    client
        .batch_execute("CREATE TABLE hot (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut pipeline = pipeline("interleave_kill", BATCH_ROWS);
    pipeline.start();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn(write_hot(
        pg().url("interleave_kill"),
        stop.clone(),
        last.clone(),
    ));
    wait_log_rows(&pipeline.table_path("public", "hot"), 5).await;
    client.batch_execute(CREATE_BIG).await.unwrap();
    wait_copy_started(&pipeline, 1).await;
    client.batch_execute(CHANGE_BIG).await.unwrap();
    // Killed once a row of hot committed after those changes is in the
    // lake, which acknowledged the slot past them while they are still held
    // (the copy goes on: see the test above).
    let after_change = last.load(Ordering::SeqCst);
    let hot_path = pipeline.table_path("public", "hot");
    let big_path = pipeline.table_path("public", "big");
    wait_id_beyond(&pipeline.table_path("public", "hot"), after_change, || {
        pipeline.log(pipeline.starts)
    })
    .await;
    pipeline.kill();
    let partial = count_op(&read_log(&big_path).await.unwrap(), "r");
    eprintln!("killed with {partial} of {ROWS} rows of big copied");
    assert!(partial < ROWS as usize, "killed before the copy completed");
    client
        .batch_execute("UPDATE big SET v = 'while down' WHERE id % 777 = 0")
        .await
        .unwrap();
    pipeline.start();
    wait_copy_started(&pipeline, 2).await;
    client
        .batch_execute(
            "UPDATE big SET v = 'second copy' WHERE id % 555 = 0; DELETE FROM big WHERE id = 7;",
        )
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    pipeline
        .wait_equal_within(&client, "big", Duration::from_secs(240))
        .await;
    pipeline.wait_equal(&client, "hot").await;
    let big = read_log(&big_path).await.unwrap();
    assert_each_change_once(&big);
    if partial > 0 {
        assert!(count_op(&big, "t") >= 1, "the partial copy is superseded");
    }
    let hot = read_log(&hot_path).await.unwrap();
    assert_each_change_once(&hot);
    assert_eq!(hot.len() as i64, inserted, "each row of hot once");
    assert!(pipeline.log(2).contains("copying a table while streaming"));
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// The copied table's changes during its copy past `copy_hold_bytes`: the
/// stream waits for the copy from there, also inside the transaction that
/// crossed the bound (a bulk update of the copied table), which goes on
/// after the copy; every change lands once and the lake equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_a_copied_table_beyond_the_hold_budget_wait_for_the_copy() {
    let client = pg().create_database("interleave_budget").await;
    client
        .batch_execute("CREATE TABLE hot (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut pipeline = pipeline_with("interleave_budget", BATCH_ROWS, "copy_hold_bytes = 65536\n");
    pipeline.start();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn(write_hot(
        pg().url("interleave_budget"),
        stop.clone(),
        last.clone(),
    ));
    wait_log_rows(&pipeline.table_path("public", "hot"), 5).await;
    client.batch_execute(CREATE_BIG).await.unwrap();
    wait_copy_started(&pipeline, 1).await;
    // One transaction with hot's rows around a bulk update of big (about
    // 10 MiB of changes held): the bound is crossed in its middle.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO hot VALUES (-1, 'before the bulk update');
             UPDATE big SET v = 'bulk' WHERE id % 10 = 0;
             INSERT INTO hot VALUES (-2, 'after the bulk update');
             COMMIT;",
        )
        .await
        .unwrap();
    client.batch_execute(CHANGE_BIG).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    pipeline
        .wait_equal_within(&client, "big", Duration::from_secs(240))
        .await;
    pipeline.wait_equal(&client, "hot").await;
    let held = pipeline
        .log(1)
        .lines()
        .find(|l| l.contains("snapshot copy done") && l.contains("public.big"))
        .map(str::to_string);
    eprintln!("{held:?}");
    let big = read_log(&pipeline.table_path("public", "big"))
        .await
        .unwrap();
    assert_each_change_once(&big);
    assert_eq!(count_op(&big, "r"), ROWS as usize);
    assert_eq!(count_op(&big, "u"), 20_000 + 201, "each update once");
    let hot = read_log(&pipeline.table_path("public", "hot"))
        .await
        .unwrap();
    assert_each_change_once(&hot);
    assert_eq!(hot.len() as i64, inserted + 2, "each row of hot once");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
