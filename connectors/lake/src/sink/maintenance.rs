//! Keeping lake tables healthy while they grow: small files are compacted,
//! files no version needs any more are deleted.
//!
//! ```text
//!  flush ── one small file per table per commit ─┐
//!  compaction: ≥ min_files files below the target size, binned into groups of
//!    about the target ── each group read and rewritten into one file ── one commit:
//!    remove(old files, dataChange=false) + add(new files, dataChange=false),
//!    with the table's own mark and position (a restart reads the same state)
//!  vacuum: files removed longer ago than the retention, and files no commit ever
//!    added (a crash between write and commit) older than it, are deleted
//! ```
//!
//! Readers see the same rows before and after a compaction — it only changes
//! which files hold them, in one atomic commit — and a reader still on an older
//! version keeps its files: only vacuum deletes files, and only those removed
//! longer ago than the retention. Delta checkpoints come from the commit
//! itself (every `delta.checkpointInterval` commits, 100 by default) and the
//! log expires after `delta.logRetentionDuration` (30 days), both as the Delta
//! protocol defines them.

use std::time::Duration;

use deltalake::arrow::array::new_null_array;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::*;

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

impl LakeSink {
    /// The tables this sink has open (written to or read in this run).
    pub fn open_tables(&self) -> Vec<TableId> {
        self.tables.keys().cloned().collect()
    }

    /// Rewrites a group of `table`'s small files (about one target file of
    /// them) into one file, in one commit that changes no data; a backlog
    /// takes several calls. Only between the pipeline's own
    /// commits (nothing of the table may be pending); a table with fewer
    /// small files than `min_files` is left alone.
    pub async fn compact(
        &mut self,
        table: &TableId,
        policy: &Compaction,
    ) -> Result<CompactionReport, LakeError> {
        let app_id = self.app_id();
        let pipeline = self.pipeline.clone();
        let Some(open) = self.tables.get_mut(table) else {
            return Ok(CompactionReport::default());
        };
        let Some(state) = open.state.clone() else {
            return Ok(CompactionReport::default());
        };
        if !open.adds.is_empty() || open.pending.is_some() || open.evolved.is_some() {
            return Ok(CompactionReport::default());
        }
        let delta = |what: &'static str| move |source| LakeError::delta(table, what, source);
        let snapshot = open.table.snapshot().map_err(delta("compacting"))?;
        type Partition = Vec<(String, Option<String>)>;
        let mut small: Vec<(Partition, deltalake::Path, i64, deltalake::kernel::Remove)> = snapshot
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
            return Ok(CompactionReport::default());
        }
        // Groups of one partition and about the target size; a group of one
        // is left as it is.
        small.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<(Partition, Vec<(deltalake::Path, deltalake::kernel::Remove)>)> =
            Vec::new();
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
        groups.retain(|(_, g)| g.len() > 1);
        // One group per call (about one target file): the stream commits
        // between groups instead of waiting for a whole backlog.
        groups.truncate(1);
        let open = self.tables.get_mut(table).expect("checked above");
        let mut actions = Vec::new();
        let mut report = CompactionReport::default();
        let store = open.table.log_store().object_store(None);
        let keys: Vec<String> = open
            .history
            .latest()
            .map(|v| {
                v.columns
                    .iter()
                    .filter(|c| c.key)
                    .map(|c| c.lake_column.clone())
                    .collect()
            })
            .unwrap_or_default();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for (partition, group) in &groups {
            let mut files = Vec::with_capacity(group.len());
            for (path, _) in group {
                files.push(read_object(store.as_ref(), path, table).await?);
            }
            let properties = merged_properties(table, &files, &keys)?;
            let mut writer = RecordBatchWriter::for_table(&open.table)
                .map_err(delta("compacting"))?
                .with_writer_properties(properties);
            let schema = writer.arrow_schema();
            for file in &files {
                for batch in read_file(table, file)? {
                    // Partition values live in the log, not in the files.
                    let batch = with_partition_values(table, &batch, partition)?;
                    let batch = align_batch(table, &batch, &schema)?;
                    report.rows += batch.num_rows();
                    writer
                        .write_with_mode(batch, WriteMode::Default)
                        .await
                        .map_err(delta("compacting"))?;
                }
            }
            for mut add in writer.flush().await.map_err(delta("compacting"))? {
                add.data_change = false;
                actions.push(Action::Add(add));
                report.files_added += 1;
            }
            for (_, remove) in group {
                actions.push(Action::Remove(remove.clone()));
                report.files_removed += 1;
            }
        }
        if actions.is_empty() {
            return Ok(CompactionReport::default());
        }
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
        let finalized = commit_actions(
            open,
            table,
            &app_id,
            &pipeline,
            state.mark,
            properties,
            actions,
            false,
            DeltaOperation::Optimize {
                predicate: None,
                target_size: policy.target_file_bytes as i64,
            },
        )
        .await?;
        let (version, snapshot) = finalized;
        open.table.state = Some(snapshot);
        open.state = Some(TableState {
            version,
            commits,
            ..state
        });
        info!(
            table = %table,
            files_removed = report.files_removed,
            files_added = report.files_added,
            rows = report.rows,
            version,
            "compacted small files"
        );
        Ok(report)
    }

    /// Deletes `table`'s files that no version younger than `retention`
    /// needs: files removed (by compaction) longer ago, and files never
    /// committed (a crash between write and commit) older than it.
    pub async fn vacuum(
        &mut self,
        table: &TableId,
        retention: Duration,
    ) -> Result<usize, LakeError> {
        // Only between commits: uncommitted files of this run are not old
        // enough to go anyway, but keep the rule simple.
        let Some(open) = self.tables.get_mut(table) else {
            return Ok(0);
        };
        if !open.adds.is_empty() || open.pending.is_some() {
            return Ok(0);
        }
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let (vacuumed, metrics) = open
            .table
            .clone()
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map_err(|source| LakeError::delta(table, "vacuuming", source))?;
        let deleted = metrics.files_deleted.len();
        if deleted > 0 {
            info!(table = %table, files = deleted, "deleted files no version needs any more");
        }
        // The vacuum commits are not the pipeline's: its state is unchanged
        // but for the table version.
        if let Some(state) = open.state.as_mut() {
            state.version = vacuumed.version().unwrap_or(state.version);
        }
        open.table = vacuumed;
        Ok(deleted)
    }
}

