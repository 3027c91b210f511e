//! Prometheus metrics and a health check on `[metrics] listen`.
//!
//! ```text
//!  coordinator ── per checkpoint / ack / error ──▶ Metrics (one mutex, held briefly)
//!  GET /metrics ◀── text exposition format ── render()
//!  GET /health  ◀── 200 "streaming" | 503 <reason>
//! ```
//!
//! Everything is recorded per batch or per event of the coordinator, never
//! per row; labels are low-cardinality (table, error class). The state lives
//! across the retries of the pipeline, so counters keep counting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Upper bounds (seconds) of the commit latency histogram.
const COMMIT_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Health turns to 503 when nothing was committed or acknowledged for this
/// long while streaming (an idle source still acknowledges heartbeats).
const STALE_AFTER: Duration = Duration::from_secs(120);

#[derive(Default)]
struct TableCounters {
    rows: u64,
    batches: u64,
    bytes: u64,
}

#[derive(Default)]
struct State {
    phase: &'static str,
    reason: String,
    tables: BTreeMap<String, TableCounters>,
    events: u64,
    lag_seconds: f64,
    lag_bytes: Option<u64>,
    /// Source commit to durable, of the last transaction a commit made
    /// durable (not reset when heartbeats show the pipeline caught up).
    transaction_latency: Option<f64>,
    commit_buckets: [u64; COMMIT_BUCKETS.len()],
    commit_count: u64,
    commit_sum: f64,
    last_batch_rows: u64,
    snapshot_rows: u64,
    snapshot_estimate: u64,
    errors: BTreeMap<String, u64>,
    /// OpenLineage events by outcome: sent, dropped (queue full), failed.
    lineage: BTreeMap<&'static str, u64>,
    stopped_tables: u64,
    wal_retained_bytes: Option<u64>,
    binlog_files_behind: Option<u64>,
    alive: Option<Instant>,
    /// Since when the pipeline runs (snapshotting or streaming) in this
    /// attempt, and when it last made progress (a commit or an
    /// acknowledgement): what the retry policy calls healthy.
    running_since: Option<Instant>,
    progress_at: Option<Instant>,
    reverse: BTreeMap<String, ReverseCounters>,
    /// The Kafka sink's producer counters, when the sink is Kafka.
    kafka: Option<Arc<tidewater_kafka::KafkaStats>>,
}

/// The phases in which the pipeline runs (past start-up).
fn is_running(phase: &str) -> bool {
    matches!(phase, "snapshotting" | "streaming")
}

/// How long a run made progress: from when it started running to its last
/// commit or acknowledgement.
fn healthy_span(running_since: Option<Instant>, progress_at: Option<Instant>) -> Duration {
    match (running_since, progress_at) {
        (Some(since), Some(at)) => at.saturating_duration_since(since),
        _ => Duration::ZERO,
    }
}

/// One reverse-ETL job's runs under `tidewater run`.
#[derive(Default)]
struct ReverseCounters {
    runs_ok: u64,
    runs_failed: u64,
    added: u64,
    changed: u64,
    deleted: u64,
    last_success: Option<f64>,
}

