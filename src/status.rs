//! `tidewater check` and `tidewater status`: read-only views of the source
//! server and the lake.

use clap::ValueEnum;
use serde_json::json;
use tidewater_core::{ErrorClass, Problem, TableId};
use tidewater_lake::LakeSink;
use tidewater_mysql::{MysqlConfig, MysqlSource};
use tidewater_postgres::{PostgresConfig, PostgresSource};

use crate::pipeline::{format_problems, Settings, SourceSettings};
use tidewater_core::state::{SourcePosition, StateStore, StoppedTables};

/// Selected tables, problems that stop the pipeline, and warnings; or the
/// error that stopped the check, with its class (a refused TLS setting is
/// a config error: exit 2, like `run`).
type CheckResult = Result<(Vec<TableId>, Vec<Problem>, Vec<Problem>), (String, ErrorClass)>;

fn failed<E: tidewater_core::Classified>(err: E) -> (String, ErrorClass) {
    (crate::chain(&err), err.class())
}

/// `[masking]` against a table's columns as the source has them now: one
/// line per masked column, and a problem for a key column the rules would
/// exclude or make constant (the run would refuse to start on it).
fn check_masking(
    masking: &tidewater_core::mask::MaskPolicy,
    schema: &tidewater_core::TableSchema,
) -> Option<Problem> {
    match masking.plan(schema) {
        Ok(Some(plan)) => {
            for column in &schema.columns {
                let how = match plan.schema.columns.iter().find(|c| c.name == column.name) {
                    None => "excluded".to_string(),
                    Some(c) if c.source_type != column.source_type => c.source_type.clone(),
                    Some(_) => continue,
                };
                println!("masking: {}.{}: {how}", schema.table, column.name);
            }
            None
        }
        Ok(None) => None,
        Err(err) => Some(Problem {
            what: format!(
                "masking: {}",
                err.to_string().lines().next().unwrap_or_default()
            ),
            fix: "mask key columns with action = \"hash\", or leave the table out of \
                  source.tables"
                .into(),
        }),
    }
}

async fn check_postgres(
    config: &PostgresConfig,
    masking: &tidewater_core::mask::MaskPolicy,
) -> CheckResult {
    let source = PostgresSource::connect(config.clone())
        .await
        .map_err(failed)?;
    let tables = source.tables().await.map_err(failed)?;
    let mut found = tidewater_postgres::preflight(source.client(), source.config(), &tables)
        .await
        .map_err(failed)?;
    for table in tables.iter().filter(|t| masking.covers(t)) {
        let columns = tidewater_postgres::table_columns(source.client(), table)
            .await
            .map_err(|err| (err.to_string(), ErrorClass::Transient))?;
        let schema = tidewater_core::TableSchema {
            table: table.clone(),
            version: 1,
            columns,
        };
        found.extend(check_masking(masking, &schema));
    }
    if let Err(err) = source.probe_replication().await {
        // Without REPLICATION the walsender refuses; that is reported above.
        if found
            .iter()
            .all(|p| !p.what.contains("REPLICATION attribute"))
        {
            found.push(Problem {
                what: format!("the replication connection failed: {}", crate::chain(&err)),
                fix: "the server must take a replication connection (replication=database) \
                      from this role over this url: the REPLICATION attribute, a pg_hba.conf \
                      line matching the database, a free WAL sender"
                    .into(),
            });
        }
    }
    let warnings = tidewater_postgres::advisories(source.client(), source.config(), &tables)
        .await
        .map_err(failed)?;
    Ok((tables, found, warnings))
}

