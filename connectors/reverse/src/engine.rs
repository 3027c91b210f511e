//! The SQL engine over the lake: DataFusion, with each lake table visible
//! as `<schema>.<table>` (its current state) and `<schema>.<table>__changes`
//! (the raw change log, metadata columns included).
//!
//! ```text
//!  query ─parse─▶ table references ─▶ only those tables' committed files (Lake::log_files:
//!                                     the Delta log's, or the Iceberg manifests' live entries)
//!        ─▶ register  <s>.<t>__changes  = a Parquet scan over exactly those files
//!                                         (filters pushed in: file, row-group and page
//!                                         pruning by statistics, row filters)
//!                     <s>.<t>           = view: last row per key by (_tw_seq, _tw_ord),
//!                                         after the last truncate, deletes dropped
//!        ─▶ plan read-only (no DDL, DML or SET) ─▶ a stream of result batches
//! ```
//!
//! Memory is bounded: the session has a fixed memory pool (`memory_mb` of
//! the job) and a spill directory, so sorts, windows and aggregations spill
//! to disk instead of growing, and the result comes out as a stream, never
//! collected. Only the tables a query names are read, and of those only the
//! columns and row groups it needs. Names follow SQL: unquoted identifiers
//! fold to lower case, so a MySQL table `Orders` is `shop."Orders"`.
//!
//! The scan reads the files the Delta snapshot lists, or the live entries
//! of the Iceberg snapshot's manifests (never a directory listing, so an
//! uncommitted or vacuumed file is never seen) through the lake's own
//! object store (local disk or S3). Files written before a column was
//! added lack it: the scan reads it as NULL; Iceberg files written before
//! a column was promoted in place (int → long, float → double, a decimal's
//! precision) hold the narrower type: the scan casts it (the table schema
//! is the scan's; DataFusion adapts each file to it by name — tidewater
//! never renames a lake column, so names and Iceberg field ids agree).

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{project_schema, ScalarValue, Statistics, TableReference};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, SortExpr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::ident;
use tidewater_core::{Mark, TableId};
use tidewater_endpoint::quote::double_quoted as quote;
use tidewater_lake::{IcebergSink, LakeError, LakeFiles, LakeSink};

use crate::error::ReverseError;

/// The lake a query reads, in the pipeline's format: the engine needs of
/// it only the tables it holds and each one's committed files.
pub enum Lake {
    Delta(Box<LakeSink>),
    Iceberg(Box<IcebergSink>),
}

impl From<LakeSink> for Lake {
    fn from(sink: LakeSink) -> Self {
        Lake::Delta(Box::new(sink))
    }
}

impl From<IcebergSink> for Lake {
    fn from(sink: IcebergSink) -> Self {
        Lake::Iceberg(Box::new(sink))
    }
}

impl Lake {
    /// The pipeline's tables the lake holds.
    pub async fn existing_tables(&mut self) -> Result<Vec<TableId>, LakeError> {
        match self {
            Lake::Delta(sink) => sink.existing_tables().await,
            Lake::Iceberg(sink) => sink.existing_tables().await,
        }
    }

    /// The committed files of `table`'s change log; None when the lake has
    /// no such table.
    pub async fn log_files(&mut self, table: &TableId) -> Result<Option<LakeFiles>, LakeError> {
        match self {
            Lake::Delta(sink) => sink.log_files(table).await,
            Lake::Iceberg(sink) => sink.log_files(table).await,
        }
    }
}

/// The suffix that names a table's raw change log.
pub const CHANGES_SUFFIX: &str = "__changes";

/// What the engine may use besides the lake.
#[derive(Debug, Clone)]
pub struct Resources {
    /// The memory pool of the query: operators that can spill (sorts,
    /// windows, aggregations) spill beyond it; the query fails if it cannot
    /// stay within it otherwise.
    pub memory_bytes: usize,
    /// Where spill files go; None: the system's temp directory.
    pub spill_dir: Option<PathBuf>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            spill_dir: None,
        }
    }
}

/// A planned query: its result schema and the lake tables it reads.
pub struct Query {
    pub schema: SchemaRef,
    /// Lake tables the query reads.
    pub tables: Vec<TableId>,
    frame: DataFrame,
}

impl Query {
    /// The result, ordered by the columns `key` (ascending, as DataFusion
    /// orders values; `crate::value::key_order` is the same order, which
    /// the caller checks as rows arrive).
    pub async fn ordered_by(
        self,
        key: &[String],
    ) -> Result<SendableRecordBatchStream, ReverseError> {
        // NULL last, as `key_order` has it, and as the current-state view
        // sorts its PARTITION BY key: the planner then drops this sort for
        // a query that keeps the view's order (one spilling sort, not two,
        // share the memory pool; two failed to merge at 10M rows).
        let sort: Vec<SortExpr> = key.iter().map(|k| ident(k).sort(true, false)).collect();
        let frame = self
            .frame
            .sort(sort)
            .map_err(|source| ReverseError::Query { source })?;
        frame
            .execute_stream()
            .await
            .map_err(|source| ReverseError::Query { source })
    }

