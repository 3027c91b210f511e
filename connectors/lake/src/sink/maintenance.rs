//! Keeping lake tables healthy while they grow: small files are compacted,
//! files no version needs any more are deleted — off the commit path, so
//! that neither holds the stream for longer than a commit.
//!
//! ```text
//!  pipeline task, between its own commits          tasks of their own
//!  ──────────────────────────────────────          ──────────────────
//!  maintain():
//!   1. reap a finished compaction ◀──────────── CompactionJob::run: read the
//!      does its plan still hold? (every file      group's files, write the
//!      it removes still live, the schema          compacted file(s) through a
//!      unchanged since the plan)                  clone of the table; no commit
//!        yes: one commit, remove(old files) +
//!             add(new files), dataChange=false,
//!             with the table's CURRENT mark and
//!             position (a restart reads the same)
//!        no:  dropped: its files were never
//!             committed, vacuum deletes them
//!   2. plan the next group: ≥ min_files files
//!      below the target size, binned per
//!      partition into about the target ───────▶ spawn (one compaction at a time)
//!   3. plan a vacuum: the live files, and
//!      two cut-offs ───────────────────────────▶ VacuumJob::run: tombstones from
//!                                                 the log, list the table's files,
//!                                                 delete the old unneeded ones
//!   4. plan current-state merges ─────────────▶ MergeJob::run (see `current`)
//! ```
//!
//! Why in two halves: reading and rewriting a group of files, or listing
//! and deleting a table's files, costs what the table costs; the pipeline
//! stops while it runs (it is its task that commits the stream). A plan is
//! cheap (the snapshot in memory), and so is the one commit of a finished
//! compaction — that commit is the only step on the commit path. The stream
//! commits while a compaction runs: those commits only add files, so the
//! group's files are still live and its rows still once in the table when
//! the compaction commits on top of them with the latest mark and position.
//! Anything that breaks the plan (a file of the group removed by another
//! writer, a schema change the compacted files do not carry) drops it.
//!
//! Vacuum writes no Delta commit (delta-rs's VACUUM writes two, which would
//! race with the pipeline's). It deletes a file only when all of these hold:
//! it is not live in the planned snapshot (nor a deletion vector of a live
//! file); it is not a file removed by a commit within the retention; it is
//! not hidden (a name starting with `_` or `.`, like `_delta_log/` and
//! tidewater's own files, partition directories excepted); and it was last
//! modified before the plan minus the retention (minus a margin for
//! storage clocks). A file written after the plan — the stream's next
//! commits, a compaction that runs meanwhile — is therefore never touched,
//! whatever the retention; nor is the output of a compaction planned before
//! the vacuum and not yet committed (the cut-off is moved back to its plan).
//!
//! Readers see the same rows before and after a compaction — it only changes
//! which files hold them, in one atomic commit — and a reader still on an
//! older version keeps its files: only vacuum deletes files, and only those
//! removed longer ago than the retention. Delta checkpoints come from the
//! commit itself (every `delta.checkpointInterval` commits, 100 by default)
//! and the log expires after `delta.logRetentionDuration` (30 days), both as
//! the Delta protocol defines them.
//!
//! A crash (or a shutdown) while a compaction or a vacuum runs loses
//! nothing: a compaction's files are invisible until its commit, which the
//! next run does not repeat (it plans from the table as it finds it); a
//! vacuum deletes only files no reader of a version within the retention
//! needs.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use deltalake::arrow::array::new_null_array;
use deltalake::kernel::Remove;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::*;

/// How much older than the cut-off a file's last modification must be for
/// vacuum to delete it: S3 reports it to the second, and the storage's clock
/// is not ours.
const STORAGE_CLOCK_MARGIN: Duration = Duration::from_secs(2);

/// When and how small files are rewritten.
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    /// Files below this size are small; groups are cut at about this size.
    pub target_file_bytes: u64,
    /// Compact only when a table has at least this many small files.
    pub min_files: usize,
}

/// What one compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    pub files_removed: usize,
    pub files_added: usize,
    pub rows: usize,
}

/// Partition values of a file, sorted by column.
pub(super) type Partition = Vec<(String, Option<String>)>;

/// A group of one table's small files to rewrite, planned on the sink from
/// its snapshot in memory; [`CompactionJob::run`] does the work on a task
/// of its own.
pub(super) struct CompactionJob {
    pub(super) table: TableId,
    /// The table as of the plan (a clone: writes go through it, never a
    /// commit).
    pub(super) delta: DeltaTable,
    pub(super) partition: Partition,
    /// The files to rewrite, as object paths, with their remove actions.
    pub(super) group: Vec<(deltalake::Path, Remove)>,
    /// Key columns (lake names), whose pages the new file indexes.
    pub(super) keys: Vec<String>,
    /// What the plan assumed of the table's schema.
    pub(super) schema_version: u64,
    pub(super) schema: deltalake::kernel::StructType,
    pub(super) target_file_bytes: u64,
    /// Set for a rewrite that drops change-log rows past
    /// `changelog_retention` (see `retention`), not a compaction.
    pub(super) retention: Option<super::retention::Retention>,
}

