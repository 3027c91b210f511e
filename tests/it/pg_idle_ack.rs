//! Acknowledgements need no event to reach the server: once a transaction is
//! in the lake, the slot confirms it even though the database stays idle.

use std::time::Duration;

use crate::support::{eventually, pg, Pipeline};

/// One transaction on an otherwise idle database, heartbeats off: the slot's
/// `confirmed_flush_lsn` reaches the transaction's commit end within a few
/// seconds of its lake commit. Before, the acknowledgement rode on the next
/// event from the server: a keepalive, which the server sends in answer to a
/// status update while the slot lags behind it, or at half its
/// `wal_sender_timeout`. Status updates came every second then, so that
/// answer came soon by accident; the timer now runs every 10 s (a sixth of
/// the default `wal_sender_timeout`), so this fails if acknowledgements ride
/// on events again (checked: confirmed stayed before the commit for 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_confirms_a_commit_without_a_further_event() {
    let client = pg().create_database("idle_ack").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    let mut pipeline = Pipeline::with_source(
        "idle_ack",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nheartbeat_interval_ms = 0\n",
            pg().url("idle_ack")
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;

    client
        .batch_execute("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    // The insert position right after the commit: the commit record's end,
    // or later when other databases of the server wrote meanwhile (the slot
    // then confirms their WAL through keepalives, as nothing is pending).
    let commit_end: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    pipeline.wait_equal(&client, "t").await;
    let landed = std::time::Instant::now();
    eventually(
        "the slot confirmed the commit while the database is idle",
        Duration::from_secs(5),
        || {
            let client = &client;
            let commit_end = commit_end.clone();
            async move {
                let row = client
                    .query_one(
                        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn, confirmed_flush_lsn::text \
                         FROM pg_replication_slots WHERE slot_name = 'tidewater_idle_ack'",
                        &[&commit_end],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let confirmed: bool = row.get(0);
                let at: String = row.get(1);
                confirmed
                    .then_some(())
                    .ok_or(format!("confirmed {at}, the commit ends at {commit_end}"))
            }
        },
    )
    .await;
    // Printed for the record (run with --nocapture); the wait above is the
    // assertion.
    eprintln!(
        "confirmed {} ms after the lake held the row",
        landed.elapsed().as_millis()
    );
    assert_eq!(pipeline.terminate(), 0);
}