    /// The result as the query orders it (or does not).
    pub async fn stream(self) -> Result<SendableRecordBatchStream, ReverseError> {
        self.frame
            .execute_stream()
            .await
            .map_err(|source| ReverseError::Query { source })
    }
}

/// Plans `query` over the lake of `sink`'s pipeline.
pub async fn query(
    sink: &mut Lake,
    query: &str,
    resources: &Resources,
) -> Result<Query, ReverseError> {
    let ctx = session(resources).map_err(|source| ReverseError::Query { source })?;
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state
        .sql_to_statement(query, &dialect)
        .map_err(|source| ReverseError::Query { source })?;
    let references = state
        .resolve_table_references(&statement)
        .map_err(|source| ReverseError::Query { source })?;
    drop(state);

    let lake_tables = sink.existing_tables().await?;
    let mut wanted: BTreeSet<TableId> = BTreeSet::new();
    let mut as_current: BTreeSet<TableId> = BTreeSet::new();
    for reference in &references {
        let (schema, table) = match reference {
            TableReference::Partial { schema, table } => (schema.as_ref(), table.as_ref()),
            TableReference::Full { schema, table, .. } => (schema.as_ref(), table.as_ref()),
            TableReference::Bare { table } => {
                return Err(ReverseError::UnknownTable {
                    name: table.to_string(),
                    hint: "name lake tables with their schema (database on MySQL): public.orders"
                        .into(),
                })
            }
        };
        let base = table.strip_suffix(CHANGES_SUFFIX);
        let id = TableId::new(schema, base.unwrap_or(table));
        if base.is_none() {
            as_current.insert(id.clone());
        }
        if !lake_tables.contains(&id) {
            let known: Vec<String> = lake_tables.iter().map(|t| t.to_string()).collect();
            return Err(ReverseError::UnknownTable {
                name: format!("{schema}.{table}"),
                hint: if known.is_empty() {
                    "the lake has no tables yet: run the pipeline first".into()
                } else {
                    format!(
                        "lake tables: {} (each also as <table>{CHANGES_SUFFIX}); quote mixed-case names",
                        known.join(", ")
                    )
                },
            });
        }
        wanted.insert(id);
    }

    for (i, id) in wanted.iter().enumerate() {
        let files = sink
            .log_files(id)
            .await?
            .ok_or_else(|| ReverseError::UnknownTable {
                name: id.to_string(),
                hint: "it was removed from the lake while the query was planned".into(),
            })?;
        if files.key.is_empty() && as_current.contains(id) {
            return Err(ReverseError::UnknownTable {
                name: id.to_string(),
                hint: format!(
                    "it has no primary key, so it has no current state; query {id}{CHANGES_SUFFIX}"
                ),
            });
        }
        let internal = |source| ReverseError::Engine {
            table: id.to_string(),
            source,
        };
        let (columns, key) = (files.columns.clone(), files.key.clone());
        let scan = LogScan::new(&ctx, i, files).map_err(internal)?;
        register_changes(&ctx, id, Arc::new(scan)).map_err(internal)?;
        if as_current.contains(id) {
            register_current(&ctx, id, &columns, &key)
                .await
                .map_err(internal)?;
        }
    }

    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(query, options)
        .await
        .map_err(|source| ReverseError::Query { source })?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    Ok(Query {
        schema,
        tables: wanted.into_iter().collect(),
        frame,
    })
}

