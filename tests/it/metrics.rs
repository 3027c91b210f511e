//! `[metrics] listen`: Prometheus text on /metrics and a health check on
//! /health, scraped while a Postgres pipeline streams; the counters grow
//! with the writes and the lag moves (up after a transaction, back to 0 once
//! heartbeats say the pipeline is caught up).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::{free_port, pg, Pipeline};

pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_while_streaming() {
    let client = pg().create_database("metrics").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let port = free_port();
    // The lag stays above 0 from a commit until the next heartbeat: 1.5 s
    // is long enough to be seen on a busy machine (0.3 s was not always).
    let mut pipeline = Pipeline::with_source(
        "metrics",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nheartbeat_interval_ms = 1500\n",
            pg().url("metrics")
        ),
        "",
    );
    let mut text = std::fs::read_to_string(&pipeline.config).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&pipeline.config, text).unwrap();
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;

    let (status, health) = get(port, "/health");
    assert_eq!((status, health.trim()), (200, "streaming"));
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(value(&body, "tidewater_up"), Some(1.0), "{body}");
    let rows = |body: &str| value(body, "tidewater_rows_written_total{table=\"public.t\"}");
    assert_eq!(rows(&body), Some(100.0), "{body}");
    assert!(
        body.contains("# TYPE tidewater_commit_duration_seconds histogram"),
        "{body}"
    );
    assert!(value(&body, "tidewater_commit_duration_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(
        value(&body, "tidewater_replication_lag_bytes").is_some(),
        "{body}"
    );
    assert_eq!(get(port, "/nope").0, 404);

    // A transaction: its latency (source commit to lake commit) is reported
    // once it is durable, and the lag falls back to 0 once heartbeats show
    // the pipeline caught up. (The lag itself is above 0 only for the
    // moments between the acknowledgement and the server's answer, too
    // short to poll for since acknowledgements reach the server at once.)
    client
        .batch_execute("INSERT INTO t SELECT g, 'more' FROM generate_series(101, 150) g")
        .await
        .unwrap();
    let (mut rose, mut fell) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(rose && fell) {
        let (_, body) = get(port, "/metrics");
        let lag = value(&body, "tidewater_replication_lag_seconds").unwrap_or(-1.0);
        let latency = value(&body, "tidewater_last_transaction_latency_seconds").unwrap_or(-1.0);
        if rows(&body) == Some(150.0) && latency > 0.0 && latency < 30.0 {
            rose = true;
        }
        if rose && lag == 0.0 {
            fell = true;
        }
        // The polling interval of this wait (the lag moves within ms).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rose && fell,
        "latency reported: {rose}, lag fell back: {fell}"
    );
    // The WAL the slot retains (the server's position minus the slot's
    // restart_lsn), sampled every 10 s: a sample taken between two readings
    // of the same figures from pg_replication_slots lies between them. The
    // heartbeats write WAL, so every sample differs from the one before; the
    // second new sample was taken well after the first reading (a sample
    // reaches /metrics within moments, the next is taken 10 s later).
    let positions = || async {
        let row = client
            .query_one(
                "SELECT (pg_current_wal_lsn() - '0/0')::int8, (restart_lsn - '0/0')::int8 \
                 FROM pg_replication_slots WHERE slot_name = 'tidewater_metrics'",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0) as f64, row.get::<_, i64>(1) as f64)
    };
    let retained_metric = |body: &str| value(body, "tidewater_wal_retained_bytes");
    let (wal_before, restart_before) = positions().await;
    let mut seen = retained_metric(&get(port, "/metrics").1);
    let mut new_samples = 0;
    let deadline = Instant::now() + Duration::from_secs(45);
    let retained = loop {
        let (_, body) = get(port, "/metrics");
        match retained_metric(&body) {
            Some(bytes) if Some(bytes) != seen => {
                new_samples += 1;
                if new_samples == 2 {
                    break bytes;
                }
                seen = Some(bytes);
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{new_samples} new tidewater_wal_retained_bytes samples (last {seen:?}): {body}"
        );
        // The polling interval of this wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (wal_after, restart_after) = positions().await;
    assert!(
        retained > 0.0
            && wal_before - restart_after <= retained
            && retained <= wal_after - restart_before,
        "retained {retained} bytes, not within what the slot retained between \
         {} and {} bytes",
        wal_before - restart_after,
        wal_after - restart_before
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// A MariaDB pipeline's metrics: rows per table, and the binlog files the
/// server has after the one being read (sampled every 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_metrics_count_binlog_files_behind() {
    use mysql_async::prelude::Queryable;
    let server = crate::support::mariadb::maria();
    let mut conn = server.create_database("my_metrics").await;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let port = free_port();
    let mut pipeline = Pipeline::with_source("my_metrics", &server.source_toml("my_metrics"), "");
    let mut text = std::fs::read_to_string(&pipeline.config).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&pipeline.config, text).unwrap();
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "my_metrics", "t", "id")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (_, body) = get(port, "/metrics");
        if value(&body, "tidewater_binlog_files_behind").is_some() {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no tidewater_binlog_files_behind: {body}"
        );
        // The polling interval of this wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(
            &body,
            "tidewater_rows_written_total{table=\"my_metrics.t\"}"
        ),
        Some(2.0),
        "{body}"
    );
    assert!(
        value(&body, "tidewater_replication_lag_bytes").is_none(),
        "{body}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
