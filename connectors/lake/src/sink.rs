//! The Delta Lake change-log sink.
//!
//! ```text
//!  ChangeBatch ──narrow──▶ RecordBatchWriter (Parquet files, invisible)
//!                                   │ commit(position)
//!                                   ▼
//!   _delta_log/000…N.json = { add(files…), txn(appId = tidewater:<pipeline>, version N),
//!                             commitInfo{ tidewater.seq, .ord, .position, .snapshot } }
//! ```
//!
//! The data files, the application transaction and the mark of the last change
//! they hold are one atomic Delta commit: either a reader sees all of it or none.
//! On restart [`LakeSink::table_state`] reads the mark back from the newest
//! commit of this pipeline, and the coordinator skips every change at or below
//! it. Files written but never committed (a crash between write and commit) are
//! invisible to every reader and are left for VACUUM.

use std::collections::{BTreeMap, HashMap};

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::datatypes::{Int64Type, UInt64Type};
use deltalake::arrow::error::ArrowError;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures_util::TryStreamExt;
use serde_json::Value;
use tidewater_core::{
    arrow_field, key_string, metadata_fields, ChangeBatch, Datum, Mark, Sink, SnapshotPhase,
    TableId, TableSchema,
};
use tracing::{debug, info, warn};

use crate::error::{LakeError, StateFile};
use crate::history::{self, HistoryColumn, SchemaHistory};
use crate::layout::{path_segment, segment_name};
use crate::narrow::{narrow_batch, narrow_schema};
use crate::restore;
use crate::state::LakeState;
use crate::stats::writer_properties;
use crate::store::LakeStore;
use tidewater_core::state_file::json_problem;

pub(crate) mod current;
pub mod dv;
mod forget;
#[cfg(test)]
mod lookup_tests;
mod maintenance;
mod prune;
mod ranged;
mod read;
mod retention;
pub use current::MergeReport;
pub use maintenance::{Compaction, CompactionReport, MaintenancePolicy};
pub use read::{LakeFile, LakeFiles, LakeLog};

const KEY_PIPELINE: &str = "tidewater.pipeline";
const KEY_SEQ: &str = "tidewater.seq";
const KEY_ORD: &str = "tidewater.ord";
const KEY_POSITION: &str = "tidewater.position";
const KEY_SNAPSHOT: &str = "tidewater.snapshot";
const KEY_SCHEMA_VERSION: &str = "tidewater.schema_version";

/// Field metadata of a versioned lake column (`amount__v2`): the source
/// column whose values it holds since a type change the lake could not
/// express in place.
pub const KEY_SOURCE_COLUMN: &str = "tidewater.source_column";

pub use tidewater_core::state::TableState;

/// A writer kept open across the batches of one commit, so a commit's rows
/// land in files of the target size rather than one file per batch. It runs
/// in a task of its own: Parquet encoding (the costliest step of a
/// snapshot) overlaps with decoding and batching the next rows.
struct Staging {
    batches: Option<tokio::sync::mpsc::Sender<RecordBatch>>,
    task: tokio::task::JoinHandle<Result<Vec<Add>, DeltaTableError>>,
    /// Encoded bytes so far, as the writer reports them.
    encoded: Arc<std::sync::atomic::AtomicU64>,
    schema: SchemaRef,
    /// Columns written without statistics (see `stats`): a batch that needs
    /// another set goes to a writer of its own.
    no_stats: Vec<deltalake::parquet::schema::types::ColumnPath>,
}

