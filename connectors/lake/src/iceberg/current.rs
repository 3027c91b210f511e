//! Current-state tables on Iceberg: next to each change log, an Iceberg
//! table with one row per key — the latest image, deletes removed — as
//! `<pipeline>_current_<schema>.<table>` in the same catalog, its files at
//! `<uri>/<pipeline>.current/<schema>/<table>` (where the Delta lake keeps
//! its current-state tables).
//!
//! ```text
//!  change log (committed up to mark M) ──┐
//!  current table (merged up to mark M0) ─┤ merge, every current_state_interval_ms,
//!                                        │ on a task of its own:
//!    1. log files whose `_tw_seq`/`_tw_ord` bounds pass M0 (manifests):
//!       their key, op and mark columns; the latest change per key after
//!       M0, and the last truncate
//!    2. current files whose key bounds may hold a changed key (one key
//!       column of an integer, date, timestamp or string type; else every
//!       file) have their key column read; those holding one are rewritten
//!       without it, one at a time (copy-on-write); all go after a truncate
//!    3. the latest images that are not deletes, from the log files
//!       holding them, appended
//!    4. one commit through the catalog's swap: an `overwrite` snapshot
//!       (removed files DELETED, new ones ADDED) — or `append`, or only
//!       properties when nothing changed — with the log's columns as its
//!       schema and the mark merged up to as table properties
//!       (`tidewater.merged_seq`/`merged_ord`/`merged_position`)
//! ```
//!
//! Idempotent: a crash before the swap leaves the table as the last merge
//! left it (its files orphans), and the next merge starts again from M0;
//! the swap records M with the data, so nothing is applied twice. A merge
//! holds the changed keys and one file at a time. Into an empty current
//! table (the first merge, or after a truncate) log files holding only
//! snapshot rows (their `_tw_op` bounds) are copied as they are read, with
//! no per-key state, so a first merge of a big snapshot stays in bounded
//! memory.
//!
//! Why copy-on-write and not merge-on-read (position delete files): every
//! Iceberg reader reads a copy-on-write table — plain data files, no
//! delete files to apply — while position deletes need v2 readers that
//! apply them (pyiceberg and DuckDB do; many older engines and plain
//! Parquet scans do not). The cost is that a merge rewrites every file
//! holding a changed key: changes spread over all keys rewrite the table.

use std::collections::{BTreeMap, HashMap, HashSet};

use deltalake::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use serde_json::{json, Value};
use tidewater_core::state::TableState;
use tidewater_core::{ErrorClass, Mark, TableId};
use tracing::{debug, info, warn};

use super::avro::{self, DataFile, ManifestEntry, ManifestFile};
use super::catalog::Catalog;
use super::files::{FileTarget, FileWriter};
use super::maintenance::{
    align, commit_metadata, read_entries, read_list, rewrite_manifests, target_schema, vacuum_table,
};
use super::metadata::{metadata_file_name, new_table, now_ms, TableMetadata};
use super::schema::{field_id, IcebergField, IcebergType};
use super::{
    current_schema_json, identifier, load_metadata, rand_u64, IcebergSink, PROPERTY_KEY,
    PROPERTY_SOURCE, SUMMARY_PIPELINE,
};
use crate::error::LakeError;
use crate::layout::path_segment;
use crate::sink::current::{key_of, marks_of, FOLD_SMALL_FILES};
use crate::sink::MergeReport;
use crate::stats::writer_properties;
use crate::store::LakeStore;

const MERGED_SEQ: &str = "tidewater.merged_seq";
const MERGED_ORD: &str = "tidewater.merged_ord";
const MERGED_POSITION: &str = "tidewater.merged_position";
/// The change log a current-state table is merged from (`<ns>.<table>`).
const PROPERTY_CURRENT_OF: &str = "tidewater.current_state_of";

/// The namespace and name of `table`'s current-state table: those of a
/// pipeline called `<pipeline>.current` (see [`identifier`]).
pub fn current_identifier(pipeline: &str, table: &TableId) -> (String, String) {
    identifier(&format!("{pipeline}.current"), table)
}

/// `table`'s current-state table's directory below the lake root (where
/// the Delta lake keeps its current-state tables).
fn current_rel(pipeline: &str, table: &TableId) -> String {
    format!(
        "{pipeline}.current/{}/{}",
        path_segment(&table.schema),
        path_segment(&table.table)
    )
}

fn failed(table: &TableId, action: &'static str, what: impl ToString) -> LakeError {
    IcebergSink::failed(table, action, what, ErrorClass::Definite)
}

/// A single key column's value as its bounds compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Point {
    Long(i64),
    Text(Vec<u8>),
}

impl Point {
    fn of(column: &dyn Array, row: usize) -> Option<Point> {
        if column.is_null(row) {
            return None;
        }
        Some(match column.data_type() {
            DataType::Int16 => Point::Long(i64::from(
                column
                    .as_primitive::<deltalake::arrow::datatypes::Int16Type>()
                    .value(row),
            )),
            DataType::Int32 => Point::Long(i64::from(
                column
                    .as_primitive::<deltalake::arrow::datatypes::Int32Type>()
                    .value(row),
            )),
            DataType::Int64 => Point::Long(column.as_primitive::<Int64Type>().value(row)),
            DataType::Date32 => Point::Long(i64::from(
                column
                    .as_primitive::<deltalake::arrow::datatypes::Date32Type>()
                    .value(row),
            )),
            DataType::Timestamp(deltalake::arrow::datatypes::TimeUnit::Microsecond, _) => {
                Point::Long(
                    column
                        .as_primitive::<deltalake::arrow::datatypes::TimestampMicrosecondType>()
                        .value(row),
                )
            }
            DataType::Utf8 => Point::Text(column.as_string::<i32>().value(row).as_bytes().to_vec()),
            _ => return None,
        })
    }

