//! `tidewater forget`: erase every row of some keys of a table — the
//! "right to erasure" a change log otherwise defeats, since it keeps every
//! old value.
//!
//! ```text
//!  tidewater forget --table T --key '{"id": 42}' …
//!    keys ─▶ typed as the lake's key columns (hashed first where masking
//!            hashes the key) ─▶ digests (what rows are found by) and the
//!            audit's SHA-256 of each key
//!    ─▶ ForgetRequests record beside the sink (digests only, no value)
//!  running pipeline, between two commits (it is the tables' only writer):
//!    Sink::forget: change log + current-state table rewritten without the
//!    keys' rows (one commit each, marks kept), the replaced files and
//!    every older log version deleted (see `tidewater_lake`'s `forget`)
//!    ─▶ Erasures record (the audit: when, table, key hashes, rows removed)
//!  this command waits for the audit entry and prints it
//! ```
//!
//! Until the pipeline picks the request up (it is not running, say) the
//! request waits in the record: the next start does it first thing.

use std::time::{Duration, Instant};

use sha2::Digest;
use tidewater_core::state::ForgetRequest;
use tidewater_core::TableId;

use crate::pipeline::Settings;
use crate::policy::exit_code;

/// What `forget` was asked.
pub struct Options {
    pub table: String,
    /// Keys as JSON (an object by key column, or a scalar for a one-column
    /// key).
    pub keys: Vec<String>,
    /// A file of keys, one JSON per line.
    pub keys_file: Option<std::path::PathBuf>,
    pub wait: Duration,
}