impl Staging {
    fn start(
        mut writer: RecordBatchWriter,
        no_stats: Vec<deltalake::parquet::schema::types::ColumnPath>,
    ) -> Self {
        let schema = writer.arrow_schema();
        let encoded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(1);
        let counter = encoded.clone();
        let task = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                writer.write_with_mode(batch, WriteMode::Default).await?;
                counter.store(
                    writer.buffer_len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            writer.flush().await
        });
        Self {
            batches: Some(tx),
            task,
            encoded,
            schema,
            no_stats,
        }
    }

    async fn write(&mut self, table: &TableId, batch: RecordBatch) -> Result<(), LakeError> {
        let sent = match &self.batches {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The task ended early: its error says why.
        self.batches = None;
        match (&mut self.task).await {
            Ok(Err(source)) => Err(LakeError::delta(table, "writing to", source)),
            Ok(Ok(_)) => Err(LakeError::delta(
                table,
                "writing to",
                DeltaTableError::Generic("the file writer task ended".into()),
            )),
            Err(join) => Err(writer_task_died(table, join)),
        }
    }

    fn encoded(&self) -> u64 {
        self.encoded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes the files; their add actions.
    async fn finish(mut self, table: &TableId) -> Result<Vec<Add>, LakeError> {
        self.batches = None;
        match (&mut self.task).await {
            Ok(result) => result.map_err(|source| LakeError::delta(table, "writing to", source)),
            Err(join) => Err(writer_task_died(table, join)),
        }
    }
}

/// The file writer task of `table` panicked (a storage library's bug on an
/// error path) or was cancelled: like a panic of the write itself (see
/// [`guarded`]), the pipeline goes back to its durable marks.
fn writer_task_died(table: &TableId, join: tokio::task::JoinError) -> LakeError {
    let what = match join.try_into_panic() {
        Ok(panic) => panic_text(panic.as_ref()),
        Err(join) => join.to_string(),
    };
    LakeError::Panicked {
        table: table.clone(),
        action: "writing to",
        what,
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Dropped without `finish` (a table removed, a failed commit): the
        // files are abandoned, never committed.
        self.task.abort();
    }
}

struct LakeTable {
    table: DeltaTable,
    /// Files written since the last commit, invisible until it.
    adds: Vec<Add>,
    /// The open writer of this commit's plain batches, if any.
    staging: Option<Staging>,
    /// The table schema widened by those files, when it changed.
    evolved: Option<SchemaRef>,
    state: Option<TableState>,
    pending: Option<Mark>,
    schema_version: u64,
    /// Every column set the table received (see [`crate::history`]).
    history: SchemaHistory,
    /// The history gained a version to write before the next commit.
    history_dirty: bool,
}

impl LakeTable {
    /// The key columns as the lake names them, from the latest schema
    /// version (none before the first).
    pub(super) fn key_columns(&self) -> Vec<String> {
        self.history
            .latest()
            .map(|v| {
                v.columns
                    .iter()
                    .filter(|c| c.key)
                    .map(|c| c.lake_column.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn new(table: DeltaTable, state: Option<TableState>, history: SchemaHistory) -> Self {
        Self {
            table,
            adds: Vec::new(),
            staging: None,
            evolved: None,
            state,
            pending: None,
            schema_version: history.latest().map_or(0, |v| v.version),
            history,
            history_dirty: false,
        }
    }
}

pub struct LakeSink {
    store: LakeStore,
    pipeline: String,
    tables: BTreeMap<TableId, LakeTable>,
    /// Snapshot state of tables copied while the others stream, overriding
    /// the phase of a commit (see [`Sink::table_phase`]).
    table_phases: HashMap<TableId, (SnapshotPhase, Mark)>,
    /// DDL statements by table, with their seq, waiting for the version
    /// they shape (see [`Sink::note_ddl`]).
    pending_ddl: HashMap<TableId, Vec<(u64, String)>>,
    maintenance: MaintenancePolicy,
    clock: maintenance::MaintenanceClock,
    /// New change-log tables are partitioned by `_tw_commit_date`.
    partition_by_date: bool,
    /// Data files roll over at about this size.
    target_file_bytes: u64,
    /// Current-state merges mark changed rows in deletion vectors.
    current_dvs: bool,
    /// Current-state tables keep deleted rows, flagged.
    soft_deletes: bool,
    /// `changelog_retention`: (table pattern, how long rows are kept).
    retention_rules: Vec<(String, Option<std::time::Duration>)>,
    /// How often each table's retention pass runs.
    retention_every: std::time::Duration,
}

impl LakeSink {
    pub fn new(store: LakeStore, pipeline: &str) -> Self {
        Self {
            store,
            pipeline: pipeline.to_string(),
            tables: BTreeMap::new(),
            table_phases: HashMap::new(),
            pending_ddl: HashMap::new(),
            maintenance: MaintenancePolicy::default(),
            clock: maintenance::MaintenanceClock::default(),
            partition_by_date: false,
            target_file_bytes: 128 << 20,
            current_dvs: false,
            soft_deletes: false,
            retention_rules: Vec::new(),
            retention_every: std::time::Duration::from_secs(3600),
        }
    }

    /// `sink.soft_deletes`: current-state tables keep a deleted key's row,
    /// the delete's image, with `_tw_deleted = true` and `_tw_deleted_at`.
    pub fn set_soft_deletes(&mut self, on: bool) {
        self.soft_deletes = on;
    }

    /// `sink.current_state_deletion_vectors`: current-state merges mark the
    /// changed rows of a file deleted in a deletion vector instead of
    /// rewriting it (the table gets the `deletionVectors` feature).
    pub fn set_current_state_deletion_vectors(&mut self, on: bool) {
        self.current_dvs = on;
    }

    /// The size data files roll over at (`sink.target_file_size_bytes`).
    pub fn set_target_file_size(&mut self, bytes: u64) {
        self.target_file_bytes = bytes.max(1);
    }

    fn app_id(&self) -> String {
        format!("tidewater:{}", self.pipeline)
    }

    /// Partition change-log tables created from now on by commit date
    /// (`_tw_commit_date`, the UTC date of `_tw_commit_ts`). Existing tables
    /// keep the layout they were created with.
    pub fn set_partition_by_date(&mut self, on: bool) {
        self.partition_by_date = on;
    }

    /// `<pipeline>/<schema>/<table>` below the lake root.
    fn table_rel(&self, table: &TableId) -> String {
        format!(
            "{}/{}/{}",
            self.pipeline,
            path_segment(&table.schema),
            path_segment(&table.table)
        )
    }

    /// Where a table is, for people: `<root>/<pipeline>/<schema>/<table>`.
    pub fn table_location(&self, table: &TableId) -> String {
        self.store.describe(&self.table_rel(table))
    }

    /// The lake this sink writes.
    pub fn store(&self) -> &LakeStore {
        &self.store
    }

    /// The schema history kept next to `table`, if it has one.
    pub async fn history(&self, table: &TableId) -> Result<Option<SchemaHistory>, LakeError> {
        let rel = format!("{}/{}", self.table_rel(table), history::HISTORY_FILE);
        match self.store.read(&rel).await? {
            Some(text) => history::parse(&text)
                .map(Some)
                .map_err(|err| self.corrupt(&rel, StateFile::SchemaHistory, json_problem(&err))),
            None => Ok(None),
        }
    }

    /// Opens an existing lake table and reads its state; None when there is no
    /// table (or no commit of this pipeline in it).
    pub async fn table_state(&mut self, table: &TableId) -> Result<Option<TableState>, LakeError> {
        if let Some(open) = self.tables.get(table) {
            return Ok(open.state.clone());
        }
        let rel = self.table_rel(table);
        if !self.store.is_table(&rel).await? {
            return Ok(None);
        }
        let url = self.store.table_url(&rel)?;
        let delta =
            match deltalake::open_table_with_storage_options(url, self.store.storage_options())
                .await
            {
                Ok(delta) => delta,
                Err(DeltaTableError::NotATable(_)) => return Ok(None),
                Err(source) => return Err(LakeError::delta(table, "opening", source)),
            };
        let state = read_state(&delta, &self.app_id(), &self.pipeline)
            .await
            .map_err(|source| LakeError::delta(table, "reading the state of", source))?;
        let history_rel = format!("{rel}/{}", history::HISTORY_FILE);
        let history = match self.store.read(&history_rel).await? {
            Some(text) => history::parse(&text).map_err(|err| {
                self.corrupt(&history_rel, StateFile::SchemaHistory, json_problem(&err))
            })?,
            None => SchemaHistory {
                table: table.to_string(),
                versions: Vec::new(),
            },
        };
        self.tables
            .insert(table.clone(), LakeTable::new(delta, state.clone(), history));
        Ok(state)
    }

    /// Makes sure the table exists with (at least) the columns of `schema`.
    pub async fn ensure_table(&mut self, schema: &TableSchema) -> Result<(), LakeError> {
        let table = &schema.table;
        self.table_state(table).await?;
        if self.tables.contains_key(table) {
            return Ok(());
        }
        let rel = self.table_rel(table);
        if let Some(path) = self.store.local_path(&rel) {
            crate::store::create_dirs(&path)
                .map_err(|source| LakeError::io(path.clone(), source))?;
        }
        let mut arrow = narrow_schema(&lake_schema(schema));
        if self.partition_by_date {
            let mut fields: Vec<Field> =
                arrow.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(
                COMMIT_DATE,
                deltalake::arrow::datatypes::DataType::Date32,
                true,
            ));
            arrow = Arc::new(Schema::new_with_metadata(fields, arrow.metadata().clone()));
        }
        let kernel: StructType = arrow
            .as_ref()
            .try_into_kernel()
            .map_err(|source| LakeError::delta(table, "mapping the schema of", source.into()))?;
        let url = self.store.table_url(&rel)?;
        let delta =
            DeltaTable::try_from_url_with_storage_options(url, self.store.storage_options())
                .await
                .map_err(|source| LakeError::delta(table, "opening", source))?
                .create()
                .with_columns(kernel.fields().cloned())
                .with_table_name(table.table.clone())
                .with_comment(format!(
                    "change log of {table}, written by tidewater pipeline {}",
                    self.pipeline
                ))
                .with_partition_columns(if self.partition_by_date {
                    vec![COMMIT_DATE.to_string()]
                } else {
                    Vec::new()
                })
                .with_save_mode(SaveMode::Ignore)
                .await
                .map_err(|source| LakeError::delta(table, "creating", source))?;
        info!(table = %table, path = %self.store.describe(&rel), "created lake table");
        let history = SchemaHistory {
            table: table.to_string(),
            versions: Vec::new(),
        };
        self.tables
            .insert(table.clone(), LakeTable::new(delta, None, history));
        Ok(())
    }

    /// Writes a batch into uncommitted files. Batches wholly at or below the
    /// table's committed mark are skipped (idempotence).
    pub async fn write(&mut self, batch: ChangeBatch) -> Result<(), LakeError> {
        let table = batch.table.clone();
        guarded(&table, "writing to", self.write_unguarded(batch))
            .await
            .map_err(|err| self.located(err))
    }

    /// `err`, as [`LakeError::Unwritable`] at the table (or pipeline)
    /// directory it concerns when the storage refused for good.
    fn located(&self, err: LakeError) -> LakeError {
        let rel = match err.table() {
            Some(table) if table.table != "*" => self.table_rel(table),
            _ => self.pipeline.clone(),
        };
        err.at(|| self.store.describe(&rel))
    }

    /// Proves the pipeline's directory below the lake root writable by
    /// writing and removing a small file, so a lake that refuses writes
    /// (permissions, a read-only mount, `sink.uri` naming a file, refused
    /// credentials) is reported at start-up, before any work, as it would be
    /// at the first commit.
    pub async fn probe_writable(&self) -> Result<(), LakeError> {
        let rel = format!(
            "{}/.tidewater-write-probe-{}",
            self.pipeline,
            std::process::id()
        );
        self.store.write(&rel, "probe\n").await?;
        self.store.delete(&rel).await
    }

    async fn write_unguarded(&mut self, batch: ChangeBatch) -> Result<(), LakeError> {
        self.ensure_table(&batch.schema).await?;
        let table_url = self.store.table_url(&self.table_rel(&batch.table))?;
        let storage_options = self.store.storage_options();
        let open = self.tables.get_mut(&batch.table).expect("ensured above");
        if let Some(state) = &open.state {
            if batch.last <= state.mark {
                debug!(table = %batch.table, mark = %batch.last, "batch already committed, skipping");
                return Ok(());
            }
        }
        let narrowed = narrow_batch(&batch.batch).map_err(|source| LakeError::Arrow {
            table: batch.table.clone(),
            source,
        })?;
        let partitioned = is_partitioned_by_date(&open.table);
        let narrowed = if partitioned {
            with_commit_date(&narrowed).map_err(|source| LakeError::Arrow {
                table: batch.table.clone(),
                source,
            })?
        } else {
            narrowed
        };
        // One writer per batch so each file gets the statistics policy its
        // own values need (see `stats`); the files are committed together.
        let keys: Vec<&str> = batch
            .schema
            .key_columns()
            .map(|c| c.name.as_str())
            .collect();
        let properties = writer_properties(&narrowed, &keys);
        let mut writer = RecordBatchWriter::for_table(&open.table)
            .map_err(|source| LakeError::delta(&batch.table, "writing to", source))?
            .with_writer_properties(properties.clone());
        let before = writer.arrow_schema();
        // A column whose type changed (INT → BIGINT, DECIMAL(5,2) →
        // DECIMAL(12,4)) cannot change in place for every Delta reader: its
        // values from now on go to a versioned column of the new type.
        let narrowed = version_columns(&batch.table, narrowed, &before).map_err(|source| {
            LakeError::Arrow {
                table: batch.table.clone(),
                source,
            }
        })?;
        // A column whose source type text changed (an ENUM gained a value,
        // a VARCHAR grew) keeps its Arrow type: write the batch under the
        // table's field metadata, and carry the new metadata into the
        // table's schema at commit.
        let (narrowed, retagged) =
            align_metadata(narrowed, &before).map_err(|source| LakeError::Arrow {
                table: batch.table.clone(),
                source,
            })?;
        // The DDL before the batch's first row shaped it, if any.
        let first_seq = batch
            .batch
            .column_by_name("_tw_seq")
            .filter(|c| !c.is_empty())
            .and_then(|c| {
                c.as_primitive_opt::<UInt64Type>()
                    .map(|c| c.value(0))
                    .or_else(|| c.as_primitive_opt::<Int64Type>().map(|c| c.value(0) as u64))
            });
        let ddl = match (first_seq, self.pending_ddl.get_mut(&batch.table)) {
            (Some(first), Some(waiting)) => {
                let (before, after): (Vec<_>, Vec<_>) =
                    waiting.drain(..).partition(|(seq, _)| *seq < first);
                *waiting = after;
                let statements: Vec<String> = before.into_iter().map(|(_, s)| s).collect();
                (!statements.is_empty()).then(|| statements.join(";\n"))
            }
            _ => None,
        };
        let open = self.tables.get_mut(&batch.table).expect("ensured above");
        record_history(open, &batch, narrowed.schema().as_ref(), ddl);
        if partitioned {
            // delta-rs's writer cannot merge the schema of a partitioned
            // table: write under the union of the table's columns (as
            // evolved in this commit) and the batch's, with a writer made
            // for it; the commit then records the union.
            let base = open.evolved.clone().unwrap_or_else(|| before.clone());
            let arrow = |source| LakeError::Arrow {
                table: batch.table.clone(),
                source,
            };
            let merged =
                Arc::new(merge_later_tags_win(&base, narrowed.schema().as_ref()).map_err(arrow)?);
            let aligned = maintenance::align_batch(&batch.table, &narrowed, &merged)?;
            writer = RecordBatchWriter::try_new(
                table_url.as_str(),
                merged,
                Some(vec![COMMIT_DATE.to_string()]),
                Some(storage_options),
            )
            .map_err(|source| LakeError::delta(&batch.table, "writing to", source))?
            .with_writer_properties(properties);
            writer
                .write_with_mode(aligned, WriteMode::Default)
                .await
                .map_err(|source| LakeError::delta(&batch.table, "writing to", source))?;
        } else if retagged.is_empty() && narrowed.schema() == before {
            // Nothing to evolve: into the commit's open writer.
            let no_stats = crate::stats::columns_without_stats(&narrowed);
            let reusable = open
                .staging
                .as_ref()
                .is_some_and(|s| s.no_stats == no_stats && s.schema == before);
            if !reusable {
                if let Some(old) = open.staging.take() {
                    open.adds.extend(old.finish(&batch.table).await?);
                }
                open.staging = Some(Staging::start(
                    writer.with_target_file_size(self.target_file_bytes),
                    no_stats,
                ));
            }
            let staging = open.staging.as_mut().expect("set above");
            staging.write(&batch.table, narrowed).await?;
            open.pending = Some(open.pending.map_or(batch.last, |m| m.max(batch.last)));
            return Ok(());
        } else {
            if let Some(old) = open.staging.take() {
                open.adds.extend(old.finish(&batch.table).await?);
            }
            writer
                .write_with_mode(narrowed, WriteMode::MergeSchema)
                .await
                .map_err(|source| LakeError::delta(&batch.table, "writing to", source))?;
        }
        let mut after = writer.arrow_schema();
        if !retagged.is_empty() {
            let fields: Vec<Field> = after
                .fields()
                .iter()
                .map(|f| match retagged.iter().find(|r| r.name() == f.name()) {
                    Some(r) => f.as_ref().clone().with_metadata(r.metadata().clone()),
                    None => f.as_ref().clone(),
                })
                .collect();
            after = Arc::new(Schema::new_with_metadata(fields, after.metadata().clone()));
            if let Some(earlier) = open.evolved.take() {
                // Newer tags win over the ones recorded earlier in this commit.
                let fields: Vec<Field> = earlier
                    .fields()
                    .iter()
                    .map(|f| match after.field_with_name(f.name()) {
                        Ok(newer) => f.as_ref().clone().with_metadata(newer.metadata().clone()),
                        Err(_) => f.as_ref().clone(),
                    })
                    .collect();
                open.evolved = Some(Arc::new(Schema::new(fields)));
            }
        }
        open.adds.extend(
            writer
                .flush()
                .await
                .map_err(|source| LakeError::delta(&batch.table, "writing to", source))?,
        );
        if after != before {
            let merged = match open.evolved.take() {
                Some(earlier) => {
                    merge_later_tags_win(&earlier, &after).map_err(|source| LakeError::Arrow {
                        table: batch.table.clone(),
                        source,
                    })?
                }
                None => after.as_ref().clone(),
            };
            open.evolved = Some(Arc::new(merged));
        }
        open.pending = Some(open.pending.map_or(batch.last, |m| m.max(batch.last)));
        Ok(())
    }

    /// Commits every table with written data — and, when `phase` says so, every
    /// known table even without data, so each records the snapshot state —
    /// each in one atomic Delta commit with its mark and `position`.
    pub async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, LakeError> {
        let any = TableId::new(self.pipeline.clone(), "*");
        guarded(
            &any,
            "committing to",
            self.commit_unguarded(position, phase),
        )
        .await
        .map_err(|err| self.located(err))
    }

    async fn commit_unguarded(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, LakeError> {
        let app_id = self.app_id();
        let mut committed = 0;
        for (table, open) in self.tables.iter_mut() {
            let copy = self.table_phases.get(table).copied();
            let Some((mark, snapshot_done)) =
                crate::state::commit_plan(open.pending, open.state.as_ref(), copy, phase)
            else {
                continue;
            };
            if open.history_dirty {
                let rel = format!(
                    "{}/{}/{}/{}",
                    self.pipeline,
                    path_segment(&table.schema),
                    path_segment(&table.table),
                    history::HISTORY_FILE
                );
                self.store
                    .write(&rel, &history::to_json(&open.history))
                    .await?;
                open.history_dirty = false;
            }
            let commits = open.state.as_ref().map_or(0, |s| s.commits) + 1;
            let properties = commit_properties(
                &app_id,
                &self.pipeline,
                commits,
                mark,
                position,
                snapshot_done,
                open.schema_version,
            );
            let snapshot = open
                .table
                .snapshot()
                .map_err(|source| LakeError::delta(table, "committing to", source))?;
            if let Some(staging) = open.staging.take() {
                open.adds.extend(staging.finish(table).await?);
            }
            let mut actions: Vec<Action> = open.adds.iter().cloned().map(Action::Add).collect();
            if let Some(evolved) = &open.evolved {
                let kernel: StructType = evolved.as_ref().try_into_kernel().map_err(|source| {
                    LakeError::delta(table, "evolving the schema of", source.into())
                })?;
                let metadata = MetadataExt::with_schema(snapshot.metadata().clone(), &kernel)
                    .map_err(|source| {
                        LakeError::delta(table, "evolving the schema of", source.into())
                    })?;
                actions.push(Action::Metadata(metadata));
            }
            let finalized = commit_actions(
                open,
                table,
                &app_id,
                &self.pipeline,
                mark,
                properties,
                actions,
                true,
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await?;
            let (version, snapshot) = finalized;
            open.table.state = Some(snapshot);
            open.adds.clear();
            open.evolved = None;
            debug!(table = %table, version, mark = %mark, "committed");
            open.state = Some(TableState {
                mark,
                position: position.to_string(),
                snapshot_done,
                version,
                commits,
            });
            open.pending = None;
            committed += 1;
            if snapshot_done {
                self.table_phases.remove(table);
            }
        }
        Ok(committed)
    }

    /// The latest committed image of each row of `schema.table` whose key
    /// is in `keys` (see [`Sink::latest_rows`]). Reads the key columns of
    /// every file of the table, and the other columns of matching rows only.
    /// The key column values of the row at `mark` in `schema.table`, if the
    /// lake holds it: where an interrupted snapshot read in key order stood.
    pub async fn key_at_mark(
        &mut self,
        schema: &TableSchema,
        mark: Mark,
    ) -> Result<Option<Vec<Datum>>, LakeError> {
        let table = &schema.table;
        if self.table_state(table).await?.is_none() {
            return Ok(None);
        }
        let open = self.tables.get(table).expect("opened above");
        // Only files whose mark ranges hold the mark, and their pages whose
        // `_tw_ord` range does (a snapshot's rows share one `_tw_seq`).
        let probe = prune::Probe::new(
            vec!["_tw_ord".to_string(), "_tw_seq".to_string()],
            &[vec![
                Datum::Int64(mark.ord as i64),
                Datum::Int64(mark.seq as i64),
            ]],
        );
        let mut files = ranged::data_files_sized(&open.table, table)?;
        files.retain(|f| probe.file_may_hold(f.stats.as_deref()));
        let store = open.table.log_store().object_store(None);
        let arrow = |source| LakeError::Arrow {
            table: table.clone(),
            source,
        };
        let keys: Vec<&tidewater_core::Column> = schema.key_columns().collect();
        let mut names: Vec<&str> = keys.iter().map(|c| c.name.as_str()).collect();
        names.extend(["_tw_seq", "_tw_ord"]);
        let fetched = Arc::default();
        for file in files {
            // Only the key and mark columns are fetched.
            let (mut reader, _) = ranged::read_parts(
                store.clone(),
                &file,
                table,
                Some(&names),
                ranged::Rows::Pages(&probe),
                &fetched,
            )
            .await?;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                let (Some(seqs), Some(ords)) = (
                    batch
                        .column_by_name("_tw_seq")
                        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned()),
                    batch
                        .column_by_name("_tw_ord")
                        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned()),
                ) else {
                    continue;
                };
                for row in 0..batch.num_rows() {
                    if Mark::new(seqs.value(row) as u64, ords.value(row) as u64) != mark {
                        continue;
                    }
                    let mut key = Vec::with_capacity(keys.len());
                    for column in &keys {
                        let Some(array) = batch.column_by_name(&column.name) else {
                            return Ok(None);
                        };
                        key.push(restore::datum(array.as_ref(), row, &column.ty).map_err(arrow)?);
                    }
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    pub async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, LakeError> {
        Ok(self.lookup(schema, keys).await?.0)
    }

    /// [`LakeSink::latest_rows`], with what the lookup read.
    async fn lookup(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<(HashMap<String, Vec<Datum>>, LookupReport), LakeError> {
        let table = &schema.table;
        let mut found: HashMap<String, (Mark, Option<Vec<Datum>>)> = HashMap::new();
        if keys.is_empty() || self.table_state(table).await?.is_none() {
            return Ok((HashMap::new(), LookupReport::default()));
        }
        let mut report = LookupReport::default();
        let wanted: std::collections::HashSet<String> =
            keys.iter().map(|k| key_string(k)).collect();
        let key_columns: Vec<usize> = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let open = self.tables.get(table).expect("opened above");
        let mut files = ranged::data_files_sized(&open.table, table)?;
        let file_bytes: u64 = files.iter().filter_map(|f| f.size).sum();
        let file_count = files.len();
        // Only files (Delta statistics) and pages (page index) whose key
        // range may hold a wanted key, or a NULL key (a truncate).
        let probe = prune::Probe::new(
            key_columns
                .iter()
                .map(|&i| schema.columns[i].name.clone())
                .collect(),
            keys,
        );
        files.retain(|f| probe.file_may_hold(f.stats.as_deref()));
        let store = open.table.log_store().object_store(None);
        let arrow = |source| LakeError::Arrow {
            table: table.clone(),
            source,
        };
        let mut truncated = Mark::ZERO;
        let fetched: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let files_read = files.len();
        let mut narrow_names: Vec<&str> = key_columns
            .iter()
            .map(|&i| schema.columns[i].name.as_str())
            .collect();
        narrow_names.extend(["_tw_op", "_tw_seq", "_tw_ord"]);
        for file in files {
            let path = &file.path;
            // Pass 1: keys and marks only (the TOASTed values are the big
            // columns, and are not even fetched) of the candidate pages;
            // rows of a wanted key that beat what is known so far.
            let (mut reader, selection) = ranged::read_parts(
                store.clone(),
                &file,
                table,
                Some(&narrow_names),
                ranged::Rows::Pages(&probe),
                &fetched,
            )
            .await?;
            // The file row of each row read, in order.
            let mut file_rows: Box<dyn Iterator<Item = usize> + Send> = match &selection {
                Some(selection) => Box::new(
                    prune::selected_rows(selection)
                        .collect::<Vec<_>>()
                        .into_iter(),
                ),
                None => Box::new(0..),
            };
            // (row in file, key, mark, is a delete)
            let mut hits: Vec<(usize, String, Mark, bool)> = Vec::new();
            while let Some(batch) = ranged::next_batch(&mut reader, table, path).await? {
                let rows: Vec<usize> = file_rows.by_ref().take(batch.num_rows()).collect();
                report.rows_scanned += batch.num_rows();
                if rows.len() != batch.num_rows() {
                    return Err(arrow(ArrowError::ComputeError(format!(
                        "{path}: the reader returned more rows than it was asked for"
                    ))));
                }
                let column = |name: &str| batch.column_by_name(name).cloned();
                let (Some(ops), Some(seqs), Some(ords)) =
                    (column("_tw_op"), column("_tw_seq"), column("_tw_ord"))
                else {
                    continue;
                };
                // Files written by another tool may type these otherwise.
                let (Some(ops), Some(seqs), Some(ords)) = (
                    ops.as_string_opt::<i32>(),
                    seqs.as_primitive_opt::<Int64Type>(),
                    ords.as_primitive_opt::<Int64Type>(),
                ) else {
                    return Err(arrow(ArrowError::SchemaError(format!(
                        "{} has unexpected types for _tw_op/_tw_seq/_tw_ord",
                        path
                    ))));
                };
                let key_arrays: Vec<Option<ArrayRef>> = key_columns
                    .iter()
                    .map(|&i| column(&schema.columns[i].name))
                    .collect();
                for (row, &file_row) in rows.iter().enumerate() {
                    let mark = Mark::new(seqs.value(row) as u64, ords.value(row) as u64);
                    if ops.value(row) == "t" {
                        truncated = truncated.max(mark);
                        continue;
                    }
                    let mut key = Vec::with_capacity(key_columns.len());
                    for (array, &i) in key_arrays.iter().zip(&key_columns) {
                        // A key column of another type (before an ALTER) or
                        // missing cannot match a wanted key.
                        key.push(match array {
                            Some(array) => {
                                restore::datum(array.as_ref(), row, &schema.columns[i].ty)
                                    .unwrap_or(Datum::Unchanged)
                            }
                            None => Datum::Null,
                        });
                    }
                    let key = key_string(&key);
                    if !wanted.contains(&key) || found.get(&key).is_some_and(|(m, _)| *m > mark) {
                        continue;
                    }
                    let delete = ops.value(row) == "d";
                    found.insert(key.clone(), (mark, None));
                    hits.push((file_row, key, mark, delete));
                }
            }
            // Pass 2: the whole rows of those hits (a later file may still
            // supersede them; `found` keeps the latest mark).
            hits.retain(|(_, key, mark, delete)| {
                !delete && found.get(key).is_some_and(|(m, _)| m == mark)
            });
            if hits.is_empty() {
                continue;
            }
            // Only the hit rows are read (the pages that hold them), in
            // file order: the i-th row read is hits[i].
            let rows: Vec<usize> = hits.iter().map(|h| h.0).collect();
            let (mut reader, _) = ranged::read_parts(
                store.clone(),
                &file,
                table,
                None,
                ranged::Rows::These(&rows),
                &fetched,
            )
            .await?;
            let mut next = 0;
            while let Some(batch) = ranged::next_batch(&mut reader, table, path).await? {
                for row in 0..batch.num_rows() {
                    let Some((_, key, mark, _)) = hits.get(next) else {
                        break;
                    };
                    let mut values = Vec::with_capacity(schema.columns.len());
                    // A column the file does not have (added or renamed
                    // since) or holds as another type is unknown here, not
                    // NULL: restoring it from this image fails loudly.
                    for column_schema in &schema.columns {
                        values.push(
                            batch
                                .column_by_name(&column_schema.name)
                                .and_then(|array| {
                                    restore::datum(array.as_ref(), row, &column_schema.ty).ok()
                                })
                                .unwrap_or(Datum::Unchanged),
                        );
                    }
                    found.insert(key.clone(), (*mark, Some(values)));
                    next += 1;
                }
            }
        }
        debug!(
            table = %table,
            keys = keys.len(),
            files = file_count,
            files_read,
            file_bytes,
            fetched_bytes = fetched.load(std::sync::atomic::Ordering::Relaxed),
            "looked up the latest images of keys"
        );
        report.files = file_count;
        report.files_read = files_read;
        report.file_bytes = file_bytes;
        report.fetched_bytes = fetched.load(std::sync::atomic::Ordering::Relaxed);
        let found = found
            .into_iter()
            .filter(|(_, (mark, _))| *mark > truncated)
            .filter_map(|(key, (_, image))| image.map(|values| (key, values)))
            .collect();
        Ok((found, report))
    }

    /// Row count and file count of a table from the Delta log (no data read).
    /// When this pipeline last committed to `table` (UTC, RFC 3339), from
    /// the newest commit of the table that carries its mark.
    pub async fn last_commit_time(&mut self, table: &TableId) -> Result<Option<String>, LakeError> {
        self.table_state(table).await?;
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let mut history = open.table.history(Some(20));
        while let Some(info) = history
            .try_next()
            .await
            .map_err(|source| LakeError::delta(table, "reading the history of", source))?
        {
            if info.info.get(KEY_PIPELINE).and_then(Value::as_str) != Some(self.pipeline.as_str()) {
                continue;
            }
            return Ok(info
                .timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        }
        Ok(None)
    }

    pub async fn table_stats(
        &mut self,
        table: &TableId,
    ) -> Result<Option<(usize, usize)>, LakeError> {
        self.table_state(table).await?;
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let snapshot = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "reading", source))?;
        let files = snapshot.log_data();
        let rows = files.iter().filter_map(|f| f.num_records()).sum();
        Ok(Some((rows, files.num_files())))
    }

    /// Every table of this pipeline found under the lake root.
    pub async fn existing_tables(&self) -> Result<Vec<TableId>, LakeError> {
        let mut found = Vec::new();
        for schema in self.store.list_dirs(&self.pipeline).await? {
            let Some(schema_name) = segment_name(&schema) else {
                continue;
            };
            for table in self
                .store
                .list_dirs(&format!("{}/{schema}", self.pipeline))
                .await?
            {
                // Hidden entries (tombstones) never decode.
                let Some(table_name) = segment_name(&table) else {
                    continue;
                };
                if self
                    .store
                    .is_table(&format!("{}/{schema}/{table}", self.pipeline))
                    .await?
                {
                    found.push(TableId::new(schema_name.clone(), table_name));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Removes a table of this pipeline from the lake (used before a fresh
    /// snapshot replaces an interrupted one), so that a crash never leaves a
    /// table with half its log (see [`LakeStore::remove_tree`]).
    pub async fn remove_table(&mut self, table: &TableId) -> Result<(), LakeError> {
        self.tables.remove(table);
        self.clock.forget(table);
        let rel = self.table_rel(table);
        let tombstone = format!(
            "{}/{}/.tidewater-removed-{}",
            self.pipeline,
            path_segment(&table.schema),
            path_segment(&table.table)
        );
        self.store.remove_tree(&rel, &tombstone).await
    }

    /// The pipeline's records (phase, stopped tables, snapshot plan,
    /// acknowledged position), kept next to its tables.
    pub fn state(&self) -> LakeState {
        LakeState::new(self.store.clone(), &self.pipeline)
    }

    /// [`LakeError::CorruptState`] for the state file `rel`.
    fn corrupt(&self, rel: &str, file: StateFile, problem: String) -> LakeError {
        LakeError::CorruptState {
            location: self.store.describe(rel),
            file,
            problem,
        }
    }
}

/// Commits `actions` as this pipeline's next transaction of `open`'s table.
/// Delta commits are put-if-absent (a rename on local disk, `If-None-Match`
/// on S3), so a commit that lost the race to another writer fails. When
/// that writer was not this pipeline (a reader's OPTIMIZE, a vacuum) the
/// application transaction is unchanged and the commit is tried again on
/// top of it; when it was — another tidewater process on the same lake —
/// that is [`LakeError::ConcurrentWriter`], before anything lands twice.
/// With `retry_on_foreign` false (a compaction, whose removes assume the
/// version it read) a lost race is an error after the check.
#[allow(clippy::too_many_arguments)] // one call site each for data and compaction
async fn commit_actions(
    open: &mut LakeTable,
    table: &TableId,
    app_id: &str,
    pipeline: &str,
    mark: Mark,
    properties: CommitProperties,
    actions: Vec<Action>,
    retry_on_foreign: bool,
    operation: DeltaOperation,
) -> Result<(u64, deltalake::table::state::DeltaTableState), LakeError> {
    const ATTEMPTS: usize = 5;
    let ours = open.state.as_ref().map(|s| s.commits);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let snapshot = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "committing to", source))?;
        let result = CommitBuilder::from(properties.clone().with_max_retries(0))
            .with_actions(actions.clone())
            .build(Some(snapshot), open.table.log_store(), operation.clone())
            .await;
        let result = result.map(|f| (f.version(), f.snapshot()));
        let lost_race = match &result {
            Err(DeltaTableError::VersionAlreadyExists(_)) => true,
            Err(DeltaTableError::Transaction { source }) => matches!(
                source,
                deltalake::kernel::transaction::TransactionError::MaxCommitAttempts(_)
                    | deltalake::kernel::transaction::TransactionError::VersionAlreadyExists(_)
            ),
            _ => false,
        };
        if !lost_race || attempt >= ATTEMPTS {
            return result.map_err(|source| LakeError::delta(table, "committing to", source));
        }
        open.table
            .update_state()
            .await
            .map_err(|source| LakeError::delta(table, "reloading", source))?;
        let theirs = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "reloading", source))?
            .transaction_version(open.table.log_store().as_ref(), app_id)
            .await
            .map_err(|source| LakeError::delta(table, "reloading", source))?;
        // Our own commit may have landed with its answer lost (a dropped
        // connection, then the retried put-if-absent refused): the newest
        // commit is then this pipeline's next transaction with our mark.
        if theirs == Some(ours.unwrap_or(0) + 1)
            && newest_mark(&open.table, pipeline).await == Some(mark)
        {
            warn!(table = %table, "the commit had landed although its answer was lost; going on from it");
            let snapshot = open
                .table
                .snapshot()
                .map_err(|source| LakeError::delta(table, "reloading", source))?
                .clone();
            let version = open.table.version().unwrap_or_default();
            return Ok((version, snapshot));
        }
        if theirs != ours {
            return Err(LakeError::ConcurrentWriter {
                table: table.clone(),
                pipeline: pipeline.to_string(),
                theirs: theirs.map_or("none".into(), |v| v.to_string()),
                ours: ours.map_or("none".into(), |v| v.to_string()),
            });
        }
        if !retry_on_foreign {
            return result.map_err(|source| LakeError::delta(table, "committing to", source));
        }
        warn!(table = %table, attempt, "another writer (not this pipeline) committed to the table first; committing again on top of it");
    }
}

/// The partition column of tables partitioned by commit date.
pub(crate) const COMMIT_DATE: &str = "_tw_commit_date";

pub(crate) fn is_partitioned_by_date(delta: &DeltaTable) -> bool {
    delta.snapshot().is_ok_and(|s| {
        s.metadata()
            .partition_columns()
            .iter()
            .any(|c| c == COMMIT_DATE)
    })
}

/// `batch` with `_tw_commit_date`: the UTC date of each row's `_tw_commit_ts`.
fn with_commit_date(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use deltalake::arrow::array::Date32Array;
    use deltalake::arrow::datatypes::TimestampMicrosecondType;
    let ts = batch
        .column_by_name("_tw_commit_ts")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| ArrowError::SchemaError("no _tw_commit_ts to partition by".into()))?;
    let days: Date32Array = ts
        .iter()
        .map(|t| t.map(|us| us.div_euclid(86_400_000_000) as i32))
        .collect();
    with_date_column(batch, COMMIT_DATE, days)
}

/// `batch` with a nullable Date32 column `name` appended.
pub(crate) fn with_date_column(
    batch: &RecordBatch,
    name: &str,
    days: deltalake::arrow::array::Date32Array,
) -> Result<RecordBatch, ArrowError> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        name,
        deltalake::arrow::datatypes::DataType::Date32,
        true,
    ));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(days));
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(
            fields,
            batch.schema().metadata().clone(),
        )),
        columns,
    )
}