    /// A bound of the same kind, decoded (Iceberg's single-value form).
    fn bound(&self, bytes: &[u8]) -> Option<Point> {
        Some(match self {
            Point::Long(_) => Point::Long(match bytes.len() {
                4 => i64::from(i32::from_le_bytes(bytes.try_into().ok()?)),
                8 => i64::from_le_bytes(bytes.try_into().ok()?),
                _ => return None,
            }),
            Point::Text(_) => Point::Text(bytes.to_vec()),
        })
    }
}

/// A log row that is the latest change of its key: where it is.
struct Latest {
    mark: Mark,
    file: usize,
    row: usize,
    delete: bool,
    point: Option<Point>,
    /// A snapshot row copied in the same merge came later.
    superseded: bool,
}

/// One merge of a table's current state, independent of the sink: it
/// commits itself (the current table has no other writer).
pub(super) struct MergeJob {
    table: TableId,
    store: LakeStore,
    catalog: Catalog,
    pipeline: String,
    /// The change log as of its last commit.
    log: TableMetadata,
    log_ident: (String, String),
    state: TableState,
    keys: Vec<String>,
    target_file_bytes: u64,
    /// `sink.soft_deletes`: a deleted key keeps a row, flagged.
    soft_deletes: bool,
    /// Vacuum the current table after the merge: retention, and when the
    /// sink started (orphan cleanup spares younger files).
    vacuum: Option<(std::time::Duration, std::time::SystemTime)>,
}

impl IcebergSink {
    fn current_rel(&self, table: &TableId) -> String {
        current_rel(&self.pipeline, table)
    }

    /// Where `table`'s current-state table is, for people.
    pub fn current_location(&self, table: &TableId) -> String {
        let (ns, name) = current_identifier(&self.pipeline, table);
        format!(
            "{ns}.{name} at {}",
            self.store.describe(&self.current_rel(table))
        )
    }

    /// What a merge of `table` needs, taken from the sink so that it runs
    /// on a task of its own while the log goes on committing; None when
    /// there is nothing to merge from (nothing committed, something
    /// pending, no key).
    pub(super) fn merge_job(
        &self,
        table: &TableId,
        vacuum: Option<(std::time::Duration, std::time::SystemTime)>,
    ) -> Option<MergeJob> {
        if !self.settled(table) {
            return None;
        }
        let open = self.tables.get(table)?;
        let keys: Vec<String> = open
            .metadata
            .property(PROPERTY_KEY)
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        if keys.is_empty() {
            return None;
        }
        Some(MergeJob {
            table: table.clone(),
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            pipeline: self.pipeline.clone(),
            log: open.metadata.clone(),
            log_ident: (open.namespace.clone(), open.name.clone()),
            state: open.state.clone()?,
            keys,
            target_file_bytes: self.target_file_bytes,
            soft_deletes: self.soft_deletes,
            vacuum,
        })
    }

    /// Brings `table`'s current-state table up to the change log's last
    /// commit, here and now (tests; `maintain` runs merges on tasks).
    pub async fn merge_current(&mut self, table: &TableId) -> Result<MergeReport, LakeError> {
        let vacuum = self
            .maintenance
            .vacuum
            .map(|(retention, _)| (retention, self.clock.started));
        match self.merge_job(table, vacuum) {
            Some(job) => job.run().await,
            None => Ok(MergeReport::default()),
        }
    }

    /// Every row of `table`'s current-state table, handed to `each` batch
    /// by batch as its files are read (columns by name), for `tidewater
    /// verify`; returns the log mark it was merged up to, or None when
    /// there is none. Reads only.
    pub async fn scan_current(
        &self,
        table: &TableId,
        mut each: impl FnMut(RecordBatch),
    ) -> Result<Option<Mark>, LakeError> {
        let (namespace, name) = current_identifier(&self.pipeline, table);
        let Some(metadata) =
            load_metadata(&self.store, &self.catalog, table, &namespace, &name).await?
        else {
            return Ok(None);
        };
        let mark = |key: &str| {
            metadata
                .property(key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let merged = Mark::new(mark(MERGED_SEQ), mark(MERGED_ORD));
        let (_, entries) = live_entries(&self.store, table, &metadata).await?;
        for (_, entry) in entries {
            let bytes = read_bytes(&self.store, table, &entry.file.path).await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| failed(table, "reading the current state of", e))?;
            for batch in reader {
                each(batch.map_err(|source| LakeError::Arrow {
                    table: table.clone(),
                    source,
                })?);
            }
        }
        Ok(Some(merged))
    }

    /// Drops `table`'s current-state table, if there is one.
    pub(super) async fn remove_current(&self, table: &TableId) -> Result<(), LakeError> {
        let (namespace, name) = current_identifier(&self.pipeline, table);
        match &self.catalog {
            Catalog::Sql(c) => c.drop_table(&namespace, &name).await?,
            Catalog::Rest(c) => c.drop_table(&namespace, &name).await?,
        }
        let tombstone = format!(
            "{}.current/{}/.tidewater-removed-{}",
            self.pipeline,
            path_segment(&table.schema),
            path_segment(&table.table)
        );
        self.store
            .remove_tree(&self.current_rel(table), &tombstone)
            .await
    }
}

/// The rows of one data file in `schema` (columns matched by field id),
/// decoding only the columns `schema` names; batch by batch.
fn read_aligned(
    table: &TableId,
    bytes: bytes::Bytes,
    schema: &SchemaRef,
) -> Result<impl Iterator<Item = Result<RecordBatch, LakeError>>, LakeError> {
    let parquet =
        |e: deltalake::parquet::errors::ParquetError| failed(table, "reading a data file of", e);
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet)?;
    let ids: HashSet<i32> = schema.fields().iter().filter_map(field_id).collect();
    let names: HashSet<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| match field_id(f) {
            Some(id) => ids.contains(&id),
            None => names.contains(f.name().as_str()),
        })
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).build().map_err(parquet)?;
    let (table, schema) = (table.clone(), schema.clone());
    Ok(reader.map(move |batch| {
        let batch = batch.map_err(|source| LakeError::Arrow {
            table: table.clone(),
            source,
        })?;
        align(&table, &batch, &schema)
    }))
}

