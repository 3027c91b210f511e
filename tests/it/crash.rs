//! SIGKILL at random moments while changes stream in: after restarts, the lake
//! holds every change exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::lake::read_log;
use crate::support::{eventually, pg, Pipeline};

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    inserted: u64,
    updated: u64,
    deleted: u64,
    transactions: u64,
}

/// Random multi-statement transactions until `stop`; counts the rows each
/// statement really changed.
async fn write_load(url: String, stop: Arc<AtomicBool>, seed: u64) -> Counts {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connect");
    tokio::spawn(connection);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = Counts::default();
    let mut next_id: i64 = 1_000;
    while !stop.load(Ordering::SeqCst) {
        client.batch_execute("BEGIN").await.unwrap();
        let mut tx = Counts::default();
        for _ in 0..rng.gen_range(1..12) {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let n = rng.gen_range(1..6);
                    for _ in 0..n {
                        next_id += 1;
                        client
                            .execute(
                                "INSERT INTO items (id, v, note) VALUES ($1, $2, $3)",
                                &[&next_id, &rng.gen_range(0..1000i32), &format!("n{next_id}")],
                            )
                            .await
                            .unwrap();
                        // A second table in the same transaction, so kills
                        // also land between the per-table lake commits.
                        client
                            .execute("INSERT INTO audit (id, item) VALUES ($1, $1)", &[&next_id])
                            .await
                            .unwrap();
                    }
                    tx.inserted += n;
                }
                6..=8 => {
                    let id = rng.gen_range(1..next_id);
                    tx.updated += client
                        .execute(
                            "UPDATE items SET v = v + 1, note = 'u' || v WHERE id = $1",
                            &[&id],
                        )
                        .await
                        .unwrap();
                }
                _ => {
                    let id = rng.gen_range(1..next_id);
                    tx.deleted += client
                        .execute("DELETE FROM items WHERE id = $1", &[&id])
                        .await
                        .unwrap();
                }
            }
        }
        client.batch_execute("COMMIT").await.unwrap();
        counts.inserted += tx.inserted;
        counts.updated += tx.updated;
        counts.deleted += tx.deleted;
        counts.transactions += 1;
        // The writer's pace (part of the random load), not a wait.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..5))).await;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_streaming_loses_and_duplicates_nothing() {
    kills_while_streaming("crash", "").await;
}

/// The same kills into Iceberg tables (`sink.format = "iceberg"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_streaming_into_iceberg_loses_and_duplicates_nothing() {
    kills_while_streaming("crash_ice", "format = \"iceberg\"\n").await;
}

/// Random kills while a random load streams into lake `name` (`format`: a
/// line of `[sink]` naming the table format, or none for the default).
async fn kills_while_streaming(name: &str, format: &str) {
    let client = pg().create_database(name).await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v int, note text);
             INSERT INTO items SELECT g, g, 'seed' FROM generate_series(1, 500) g;
             CREATE TABLE audit (id bigint PRIMARY KEY, item bigint);",
        )
        .await
        .unwrap();
    let seed: u64 = std::env::var("TIDEWATER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("crash test seed {seed} (set TIDEWATER_CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    // Small batches so kills land between, inside and after lake commits.
    let mut pipeline = Pipeline::new(
        name,
        &pg().url(name),
        &format!("max_batch_rows = 200\n{format}"),
    );
    pipeline.start();
    let path = pipeline.table_path("public", "items");
    pipeline.wait_log_rows("items", 500).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(pg().url(name), stop.clone(), seed));
    // The random moments of the kills and restarts are what this test
    // is about: these sleeps pick them (replayable from the seed).
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..2500))).await;
        pipeline.assert_running();
        pipeline.kill();
        eprintln!("round {round}: killed the daemon");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..600))).await;
        pipeline.start();
    }
    // The load goes on for a random while after the last restart.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    stop.store(true, Ordering::SeqCst);
    let counts = writer.await.unwrap();
    eprintln!("writer: {counts:?}");
    assert!(
        counts.transactions > 20,
        "the writer barely ran: {counts:?}"
    );

    pipeline
        .wait_equal_within(&client, "items", Duration::from_secs(120))
        .await;

    let audit_path = pipeline.table_path("public", "audit");
    pipeline.wait_equal(&client, "audit").await;
    let audit = read_log(&audit_path).await.unwrap();
    assert_eq!(
        audit.len() as u64,
        counts.inserted,
        "audit rows landed exactly once"
    );

    let log = read_log(&path).await.unwrap();
    let count = |op: &str| log.iter().filter(|r| r.op == op).count() as u64;
    assert_eq!(count("r"), 500, "snapshot rows");
    assert_eq!(count("c"), counts.inserted, "inserts landed exactly once");
    assert_eq!(count("u"), counts.updated, "updates landed exactly once");
    assert_eq!(count("d"), counts.deleted, "deletes landed exactly once");
    let mut marks: Vec<_> = log.iter().map(|r| (r.seq, r.ord)).collect();
    marks.dedup();
    assert_eq!(marks.len(), log.len(), "a (_tw_seq, _tw_ord) repeats");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}