/// The change-log rows of `table` that make its state as of `mark`, for
/// `tidewater verify`: every insert, update and delete at or below `mark`
/// after the last truncate at or below it, in no order. Columns: the
/// source columns under their source names (`LakeFiles::columns`), then
/// `_tw_seq`, `_tw_ord` and `_tw_op`; keeping each key's last row (and
/// dropping it when it is a delete) is the caller's. No sort or window:
/// the scan streams, pruned by the marks' statistics. Returns the key's
/// source column names too; None when the lake has no such table.
///
/// A committed file that is gone from the store (deleted by hand, lost
/// with a disk) is left out and named in [`AsOf::missing`]: its rows are
/// then what a comparison finds missing, instead of a read error.
pub async fn log_as_of(
    sink: &mut Lake,
    table: &TableId,
    mark: Mark,
    resources: &Resources,
) -> Result<Option<AsOf>, ReverseError> {
    let Some(mut files) = sink.log_files(table).await? else {
        return Ok(None);
    };
    let mut missing = Vec::new();
    let mut present = Vec::with_capacity(files.files.len());
    for file in std::mem::take(&mut files.files) {
        match datafusion::object_store::ObjectStoreExt::head(&files.store, &file.path).await {
            Err(datafusion::object_store::Error::NotFound { .. }) => {
                missing.push(file.path.to_string())
            }
            _ => present.push(file),
        }
    }
    files.files = present;
    let internal = |source| ReverseError::Engine {
        table: table.to_string(),
        source,
    };
    let ctx = session(resources).map_err(internal)?;
    let key: Vec<String> = files
        .key
        .iter()
        .map(|lake| {
            files
                .columns
                .iter()
                .find(|(_, l)| l == lake)
                .map_or_else(|| lake.clone(), |(name, _)| name.clone())
        })
        .collect();
    let columns = files.columns.clone();
    let scan = LogScan::new(&ctx, 0, files).map_err(internal)?;
    register_changes(&ctx, table, Arc::new(scan)).map_err(internal)?;
    let changes = format!(
        "{}.{}",
        quote(&table.schema),
        quote(&format!("{}{CHANGES_SUFFIX}", table.table))
    );
    let (seq, ord) = (
        mark.seq.min(i64::MAX as u64) as i64,
        mark.ord.min(i64::MAX as u64) as i64,
    );
    let at_or_below = format!("(_tw_seq < {seq} OR (_tw_seq = {seq} AND _tw_ord <= {ord}))");
    let last = ctx
        .sql(&format!(
            "SELECT _tw_seq, _tw_ord FROM {changes} WHERE _tw_op = 't' AND {at_or_below} \
             ORDER BY _tw_seq DESC, _tw_ord DESC LIMIT 1"
        ))
        .await
        .map_err(internal)?
        .collect()
        .await
        .map_err(internal)?;
    let truncated = last
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b: &RecordBatch| {
            let seq = b.column(0).as_primitive::<Int64Type>().value(0);
            let ord = b.column(1).as_primitive::<Int64Type>().value(0);
            (seq, ord)
        })
        .unwrap_or((-1, -1));
    let selected: Vec<String> = columns
        .iter()
        .map(|(name, lake)| format!("{} AS {}", quote(lake), quote(name)))
        .collect();
    let sql = format!(
        "SELECT {selected}, _tw_seq, _tw_ord, _tw_op FROM {changes} \
         WHERE _tw_op <> 't' AND {at_or_below} \
           AND (_tw_seq > {t_seq} OR (_tw_seq = {t_seq} AND _tw_ord > {t_ord}))",
        selected = selected.join(", "),
        t_seq = truncated.0,
        t_ord = truncated.1,
    );
    let stream = ctx
        .sql(&sql)
        .await
        .map_err(internal)?
        .execute_stream()
        .await
        .map_err(|source| ReverseError::Query { source })?;
    Ok(Some(AsOf {
        key,
        columns,
        missing,
        stream,
    }))
}

/// A change log's rows as of a mark ([`log_as_of`]).
pub struct AsOf {
    /// The key's source column names.
    pub key: Vec<String>,
    /// Source name and lake name of each source column.
    pub columns: Vec<(String, String)>,
    /// Committed files gone from the store, left out of `stream`.
    pub missing: Vec<String>,
    pub stream: SendableRecordBatchStream,
}

/// A session with a bounded memory pool that spills to disk.
fn session(resources: &Resources) -> DfResult<SessionContext> {
    // Parquet footers are cached (the truncate lookup and the query read
    // the same files), within a share of the pool: the cache lives
    // outside it.
    let mut runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(resources.memory_bytes)))
        .with_metadata_cache_limit(resources.memory_bytes / 16);
    if let Some(dir) = &resources.spill_dir {
        runtime = runtime.with_temp_file_path(dir.clone());
    }
    // One partition: no exchange or merge operators, which cannot spill
    // and would need memory the spilling sorts have taken (a pool of a few
    // MiB failed with two partitions); the push is bound by the target.
    // Rows per batch: a sort must hold a few batches of each partition,
    // so small pools get small batches (8192, the default, from 256 MiB;
    // 4096 at the default 128 MiB).
    let batch_rows = (resources.memory_bytes >> 15).clamp(512, 8192);
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(1)
        .with_batch_size(batch_rows);
    let options = config.options_mut();
    // A sort keeps this much back for merging its spilled runs; the
    // default (10 MiB) is for pools of gigabytes.
    options.execution.sort_spill_reservation_bytes = (resources.memory_bytes / 16).min(10 << 20);
    // Row filters inside the Parquet reader: rows a filter drops are never
    // materialised with the other columns.
    options.execution.parquet.pushdown_filters = true;
    options.execution.parquet.reorder_filters = true;
    Ok(SessionContext::new_with_config_rt(
        config,
        runtime.build_arc()?,
    ))
}

