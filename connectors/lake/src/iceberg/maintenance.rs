//! Keeping Iceberg change logs healthy while they grow — compaction,
//! snapshot expiry and orphan-file cleanup — on the Delta sink's schedule
//! and keys ([`MaintenancePolicy`]), off the commit path.
//!
//! ```text
//!  pipeline task, between its own commits        tasks of their own
//!  ──────────────────────────────────────        ──────────────────
//!  maintain():
//!   1. reap a finished compaction ◀────────────── CompactionJob::run: read the
//!      does its plan still hold on the table       manifests, pick ≥ min_files
//!      as it is now? (every manifest it            small files, one group of one
//!      rewrites still listed, no newer             partition (about the target
//!      manifest names a file it replaces)          size), read each file, align it
//!        yes: one `replace` snapshot:              to the current schema, write the
//!             old files DELETED, new ADDED,        new file(s) with the same field
//!             the other entries of the             ids, and the snapshot's two
//!             rewritten manifests EXISTING in      manifests; no commit
//!             one manifest; the mark keys and
//!             properties as they are
//!        no:  dropped, its files deleted
//!   2. plan the next one (tables in turn) ───────▶ spawn (one at a time)
//!   3. vacuum: expire the snapshots replaced
//!      longer ago than the retention (one
//!      `remove-snapshots` commit per table) ─────▶ VacuumJob::run: delete what only
//!                                                   the expired snapshots reached;
//!                                                   list data/ and metadata/ and
//!                                                   delete what no metadata reaches
//! ```
//!
//! The commits on the pipeline's task are small (a manifest list and a
//! metadata file); reading and writing data files, reading manifests and
//! listing the table happen on tasks. A compaction's `replace` snapshot
//! changes no row and no mark: its summary carries the table's tidewater
//! keys as the properties have them, and the properties — the commit count
//! among them, so the pipeline's next commit, finding the table moved,
//! rebuilds on it as on any other writer's — stay as they are. A table with
//! delete files is not compacted (their sequence numbers would no longer
//! apply to rewritten rows).
//!
//! Expiry removes a snapshot once it stopped being current longer ago than
//! `vacuum_retention_hours` (a reader that started on it has had that
//! long), never the current one nor one a ref names. Then the files only
//! the expired snapshots reached are deleted (manifest lists, manifests no
//! kept snapshot lists, data files no kept snapshot has live), and metadata
//! files older than the oldest one `metadata-log` keeps. Orphans — files
//! under `data/` and `metadata/` no kept metadata reaches, a crash's or a
//! lost commit's — are deleted once they are older than the retention and
//! than this process (a file of a commit in flight is never one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use deltalake::arrow::array::{new_null_array, ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use serde_json::{json, Value};
use tidewater_core::{ErrorClass, TableId};
use tracing::{debug, info, warn};

use super::avro::{self, DataFile, ManifestEntry, ManifestFile};
use super::catalog::{Catalog, Swap};
use super::files::{FileTarget, FileWriter};
use super::metadata::{metadata_file_name, now_ms, TableMetadata};
use super::rest::Committed;
use super::schema::{field_id, IcebergField};
use super::{
    current_schema_json, partition_summaries, rand_u64, IcebergSink, PROPERTY_KEY, REBASES,
    SUMMARY_ORD, SUMMARY_PIPELINE, SUMMARY_POSITION, SUMMARY_SEQ, SUMMARY_SNAPSHOT,
};
use crate::error::LakeError;
use crate::stats::writer_properties;
use crate::store::LakeStore;
use crate::{Compaction, CompactionReport, MaintenancePolicy};

/// Beyond this many manifests in a snapshot, a compaction folds every
/// data manifest of the default spec into one (otherwise the list grows by
/// a manifest per commit for ever).
pub const MERGE_MANIFESTS: usize = 100;

/// How much older than a cut-off a file must be: S3 reports modification
/// times to the second, and the storage's clock is not ours.
const STORAGE_CLOCK_MARGIN: Duration = Duration::from_secs(2);

/// When maintenance last ran, and what runs now.
#[derive(Debug)]
pub(super) struct Clock {
    compacted: Instant,
    vacuumed: Instant,
    compaction: Option<CompactionTask>,
    /// The table the last compaction was for: the next plan starts after it.
    compacted_last: Option<TableId>,
    vacuum: Option<VacuumTask>,
    /// When current-state tables were last merged, and vacuumed (by
    /// their merges).
    merged: Instant,
    current_vacuumed: Instant,
    /// Current-state merges running, by table (one each at a time).
    merges: crate::merges::Merges,
    /// When this sink was opened: orphan cleanup never deletes a younger
    /// file (it may belong to a commit of this process in flight).
    pub(super) started: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            compacted: now,
            vacuumed: now,
            compaction: None,
            compacted_last: None,
            vacuum: None,
            // Due at once: a start (after `tidewater snapshot`, which does
            // not merge) brings the current state up at its first chance.
            merged: now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now),
            current_vacuumed: now,
            merges: Default::default(),
            started: SystemTime::now(),
        }
    }
}

impl Clock {
    /// Stops the background work on `table` (it is going away).
    pub(super) fn forget(&mut self, table: &TableId) {
        self.merges.forget(table);
        if self
            .compaction
            .as_ref()
            .is_some_and(|t| t.tables.contains(table))
        {
            self.compaction = None;
        }
        if self
            .vacuum
            .as_ref()
            .is_some_and(|t| t.tables.contains(table))
        {
            self.vacuum = None;
        }
    }
}

/// A compaction planned and written on a task of its own. Dropped, it is
/// cancelled: its files were never committed.
#[derive(Debug)]
struct CompactionTask {
    tables: Vec<TableId>,
    handle: tokio::task::JoinHandle<Result<Option<CompactionOutput>, LakeError>>,
}

impl Drop for CompactionTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A vacuum of the open tables on a task of its own.
#[derive(Debug)]
struct VacuumTask {
    tables: Vec<TableId>,
    handle: tokio::task::JoinHandle<Vec<(TableId, Result<VacuumReport, LakeError>)>>,
}

impl Drop for VacuumTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// What one table's vacuum did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VacuumReport {
    /// Snapshots expired.
    pub expired: usize,
    /// Files deleted, below the lake root.
    pub deleted: Vec<String>,
}

/// One table's compaction candidates: the tables in the order to try, as
/// their metadata is at the plan.
pub(super) struct CompactionJob {
    store: LakeStore,
    tables: Vec<(TableId, String, TableMetadata)>,
    policy: Compaction,
}