/// The current table's columns for the log's `columns`: each under the
/// current table's field id for its name (element ids of lists too), with
/// the log's type (a promotion); a column the current table lacks gets the
/// next free id.
fn current_fields(base: &TableMetadata, columns: &[IcebergField]) -> Vec<IcebergField> {
    let have = base.fields();
    let mut next = base.last_column_id();
    let mut fresh = || {
        next += 1;
        next
    };
    columns
        .iter()
        .map(|column| {
            let known = have.iter().find(|h| h.name == column.name);
            let ty = match (&column.ty, known.map(|h| &h.ty)) {
                (
                    IcebergType::List {
                        element,
                        element_required,
                        ..
                    },
                    Some(IcebergType::List { element_id, .. }),
                ) => IcebergType::List {
                    element_id: *element_id,
                    element: element.clone(),
                    element_required: *element_required,
                },
                (
                    IcebergType::List {
                        element,
                        element_required,
                        ..
                    },
                    _,
                ) => IcebergType::List {
                    element_id: -1,
                    element: element.clone(),
                    element_required: *element_required,
                },
                (ty, _) => ty.clone(),
            };
            IcebergField {
                id: known.map_or(-1, |h| h.id),
                ty,
                ..column.clone()
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|mut f| {
            if f.id < 0 {
                f.id = fresh();
            }
            if let IcebergType::List { element_id, .. } = &mut f.ty {
                if *element_id < 0 {
                    *element_id = fresh();
                }
            }
            f
        })
        .collect()
}

/// `batch` (read under the log's field ids) under the current table's
/// schema `target`: the same columns in the same order.
fn relabel(
    table: &TableId,
    batch: &RecordBatch,
    target: &SchemaRef,
) -> Result<RecordBatch, LakeError> {
    let arrow = |source| LakeError::Arrow {
        table: table.clone(),
        source,
    };
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                deltalake::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow)?;
    RecordBatch::try_new(target.clone(), columns).map_err(arrow)
}

/// The changed keys, as a merge looks for them in current files: one
/// integer key column by value, any other key by its text (`key_of`).
struct Changed<'a> {
    keys: &'a HashSet<&'a String>,
    longs: Option<HashSet<i64>>,
}

impl<'a> Changed<'a> {
    fn new(keys: &'a HashSet<&'a String>, points: Option<&Vec<Point>>) -> Self {
        let longs = points.filter(|p| p.len() == keys.len()).and_then(|points| {
            points
                .iter()
                .map(|p| match p {
                    Point::Long(v) => Some(*v),
                    Point::Text(_) => None,
                })
                .collect::<Option<HashSet<i64>>>()
        });
        Changed { keys, longs }
    }

    /// Appends to `hits` whether each row of `batch` holds a changed key.
    fn mark(&self, batch: &RecordBatch, keys: &[String], hits: &mut Vec<bool>) {
        if let (Some(longs), [only]) = (&self.longs, keys) {
            if let Some(column) = batch.column_by_name(only) {
                let value = |r: usize| -> Option<i64> {
                    match column.data_type() {
                        DataType::Int32 => Some(i64::from(
                            column
                                .as_primitive::<deltalake::arrow::datatypes::Int32Type>()
                                .value(r),
                        )),
                        DataType::Int64 => Some(column.as_primitive::<Int64Type>().value(r)),
                        _ => None,
                    }
                };
                if matches!(column.data_type(), DataType::Int32 | DataType::Int64) {
                    hits.extend((0..batch.num_rows()).map(|r| {
                        !column.is_null(r) && value(r).is_some_and(|v| longs.contains(&v))
                    }));
                    return;
                }
            }
        }
        hits.extend((0..batch.num_rows()).map(|r| self.keys.contains(&key_of(batch, keys, r))));
    }
}

/// (`_tw_seq`, `_tw_ord`) of every row of a batch.
fn seq_ords(table: &TableId, batch: &RecordBatch) -> Result<Vec<Mark>, LakeError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned())
    };
    let (Some(seqs), Some(ords)) = (column("_tw_seq"), column("_tw_ord")) else {
        return Err(failed(table, "merging", "a file without _tw_seq/_tw_ord"));
    };
    Ok((0..batch.num_rows())
        .map(|i| Mark::new(seqs.value(i) as u64, ords.value(i) as u64))
        .collect())
}

/// The bound of field `id` in `entry` as a long.
fn long_bound(bounds: &BTreeMap<i32, Vec<u8>>, id: Option<i32>) -> Option<i64> {
    let bytes = bounds.get(&id?)?;
    match bytes.len() {
        4 => Some(i64::from(i32::from_le_bytes(bytes[..4].try_into().ok()?))),
        8 => Some(i64::from_le_bytes(bytes[..8].try_into().ok()?)),
        _ => None,
    }
}

/// Whether a log file may hold a row after `merged` (its mark bounds).
fn may_pass(file: &DataFile, seq_id: Option<i32>, ord_id: Option<i32>, merged: Mark) -> bool {
    let Some(seq) = long_bound(&file.upper_bounds, seq_id) else {
        return true;
    };
    let seq = seq as u64;
    if seq != merged.seq {
        return seq > merged.seq;
    }
    long_bound(&file.upper_bounds, ord_id).is_none_or(|ord| ord as u64 > merged.ord)
}