async fn check_mysql(
    config: &MysqlConfig,
    masking: &tidewater_core::mask::MaskPolicy,
) -> CheckResult {
    let mut source = MysqlSource::connect(config.clone()).await.map_err(failed)?;
    let tables = source.tables().await.map_err(failed)?;
    let mut found = source.preflight(&tables).await.map_err(failed)?;
    for table in tables.iter().filter(|t| masking.covers(t)) {
        let schema = source.table_schema(table).await.map_err(failed)?;
        found.extend(check_masking(masking, &schema));
    }
    println!("source: {}", source.flavor());
    println!(
        "note: every session must log ROW: a client that sets SESSION binlog_format = \
         STATEMENT or MIXED writes changes no binlog event carries as rows, and tidewater \
         stops the tables they may touch (grant SUPER / BINLOG ADMIN to no application user)"
    );
    source.close().await;
    Ok((tables, found, Vec::new()))
}
use crate::policy::{action, exit_code};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Preflight against the live source and a write probe of the lake root.
pub async fn check(settings: &Settings) -> i32 {
    let mut problems = Vec::new();
    let checked_tables: Vec<TableId>;
    let result = match &settings.source {
        SourceSettings::Postgres(config) => check_postgres(config, &settings.masking).await,
        SourceSettings::Mysql(config) => check_mysql(config, &settings.masking).await,
    };
    match result {
        Ok((tables, found, warnings)) => {
            checked_tables = tables.clone();
            for warning in &warnings {
                println!("warning: {}\n  fix: {}", warning.what, warning.fix);
            }
            println!("source: {} table(s) selected", tables.len());
            for table in &tables {
                println!("  {table}");
            }
            problems.extend(found);
        }
        Err((err, class)) => {
            eprintln!("error: {err}");
            return match class {
                ErrorClass::Config => exit_code::CONFIG,
                _ => exit_code::FAILED,
            };
        }
    }
    if let Some(kafka) = &settings.kafka {
        // Asks the brokers whether each topic exists or could be created
        // (validate only: nothing is created).
        match tidewater_kafka::KafkaSink::check(kafka, &checked_tables).await {
            Ok(found) => {
                for line in found {
                    println!("kafka: topic {line}");
                }
            }
            Err(err) => problems.push(tidewater_core::Problem {
                what: format!(
                    "the Kafka brokers {} cannot take this pipeline's topics: {}",
                    kafka.brokers,
                    crate::chain(&err)
                ),
                fix: "check sink.brokers and sink.properties (security.protocol, sasl.*, ssl.*),                       and that the principal may create (or describe and write) the topics"
                    .into(),
            }),
        }
        return check_verdict(&problems, "Kafka brokers");
    }
    if let Some(warehouse) = &settings.warehouse {
        // Connecting creates nothing; the state tables are created at the
        // first run (CREATE on the database or the state schema).
        if let Err(err) = tidewater_warehouse::WarehouseSink::inspect(warehouse.clone()).await {
            problems.push(tidewater_core::Problem {
                what: format!("the warehouse is not reachable: {}", crate::chain(&err)),
                fix: "check sink.url (host, port, database, user and password) and that the \
                      user may connect"
                    .into(),
            });
        }
        return check_verdict(&problems, "warehouse");
    }
    // A write probe of the lake root: a directory's permissions, a bucket's
    // existence and the credentials' rights.
    let probe = ".tidewater-check";
    let lake_ok = match settings.lake.write(probe, "ok").await {
        Ok(()) => settings.lake.delete(probe).await,
        Err(err) => Err(err),
    };
    let source_ready = problems.is_empty();
    if let Err(err) = &lake_ok {
        problems.push(tidewater_core::Problem {
            what: format!(
                "lake root {} is not writable: {}",
                settings.lake.describe(""),
                crate::chain(err)
            ),
            fix: "set sink.uri to a writable directory or bucket prefix, or fix its \
                  permissions / the AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, …)"
                .into(),
        });
    }
    // An Iceberg lake's catalog: reachable, and its tables there or
    // creatable (SQL) / its config answering (REST).
    let mut catalog_err = None;
    if let (Some(catalog), Ok(())) = (&settings.iceberg, &lake_ok) {
        let mut lake = tidewater_lake::IcebergSink::new(
            settings.lake.clone(),
            &settings.pipeline,
            catalog.clone(),
        );
        if let Err(err) = lake.probe_writable().await {
            problems.push(tidewater_core::Problem {
                what: format!("the Iceberg catalog is not usable: {}", crate::chain(&err)),
                fix: "check sink.catalog.uri (and its credentials, sink.catalog.token for REST) \
                      and that the catalog's user may create its tables"
                    .into(),
            });
            catalog_err = Some(err);
        }
    }
    let code = check_verdict(&problems, "lake");
    if let (Some(err), true) = (&catalog_err, source_ready) {
        return action(err.class()).exit_code;
    }
    // The lake's refusal is the same exit code as `run` gives it; the
    // source's own problems (exit 3) come first, as they do for `run`.
    match lake_ok {
        Err(err) if source_ready => action(err.class()).exit_code,
        _ => code,
    }
}

