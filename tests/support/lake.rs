//! Reading what landed in the lake, and the same values from the source, in
//! one canonical form so they compare value by value.
//!
//! Canonical forms (chosen so Postgres can produce them in SQL and the lake
//! side from the Arrow value, exactly): integers, decimals, text, uuid, json
//! and booleans as Postgres prints them; floats as the hex of their IEEE bits;
//! bytea as hex; dates as days since 1970-01-01; timestamps and times as
//! microseconds; infinities as `infinity`/`-infinity`; arrays as JSON arrays of
//! the element forms. The MySQL side of the same forms is
//! [`super::mariadb::source_state_mysql`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimeUnit, TimestampMicrosecondType,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use tokio_postgres::Client;

pub type Row = BTreeMap<String, Value>;

#[derive(Debug, Clone)]
pub struct LogRow {
    pub op: String,
    pub seq: i64,
    pub ord: i64,
    pub position: String,
    pub txid: Option<String>,
    pub values: Row,
    /// Every `_tw_*` column, canonical (`_tw_commit_ts` in microseconds).
    pub meta: Row,
}

/// Every change-log row of a lake table, in (`_tw_seq`, `_tw_ord`) order:
/// a Delta table, or an Iceberg table registered in the lake's default
/// SQLite catalog (see [`read_iceberg_log`]).
pub async fn read_log(path: &Path) -> Result<Vec<LogRow>, String> {
    if path.join("metadata").is_dir() && !path.join("_delta_log").is_dir() {
        return read_iceberg_log(path).await;
    }
    if !path.join("_delta_log").is_dir() {
        return Err(format!("no Delta table at {}", path.display()));
    }
    let url = deltalake::ensure_table_uri(path.to_string_lossy()).map_err(|e| e.to_string())?;
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for uri in table.get_file_uris().map_err(|e| e.to_string())? {
        let file_path =
            tidewater_endpoint::url::percent_decode(uri.strip_prefix("file://").unwrap_or(&uri));
        let file = File::open(&file_path).map_err(|e| format!("{file_path}: {e}"))?;
        rows.extend(file_rows(file)?);
    }
    rows.sort_by_key(|r| (r.seq, r.ord));
    Ok(rows)
}

/// Every row of a lake table the way a Delta reader sees it: each data
/// file's rows less those its deletion vector deletes (current-state tables
/// with `sink.current_state_deletion_vectors`), in no particular order.
pub async fn read_current(path: &Path) -> Result<Vec<LogRow>, String> {
    if !path.join("_delta_log").is_dir() {
        return Err(format!("no Delta table at {}", path.display()));
    }
    let url = deltalake::ensure_table_uri(path.to_string_lossy()).map_err(|e| e.to_string())?;
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut dvs = tidewater_lake::DeletionVectors::of(&table);
    let files: Vec<_> = table
        .snapshot()
        .map_err(|e| e.to_string())?
        .log_data()
        .iter()
        .map(|f| (f.object_store_path(), f.deletion_vector_descriptor()))
        .collect();
    let mut rows = Vec::new();
    for (file, dv) in files {
        let deleted = match dv {
            Some(dv) => dvs.deleted(&dv).await.map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        let file_path = path.join(file.as_ref());
        let file = File::open(&file_path).map_err(|e| format!("{}: {e}", file_path.display()))?;
        rows.extend(
            file_rows(file)?
                .into_iter()
                .enumerate()
                .filter(|(at, _)| !deleted.contains(*at as u64))
                .map(|(_, row)| row),
        );
    }
    Ok(rows)
}

/// How many rows the lake table at `path` holds, from its commits' own
/// counts (the Delta log's `numRecords`, the Iceberg snapshot summary's
/// `total-records`): no data file is read, so it answers in milliseconds.
pub async fn committed_rows(path: &Path) -> Result<usize, String> {
    if path.join("metadata").is_dir() && !path.join("_delta_log").is_dir() {
        let (lake, pipeline, table) = iceberg_coordinates(path)?;
        let catalog = tidewater_lake::SqlCatalog::new(
            tidewater_lake::SqlBackend::Sqlite(lake.join("tidewater_catalog.db")),
            "tidewater",
        );
        let mut sink = tidewater_lake::IcebergSink::new(
            tidewater_lake::LakeStore::local(&lake),
            &pipeline,
            catalog,
        );
        return Ok(sink
            .table_stats(&table)
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |(rows, _)| rows));
    }
    let url = deltalake::ensure_table_uri(path.to_string_lossy()).map_err(|e| e.to_string())?;
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| e.to_string())?;
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    Ok(snapshot
        .log_data()
        .iter()
        .filter_map(|f| f.num_records())
        .sum())
}