/// A compaction's written files and manifests, waiting for their commit.
pub(super) struct CompactionOutput {
    table: TableId,
    spec_id: i32,
    snapshot_id: i64,
    /// Every manifest of the planned snapshot.
    plan_manifests: HashSet<String>,
    /// The manifests the new ones replace.
    rewritten: HashSet<String>,
    /// The data files replaced.
    group: HashSet<String>,
    /// DELETED + ADDED entries.
    replace: ManifestFile,
    /// The other entries of the rewritten manifests, EXISTING.
    carried: Option<ManifestFile>,
    /// What this compaction wrote (below the lake root): deleted if dropped.
    pub(super) written: Vec<String>,
    removed: (usize, i64, i64),
    added: (usize, i64, i64),
}

impl std::fmt::Debug for CompactionOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactionOutput")
            .field("table", &self.table)
            .field("files_removed", &self.removed.0)
            .field("files_added", &self.added.0)
            .finish_non_exhaustive()
    }
}

fn failed(table: &TableId, action: &'static str, what: impl ToString) -> LakeError {
    IcebergSink::failed(table, action, what, ErrorClass::Definite)
}

async fn read_uri(
    store: &LakeStore,
    table: &TableId,
    uri: &str,
) -> Result<Option<bytes::Bytes>, LakeError> {
    let Some(rel) = store.rel_of(uri) else {
        return Err(IcebergSink::failed(
            table,
            "maintaining",
            format!("{uri} is outside the lake root"),
            ErrorClass::Config,
        ));
    };
    store.read_bytes(&rel).await
}

pub(super) async fn read_list(
    store: &LakeStore,
    table: &TableId,
    uri: &str,
) -> Result<Option<Vec<ManifestFile>>, LakeError> {
    match read_uri(store, table, uri).await? {
        Some(bytes) => avro::read_manifest_list(&bytes)
            .map(Some)
            .map_err(|e| failed(table, "reading the manifest list of", format!("{uri}: {e}"))),
        None => Ok(None),
    }
}

pub(super) async fn read_entries(
    store: &LakeStore,
    table: &TableId,
    manifest: &ManifestFile,
) -> Result<Option<Vec<ManifestEntry>>, LakeError> {
    match read_uri(store, table, &manifest.path).await? {
        Some(bytes) => {
            avro::read_manifest(&bytes, manifest.sequence_number, manifest.added_snapshot_id)
                .map(Some)
                .map_err(|e| {
                    failed(
                        table,
                        "reading a manifest of",
                        format!("{}: {e}", manifest.path),
                    )
                })
        }
        None => Ok(None),
    }
}

fn missing(table: &TableId, uri: &str) -> LakeError {
    IcebergSink::failed(
        table,
        "maintaining",
        format!("{uri} does not exist"),
        ErrorClass::Definite,
    )
}

/// The `(long)` value of a file's bound of field `id`.
fn lower_long(entry: &ManifestEntry, id: Option<i32>) -> i64 {
    id.and_then(|id| entry.file.lower_bounds.get(&id))
        .and_then(|b| match b.len() {
            8 => Some(i64::from_le_bytes(b[..8].try_into().ok()?)),
            4 => Some(i64::from(i32::from_le_bytes(b[..4].try_into().ok()?))),
            _ => None,
        })
        .unwrap_or(i64::MIN)
}

/// The Arrow schema compacted files are written with: the table's current
/// columns, each with its field id, and the field metadata (source type,
/// encoding) the newest file of the group has for that id.
pub(super) fn target_schema(fields: &[IcebergField], sample: Option<&Schema>) -> SchemaRef {
    let mut known: HashMap<i32, HashMap<String, String>> = HashMap::new();
    if let Some(sample) = sample {
        for field in sample.fields() {
            if let Some(id) = field_id(field) {
                known.insert(id, field.metadata().clone());
            }
        }
    }
    let out: Vec<Field> = fields
        .iter()
        .map(|f| {
            let mut metadata = known.remove(&f.id).unwrap_or_default();
            metadata.insert(PARQUET_FIELD_ID_META_KEY.to_string(), f.id.to_string());
            Field::new(&f.name, f.ty.arrow(), !f.required).with_metadata(metadata)
        })
        .collect();
    std::sync::Arc::new(Schema::new(out))
}

/// `batch` (of a data file, maybe written against an older schema) in
/// `schema`: columns matched by field id (by name in a file without ids),
/// a column the file lacks all NULL, a promoted type (int → long, float →
/// double, a wider decimal) cast.
pub(super) fn align(
    table: &TableId,
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, LakeError> {
    let arrow = |source| LakeError::Arrow {
        table: table.clone(),
        source,
    };
    let file_schema = batch.schema();
    let by_id: HashMap<i32, usize> = file_schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| field_id(f).map(|id| (id, i)))
        .collect();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let index = match field_id(field) {
                Some(id) if !by_id.is_empty() => by_id.get(&id).copied(),
                _ => file_schema.index_of(field.name()).ok(),
            };
            match index {
                Some(i) => {
                    let column = batch.column(i);
                    if column.data_type() == field.data_type() {
                        Ok(column.clone())
                    } else {
                        cast(column, field.data_type())
                    }
                }
                None => Ok(new_null_array(field.data_type(), batch.num_rows())),
            }
        })
        .collect::<Result<_, _>>()
        .map_err(arrow)?;
    RecordBatch::try_new(schema.clone(), columns).map_err(arrow)
}

impl CompactionJob {
    /// Plans on the first table with work and rewrites one group of its
    /// small files; None when no table has enough small files.
    pub(super) async fn run(self) -> Result<Option<CompactionOutput>, LakeError> {
        for (table, rel, metadata) in &self.tables {
            if let Some(output) = self.compact(table, rel, metadata).await? {
                return Ok(Some(output));
            }
        }
        Ok(None)
    }