/// Prints `check`'s verdict on the source and the sink (`lake` or
/// `warehouse`) and returns its exit code.
fn check_verdict(problems: &[tidewater_core::Problem], sink: &str) -> i32 {
    if problems.is_empty() {
        println!("ok: the source server and the {sink} are ready");
        exit_code::OK
    } else {
        println!(
            "{} problem(s):\n{}",
            problems.len(),
            format_problems(problems)
        );
        exit_code::PREFLIGHT
    }
}

/// `status` for a warehouse sink: every table's mark, position and
/// applied changes from the state table.
async fn warehouse_status(
    settings: &Settings,
    warehouse: &tidewater_warehouse::WarehouseSettings,
    format: Format,
    only: Option<&str>,
) -> i32 {
    let sink = match tidewater_warehouse::WarehouseSink::inspect(warehouse.clone()).await {
        Ok(sink) => sink,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return exit_code::FAILED;
        }
    };
    let (states, stopped) = match (
        sink.table_states().await,
        stopped_tables(&sink.state()).await,
    ) {
        (Ok(states), Ok(stopped)) => (states, stopped),
        (Err(err), _) | (_, Err(err)) => {
            // A damaged state row is config class (exit 2), like at `run`.
            eprintln!("error: {}", crate::chain(&err));
            return action(tidewater_core::Classified::class(&err)).exit_code;
        }
    };
    if let Some(name) = only {
        let known: Vec<String> = states.iter().map(|(t, _)| t.to_string()).collect();
        if !known.iter().any(|t| t == name) {
            return unknown_table(name, &settings.pipeline, "warehouse", &known);
        }
    }
    let process = process_report(settings).await;
    let running = process["running"] == json!(true);
    let tables: Vec<serde_json::Value> = states
        .iter()
        .filter(|(table, _)| only.is_none_or(|name| table.to_string() == name))
        .map(|(table, state)| {
            let stop = stopped.iter().find(|s| &s.table == table);
            json!({
                "table": table.to_string(),
                "path": state.target,
                "version": state.commits,
                "rows": state.rows,
                "files": null,
                "seq": state.mark.seq.to_string(),
                "ord": state.mark.ord.to_string(),
                "position": state.position,
                "snapshot": if state.snapshot_done { "done" } else { "running" },
                "last_commit": state.committed_at,
                "state": table_state(stop.is_some(), Some(state.snapshot_done), running),
                "stopped": stop.map(|s| json!({"position": s.position, "reason": s.reason, "stopped_at": s.stopped_at})),
            })
        })
        .collect();
    let source = source_status(settings, &sink.state()).await;
    let report = json!({"pipeline": settings.pipeline, "sink": "warehouse", "process": process, "source": source, "tables": tables});
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("json")),
        Format::Text => print_text(&report),
    }
    exit_code::OK
}

/// `status` for a Kafka sink: every table's topic, mark, position and
/// events from the state topic.
async fn kafka_status(
    settings: &Settings,
    kafka: &tidewater_kafka::KafkaSettings,
    format: Format,
    only: Option<&str>,
) -> i32 {
    let state = match tidewater_kafka::KafkaState::open(kafka).await {
        Ok(state) => state,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return action(tidewater_core::Classified::class(&err)).exit_code;
        }
    };
    let (states, stopped) = match (state.tables(), stopped_tables(&state).await) {
        (Ok(states), Ok(stopped)) => (states, stopped),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: {}", crate::chain(&err));
            return action(tidewater_core::Classified::class(&err)).exit_code;
        }
    };
    if let Some(name) = only {
        let known: Vec<String> = states.iter().map(|(t, _)| t.to_string()).collect();
        if !known.iter().any(|t| t == name) {
            return unknown_table(name, &settings.pipeline, "Kafka state topic", &known);
        }
    }
    let process = process_report(settings).await;
    let running = process["running"] == json!(true);
    let tables: Vec<serde_json::Value> = states
        .iter()
        .filter(|(table, _)| only.is_none_or(|name| table.to_string() == name))
        .map(|(table, record)| {
            let stop = stopped.iter().find(|s| &s.table == table);
            json!({
                "table": table.to_string(),
                "path": record.topic,
                "topic": record.topic,
                "version": record.commits,
                "rows": record.messages,
                "files": null,
                "seq": record.seq.to_string(),
                "ord": record.ord.to_string(),
                "position": record.position,
                "snapshot": if record.snapshot_done { "done" } else { "running" },
                "last_commit": record.committed_at,
                "state": table_state(stop.is_some(), Some(record.snapshot_done), running),
                "stopped": stop.map(|s| json!({"position": s.position, "reason": s.reason, "stopped_at": s.stopped_at})),
            })
        })
        .collect();
    let source = source_status(settings, &state).await;
    let report = json!({"pipeline": settings.pipeline, "sink": "kafka", "state_topic": kafka.state_topic, "process": process, "source": source, "tables": tables});
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("json")),
        Format::Text => print_text(&report),
    }
    exit_code::OK
}

