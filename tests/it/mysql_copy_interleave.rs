//! A MariaDB table copied while streaming runs beside the stream: the other
//! tables' transactions keep landing while the copy goes on, the copied
//! table's own changes during its copy land after its copy rows, changes
//! past the hold budget make the stream wait (its connection closed and
//! opened again where it stood), and a SIGKILL in the middle of it all
//! loses and duplicates nothing.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::lake::{
    assert_each_change_once, count_op, read_log, wait_id_beyond, wait_log_rows,
};
use crate::support::mariadb::maria;
use crate::support::{eventually, Pipeline};

/// Rows of the table that joins; large enough that its copy takes a while.
const ROWS: i64 = 200_000;

/// Rows per lake batch (also per commit of a copy, at most).
const BATCH_ROWS: usize = 20_000;

fn pipeline(db: &str, extra_source: &str) -> Pipeline {
    Pipeline::with_source(
        db,
        &format!("{}{extra_source}", maria().source_toml(db)),
        &format!("max_batch_rows = {BATCH_ROWS}\n"),
    )
}

async fn exec(conn: &mut mysql_async::Conn, sql: &str) {
    conn.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Single-row transactions into `hot` until `stop`; `last` is the id of the
/// last one committed. Returns how many were committed.
async fn write_hot(db: String, stop: Arc<AtomicBool>, last: Arc<AtomicI64>) -> i64 {
    let mut conn = maria().conn(&db).await;
    let mut id = 0i64;
    while !stop.load(Ordering::SeqCst) {
        id += 1;
        conn.exec_drop(
            "INSERT INTO hot (id, v) VALUES (?, CONCAT('h', ?))",
            (id, id),
        )
        .await
        .unwrap();
        last.store(id, Ordering::SeqCst);
        // The writer's pace: a steady stream of small transactions.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

/// `big` in a database outside `source.tables` (~70 MiB), renamed into it
/// once the pipeline streams: the rename makes it join with a copy.
async fn create_big(db: &str) {
    let mut stage = maria().create_database(&format!("{db}_stage")).await;
    exec(
        &mut stage,
        "CREATE TABLE big (id BIGINT PRIMARY KEY, v VARCHAR(40), pad VARCHAR(400));
         INSERT INTO big SELECT seq, CONCAT('v', seq), REPEAT('p', 300) FROM seq_1_to_200000",
    )
    .await;
}

/// Changes of `big` made while it is being copied: 200 + 1 updates, 100
/// deletes, 1 insert.
const CHANGE_BIG: &str = "UPDATE big SET v = 'updated' WHERE id % 1000 = 0;
     DELETE FROM big WHERE id BETWEEN 100 AND 199;
     INSERT INTO big VALUES (300000, 'new', 'p');
     UPDATE big SET v = 'late' WHERE id = 199999;";

async fn wait_copy_started(pipeline: &Pipeline, db: &str, start: u32) {
    let table = format!("{db}.big");
    eventually(
        "the copy of big under way",
        Duration::from_secs(120),
        || {
            let log = pipeline.log(start);
            let table = table.clone();
            async move {
                log.lines()
                    .any(|l| l.contains("snapshot copy started") && l.contains(&table))
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
}

/// Starts `db` with `hot` streaming, `big` staged outside the pipeline.
async fn start(db: &str, extra_source: &str) -> (mysql_async::Conn, Pipeline) {
    let mut conn = maria().create_database(db).await;
    exec(
        &mut conn,
        "CREATE TABLE hot (id BIGINT PRIMARY KEY, v VARCHAR(40))",
    )
    .await;
    create_big(db).await;
    let mut pipeline = pipeline(db, extra_source);
    pipeline.start();
    (conn, pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_other_tables_keep_streaming_while_a_table_is_copied() {
    let db = "my_interleave";
    let (mut conn, mut pipeline) = start(db, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn(write_hot(db.to_string(), stop.clone(), last.clone()));
    wait_log_rows(&pipeline.table_path(db, "hot"), 5).await;

    exec(
        &mut conn,
        &format!("RENAME TABLE {db}_stage.big TO {db}.big"),
    )
    .await;
    wait_copy_started(&pipeline, db, 1).await;
    // Committed after the copy's snapshot was taken: in no copy row.
    let after_copy_began = last.load(Ordering::SeqCst);
    exec(&mut conn, CHANGE_BIG).await;

    // A row of `hot` committed after the copy began reaches the lake while
    // most of `big` is still to come.
    let big_path = pipeline.table_path(db, "big");
    wait_id_beyond(&pipeline.table_path(db, "hot"), after_copy_began, || {
        pipeline.log(pipeline.starts)
    })
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
        .wait_equal_mysql_within(&mut conn, db, "big", "id", Duration::from_secs(240))
        .await;
    pipeline.wait_equal_mysql(&mut conn, db, "hot", "id").await;

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
    let hot = read_log(&pipeline.table_path(db, "hot")).await.unwrap();
    assert_each_change_once(&hot);
    assert_eq!(hot.len() as i64, inserted, "each row of hot once");
    assert!(
        pipeline
            .log(1)
            .contains("copying a table beside the stream"),
        "{}",
        pipeline.log(1)
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// SIGKILL while a table is copied beside a busy stream, with changes of
/// that table held until its copy ends: the restart copies it again (its
/// partial copy superseded by a truncate), the other table resumes from
/// its marks, and both equal the source with every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_during_an_interleaved_copy_loses_and_duplicates_nothing() {
    let db = "my_interleave_kill";
    let (mut conn, mut pipeline) = start(db, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn(write_hot(db.to_string(), stop.clone(), last.clone()));
    wait_log_rows(&pipeline.table_path(db, "hot"), 5).await;
    exec(
        &mut conn,
        &format!("RENAME TABLE {db}_stage.big TO {db}.big"),
    )
    .await;
    wait_copy_started(&pipeline, db, 1).await;
    exec(&mut conn, CHANGE_BIG).await;
    // Killed once a row of hot committed after those changes is in the
    // lake, whose acknowledged position is then past them while they are
    // still held.
    let after_change = last.load(Ordering::SeqCst);
    let big_path = pipeline.table_path(db, "big");
    wait_id_beyond(&pipeline.table_path(db, "hot"), after_change, || {
        pipeline.log(pipeline.starts)
    })
    .await;
    pipeline.kill();
    let partial = count_op(&read_log(&big_path).await.unwrap_or_default(), "r");
    eprintln!("killed with {partial} of {ROWS} rows of big copied");
    assert!(partial < ROWS as usize, "killed before the copy completed");
    exec(
        &mut conn,
        "UPDATE big SET v = 'while down' WHERE id % 777 = 0",
    )
    .await;
    pipeline.start();
    wait_copy_started(&pipeline, db, 2).await;
    exec(
        &mut conn,
        "UPDATE big SET v = 'second copy' WHERE id % 555 = 0; DELETE FROM big WHERE id = 7",
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    pipeline
        .wait_equal_mysql_within(&mut conn, db, "big", "id", Duration::from_secs(240))
        .await;
    pipeline.wait_equal_mysql(&mut conn, db, "hot", "id").await;
    let big = read_log(&big_path).await.unwrap();
    assert_each_change_once(&big);
    if partial > 0 {
        assert!(count_op(&big, "t") >= 1, "the partial copy is superseded");
    }
    let hot = read_log(&pipeline.table_path(db, "hot")).await.unwrap();
    assert_each_change_once(&hot);
    assert_eq!(hot.len() as i64, inserted, "each row of hot once");
    assert!(pipeline
        .log(2)
        .contains("copying a table beside the stream"));
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}

/// The copied table's changes during its copy past `copy_hold_bytes` (a
/// bulk update of it inside a transaction with rows of `hot`): the stream
/// closes at the transaction's end and opens there again after the copy;
/// every change lands once and the lake equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_changes_of_a_copied_table_beyond_the_hold_budget_wait_for_the_copy() {
    let db = "my_interleave_budget";
    let (mut conn, mut pipeline) = start(db, "copy_hold_bytes = 65536\n").await;
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = tokio::spawn(write_hot(db.to_string(), stop.clone(), last.clone()));
    wait_log_rows(&pipeline.table_path(db, "hot"), 5).await;
    exec(
        &mut conn,
        &format!("RENAME TABLE {db}_stage.big TO {db}.big"),
    )
    .await;
    wait_copy_started(&pipeline, db, 1).await;
    exec(
        &mut conn,
        "BEGIN;
         INSERT INTO hot VALUES (-1, 'before the bulk update');
         UPDATE big SET v = 'bulk' WHERE id % 10 = 0;
         INSERT INTO hot VALUES (-2, 'after the bulk update');
         COMMIT",
    )
    .await;
    exec(&mut conn, CHANGE_BIG).await;
    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    pipeline
        .wait_equal_mysql_within(&mut conn, db, "big", "id", Duration::from_secs(240))
        .await;
    pipeline.wait_equal_mysql(&mut conn, db, "hot", "id").await;
    let big = read_log(&pipeline.table_path(db, "big")).await.unwrap();
    assert_each_change_once(&big);
    assert_eq!(count_op(&big, "r"), ROWS as usize);
    assert_eq!(count_op(&big, "u"), 20_000 + 201, "each update once");
    let hot = read_log(&pipeline.table_path(db, "hot")).await.unwrap();
    assert_each_change_once(&hot);
    assert_eq!(hot.len() as i64, inserted + 2, "each row of hot once");
    assert!(
        pipeline.log(1).contains("reached source.copy_hold_bytes"),
        "the stream never waited: {}",
        pipeline.log(1)
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