/// Registers `changes` as `id`'s change log.
fn register_changes(
    ctx: &SessionContext,
    id: &TableId,
    changes: Arc<dyn TableProvider>,
) -> DfResult<()> {
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    if catalog.schema(&id.schema).is_none() {
        catalog.register_schema(&id.schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    let changes_name = format!("{}{CHANGES_SUFFIX}", id.table);
    ctx.register_table(
        TableReference::partial(id.schema.as_str(), changes_name.as_str()),
        changes,
    )?;
    Ok(())
}

/// Registers `id`'s current-state view over its registered change log.
/// Finding the last truncate is a query of its own: the highest
/// (`_tw_seq`, `_tw_ord`) of the rows with `_tw_op = 't'` (a filter the
/// scan pushes down, so files without a truncate are skipped by their
/// statistics where they allow).
async fn register_current(
    ctx: &SessionContext,
    id: &TableId,
    columns: &[(String, String)],
    key: &[String],
) -> DfResult<()> {
    let changes = format!(
        "{}.{}",
        quote(&id.schema),
        quote(&format!("{}{CHANGES_SUFFIX}", id.table))
    );
    let last = ctx
        .sql(&format!(
            "SELECT _tw_seq, _tw_ord FROM {changes} WHERE _tw_op = 't' \
             ORDER BY _tw_seq DESC, _tw_ord DESC LIMIT 1"
        ))
        .await?
        .collect()
        .await?;
    let truncated = last
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b: &RecordBatch| {
            let seq = b.column(0).as_primitive::<Int64Type>().value(0);
            let ord = b.column(1).as_primitive::<Int64Type>().value(0);
            Mark::new(seq as u64, ord as u64)
        })
        .unwrap_or(Mark::ZERO);
    let view = ctx
        .sql(&current_state_sql(&changes, columns, key, truncated))
        .await?
        .into_view();
    ctx.register_table(
        TableReference::partial(id.schema.as_str(), id.table.as_str()),
        view,
    )?;
    Ok(())
}

/// The current state of a change log (DESIGN §3), columns under their
/// source names.
fn current_state_sql(
    changes: &str,
    columns: &[(String, String)],
    key: &[String],
    truncated: Mark,
) -> String {
    let columns: Vec<String> = columns
        .iter()
        .map(|(name, lake)| format!("{} AS {}", quote(lake), quote(name)))
        .collect();
    let key: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let (seq, ord) = (truncated.seq as i64, truncated.ord as i64);
    format!(
        "SELECT {columns} FROM (\
           SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _tw_seq DESC, _tw_ord DESC) AS __tw_rank \
           FROM {changes} \
           WHERE _tw_op <> 't' AND (_tw_seq > {seq} OR (_tw_seq = {seq} AND _tw_ord > {ord}))\
         ) WHERE __tw_rank = 1 AND _tw_op <> 'd'",
        columns = columns.join(", "),
        key = key.join(", "),
    )
}

/// A change log as a table: a Parquet scan over exactly the committed files
/// of the snapshot, in the table's object store (registered in the
/// session's runtime under a URL of its own).
struct LogScan {
    schema: SchemaRef,
    store_url: ObjectStoreUrl,
    files: Vec<PartitionedFile>,
}

impl fmt::Debug for LogScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogScan")
            .field("store", &self.store_url)
            .field("files", &self.files.len())
            .finish()
    }
}

impl LogScan {
    /// The scan of the `n`th table of a query.
    fn new(ctx: &SessionContext, n: usize, lake: LakeFiles) -> DfResult<Self> {
        let store_url = ObjectStoreUrl::parse(format!("tidewater-lake-{n}://table"))?;
        ctx.runtime_env()
            .register_object_store(store_url.as_ref(), lake.store);
        let files = lake
            .files
            .into_iter()
            .map(|lake_file| {
                let mut file = PartitionedFile::new(lake_file.path.to_string(), lake_file.size);
                // The path as the log has it, not parsed again.
                file.object_meta.location = lake_file.path;
                match lake_file
                    .stats
                    .and_then(|stats| file_statistics(&lake.schema, &stats))
                {
                    Some(statistics) => file.with_statistics(Arc::new(statistics)),
                    None => file,
                }
            })
            .collect();
        Ok(Self {
            schema: lake.schema,
            store_url,
            files,
        })
    }
}