/// A compaction's written files, waiting for their commit.
pub(super) struct CompactionOutput {
    pub(super) table: TableId,
    pub(super) adds: Vec<Add>,
    pub(super) removes: Vec<(deltalake::Path, Remove)>,
    pub(super) schema_version: u64,
    pub(super) schema: deltalake::kernel::StructType,
    pub(super) target_file_bytes: u64,
    pub(super) rows: usize,
    /// A retention rewrite: the rows it dropped, and the cut-off (its
    /// commit is a delete, not an optimize).
    pub(super) dropped: Option<(usize, String)>,
}

impl LakeSink {
    /// The tables this sink has open (written to or read in this run).
    pub fn open_tables(&self) -> Vec<TableId> {
        self.tables.keys().cloned().collect()
    }

    /// Rewrites a group of `table`'s small files (about one target file of
    /// them) into one file, in one commit that changes no data; a backlog
    /// takes several calls. Only between the pipeline's own commits
    /// (nothing of the table may be pending); a table with fewer small files
    /// than `min_files` is left alone. The plan, the rewrite and the commit
    /// in one call: [`LakeSink::maintain`] runs the rewrite on a task of its
    /// own instead.
    pub async fn compact(
        &mut self,
        table: &TableId,
        policy: &Compaction,
    ) -> Result<CompactionReport, LakeError> {
        let Some(job) = self.compaction_job(table, policy)? else {
            return Ok(CompactionReport::default());
        };
        let output = job.run().await?;
        self.commit_compaction(output).await
    }

