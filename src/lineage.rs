//! OpenLineage run events (`[lineage]`): what tidewater read and wrote, for
//! lineage servers (Marquez, DataHub, OpenMetadata, …) and audits.
//!
//! ```text
//!  run_holding ── START ──────────────── RUNNING (≤ 1 per interval) ── COMPLETE | FAIL
//!  (job <pipeline>, STREAMING)            └ tables committed since the last event
//!  coordinator ── snapshot START ── snapshot COMPLETE            (job <pipeline>.snapshot,
//!                                                                 parent: the run above)
//!  reverse ETL ── START ── COMPLETE | FAIL                        (job <pipeline>.reverse_etl.<job>)
//!        │
//!        ▼  bounded queue (QUEUE_EVENTS) ──▶ emitter task ──▶ POST url │ append one line to file
//! ```
//!
//! Emitting never holds the pipeline up: events wait in a bounded queue for
//! a task that sends them; a full queue drops the event with a warning (and
//! a count in the next log line), a failed POST is logged, and neither stops
//! replication. On exit the queue is drained (up to [`FLUSH_TIMEOUT`]).
//!
//! Events carry dataset names and schemas, never row values: a masked column
//! appears as its masked type, an excluded one not at all. Error messages in
//! FAIL events are tidewater's own, which never quote values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidewater_core::{arrow_type, TableId, TableSchema, META_COLUMNS};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::config::{Config, LineageConfig, SinkConfig, SourceConfig};

/// Events waiting for the emitter task.
const QUEUE_EVENTS: usize = 1024;
/// How long an exit waits for queued events to go out.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// One POST may take this long.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

const PRODUCER: &str = concat!("urn:tidewater:", env!("CARGO_PKG_VERSION"));
const RUN_EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const SCHEMA_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const JOB_TYPE_FACET: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const ERROR_FACET: &str =
    "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const PARENT_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet";
const OUTPUT_STATS_FACET: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";

enum Message {
    Event(String),
    Flush(oneshot::Sender<()>),
}

/// A dataset as OpenLineage names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dataset {
    pub namespace: String,
    pub name: String,
}

/// The lineage emitter of one process; cheap to clone; does nothing when
/// `[lineage]` is absent.
#[derive(Clone, Default)]
pub struct Lineage {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: mpsc::Sender<Message>,
    namespace: String,
    pipeline: String,
    interval: Duration,
    source: Naming,
    sink: Naming,
    dropped: AtomicU64,
    metrics: crate::metrics::Metrics,
    state: Mutex<RunState>,
}

#[derive(Default)]
struct RunState {
    /// The process's run: (job name, run id), set by `run_started`.
    run: Option<(String, String)>,
    /// The initial snapshot's own run, while it goes on.
    snapshot: Option<String>,
    /// Tables committed since the last RUNNING event: schema and rows.
    pending: BTreeMap<TableId, (Arc<TableSchema>, u64)>,
    /// Every table seen, with its latest schema (for COMPLETE/FAIL).
    seen: BTreeMap<TableId, Arc<TableSchema>>,
    last_running: Option<Instant>,
}

/// How datasets of one side are named.
#[derive(Clone)]
enum Naming {
    /// `<scheme>://host:port`, names `<database>.<schema>.<table>` (Postgres)
    /// or `<database>.<table>` (MySQL, whose schema is the database).
    Server {
        namespace: String,
        database: Option<String>,
    },
    /// Lake tables: namespace `file` or `s3://bucket`, name the table's path.
    Lake { namespace: String, root: String },
    /// Kafka topics `<prefix>.<schema>.<table>`.
    Topics { namespace: String, prefix: String },
    /// Warehouse tables by the sink's templates.
    Warehouse {
        namespace: String,
        database: String,
        schema: String,
        table: String,
    },
}

impl Naming {
    fn of(&self, pipeline: &str, table: &TableId) -> Dataset {
        let (namespace, name) = match self {
            Naming::Server {
                namespace,
                database,
            } => (
                namespace.clone(),
                match database {
                    Some(db) if !namespace.starts_with("mysql") => format!("{db}.{table}"),
                    _ => table.to_string(),
                },
            ),
            Naming::Lake { namespace, root } => (
                namespace.clone(),
                format!(
                    "{}/{pipeline}/{}/{}",
                    root.trim_end_matches('/'),
                    table.schema,
                    table.table
                ),
            ),
            Naming::Topics { namespace, prefix } => {
                (namespace.clone(), format!("{prefix}.{table}"))
            }
            Naming::Warehouse {
                namespace,
                database,
                schema,
                table: name,
            } => {
                let fill = |t: &str| {
                    t.replace("{schema}", &table.schema)
                        .replace("{table}", &table.table)
                        .replace("{pipeline}", pipeline)
                };
                (
                    namespace.clone(),
                    format!("{database}.{}.{}", fill(schema), fill(name)),
                )
            }
        };
        Dataset { namespace, name }
    }
}