/// `--table` names no table of the pipeline: exit 2, listing those that
/// exist (`place` is the lake or the warehouse).
fn unknown_table(name: &str, pipeline: &str, place: &str, known: &[String]) -> i32 {
    let list = if known.is_empty() {
        "none yet".to_string()
    } else {
        known.join(", ")
    };
    eprintln!(
        "error: --table {name:?}: the {place} holds no such table for pipeline {pipeline}\n\
         hint: name one of its tables as schema.table (database.table on MySQL): {list}"
    );
    exit_code::CONFIG
}

/// The lake `status` reads, in whichever format it is.
enum LakeView {
    Delta(Box<LakeSink>),
    Iceberg(Box<tidewater_lake::IcebergSink>),
}

impl LakeView {
    fn open(settings: &Settings) -> Self {
        match &settings.iceberg {
            Some(catalog) => LakeView::Iceberg(Box::new(tidewater_lake::IcebergSink::new(
                settings.lake.clone(),
                &settings.pipeline,
                catalog.clone(),
            ))),
            None => LakeView::Delta(Box::new(LakeSink::new(
                settings.lake.clone(),
                &settings.pipeline,
            ))),
        }
    }

    fn state(&self) -> tidewater_lake::LakeState {
        match self {
            LakeView::Delta(s) => s.state(),
            LakeView::Iceberg(s) => s.state(),
        }
    }

    async fn existing_tables(&mut self) -> Result<Vec<TableId>, tidewater_lake::LakeError> {
        match self {
            LakeView::Delta(s) => s.existing_tables().await,
            LakeView::Iceberg(s) => s.existing_tables().await,
        }
    }

    async fn table_state(
        &mut self,
        table: &TableId,
    ) -> Result<Option<tidewater_lake::TableState>, tidewater_lake::LakeError> {
        match self {
            LakeView::Delta(s) => s.table_state(table).await,
            LakeView::Iceberg(s) => s.table_state(table).await,
        }
    }

    async fn table_stats(
        &mut self,
        table: &TableId,
    ) -> Result<Option<(usize, usize)>, tidewater_lake::LakeError> {
        match self {
            LakeView::Delta(s) => s.table_stats(table).await,
            LakeView::Iceberg(s) => s.table_stats(table).await,
        }
    }

    fn table_location(&self, table: &TableId) -> String {
        match self {
            LakeView::Delta(s) => s.table_location(table),
            LakeView::Iceberg(s) => s.table_location(table),
        }
    }

    async fn last_commit_time(
        &mut self,
        table: &TableId,
    ) -> Result<Option<String>, tidewater_lake::LakeError> {
        match self {
            LakeView::Delta(s) => s.last_commit_time(table).await,
            LakeView::Iceberg(s) => s.last_commit_time(table).await,
        }
    }
}