    /// The next group of `table`'s small files to compact, if there is one
    /// (and nothing of the table is pending). Reads nothing: the snapshot in
    /// memory says which files are small.
    pub(super) fn compaction_job(
        &self,
        table: &TableId,
        policy: &Compaction,
    ) -> Result<Option<CompactionJob>, LakeError> {
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        if open.state.is_none()
            || !open.adds.is_empty()
            || open.pending.is_some()
            || open.evolved.is_some()
        {
            return Ok(None);
        }
        let snapshot = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "compacting", source))?;
        let mut small: Vec<(Partition, deltalake::Path, i64, Remove)> = snapshot
            .log_data()
            .iter()
            .filter(|f| (f.size() as u64) < policy.target_file_bytes)
            .map(|f| {
                let mut partition: Partition = f.partition_values_map().into_iter().collect();
                partition.sort();
                (
                    partition,
                    f.object_store_path(),
                    f.size(),
                    f.remove_action(false),
                )
            })
            .collect();
        if small.len() < policy.min_files.max(2) {
            return Ok(None);
        }
        // Groups of one partition and about the target size; a group of one
        // is left as it is.
        small.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<(Partition, Vec<(deltalake::Path, Remove)>)> = Vec::new();
        let mut group_bytes = 0u64;
        for (partition, path, size, remove) in small {
            let fresh = match groups.last() {
                Some((p, _)) => *p != partition || group_bytes >= policy.target_file_bytes,
                None => true,
            };
            if fresh {
                groups.push((partition, Vec::new()));
                group_bytes = 0;
            }
            group_bytes += size.max(0) as u64;
            groups
                .last_mut()
                .expect("one group at least")
                .1
                .push((path, remove));
        }
        // One group per plan (about one target file): the stream commits
        // between groups instead of waiting for a whole backlog.
        let Some((partition, group)) = groups.into_iter().find(|(_, g)| g.len() > 1) else {
            return Ok(None);
        };
        let keys: Vec<String> = open.key_columns();
        Ok(Some(CompactionJob {
            table: table.clone(),
            delta: open.table.clone(),
            partition,
            group,
            keys,
            schema_version: open.schema_version,
            schema: snapshot.schema().as_ref().clone(),
            target_file_bytes: policy.target_file_bytes,
            retention: None,
        }))
    }

    /// Commits a finished compaction on top of the table as it is now —
    /// with its current mark, position and schema version, so a restart
    /// reads the same state — when its plan still holds: every file it
    /// removes still live, the schema what it was. Otherwise the compaction
    /// is dropped (an empty report); its files, never committed, go with
    /// the next vacuum.
    pub(super) async fn commit_compaction(
        &mut self,
        output: CompactionOutput,
    ) -> Result<CompactionReport, LakeError> {
        let app_id = self.app_id();
        let pipeline = self.pipeline.clone();
        let table = &output.table;
        let none = CompactionReport::default();
        let Some(open) = self.tables.get_mut(table) else {
            info!(table = %table, "compaction dropped: the table was closed meanwhile");
            return Ok(none);
        };
        let Some(state) = open.state.clone() else {
            return Ok(none);
        };
        if !open.adds.is_empty() || open.pending.is_some() || open.evolved.is_some() {
            info!(table = %table, "compaction dropped: the table has changes pending");
            return Ok(none);
        }
        let snapshot = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "compacting", source))?;
        if open.schema_version != output.schema_version
            || snapshot.schema().as_ref() != &output.schema
        {
            info!(table = %table, "compaction dropped: the table's schema changed while it ran; its files are left for vacuum");
            return Ok(none);
        }
        let live: HashSet<deltalake::Path> = snapshot
            .log_data()
            .iter()
            .map(|f| f.object_store_path())
            .collect();
        if let Some((gone, _)) = output.removes.iter().find(|(p, _)| !live.contains(p)) {
            info!(table = %table, file = %gone, "compaction dropped: a file it rewrote was removed meanwhile; its files are left for vacuum");
            return Ok(none);
        }
        let report = CompactionReport {
            files_removed: output.removes.len(),
            files_added: output.adds.len(),
            rows: output.rows,
        };
        if output.removes.is_empty() {
            // A retention pass that found nothing to drop.
            return Ok(none);
        }
        let operation = match &output.dropped {
            Some((_, cutoff)) => DeltaOperation::Delete {
                predicate: Some(format!(
                    "_tw_commit_ts < '{cutoff}' and a later change of the key (changelog_retention)"
                )),
            },
            None => DeltaOperation::Optimize {
                predicate: None,
                target_size: output.target_file_bytes as i64,
            },
        };
        // The files leave the table now: the retention counts from here.
        let removed_at = chrono::Utc::now().timestamp_millis();
        let mut actions: Vec<Action> = output.adds.into_iter().map(Action::Add).collect();
        actions.extend(output.removes.into_iter().map(|(_, mut remove)| {
            remove.deletion_timestamp = Some(removed_at);
            Action::Remove(remove)
        }));
        let commits = state.commits + 1;
        let properties = commit_properties(
            &app_id,
            &pipeline,
            commits,
            state.mark,
            &state.position,
            state.snapshot_done,
            open.schema_version,
        );
        let (version, snapshot) = commit_actions(
            open, table, &app_id, &pipeline, state.mark, properties, actions, false, operation,
        )
        .await?;
        open.table.state = Some(snapshot);
        open.state = Some(TableState {
            version,
            commits,
            ..state
        });
        match output.dropped {
            Some((dropped, cutoff)) => info!(
                table = %table,
                files_removed = report.files_removed,
                files_added = report.files_added,
                rows_kept = report.rows,
                rows_dropped = dropped,
                cutoff = %cutoff,
                version,
                "dropped change-log rows past changelog_retention"
            ),
            None => info!(
                table = %table,
                files_removed = report.files_removed,
                files_added = report.files_added,
                rows = report.rows,
                version,
                "compacted small files"
            ),
        }
        Ok(report)
    }
}

impl CompactionJob {
    /// Reads the group's files and writes their rows into new files of the
    /// table — uncommitted, invisible to every reader until
    /// [`LakeSink::commit_compaction`].
    pub(super) async fn run(self) -> Result<CompactionOutput, LakeError> {
        if self.retention.is_some() {
            return self.run_retention().await;
        }
        let table = &self.table;
        let delta = |what: &'static str| move |source| LakeError::delta(table, what, source);
        let store = self.delta.log_store().object_store(None);
        // Read by ranges, a row group at a time: memory holds the output
        // file being written, not the group's input files as well.
        let files: Vec<ranged::DataFile> = self
            .group
            .iter()
            .map(|(path, remove)| ranged::DataFile {
                path: path.clone(),
                size: remove.size.and_then(|s| u64::try_from(s).ok()),
                stats: None,
            })
            .collect();
        let mut footers = Vec::with_capacity(files.len());
        for file in &files {
            footers.push(ranged::footer(store.clone(), file, table).await?);
        }
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let properties = merged_properties(&footers, &keys);
        let mut writer = RecordBatchWriter::for_table(&self.delta)
            .map_err(delta("compacting"))?
            .with_writer_properties(properties);
        let schema = writer.arrow_schema();
        let mut rows = 0;
        let fetched = Arc::default();
        for file in &files {
            let (mut stream, _) = ranged::read_parts(
                store.clone(),
                file,
                table,
                None,
                ranged::Rows::All,
                &fetched,
            )
            .await?;
            while let Some(batch) = ranged::next_batch(&mut stream, table, &file.path).await? {
                // Partition values live in the log, not in the files.
                let batch = with_partition_values(table, &batch, &self.partition)?;
                let batch = align_batch(table, &batch, &schema)?;
                rows += batch.num_rows();
                writer
                    .write_with_mode(batch, WriteMode::Default)
                    .await
                    .map_err(delta("compacting"))?;
            }
        }
        let mut adds = writer.flush().await.map_err(delta("compacting"))?;
        for add in &mut adds {
            add.data_change = false;
        }
        Ok(CompactionOutput {
            table: self.table,
            adds,
            removes: self.group,
            schema_version: self.schema_version,
            schema: self.schema,
            target_file_bytes: self.target_file_bytes,
            rows,
            dropped: None,
        })
    }
}