/// `scheme://host:port` and the database of a server url (no credentials).
fn server(url: &str, scheme: &str, default_port: u16) -> (String, Option<String>) {
    match url::Url::parse(url) {
        Ok(u) => (
            format!(
                "{scheme}://{}:{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(default_port)
            ),
            Some(u.path().trim_start_matches('/').to_string()).filter(|d| !d.is_empty()),
        ),
        Err(_) => (format!("{scheme}://unknown"), None),
    }
}

fn lake_naming(uri: &str) -> Naming {
    match uri.strip_prefix("s3://") {
        Some(rest) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            Naming::Lake {
                namespace: format!("s3://{bucket}"),
                root: prefix.to_string(),
            }
        }
        None => Naming::Lake {
            namespace: "file".into(),
            root: uri.strip_prefix("file://").unwrap_or(uri).to_string(),
        },
    }
}

impl Lineage {
    /// The emitter `config.lineage` asks for (disabled without one); spawns
    /// its task on the current runtime.
    pub fn start(config: &Config, metrics: &crate::metrics::Metrics) -> Lineage {
        let Some(lineage) = &config.lineage else {
            return Lineage::default();
        };
        let source = match &config.source {
            SourceConfig::Postgres(pg) => {
                let (namespace, database) = server(pg.url.expose(), "postgres", 5432);
                Naming::Server {
                    namespace,
                    database,
                }
            }
            SourceConfig::Mysql(my) => {
                let (namespace, _) = server(my.url.expose(), "mysql", 3306);
                Naming::Server {
                    namespace,
                    database: None,
                }
            }
        };
        let sink = match &config.sink {
            SinkConfig::Lake(lake) => lake_naming(&lake.uri),
            SinkConfig::Warehouse(w) => {
                let (namespace, database) = server(w.url.expose(), "postgres", 5432);
                Naming::Warehouse {
                    namespace,
                    database: database.unwrap_or_default(),
                    schema: w.schema.clone(),
                    table: w.table.clone(),
                }
            }
            SinkConfig::Kafka(k) => Naming::Topics {
                namespace: format!(
                    "kafka://{}",
                    k.brokers.split(',').next().unwrap_or("").trim()
                ),
                prefix: k
                    .topic_prefix
                    .clone()
                    .unwrap_or_else(|| config.pipeline.name.clone()),
            },
        };
        let (queue, receiver) = mpsc::channel(QUEUE_EVENTS);
        tokio::spawn(emit(lineage_target(lineage), receiver, metrics.clone()));
        Lineage {
            inner: Some(Arc::new(Inner {
                queue,
                namespace: lineage.namespace.clone(),
                pipeline: config.pipeline.name.clone(),
                interval: Duration::from_millis(lineage.checkpoint_interval_ms),
                metrics: metrics.clone(),
                source,
                sink,
                dropped: AtomicU64::new(0),
                state: Mutex::new(RunState::default()),
            })),
        }
    }

    /// The process's run starts: `snapshot_only` for `tidewater snapshot`
    /// (a BATCH job `<pipeline>.snapshot`), else the STREAMING job
    /// `<pipeline>`.
    pub fn run_started(&self, snapshot_only: bool) {
        let Some(inner) = &self.inner else { return };
        let (job, processing) = if snapshot_only {
            (format!("{}.snapshot", inner.pipeline), "BATCH")
        } else {
            (inner.pipeline.clone(), "STREAMING")
        };
        let run_id = new_run_id();
        inner.with(|s| s.run = Some((job.clone(), run_id.clone())));
        inner.send(inner.event(
            "START",
            &job,
            processing,
            &run_id,
            None,
            Vec::new(),
            Vec::new(),
            None,
        ));
    }