/// Runs a lake operation, turning a panic inside the Delta or object-store
/// libraries (seen: object_store's buffered upload panicking in its abort
/// path after its retries ran out) into a transient error: the pipeline
/// restarts from its durable marks instead of dying.
async fn guarded<T>(
    table: &TableId,
    action: &'static str,
    work: impl std::future::Future<Output = Result<T, LakeError>>,
) -> Result<T, LakeError> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(LakeError::Panicked {
            table: table.clone(),
            action,
            what: panic_text(panic.as_ref()),
        }),
    }
}

/// The message of a panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// The mark the newest commit of `pipeline` in `delta` recorded.
async fn newest_mark(delta: &DeltaTable, pipeline: &str) -> Option<Mark> {
    let mut history = delta.history(Some(1));
    let info = history.try_next().await.ok()??;
    if info_text(&info.info, KEY_PIPELINE).as_deref() != Some(pipeline) {
        return None;
    }
    info_mark(&info.info, KEY_SEQ, KEY_ORD)
}

/// A text value of a commit's `commitInfo`, where tidewater keeps its marks.
pub(crate) fn info_text(info: &HashMap<String, Value>, key: &str) -> Option<String> {
    info.get(key).and_then(Value::as_str).map(str::to_string)
}

/// What one lookup by key read (for the debug line and the tests).
#[derive(Debug, Default, Clone, Copy)]
struct LookupReport {
    /// Data files of the table, and their bytes.
    files: usize,
    file_bytes: u64,
    /// Files whose statistics may hold a wanted key.
    files_read: usize,
    /// Rows whose key and mark columns were read (candidate pages).
    rows_scanned: usize,
    fetched_bytes: u64,
}