/// A file's statistics from the Delta log (or an Iceberg manifest, in the
/// same form), so a filter can skip the file before its footer is read: the row count, NULL counts, and the bounds
/// of integer and date columns (exact in the log). Timestamps are cut to
/// milliseconds there and decimals written as floats, and text bounds
/// come from the Parquet writer's (possibly cut) statistics, so those are
/// left out: their row groups are still pruned by the file's own
/// statistics.
fn file_statistics(schema: &Schema, stats: &str) -> Option<Statistics> {
    let json: serde_json::Value = serde_json::from_str(stats).ok()?;
    let of = |kind: &str, column: &str| json.get(kind).and_then(|m| m.get(column)).cloned();
    let mut statistics = Statistics::new_unknown(schema);
    if let Some(rows) = json.get("numRecords").and_then(|n| n.as_u64()) {
        statistics.num_rows = Precision::Exact(rows as usize);
    }
    for (field, column) in schema
        .fields()
        .iter()
        .zip(&mut statistics.column_statistics)
    {
        if let Some(nulls) = of("nullCount", field.name()).and_then(|n| n.as_u64()) {
            column.null_count = Precision::Exact(nulls as usize);
        }
        let exact = matches!(
            field.data_type(),
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
                | DataType::Date32
        );
        if !exact {
            continue;
        }
        let bound = |kind: &str| {
            let text = match of(kind, field.name())? {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s,
                _ => return None,
            };
            ScalarValue::try_from_string(text, field.data_type())
                .ok()
                .filter(|v| !v.is_null())
        };
        if let (Some(min), Some(max)) = (bound("minValues"), bound("maxValues")) {
            column.min_value = Precision::Exact(min);
            column.max_value = Precision::Exact(max);
        }
    }
    Some(statistics)
}