    /// The run ends: COMPLETE, or FAIL with `error` (tidewater's message).
    pub fn run_ended(&self, error: Option<&str>) {
        let Some(inner) = &self.inner else { return };
        let (run, snapshot, seen, pending) = inner.with(|s| {
            (
                s.run.take(),
                s.snapshot.take(),
                std::mem::take(&mut s.seen),
                std::mem::take(&mut s.pending),
            )
        });
        let Some((job, run_id)) = run else { return };
        // Rows committed since the last RUNNING event are counted here.
        let (inputs, outputs) = inner.datasets(
            seen.values()
                .map(|s| (s.clone(), pending.get(&s.table).map(|(_, rows)| *rows))),
        );
        if let Some(snapshot_id) = snapshot {
            // The initial snapshot did not finish.
            inner.send(inner.event(
                if error.is_some() { "FAIL" } else { "ABORT" },
                &format!("{}.snapshot", inner.pipeline),
                "BATCH",
                &snapshot_id,
                Some((&job, &run_id)),
                inputs.clone(),
                outputs.clone(),
                error,
            ));
        }
        let processing = if job.ends_with(".snapshot") {
            "BATCH"
        } else {
            "STREAMING"
        };
        inner.send(inner.event(
            if error.is_some() { "FAIL" } else { "COMPLETE" },
            &job,
            processing,
            &run_id,
            None,
            inputs,
            outputs,
            error,
        ));
    }

    /// The initial snapshot of a streaming run starts (a run of its own,
    /// child of the process's run). Nothing for `tidewater snapshot`,
    /// whose run is the snapshot.
    pub fn snapshot_started(&self) {
        let Some(inner) = &self.inner else { return };
        let Some((job, run_id)) = inner.with(|s| s.run.clone()) else {
            return;
        };
        if job.ends_with(".snapshot") {
            return;
        }
        let snapshot_id = new_run_id();
        inner.with(|s| s.snapshot = Some(snapshot_id.clone()));
        inner.send(inner.event(
            "START",
            &format!("{}.snapshot", inner.pipeline),
            "BATCH",
            &snapshot_id,
            Some((&job, &run_id)),
            Vec::new(),
            Vec::new(),
            None,
        ));
    }

    /// The initial snapshot is committed in every table.
    pub fn snapshot_done(&self) {
        let Some(inner) = &self.inner else { return };
        let (run, snapshot, seen) =
            inner.with(|s| (s.run.clone(), s.snapshot.take(), s.seen.clone()));
        let (Some((job, run_id)), Some(snapshot_id)) = (run, snapshot) else {
            return;
        };
        let (inputs, outputs) = inner.datasets(seen.values().map(|s| (s.clone(), None)));
        inner.send(inner.event(
            "COMPLETE",
            &format!("{}.snapshot", inner.pipeline),
            "BATCH",
            &snapshot_id,
            Some((&job, &run_id)),
            inputs,
            outputs,
            None,
        ));
    }

    /// A checkpoint committed these tables (their schemas and rows): a
    /// RUNNING event once `checkpoint_interval_ms` has passed since the
    /// last, naming every table committed since.
    pub fn committed(&self, tables: impl IntoIterator<Item = (Arc<TableSchema>, u64)>) {
        let Some(inner) = &self.inner else { return };
        let due = inner.with(|s| {
            for (schema, rows) in tables {
                s.seen.insert(schema.table.clone(), schema.clone());
                let entry = s
                    .pending
                    .entry(schema.table.clone())
                    .or_insert((schema.clone(), 0));
                entry.0 = schema;
                entry.1 += rows;
            }
            let due = !s.pending.is_empty()
                && s.last_running
                    .is_none_or(|at| at.elapsed() >= inner.interval);
            if !due {
                return None;
            }
            s.last_running = Some(Instant::now());
            Some((s.run.clone(), std::mem::take(&mut s.pending)))
        });
        let Some((Some((job, run_id)), pending)) = due else {
            return;
        };
        let (inputs, outputs) = inner.datasets(
            pending
                .into_values()
                .map(|(schema, rows)| (schema, Some(rows))),
        );
        let processing = if job.ends_with(".snapshot") {
            "BATCH"
        } else {
            "STREAMING"
        };
        inner.send(inner.event(
            "RUNNING", &job, processing, &run_id, None, inputs, outputs, None,
        ));
    }

    /// A reverse-ETL job run starts (job `<pipeline>.reverse_etl.<job>`,
    /// writing `target_table` of the database at `target_url`); the
    /// returned run sends COMPLETE or FAIL.
    pub fn reverse_etl(&self, job: &str, target_url: &str, target_table: &str) -> ReverseEtlRun {
        let Some(inner) = &self.inner else {
            return ReverseEtlRun { emit: None };
        };
        let run_id = new_run_id();
        let name = format!("{}.reverse_etl.{job}", inner.pipeline);
        let output = target_dataset(target_url, target_table);
        let outputs = vec![json!({"namespace": output.namespace, "name": output.name})];
        inner.send(inner.event(
            "START",
            &name,
            "BATCH",
            &run_id,
            None,
            Vec::new(),
            outputs,
            None,
        ));
        ReverseEtlRun {
            emit: Some((inner.clone(), name, run_id, output)),
        }
    }

