//! Reading a change log whole, for a query engine (reverse ETL): every
//! committed row, aligned to the table's current columns, plus what the
//! current-state view needs — the key and the source name of each column.
//!
//! ```text
//!  Delta snapshot (committed files only) ─▶ read each Parquet file
//!     ─▶ align to the table's columns (older files: added columns NULL)
//!     ─▶ LakeLog { batches, key, columns, truncated }
//! ```
//!
//! The partition column (`_tw_commit_date`) is left out: it lives in the
//! Delta log, not in the files, and `_tw_commit_ts` carries it.
//!
//! [`LakeSink::log_files`] is the streaming alternative: what a query
//! engine needs to scan the log itself, file by file and only the parts
//! its filters need (the committed files with their sizes, the store they
//! are in, the table's schema, key and columns) — nothing is read here.

use deltalake::arrow::array::Array;

use super::maintenance::{align_batch, read_file};
use super::*;

/// A table's change log as committed when it was read.
#[derive(Debug, Clone)]
pub struct LakeLog {
    /// The log's columns: source columns as the lake names them, then the
    /// metadata columns.
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// (source column name, lake column) of the latest schema version, in
    /// source order; they differ after a type change the lake could not
    /// widen in place (`amount` held in `amount__v2`).
    pub columns: Vec<(String, String)>,
    /// Lake columns of the primary key; empty for a keyless table.
    pub key: Vec<String>,
    /// The mark of the last truncate: rows at or below it are gone.
    pub truncated: Mark,
}

/// What a query engine needs to scan a table's change log itself.
#[derive(Debug, Clone)]
pub struct LakeFiles {
    /// The store the table lives in: `files` are paths in it (Delta: rooted
    /// at the table; Iceberg: at the lake root, as its manifests name files
    /// by URI below it).
    pub store: Arc<dyn deltalake::ObjectStore>,
    /// The committed data files of the current snapshot (never a
    /// directory listing): the Delta log's, or the Iceberg manifests' live
    /// entries.
    pub files: Vec<LakeFile>,
    /// The log's columns as in [`LakeLog::schema`]; older files lack the
    /// columns added after them (read them as NULL), and in Iceberg hold a
    /// column promoted since (int → long, float → double, a decimal's
    /// precision) in its narrower type (cast it).
    pub schema: SchemaRef,
    /// As in [`LakeLog::columns`].
    pub columns: Vec<(String, String)>,
    /// As in [`LakeLog::key`].
    pub key: Vec<String>,
}

/// A committed data file of a change log.
#[derive(Debug, Clone)]
pub struct LakeFile {
    /// Its path in [`LakeFiles::store`].
    pub path: deltalake::Path,
    /// Bytes.
    pub size: u64,
    /// The Delta log's statistics of the file, as JSON (`numRecords`,
    /// `minValues`, `maxValues`, `nullCount` by column), when written:
    /// exact for integers and dates; timestamps are cut to milliseconds and
    /// decimals written as floats, so those do not bound the values. For
    /// Iceberg, the manifest entry's metrics in that form (integer and
    /// date bounds only).
    pub stats: Option<String>,
}

impl LakeSink {
    /// The committed data files of `table`'s change log and how to read
    /// them; None when the lake has no such table. The last truncate is
    /// not looked up (it would read the files): a reader finds it as the
    /// row with `_tw_op = 't'` of the highest (`_tw_seq`, `_tw_ord`).
    pub async fn log_files(&mut self, table: &TableId) -> Result<Option<LakeFiles>, LakeError> {
        self.table_state(table).await?;
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let (schema, columns, key) = log_shape(open, table)?;
        let store = open.table.log_store().object_store(None);
        let snapshot = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "listing the files of", source))?;
        let mut files = Vec::new();
        for file in snapshot.log_data().iter() {
            let path = file.object_store_path();
            let size = match u64::try_from(file.size()) {
                Ok(size) => size,
                Err(_) => {
                    use deltalake::logstore::object_store::ObjectStoreExt;
                    store
                        .head(&path)
                        .await
                        .map_err(|source| LakeError::Remote {
                            location: format!("{table}: {path}"),
                            source: Box::new(source),
                        })?
                        .size
                }
            };
            files.push(LakeFile {
                path,
                size,
                stats: file.stats(),
            });
        }
        Ok(Some(LakeFiles {
            store,
            files,
            schema,
            columns,
            key,
        }))
    }

    /// Every committed row of `table`'s change log; None when the lake has
    /// no such table.
    pub async fn read_log(&mut self, table: &TableId) -> Result<Option<LakeLog>, LakeError> {
        self.table_state(table).await?;
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let (schema, columns, key) = log_shape(open, table)?;
        let store = open.table.log_store().object_store(None);
        let mut batches = Vec::new();
        let mut truncated = Mark::ZERO;
        for path in data_files(&open.table, table)? {
            let bytes = read_object(store.as_ref(), &path, table).await?;
            for batch in read_file(table, &bytes)? {
                let batch = align_batch(table, &batch, &schema)?;
                truncated = truncated.max(last_truncate(table, &batch)?);
                batches.push(batch);
            }
        }
        Ok(Some(LakeLog {
            schema,
            batches,
            columns,
            key,
            truncated,
        }))
    }
}

/// A log's schema (partition column left out), its (source, lake) columns
/// and its key columns.
#[allow(clippy::type_complexity)]
fn log_shape(
    open: &LakeTable,
    table: &TableId,
) -> Result<(SchemaRef, Vec<(String, String)>, Vec<String>), LakeError> {
    let log_schema = RecordBatchWriter::for_table(&open.table)
        .map_err(|source| LakeError::delta(table, "reading", source))?
        .arrow_schema();
    let schema: SchemaRef = Arc::new(Schema::new(
        log_schema
            .fields()
            .iter()
            .filter(|f| f.name() != COMMIT_DATE)
            .map(|f| f.as_ref().clone())
            .collect::<Vec<_>>(),
    ));
    let (columns, key) = match open.history.latest() {
        Some(version) => (
            version
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.lake_column.clone()))
                .collect(),
            version
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.lake_column.clone())
                .collect(),
        ),
        // A table written before schema histories: its own columns.
        None => (
            schema
                .fields()
                .iter()
                .filter(|f| !f.name().starts_with("_tw_"))
                .map(|f| (f.name().clone(), f.name().clone()))
                .collect(),
            Vec::new(),
        ),
    };
    Ok((schema, columns, key))
}

/// The highest mark of a truncate (`_tw_op = 't'`) in `batch`.
fn last_truncate(table: &TableId, batch: &RecordBatch) -> Result<Mark, LakeError> {
    let column = |name: &str| batch.column_by_name(name);
    let (Some(ops), Some(seqs), Some(ords)) = (
        column("_tw_op").and_then(|c| c.as_string_opt::<i32>()),
        column("_tw_seq").and_then(|c| c.as_primitive_opt::<Int64Type>()),
        column("_tw_ord").and_then(|c| c.as_primitive_opt::<Int64Type>()),
    ) else {
        return Err(LakeError::Arrow {
            table: table.clone(),
            source: ArrowError::SchemaError(
                "the change log has no _tw_op/_tw_seq/_tw_ord of the expected types".into(),
            ),
        });
    };
    let mut last = Mark::ZERO;
    for row in 0..batch.num_rows() {
        if ops.is_valid(row) && ops.value(row) == "t" {
            last = last.max(Mark::new(seqs.value(row) as u64, ords.value(row) as u64));
        }
    }
    Ok(last)
}