/// A vacuum of one table, planned on the sink: which files the table's
/// snapshot needs, and the cut-offs. [`VacuumJob::run`] lists and deletes.
pub(super) struct VacuumJob {
    table: TableId,
    /// The table as of the plan.
    delta: DeltaTable,
    /// Live data files and their deletion vector files.
    live: HashSet<deltalake::Path>,
    partition_columns: Vec<String>,
    /// Files removed at or after this (ms since the epoch) are kept.
    removed_since_ms: i64,
    /// Only files last modified before this (ms since the epoch) may go.
    modified_before_ms: i64,
}

impl LakeSink {
    /// Deletes `table`'s files that no version younger than `retention`
    /// needs: files removed (by compaction) longer ago, and files never
    /// committed (a crash between write and commit, a dropped compaction)
    /// older than it. The plan and the work in one call: [`LakeSink::maintain`]
    /// runs the work on a task of its own instead.
    pub async fn vacuum(
        &mut self,
        table: &TableId,
        retention: Duration,
    ) -> Result<usize, LakeError> {
        match self.vacuum_job(table, retention, SystemTime::now())? {
            Some(job) => job.run().await,
            None => Ok(0),
        }
    }

    /// What a vacuum of `table` at `now` may delete (see the module doc).
    /// None when nothing of the table is committed or something is pending.
    pub(super) fn vacuum_job(
        &self,
        table: &TableId,
        retention: Duration,
        now: SystemTime,
    ) -> Result<Option<VacuumJob>, LakeError> {
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        if open.state.is_none() || !open.adds.is_empty() || open.pending.is_some() {
            return Ok(None);
        }
        // The output of a compaction planned earlier and not committed yet
        // was written after its plan.
        let since = match &self.clock.compaction {
            Some(task) if task.table == *table => now.min(task.planned_at),
            _ => now,
        };
        plan_vacuum(table, &open.table, retention, now, since).map(Some)
    }
}

/// What a vacuum of `delta` (`table`'s change log, or its current-state
/// table) at `now` may delete: files removed longer than `retention` ago,
/// and files never committed last modified longer than `retention` before
/// `since` (no write after `since` is uncommitted and may be in flight).
pub(super) fn plan_vacuum(
    table: &TableId,
    delta: &DeltaTable,
    retention: Duration,
    now: SystemTime,
    since: SystemTime,
) -> Result<VacuumJob, LakeError> {
    let snapshot = delta
        .snapshot()
        .map_err(|source| LakeError::delta(table, "vacuuming", source))?;
    let mut root = delta.table_url().clone();
    if !root.path().ends_with('/') {
        // Relative deletion vector paths resolve against a directory.
        root.set_path(&format!("{}/", root.path()));
    }
    let mut live = HashSet::new();
    for file in snapshot.log_data().iter() {
        live.insert(file.object_store_path());
        if let Some(path) = deletion_vector_path(table, &file, &root)? {
            live.insert(path);
        }
    }
    let millis = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    Ok(VacuumJob {
        table: table.clone(),
        delta: delta.clone(),
        live,
        partition_columns: snapshot.metadata().partition_columns().to_vec(),
        removed_since_ms: millis(now).saturating_sub(retention_ms),
        modified_before_ms: millis(since)
            .saturating_sub(retention_ms)
            .saturating_sub(STORAGE_CLOCK_MARGIN.as_millis() as i64),
    })
}