/// Whether a log file holds snapshot rows only (its `_tw_op` bounds).
fn only_snapshot_rows(file: &DataFile, op_id: Option<i32>) -> bool {
    op_id.is_some_and(|id| {
        file.lower_bounds.get(&id).map(Vec::as_slice) == Some(b"r".as_slice())
            && file.upper_bounds.get(&id).map(Vec::as_slice) == Some(b"r".as_slice())
    })
}

/// The live data files of `metadata`'s current snapshot, with their
/// manifests; refuses delete files (tidewater writes none, and a merge
/// that ignored another writer's would bring deleted rows back).
async fn live_entries(
    store: &LakeStore,
    table: &TableId,
    metadata: &TableMetadata,
) -> Result<(Vec<ManifestFile>, Vec<(usize, ManifestEntry)>), LakeError> {
    let Some(list) = metadata
        .current_snapshot()
        .and_then(|s| s.get("manifest-list"))
        .and_then(Value::as_str)
    else {
        return Ok((Vec::new(), Vec::new()));
    };
    let missing = |uri: &str| failed(table, "merging", format!("{uri} does not exist"));
    let manifests = read_list(store, table, list)
        .await?
        .ok_or_else(|| missing(list))?;
    let mut entries = Vec::new();
    for (i, manifest) in manifests.iter().enumerate() {
        if manifest.content != 0 {
            return Err(failed(
                table,
                "merging the current state of",
                format!(
                    "{} holds delete files, which tidewater does not write: another writer \
                     deleted rows; its current state cannot be merged",
                    metadata.location
                ),
            ));
        }
        let read = read_entries(store, table, manifest)
            .await?
            .ok_or_else(|| missing(&manifest.path))?;
        entries.extend(read.into_iter().filter(|e| e.status != 2).map(|e| (i, e)));
    }
    Ok((manifests, entries))
}

/// Reading the key, op and mark columns of change log files.
struct Scan<'a> {
    store: &'a LakeStore,
    table: &'a TableId,
    files: &'a [DataFile],
    narrow: &'a SchemaRef,
    keys: &'a [String],
    merged: Mark,
    /// One key column: its values are kept for pruning by bounds.
    single_key: bool,
}

impl Scan<'_> {
    /// The latest change per key after the merged mark in files `which`
    /// (and the last truncate).
    async fn latest(
        &self,
        which: &[usize],
        latest: &mut HashMap<String, Latest>,
        truncated: &mut Mark,
    ) -> Result<(), LakeError> {
        let table = self.table;
        for &i in which {
            let bytes = read_bytes(self.store, table, &self.files[i].path).await?;
            let mut offset = 0;
            for batch in read_aligned(table, bytes, self.narrow)? {
                let batch = batch?;
                for (row, (at, op)) in marks_of(table, &batch)?.into_iter().enumerate() {
                    if at <= self.merged {
                        continue;
                    }
                    if op == "t" {
                        *truncated = (*truncated).max(at);
                        continue;
                    }
                    let key = key_of(&batch, self.keys, row);
                    if latest.get(&key).is_none_or(|l| l.mark < at) {
                        let point = if self.single_key {
                            batch
                                .column_by_name(&self.keys[0])
                                .and_then(|c| Point::of(c.as_ref(), row))
                        } else {
                            None
                        };
                        latest.insert(
                            key,
                            Latest {
                                mark: at,
                                file: i,
                                row: offset + row,
                                delete: op == "d",
                                point,
                                superseded: false,
                            },
                        );
                    }
                }
                offset += batch.num_rows();
            }
        }
        Ok(())
    }
}

/// The soft-delete columns of a current table, before it gives them ids.
fn soft_delete_columns() -> [IcebergField; 2] {
    let field = |name: &str, ty| IcebergField {
        id: -1,
        name: name.to_string(),
        ty,
        required: false,
        doc: None,
    };
    [
        field(crate::soft_delete::DELETED, IcebergType::Boolean),
        field(crate::soft_delete::DELETED_AT, IcebergType::Timestamptz),
    ]
}