/// `status`, of every table or (`--table`) of one.
pub async fn status(settings: &Settings, format: Format, only: Option<&str>) -> i32 {
    if let Some(kafka) = &settings.kafka {
        return kafka_status(settings, kafka, format, only).await;
    }
    if let Some(warehouse) = &settings.warehouse {
        return warehouse_status(settings, warehouse, format, only).await;
    }
    let mut sink = LakeView::open(settings);
    let mut tables = Vec::new();
    let stopped = match stopped_tables(&sink.state()).await {
        Ok(stopped) => stopped,
        Err(err) => {
            // A damaged state file is config class (exit 2), like at `run`.
            eprintln!("error: {}", crate::chain(&err));
            return action(err.class()).exit_code;
        }
    };
    // Exit 2 after the report when a table's state file is damaged.
    let mut code = exit_code::OK;
    let tables_found = match sink.existing_tables().await {
        Ok(tables) => tables,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return exit_code::FAILED;
        }
    };
    if let Some(name) = only {
        let known: Vec<String> = tables_found.iter().map(|t| t.to_string()).collect();
        if !known.iter().any(|t| t == name) {
            return unknown_table(name, &settings.pipeline, "lake", &known);
        }
    }
    let process = process_report(settings).await;
    let running = process["running"] == json!(true);
    for table in tables_found {
        if only.is_some_and(|name| table.to_string() != name) {
            continue;
        }
        let stop = stopped.iter().find(|s| s.table == table);
        let state = match sink.table_state(&table).await {
            Ok(state) => state,
            Err(err) => {
                if err.class() == ErrorClass::Config {
                    eprintln!("error: {}", crate::chain(&err));
                    code = exit_code::CONFIG;
                }
                tables.push(json!({"table": table.to_string(), "error": crate::chain(&err)}));
                continue;
            }
        };
        let stats = sink.table_stats(&table).await.ok().flatten();
        tables.push(json!({
            "table": table.to_string(),
            "path": sink.table_location(&table),
            "version": state.as_ref().map(|s| s.version),
            "rows": stats.map(|s| s.0),
            "files": stats.map(|s| s.1),
            "seq": state.as_ref().map(|s| s.mark.seq.to_string()),
            "ord": state.as_ref().map(|s| s.mark.ord.to_string()),
            "position": state.as_ref().map(|s| s.position.clone()),
            "snapshot": state.as_ref().map(|s| if s.snapshot_done { "done" } else { "running" }),
            "last_commit": sink.last_commit_time(&table).await.ok().flatten(),
            "state": table_state(stop.is_some(), state.as_ref().map(|s| s.snapshot_done), running),
            "stopped": stop.map(|s| json!({"position": s.position, "reason": s.reason, "stopped_at": s.stopped_at})),
        }));
    }
    let source = source_status(settings, &sink.state()).await;
    let report = json!({"pipeline": settings.pipeline, "process": process, "source": source, "tables": tables});
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("json")),
        Format::Text => print_text(&report),
    }
    code
}

/// Whether a process runs the pipeline, from its lease: `running`, and
/// the holder when one does.
async fn process_report(settings: &Settings) -> serde_json::Value {
    match crate::lease::probe(settings).await {
        Ok(Some(holder)) => json!({
            "running": true,
            "host": holder.host,
            "pid": holder.pid,
            "since": holder.since,
        }),
        Ok(None) => json!({"running": false}),
        Err(err) => json!({"running": null, "error": err}),
    }
}

/// A table's state as `status` shows it: `streaming` and `snapshotting`
/// only while a process runs the pipeline.
fn table_state(stopped: bool, snapshot_done: Option<bool>, running: bool) -> &'static str {
    match (stopped, snapshot_done, running) {
        (true, _, _) => "stopped",
        (false, Some(false), true) => "snapshotting",
        (false, Some(false), false) => "snapshot incomplete",
        (false, _, true) => "streaming",
        (false, _, false) => "not running",
    }
}

async fn mysql_status(config: &MysqlConfig, acknowledged: Option<String>) -> serde_json::Value {
    match MysqlSource::connect(config.clone()).await {
        Ok(mut source) => {
            let current = source.current_position().await;
            source.close().await;
            match current {
                Ok(current) => json!({
                    "binlog": "binlog",
                    "acknowledged": acknowledged,
                    "server_position": current.to_string(),
                }),
                Err(err) => {
                    json!({"binlog": "binlog", "acknowledged": acknowledged, "error": crate::chain(&err)})
                }
            }
        }
        Err(err) => {
            json!({"binlog": "binlog", "acknowledged": acknowledged, "error": crate::chain(&err)})
        }
    }
}

async fn postgres_status(config: &PostgresConfig) -> serde_json::Value {
    match PostgresSource::connect(config.clone()).await {
        Ok(source) => match source.slot_state().await {
            Ok(Some(slot)) => {
                let lag = source
                    .client()
                    .query_one(
                        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[&config.slot],
                    )
                    .await
                    .ok()
                    .and_then(|row| row.get::<_, Option<i64>>(0));
                json!({
                    "slot": config.slot,
                    "confirmed_flush": slot.confirmed_flush.map(|l| l.to_string()),
                    "active": slot.active_pid.is_some(),
                    "wal_status": slot.wal_status,
                    "retained_wal_bytes": slot.retained_bytes,
                    "lag_bytes": lag,
                })
            }
            Ok(None) => {
                json!({"slot": config.slot, "error": "replication slot does not exist"})
            }
            Err(err) => json!({"slot": config.slot, "error": crate::chain(&err)}),
        },
        Err(err) => json!({"slot": config.slot, "error": crate::chain(&err)}),
    }
}