impl VacuumJob {
    /// Deletes the files the plan allows; how many.
    pub(super) async fn run(self) -> Result<usize, LakeError> {
        use deltalake::logstore::object_store::ObjectStoreExt;
        let table = &self.table;
        let delta = |source| LakeError::delta(table, "vacuuming", source);
        let log_store = self.delta.log_store();
        let snapshot = self.delta.snapshot().map_err(delta)?;
        // Files removed within the retention: a reader of a version since
        // may still read them.
        let mut kept = HashSet::new();
        let mut tombstones = snapshot.all_tombstones(log_store.as_ref());
        while let Some(tombstone) = tombstones.try_next().await.map_err(delta)? {
            if tombstone.deletion_timestamp().unwrap_or(0) >= self.removed_since_ms {
                let path = tombstone.path();
                kept.insert(
                    deltalake::Path::parse(path.as_ref())
                        .unwrap_or_else(|_| deltalake::Path::from(path.as_ref())),
                );
            }
        }
        drop(tombstones);
        let store = log_store.object_store(None);
        let remote = |path: String| {
            move |source| LakeError::Remote {
                location: format!("{table}: {path}"),
                source: Box::new(source),
            }
        };
        let mut doomed = Vec::new();
        let mut listing = store.list(None);
        while let Some(meta) = listing.try_next().await.map_err(remote(String::new()))? {
            let path = &meta.location;
            if hidden(path, &self.partition_columns)
                || self.live.contains(path)
                || kept.contains(path)
                || meta.last_modified.timestamp_millis() >= self.modified_before_ms
            {
                continue;
            }
            doomed.push(meta.location);
        }
        drop(listing);
        let mut deleted = 0;
        for path in doomed {
            match store.delete(&path).await {
                Ok(()) => deleted += 1,
                Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
                Err(source) => return Err(remote(path.to_string())(source)),
            }
        }
        if deleted > 0 {
            info!(table = %table, files = deleted, "deleted files no version needs any more");
        }
        Ok(deleted)
    }
}

/// Whether vacuum leaves `path` (below the table) alone whatever its age,
/// by the Delta rule: a name starting with `_` or `.` is not a data file
/// (`_delta_log/`, tidewater's `_tidewater_*` files, checksums), except
/// partition directories (`_tw_commit_date=…`) and the directories of data
/// files' companions (`_delta_index`, `_change_data`). delta-rs applies the
/// rule to the first segment; here it applies to every one (keeps more).
fn hidden(path: &deltalake::Path, partition_columns: &[String]) -> bool {
    path.parts().any(|part| {
        let name = part.as_ref();
        (name.starts_with('.') || name.starts_with('_'))
            && !name.starts_with("_delta_index")
            && !name.starts_with("_change_data")
            && !partition_columns.iter().any(|column| {
                name.strip_prefix(column.as_str())
                    .is_some_and(|rest| rest.starts_with('='))
            })
    })
}

/// The deletion vector file of a live file, as an object path below the
/// table, when it has one stored in a file there (tidewater writes none;
/// another writer may have).
fn deletion_vector_path(
    table: &TableId,
    file: &deltalake::kernel::LogicalFileView,
    root: &url::Url,
) -> Result<Option<deltalake::Path>, LakeError> {
    let Some(descriptor) = file.deletion_vector_descriptor() else {
        return Ok(None);
    };
    let kernel = |source: delta_kernel::Error| {
        LakeError::delta(table, "vacuuming", DeltaTableError::from(source))
    };
    let descriptor =
        delta_kernel::actions::deletion_vector::DeletionVectorDescriptor::try_from(descriptor)
            .map_err(kernel)?;
    let Some(url) = descriptor.absolute_path(root).map_err(kernel)? else {
        return Ok(None);
    };
    Ok(match root.make_relative(&url) {
        Some(relative) if !relative.starts_with("../") => {
            deltalake::Path::from_url_path(relative).ok()
        }
        _ => None,
    })
}