/// The mark a commit recorded under `seq_key` / `ord_key`.
pub(crate) fn info_mark(
    info: &HashMap<String, Value>,
    seq_key: &str,
    ord_key: &str,
) -> Option<Mark> {
    let number = |key: &str| info_text(info, key).and_then(|s| s.parse::<u64>().ok());
    Some(Mark::new(number(seq_key)?, number(ord_key)?))
}

/// The data files of a table's current version, as object paths below the
/// table.
/// A reader of a Parquet file's top-level columns named in `names`.
fn data_files(delta: &DeltaTable, table: &TableId) -> Result<Vec<deltalake::Path>, LakeError> {
    Ok(delta
        .snapshot()
        .map_err(|source| LakeError::delta(table, "listing the files of", source))?
        .log_data()
        .iter()
        .map(|f| f.object_store_path())
        .collect())
}

/// A whole object (a data file) from the table's store: local disk or S3.
async fn read_object(
    store: &dyn deltalake::ObjectStore,
    path: &deltalake::Path,
    table: &TableId,
) -> Result<bytes::Bytes, LakeError> {
    let remote = |source| LakeError::Remote {
        location: format!("{table}: {path}"),
        source: Box::new(source),
    };
    use deltalake::logstore::object_store::ObjectStoreExt;
    store
        .get(path)
        .await
        .map_err(remote)?
        .bytes()
        .await
        .map_err(remote)
}