fn print_text(report: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("pipeline {}", text(&report["pipeline"]));
    let process = &report["process"];
    match &process["running"] {
        serde_json::Value::Bool(true) => println!(
            "process: running (host {}, pid {}, since {})",
            text(&process["host"]),
            text(&process["pid"]),
            text(&process["since"])
        ),
        serde_json::Value::Bool(false) => println!("process: not running"),
        _ => println!("process: unknown ({})", text(&process["error"])),
    }
    let source = &report["source"];
    if source.get("binlog").is_some() {
        println!(
            "binlog: acknowledged {} | server at {}{}",
            text(&source["acknowledged"]),
            text(&source["server_position"]),
            source
                .get("error")
                .map(|e| format!(" | error: {}", text(e)))
                .unwrap_or_default(),
        );
    } else if source.get("error").is_some() {
        println!("slot {}: {}", text(&source["slot"]), text(&source["error"]));
    } else {
        println!(
            "slot {}: confirmed {} | lag {} bytes | retained WAL {} bytes | active {} | wal_status {}",
            text(&source["slot"]),
            text(&source["confirmed_flush"]),
            text(&source["lag_bytes"]),
            text(&source["retained_wal_bytes"]),
            text(&source["active"]),
            text(&source["wal_status"]),
        );
    }
    println!(
        "{:<32} {:>10} {:>8} {:>7} {:>12} {:<16} {:<20}",
        "table", "changes", "files", "version", "state", "position", "last commit"
    );
    for table in report["tables"].as_array().into_iter().flatten() {
        if let Some(err) = table.get("error") {
            println!("{:<32} error: {}", text(&table["table"]), text(err));
            continue;
        }
        println!(
            "{:<32} {:>10} {:>8} {:>7} {:>12} {:<16} {:<20}",
            text(&table["table"]),
            text(&table["rows"]),
            text(&table["files"]),
            text(&table["version"]),
            text(&table["state"]),
            text(&table["position"]),
            text(&table["last_commit"]),
        );
        if let Some(stop) = table.get("stopped").filter(|s| !s.is_null()) {
            println!(
                "  STOPPED at {}: {}\n  fix the cause, then: tidewater snapshot --config <file> --table {}",
                text(&stop["position"]),
                text(&stop["reason"]),
                text(&table["table"]),
            );
        }
    }
}

pub async fn drop_slot(settings: &Settings) -> i32 {
    let SourceSettings::Postgres(config) = &settings.source else {
        // A binlog source holds nothing on the server.
        return exit_code::OK;
    };
    match PostgresSource::connect(config.clone()).await {
        Ok(source) => match source.drop_slot().await {
            Ok(()) => {
                tracing::info!(slot = %config.slot, "dropped replication slot");
                exit_code::OK
            }
            Err(err) => {
                eprintln!("error: {}", crate::chain(&err));
                exit_code::FAILED
            }
        },
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            exit_code::FAILED
        }
    }
}