/// `batch` (read from a data file) with the partition columns of the file
/// it came from (only the commit date is ever partitioned by).
pub(super) fn with_partition_values(
    table: &TableId,
    batch: &RecordBatch,
    partition: &[(String, Option<String>)],
) -> Result<RecordBatch, LakeError> {
    use deltalake::arrow::array::Date32Array;
    let mut batch = batch.clone();
    for (name, value) in partition {
        if name != super::COMMIT_DATE || batch.column_by_name(name).is_some() {
            continue;
        }
        let days = value
            .as_deref()
            .and_then(|v| chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
            .map(|d| {
                (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
            });
        let days = Date32Array::from(vec![days; batch.num_rows()]);
        batch = super::with_date_column(&batch, name, days).map_err(|source| LakeError::Arrow {
            table: table.clone(),
            source,
        })?;
    }
    Ok(batch)
}

/// Writer properties for a file merging `paths`: a column written without
/// statistics in any of them (see [`crate::stats`]) gets none in the merge.
pub(super) fn merged_properties(
    footers: &[Arc<deltalake::parquet::file::metadata::ParquetMetaData>],
    keys: &[&str],
) -> WriterProperties {
    let mut builder = crate::stats::lookup_pages(
        WriterProperties::builder()
            .set_created_by(format!("tidewater {}", env!("CARGO_PKG_VERSION")))
            .set_compression(deltalake::parquet::basic::Compression::SNAPPY),
        keys,
    );
    let mut without = Vec::new();
    for footer in footers {
        for group in footer.row_groups() {
            for column in group.columns() {
                if column.statistics().is_none() && !without.contains(column.column_path()) {
                    without.push(column.column_path().clone());
                }
            }
        }
    }
    for path in without {
        builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    builder.build()
}

fn parquet_error(table: &TableId, error: deltalake::parquet::errors::ParquetError) -> LakeError {
    LakeError::Arrow {
        table: table.clone(),
        source: ArrowError::ExternalError(Box::new(error)),
    }
}

/// Every batch of one data file.
pub(super) fn read_file(
    table: &TableId,
    file: &bytes::Bytes,
) -> Result<Vec<RecordBatch>, LakeError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file.clone())
        .map_err(|e| parquet_error(table, e))?
        .build()
        .map_err(|e| parquet_error(table, e))?;
    reader
        .map(|batch| {
            batch.map_err(|source| LakeError::Arrow {
                table: table.clone(),
                source,
            })
        })
        .collect()
}

/// `batch` with exactly `schema`'s columns: a column an older file does not
/// have (added later) is all NULL, as readers see it through the table schema.
pub(super) fn align_batch(
    table: &TableId,
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, LakeError> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => Err(ArrowError::SchemaError(format!(
                "column {} is {} in a data file and {} in the table",
                field.name(),
                column.data_type(),
                field.data_type()
            ))),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()
        .map_err(|source| LakeError::Arrow {
            table: table.clone(),
            source,
        })?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|source| LakeError::Arrow {
        table: table.clone(),
        source,
    })
}

/// When the sink compacts and vacuums its tables (see [`LakeSink::maintain`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct MaintenancePolicy {
    /// Compaction, and how often to look for small files.
    pub compaction: Option<(Compaction, Duration)>,
    /// Vacuum retention, and how often to vacuum.
    pub vacuum: Option<(Duration, Duration)>,
    /// How often current-state tables are merged from the change logs.
    pub current_state: Option<Duration>,
}

/// When maintenance last ran, and what runs now.
#[derive(Debug)]
pub(super) struct MaintenanceClock {
    compacted: std::time::Instant,
    vacuumed: std::time::Instant,
    merged: std::time::Instant,
    /// When current-state tables were last vacuumed (by their merges).
    current_vacuumed: std::time::Instant,
    /// Current-state merges running, by table.
    merges: crate::merges::Merges,
    /// The compaction running or waiting for its commit (one at a time).
    pub(super) compaction: Option<CompactionTask>,
    /// The table the last compaction was planned for: the next plan looks
    /// at the tables after it first, so a busy table (a small file every
    /// flush) never keeps another's backlog waiting.
    compacted_last: Option<TableId>,
    /// The vacuum running (one at a time, of every open table).
    vacuum: Option<VacuumTask>,
    /// Each table's retention pass: when it started (or last ended), and
    /// the first `_tw_seq` of the files it has done (a pass goes on from
    /// there until no file is left, then waits `retention_every`).
    retained: std::collections::HashMap<TableId, (std::time::Instant, Option<i64>)>,
}

impl Default for MaintenanceClock {
    fn default() -> Self {
        let now = std::time::Instant::now();
        Self {
            compacted: now,
            vacuumed: now,
            // Due at once: a start (after `tidewater snapshot`, which does
            // not merge) brings the current state up at its first chance.
            current_vacuumed: now,
            merged: now
                .checked_sub(std::time::Duration::from_secs(86_400))
                .unwrap_or(now),
            merges: Default::default(),
            compaction: None,
            compacted_last: None,
            vacuum: None,
            retained: Default::default(),
        }
    }
}