/// The Iceberg table at `path` (`<lake>/<pipeline>/<schema>/<table>`), as
/// the lake's default catalog (`<lake>/tidewater_catalog.db`, catalog
/// `tidewater`) has it now: the data files its current snapshot's manifests
/// list, read with the Parquet crate. Columns a file lacks (added later)
/// read as NULL, as Iceberg readers read them. For polling in tests; the
/// independent readers (pyiceberg, DuckDB) are [`read_iceberg_with`].
pub async fn read_iceberg_log(path: &Path) -> Result<Vec<LogRow>, String> {
    let (lake, _, _) = iceberg_coordinates(path)?;
    let catalog = tidewater_lake::SqlCatalog::new(
        tidewater_lake::SqlBackend::Sqlite(lake.join("tidewater_catalog.db")),
        "tidewater",
    );
    read_iceberg_log_in(path, catalog).await
}

/// [`read_iceberg_log`] through `catalog`.
pub async fn read_iceberg_log_in(
    path: &Path,
    catalog: tidewater_lake::SqlCatalog,
) -> Result<Vec<LogRow>, String> {
    let (lake, pipeline, table) = iceberg_coordinates(path)?;
    let store = tidewater_lake::LakeStore::local(&lake);
    read_iceberg_store(store, &pipeline, &table, catalog).await
}

/// The Iceberg change log of `table` of `pipeline` in the lake `store`
/// (local or S3), through `catalog`, as [`read_iceberg_log`] reads it.
pub async fn read_iceberg_store(
    store: tidewater_lake::LakeStore,
    pipeline: &str,
    table: &tidewater_core::TableId,
    catalog: impl Into<tidewater_lake::Catalog>,
) -> Result<Vec<LogRow>, String> {
    let mut sink = tidewater_lake::IcebergSink::new(store, pipeline, catalog);
    let files = sink.data_files(table).await.map_err(|e| e.to_string())?;
    let columns = sink.columns(table).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for entry in files {
        let bytes = sink
            .read_file(table, &entry.file.path)
            .await
            .map_err(|e| e.to_string())?;
        rows.extend(file_rows_with(bytes, &columns)?);
    }
    rows.sort_by_key(|r| (r.seq, r.ord));
    Ok(rows)
}

/// Lake root, pipeline and table of an Iceberg table directory.
fn iceberg_coordinates(
    path: &Path,
) -> Result<(std::path::PathBuf, String, tidewater_core::TableId), String> {
    use tidewater_lake::layout::segment_name;
    let parts: Vec<String> = path
        .iter()
        .rev()
        .take(3)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let [table, schema, pipeline] = parts.as_slice() else {
        return Err(format!(
            "{} is not <lake>/<pipeline>/<schema>/<table>",
            path.display()
        ));
    };
    let lake = path
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("{} has no lake root", path.display()))?
        .to_path_buf();
    let table = tidewater_core::TableId::new(
        segment_name(schema).ok_or("schema segment")?,
        segment_name(table).ok_or("table segment")?,
    );
    Ok((lake, pipeline.clone(), table))
}

/// Every change-log row of an Iceberg table read by an engine tidewater did
/// not write — `reader` is `pyiceberg` or `duckdb` — through the lake's
/// default SQLite catalog, in (`_tw_seq`, `_tw_ord`) order; and the
/// reader's JSON summary of the table (snapshots, schema, properties).
pub async fn read_iceberg_with(path: &Path, reader: &str) -> Result<(Vec<LogRow>, Value), String> {
    let (lake, _, _) = iceberg_coordinates(path)?;
    let uri = format!("sqlite:///{}", lake.join("tidewater_catalog.db").display());
    read_iceberg_in(path, reader, &uri, "tidewater").await
}

/// [`read_iceberg_with`] through the catalog at SQLAlchemy URI
/// `catalog_uri` named `catalog_name`.
pub async fn read_iceberg_in(
    path: &Path,
    reader: &str,
    catalog_uri: &str,
    catalog_name: &str,
) -> Result<(Vec<LogRow>, Value), String> {
    let (lake, pipeline, table) = iceberg_coordinates(path)?;
    let warehouse = format!("file://{}", lake.display());
    read_iceberg_by(
        &pipeline,
        &table,
        reader,
        catalog_uri,
        catalog_name,
        &warehouse,
        &[],
    )
    .await
}