    /// Waits (up to [`FLUSH_TIMEOUT`]) until every queued event is sent.
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (done, wait) = oneshot::channel();
        if inner.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, wait).await;
        }
    }
}

/// One reverse-ETL run, until it ends.
pub struct ReverseEtlRun {
    emit: Option<(Arc<Inner>, String, String, Dataset)>,
}

impl ReverseEtlRun {
    /// COMPLETE with what `report` says (the lake tables read, the result's
    /// columns, rows written), or FAIL with `error`.
    pub fn ended(self, outcome: Result<&tidewater_reverse::Report, &str>) {
        let Some((inner, name, run_id, output)) = self.emit else {
            return;
        };
        let mut dataset = json!({"namespace": output.namespace, "name": output.name});
        let (inputs, error) = match outcome {
            Ok(report) => {
                dataset["facets"] = json!({"schema": schema_facet(&report.columns)});
                let written = (report.added + report.changed + report.deleted) as u64;
                dataset["outputFacets"] = json!({"outputStatistics": output_stats(written)});
                let inputs = report
                    .inputs
                    .iter()
                    .map(|table| {
                        let d = inner.sink.of(&inner.pipeline, table);
                        json!({"namespace": d.namespace, "name": d.name})
                    })
                    .collect();
                (inputs, None)
            }
            Err(error) => (Vec::new(), Some(error)),
        };
        inner.send(inner.event(
            if error.is_some() { "FAIL" } else { "COMPLETE" },
            &name,
            "BATCH",
            &run_id,
            None,
            inputs,
            vec![dataset],
            error,
        ));
    }
}

/// A reverse-ETL target as OpenLineage names it.
fn target_dataset(url: &str, table: &str) -> Dataset {
    let mysql = url.starts_with("mysql") || url.starts_with("mariadb");
    let (namespace, database) = if mysql {
        server(url, "mysql", 3306)
    } else {
        server(url, "postgres", 5432)
    };
    let database = database.unwrap_or_default();
    let name = match (mysql, table.contains('.')) {
        (true, true) => table.to_string(),
        (true, false) => format!("{database}.{table}"),
        (false, true) => format!("{database}.{table}"),
        (false, false) => format!("{database}.public.{table}"),
    };
    Dataset { namespace, name }
}

impl Inner {
    fn with<T>(&self, f: impl FnOnce(&mut RunState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    fn send(&self, event: Value) {
        match self.queue.try_send(Message::Event(event.to_string())) {
            Ok(()) => {}
            Err(_) => {
                self.metrics.lineage("dropped");
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(
                    dropped,
                    "lineage event dropped: the lineage endpoint is slower than the events (replication goes on)"
                );
            }
        }
    }

    /// Input (source) and output (sink) datasets of `tables`, with
    /// schemas, and rows written when known.
    fn datasets(
        &self,
        tables: impl Iterator<Item = (Arc<TableSchema>, Option<u64>)>,
    ) -> (Vec<Value>, Vec<Value>) {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (schema, rows) in tables {
            let input = self.source.of(&self.pipeline, &schema.table);
            let source_fields: Vec<(String, String)> = schema
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.source_type.clone()))
                .collect();
            inputs.push(json!({
                "namespace": input.namespace,
                "name": input.name,
                "facets": {"schema": schema_facet(&source_fields)},
            }));
            let output = self.sink.of(&self.pipeline, &schema.table);
            let mut sink_fields: Vec<(String, String)> = schema
                .columns
                .iter()
                .map(|c| (c.name.clone(), arrow_type(&c.ty).to_string()))
                .collect();
            if !matches!(self.sink, Naming::Topics { .. }) {
                sink_fields.extend(
                    tidewater_core::metadata_fields()
                        .iter()
                        .filter(|f| META_COLUMNS.contains(&f.name().as_str()))
                        .map(|f| (f.name().clone(), f.data_type().to_string())),
                );
            }
            let mut dataset = json!({
                "namespace": output.namespace,
                "name": output.name,
                "facets": {"schema": schema_facet(&sink_fields)},
            });
            if let Some(rows) = rows {
                dataset["outputFacets"] = json!({"outputStatistics": output_stats(rows)});
            }
            outputs.push(dataset);
        }
        (inputs, outputs)
    }