impl MaintenanceClock {
    /// Stops the background work on `table` (its directory is going away).
    pub(super) fn forget(&mut self, table: &TableId) {
        self.merges.forget(table);
        if self.compaction.as_ref().is_some_and(|t| t.table == *table) {
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

/// A compaction's rewrite running on a task of its own; its commit is the
/// sink's. Dropped, it is cancelled: its files stay uncommitted (vacuum
/// deletes them) and a later plan starts again from the table as it is.
#[derive(Debug)]
pub(super) struct CompactionTask {
    table: TableId,
    /// When it was planned: its files are younger (see [`VacuumJob`]).
    planned_at: SystemTime,
    pub(super) handle: tokio::task::JoinHandle<Result<CompactionOutput, LakeError>>,
}

impl Drop for CompactionTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl std::fmt::Debug for CompactionOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactionOutput")
            .field("table", &self.table)
            .field("files_added", &self.adds.len())
            .field("files_removed", &self.removes.len())
            .finish_non_exhaustive()
    }
}

/// A vacuum of the open tables, one after the other, on a task of its own.
/// Dropped, it is cancelled: what it deleted no version needs, and the next
/// interval goes on.
#[derive(Debug)]
pub(super) struct VacuumTask {
    tables: Vec<TableId>,
    handle: tokio::task::JoinHandle<Vec<(TableId, Result<usize, LakeError>)>>,
}

impl Drop for VacuumTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// What reaping the compaction task found.
enum Reaped {
    /// Nothing ended (or nothing ran).
    Nothing,
    /// Committed, or dropped because its plan no longer held: plan again.
    Done,
    /// The rewrite or its commit failed: try again at the next interval.
    Failed,
}

impl LakeSink {
    /// Logs the outcome of the merges that ended.
    async fn reap_merges(&mut self) {
        self.clock.merges.reap("").await;
    }

    /// Runs `job`'s rewrite on a task of its own; [`LakeSink::maintain`]
    /// commits it once it ended.
    pub(super) fn start_compaction(&mut self, job: CompactionJob) {
        debug!(table = %job.table, files = job.group.len(), "compaction started");
        self.clock.compaction = Some(CompactionTask {
            table: job.table.clone(),
            planned_at: SystemTime::now(),
            handle: tokio::spawn(job.run()),
        });
    }