impl MergeJob {
    /// `batch` of log rows (read with `_tw_op` when soft deletes are on)
    /// in the columns of `log_target`, the soft-delete flags computed.
    fn flagged(
        &self,
        table: &TableId,
        batch: RecordBatch,
        log_target: &SchemaRef,
    ) -> Result<RecordBatch, LakeError> {
        if !self.soft_deletes {
            return Ok(batch);
        }
        let arrow = |source| LakeError::Arrow {
            table: table.clone(),
            source,
        };
        let flagged = crate::with_soft_delete_flags(&batch).map_err(arrow)?;
        let columns = log_target
            .fields()
            .iter()
            .map(|f| {
                let column = flagged.column_by_name(f.name()).ok_or_else(|| {
                    deltalake::arrow::error::ArrowError::SchemaError(format!(
                        "no column {} after flagging",
                        f.name()
                    ))
                })?;
                if column.data_type() == f.data_type() {
                    Ok(column.clone())
                } else {
                    deltalake::arrow::compute::cast(column, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, deltalake::arrow::error::ArrowError>>()
            .map_err(arrow)?;
        RecordBatch::try_new(log_target.clone(), columns).map_err(arrow)
    }

    /// The current table's columns: the log's, without `_tw_op`, with the
    /// same field ids (so a file of either reads by the other's schema).
    fn fields(&self) -> Vec<IcebergField> {
        self.log
            .fields()
            .into_iter()
            .filter(|f| f.name != "_tw_op")
            .collect()
    }

    /// Opens the current-state table, creating it with the log's columns.
    async fn open_current(
        &self,
        (namespace, name, rel): (&str, &str, &str),
        fields: &[IcebergField],
    ) -> Result<TableMetadata, LakeError> {
        let table = &self.table;
        let of = format!("{}.{}", self.log_ident.0, self.log_ident.1);
        for _ in 0..2 {
            if let Some(metadata) =
                load_metadata(&self.store, &self.catalog, table, namespace, name).await?
            {
                if metadata.property(PROPERTY_SOURCE) != Some(&table.to_string())
                    || metadata.property(PROPERTY_CURRENT_OF) != Some(of.as_str())
                {
                    return Err(IcebergSink::failed(
                        table,
                        "merging the current state of",
                        format!(
                            "catalog table {namespace}.{name} is not the current state of \
                             {of}: two source tables map to one Iceberg name, or the table is \
                             not tidewater's; rename one, or give this pipeline its own catalog"
                        ),
                        ErrorClass::Config,
                    ));
                }
                return Ok(metadata);
            }
            let properties = BTreeMap::from([
                (PROPERTY_SOURCE.to_string(), table.to_string()),
                (PROPERTY_CURRENT_OF.to_string(), of.clone()),
                (
                    "comment".to_string(),
                    format!(
                        "current state of {table} (one row per key), merged from its change \
                         log {of} by tidewater pipeline {}",
                        self.pipeline
                    ),
                ),
                ("write.format.default".to_string(), "parquet".to_string()),
                (
                    PROPERTY_KEY.to_string(),
                    serde_json::to_string(&self.keys).unwrap_or_default(),
                ),
            ]);
            let json = new_table(&self.store.uri_of(rel), fields, properties, None);
            let created = match &self.catalog {
                Catalog::Sql(catalog) => {
                    let file = format!("{rel}/metadata/{}", metadata_file_name(0));
                    self.store.write(&file, &json.to_string()).await?;
                    catalog.ensure_namespace(namespace).await?;
                    let location = self.store.uri_of(&file);
                    if catalog.create(namespace, name, &location).await? {
                        Some(TableMetadata { json, location })
                    } else {
                        self.store.delete(&file).await?;
                        None
                    }
                }
                Catalog::Rest(catalog) => {
                    catalog.ensure_namespace(namespace).await?;
                    catalog.create(namespace, name, &json).await?
                }
            };
            if let Some(metadata) = created {
                info!(table = %table, iceberg = %format!("{namespace}.{name}"), path = %self.store.describe(rel), "created current-state table");
                return Ok(metadata);
            }
            // Registered meanwhile (a crash right after registering): open it.
        }
        Err(IcebergSink::failed(
            table,
            "creating the current state of",
            format!("the catalog neither created nor lists {namespace}.{name}"),
            ErrorClass::Transient,
        ))
    }

    /// Merges the log rows after the current table's mark into it.
    pub(super) async fn run(self) -> Result<MergeReport, LakeError> {
        let mut written: Vec<String> = Vec::new();
        let (report, after) = match self.merge(&mut written).await {
            Ok(done) => done,
            Err(error) => {
                // Uncommitted: nothing reads them.
                for rel in &written {
                    let _ = self.store.delete(rel).await;
                }
                return Err(error);
            }
        };
        if let Some((retention, started)) = self.vacuum {
            let (namespace, name) = current_identifier(&self.pipeline, &self.table);
            let rel = self.rel();
            match vacuum_table(
                (&self.store, &self.catalog),
                &self.table,
                (&namespace, &name, &rel),
                after,
                retention,
                started,
            )
            .await
            {
                Ok(vacuumed) => {
                    if vacuumed.expired > 0 || !vacuumed.deleted.is_empty() {
                        info!(table = %self.table, expired = vacuumed.expired, deleted = vacuumed.deleted.len(), "vacuumed the Iceberg current-state table");
                    }
                }
                Err(error) => {
                    warn!(table = %self.table, error = %tidewater_core::error_chain(&error), "vacuuming the Iceberg current-state table failed; trying again later")
                }
            }
        }
        Ok(report)
    }

    /// The current table's directory below the lake root.
    fn rel(&self) -> String {
        current_rel(&self.pipeline, &self.table)
    }

    /// The merge; its report and the current table's metadata after it.
    async fn merge(
        &self,
        written: &mut Vec<String>,
    ) -> Result<(MergeReport, TableMetadata), LakeError> {
        let table = &self.table;
        let store = &self.store;
        let (namespace, name) = current_identifier(&self.pipeline, table);
        let rel = self.rel();
        let log_columns = self.fields();
        let base = self
            .open_current((&namespace, &name, &rel), &log_columns)
            .await?;
        // Soft deletes add two columns the log does not have (ids -1: the
        // current table gives them its own).
        let log_columns = if self.soft_deletes {
            let mut columns = log_columns;
            columns.extend(soft_delete_columns());
            columns
        } else {
            log_columns
        };
        // The current table's own field ids: a REST catalog assigns fresh
        // ones when it creates a table, so they may differ from the log's.
        let fields = current_fields(&base, &log_columns);
        let merged = match (base.property(MERGED_SEQ), base.property(MERGED_ORD)) {
            (Some(seq), Some(ord)) => Mark::new(
                seq.parse().unwrap_or_default(),
                ord.parse().unwrap_or_default(),
            ),
            _ => Mark::ZERO,
        };
        let mark = self.state.mark;
        if mark <= merged {
            return Ok((MergeReport::default(), base));
        }
        debug!(table = %table, from = %merged, to = %mark, "merging the Iceberg current-state table");
        let log_fields = self.log.fields();
        let id_of = |name: &str| log_fields.iter().find(|f| f.name == name).map(|f| f.id);
        let (seq_id, ord_id, op_id) = (id_of("_tw_seq"), id_of("_tw_ord"), id_of("_tw_op"));
        let key_fields: Vec<IcebergField> = self
            .keys
            .iter()
            .map(|k| {
                log_fields
                    .iter()
                    .find(|f| &f.name == k)
                    .cloned()
                    .ok_or_else(|| {
                        failed(
                            table,
                            "merging the current state of",
                            format!("key column {k} is not in the change log"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;

        // 1. The latest change per key after the merged mark.
        let (_, mut log_files) = live_entries(store, table, &self.log).await?;
        log_files.retain(|(_, e)| may_pass(&e.file, seq_id, ord_id, merged));
        let log_files: Vec<DataFile> = log_files.into_iter().map(|(_, e)| e.file).collect();
        let mut narrow_fields = key_fields.clone();
        narrow_fields.extend(
            log_fields
                .iter()
                .filter(|f| ["_tw_op", "_tw_seq", "_tw_ord"].contains(&f.name.as_str()))
                .cloned(),
        );
        let narrow = target_schema(&narrow_fields, None);
        let (copied, mixed): (Vec<usize>, Vec<usize>) =
            (0..log_files.len()).partition(|&i| only_snapshot_rows(&log_files[i], op_id));
        let mut latest: HashMap<String, Latest> = HashMap::new();
        let mut truncated = Mark::ZERO;
        let single_key = key_fields.len() == 1;
        let scan = Scan {
            store,
            table,
            files: &log_files,
            narrow: &narrow,
            keys: &self.keys,
            merged,
            single_key,
        };
        scan.latest(&mixed, &mut latest, &mut truncated).await?;
        let (manifests, current_files) = live_entries(store, table, &base).await?;
        // Into an empty current table (the first merge, or all of it gone
        // after a truncate) snapshot rows are copied as they are read.
        let stream_copied = !copied.is_empty() && (current_files.is_empty() || truncated > merged);
        if !stream_copied {
            scan.latest(&copied, &mut latest, &mut truncated).await?;
        }
        latest.retain(|_, l| l.mark > truncated);
        let mut report = MergeReport {
            changed_keys: latest.len(),
            log_files_read: log_files.len(),
            keys_held: latest.len(),
            ..MergeReport::default()
        };

        let target = target_schema(&fields, None);
        // Log rows are read by the log's ids and written under the
        // current table's (the same columns, in the same order); with soft
        // deletes `_tw_op` is read too, to flag the deletes.
        let log_target = target_schema(&log_columns, None);
        let log_read = if self.soft_deletes {
            let mut columns = log_columns.clone();
            columns.extend(log_fields.iter().filter(|f| f.name == "_tw_op").cloned());
            target_schema(&columns, None)
        } else {
            log_target.clone()
        };
        let mut writer: Option<FileWriter> = None;
        let target_bytes = self.target_file_bytes;
        if stream_copied {
            // A later change of a key wins over its snapshot row; a
            // snapshot row wins over an earlier change (not written then).
            let after = merged.max(truncated);
            for &i in &copied {
                let bytes = read_bytes(store, table, &log_files[i].path).await?;
                for batch in read_aligned(table, bytes, &log_read)? {
                    let batch = self.flagged(table, batch?, &log_target)?;
                    let batch = relabel(table, &batch, &target)?;
                    let keep: BooleanArray = seq_ords(table, &batch)?
                        .into_iter()
                        .enumerate()
                        .map(|(row, at)| {
                            if at <= after {
                                return Some(false);
                            }
                            Some(match latest.get_mut(&key_of(&batch, &self.keys, row)) {
                                Some(later) if later.mark > at => false,
                                Some(earlier) => {
                                    earlier.superseded = true;
                                    true
                                }
                                None => true,
                            })
                        })
                        .collect();
                    let rows = self.write_rows(&mut writer, &batch, &keep, &target).await?;
                    report.changed_keys += rows;
                    report.rows_written += rows;
                }
            }
        }

        // 2. Current files holding a changed key, rewritten without them.
        let changed: HashSet<&String> = latest.keys().collect();
        let mut points: Vec<Point> = if single_key {
            latest.values().filter_map(|l| l.point.clone()).collect()
        } else {
            Vec::new()
        };
        let prunable = single_key && points.len() == latest.len();
        points.sort();
        let current_keys: Vec<IcebergField> = fields
            .iter()
            .filter(|f| self.keys.contains(&f.name))
            .cloned()
            .collect();
        let key_id = if single_key {
            current_keys.first().map(|f| f.id)
        } else {
            None
        };
        let may_hold = |file: &DataFile| -> bool {
            if !prunable || points.is_empty() {
                return !changed.is_empty();
            }
            let (Some(lo), Some(hi)) = (
                key_id.and_then(|id| file.lower_bounds.get(&id)),
                key_id.and_then(|id| file.upper_bounds.get(&id)),
            ) else {
                return true;
            };
            let (Some(lo), Some(hi)) = (points[0].bound(lo), points[0].bound(hi)) else {
                return true;
            };
            // The first changed key at or above the low bound.
            let at = points.partition_point(|p| *p < lo);
            points.get(at).is_some_and(|p| *p <= hi)
        };
        let small = |f: &DataFile| (f.size.max(0) as u64) < target_bytes / 2;
        let mut folded: HashSet<String> = HashSet::new();
        if truncated <= merged
            && current_files.iter().filter(|(_, e)| small(&e.file)).count() >= FOLD_SMALL_FILES
        {
            let mut sizes: Vec<(i64, &String)> = current_files
                .iter()
                .filter(|(_, e)| small(&e.file))
                .map(|(_, e)| (e.file.size, &e.file.path))
                .collect();
            sizes.sort();
            let mut total = 0u64;
            for (size, path) in sizes {
                if total + size.max(0) as u64 > target_bytes && folded.len() >= 2 {
                    break;
                }
                total += size.max(0) as u64;
                folded.insert(path.clone());
            }
        }
        let key_schema = target_schema(&current_keys, None);
        let matches = Changed::new(&changed, single_key.then_some(&points));
        let mut removed: HashSet<String> = HashSet::new();
        for (_, entry) in &current_files {
            let file = &entry.file;
            if truncated > merged {
                removed.insert(file.path.clone());
                report.files_rewritten += 1;
                continue;
            }
            let fold = folded.contains(&file.path);
            if !fold && !may_hold(file) {
                continue;
            }
            // Its key column first: which rows hold a changed key (none:
            // the file stays as it is).
            let bytes = read_bytes(store, table, &file.path).await?;
            let mut hits: Vec<bool> = Vec::new();
            for batch in read_aligned(table, bytes.clone(), &key_schema)? {
                let batch = batch?;
                matches.mark(&batch, &self.keys, &mut hits);
            }
            if !fold && !hits.contains(&true) {
                continue;
            }
            // Then the file, streamed through without those rows.
            let mut at = 0;
            for batch in read_aligned(table, bytes, &target)? {
                let batch = batch?;
                let keep: BooleanArray = (0..batch.num_rows())
                    .map(|r| Some(!hits.get(at + r).copied().unwrap_or(false)))
                    .collect();
                at += batch.num_rows();
                report.rows_written += self.write_rows(&mut writer, &batch, &keep, &target).await?;
            }
            removed.insert(file.path.clone());
            report.files_rewritten += 1;
        }

        // 3. The latest images that are not deletes.
        let mut wanted: HashMap<usize, HashSet<usize>> = HashMap::new();
        for l in latest
            .values()
            .filter(|l| (self.soft_deletes || !l.delete) && !l.superseded)
        {
            wanted.entry(l.file).or_default().insert(l.row);
        }
        let mut files: Vec<usize> = wanted.keys().copied().collect();
        files.sort_unstable();
        for i in files {
            let rows = &wanted[&i];
            let bytes = read_bytes(store, table, &log_files[i].path).await?;
            let mut offset = 0;
            for batch in read_aligned(table, bytes, &log_read)? {
                let batch = self.flagged(table, batch?, &log_target)?;
                let batch = relabel(table, &batch, &target)?;
                let keep: BooleanArray = (0..batch.num_rows())
                    .map(|r| Some(rows.contains(&(offset + r))))
                    .collect();
                offset += batch.num_rows();
                report.rows_written += self.write_rows(&mut writer, &batch, &keep, &target).await?;
            }
        }
        let added: Vec<DataFile> = match writer {
            Some(writer) => writer.finish(table).await?,
            None => Vec::new(),
        };
        written.extend(added.iter().filter_map(|f| store.rel_of(&f.path)));

        // 4. One commit, with the mark merged up to.
        let evolve = {
            let shape = |f: &IcebergField| (f.id, f.name.clone(), f.ty.clone());
            let have: Vec<_> = base.fields().iter().map(shape).collect();
            fields.iter().any(|f| !have.contains(&shape(f)))
        };
        let json_base = if evolve {
            base.with_schema(&fields)
        } else {
            base.json.clone()
        };
        let schema_json = current_schema_json(&json_base);
        let schema_id = json_base["current-schema-id"].as_i64().unwrap_or(0);
        let properties = vec![
            (MERGED_SEQ.to_string(), mark.seq.to_string()),
            (MERGED_ORD.to_string(), mark.ord.to_string()),
            (MERGED_POSITION.to_string(), self.state.position.clone()),
        ];
        let mut updates = Vec::new();
        if evolve {
            updates.push(json!({
                "action": "add-schema",
                "schema": schema_json,
                "last-column-id": json_base["last-column-id"],
            }));
            updates.push(json!({"action": "set-current-schema", "schema-id": -1}));
        }
        let snapshot_id = (rand_u64() >> 1).max(1) as i64;
        let json = if removed.is_empty() && added.is_empty() {
            base.with_properties(json_base, &properties)
        } else {
            let rewrite = rewrite_manifests(
                store,
                table,
                &rel,
                (&base, &schema_json, schema_id),
                (&manifests, &current_files),
                &removed,
                &added,
                snapshot_id,
            )
            .await?;
            written.extend(rewrite.written.iter().cloned());
            let sequence = base.last_sequence_number() + 1;
            let parent = base.current_snapshot_id();
            let mut listed = vec![rewrite.replace.clone()];
            listed.extend(rewrite.carried.clone());
            for manifest in &mut listed {
                manifest.sequence_number = sequence;
                if manifest.added_files > 0 || manifest.deleted_files > 0 {
                    manifest.min_sequence_number = sequence;
                }
            }
            listed.extend(
                manifests
                    .iter()
                    .filter(|m| !rewrite.rewritten.contains(&m.path))
                    .cloned(),
            );
            let list = avro::write_manifest_list(&listed, snapshot_id, parent, sequence)
                .map_err(|e| failed(table, "writing the manifest list of", e))?;
            let list_rel = format!(
                "{rel}/metadata/snap-{snapshot_id}-1-{}.avro",
                uuid::Uuid::new_v4()
            );
            store.write_new(&list_rel, list.into()).await?;
            written.push(list_rel.clone());
            let snapshot = self.snapshot_json(
                &base,
                (snapshot_id, sequence, schema_id),
                store.uri_of(&list_rel),
                (&removed, &current_files, &added),
            );
            updates.push(json!({"action": "add-snapshot", "snapshot": snapshot}));
            updates.push(json!({
                "action": "set-snapshot-ref",
                "ref-name": "main",
                "type": "branch",
                "snapshot-id": snapshot_id,
            }));
            base.with_snapshot(json_base, snapshot, &properties)
        };
        updates.push(json!({
            "action": "set-properties",
            "updates": properties.iter().cloned().collect::<BTreeMap<_, _>>(),
        }));
        let ours = (mark.seq.to_string(), mark.ord.to_string());
        // From here a failure may have committed (a lost answer not settled
        // by reading back): the files stay, for orphan cleanup to judge.
        let ours_written = std::mem::take(written);
        let outcome = commit_metadata(
            (store, &self.catalog),
            table,
            (&namespace, &name, &rel),
            &base,
            json,
            updates,
            |now| {
                now.property(MERGED_SEQ) == Some(ours.0.as_str())
                    && now.property(MERGED_ORD) == Some(ours.1.as_str())
            },
        )
        .await?;
        let Some(after) = outcome else {
            // Another commit came first: ours did not happen.
            for rel in &ours_written {
                let _ = store.delete(rel).await;
            }
            return Err(IcebergSink::failed(
                table,
                "committing the current state of",
                "another writer committed to the current-state table first; merging again at \
                 the next interval",
                ErrorClass::Transient,
            ));
        };
        debug!(table = %table, changed = report.changed_keys, log_files = report.log_files_read, files = report.files_rewritten, rows = report.rows_written, "Iceberg current state merged");
        Ok((report, after))
    }

    /// Writes the rows of `batch` that `keep` selects; how many.
    async fn write_rows(
        &self,
        writer: &mut Option<FileWriter>,
        batch: &RecordBatch,
        keep: &BooleanArray,
        target: &SchemaRef,
    ) -> Result<usize, LakeError> {
        let table = &self.table;
        let kept = filter_record_batch(batch, keep).map_err(|source| LakeError::Arrow {
            table: table.clone(),
            source,
        })?;
        let rows = kept.num_rows();
        if rows == 0 {
            return Ok(0);
        }
        let rel = format!("{}/data", self.rel());
        let key_refs: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let writer = writer.get_or_insert_with(|| {
            FileWriter::start(
                FileTarget {
                    store: self.store.clone(),
                    table: table.clone(),
                    data_rel: rel,
                    target_bytes: self.target_file_bytes,
                    partition: Vec::new(),
                },
                target.clone(),
                writer_properties(&kept, &key_refs),
            )
        });
        writer.write(table, kept).await?;
        Ok(rows)
    }

    /// The snapshot of a merge that removed `removed` (entries of
    /// `current`) and added `added`.
    fn snapshot_json(
        &self,
        base: &TableMetadata,
        (snapshot_id, sequence, schema_id): (i64, i64, i64),
        list: String,
        (removed, current, added): (&HashSet<String>, &[(usize, ManifestEntry)], &[DataFile]),
    ) -> Value {
        let gone: Vec<&DataFile> = current
            .iter()
            .map(|(_, e)| &e.file)
            .filter(|f| removed.contains(&f.path))
            .collect();
        let sum = |files: &mut dyn Iterator<Item = &DataFile>| -> (i64, i64, i64) {
            files.fold((0, 0, 0), |(n, rows, bytes), f| {
                (n + 1, rows + f.record_count, bytes + f.size)
            })
        };
        let (removed_n, removed_rows, removed_bytes) = sum(&mut gone.iter().copied());
        let (added_n, added_rows, added_bytes) = sum(&mut added.iter());
        let (total_n, total_rows, total_bytes) = sum(&mut current.iter().map(|(_, e)| &e.file));
        let mut summary = serde_json::Map::new();
        summary.insert(
            "operation".into(),
            if removed_n > 0 { "overwrite" } else { "append" }.into(),
        );
        for (key, value) in [
            ("added-data-files", added_n),
            ("deleted-data-files", removed_n),
            ("added-records", added_rows),
            ("deleted-records", removed_rows),
            ("added-files-size", added_bytes),
            ("removed-files-size", removed_bytes),
            ("total-data-files", total_n - removed_n + added_n),
            ("total-records", total_rows - removed_rows + added_rows),
            (
                "total-files-size",
                total_bytes - removed_bytes + added_bytes,
            ),
            ("total-delete-files", 0),
            ("total-position-deletes", 0),
            ("total-equality-deletes", 0),
        ] {
            summary.insert(key.into(), value.to_string().into());
        }
        summary.insert(SUMMARY_PIPELINE.into(), self.pipeline.clone().into());
        summary.insert(MERGED_SEQ.into(), self.state.mark.seq.to_string().into());
        summary.insert(MERGED_ORD.into(), self.state.mark.ord.to_string().into());
        summary.insert(MERGED_POSITION.into(), self.state.position.clone().into());
        let mut snapshot = json!({
            "snapshot-id": snapshot_id,
            "sequence-number": sequence,
            "timestamp-ms": now_ms(),
            "manifest-list": list,
            "summary": Value::Object(summary),
            "schema-id": schema_id,
        });
        if let Some(parent) = base.current_snapshot_id() {
            snapshot["parent-snapshot-id"] = Value::from(parent);
        }
        snapshot
    }
}

/// The bytes of a file named by URI below the lake root.
async fn read_bytes(
    store: &LakeStore,
    table: &TableId,
    uri: &str,
) -> Result<bytes::Bytes, LakeError> {
    let rel = store.rel_of(uri).ok_or_else(|| {
        IcebergSink::failed(
            table,
            "merging",
            format!("{uri} is outside the lake root"),
            ErrorClass::Config,
        )
    })?;
    store
        .read_bytes(&rel)
        .await?
        .ok_or_else(|| failed(table, "merging", format!("{uri} does not exist")))
}