    #[allow(clippy::too_many_arguments)] // one event, every part named
    fn event(
        &self,
        event_type: &str,
        job: &str,
        processing: &str,
        run_id: &str,
        parent: Option<(&str, &str)>,
        inputs: Vec<Value>,
        outputs: Vec<Value>,
        error: Option<&str>,
    ) -> Value {
        let mut run_facets = serde_json::Map::new();
        if let Some((parent_job, parent_run)) = parent {
            run_facets.insert(
                "parent".into(),
                json!({
                    "_producer": PRODUCER,
                    "_schemaURL": PARENT_FACET,
                    "run": {"runId": parent_run},
                    "job": {"namespace": self.namespace, "name": parent_job},
                }),
            );
        }
        if let Some(message) = error {
            run_facets.insert(
                "errorMessage".into(),
                json!({
                    "_producer": PRODUCER,
                    "_schemaURL": ERROR_FACET,
                    "message": message,
                    "programmingLanguage": "Rust",
                }),
            );
        }
        json!({
            "eventType": event_type,
            "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "run": {"runId": run_id, "facets": run_facets},
            "job": {
                "namespace": self.namespace,
                "name": job,
                "facets": {"jobType": {
                    "_producer": PRODUCER,
                    "_schemaURL": JOB_TYPE_FACET,
                    "processingType": processing,
                    "integration": "TIDEWATER",
                    "jobType": if job.contains(".reverse_etl.") {
                        "REVERSE_ETL"
                    } else if job.ends_with(".snapshot") {
                        "SNAPSHOT"
                    } else {
                        "CDC"
                    },
                }},
            },
            "inputs": inputs,
            "outputs": outputs,
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA,
        })
    }
}

fn schema_facet(fields: &[(String, String)]) -> Value {
    json!({
        "_producer": PRODUCER,
        "_schemaURL": SCHEMA_FACET,
        "fields": fields
            .iter()
            .map(|(name, ty)| json!({"name": name, "type": ty}))
            .collect::<Vec<_>>(),
    })
}

fn output_stats(rows: u64) -> Value {
    json!({"_producer": PRODUCER, "_schemaURL": OUTPUT_STATS_FACET, "rowCount": rows})
}

/// A random (version 4) UUID.
fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Where events go.
struct Target {
    url: Option<String>,
    api_key: Option<String>,
    file: Option<std::path::PathBuf>,
}

fn lineage_target(config: &LineageConfig) -> Target {
    Target {
        url: config.url.as_ref().map(|u| u.expose().to_string()),
        api_key: config.api_key.as_ref().map(|k| k.expose().to_string()),
        file: config.file.clone(),
    }
}

/// The emitter task: sends events in order until every [`Lineage`] is gone.
async fn emit(
    target: Target,
    mut queue: mpsc::Receiver<Message>,
    metrics: crate::metrics::Metrics,
) {
    let client = target.url.as_ref().map(|_| {
        tidewater_endpoint::tls::install_crypto_provider();
        reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .expect("a client with a timeout builds")
    });
    while let Some(message) = queue.recv().await {
        let event = match message {
            Message::Event(event) => event,
            Message::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut failed = false;
        if let Some(path) = &target.file {
            let written = async {
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                file.write_all(format!("{event}\n").as_bytes()).await?;
                file.flush().await
            }
            .await;
            if let Err(err) = written {
                failed = true;
                warn!(file = %path.display(), error = %err, "cannot append a lineage event to lineage.file");
            }
        }
        if let (Some(client), Some(url)) = (&client, &target.url) {
            let mut request = client
                .post(url)
                .header("content-type", "application/json")
                .body(event);
            if let Some(key) = &target.api_key {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    failed = true;
                    warn!(
                        status = response.status().as_u16(),
                        "the lineage endpoint refused an event (lineage.url)"
                    )
                }
                Err(err) => {
                    failed = true;
                    warn!(
                        error = %err.without_url(),
                        "cannot send a lineage event to lineage.url"
                    )
                }
            }
        }
        metrics.lineage(if failed { "failed" } else { "sent" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_are_named_as_openlineage_names_them() {
        let table = TableId::new("public", "orders");
        let (namespace, database) =
            server("postgres://u:secret@db.example:6432/shop", "postgres", 5432);
        assert_eq!(namespace, "postgres://db.example:6432");
        let pg = Naming::Server {
            namespace,
            database,
        };
        assert_eq!(pg.of("p", &table).name, "shop.public.orders");
        let lake = lake_naming("s3://bucket/lake");
        assert_eq!(
            lake.of("p", &table),
            Dataset {
                namespace: "s3://bucket".into(),
                name: "lake/p/public/orders".into()
            }
        );
        let local = lake_naming("file:///var/lake");
        assert_eq!(local.of("p", &table).name, "/var/lake/p/public/orders");
    }
}