#[async_trait]
impl TableProvider for LogScan {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter goes into the scan for pruning (files, row groups,
    /// pages by statistics) and row filtering; DataFusion still applies it
    /// above the scan.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(
                &self.schema,
                projection,
            )?)));
        }
        let groups_n = state
            .config()
            .target_partitions()
            .clamp(1, self.files.len());
        let mut groups = vec![Vec::new(); groups_n];
        for (i, file) in self.files.iter().enumerate() {
            groups[i % groups_n].push(file.clone());
        }
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = Arc::new(ParquetSource::new(self.schema.clone()));
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use tidewater_lake::LakeFile;

    /// A change log: (op, seq, ord, id, v).
    fn log(rows: &[(&str, i64, i64, i64, Option<&str>)]) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v__v2", DataType::Utf8, true),
            Field::new("_tw_op", DataType::Utf8, false),
            Field::new("_tw_seq", DataType::Int64, false),
            Field::new("_tw_ord", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.4))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    async fn register(ctx: &SessionContext, log: Arc<dyn TableProvider>) {
        let id = TableId::new("public", "t");
        register_changes(ctx, &id, log).unwrap();
        let columns = [("id".into(), "id".into()), ("v".into(), "v__v2".into())];
        register_current(ctx, &id, &columns, &["id".into()])
            .await
            .unwrap();
    }

    async fn current(log: Arc<dyn TableProvider>) -> Vec<(i64, Option<String>)> {
        let ctx = SessionContext::new();
        register(&ctx, log).await;
        let batches = ctx
            .sql("SELECT id, v FROM public.t ORDER BY id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in batches {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let vs = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    ids.value(i),
                    vs.is_valid(i).then(|| vs.value(i).to_string()),
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn the_current_state_is_the_last_change_per_key_after_the_last_truncate() {
        let rows = [
            ("r", 1, 0, 1, Some("a")),
            ("r", 1, 1, 2, Some("b")),
            ("r", 1, 2, 3, Some("c")),
            // one transaction: update 1 twice (the later ord wins), delete 2
            ("u", 5, 1, 1, Some("a2")),
            ("u", 5, 0, 1, Some("a1")),
            ("d", 5, 2, 2, Some("b")),
            // a NULL value is a value; a later insert after a delete counts
            ("u", 7, 0, 3, None),
            ("c", 8, 0, 2, Some("b again")),
        ];
        assert_eq!(
            current(log(&rows)).await,
            vec![
                (1, Some("a2".into())),
                (2, Some("b again".into())),
                (3, None)
            ]
        );
        // A truncate at (6, 0) (and an older one): only what came after
        // the last is left.
        let mut truncated = rows.to_vec();
        truncated.push(("t", 6, 0, 0, None));
        truncated.push(("t", 2, 0, 0, None));
        assert_eq!(
            current(log(&truncated)).await,
            vec![(2, Some("b again".into())), (3, None)]
        );
        // The log keeps everything, truncate included.
        let ctx = SessionContext::new();
        register(&ctx, log(&truncated)).await;
        let n: usize = ctx
            .sql("SELECT * FROM public.t__changes")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(n, 10);
    }

    /// Writes `batch` as a Parquet file `name` under `dir`; (path, size).
    fn parquet(dir: &std::path::Path, name: &str, batch: RecordBatch) -> (String, u64) {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        (
            path.to_str().unwrap().trim_start_matches('/').to_string(),
            size,
        )
    }

    /// The lake's files scanned as they are: an older file without a
    /// later column reads it as NULL, columns in another order map by
    /// name, a renamed column (`v__v2`) shows under its source name, and a
    /// filter skips the files whose statistics (the Delta log's, else the
    /// footer's) rule it out.
    #[tokio::test]
    async fn the_scan_aligns_older_files_and_prunes_by_statistics() {
        use datafusion::arrow::array::ArrayRef;
        let dir = std::env::temp_dir().join(format!("tw-engine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let int = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        let text = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        // Before `v` was added: ids 1..=3.
        let old = RecordBatch::try_from_iter([
            ("id", int(vec![1, 2, 3])),
            ("_tw_op", text(vec!["r", "r", "r"])),
            ("_tw_seq", int(vec![1, 1, 1])),
            ("_tw_ord", int(vec![0, 1, 2])),
        ])
        .unwrap();
        // After, columns in another order: ids 100..=102, and id 2 again.
        let new = RecordBatch::try_from_iter([
            ("_tw_seq", int(vec![5, 5, 5])),
            ("v__v2", text(vec!["a", "b", "c"])),
            ("id", int(vec![100, 101, 102])),
            ("_tw_ord", int(vec![0, 1, 2])),
            ("_tw_op", text(vec!["c", "c", "c"])),
        ])
        .unwrap();
        let update = RecordBatch::try_from_iter([
            ("id", int(vec![2])),
            ("v__v2", text(vec!["two"])),
            ("_tw_op", text(vec!["u"])),
            ("_tw_seq", int(vec![6])),
            ("_tw_ord", int(vec![0])),
        ])
        .unwrap();
        let ctx = session(&Resources::default()).unwrap();
        let store = ctx
            .runtime_env()
            .object_store(ObjectStoreUrl::local_filesystem())
            .unwrap();
        // The Delta log's statistics of two of them (the third has none).
        let stats = |ids: (i64, i64)| {
            Some(format!(
                "{{\"numRecords\":3,\"minValues\":{{\"id\":{},\"v__v2\":\"a\"}},\
                 \"maxValues\":{{\"id\":{},\"v__v2\":\"c\"}},\"nullCount\":{{\"id\":0}}}}",
                ids.0, ids.1
            ))
        };
        let files = [
            (parquet(&dir, "old.parquet", old), stats((1, 3))),
            (parquet(&dir, "new.parquet", new), stats((100, 102))),
            (parquet(&dir, "update.parquet", update), None),
        ]
        .into_iter()
        .map(|((path, size), stats)| LakeFile {
            path: PartitionedFile::new(path, size).object_meta.location,
            size,
            stats,
        })
        .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v__v2", DataType::Utf8, true),
            Field::new("_tw_op", DataType::Utf8, false),
            Field::new("_tw_seq", DataType::Int64, false),
            Field::new("_tw_ord", DataType::Int64, false),
        ]));
        let lake = LakeFiles {
            store,
            files,
            schema,
            columns: vec![("id".into(), "id".into()), ("v".into(), "v__v2".into())],
            key: vec!["id".into()],
        };
        let id = TableId::new("public", "t");
        let scan = LogScan::new(&ctx, 0, lake).unwrap();
        register_changes(&ctx, &id, Arc::new(scan)).unwrap();
        register_current(
            &ctx,
            &id,
            &[("id".into(), "id".into()), ("v".into(), "v__v2".into())],
            &["id".into()],
        )
        .await
        .unwrap();
        let batches = ctx
            .sql("SELECT id, v FROM public.t ORDER BY id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let ids = b.column(0).as_primitive::<Int64Type>();
            let vs = b.column(1).as_string::<i32>();
            for i in 0..b.num_rows() {
                rows.push((
                    ids.value(i),
                    vs.is_valid(i).then(|| vs.value(i).to_string()),
                ));
            }
        }
        assert_eq!(
            rows,
            vec![
                (1, None),
                (2, Some("two".into())),
                (3, None),
                (100, Some("a".into())),
                (101, Some("b".into())),
                (102, Some("c".into())),
            ]
        );

        // On the log, and on the key through the current-state view.
        for query in [
            "SELECT count(*) FROM public.t__changes WHERE id >= 100",
            "SELECT count(*) FROM public.t WHERE id >= 100",
        ] {
            let plan = ctx
                .sql(&format!("EXPLAIN ANALYZE {query}"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
                .unwrap()
                .to_string();
            let scan = text
                .lines()
                .find(|l| l.contains("DataSourceExec") && l.contains("id@0 >= 100"))
                .unwrap_or_else(|| panic!("{query}: no filtered scan in\n{text}"));
            // The old file is skipped by its Delta statistics; the update,
            // without any, by its footer's: only the new file is read.
            assert!(
                scan.contains("files_ranges_pruned_statistics=3 total → 2 matched"),
                "{query}: {scan}"
            );
            assert!(
                scan.contains("row_groups_pruned_statistics=2 total → 1 matched"),
                "{query}: {scan}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Commits `rows` of `schema` as one source transaction `seq`.
    async fn commit(
        sink: &mut IcebergSink,
        schema: &Arc<tidewater_core::TableSchema>,
        seq: u64,
        rows: Vec<(tidewater_core::Op, Vec<tidewater_core::Datum>)>,
    ) {
        use tidewater_core::{BatchLimits, Batcher, CommitInfo, RowChange, Sink};
        let mut batcher = Batcher::new(BatchLimits {
            max_rows: usize::MAX,
            max_bytes: usize::MAX,
            max_delay: std::time::Duration::from_secs(3600),
        });
        batcher.set_schema(schema.clone()).unwrap();
        batcher.begin(CommitInfo {
            seq,
            position: format!("pos-{seq}"),
            ack: seq,
            commit_ts_us: 1_700_000_000_000_000,
            txid: None,
        });
        for (ord, (op, values)) in rows.into_iter().enumerate() {
            batcher
                .push(RowChange {
                    table: schema.table.clone(),
                    op,
                    ord: ord as u64 + 1,
                    values,
                })
                .unwrap();
        }
        Sink::prepare(sink, schema).await.unwrap();
        for batch in batcher.cut_all().unwrap() {
            Sink::write(sink, batch).await.unwrap();
        }
        Sink::commit(sink, &format!("pos-{seq}"), None)
            .await
            .unwrap();
    }

    /// Every value of a query's result as text, row by row.
    async fn texts(lake: &mut Lake, sql: &str) -> (SchemaRef, Vec<Vec<Option<String>>>) {
        use datafusion::arrow::compute::cast;
        use futures_util::StreamExt;
        let query = query(lake, sql, &Resources::default()).await.unwrap();
        let schema = query.schema.clone();
        let mut stream = query.stream().await.unwrap();
        let mut rows = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.unwrap();
            let columns: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| cast(c, &DataType::Utf8).unwrap())
                .collect();
            for row in 0..batch.num_rows() {
                rows.push(
                    columns
                        .iter()
                        .map(|c| {
                            let c = c.as_string::<i32>();
                            c.is_valid(row).then(|| c.value(row).to_string())
                        })
                        .collect(),
                );
            }
        }
        (schema, rows)
    }

    /// An Iceberg lake read as the Delta lake is: a key and columns
    /// promoted in place (int → long, float → double, a decimal's
    /// precision) read from older files in their narrower types, an added
    /// column NULL in them, a type Iceberg cannot promote in its versioned
    /// column, a dropped column gone from the current state but kept in
    /// the log, filters on promoted columns pruning and matching, deletes
    /// and the last truncate honoured.
    #[tokio::test]
    async fn an_iceberg_lake_reads_as_its_current_schema() {
        use tidewater_core::{Column, ColumnType, Datum, Op, TableSchema};
        use tidewater_lake::{LakeStore, SqlBackend, SqlCatalog};
        let dir = std::env::temp_dir().join(format!("tw-engine-ice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let open = || {
            IcebergSink::new(
                LakeStore::local(&dir.join("lake")),
                "p",
                SqlCatalog::new(SqlBackend::Sqlite(dir.join("catalog.db")), "tidewater"),
            )
        };
        let column = |name: &str, ty: ColumnType, key: bool| Column {
            name: name.into(),
            ty,
            source_type: "t".into(),
            key,
        };
        let decimal = |precision| ColumnType::Decimal {
            precision,
            scale: 2,
        };
        let table = TableId::new("app", "t");
        let v1 = Arc::new(TableSchema {
            table: table.clone(),
            version: 1,
            columns: vec![
                column("id", ColumnType::Int32, true),
                column("n", ColumnType::Int32, false),
                column("f", ColumnType::Float32, false),
                column("d", decimal(10), false),
                column("v", ColumnType::Text, false),
                column("w", ColumnType::Text, false),
            ],
        });
        // id, n, f, d, v, w
        let old = |id: i32, v: &str| {
            (
                Op::Insert,
                vec![
                    Datum::Int32(id),
                    Datum::Int32(id * 10),
                    Datum::Float32(id as f32 + 0.5),
                    Datum::Decimal128(id as i128 * 100 + 25),
                    Datum::Text(v.into()),
                    Datum::Text(format!("w{id}")),
                ],
            )
        };
        let mut sink = open();
        commit(
            &mut sink,
            &v1,
            10,
            vec![old(1, "a"), old(2, "b"), old(3, "c")],
        )
        .await;
        commit(&mut sink, &v1, 11, vec![old(5, "e"), old(6, "f")]).await;
        // id, n, f → long/double; d → decimal(12,2); v text → int (a new
        // version); w dropped; e added.
        let v2 = Arc::new(TableSchema {
            table: table.clone(),
            version: 2,
            columns: vec![
                column("id", ColumnType::Int64, true),
                column("n", ColumnType::Int64, false),
                column("f", ColumnType::Float64, false),
                column("d", decimal(12), false),
                column("v", ColumnType::Int32, false),
                column("e", ColumnType::Text, false),
            ],
        });
        let new = |op, id: i64, n: i64, v: i32, e: &str| {
            (
                op,
                vec![
                    Datum::Int64(id),
                    Datum::Int64(n),
                    Datum::Float64(0.125),
                    Datum::Decimal128(999_999_999_999),
                    Datum::Int32(v),
                    Datum::Text(e.into()),
                ],
            )
        };
        commit(
            &mut sink,
            &v2,
            20,
            vec![
                new(Op::Insert, 5_000_000_000, 6_000_000_000, 7, "big"),
                new(Op::Update, 2, 20, 8, "two"),
                new(Op::Delete, 3, 30, 0, ""),
            ],
        )
        .await;

        // A new reader, as a job run is.
        let mut lake = Lake::from(open());
        let (schema, rows) =
            texts(&mut lake, "SELECT id, n, f, d, v, e FROM app.t ORDER BY id").await;
        let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(
            types,
            [
                &DataType::Int64,
                &DataType::Int64,
                &DataType::Float64,
                &DataType::Decimal128(12, 2),
                &DataType::Int32,
                &DataType::Utf8
            ]
        );
        let cells = |cells: &[Option<&str>]| -> Vec<Option<String>> {
            cells.iter().map(|c| c.map(str::to_string)).collect()
        };
        let row = |c: [Option<&str>; 6]| cells(&c);
        assert_eq!(
            rows,
            vec![
                // Last written before the changes: promoted values cast,
                // the text `v` is not the int `v` (v__v2), `e` is NULL.
                row([Some("1"), Some("10"), Some("1.5"), Some("1.25"), None, None]),
                row([
                    Some("2"),
                    Some("20"),
                    Some("0.125"),
                    Some("9999999999.99"),
                    Some("8"),
                    Some("two")
                ]),
                row([Some("5"), Some("50"), Some("5.5"), Some("5.25"), None, None]),
                row([Some("6"), Some("60"), Some("6.5"), Some("6.25"), None, None]),
                row([
                    Some("5000000000"),
                    Some("6000000000"),
                    Some("0.125"),
                    Some("9999999999.99"),
                    Some("7"),
                    Some("big")
                ]),
            ]
        );
        // The dropped column is gone from the current state, kept in the
        // log with its values (the `v` of old rows too).
        let err = query(&mut lake, "SELECT w FROM app.t", &Resources::default())
            .await
            .err()
            .expect("w is not a current column");
        assert!(
            format!("{err:?}").contains("column 'w' not found"),
            "{err:?}"
        );
        let (_, log) = texts(
            &mut lake,
            "SELECT id, w, v, v__v2, _tw_op FROM app.t__changes WHERE id IN (1, 2) ORDER BY _tw_seq, id",
        )
        .await;
        assert_eq!(
            log,
            vec![
                cells(&[Some("1"), Some("w1"), Some("a"), None, Some("c")]),
                cells(&[Some("2"), Some("w2"), Some("b"), None, Some("c")]),
                cells(&[Some("2"), None, None, Some("8"), Some("u")]),
            ]
        );
        // Filters on promoted columns match across old and new files.
        let (_, counts) = texts(
            &mut lake,
            "SELECT count(*) FROM app.t__changes WHERE n > 15 AND id < 5000000000",
        )
        .await;
        assert_eq!(counts, vec![vec![Some("6".to_string())]]);
        // The manifests' bounds prune files before they are opened: only
        // the last commit's file can hold id ≥ 100.
        let Lake::Iceberg(sink) = &mut lake else {
            unreachable!()
        };
        let files = sink.log_files(&table).await.unwrap().unwrap();
        assert_eq!(files.files.len(), 3);
        assert_eq!(files.key, vec!["id".to_string()]);
        assert_eq!(
            files.columns,
            [
                ("id", "id"),
                ("n", "n"),
                ("f", "f"),
                ("d", "d"),
                ("v", "v__v2"),
                ("e", "e")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .to_vec()
        );
        let ctx = session(&Resources::default()).unwrap();
        register_changes(
            &ctx,
            &table,
            Arc::new(LogScan::new(&ctx, 0, files).unwrap()),
        )
        .unwrap();
        let plan = ctx
            .sql("EXPLAIN ANALYZE SELECT count(*) FROM app.t__changes WHERE id >= 100")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(
            text.contains("files_ranges_pruned_statistics=3 total → 1 matched"),
            "{text}"
        );

        // A truncate: nothing before it is current.
        commit(&mut open(), &v2, 30, vec![(Op::Truncate, Vec::new())]).await;
        let mut lake = Lake::from(open());
        let (_, rows) = texts(&mut lake, "SELECT id FROM app.t").await;
        assert!(rows.is_empty(), "{rows:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