    async fn compact(
        &self,
        table: &TableId,
        rel: &str,
        base: &TableMetadata,
    ) -> Result<Option<CompactionOutput>, LakeError> {
        let store = &self.store;
        let Some(snapshot) = base.current_snapshot() else {
            return Ok(None);
        };
        let Some(list) = snapshot.get("manifest-list").and_then(Value::as_str) else {
            return Ok(None);
        };
        let manifests = read_list(store, table, list)
            .await?
            .ok_or_else(|| missing(table, list))?;
        if manifests.iter().any(|m| m.content != 0) {
            debug!(table = %table, "the table has delete files; not compacting it");
            return Ok(None);
        }
        let fields = base.fields();
        let columns = base
            .current_schema()
            .and_then(|s| s.get("fields"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if columns != fields.len() {
            // A column of a type tidewater never writes (another writer's):
            // a rewrite would lose its values.
            debug!(table = %table, "the table has columns of types tidewater does not write; not compacting it");
            return Ok(None);
        }
        let (spec_id, _, _) = base.default_spec();
        let mut entries: Vec<(usize, ManifestEntry)> = Vec::new();
        for (i, manifest) in manifests.iter().enumerate() {
            let read = read_entries(store, table, manifest)
                .await?
                .ok_or_else(|| missing(table, &manifest.path))?;
            entries.extend(read.into_iter().map(|e| (i, e)));
        }
        let target = self.policy.target_file_bytes;
        let id_of = |name: &str| fields.iter().find(|f| f.name == name).map(|f| f.id);
        let (seq_id, ord_id) = (id_of("_tw_seq"), id_of("_tw_ord"));
        let mut small: Vec<&(usize, ManifestEntry)> = entries
            .iter()
            .filter(|(i, e)| {
                e.status != 2
                    && e.content == 0
                    && manifests[*i].spec_id == spec_id
                    && (e.file.size.max(0) as u64) < target
            })
            .collect();
        if small.len() < self.policy.min_files.max(2) {
            return Ok(None);
        }
        // Rows keep their order: files in commit order, and by their first
        // mark within a commit.
        small.sort_by_key(|(_, e)| {
            (
                e.file.partition.clone(),
                e.sequence_number.unwrap_or(0),
                lower_long(e, seq_id),
                lower_long(e, ord_id),
            )
        });
        let mut groups: Vec<Vec<&ManifestEntry>> = Vec::new();
        let mut group_bytes = 0u64;
        for (_, entry) in small {
            let fresh = match groups.last() {
                Some(group) => {
                    group[0].file.partition != entry.file.partition || group_bytes >= target
                }
                None => true,
            };
            if fresh {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += entry.file.size.max(0) as u64;
            groups.last_mut().expect("one group at least").push(entry);
        }
        let Some(group) = groups.into_iter().find(|g| g.len() > 1) else {
            return Ok(None);
        };
        let group_paths: HashSet<String> = group.iter().map(|e| e.file.path.clone()).collect();
        debug!(table = %table, files = group.len(), "Iceberg compaction started");

        // Read, align, write: one file in memory at a time.
        let keys: Vec<String> = base
            .property(PROPERTY_KEY)
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let last = group.last().expect("two files at least");
        let last_bytes = read_uri(store, table, &last.file.path)
            .await?
            .ok_or_else(|| missing(table, &last.file.path))?;
        let parquet = |e: deltalake::parquet::errors::ParquetError| {
            failed(table, "reading a data file of", e)
        };
        let sample = ParquetRecordBatchReaderBuilder::try_new(last_bytes.clone())
            .map_err(parquet)?
            .schema()
            .clone();
        let schema = target_schema(&fields, Some(sample.as_ref()));
        let partition = group[0].file.partition.clone();
        let mut writer: Option<FileWriter> = None;
        let mut last_bytes = Some(last_bytes);
        for (n, entry) in group.iter().enumerate() {
            let bytes = if n + 1 == group.len() {
                last_bytes.take().expect("kept for the last file")
            } else {
                read_uri(store, table, &entry.file.path)
                    .await?
                    .ok_or_else(|| missing(table, &entry.file.path))?
            };
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(parquet)?
                .build()
                .map_err(parquet)?;
            for batch in reader {
                let batch = batch.map_err(|source| LakeError::Arrow {
                    table: table.clone(),
                    source,
                })?;
                let aligned = align(table, &batch, &schema)?;
                if writer.is_none() {
                    writer = Some(FileWriter::start(
                        FileTarget {
                            store: store.clone(),
                            table: table.clone(),
                            data_rel: format!("{rel}/data"),
                            target_bytes: target,
                            partition: partition.clone(),
                        },
                        schema.clone(),
                        writer_properties(&aligned, &key_refs),
                    ));
                }
                writer
                    .as_mut()
                    .expect("started above")
                    .write(table, aligned)
                    .await?;
            }
        }
        let new_files: Vec<DataFile> = match writer {
            Some(writer) => writer.finish(table).await?,
            None => Vec::new(),
        };
        let mut written: Vec<String> = new_files
            .iter()
            .filter_map(|f| store.rel_of(&f.path))
            .collect();
        let removed_rows: i64 = group.iter().map(|e| e.file.record_count).sum();
        let added_rows: i64 = new_files.iter().map(|f| f.record_count).sum();
        if removed_rows != added_rows {
            for rel in &written {
                let _ = store.delete(rel).await;
            }
            return Err(failed(
                table,
                "compacting",
                format!(
                    "the rewritten files hold {added_rows} rows, the {} files they replace {removed_rows}",
                    group.len()
                ),
            ));
        }

        // The snapshot's manifests: the group DELETED and the new files
        // ADDED in one, the other live entries of the rewritten manifests
        // EXISTING in another.
        let snapshot_id = (rand_u64() >> 1).max(1) as i64;
        let rewrite = rewrite_manifests(
            store,
            table,
            rel,
            (
                base,
                &current_schema_json(&base.json),
                base.current_schema_id(),
            ),
            (&manifests, &entries),
            &group_paths,
            &new_files,
            snapshot_id,
        )
        .await;
        let rewrite = match rewrite {
            Ok(rewrite) => rewrite,
            Err(error) => {
                for rel in &written {
                    let _ = store.delete(rel).await;
                }
                return Err(error);
            }
        };
        written.extend(rewrite.written);
        Ok(Some(CompactionOutput {
            table: table.clone(),
            spec_id,
            snapshot_id,
            plan_manifests: manifests.iter().map(|m| m.path.clone()).collect(),
            rewritten: rewrite.rewritten,
            group: group_paths,
            replace: rewrite.replace,
            carried: rewrite.carried,
            written,
            removed: (
                group.len(),
                removed_rows,
                group.iter().map(|e| e.file.size).sum(),
            ),
            added: (
                new_files.len(),
                added_rows,
                new_files.iter().map(|f| f.size).sum(),
            ),
        }))
    }
}

/// The snapshots of `metadata` to expire at `now_ms` with `retention`:
/// every one replaced as current (by a child) longer ago than the
/// retention, except the current one and those a ref names.
pub(super) fn expired_snapshots(
    metadata: &TableMetadata,
    retention: Duration,
    now: i64,
) -> Vec<i64> {
    let cutoff = now.saturating_sub(retention.as_millis() as i64);
    let current = metadata.current_snapshot_id();
    let mut pinned: HashSet<i64> = current.into_iter().collect();
    if let Some(refs) = metadata.json.get("refs").and_then(Value::as_object) {
        pinned.extend(
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(Value::as_i64)),
        );
    }
    let snapshots: Vec<(i64, i64, Option<i64>)> = metadata
        .snapshots()
        .iter()
        .filter_map(|s| {
            Some((
                s.get("snapshot-id")?.as_i64()?,
                s.get("timestamp-ms").and_then(Value::as_i64).unwrap_or(0),
                s.get("parent-snapshot-id").and_then(Value::as_i64),
            ))
        })
        .collect();
    let mut replaced_at: HashMap<i64, i64> = HashMap::new();
    for (_, at, parent) in &snapshots {
        if let Some(parent) = parent {
            let slot = replaced_at.entry(*parent).or_insert(*at);
            *slot = (*slot).min(*at);
        }
    }
    snapshots
        .iter()
        .filter(|(id, at, _)| {
            !pinned.contains(id) && replaced_at.get(id).copied().unwrap_or(*at) < cutoff
        })
        .map(|(id, _, _)| *id)
        .collect()
}

/// The number a metadata file's name starts with (`00042-….metadata.json`).
fn metadata_version(rel: &str) -> Option<u64> {
    let name = rel.rsplit('/').next()?;
    if !name.ends_with(".metadata.json") {
        return None;
    }
    name.split('-').next()?.parse().ok()
}

/// One table's file cleanup, after its snapshots were expired.
pub(super) struct VacuumJob {
    table: TableId,
    store: LakeStore,
    rel: String,
    /// The table's metadata after the expiry.
    metadata: TableMetadata,
    /// The manifest lists of the snapshots just expired.
    expired_lists: Vec<String>,
    expired: usize,
    retention: Duration,
    started: SystemTime,
    planned: SystemTime,
}

impl VacuumJob {
    pub(super) async fn run(self) -> Result<VacuumReport, LakeError> {
        let table = &self.table;
        let store = &self.store;
        // Everything the kept metadata reaches.
        let mut reachable: HashSet<String> = HashSet::new();
        reachable.insert(self.metadata.location.clone());
        reachable.extend(self.metadata.logged_metadata());
        // Statistics files (Puffin) another engine registered.
        for key in ["statistics", "partition-statistics"] {
            if let Some(files) = self.metadata.json.get(key).and_then(Value::as_array) {
                reachable.extend(
                    files
                        .iter()
                        .filter_map(|f| f.get("statistics-path").and_then(Value::as_str))
                        .map(str::to_string),
                );
            }
        }
        let mut manifests: BTreeMap<String, ManifestFile> = BTreeMap::new();
        for snapshot in self.metadata.snapshots() {
            let Some(list) = snapshot.get("manifest-list").and_then(Value::as_str) else {
                continue;
            };
            reachable.insert(list.to_string());
            // A kept snapshot whose list is gone: nothing can be proven
            // unreachable, delete nothing.
            let listed = read_list(store, table, list)
                .await?
                .ok_or_else(|| missing(table, list))?;
            for manifest in listed {
                manifests.entry(manifest.path.clone()).or_insert(manifest);
            }
        }
        for manifest in manifests.values() {
            reachable.insert(manifest.path.clone());
            let entries = read_entries(store, table, manifest)
                .await?
                .ok_or_else(|| missing(table, &manifest.path))?;
            reachable.extend(
                entries
                    .into_iter()
                    .filter(|e| e.status != 2)
                    .map(|e| e.file.path),
            );
        }
        let mut report = VacuumReport {
            expired: self.expired,
            deleted: Vec::new(),
        };
        let mut doomed: Vec<String> = Vec::new();
        // What only the expired snapshots reached.
        for list in &self.expired_lists {
            if reachable.contains(list) {
                continue;
            }
            doomed.push(list.clone());
            let Some(listed) = read_list(store, table, list).await? else {
                continue;
            };
            for manifest in listed {
                if reachable.contains(&manifest.path) || doomed.contains(&manifest.path) {
                    continue;
                }
                doomed.push(manifest.path.clone());
                if let Some(entries) = read_entries(store, table, &manifest).await? {
                    for entry in entries {
                        if !reachable.contains(&entry.file.path) {
                            doomed.push(entry.file.path);
                        }
                    }
                }
            }
        }
        let mut seen: HashSet<String> = HashSet::new();
        for uri in doomed {
            if !seen.insert(uri.clone()) {
                continue;
            }
            if let Some(rel) = store.rel_of(&uri) {
                if rel.starts_with(&format!("{}/", self.rel)) {
                    store.delete(&rel).await?;
                    report.deleted.push(rel);
                }
            }
        }
        // Metadata files older than the oldest one the log keeps, and
        // orphans: what no kept metadata reaches, older than the retention
        // and than this process.
        let current_version = self.metadata.version();
        let planned = self.planned - STORAGE_CLOCK_MARGIN;
        let orphan_cutoff = self
            .planned
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .min(self.started)
            .checked_sub(STORAGE_CLOCK_MARGIN)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for dir in ["metadata", "data"] {
            for (rel, modified) in store.list_files(&format!("{}/{dir}", self.rel)).await? {
                let name = rel.rsplit('/').next().unwrap_or_default();
                if name.starts_with('.') || seen.contains(&store.uri_of(&rel)) {
                    continue;
                }
                if reachable.contains(&store.uri_of(&rel)) {
                    continue;
                }
                let old_metadata = metadata_version(&rel)
                    .is_some_and(|v| v < current_version && modified < planned);
                if old_metadata || modified < orphan_cutoff {
                    store.delete(&rel).await?;
                    report.deleted.push(rel);
                }
            }
        }
        if report.expired > 0 || !report.deleted.is_empty() {
            info!(table = %table, expired_snapshots = report.expired, deleted_files = report.deleted.len(), "vacuumed the Iceberg table");
        }
        Ok(report)
    }
}

/// What reaping the compaction task found.
enum Reaped {
    Nothing,
    /// Committed (or dropped): plan again at once.
    Done,
    /// No table had work, or it failed: wait for the next interval.
    Idle,
}

impl IcebergSink {
    pub fn set_maintenance(&mut self, policy: MaintenancePolicy) {
        self.maintenance = policy;
    }

    /// Whether `table` has nothing uncommitted (maintenance commits only
    /// between the pipeline's commits).
    pub(super) fn settled(&self, table: &TableId) -> bool {
        self.tables.get(table).is_some_and(|open| {
            open.state.is_some()
                && open.pending.is_none()
                && open.files.is_empty()
                && open.writer.is_none()
                && open.evolved.is_none()
        })
    }

    /// The tables to look at for a compaction, the one after the last
    /// compacted first.
    pub(super) fn compaction_job(
        &self,
        tables: Vec<TableId>,
        policy: &Compaction,
    ) -> Option<CompactionJob> {
        let tables: Vec<(TableId, String, TableMetadata)> = tables
            .into_iter()
            .filter(|t| self.settled(t))
            .filter_map(|t| {
                let open = self.tables.get(&t)?;
                Some((t, open.rel.clone(), open.metadata.clone()))
            })
            .collect();
        (!tables.is_empty()).then(|| CompactionJob {
            store: self.store.clone(),
            tables,
            policy: *policy,
        })
    }

    /// Rewrites one group of `table`'s small files, planned, written and
    /// committed in one call (tests; [`IcebergSink::maintain`] writes on a
    /// task of its own). None when there is nothing to compact or the plan
    /// no longer held.
    pub async fn compact(
        &mut self,
        table: &TableId,
        policy: &Compaction,
    ) -> Result<Option<CompactionReport>, LakeError> {
        let Some(job) = self.compaction_job(vec![table.clone()], policy) else {
            return Ok(None);
        };
        match job.run().await? {
            Some(output) => self.commit_compaction(output).await,
            None => Ok(None),
        }
    }

    /// Commits a finished compaction as one `replace` snapshot on the table
    /// as it is now, if its plan still holds there; otherwise drops it
    /// (deleting its files) and returns None.
    pub(super) async fn commit_compaction(
        &mut self,
        output: CompactionOutput,
    ) -> Result<Option<CompactionReport>, LakeError> {
        let table = output.table.clone();
        let Some(open) = self.tables.get(&table) else {
            self.drop_compaction(&output, "the table is no longer open")
                .await;
            return Ok(None);
        };
        let (namespace, name, rel) = (open.namespace.clone(), open.name.clone(), open.rel.clone());
        let mut base = open.metadata.clone();
        let snapshot_id = output.snapshot_id;
        for attempt in 0..=REBASES {
            let Some(current) = base.current_snapshot().cloned() else {
                self.drop_compaction(&output, "the table has no snapshot")
                    .await;
                return Ok(None);
            };
            let listed = self.manifests_of(&table, &current).await?;
            if let Some(why) = self.plan_breaks(&table, &output, &base, &listed).await? {
                self.drop_compaction(&output, why).await;
                return Ok(None);
            }
            let sequence = base.last_sequence_number() + 1;
            let parent = base.current_snapshot_id();
            let mut manifests = Vec::new();
            let mut replace = output.replace.clone();
            replace.sequence_number = sequence;
            replace.min_sequence_number = sequence;
            manifests.push(replace);
            if let Some(mut carried) = output.carried.clone() {
                carried.sequence_number = sequence;
                manifests.push(carried);
            }
            manifests.extend(
                listed
                    .into_iter()
                    .filter(|m| !output.rewritten.contains(&m.path)),
            );
            let list = avro::write_manifest_list(&manifests, snapshot_id, parent, sequence)
                .map_err(|e| failed(&table, "writing the manifest list of", e))?;
            let list_rel = format!(
                "{rel}/metadata/snap-{snapshot_id}-{}-{}.avro",
                attempt + 1,
                uuid::Uuid::new_v4()
            );
            self.store.write_new(&list_rel, list.into()).await?;
            let snapshot = self.replace_snapshot(&base, &output, sequence, &list_rel);
            let outcome = self
                .commit_metadata(
                    &table,
                    (&namespace, &name, &rel),
                    &base,
                    base.with_snapshot(base.json.clone(), snapshot.clone(), &[]),
                    vec![
                        json!({"action": "add-snapshot", "snapshot": snapshot}),
                        json!({
                            "action": "set-snapshot-ref",
                            "ref-name": "main",
                            "type": "branch",
                            "snapshot-id": snapshot_id,
                        }),
                    ],
                    |now| now.snapshot(snapshot_id).is_some(),
                )
                .await?;
            match outcome {
                Some(metadata) => {
                    info!(table = %table, removed = output.removed.0, added = output.added.0, rows = output.added.1, "compacted the Iceberg table");
                    if let Some(open) = self.tables.get_mut(&table) {
                        if let Some(state) = open.state.as_mut() {
                            state.version = sequence as u64;
                        }
                        open.metadata = metadata;
                    }
                    return Ok(Some(CompactionReport {
                        files_removed: output.removed.0,
                        files_added: output.added.0,
                        rows: output.added.1 as usize,
                    }));
                }
                None => {
                    let Some(newer) = self.load_metadata(&table, &namespace, &name).await? else {
                        self.drop_compaction(&output, "the table was dropped").await;
                        return Ok(None);
                    };
                    debug!(table = %table, attempt, "another commit came first; rebuilding the compaction on it");
                    base = newer;
                }
            }
        }
        Err(IcebergSink::failed(
            &table,
            "compacting",
            format!("other writers committed first {REBASES} times in a row; trying again later"),
            ErrorClass::Transient,
        ))
    }

    /// Why a compaction's plan no longer holds on `base` (whose current
    /// snapshot lists `listed`), if it does not.
    async fn plan_breaks(
        &self,
        table: &TableId,
        output: &CompactionOutput,
        base: &TableMetadata,
        listed: &[ManifestFile],
    ) -> Result<Option<&'static str>, LakeError> {
        if base.default_spec().0 != output.spec_id {
            return Ok(Some("the partition spec changed"));
        }
        let paths: HashSet<&str> = listed.iter().map(|m| m.path.as_str()).collect();
        if !output.rewritten.iter().all(|p| paths.contains(p.as_str())) {
            return Ok(Some("a manifest it rewrites is no longer listed"));
        }
        for manifest in listed
            .iter()
            .filter(|m| !output.plan_manifests.contains(&m.path))
        {
            if manifest.content != 0 {
                return Ok(Some("delete files were added"));
            }
            let entries = read_entries(&self.store, table, manifest)
                .await?
                .ok_or_else(|| missing(table, &manifest.path))?;
            if entries.iter().any(|e| output.group.contains(&e.file.path)) {
                return Ok(Some("another commit changed a file it replaces"));
            }
        }
        Ok(None)
    }

    async fn drop_compaction(&self, output: &CompactionOutput, why: &str) {
        info!(table = %output.table, why, "dropping a compaction whose plan no longer holds");
        for rel in &output.written {
            if let Err(error) = self.store.delete(rel).await {
                debug!(table = %output.table, error = %error, "deleting a dropped compaction's file failed; orphan cleanup will");
            }
        }
    }

    /// The `replace` snapshot of a compaction on `base`.
    fn replace_snapshot(
        &self,
        base: &TableMetadata,
        output: &CompactionOutput,
        sequence: i64,
        list_rel: &str,
    ) -> Value {
        let parent_summary = base
            .current_snapshot()
            .and_then(|s| s.get("summary"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let (removed, removed_rows, removed_bytes) = output.removed;
        let (added, added_rows, added_bytes) = output.added;
        let mut summary = serde_json::Map::new();
        summary.insert("operation".into(), "replace".into());
        summary.insert("added-data-files".into(), added.to_string().into());
        summary.insert("deleted-data-files".into(), removed.to_string().into());
        summary.insert("added-records".into(), added_rows.to_string().into());
        summary.insert("deleted-records".into(), removed_rows.to_string().into());
        summary.insert("added-files-size".into(), added_bytes.to_string().into());
        summary.insert(
            "removed-files-size".into(),
            removed_bytes.to_string().into(),
        );
        for (key, change) in [
            ("total-data-files", added as i64 - removed as i64),
            ("total-records", added_rows - removed_rows),
            ("total-files-size", added_bytes - removed_bytes),
            ("total-delete-files", 0),
            ("total-position-deletes", 0),
            ("total-equality-deletes", 0),
        ] {
            if let Some(before) = parent_summary
                .get(key)
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<i64>().ok())
            {
                summary.insert(key.into(), (before + change).to_string().into());
            }
        }
        // The table's mark, as restart reads it, unchanged.
        if let Some(state) = self.state_of(base) {
            summary.insert(SUMMARY_PIPELINE.into(), self.pipeline.clone().into());
            summary.insert(SUMMARY_SEQ.into(), state.mark.seq.to_string().into());
            summary.insert(SUMMARY_ORD.into(), state.mark.ord.to_string().into());
            summary.insert(SUMMARY_POSITION.into(), state.position.into());
            summary.insert(
                SUMMARY_SNAPSHOT.into(),
                (if state.snapshot_done {
                    "done"
                } else {
                    "running"
                })
                .into(),
            );
        }
        let mut snapshot = json!({
            "snapshot-id": output.snapshot_id,
            "sequence-number": sequence,
            "timestamp-ms": now_ms(),
            "manifest-list": self.store.uri_of(list_rel),
            "summary": Value::Object(summary),
            "schema-id": base.current_schema_id(),
        });
        if let Some(parent) = base.current_snapshot_id() {
            snapshot["parent-snapshot-id"] = Value::from(parent);
        }
        snapshot
    }

    /// [`commit_metadata`] through this sink's store and catalog.
    #[allow(clippy::too_many_arguments)]
    async fn commit_metadata(
        &self,
        table: &TableId,
        ids: (&str, &str, &str),
        base: &TableMetadata,
        json: Value,
        updates: Vec<Value>,
        settled: impl Fn(&TableMetadata) -> bool,
    ) -> Result<Option<TableMetadata>, LakeError> {
        commit_metadata(
            (&self.store, &self.catalog),
            table,
            ids,
            base,
            json,
            updates,
            settled,
        )
        .await
    }

    /// Expires `table`'s snapshots replaced longer ago than `retention`
    /// (one commit), and returns the cleanup of its files to run.
    pub(super) async fn expire_snapshots(
        &mut self,
        table: &TableId,
        retention: Duration,
    ) -> Result<Option<VacuumJob>, LakeError> {
        if !self.settled(table) {
            return Ok(None);
        }
        let open = self.tables.get(table).expect("settled: open");
        let (namespace, name, rel) = (open.namespace.clone(), open.name.clone(), open.rel.clone());
        let job = expire(
            (&self.store, &self.catalog),
            table,
            (&namespace, &name, &rel),
            open.metadata.clone(),
            retention,
            self.clock.started,
        )
        .await?;
        if let (Some(job), Some(open)) = (&job, self.tables.get_mut(table)) {
            open.metadata = job.metadata.clone();
        }
        Ok(job)
    }

    /// Expires `table`'s old snapshots and deletes the files no kept
    /// metadata needs, in one call (tests; [`IcebergSink::maintain`] deletes
    /// on a task of its own).
    pub async fn vacuum(
        &mut self,
        table: &TableId,
        retention: Duration,
    ) -> Result<VacuumReport, LakeError> {
        match self.expire_snapshots(table, retention).await? {
            Some(job) => job.run().await,
            None => Ok(VacuumReport::default()),
        }
    }

    async fn reap_compaction(&mut self) -> Reaped {
        let Some(task) = self.clock.compaction.as_ref() else {
            return Reaped::Nothing;
        };
        if !task.handle.is_finished()
            || !task
                .tables
                .iter()
                .all(|t| self.settled(t) || !self.tables.contains_key(t))
        {
            return Reaped::Nothing;
        }
        let Some(mut task) = self.clock.compaction.take() else {
            return Reaped::Nothing;
        };
        let output = match (&mut task.handle).await {
            Ok(Ok(Some(output))) => output,
            Ok(Ok(None)) => return Reaped::Idle,
            Ok(Err(error)) => {
                warn!(error = %tidewater_core::error_chain(&error), "compacting an Iceberg table failed; the table is unchanged, trying again later");
                return Reaped::Idle;
            }
            Err(join) => {
                warn!(error = %join, "the Iceberg compaction task died; the table is unchanged, trying again later");
                return Reaped::Idle;
            }
        };
        let table = output.table.clone();
        debug!(table = %table, "Iceberg compaction ended");
        self.clock.compacted_last = Some(table.clone());
        match self.commit_compaction(output).await {
            Ok(_) => Reaped::Done,
            Err(error) => {
                warn!(table = %table, error = %tidewater_core::error_chain(&error), "committing an Iceberg compaction failed; the table is unchanged, trying again later");
                // The commit may have happened: read the table again.
                self.tables.remove(&table);
                Reaped::Idle
            }
        }
    }

    async fn reap_vacuum(&mut self) {
        if !self
            .clock
            .vacuum
            .as_ref()
            .is_some_and(|task| task.handle.is_finished())
        {
            return;
        }
        let Some(mut task) = self.clock.vacuum.take() else {
            return;
        };
        match (&mut task.handle).await {
            Ok(results) => {
                for (table, result) in results {
                    if let Err(error) = result {
                        warn!(table = %table, error = %tidewater_core::error_chain(&error), "vacuuming the Iceberg table failed; trying again later");
                    }
                }
            }
            Err(join) => warn!(error = %join, "the Iceberg vacuum task died; trying again later"),
        }
    }

    /// Logs the outcome of the merges that ended.
    async fn reap_merges(&mut self) {
        self.clock.merges.reap("Iceberg ").await;
    }

    /// Waits for the running current-state merges to end (tests).
    pub async fn finish_merges(&mut self) {
        while !self.clock.merges.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.reap_merges().await;
        }
    }

    /// Waits for the background compaction (committed here, when its table
    /// has nothing pending) and vacuum to end, and starts none.
    pub async fn finish_maintenance(&mut self) {
        loop {
            self.reap_compaction().await;
            self.reap_vacuum().await;
            let waits = self.clock.compaction.as_ref().is_some_and(|task| {
                task.handle.is_finished() && !task.tables.iter().all(|t| self.settled(t))
            });
            if waits {
                self.clock.compaction = None;
            }
            if self.clock.compaction.is_none() && self.clock.vacuum.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Compacts and vacuums the open tables when their interval is due.
    /// Called between commits; the work runs on tasks of its own, here only
    /// plans and the small commits (see the module doc). A failure is
    /// logged and tried again at the next interval.
    pub async fn maintain(&mut self) {
        let now = Instant::now();
        self.reap_merges().await;
        if let Some(every) = self.maintenance.current_state {
            if now.duration_since(self.clock.merged) >= every {
                self.clock.merged = now;
                // The merges of this round also vacuum their tables when a
                // vacuum is due (one clock for all current-state tables).
                let vacuum = self.maintenance.vacuum.and_then(|(retention, every)| {
                    (now.duration_since(self.clock.current_vacuumed) >= every).then(|| {
                        self.clock.current_vacuumed = now;
                        (retention, self.clock.started)
                    })
                });
                let tables: Vec<TableId> = self.tables.keys().cloned().collect();
                for table in tables {
                    // One merge of a table at a time; the next interval
                    // picks up what came meanwhile.
                    if self.clock.merges.runs(&table) {
                        continue;
                    }
                    if let Some(job) = self.merge_job(&table, vacuum) {
                        self.clock.merges.start(table, job.run());
                    }
                }
            }
        }
        if let Some((policy, every)) = self.maintenance.compaction {
            match self.reap_compaction().await {
                Reaped::Idle => self.clock.compacted = now,
                Reaped::Done | Reaped::Nothing => {}
            }
            if self.clock.compaction.is_none() && now.duration_since(self.clock.compacted) >= every
            {
                let mut tables: Vec<TableId> = self.tables.keys().cloned().collect();
                if let Some(last) = &self.clock.compacted_last {
                    let after = tables.iter().position(|t| t > last).unwrap_or(tables.len());
                    tables.rotate_left(after);
                }
                match self.compaction_job(tables, &policy) {
                    Some(job) => {
                        let tables = job.tables.iter().map(|(t, _, _)| t.clone()).collect();
                        self.clock.compaction = Some(CompactionTask {
                            tables,
                            handle: tokio::spawn(job.run()),
                        });
                    }
                    None => self.clock.compacted = now,
                }
            }
        }
        self.reap_vacuum().await;
        if let Some((retention, every)) = self.maintenance.vacuum {
            if self.clock.vacuum.is_none() && now.duration_since(self.clock.vacuumed) >= every {
                self.clock.vacuumed = now;
                let mut jobs = Vec::new();
                let tables: Vec<TableId> = self.tables.keys().cloned().collect();
                for table in tables {
                    match self.expire_snapshots(&table, retention).await {
                        Ok(Some(job)) => jobs.push(job),
                        Ok(None) => {}
                        Err(error) => {
                            warn!(table = %table, error = %tidewater_core::error_chain(&error), "expiring the Iceberg table's snapshots failed; trying again later");
                            self.tables.remove(&table);
                        }
                    }
                }
                if !jobs.is_empty() {
                    let tables = jobs.iter().map(|job| job.table.clone()).collect();
                    let handle = tokio::spawn(async move {
                        let mut results = Vec::with_capacity(jobs.len());
                        for job in jobs {
                            let table = job.table.clone();
                            results.push((table, job.run().await));
                        }
                        results
                    });
                    self.clock.vacuum = Some(VacuumTask { tables, handle });
                }
            }
        }
    }
}

/// Commits metadata `json` (SQL catalog: a new metadata file and the
/// swap) or `updates` (REST catalog) on `base`, asserting that `main`
/// is where `base` has it. None when another commit came first;
/// `settled` says of the table read back whether a commit whose answer
/// was lost happened.
#[allow(clippy::too_many_arguments)]
pub(super) async fn commit_metadata(
    (store, catalog): (&LakeStore, &Catalog),
    table: &TableId,
    (namespace, name, rel): (&str, &str, &str),
    base: &TableMetadata,
    json: Value,
    updates: Vec<Value>,
    settled: impl Fn(&TableMetadata) -> bool,
) -> Result<Option<TableMetadata>, LakeError> {
    match catalog {
        Catalog::Sql(catalog) => {
            let file = format!("{rel}/metadata/{}", metadata_file_name(base.version() + 1));
            store.write(&file, &json.to_string()).await?;
            let location = store.uri_of(&file);
            match catalog
                .swap(namespace, name, &base.location, &location)
                .await?
            {
                Swap::Done => Ok(Some(TableMetadata { json, location })),
                Swap::Conflict => Ok(None),
            }
        }
        Catalog::Rest(catalog) => {
            let requirements = vec![
                json!({"type": "assert-table-uuid", "uuid": base.table_uuid()}),
                json!({"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": base.current_snapshot_id()}),
            ];
            match catalog
                .commit(namespace, name, requirements, updates)
                .await?
            {
                Committed::Done(metadata) => Ok(Some(metadata)),
                Committed::Conflict => Ok(None),
                Committed::Unknown(why) => {
                    warn!(table = %table, why = %why, "the Iceberg catalog did not say whether the maintenance commit happened; reading the table back");
                    Ok(match catalog.load(namespace, name).await? {
                        Some(now) if settled(&now) => Some(now),
                        _ => None,
                    })
                }
            }
        }
    }
}

/// The manifests of a snapshot of `base` that takes the live data files
/// `removed` out and puts `added` in: one manifest with the removed
/// entries DELETED (keeping their sequence numbers) and the new files
/// ADDED, and one with the other live entries of the manifests it
/// rewrites as EXISTING — those holding a removed file or a deleted entry,
/// or every data manifest of the default spec once there are more than
/// [`MERGE_MANIFESTS`]. The snapshot lists both and the manifests not
/// rewritten (`manifests`, whose entries are `entries`, by index).
#[allow(clippy::too_many_arguments)]
pub(super) async fn rewrite_manifests(
    store: &LakeStore,
    table: &TableId,
    rel: &str,
    (base, schema_json, schema_id): (&TableMetadata, &Value, i64),
    (manifests, entries): (&[ManifestFile], &[(usize, ManifestEntry)]),
    removed: &HashSet<String>,
    added: &[DataFile],
    snapshot_id: i64,
) -> Result<Rewrite, LakeError> {
    let (spec_id, spec_fields, spec) = base.default_spec();
    let mut written = Vec::new();
    let merge_all = manifests.len() > MERGE_MANIFESTS;
    let rewritten: HashSet<String> = manifests
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            m.spec_id == spec_id
                && m.content == 0
                && (merge_all
                    || m.deleted_files > 0
                    || entries
                        .iter()
                        .any(|(j, e)| j == i && e.status != 2 && removed.contains(&e.file.path)))
        })
        .map(|(_, m)| m.path.clone())
        .collect();
    let partition_ids: Vec<(String, i32)> =
        spec.iter().map(|f| (f.name.clone(), f.field_id)).collect();
    let write = |entries: Vec<ManifestEntry>| {
        avro::write_manifest(
            &entries,
            schema_json,
            schema_id,
            spec_id,
            &spec_fields,
            &partition_ids,
        )
        .map_err(|e| failed(table, "writing a manifest of", e))
    };
    let gone: Vec<&ManifestEntry> = entries
        .iter()
        .filter(|(_, e)| e.status != 2 && removed.contains(&e.file.path))
        .map(|(_, e)| e)
        .collect();
    let mut replace_entries: Vec<ManifestEntry> = gone
        .iter()
        .map(|e| ManifestEntry {
            status: 2,
            snapshot_id: Some(snapshot_id),
            sequence_number: e.sequence_number,
            content: 0,
            file: e.file.clone(),
        })
        .collect();
    replace_entries.extend(added.iter().map(|f| ManifestEntry {
        status: 1,
        snapshot_id: Some(snapshot_id),
        sequence_number: None,
        content: 0,
        file: f.clone(),
    }));
    let bytes = write(replace_entries)?;
    let replace_rel = format!("{rel}/metadata/{}-m0.avro", uuid::Uuid::new_v4());
    let length = bytes.len() as i64;
    store.write_new(&replace_rel, bytes.into()).await?;
    written.push(replace_rel.clone());
    let mut summarized: Vec<DataFile> = added.to_vec();
    summarized.extend(gone.iter().map(|e| e.file.clone()));
    let replace = ManifestFile {
        path: store.uri_of(&replace_rel),
        length,
        spec_id,
        content: 0,
        added_snapshot_id: snapshot_id,
        added_files: added.len() as i32,
        deleted_files: gone.len() as i32,
        added_rows: added.iter().map(|f| f.record_count).sum(),
        deleted_rows: gone.iter().map(|e| e.file.record_count).sum(),
        partitions: partition_summaries(&spec, &summarized),
        ..Default::default()
    };
    let kept: Vec<ManifestEntry> = entries
        .iter()
        .filter(|(i, e)| {
            rewritten.contains(&manifests[*i].path)
                && e.status != 2
                && !removed.contains(&e.file.path)
        })
        .map(|(_, e)| ManifestEntry {
            status: 0,
            ..e.clone()
        })
        .collect();
    let carried = if kept.is_empty() {
        None
    } else {
        let min_sequence = kept
            .iter()
            .filter_map(|e| e.sequence_number)
            .min()
            .unwrap_or(0);
        let files: Vec<DataFile> = kept.iter().map(|e| e.file.clone()).collect();
        let count = kept.len() as i32;
        let rows: i64 = kept.iter().map(|e| e.file.record_count).sum();
        let bytes = write(kept)?;
        let carried_rel = format!("{rel}/metadata/{}-m1.avro", uuid::Uuid::new_v4());
        let length = bytes.len() as i64;
        store.write_new(&carried_rel, bytes.into()).await?;
        written.push(carried_rel.clone());
        Some(ManifestFile {
            path: store.uri_of(&carried_rel),
            length,
            spec_id,
            content: 0,
            min_sequence_number: min_sequence,
            added_snapshot_id: snapshot_id,
            existing_files: count,
            existing_rows: rows,
            partitions: partition_summaries(&spec, &files),
            ..Default::default()
        })
    };
    Ok(Rewrite {
        replace,
        carried,
        rewritten,
        written,
    })
}

/// The manifests [`rewrite_manifests`] wrote.
pub(super) struct Rewrite {
    /// DELETED + ADDED entries.
    pub(super) replace: ManifestFile,
    /// The other entries of the rewritten manifests, EXISTING.
    pub(super) carried: Option<ManifestFile>,
    /// The manifests the two replace.
    pub(super) rewritten: HashSet<String>,
    /// Their files, below the lake root.
    pub(super) written: Vec<String>,
}

/// Expires `base`'s snapshots replaced longer ago than `retention` (one
/// `remove-snapshots` commit) and returns the cleanup of the files to run;
/// None when another commit came first (the next vacuum tries again on the
/// table as it is then).
async fn expire(
    (store, catalog): (&LakeStore, &Catalog),
    table: &TableId,
    (namespace, name, rel): (&str, &str, &str),
    base: TableMetadata,
    retention: Duration,
    started: SystemTime,
) -> Result<Option<VacuumJob>, LakeError> {
    let planned = SystemTime::now();
    let ids = expired_snapshots(&base, retention, now_ms());
    let mut metadata = base.clone();
    let mut expired_lists = Vec::new();
    if !ids.is_empty() {
        let expired: HashSet<i64> = ids.iter().copied().collect();
        expired_lists = ids
            .iter()
            .filter_map(|id| base.snapshot(*id))
            .filter_map(|s| s.get("manifest-list").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let first = ids[0];
        match commit_metadata(
            (store, catalog),
            table,
            (namespace, name, rel),
            &base,
            base.without_snapshots(&expired),
            vec![json!({"action": "remove-snapshots", "snapshot-ids": ids})],
            |now| now.snapshot(first).is_none(),
        )
        .await?
        {
            Some(now) => {
                debug!(table = %table, expired = ids.len(), "expired Iceberg snapshots");
                metadata = now;
            }
            None => {
                debug!(table = %table, "another commit came first; expiring snapshots later");
                return Ok(None);
            }
        }
    }
    Ok(Some(VacuumJob {
        table: table.clone(),
        store: store.clone(),
        rel: rel.to_string(),
        metadata,
        expired: expired_lists.len(),
        expired_lists,
        retention,
        started,
        planned,
    }))
}

/// Expires the snapshots of a table that no pipeline commit holds open (a
/// current-state table, from its merge's task) and deletes the files only
/// they reached and the orphans, as a vacuum of a change log does.
pub(super) async fn vacuum_table(
    stores: (&LakeStore, &Catalog),
    table: &TableId,
    ids: (&str, &str, &str),
    base: TableMetadata,
    retention: Duration,
    started: SystemTime,
) -> Result<VacuumReport, LakeError> {
    match expire(stores, table, ids, base, retention, started).await? {
        Some(job) => job.run().await,
        None => Ok(VacuumReport::default()),
    }
}
