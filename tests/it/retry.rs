//! The retry backoff of a long-lived daemon: a streak of outages makes each
//! wait longer (1 s doubling to 30 s), and a healthy minute afterwards
//! starts it over, so a daemon that blipped a few times in its life does not
//! wait the full 30 s at every later outage (regression test of issue 18).

use std::time::Duration;

use crate::support::{eventually, pg, Pipeline};

/// The `attempt` of every retry the daemon logged, in order.
fn retry_attempts(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|line| line.split(" attempt=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Ends the slot's walsender, as a network blip or a server-side kill would.
async fn cut_replication(client: &tokio_postgres::Client, slot: &str) -> i32 {
    let row = client
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    let pid: Option<i32> = row.get(0);
    let pid = pid.expect("the slot is in use");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    pid
}

async fn wait_reconnected(client: &tokio_postgres::Client, slot: &str, old_pid: i32) {
    eventually(
        "the daemon is back on its slot",
        Duration::from_secs(90),
        || async {
            let row = client
                .query_one(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|e| e.to_string())?;
            let pid: Option<i32> = row.get(0);
            match pid {
                Some(pid) if pid != old_pid => Ok(()),
                other => Err(format!("active_pid {other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_starts_over_after_a_healthy_minute() {
    let server = pg();
    let db = "retry_reset";
    let client = server.create_database(db).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(db, &server.url(db), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let slot = format!("tidewater_{db}");
    let mut next_id = 2;
    // Outages back to back: each retry waits longer than the last.
    for expected in 0..3u32 {
        let old = cut_replication(&client, &slot).await;
        eventually("the daemon retries", Duration::from_secs(60), || {
            let attempts = retry_attempts(&pipeline.log(1));
            async move {
                (attempts.len() > expected as usize)
                    .then_some(())
                    .ok_or(format!("{attempts:?}"))
            }
        })
        .await;
        assert_eq!(
            retry_attempts(&pipeline.log(1)),
            (0..=expected).collect::<Vec<_>>(),
            "{}",
            pipeline.log(1)
        );
        wait_reconnected(&client, &slot, old).await;
        client
            .execute("INSERT INTO t VALUES ($1, 'x')", &[&next_id])
            .await
            .unwrap();
        next_id += 1;
        pipeline.wait_equal(&client, "t").await;
    }
    // A healthy minute, committing now and then: the time under test
    // (policy::HEALTHY_RESETS_BACKOFF), not a synchronisation.
    let healthy_until = std::time::Instant::now() + Duration::from_secs(65);
    while std::time::Instant::now() < healthy_until {
        client
            .execute("INSERT INTO t VALUES ($1, 'h')", &[&next_id])
            .await
            .unwrap();
        next_id += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    pipeline.wait_equal(&client, "t").await;
    pipeline.assert_running();
    // The next outage is the first of a new streak.
    let old = cut_replication(&client, &slot).await;
    eventually("the daemon retries", Duration::from_secs(60), || {
        let attempts = retry_attempts(&pipeline.log(1));
        async move {
            (attempts.len() > 3)
                .then_some(())
                .ok_or(format!("{attempts:?}"))
        }
    })
    .await;
    assert_eq!(
        retry_attempts(&pipeline.log(1)),
        [0, 1, 2, 0],
        "{}",
        pipeline.log(1)
    );
    wait_reconnected(&client, &slot, old).await;
    client
        .execute("INSERT INTO t VALUES ($1, 'z')", &[&next_id])
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