/// What every commit of this pipeline carries: its application transaction
/// (version `commits`) and the table's mark, position, snapshot state and
/// schema version — what a restart reads back.
fn commit_properties(
    app_id: &str,
    pipeline: &str,
    commits: i64,
    mark: Mark,
    position: &str,
    snapshot_done: bool,
    schema_version: u64,
) -> CommitProperties {
    let metadata: HashMap<String, Value> = HashMap::from([
        (KEY_PIPELINE.to_string(), Value::from(pipeline)),
        (KEY_SEQ.to_string(), Value::from(mark.seq.to_string())),
        (KEY_ORD.to_string(), Value::from(mark.ord.to_string())),
        (KEY_POSITION.to_string(), Value::from(position)),
        (
            KEY_SNAPSHOT.to_string(),
            Value::from(if snapshot_done { "done" } else { "running" }),
        ),
        (
            KEY_SCHEMA_VERSION.to_string(),
            Value::from(schema_version.to_string()),
        ),
    ]);
    CommitProperties::default()
        .with_application_transaction(Transaction::new(app_id, commits))
        .with_metadata(metadata)
}

impl Sink for LakeSink {
    type Error = LakeError;

    fn staged_bytes(&self) -> u64 {
        self.tables
            .values()
            .map(|open| {
                open.adds.iter().map(|a| a.size.max(0) as u64).sum::<u64>()
                    + open.staging.as_ref().map_or(0, Staging::encoded)
            })
            .sum()
    }

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), LakeError> {
        self.ensure_table(schema)
            .await
            .map_err(|err| self.located(err))
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, LakeError> {
        match self.table_state(table).await {
            Ok(state) => Ok(state.map(|state| state.mark)),
            Err(err) => Err(self.located(err)),
        }
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), LakeError> {
        LakeSink::write(self, batch).await
    }

    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, LakeError> {
        LakeSink::latest_rows(self, schema, keys).await
    }

    async fn forget(
        &mut self,
        table: &TableId,
        keys: &std::collections::HashSet<u128>,
    ) -> Result<Option<tidewater_core::Erased>, LakeError> {
        LakeSink::forget(self, table, keys).await.map(Some)
    }

    async fn maintain(&mut self) {
        LakeSink::maintain(self).await
    }

    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String) {
        self.pending_ddl
            .entry(table.clone())
            .or_default()
            .push((seq, statement));
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        self.table_phases.insert(table.clone(), (phase, mark));
    }

    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, LakeError> {
        LakeSink::commit(self, position, phase).await
    }
}