/// The pipeline's metrics, shared with the HTTP endpoint.
#[derive(Clone, Default)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// The pipeline's phase: `starting`, `snapshotting`, `streaming`,
    /// `retrying` (with why), `stopped`.
    pub fn phase(&self, phase: &'static str, reason: impl Into<String>) {
        self.with(|s| {
            let now = Instant::now();
            if !is_running(phase) {
                s.running_since = None;
                s.progress_at = None;
            } else if !is_running(s.phase) || s.running_since.is_none() {
                s.running_since = Some(now);
            }
            s.phase = phase;
            s.reason = reason.into();
            s.alive = Some(now);
        });
    }

    /// How long the current run made progress (see
    /// [`crate::policy::next_attempt`]); zero when it never got past
    /// start-up.
    pub fn healthy_for(&self) -> Duration {
        self.with(|s| healthy_span(s.running_since, s.progress_at))
    }

    /// A commit or an acknowledgement while running.
    fn progress(s: &mut State, now: Instant) {
        s.alive = Some(now);
        if is_running(s.phase) {
            s.progress_at = Some(now);
        }
    }

    /// Events taken from the source by the coordinator.
    pub fn events(&self, n: u64) {
        self.with(|s| s.events += n);
    }

    /// A batch of `rows` rows (`bytes` of decoded values) written for `table`.
    pub fn batch(&self, table: &str, rows: u64, bytes: u64) {
        self.with(|s| {
            let t = s.tables.entry(table.to_string()).or_default();
            t.rows += rows;
            t.batches += 1;
            t.bytes += bytes;
            s.last_batch_rows = rows;
        });
    }

    /// A lake commit took `seconds`.
    pub fn commit(&self, seconds: f64) {
        self.with(|s| {
            for (i, bound) in COMMIT_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    s.commit_buckets[i] += 1;
                }
            }
            s.commit_count += 1;
            s.commit_sum += seconds;
            Metrics::progress(s, Instant::now());
        });
    }

    /// Lag after an acknowledgement: seconds from the source commit of the
    /// last change made durable to now, and bytes of log behind when known.
    pub fn lag(&self, seconds: f64, bytes: Option<u64>) {
        self.with(|s| {
            s.lag_seconds = seconds.max(0.0);
            if bytes.is_some() {
                s.lag_bytes = bytes;
            }
            Metrics::progress(s, Instant::now());
        });
    }

    /// Seconds from the source commit of the last transaction a commit made
    /// durable to that commit.
    pub fn transaction_latency(&self, seconds: f64) {
        self.with(|s| s.transaction_latency = Some(seconds.max(0.0)));
    }

    pub fn snapshot_rows(&self, done: u64, estimate: u64) {
        self.with(|s| {
            s.snapshot_rows = done;
            s.snapshot_estimate = estimate;
        });
    }

    /// An OpenLineage event was `sent`, `dropped` (queue full) or `failed`
    /// (the endpoint or the file refused it).
    pub fn lineage(&self, outcome: &'static str) {
        self.with(|s| *s.lineage.entry(outcome).or_default() += 1);
    }

    pub fn error(&self, class: &str) {
        self.with(|s| *s.errors.entry(class.to_string()).or_default() += 1);
    }

    /// What the source server keeps for the pipeline, as last sampled.
    pub fn source_status(&self, retained_bytes: Option<u64>, files_behind: Option<u64>) {
        self.with(|s| {
            if retained_bytes.is_some() {
                s.wal_retained_bytes = retained_bytes;
            }
            if files_behind.is_some() {
                s.binlog_files_behind = files_behind;
            }
        });
    }

    /// A scheduled reverse-ETL run ended (`ok`: with `report`).
    pub fn reverse_etl(&self, job: &str, report: &tidewater_reverse::Report, ok: bool) {
        self.with(|s| {
            let r = s.reverse.entry(job.to_string()).or_default();
            if ok {
                r.runs_ok += 1;
                r.added += report.added as u64;
                r.changed += report.changed as u64;
                r.deleted += report.deleted as u64;
                r.last_success = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64());
            } else {
                r.runs_failed += 1;
            }
        });
    }

    /// Exports the Kafka producer's counters (a Kafka sink only).
    pub fn kafka(&self, stats: Arc<tidewater_kafka::KafkaStats>) {
        self.with(|s| s.kafka = Some(stats));
    }

    pub fn stopped_tables(&self, n: u64) {
        self.with(|s| s.stopped_tables = n);
    }

    /// `(healthy, reason)`: streaming and committing or acknowledging.
    pub fn health(&self) -> (bool, String) {
        self.with(|s| match s.phase {
            "streaming" if s.alive.is_some_and(|a| a.elapsed() < STALE_AFTER) => {
                (true, "streaming".into())
            }
            "streaming" => (
                false,
                format!(
                    "nothing committed or acknowledged for {} s",
                    STALE_AFTER.as_secs()
                ),
            ),
            "" => (false, "starting".into()),
            phase if s.reason.is_empty() => (false, phase.to_string()),
            phase => (false, format!("{phase}: {}", s.reason)),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        self.with(|s| {
            let mut out = String::new();
            fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            }
            metric(
                &mut out,
                "tidewater_up",
                "gauge",
                "1 while streaming and committing (see /health)",
            );
            let healthy = matches!(s.phase, "streaming")
                && s.alive.is_some_and(|a| a.elapsed() < STALE_AFTER);
            let _ = writeln!(out, "tidewater_up {}", u8::from(healthy));
            metric(
                &mut out,
                "tidewater_replication_lag_seconds",
                "gauge",
                "source commit time of the last durable change to now (0 when caught up)",
            );
            let _ = writeln!(
                out,
                "tidewater_replication_lag_seconds {:.3}",
                s.lag_seconds
            );
            if let Some(seconds) = s.transaction_latency {
                metric(
                    &mut out,
                    "tidewater_last_transaction_latency_seconds",
                    "gauge",
                    "source commit to durable in the destination, of the last transaction a commit made durable",
                );
                let _ = writeln!(
                    out,
                    "tidewater_last_transaction_latency_seconds {seconds:.3}"
                );
            }
            if let Some(bytes) = s.lag_bytes {
                metric(
                    &mut out,
                    "tidewater_replication_lag_bytes",
                    "gauge",
                    "the server's log position minus the acknowledged one (Postgres WAL)",
                );
                let _ = writeln!(out, "tidewater_replication_lag_bytes {bytes}");
            }
            metric(
                &mut out,
                "tidewater_source_events_total",
                "counter",
                "events taken from the source",
            );
            let _ = writeln!(out, "tidewater_source_events_total {}", s.events);
            metric(
                &mut out,
                "tidewater_rows_written_total",
                "counter",
                "rows written to the lake, by table",
            );
            for (table, t) in &s.tables {
                let _ = writeln!(
                    out,
                    "tidewater_rows_written_total{{table=\"{}\"}} {}",
                    escape(table),
                    t.rows
                );
            }
            metric(
                &mut out,
                "tidewater_batches_written_total",
                "counter",
                "batches written to the lake, by table",
            );
            for (table, t) in &s.tables {
                let _ = writeln!(
                    out,
                    "tidewater_batches_written_total{{table=\"{}\"}} {}",
                    escape(table),
                    t.batches
                );
            }
            metric(
                &mut out,
                "tidewater_bytes_written_total",
                "counter",
                "decoded bytes written to the lake, by table",
            );
            for (table, t) in &s.tables {
                let _ = writeln!(
                    out,
                    "tidewater_bytes_written_total{{table=\"{}\"}} {}",
                    escape(table),
                    t.bytes
                );
            }
            metric(
                &mut out,
                "tidewater_batch_rows",
                "gauge",
                "rows of the last batch written",
            );
            let _ = writeln!(out, "tidewater_batch_rows {}", s.last_batch_rows);
            metric(
                &mut out,
                "tidewater_commit_duration_seconds",
                "histogram",
                "lake commit latency",
            );
            for (i, bound) in COMMIT_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tidewater_commit_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                    s.commit_buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "tidewater_commit_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                s.commit_count
            );
            let _ = writeln!(
                out,
                "tidewater_commit_duration_seconds_sum {:.6}",
                s.commit_sum
            );
            let _ = writeln!(
                out,
                "tidewater_commit_duration_seconds_count {}",
                s.commit_count
            );
            metric(
                &mut out,
                "tidewater_snapshot_rows",
                "gauge",
                "rows copied by the running snapshot copy",
            );
            let _ = writeln!(out, "tidewater_snapshot_rows {}", s.snapshot_rows);
            metric(
                &mut out,
                "tidewater_snapshot_estimated_rows",
                "gauge",
                "the server's estimate of the copied table",
            );
            let _ = writeln!(
                out,
                "tidewater_snapshot_estimated_rows {}",
                s.snapshot_estimate
            );
            metric(
                &mut out,
                "tidewater_errors_total",
                "counter",
                "errors by class (transient ones are retried)",
            );
            for (class, n) in &s.errors {
                let _ = writeln!(out, "tidewater_errors_total{{class=\"{class}\"}} {n}");
            }
            if !s.lineage.is_empty() {
                metric(
                    &mut out,
                    "tidewater_lineage_events_total",
                    "counter",
                    "OpenLineage events by outcome: sent, dropped (queue full), failed",
                );
                for (outcome, n) in &s.lineage {
                    let _ = writeln!(
                        out,
                        "tidewater_lineage_events_total{{outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
            if let Some(bytes) = s.wal_retained_bytes {
                metric(
                    &mut out,
                    "tidewater_wal_retained_bytes",
                    "gauge",
                    "WAL the Postgres server retains for the slot (sampled every 10 s)",
                );
                let _ = writeln!(out, "tidewater_wal_retained_bytes {bytes}");
            }
            if let Some(files) = s.binlog_files_behind {
                metric(
                    &mut out,
                    "tidewater_binlog_files_behind",
                    "gauge",
                    "binlog files the MySQL/MariaDB server has after the one being read (sampled every 10 s)",
                );
                let _ = writeln!(out, "tidewater_binlog_files_behind {files}");
            }
            metric(
                &mut out,
                "tidewater_stopped_tables",
                "gauge",
                "tables stopped by an error they need a new copy for",
            );
            let _ = writeln!(out, "tidewater_stopped_tables {}", s.stopped_tables);
            if let Some(kafka) = &s.kafka {
                use std::sync::atomic::Ordering::Relaxed;
                for (name, kind, help, value) in [
                    (
                        "tidewater_kafka_produced_messages_total",
                        "counter",
                        "messages handed to the Kafka producer (events, tombstones, state records)",
                        kafka.messages.load(Relaxed),
                    ),
                    (
                        "tidewater_kafka_produced_bytes_total",
                        "counter",
                        "key and value bytes handed to the Kafka producer",
                        kafka.bytes.load(Relaxed),
                    ),
                    (
                        "tidewater_kafka_delivery_errors_total",
                        "counter",
                        "messages the brokers did not acknowledge (the commit failed and was retried)",
                        kafka.delivery_errors.load(Relaxed),
                    ),
                    (
                        "tidewater_kafka_producer_queue_messages",
                        "gauge",
                        "messages in the producer's queue, not yet acknowledged by a broker",
                        kafka.queued.load(Relaxed),
                    ),
                ] {
                    metric(&mut out, name, kind, help);
                    let _ = writeln!(out, "{name} {value}");
                }
                metric(
                    &mut out,
                    "tidewater_kafka_topic_events",
                    "gauge",
                    "change events committed to each table's topic",
                );
                let per_topic = kafka.per_topic.lock().unwrap_or_else(|p| p.into_inner());
                for (topic, n) in per_topic.iter() {
                    let _ = writeln!(
                        out,
                        "tidewater_kafka_topic_events{{topic=\"{}\"}} {n}",
                        escape(topic)
                    );
                }
            }
            if !s.reverse.is_empty() {
                metric(
                    &mut out,
                    "tidewater_reverse_etl_runs_total",
                    "counter",
                    "scheduled reverse-ETL runs, by job and result",
                );
                for (job, r) in &s.reverse {
                    let job = escape(job);
                    let _ = writeln!(
                        out,
                        "tidewater_reverse_etl_runs_total{{job=\"{job}\",result=\"ok\"}} {}\ntidewater_reverse_etl_runs_total{{job=\"{job}\",result=\"error\"}} {}",
                        r.runs_ok, r.runs_failed
                    );
                }
                metric(
                    &mut out,
                    "tidewater_reverse_etl_rows_total",
                    "counter",
                    "rows a reverse-ETL job wrote to its target, by job and change",
                );
                for (job, r) in &s.reverse {
                    let job = escape(job);
                    for (change, n) in [("added", r.added), ("changed", r.changed), ("deleted", r.deleted)] {
                        let _ = writeln!(
                            out,
                            "tidewater_reverse_etl_rows_total{{job=\"{job}\",change=\"{change}\"}} {n}"
                        );
                    }
                }
                metric(
                    &mut out,
                    "tidewater_reverse_etl_last_success_timestamp_seconds",
                    "gauge",
                    "when a reverse-ETL job last finished a run (Unix time)",
                );
                for (job, r) in &s.reverse {
                    if let Some(t) = r.last_success {
                        let _ = writeln!(
                            out,
                            "tidewater_reverse_etl_last_success_timestamp_seconds{{job=\"{}\"}} {t:.0}",
                            escape(job)
                        );
                    }
                }
            }
            out
        })
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` and `/health` on `listen` until the process ends.
pub async fn serve(listen: String, metrics: Metrics) -> std::io::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    info!(listen = %listen, "metrics and health endpoint");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // The request head, however it is split into packets.
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                let read_head = async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), read_head)
                    .await
                    .is_err()
                {
                    return;
                }
                let request = String::from_utf8_lossy(&buf);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body, kind) = match path {
                    "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                    "/health" => match metrics.health() {
                        (true, reason) => ("200 OK", format!("{reason}\n"), "text/plain"),
                        (false, reason) => (
                            "503 Service Unavailable",
                            format!("{reason}\n"),
                            "text/plain",
                        ),
                    },
                    _ => (
                        "404 Not Found",
                        "try /metrics or /health\n".into(),
                        "text/plain",
                    ),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(error) = conn.write_all(response.as_bytes()).await {
                    warn!(error = %error, "answering a metrics request");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_is_the_span_of_progress_of_this_run() {
        let start = Instant::now();
        let later = start + Duration::from_secs(90);
        assert_eq!(
            healthy_span(Some(start), Some(later)),
            Duration::from_secs(90)
        );
        assert_eq!(healthy_span(Some(start), None), Duration::ZERO);
        assert_eq!(healthy_span(None, Some(later)), Duration::ZERO);

        let metrics = Metrics::default();
        metrics.phase("starting", "");
        metrics.commit(0.01);
        metrics.with(|s| assert!(s.running_since.is_none() && s.progress_at.is_none()));
        metrics.phase("snapshotting", "");
        let since = metrics.with(|s| s.running_since).expect("running");
        // Snapshot to streaming is the same run.
        metrics.phase("streaming", "");
        metrics.lag(0.0, None);
        metrics.with(|s| {
            assert_eq!(s.running_since, Some(since));
            assert!(s.progress_at.is_some_and(|at| at >= since));
        });
        // A failure ends the run: a retry that fails at start-up never
        // inherits the last run's health.
        metrics.phase("retrying", "connection refused");
        assert_eq!(metrics.healthy_for(), Duration::ZERO);
        metrics.with(|s| assert!(s.running_since.is_none() && s.progress_at.is_none()));
    }
}