    /// Commits the compaction whose rewrite ended (between the pipeline's
    /// commits: nothing of its table pending).
    async fn reap_compaction(&mut self) -> Reaped {
        let Some(task) = self.clock.compaction.as_ref() else {
            return Reaped::Nothing;
        };
        if !task.handle.is_finished() {
            return Reaped::Nothing;
        }
        if let Some(open) = self.tables.get(&task.table) {
            if !open.adds.is_empty() || open.pending.is_some() || open.evolved.is_some() {
                // Its commit waits for the table's.
                return Reaped::Nothing;
            }
        }
        let Some(mut task) = self.clock.compaction.take() else {
            return Reaped::Nothing;
        };
        let table = task.table.clone();
        debug!(table = %table, "compaction ended");
        let output = match (&mut task.handle).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                warn!(table = %table, error = %tidewater_core::error_chain(&error), "compaction failed; the table is unchanged, trying again later");
                return Reaped::Failed;
            }
            Err(join) => {
                warn!(table = %table, error = %join, "the compaction task died; the table is unchanged, trying again later");
                return Reaped::Failed;
            }
        };
        match self.commit_compaction(output).await {
            Ok(_) => Reaped::Done,
            Err(error) => {
                warn!(table = %table, error = %tidewater_core::error_chain(&error), "committing a compaction failed; the table is unchanged, trying again later");
                // The table's in-memory state may be behind a commit that
                // did happen: read it again.
                self.tables.remove(&table);
                Reaped::Failed
            }
        }
    }

    /// Starts the next retention rewrite of a table whose pass is due (in
    /// the compaction slot, which is free).
    fn plan_retention(&mut self, now: std::time::Instant) {
        let mut tables = self.open_tables();
        tables.sort();
        for table in tables {
            let Some(keep) = self.retention_of(&table) else {
                continue;
            };
            let (started, after) = self
                .clock
                .retained
                .get(&table)
                .copied()
                .unwrap_or((now.checked_sub(self.retention_every).unwrap_or(now), None));
            // A pass in progress goes on; a finished one waits its interval.
            if after.is_none() && now.duration_since(started) < self.retention_every {
                continue;
            }
            match self.retention_job(&table, keep, after.unwrap_or(i64::MIN), SystemTime::now()) {
                Ok(Some(job)) => {
                    let pass_seq = job.retention_pass_seq();
                    self.clock
                        .retained
                        .insert(table.clone(), (started, pass_seq));
                    self.start_compaction(job);
                    return;
                }
                Ok(None) => {
                    // Nothing (more) past the retention: the pass is done.
                    self.clock.retained.insert(table, (now, None));
                }
                Err(error) => {
                    self.clock.retained.insert(table.clone(), (now, None));
                    warn!(table = %table, error = %tidewater_core::error_chain(&error), "the change-log retention pass failed; the table is unchanged, trying again later");
                }
            }
        }
    }

    /// Logs the outcome of the vacuum that ended.
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
                        warn!(table = %table, error = %tidewater_core::error_chain(&error), "vacuum failed; trying again later");
                    }
                }
            }
            Err(join) => warn!(error = %join, "the vacuum task died; trying again later"),
        }
    }

    /// Waits for the running current-state merges to end (tests, and a
    /// snapshot that wants its merge done before it exits).
    pub async fn finish_merges(&mut self) {
        while !self.clock.merges.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.reap_merges().await;
        }
    }

    /// Waits for all background maintenance to end — current-state merges,
    /// a compaction (committed here, so only between the pipeline's
    /// commits), a vacuum — and starts none.
    pub async fn finish_maintenance(&mut self) {
        loop {
            self.reap_merges().await;
            self.reap_compaction().await;
            self.reap_vacuum().await;
            let compaction_waits = self.clock.compaction.as_ref().is_some_and(|task| {
                task.handle.is_finished()
                    && self.tables.get(&task.table).is_some_and(|open| {
                        !open.adds.is_empty() || open.pending.is_some() || open.evolved.is_some()
                    })
            });
            if compaction_waits {
                // Its commit would wait for the table's: let it go.
                self.clock.compaction = None;
            }
            if self.clock.merges.is_empty()
                && self.clock.compaction.is_none()
                && self.clock.vacuum.is_none()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn set_maintenance(&mut self, policy: MaintenancePolicy) {
        self.maintenance = policy;
    }

    /// Merges, compacts and vacuums the open tables when their interval is
    /// due. Called between commits (nothing pending). The work runs on tasks
    /// of their own; here only plans, and the one commit of a compaction
    /// that ended (see the module doc). A failure is logged and retried at
    /// the next interval, since the data is safe either way.
    pub async fn maintain(&mut self) {
        let now = std::time::Instant::now();
        self.reap_merges().await;
        if let Some(every) = self.maintenance.current_state {
            if now.duration_since(self.clock.merged) >= every {
                self.clock.merged = now;
                // The merges of this round also vacuum their tables when a
                // vacuum is due (one clock for all current-state tables).
                let vacuum = self.maintenance.vacuum.and_then(|(retention, every)| {
                    (now.duration_since(self.clock.current_vacuumed) >= every).then(|| {
                        self.clock.current_vacuumed = now;
                        retention
                    })
                });
                for table in self.open_tables() {
                    // One merge of a table at a time; the next interval
                    // picks up what came meanwhile.
                    if self.clock.merges.runs(&table) {
                        continue;
                    }
                    match self.merge_job(&table, vacuum) {
                        Ok(Some(job)) => {
                            self.clock.merges.start(table, job.run());
                        }
                        Ok(None) => {}
                        Err(error) => {
                            warn!(table = %table, error = %tidewater_core::error_chain(&error), "merging the current-state table failed; it stays as it was, trying again later")
                        }
                    }
                }
            }
        }
        let reaped = self.reap_compaction().await;
        if let Some((policy, every)) = self.maintenance.compaction {
            if let Reaped::Failed = reaped {
                self.clock.compacted = now;
            }
            // One group of one table at a time; due again at once while a
            // pass finds work, so a backlog is worked off group by group
            // with the stream's commits in between.
            if self.clock.compaction.is_none() && now.duration_since(self.clock.compacted) >= every
            {
                let mut planned = false;
                let mut tables = self.open_tables();
                tables.sort();
                if let Some(last) = &self.clock.compacted_last {
                    // Round robin: the tables after the last one first.
                    let after = tables.iter().position(|t| t > last).unwrap_or(tables.len());
                    tables.rotate_left(after);
                }
                for table in tables {
                    match self.compaction_job(&table, &policy) {
                        Ok(Some(job)) => {
                            self.start_compaction(job);
                            self.clock.compacted_last = Some(table);
                            planned = true;
                            break;
                        }
                        Ok(None) => {}
                        Err(error) => {
                            warn!(table = %table, error = %tidewater_core::error_chain(&error), "compaction failed; the table is unchanged, trying again later");
                        }
                    }
                }
                if !planned {
                    self.clock.compacted = now;
                }
            }
        }
        if self.clock.compaction.is_none() && !self.retention_rules.is_empty() {
            self.plan_retention(now);
        }
        self.reap_vacuum().await;
        if let Some((retention, every)) = self.maintenance.vacuum {
            if self.clock.vacuum.is_none() && now.duration_since(self.clock.vacuumed) >= every {
                self.clock.vacuumed = now;
                let mut jobs = Vec::new();
                for table in self.open_tables() {
                    match self.vacuum_job(&table, retention, SystemTime::now()) {
                        Ok(Some(job)) => jobs.push(job),
                        Ok(None) => {}
                        Err(error) => {
                            warn!(table = %table, error = %tidewater_core::error_chain(&error), "vacuum failed; trying again later");
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