/// Source columns plus the metadata columns.
/// Gives the batch's fields the table's metadata where only the metadata
/// differs; returns the batch and the fields (with their new metadata) that
/// were re-tagged.
/// Records the batch's columns, as they land, in the table's schema
/// history when they differ from its latest version.
fn record_history(open: &mut LakeTable, batch: &ChangeBatch, landed: &Schema, ddl: Option<String>) {
    let columns: Vec<HistoryColumn> = batch
        .schema
        .columns
        .iter()
        .zip(landed.fields().iter())
        .map(|(column, field)| HistoryColumn {
            name: column.name.clone(),
            lake_column: field.name().clone(),
            lake_type: field.data_type().to_string(),
            source_type: column.source_type.clone(),
            key: column.key,
        })
        .collect();
    let first = |name: &str| -> String {
        let Some(array) = batch.batch.column_by_name(name) else {
            return String::new();
        };
        if array.is_empty() {
            return String::new();
        }
        deltalake::arrow::util::display::array_value_to_string(array, 0).unwrap_or_default()
    };
    let notes: Vec<String> = columns
        .iter()
        .filter(|c| c.lake_column != c.name)
        .map(|c| {
            format!(
                "{} is now {}, which its earlier lake column cannot hold in place: \
                 its values from here on are in {}",
                c.name, c.source_type, c.lake_column
            )
        })
        .collect();
    if open
        .history
        .record(columns, first("_tw_seq"), first("_tw_position"), notes, ddl)
    {
        open.history_dirty = true;
    }
    open.schema_version = open.history.latest().map_or(0, |v| v.version);
}