/// [`read_iceberg_in`] of `table` of `pipeline` in the warehouse
/// `warehouse` (`s3://…` too, with the reader's catalog `properties`
/// such as `s3.endpoint=…`).
pub async fn read_iceberg_by(
    pipeline: &str,
    table: &tidewater_core::TableId,
    reader: &str,
    catalog_uri: &str,
    catalog_name: &str,
    warehouse: &str,
    properties: &[String],
) -> Result<(Vec<LogRow>, Value), String> {
    let lake = std::env::temp_dir();
    let (namespace, name) = tidewater_lake::iceberg::identifier(pipeline, table);
    let out = lake.join(format!(
        "tidewater-read-{reader}-{}-{namespace}-{name}.parquet",
        std::process::id()
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_iceberg.py");
    let output = std::process::Command::new(crate::support::readers_python())
        .arg(&script)
        .args(["--catalog-uri", catalog_uri])
        .args(["--warehouse", warehouse])
        .args(["--catalog-name", catalog_name])
        .args(properties.iter().flat_map(|p| ["--property", p.as_str()]))
        .args(["--table", &format!("{namespace}.{name}")])
        .args(["--reader", reader])
        .arg("--out")
        .arg(&out)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{reader} could not read {namespace}.{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let summary: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{reader} summary: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let file = File::open(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut rows = file_rows_with(file, &[])?;
    let _ = std::fs::remove_file(&out);
    rows.sort_by_key(|r| (r.seq, r.ord));
    Ok((rows, summary))
}

/// The rows of one data file, read as an Iceberg reader reads them under
/// the table's current `columns`: those it lacks as NULL, those a promotion
/// widened since (int → long, float → double) in the wider type.
fn file_rows_with<R: parquet::file::reader::ChunkReader + 'static>(
    file: R,
    columns: &[(String, DataType)],
) -> Result<Vec<LogRow>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let fields: Vec<deltalake::arrow::datatypes::Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let ty = columns
                    .iter()
                    .find(|(name, _)| name == f.name())
                    .map_or_else(|| f.data_type().clone(), |(_, ty)| ty.clone());
                deltalake::arrow::datatypes::Field::new(f.name(), ty, true)
            })
            .collect();
        let arrays = batch
            .columns()
            .iter()
            .zip(&fields)
            .map(|(array, field)| deltalake::arrow::compute::cast(array, field.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let batch = RecordBatch::try_new(
            std::sync::Arc::new(deltalake::arrow::datatypes::Schema::new(fields)),
            arrays,
        )
        .map_err(|e| e.to_string())?;
        rows.extend(batch_rows(&batch).into_iter().map(|mut row| {
            for (column, _) in columns {
                if !column.starts_with("_tw_") {
                    row.values.entry(column.clone()).or_insert(Value::Null);
                }
            }
            fold_versions(row)
        }));
    }
    Ok(rows)
}

/// The rows of one data file.
fn file_rows<R: parquet::file::reader::ChunkReader + 'static>(
    file: R,
) -> Result<Vec<LogRow>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        rows.extend(batch_rows(&batch).into_iter().map(fold_versions));
    }
    Ok(rows)
}

/// Every change-log row of the lake table at `url` (`s3://…`), read through
/// delta-rs's object store with `options`.
pub async fn read_log_at(
    url: &str,
    options: std::collections::HashMap<String, String>,
) -> Result<Vec<LogRow>, String> {
    use deltalake::logstore::object_store::ObjectStoreExt;
    deltalake::aws::register_handlers(None);
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    let table = deltalake::open_table_with_storage_options(url, options)
        .await
        .map_err(|e| e.to_string())?;
    let store = table.log_store().object_store(None);
    let paths: Vec<_> = table
        .snapshot()
        .map_err(|e| e.to_string())?
        .log_data()
        .iter()
        .map(|f| f.object_store_path())
        .collect();
    let mut rows = Vec::new();
    for path in paths {
        let bytes = store
            .get(&path)
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        rows.extend(file_rows(bytes)?);
    }
    rows.sort_by_key(|r| (r.seq, r.ord));
    Ok(rows)
}