/// `tidewater forget`.
pub async fn forget(settings: &Settings, options: &Options) -> i32 {
    if settings.kafka.is_some() || settings.iceberg.is_some() {
        eprintln!(
            "error: forget erases keys from a Delta lake or a warehouse; this pipeline writes {}\nhint: see README, \"Erasure\"",
            if settings.kafka.is_some() { "to Kafka (a topic's retention and compaction are the broker's)" } else { "Iceberg tables" }
        );
        return exit_code::CONFIG;
    }
    let table = match options.table.split_once('.') {
        Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {
            TableId::new(schema, table)
        }
        _ => {
            eprintln!(
                "error: --table {} is not schema.table\nhint: name it schema.table (database.table on MySQL)",
                options.table
            );
            return exit_code::CONFIG;
        }
    };
    let mut texts = options.keys.clone();
    if let Some(path) = &options.keys_file {
        match std::fs::read_to_string(path) {
            Ok(text) => texts.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            ),
            Err(err) => {
                eprintln!("error: reading --keys-file {}: {err}", path.display());
                return exit_code::CONFIG;
            }
        }
    }
    if texts.is_empty() {
        eprintln!("error: no key given\nhint: --key '{{\"id\": 42}}' (repeatable) or --keys-file");
        return exit_code::CONFIG;
    }
    if let Some(warehouse) = &settings.warehouse {
        return forget_warehouse(settings, warehouse, &table, &texts).await;
    }
    let mut lake = tidewater_lake::LakeSink::new(settings.lake.clone(), &settings.pipeline);
    let files = match lake.log_files(&table).await {
        Ok(Some(files)) => files,
        Ok(None) => {
            eprintln!("error: the lake has no table {table}\nhint: `tidewater status` lists the pipeline's tables");
            return exit_code::CONFIG;
        }
        Err(err) => {
            eprintln!("error: reading the lake: {}", crate::chain(&err));
            return exit_code::FAILED;
        }
    };
    if files.key.is_empty() {
        eprintln!("error: {table} has no primary key: its rows cannot be found by key");
        return exit_code::CONFIG;
    }
    let keys = match typed_keys(settings, &table, &files, &texts) {
        Ok(keys) => keys,
        Err(problem) => {
            eprintln!("error: {problem}");
            return exit_code::CONFIG;
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let request = ForgetRequest {
        id: id.clone(),
        schema: table.schema.clone(),
        table: table.table.clone(),
        keys: keys
            .iter()
            .map(|(digest, _)| format!("{digest:032x}"))
            .collect(),
        key_hashes: keys.iter().map(|(_, hash)| hash.clone()).collect(),
        requested_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    if let Err(err) = crate::pipeline::ask_forget(settings, request).await {
        eprintln!("error: recording the erasure: {}", crate::chain(&err));
        return exit_code::FAILED;
    }
    let running = matches!(crate::lease::probe(settings).await, Ok(Some(_)));
    if !running {
        println!(
            "{table}: erasure of {} keys recorded (request {id}); the pipeline is not running: it erases them first thing when it starts",
            keys.len()
        );
        return exit_code::OK;
    }
    let deadline = Instant::now() + options.wait;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let audit = match crate::pipeline::erasures(settings).await {
            Ok(audit) => audit,
            Err(err) => {
                eprintln!(
                    "error: reading the audit of erasures: {}",
                    crate::chain(&err)
                );
                return exit_code::FAILED;
            }
        };
        if let Some(done) = audit.erasures.iter().find(|e| e.id == id) {
            if done.outcome != "erased" {
                eprintln!("error: {table}: the erasure {}", done.outcome);
                return exit_code::FAILED;
            }
            println!(
                "{table}: erased {} keys: {} change-log rows, {} current-state rows; {} files rewritten, {} old log entries deleted (time travel to versions before this erasure is no longer possible); audit: request {id}",
                done.key_hashes.len(),
                done.changelog_rows,
                done.current_rows,
                done.files_rewritten,
                done.log_entries_deleted
            );
            return exit_code::OK;
        }
        if Instant::now() >= deadline {
            println!(
                "{table}: erasure recorded (request {id}) but not done within {} s; the pipeline does it between two commits — `tidewater status` shows it running",
                options.wait.as_secs()
            );
            return exit_code::FAILED;
        }
    }
}

/// Each key's digest (the lake's key columns' values, as rows are found
/// by) and its audit hash.
fn typed_keys(
    settings: &Settings,
    table: &TableId,
    files: &tidewater_lake::LakeFiles,
    texts: &[String],
) -> Result<Vec<(u128, String)>, String> {
    // The key's columns: source name, lake name, lake type.
    let mut columns = Vec::new();
    for lake_name in &files.key {
        let name = files
            .columns
            .iter()
            .find(|(_, l)| l == lake_name)
            .map_or_else(|| lake_name.clone(), |(n, _)| n.clone());
        let field = files
            .schema
            .field_with_name(lake_name)
            .map_err(|_| format!("the lake's key column {lake_name} is missing from its schema"))?;
        columns.push((name, lake_name.clone(), field.data_type().clone()));
    }
    let names: Vec<(String, String)> = columns
        .iter()
        .map(|(n, l, _)| (n.clone(), l.clone()))
        .collect();
    let mut per_column: Vec<Vec<String>> = vec![Vec::new(); columns.len()];
    let mut audit = Vec::new();
    for text in texts {
        let (values, hash) = parse_key(settings, table, &names, text)?;
        for (c, value) in values.into_iter().enumerate() {
            per_column[c].push(value);
        }
        audit.push(hash);
    }
    // Typed as the lake holds them, then digested as the sink digests rows.
    let typed: Vec<(String, arrow_schema::DataType, Vec<String>)> = columns
        .into_iter()
        .zip(per_column)
        .map(|((_, lake_name, ty), texts)| (lake_name, ty, texts))
        .collect();
    let digests = tidewater_lake::digest::key_digests(&typed).map_err(|err| err.to_string())?;
    Ok(digests.into_iter().zip(audit).collect())
}

/// One key given as JSON (an object by key column — source or lake name —
/// or a bare value for a one-column key): each key column's value as text,
/// in key order (hashed where masking hashes the column, as the destination
/// holds it), and the audit's hash of the key (SHA-256 of its canonical
/// JSON, clear values).
fn parse_key(
    settings: &Settings,
    table: &TableId,
    columns: &[(String, String)],
    text: &str,
) -> Result<(Vec<String>, String), String> {
    let listed = || {
        columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| format!("key {text:?} is not JSON: {err}"))?;
    let values: Vec<serde_json::Value> = match (&value, columns.len()) {
        (serde_json::Value::Object(map), _) => {
            if let Some(unknown) = map
                .keys()
                .find(|k| !columns.iter().any(|(n, l)| n == *k || l == *k))
            {
                return Err(format!(
                    "key column {unknown} is not part of the key ({})",
                    listed()
                ));
            }
            columns
                .iter()
                .map(|(n, l)| {
                    map.get(n)
                        .or_else(|| map.get(l))
                        .cloned()
                        .ok_or_else(|| format!("a key lacks column {n} (the key is {})", listed()))
                })
                .collect::<Result<_, _>>()?
        }
        (_, 1) => vec![value.clone()],
        _ => {
            return Err(format!(
                "the key has several columns ({}): give each key as a JSON object",
                listed()
            ))
        }
    };
    let mut canonical = serde_json::Map::new();
    let mut out = Vec::with_capacity(values.len());
    for ((name, _), v) in columns.iter().zip(values) {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "key column {name} must be a string, a number or a boolean"
                ))
            }
        };
        canonical.insert(name.clone(), serde_json::Value::String(text.clone()));
        // A key column masking hashes holds the hash: find rows by it.
        let hashed = matches!(
            settings.masking.action(table, name),
            Some(tidewater_core::mask::MaskAction::Hash)
        );
        out.push(if hashed {
            settings.masking.hash_text(text.as_bytes()).ok_or_else(|| {
                format!("key column {name} is hashed by [masking], which has no hash_key")
            })?
        } else {
            text
        });
    }
    let mut hasher = sha2::Sha256::new();
    hasher.update(format!("{table}\n{}", serde_json::Value::Object(canonical)).as_bytes());
    let hash = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok((out, hash))
}