/// Renames each batch column whose type differs from the table's column of
/// that name to the table's newest version of that source column with the
/// batch's type, or to a new version `<name>__v<n>` (tagged with
/// [`KEY_SOURCE_COLUMN`]) when there is none. Stable across restarts: the
/// mapping is read back from the table's own schema.
fn version_columns(
    table_id: &TableId,
    batch: RecordBatch,
    table: &Schema,
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let mut changed = false;
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let Ok(existing) = table.field_with_name(f.name()) else {
                return f.as_ref().clone();
            };
            if existing.data_type() == f.data_type() {
                return f.as_ref().clone();
            }
            changed = true;
            let versions: Vec<&Field> = table
                .fields()
                .iter()
                .filter(|t| {
                    t.metadata().get(KEY_SOURCE_COLUMN).map(String::as_str) == Some(f.name())
                })
                .map(|t| t.as_ref())
                .collect();
            let mut metadata = f.metadata().clone();
            metadata.insert(KEY_SOURCE_COLUMN.to_string(), f.name().clone());
            if let Some(version) = versions
                .iter()
                .rev()
                .find(|v| v.data_type() == f.data_type())
            {
                return f
                    .as_ref()
                    .clone()
                    .with_name(version.name())
                    .with_metadata(metadata);
            }
            let mut n = versions.len() + 2;
            while table
                .field_with_name(&format!("{}__v{n}", f.name()))
                .is_ok()
            {
                n += 1;
            }
            let name = format!("{}__v{n}", f.name());
            warn!(
                table = %table_id,
                column = %f.name(),
                from = %existing.data_type(),
                to = %f.data_type(),
                lake_column = %name,
                "column type changed in a way the lake cannot widen in place: \
                 its values go to a new column from here on (readers: coalesce the versions)"
            );
            f.as_ref().clone().with_name(name).with_metadata(metadata)
        })
        .collect();
    if !changed {
        return Ok(batch);
    }
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        batch.schema().metadata().clone(),
    ));
    RecordBatch::try_new(schema, batch.columns().to_vec())
}