/// A row written under a column's newer type holds it in `<name>__v<n>`
/// (the lake's column versioning): read it back under the source name.
/// Exactly one version of a column is written per row (files may carry the
/// others as NULL): the non-NULL one, newest first, is the value.
fn fold_versions(mut row: LogRow) -> LogRow {
    let mut versions: BTreeMap<String, Vec<(u32, Value)>> = BTreeMap::new();
    for (key, value) in &row.values {
        let Some((base, n)) = key.rsplit_once("__v") else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        versions
            .entry(base.to_string())
            .or_default()
            .push((n, value.clone()));
    }
    for (base, mut found) in versions {
        found.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let original = row.values.get(&base).cloned().unwrap_or(Value::Null);
        let value = found
            .into_iter()
            .map(|(_, v)| v)
            .chain(std::iter::once(original))
            .find(|v| !v.is_null())
            .unwrap_or(Value::Null);
        row.values.insert(base, value);
    }
    row
}

/// `1.2500` → `1.25`, `3.000` → `3` (as Postgres's `trim_scale`).
fn trim_scale(text: &str) -> String {
    if !text.contains('.') {
        return text.to_string();
    }
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn trim_value(value: &mut Value) {
    match value {
        Value::String(s) => *s = trim_scale(s),
        Value::Array(items) => items.iter_mut().for_each(trim_value),
        _ => {}
    }
}

/// Postgres columns that land as Delta decimals (numeric(p,s), p ≤ 38, and
/// arrays of it): compared by value, since a column whose scale grew shows
/// its old rows with more zeros on the source than in the lake.
pub async fn decimal_columns(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
               AND coalesce(et.typname, t.typname) = 'numeric' AND a.atttypmod >= 4 \
               AND ((a.atttypmod - 4) >> 16) <= 38",
            &[&table],
        )
        .await
        .expect("decimal columns")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Trims the scale of `columns` in every row (see [`decimal_columns`]).
pub fn trim_decimals(state: &mut BTreeMap<String, Row>, columns: &[String]) {
    for row in state.values_mut() {
        for column in columns {
            if let Some(value) = row.get_mut(column) {
                trim_value(value);
            }
        }
    }
}

fn batch_rows(batch: &RecordBatch) -> Vec<LogRow> {
    let schema = batch.schema();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut values = Row::new();
        let mut meta = BTreeMap::new();
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let value = canon(column, i);
            if field.name().starts_with("_tw_") {
                meta.insert(field.name().clone(), value);
            } else {
                values.insert(field.name().clone(), value);
            }
        }
        let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
        rows.push(LogRow {
            // Current-state tables have no `_tw_op`: every row is a live image.
            op: text("_tw_op").unwrap_or_else(|| "c".into()),
            seq: text("_tw_seq").expect("_tw_seq").parse().expect("seq"),
            ord: text("_tw_ord").expect("_tw_ord").parse().expect("ord"),
            position: text("_tw_position").expect("_tw_position"),
            txid: text("_tw_txid"),
            values,
            meta: meta.into_iter().collect(),
        });
    }
    rows
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical form of one Arrow value.
pub fn canon(array: &ArrayRef, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    let s = match array.data_type() {
        DataType::Boolean => array.as_boolean().value(i).to_string(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Float32 => format!(
            "{:08x}",
            array.as_primitive::<Float32Type>().value(i).to_bits()
        ),
        DataType::Float64 => format!(
            "{:016x}",
            array.as_primitive::<Float64Type>().value(i).to_bits()
        ),
        DataType::Decimal128(_, _) => array
            .as_primitive::<deltalake::arrow::datatypes::Decimal128Type>()
            .value_as_string(i),
        DataType::Utf8 => array.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => array.as_string_view().value(i).to_string(),
        DataType::Binary => hex(array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => hex(array.as_binary::<i64>().value(i)),
        DataType::BinaryView => hex(array.as_binary_view().value(i)),
        DataType::Date32 => {
            let (min, max) = tidewater_core::date_range_days();
            match array.as_primitive::<Date32Type>().value(i) {
                days if days == max => "infinity".into(),
                days if days == min => "-infinity".into(),
                days => days.to_string(),
            }
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let (min, max) = tidewater_core::timestamp_range_us();
            match array.as_primitive::<TimestampMicrosecondType>().value(i) {
                micros if micros == max => "infinity".into(),
                micros if micros == min => "-infinity".into(),
                micros => micros.to_string(),
            }
        }
        DataType::FixedSizeBinary(16) => {
            let hex = hex(array.as_fixed_size_binary().value(i));
            format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(i);
            return Value::Array((0..list.len()).map(|j| canon(&list, j)).collect());
        }
        other => panic!("no canonical form for lake type {other}"),
    };
    Value::String(s)
}

/// Element types whose arrays land as typed lists.
const LIST_ELEMENTS: [&str; 20] = [
    "bool",
    "bytea",
    "char",
    "name",
    "int2",
    "int4",
    "int8",
    "text",
    "json",
    "float4",
    "float8",
    "bpchar",
    "varchar",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "numeric",
    "uuid",
    "jsonb",
];

/// The `key` that identifies rows by all their values, for tables without a
/// primary key (rows that are equal in every column count as many).
pub const WHOLE_ROW: &str = "*";

/// Adds a row keyed by its whole canonical form plus its duplicate number.
pub fn insert_whole_row(state: &mut BTreeMap<String, Row>, row: Row) {
    let base = serde_json::to_string(&row).expect("row json");
    let mut n = 1;
    while state.contains_key(&format!("{base}#{n}")) {
        n += 1;
    }
    state.insert(format!("{base}#{n}"), row);
}

fn remove_whole_row(state: &mut BTreeMap<String, Row>, row: &Row) {
    let base = serde_json::to_string(row).expect("row json");
    let mut n = 1;
    while state.contains_key(&format!("{base}#{}", n + 1)) {
        n += 1;
    }
    state.remove(&format!("{base}#{n}"));
}

/// The current state of a table from its change log: last image per key in
/// (`_tw_seq`, `_tw_ord`) order, deletes removed, truncates clearing.
pub fn current_state(log: &[LogRow], key: &str) -> BTreeMap<String, Row> {
    let mut state = BTreeMap::new();
    for row in log {
        match row.op.as_str() {
            "t" => state.clear(),
            // Without a key an update cannot say which row it replaced:
            // callers use WHOLE_ROW only for tables that see no updates.
            "d" if key == WHOLE_ROW => remove_whole_row(&mut state, &row.values),
            _ if key == WHOLE_ROW => insert_whole_row(&mut state, row.values.clone()),
            op => {
                let k = row
                    .values
                    .get(key)
                    .cloned()
                    .unwrap_or(Value::Null)
                    .to_string();
                if op == "d" {
                    state.remove(&k);
                } else {
                    state.insert(k, row.values.clone());
                }
            }
        }
    }
    state
}

fn canon_sql(expr: &str, type_name: &str) -> String {
    match type_name {
        "float4" => format!("encode(float4send({expr}), 'hex')"),
        "float8" => format!("encode(float8send({expr}), 'hex')"),
        "bytea" => format!("encode({expr}, 'hex')"),
        "date" => format!(
            "CASE WHEN isfinite({expr}) THEN ({expr} - date '1970-01-01')::text ELSE {expr}::text END"
        ),
        "timestamp" | "timestamptz" => format!(
            "CASE WHEN isfinite({expr}) THEN (extract(epoch FROM {expr}) * 1000000)::bigint::text ELSE {expr}::text END"
        ),
        "time" => format!("(extract(epoch FROM {expr}) * 1000000)::bigint::text"),
        // A cast to text strips char(n) padding and adds inet's /32 or
        // /128 mask; the output function does neither.
        "bpchar" | "inet" => format!("CASE WHEN {expr} IS NULL THEN NULL ELSE format('%s', {expr}) END"),
        _ => format!("{expr}::text"),
    }
}

/// The rows of a source table in canonical form, keyed like [`current_state`].
pub async fn source_state(client: &Client, table: &str, key: &str) -> BTreeMap<String, Row> {
    let columns = client
        .query(
            "SELECT a.attname::text, t.typname::text, t.typcategory::text, et.typname::text, \
               a.attndims::int4 \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' ORDER BY a.attnum",
            &[&table],
        )
        .await
        .expect("source columns");
    let mut selects = Vec::new();
    let mut arrays = Vec::new();
    for column in &columns {
        let name: String = column.get(0);
        let type_name: String = column.get(1);
        let category: String = column.get(2);
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        // Arrays of the element types tidewater maps to typed lists (see
        // connectors/postgres/src/types.rs); any other array lands as text.
        let listed = category == "A"
            && LIST_ELEMENTS.contains(
                &column
                    .get::<_, Option<String>>(3)
                    .unwrap_or_default()
                    .as_str(),
            );
        let dims: i32 = column.get(4);
        if listed && dims == 2 {
            // Nested lists, row by row of the matrix.
            let element: String = column.get(3);
            selects.push(format!(
                "CASE WHEN {quoted} IS NULL THEN NULL WHEN array_ndims({quoted}) IS NULL THEN '[]' \
                 ELSE (SELECT json_agg((SELECT json_agg({} ORDER BY j) FROM generate_subscripts({quoted}, 2) j) \
                   ORDER BY i)::text FROM generate_subscripts({quoted}, 1) i) END",
                canon_sql(&format!("{quoted}[i][j]"), &element)
            ));
            arrays.push(true);
        } else if listed {
            let element: String = column.get(3);
            selects.push(format!(
                "CASE WHEN {quoted} IS NULL THEN NULL ELSE (SELECT coalesce(json_agg({} ORDER BY n), '[]'::json)::text \
                 FROM unnest({quoted}) WITH ORDINALITY AS u(e, n)) END",
                canon_sql("e", &element)
            ));
            arrays.push(true);
        } else {
            selects.push(canon_sql(&quoted, &type_name));
            arrays.push(false);
        }
    }
    // Inheritance children are tables of their own; partitions belong to
    // their partitioned table.
    let partitioned: bool = client
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .expect("relkind")
        .get(0);
    let only = if partitioned { "" } else { "ONLY " };
    let sql = format!("SELECT {} FROM {only}{table}", selects.join(", "));
    let rows = client.query(sql.as_str(), &[]).await.expect("source rows");
    let mut state = BTreeMap::new();
    for row in rows {
        let mut values = Row::new();
        for (i, column) in columns.iter().enumerate() {
            let name: String = column.get(0);
            let text: Option<String> = row.get(i);
            let value = match text {
                None => Value::Null,
                Some(t) if arrays[i] => serde_json::from_str(&t).expect("array json"),
                Some(t) => Value::String(t),
            };
            values.insert(name, value);
        }
        let k = values.get(key).cloned().unwrap_or(Value::Null).to_string();
        state.insert(k, values);
    }
    state
}

/// Ok when both sides hold the same rows with the same values; else a readable
/// diff of the first differences.
pub fn compare(source: &BTreeMap<String, Row>, lake: &BTreeMap<String, Row>) -> Result<(), String> {
    let mut problems = Vec::new();
    for (key, row) in source {
        match lake.get(key) {
            None => problems.push(format!("key {key}: in the source, missing in the lake")),
            Some(lake_row) => {
                for (column, expected) in row {
                    let got = lake_row.get(column).unwrap_or(&Value::Null);
                    if got != expected {
                        problems.push(format!(
                            "key {key} column {column}: source {expected} lake {got}"
                        ));
                    }
                }
            }
        }
    }
    for key in lake.keys() {
        if !source.contains_key(key) {
            problems.push(format!("key {key}: in the lake, not in the source"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let total = problems.len();
        problems.truncate(15);
        Err(format!(
            "{total} difference(s):\n  {}",
            problems.join("\n  ")
        ))
    }
}

/// Fails when a change (its `_tw_seq`, `_tw_ord`) landed more than once.
pub fn assert_each_change_once(log: &[LogRow]) {
    let mut marks: Vec<(i64, i64)> = log.iter().map(|r| (r.seq, r.ord)).collect();
    marks.sort_unstable();
    let total = marks.len();
    marks.dedup();
    assert_eq!(marks.len(), total, "a change landed twice");
}

/// The `id` key of a change-log row (keys land as their text form).
pub fn id_of(row: &LogRow) -> i64 {
    row.values["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id as text")
}

/// How many rows of `log` are of `op` (`c`, `u`, `d`, `r`, `t`).
pub fn count_op(log: &[LogRow], op: &str) -> usize {
    log.iter().filter(|r| r.op == op).count()
}

/// Waits until the change log at `path` holds at least `rows` rows.
pub async fn wait_log_rows(path: &Path, rows: usize) {
    let path = path.to_path_buf();
    super::eventually(
        &format!("{rows} rows in {}", path.display()),
        std::time::Duration::from_secs(90),
        || {
            let path = path.clone();
            async move {
                let log = read_log(&path).await?;
                (log.len() >= rows)
                    .then_some(())
                    .ok_or(format!("{} rows", log.len()))
            }
        },
    )
    .await;
}

/// Waits until a row with an `id` above `id` is in the change log at
/// `path`; `log` is the daemon's log, shown when it never comes.
pub async fn wait_id_beyond(path: &Path, id: i64, log: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let rows = read_log(path).await.unwrap_or_default();
        if rows.iter().any(|r| id_of(r) > id) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no row with an id above {id} reached {}:\n{}",
            path.display(),
            log()
        );
        // The polling interval of this wait.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