/// `forget` on a warehouse: the rows deleted there directly (the pipeline
/// need not do it: row locks keep the two apart), both tables rewritten,
/// the audit recorded.
async fn forget_warehouse(
    settings: &Settings,
    warehouse: &tidewater_warehouse::WarehouseSettings,
    table: &TableId,
    texts: &[String],
) -> i32 {
    let mut sink = match tidewater_warehouse::WarehouseSink::inspect(warehouse.clone()).await {
        Ok(sink) => sink,
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return exit_code::FAILED;
        }
    };
    let key = match sink.key_columns(table).await {
        Ok(key) if !key.is_empty() => key,
        Ok(_) => {
            eprintln!("error: the warehouse has no table {table} with a primary key\nhint: `tidewater status` lists the pipeline's tables");
            return exit_code::CONFIG;
        }
        Err(err) => {
            eprintln!("error: {}", crate::chain(&err));
            return exit_code::FAILED;
        }
    };
    let columns: Vec<(String, String)> = key.iter().map(|k| (k.clone(), k.clone())).collect();
    let mut keys = Vec::new();
    let mut hashes = Vec::new();
    for text in texts {
        match parse_key(settings, table, &columns, text) {
            Ok((values, hash)) => {
                keys.push(values);
                hashes.push(hash);
            }
            Err(problem) => {
                eprintln!("error: {problem}");
                return exit_code::CONFIG;
            }
        }
    }
    let requested_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let id = uuid::Uuid::new_v4().to_string();
    let (outcome, rows) = match sink.erase(table, &keys).await {
        Ok(rows) => ("erased".to_string(), rows),
        Err(err) => (format!("failed: {}", crate::chain(&err)), (0, 0)),
    };
    let erasure = tidewater_core::state::Erasure {
        id: id.clone(),
        schema: table.schema.clone(),
        table: table.table.clone(),
        key_hashes: hashes,
        requested_at,
        done_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        outcome: outcome.clone(),
        changelog_rows: rows.1,
        current_rows: rows.0,
        files_rewritten: 0,
        log_entries_deleted: 0,
    };
    if let Err(err) = crate::pipeline::record_erasure(settings, erasure).await {
        eprintln!(
            "error: recording the audit of the erasure: {}",
            crate::chain(&err)
        );
        return exit_code::FAILED;
    }
    if outcome != "erased" {
        eprintln!("error: {table}: the erasure {outcome}");
        return exit_code::FAILED;
    }
    println!(
        "{table}: erased {} keys: {} change-log rows, {} current-state rows; both tables rewritten (VACUUM FULL); audit: request {id}",
        keys.len(),
        rows.1,
        rows.0
    );
    exit_code::OK
}