/// The union of two schemas of one table, `earlier`'s columns first. Where
/// a column is in both with one type, `later`'s field metadata wins: a source
/// type spelt anew (`varchar(10)` → `varchar(200)`, or `int(11)` in a lake an
/// earlier release wrote → `int`) is a change of the column's description,
/// never a reason to fail the write. Only two types for one column fail (the
/// versioned columns keep that from happening).
fn merge_later_tags_win(
    earlier: &Schema,
    later: &Schema,
) -> Result<Schema, deltalake::arrow::error::ArrowError> {
    let fields: Vec<Field> = earlier
        .fields()
        .iter()
        .map(|f| match later.field_with_name(f.name()) {
            Ok(newer) if newer.data_type() == f.data_type() => {
                f.as_ref().clone().with_metadata(newer.metadata().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let mut metadata = earlier.metadata().clone();
    metadata.extend(later.metadata().clone());
    let later = Schema::new_with_metadata(later.fields().clone(), metadata.clone());
    Schema::try_merge([Schema::new_with_metadata(fields, metadata), later])
}

fn align_metadata(
    batch: RecordBatch,
    table: &Schema,
) -> Result<(RecordBatch, Vec<Field>), deltalake::arrow::error::ArrowError> {
    let mut retagged = Vec::new();
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match table.field_with_name(f.name()) {
            Ok(existing)
                if existing.data_type() == f.data_type() && existing.metadata() != f.metadata() =>
            {
                retagged.push(f.as_ref().clone());
                f.as_ref()
                    .clone()
                    .with_metadata(existing.metadata().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    if retagged.is_empty() {
        return Ok((batch, retagged));
    }
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        batch.schema().metadata().clone(),
    ));
    Ok((
        RecordBatch::try_new(schema, batch.columns().to_vec())?,
        retagged,
    ))
}

fn lake_schema(schema: &TableSchema) -> Schema {
    let mut fields: Vec<_> = schema.columns.iter().map(arrow_field).collect();
    fields.extend(metadata_fields());
    Schema::new(fields)
}

async fn read_state(
    delta: &DeltaTable,
    app_id: &str,
    pipeline: &str,
) -> Result<Option<TableState>, DeltaTableError> {
    let snapshot = delta.snapshot()?;
    let Some(commits) = snapshot
        .transaction_version(delta.log_store().as_ref(), app_id)
        .await?
    else {
        return Ok(None);
    };
    let version = delta.version().unwrap_or_default();
    let mut history = delta.history(None);
    while let Some(info) = history.try_next().await? {
        let text = |key: &str| info_text(&info.info, key);
        if text(KEY_PIPELINE).as_deref() != Some(pipeline) {
            continue;
        }
        let (Some(mark), Some(position)) =
            (info_mark(&info.info, KEY_SEQ, KEY_ORD), text(KEY_POSITION))
        else {
            return Err(DeltaTableError::Generic(format!(
                "commit of pipeline {pipeline} lacks its tidewater mark"
            )));
        };
        return Ok(Some(TableState {
            mark,
            position,
            snapshot_done: text(KEY_SNAPSHOT).as_deref() == Some("done"),
            version,
            commits,
        }));
    }
    Err(DeltaTableError::Generic(format!(
        "table has transaction {commits} of {app_id} but no commit info of pipeline {pipeline}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::datatypes::DataType;

    fn tagged(name: &str, ty: DataType, source_type: &str) -> Field {
        Field::new(name, ty, true).with_metadata(HashMap::from([(
            tidewater_core::SOURCE_TYPE_KEY.to_string(),
            source_type.to_string(),
        )]))
    }

    /// Issue 18 (2): the schema evolved earlier in a commit said `int`, a later
    /// batch `int(11)` (or a lake an earlier release wrote says `int(11)`):
    /// the merge keeps the later spelling instead of failing the write.
    #[test]
    fn a_respelt_source_type_merges_with_the_later_spelling() {
        let earlier = Schema::new(vec![
            tagged("id", DataType::Int32, "int"),
            tagged("b", DataType::Utf8, "varchar(10)"),
        ]);
        let later = Schema::new(vec![
            tagged("id", DataType::Int32, "int(11)"),
            tagged("b", DataType::Utf8, "varchar(10)"),
            tagged("bb", DataType::Utf8, "varchar(200)"),
        ]);
        assert!(Schema::try_merge([earlier.clone(), later.clone()]).is_err());
        let merged = merge_later_tags_win(&earlier, &later).expect("merges");
        let names: Vec<&str> = merged.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "b", "bb"]);
        let spelling = |name: &str| {
            merged.field_with_name(name).unwrap().metadata()[tidewater_core::SOURCE_TYPE_KEY]
                .clone()
        };
        assert_eq!(spelling("id"), "int(11)");
        assert_eq!(spelling("bb"), "varchar(200)");
        // Two types for one column are still refused.
        let retyped = Schema::new(vec![tagged("id", DataType::Int64, "bigint")]);
        assert!(merge_later_tags_win(&earlier, &retyped).is_err());
    }
}