/// `batch` (read from a data file) with the partition columns of the file
/// it came from (only the commit date is ever partitioned by).
fn with_partition_values(
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
fn merged_properties(
    table: &TableId,
    files: &[bytes::Bytes],
    keys: &[&str],
) -> Result<WriterProperties, LakeError> {
    let mut builder = crate::stats::lookup_pages(
        WriterProperties::builder()
            .set_created_by(format!("tidewater {}", env!("CARGO_PKG_VERSION")))
            .set_compression(deltalake::parquet::basic::Compression::SNAPPY),
        keys,
    );
    let mut without = Vec::new();
    for file in files {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file.clone())
            .map_err(|e| parquet_error(table, e))?;
        for group in builder.metadata().row_groups() {
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
    Ok(builder.build())
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

/// When maintenance last ran.
#[derive(Debug)]
pub(super) struct MaintenanceClock {
    compacted: std::time::Instant,
    vacuumed: std::time::Instant,
    merged: std::time::Instant,
    /// Current-state merges running, by table.
    merges: BTreeMap<TableId, MergeTask>,
}

impl Default for MaintenanceClock {
    fn default() -> Self {
        let now = std::time::Instant::now();
        Self {
            compacted: now,
            vacuumed: now,
            // Due at once: a start (after `tidewater snapshot`, which does
            // not merge) brings the current state up at its first chance.
            merged: now
                .checked_sub(std::time::Duration::from_secs(86_400))
                .unwrap_or(now),
            merges: BTreeMap::new(),
        }
    }
}

/// A current-state merge running on a task of its own (merges never hold
/// the stream: a commit of the log goes on while one runs). Dropped — the
/// sink closed — it is cancelled: a merge is idempotent, its files are
/// uncommitted until its one commit, and the next run starts it again.
#[derive(Debug)]
pub(super) struct MergeTask(tokio::task::JoinHandle<Result<MergeReport, LakeError>>);

impl Drop for MergeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LakeSink {
    /// Logs the outcome of the merges that ended.
    async fn reap_merges(&mut self) {
        let ended: Vec<TableId> = self
            .clock
            .merges
            .iter()
            .filter(|(_, task)| task.0.is_finished())
            .map(|(table, _)| table.clone())
            .collect();
        for table in ended {
            let Some(mut task) = self.clock.merges.remove(&table) else {
                continue;
            };
            match (&mut task.0).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    warn!(table = %table, error = %tidewater_core::error_chain(&error), "merging the current-state table failed; it stays as it was, trying again later")
                }
                Err(join) => {
                    warn!(table = %table, error = %join, "the current-state merge task died; the table stays as it was, trying again later")
                }
            }
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

    pub fn set_maintenance(&mut self, policy: MaintenancePolicy) {
        self.maintenance = policy;
    }

    /// Compacts and vacuums the open tables when their interval is due.
    /// Called between commits (nothing pending); a failure is logged and
    /// retried at the next interval, since the data is safe either way.
    pub async fn maintain(&mut self) {
        let now = std::time::Instant::now();
        self.reap_merges().await;
        if let Some(every) = self.maintenance.current_state {
            if now.duration_since(self.clock.merged) >= every {
                self.clock.merged = now;
                for table in self.open_tables() {
                    // One merge of a table at a time; the next interval
                    // picks up what came meanwhile.
                    if self.clock.merges.contains_key(&table) {
                        continue;
                    }
                    match self.merge_job(&table) {
                        Ok(Some(job)) => {
                            self.clock
                                .merges
                                .insert(table, MergeTask(tokio::spawn(job.run())));
                        }
                        Ok(None) => {}
                        Err(error) => {
                            warn!(table = %table, error = %tidewater_core::error_chain(&error), "merging the current-state table failed; it stays as it was, trying again later")
                        }
                    }
                }
            }
        }
        if let Some((policy, every)) = self.maintenance.compaction {
            if now.duration_since(self.clock.compacted) >= every {
                // One group of one table per call; due again at once while
                // a pass finds work, so a backlog is worked off between
                // commits rather than in one long stop of the stream.
                let mut worked = false;
                for table in self.open_tables() {
                    match self.compact(&table, &policy).await {
                        Ok(report) if report.files_removed > 0 => {
                            worked = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            warn!(table = %table, error = %tidewater_core::error_chain(&error), "compaction failed; the table is unchanged, trying again later");
                            // The table's in-memory state may be behind a
                            // commit that did happen: read it again.
                            self.tables.remove(&table);
                        }
                    }
                }
                if !worked {
                    self.clock.compacted = now;
                }
            }
        }
        if let Some((retention, every)) = self.maintenance.vacuum {
            if now.duration_since(self.clock.vacuumed) >= every {
                self.clock.vacuumed = now;
                for table in self.open_tables() {
                    if let Err(error) = self.vacuum(&table, retention).await {
                        warn!(table = %table, error = %tidewater_core::error_chain(&error), "vacuum failed; trying again later");
                        self.tables.remove(&table);
                    }
                }
            }
        }
    }
}
