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
    if settings.warehouse.is_some() || settings.kafka.is_some() || settings.iceberg.is_some() {
        eprintln!(
            "error: forget erases keys from a Delta lake (sink.format = \"delta\"); this pipeline writes elsewhere\nhint: see README, \"Erasure\""
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
    let keys = match typed_keys(settings, &files, &texts) {
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
    files: &tidewater_lake::LakeFiles,
    texts: &[String],
) -> Result<Vec<(u128, String)>, String> {
    // The key's columns: source name, lake name, lake field.
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
            .map_err(|_| format!("the lake's key column {lake_name} is missing from its schema"))?
            .clone();
        columns.push((name, lake_name.clone(), field));
    }
    let mut per_column: Vec<Vec<String>> = vec![Vec::new(); columns.len()];
    let mut audit = Vec::new();
    for text in texts {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|err| format!("key {text:?} is not JSON: {err}"))?;
        let values: Vec<serde_json::Value> = match (&value, columns.len()) {
            (serde_json::Value::Object(map), _) => {
                if let Some(unknown) = map
                    .keys()
                    .find(|k| !columns.iter().any(|(n, l, _)| n == *k || l == *k))
                {
                    return Err(format!(
                        "key column {unknown} is not part of the key ({})",
                        names(&columns)
                    ));
                }
                columns
                    .iter()
                    .map(|(n, l, _)| {
                        map.get(n).or_else(|| map.get(l)).cloned().ok_or_else(|| {
                            format!("a key lacks column {n} (the key is {})", names(&columns))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            (_, 1) => vec![value.clone()],
            _ => {
                return Err(format!(
                    "the key has several columns ({}): give each key as a JSON object",
                    names(&columns)
                ))
            }
        };
        let mut canonical = serde_json::Map::new();
        for (c, v) in values.iter().enumerate() {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "key column {} must be a string, a number or a boolean",
                        columns[c].0
                    ))
                }
            };
            canonical.insert(
                columns[c].0.clone(),
                serde_json::Value::String(text.clone()),
            );
            // A key column masking hashes holds the hash: find rows by it.
            let hashed = columns[c]
                .2
                .metadata()
                .get("tidewater.source_type")
                .is_some_and(|t| t.starts_with("hmac-sha256"));
            let text = if hashed {
                settings.masking.hash_text(text.as_bytes()).ok_or_else(|| {
                    format!(
                        "key column {} is hashed in the lake, and [masking] has no hash_key to hash it with",
                        columns[c].0
                    )
                })?
            } else {
                text
            };
            per_column[c].push(text);
        }
        let mut hasher = sha2::Sha256::new();
        hasher.update(format!("{}\n", serde_json::Value::Object(canonical)).as_bytes());
        audit.push(
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
    }
    // Typed as the lake holds them, then digested as the sink digests rows.
    let typed: Vec<(String, arrow_schema::DataType, Vec<String>)> = columns
        .iter()
        .zip(per_column)
        .map(|((_, lake_name, field), texts)| (lake_name.clone(), field.data_type().clone(), texts))
        .collect();
    let digests = tidewater_lake::digest::key_digests(&typed).map_err(|err| err.to_string())?;
    Ok(digests.into_iter().zip(audit).collect())
}

fn names(columns: &[(String, String, arrow_schema::Field)]) -> String {
    columns
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