/// `status --table T --history` of a Kafka sink: the schema versions its
/// state topic records, as JSON lines or text.
async fn kafka_history(
    settings: &Settings,
    kafka: &tidewater_kafka::KafkaSettings,
    table: &str,
    format: Format,
) -> i32 {
    let state = match tidewater_kafka::KafkaState::open(kafka).await {
        Ok(state) => state,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return action(tidewater_core::Classified::class(&err)).exit_code;
        }
    };
    let tables = match state.tables() {
        Ok(tables) => tables,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return action(tidewater_core::Classified::class(&err)).exit_code;
        }
    };
    let known: Vec<String> = tables.iter().map(|(t, _)| t.to_string()).collect();
    let Some((id, _)) = tables.into_iter().find(|(t, _)| t.to_string() == table) else {
        return unknown_table(table, &settings.pipeline, "Kafka state topic", &known);
    };
    let versions: Vec<serde_json::Value> = state
        .history(&id)
        .iter()
        .filter_map(|(_, text)| serde_json::from_str(text).ok())
        .collect();
    if versions.is_empty() {
        eprintln!("error: {table} has no schema history yet (no event written since it was added)");
        return exit_code::FAILED;
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"table": table, "versions": versions}))
                .expect("json")
        ),
        Format::Text => {
            println!(
                "schema history of {table} (state topic {})",
                kafka.state_topic
            );
            for v in &versions {
                println!("\nversion {}  position {}", v["version"], v["position"]);
                for ddl in v["ddl"].as_array().into_iter().flatten() {
                    println!("  ddl: {}", ddl.as_str().unwrap_or_default());
                }
                for c in v["columns"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<24} {:<28} {}{}",
                        c["name"].as_str().unwrap_or_default(),
                        c["source_type"].as_str().unwrap_or_default(),
                        c["type"].as_str().unwrap_or_default(),
                        if c["key"] == json!(true) {
                            "  (key)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }
    exit_code::OK
}

/// `status --table T --history`: the table's schema history as written next
/// to it in the lake (readable without the daemon running).
pub async fn history(settings: &Settings, table: &str, format: Format) -> i32 {
    if settings.iceberg.is_some() {
        eprintln!(
            "error: `status --history` reads the schema history tidewater keeps next to Delta tables; \
             Iceberg tables keep theirs in their metadata\n\
             hint: every schema the table had is in its metadata (`schemas`); pyiceberg's \
             `table.schemas()` lists them"
        );
        return exit_code::CONFIG;
    }
    if let Some(kafka) = &settings.kafka {
        return kafka_history(settings, kafka, table, format).await;
    }
    if settings.warehouse.is_some() {
        eprintln!(
            "error: `status --history` reads the lake's schema history; a warehouse sink keeps none\n\
             hint: the warehouse catalog is the current schema (\\d {table} in psql)"
        );
        return exit_code::CONFIG;
    }
    let sink = LakeSink::new(settings.lake.clone(), &settings.pipeline);
    let tables = match sink.existing_tables().await {
        Ok(tables) => tables,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return exit_code::FAILED;
        }
    };
    let known: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let Some(id) = tables.into_iter().find(|t| t.to_string() == table) else {
        return unknown_table(table, &settings.pipeline, "lake", &known);
    };
    let history = match sink.history(&id).await {
        Ok(Some(history)) => history,
        Ok(None) => {
            eprintln!(
                "error: {table} has no schema history yet (no rows written since it was added)"
            );
            return exit_code::FAILED;
        }
        Err(err) => {
            eprintln!(
                "error: reading the schema history of {table}: {}",
                crate::chain(&err)
            );
            return action(err.class()).exit_code;
        }
    };
    match format {
        Format::Json => print!("{}", tidewater_lake::history::to_json(&history)),
        Format::Text => {
            println!("schema history of {}", history.table);
            for version in &history.versions {
                println!(
                    "\nversion {}  from seq {}  position {}  recorded {}",
                    version.version, version.seq, version.position, version.recorded_at
                );
                if let Some(ddl) = &version.ddl {
                    println!("  ddl: {ddl}");
                }
                for note in &version.notes {
                    println!("  note: {note}");
                }
                for c in &version.columns {
                    println!(
                        "  {:<24} {:<28} {:<20} lake {}{}",
                        c.name,
                        c.source_type,
                        c.lake_type,
                        c.lake_column,
                        if c.key { "  (key)" } else { "" }
                    );
                }
            }
        }
    }
    exit_code::OK
}

/// The stopped tables as the sink's state records them (none recorded:
/// none stopped).
async fn stopped_tables<S: StateStore>(
    state: &S,
) -> Result<Vec<tidewater_core::StoppedTable>, S::Error> {
    Ok(state.read::<StoppedTables>().await?.unwrap_or_default().0)
}

/// The source's side of `status`: the slot (Postgres), or the server's
/// position against the one the pipeline recorded (binlog).
async fn source_status<S: StateStore>(settings: &Settings, state: &S) -> serde_json::Value {
    match &settings.source {
        SourceSettings::Postgres(config) => postgres_status(config).await,
        SourceSettings::Mysql(config) => {
            let recorded = state.read::<SourcePosition>().await.ok().flatten();
            mysql_status(config, recorded.map(|p| p.position)).await
        }
    }
}