/// SIGKILL in the middle of a chunked, parallel snapshot: the restart
/// resumes after the last committed chunk (what was committed stays, is not
/// read again), reads the rest in a new snapshot, and the stream from the
/// slot's consistent point reconciles what changed meanwhile: the lake's
/// current state equals the source, and every row untouched since is in
/// the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_snapshot_resumes_from_committed_chunks() {
    kill_during_snapshot("crash_snap", "").await;
}

/// The same kill into Iceberg tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_snapshot_into_iceberg_resumes_from_committed_chunks() {
    kill_during_snapshot("crash_snap_ice", "format = \"iceberg\"\n").await;
}

async fn kill_during_snapshot(name: &str, format: &str) {
    const ROWS: usize = 60_000;
    let client = pg().create_database(name).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, payload text, amount numeric(12,2));
             INSERT INTO big SELECT g, repeat('x', 40) || g, g / 7.0 FROM generate_series(1, {ROWS}) g;
             CREATE TABLE small (id int PRIMARY KEY);
             INSERT INTO small SELECT generate_series(1, 10);"
        ))
        .await
        .unwrap();
    // ~70 chunks of 8 pages; a commit after every chunk (the file target
    // is tiny), two workers.
    let mut pipeline = Pipeline::with_source(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n\
             snapshot_chunk_bytes = 65536\nsnapshot_workers = 2\n",
            pg().url(name)
        ),
        &format!("max_batch_rows = 2000\ntarget_file_size_bytes = 1024\n{format}"),
    );
    pipeline.start();
    let path = pipeline.table_path("public", "big");
    // Seen from the commits' row counts (no data file read), so the kill
    // follows within milliseconds, while the snapshot is still incomplete.
    eventually(
        "part of the snapshot committed",
        Duration::from_secs(60),
        || {
            let path = path.clone();
            async move {
                let rows = crate::support::lake::committed_rows(&path).await?;
                (rows > 2_000 && rows < ROWS / 2)
                    .then_some(())
                    .ok_or(format!("{rows} rows"))
            }
        },
    )
    .await;
    pipeline.kill();
    let before = read_log(&path).await.unwrap();
    eprintln!(
        "killed with {} of {ROWS} snapshot rows committed",
        before.len()
    );
    assert!(before.len() < ROWS, "killed before the snapshot completed");
    // Changes made between the crash and the restart must not be lost either.
    client
        .batch_execute(
            "UPDATE big SET amount = -1 WHERE id <= 5; DELETE FROM big WHERE id = 6;
             UPDATE big SET amount = -2 WHERE id = 59990; INSERT INTO big VALUES (70000, 'new', 1);",
        )
        .await
        .unwrap();
    pipeline.start();
    pipeline
        .wait_equal_within(&client, "big", Duration::from_secs(180))
        .await;
    let restart = pipeline.log(pipeline.starts);
    assert!(
        restart.contains("resuming the interrupted snapshot"),
        "the restart resumed:\n{restart}"
    );
    assert!(!restart.contains("starting over"), "{restart}");
    let log = read_log(&path).await.unwrap();
    // What was committed before the kill is still there, unchanged.
    let marks: std::collections::HashSet<(i64, i64)> = log.iter().map(|r| (r.seq, r.ord)).collect();
    assert!(before.iter().all(|r| marks.contains(&(r.seq, r.ord))));
    // Each row nobody touched since the crash was read exactly once.
    let mut reads: std::collections::HashMap<String, usize> = Default::default();
    for row in log.iter().filter(|r| r.op == "r") {
        let id = row.values["id"].as_str().expect("id as text").to_string();
        *reads.entry(id).or_default() += 1;
    }
    for id in 7..=ROWS as i64 {
        if id == 59990 {
            continue;
        }
        assert_eq!(reads.get(&id.to_string()), Some(&1), "id {id} read once");
    }
    assert_eq!(marks.len(), log.len(), "a (_tw_seq, _tw_ord) repeats");
    let small = read_log(&pipeline.table_path("public", "small"))
        .await
        .unwrap();
    assert_eq!(small.len(), 10);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}

/// SIGTERM flushes, commits and exits 0; a second SIGTERM during that
/// shutdown exits at once (code 1), and the next start still lands every
/// change exactly once. The shutdown is held open for certain: the lake is
/// on S3 behind the fault proxy, which holds the flush's writes unanswered
/// while the signals come, so the clean shutdown cannot win the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    use crate::lake_s3::{s3_pipeline, wait_equal_s3};
    use crate::support::lake::read_log_at;
    use crate::support::s3::{s3, storage_options, Fault, FaultProxy};
    let server = s3();
    server.create_bucket("tw-twosignals");
    let proxy = FaultProxy::start(server.port).await;
    let client = pg().create_database("twosignals").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');",
        )
        .await
        .unwrap();
    let mut pipeline = s3_pipeline("twosignals", "tw-twosignals", &proxy.endpoint());
    pipeline.start();
    let url = "s3://tw-twosignals/lake/twosignals/public/t/";
    wait_equal_s3(&mut pipeline, &client, url).await;
    // A streamed change lands too: the snapshot's own bookkeeping after its
    // commit (the slot marker, …) is over, so the stall below can only
    // catch a flush of the stream.
    client
        .batch_execute("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    wait_equal_s3(&mut pipeline, &client, url).await;
    // The lake stops answering; a transaction's flush begins writing to it.
    proxy.set(Fault::Stall);
    client
        .batch_execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(3, 20000) g")
        .await
        .unwrap();
    let flushing = |proxy: &FaultProxy| {
        proxy.stalled_requests().iter().any(|line| {
            (line.starts_with("PUT ") || line.starts_with("POST "))
                && line.contains("/lake/twosignals/public/t/")
        })
    };
    eventually(
        "a write of the flush held by the proxy",
        Duration::from_secs(60),
        || {
            let held = flushing(&proxy);
            let requests = proxy.stalled_requests();
            async move { held.then_some(()).ok_or(format!("held: {requests:?}")) }
        },
    )
    .await;
    let mut child = pipeline.child.take().expect("running");
    let pid = child.id() as libc::pid_t;
    let sigterm = || {
        // SAFETY: plain kill(2) on our own child.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM failed");
    };
    sigterm();
    eventually(
        "the first signal's shutdown under way",
        Duration::from_secs(30),
        || {
            let log = pipeline.log(1);
            async move {
                log.contains("signal received, stopping")
                    .then_some(())
                    .ok_or_else(|| "no shutdown in the log yet".to_string())
            }
        },
    )
    .await;
    // The shutdown cannot finish while its write is held: the second signal
    // ends it. (Sent again should it come before the daemon listens anew.)
    let signalled = std::time::Instant::now();
    let status = loop {
        sigterm();
        let sent = std::time::Instant::now();
        while sent.elapsed() < Duration::from_millis(500) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            // The polling interval of this wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the second signal did not end the daemon:\n{}",
            pipeline.log(1)
        );
    };
    let log = pipeline.log(1);
    assert_eq!(status.code(), Some(1), "{status:?}: {log}");
    assert!(
        log.contains("second signal: exiting without flushing") && !log.contains("stopped cleanly"),
        "{log}"
    );
    proxy.set(Fault::None);
    pipeline.start();
    wait_equal_s3(&mut pipeline, &client, url).await;
    let log = read_log_at(url, storage_options(&server.endpoint()))
        .await
        .unwrap();
    crate::support::lake::assert_each_change_once(&log);
    assert_eq!(log.len(), 20000);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
}
