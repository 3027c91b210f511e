//! Current-state tables: next to each change log, a Delta table with one row
//! per key — the latest image, deletes removed — at
//! `<uri>/<pipeline>.current/<schema>/<table>` (pipeline names have no dots,
//! so that directory belongs to no pipeline's change logs).
//!
//! ```text
//!  change log (committed up to mark M) ──┐
//!  current table (merged up to mark M0) ─┤ merge, every current_state_interval_ms:
//!    1. log files whose mark maxima pass M0 (Delta statistics): their key
//!       and mark columns; the latest change per key after M0 (and the last
//!       truncate)
//!    2. current files whose key statistics may hold a changed key are read
//!       one at a time and rewritten without it (all files go after a truncate);
//!       the others are not even opened. With deletion vectors on
//!       (`sink.current_state_deletion_vectors`, see `dv`) the file is not
//!       rewritten: its rows of changed keys are marked deleted in a DV and
//!       the file re-added with it (rewritten after all once more than half
//!       of it would be deleted)
//!    3. the latest images that are not deletes (with `sink.soft_deletes`,
//!       deletes too, flagged `_tw_deleted`): only their rows (pages) of
//!       the log files holding them
//!    4. one commit: removes + adds + "merged up to M" (+ its own app txn);
//!       a file marked in step 2 is a remove naming its old DV and an add
//!       of the same path with the new one (all DVs in one DV file)
//! ```
//!
//! So a merge reads what changed since the last one, not the whole history,
//! and holds the changed keys plus one current file in memory (files are
//! written in the sink's target file size). Current files whose key ranges
//! overlap every change (keys spread evenly over the whole table) are all
//! rewritten: copy-on-write costs what the touched files cost; with
//! deletion vectors a touched file costs its key column and a DV. Every
//! read of a current file here applies its DV (rows it deletes are gone).
//!
//! The merge is idempotent: a crash before its commit leaves the current
//! table as it was and the next merge starts again from M0; the commit
//! records M, so nothing is applied twice. Readers see the state as of the
//! last merge; for fresher reads combine it with the log rows after
//! `tidewater.merged_seq`/`merged_ord` (README).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deltalake::arrow::array::BooleanArray;
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::util::display::array_value_to_string;
use deltalake::parquet::arrow::arrow_reader::RowSelection;

use super::dv;
use super::maintenance::align_batch;
use super::*;
use deltalake::writer::DeltaWriter;

const KEY_MERGED_SEQ: &str = "tidewater.merged_seq";
const KEY_MERGED_ORD: &str = "tidewater.merged_ord";

/// A merge folds the current table's small files into its output once
/// there are this many.
pub(crate) const FOLD_SMALL_FILES: usize = 8;

/// What one merge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeReport {
    pub changed_keys: usize,
    /// Change log files read (those that may hold rows after the last merge).
    pub log_files_read: usize,
    /// Keys whose latest change the merge held in memory (snapshot rows
    /// copied into an empty current table are not held).
    pub keys_held: usize,
    pub files_rewritten: usize,
    /// Files re-added with a deletion vector instead of being rewritten.
    pub files_marked: usize,
    pub rows_written: usize,
}

/// A data file of the current table, as the merge found it.
struct CurrentFile {
    data: ranged::DataFile,
    remove: deltalake::kernel::Remove,
    add: Add,
    dv: Option<deltalake::kernel::DeletionVectorDescriptor>,
    /// Rows in the file (its DV's included), from its statistics.
    records: Option<u64>,
}

/// A log row that is the latest change of its key: where it is.
struct Latest {
    mark: Mark,
    file: usize,
    row: usize,
    delete: bool,
    /// The key's values as statistics compare them.
    points: Vec<Option<prune::Point>>,
    /// A snapshot row copied in the same merge came later.
    superseded: bool,
}

/// Reading the key and mark columns of change log files.
struct Scan<'a> {
    store: Arc<dyn deltalake::ObjectStore>,
    table: &'a TableId,
    files: &'a [ranged::DataFile],
    narrow: &'a [&'a str],
    keys: &'a [String],
    merged: Mark,
    fetched: &'a Arc<std::sync::atomic::AtomicU64>,
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
        let (table, keys) = (self.table, self.keys);
        for &i in which {
            let file = &self.files[i];
            let (mut reader, _) = ranged::read_parts(
                self.store.clone(),
                file,
                table,
                Some(self.narrow),
                ranged::Rows::All,
                self.fetched,
            )
            .await?;
            let mut offset = 0;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                let marks = marks_of(table, &batch)?;
                for (row, (mark, op)) in marks.into_iter().enumerate() {
                    if mark <= self.merged {
                        continue;
                    }
                    if op == "t" {
                        *truncated = (*truncated).max(mark);
                        continue;
                    }
                    let key = key_of(&batch, keys, row);
                    if latest.get(&key).is_none_or(|l| l.mark < mark) {
                        let points = keys
                            .iter()
                            .map(|k| {
                                batch
                                    .column_by_name(k)
                                    .and_then(|c| prune::Point::from_array(c.as_ref(), row))
                            })
                            .collect();
                        latest.insert(
                            key,
                            Latest {
                                mark,
                                file: i,
                                row: offset + row,
                                delete: op == "d",
                                points,
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

impl LakeSink {
    pub(super) fn current_rel(&self, table: &TableId) -> String {
        format!(
            "{}.current/{}/{}",
            self.pipeline,
            path_segment(&table.schema),
            path_segment(&table.table)
        )
    }

    /// Where `table`'s current-state table is, for people.
    pub fn current_location(&self, table: &TableId) -> String {
        self.store.describe(&self.current_rel(table))
    }

    /// Every row of `table`'s current-state table (its deletion vectors
    /// applied), handed to `each` file by file as it is read, for
    /// `tidewater verify`; returns the log mark it was merged up to, or
    /// None when the table has no current-state table. Reads only: a merge
    /// committing meanwhile leaves this read on the version it opened.
    pub async fn scan_current(
        &self,
        table: &TableId,
        mut each: impl FnMut(RecordBatch),
    ) -> Result<Option<Mark>, LakeError> {
        let rel = self.current_rel(table);
        if !self.store.is_table(&rel).await? {
            return Ok(None);
        }
        let url = self.store.table_url(&rel)?;
        let current = deltalake::open_table_with_storage_options(url, self.store.storage_options())
            .await
            .map_err(|source| LakeError::delta(table, "opening the current state of", source))?;
        let merged = merged_mark(&current).await;
        let store = current.log_store().object_store(None);
        let mut dvs = dv::DeletionVectors::of(&current);
        let fetched = Arc::default();
        let snapshot = current
            .snapshot()
            .map_err(|source| LakeError::delta(table, "reading the current state of", source))?;
        let files: Vec<(ranged::DataFile, Option<_>)> = snapshot
            .log_data()
            .iter()
            .map(|f| {
                (
                    ranged::DataFile {
                        path: f.object_store_path(),
                        size: u64::try_from(f.size()).ok(),
                        stats: None,
                    },
                    f.deletion_vector_descriptor(),
                )
            })
            .collect();
        for (file, descriptor) in files {
            let deleted = match &descriptor {
                Some(descriptor) => dvs.deleted(descriptor).await.map_err(|source| {
                    LakeError::delta(
                        table,
                        "reading a deletion vector of the current state of",
                        source,
                    )
                })?,
                None => dv::RoaringTreemap::new(),
            };
            let (mut reader, _) = ranged::read_parts(
                store.clone(),
                &file,
                table,
                None,
                ranged::Rows::All,
                &fetched,
            )
            .await?;
            let mut at = 0u64;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                let rows = batch.num_rows() as u64;
                let batch = if deleted.is_empty() {
                    batch
                } else {
                    let keep: BooleanArray = (at..at + rows)
                        .map(|row| Some(!deleted.contains(row)))
                        .collect();
                    filter_record_batch(&batch, &keep).map_err(|source| LakeError::Arrow {
                        table: table.clone(),
                        source,
                    })?
                };
                at += rows;
                each(batch);
            }
        }
        Ok(Some(merged))
    }

    /// Brings `table`'s current-state table up to the change log's last
    /// commit. Only between commits of the log (nothing pending).
    pub async fn merge_current(&mut self, table: &TableId) -> Result<MergeReport, LakeError> {
        let vacuum = self.maintenance.vacuum.map(|(retention, _)| retention);
        match self.merge_job(table, vacuum)? {
            Some(job) => job.run().await,
            None => Ok(MergeReport::default()),
        }
    }

    /// What a merge of `table` needs, taken from the sink so that it can run
    /// on a task of its own while the log goes on committing: the log as of
    /// its last commit. None when there is nothing to merge from (no commit,
    /// pending files, no key).
    pub(super) fn merge_job(
        &self,
        table: &TableId,
        vacuum: Option<Duration>,
    ) -> Result<Option<MergeJob>, LakeError> {
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let (Some(state), true) = (open.state.clone(), open.adds.is_empty()) else {
            return Ok(None);
        };
        let keys = open.key_columns();
        if keys.is_empty() {
            return Ok(None);
        }
        let log_schema = RecordBatchWriter::for_table(&open.table)
            .map_err(|source| LakeError::delta(table, "reading", source))?
            .arrow_schema();
        let mut fields: Vec<Field> = log_schema
            .fields()
            .iter()
            .filter(|f| f.name() != "_tw_op" && f.name() != super::COMMIT_DATE)
            .map(|f| f.as_ref().clone())
            .collect();
        if self.soft_deletes {
            fields.extend(crate::soft_delete_fields());
        }
        let current_schema: SchemaRef = Arc::new(Schema::new(fields));
        Ok(Some(MergeJob {
            table: table.clone(),
            log: open.table.clone(),
            state,
            keys,
            current_schema,
            store: self.store.clone(),
            rel: self.current_rel(table),
            pipeline: self.pipeline.clone(),
            target_file_bytes: self.target_file_bytes,
            deletion_vectors: self.current_dvs,
            soft_deletes: self.soft_deletes,
            vacuum,
        }))
    }
}

/// One merge of a table's current state, independent of the sink.
pub(super) struct MergeJob {
    table: TableId,
    /// The change log as of its last commit.
    log: DeltaTable,
    state: TableState,
    keys: Vec<String>,
    current_schema: SchemaRef,
    store: LakeStore,
    rel: String,
    pipeline: String,
    target_file_bytes: u64,
    /// `sink.current_state_deletion_vectors`: mark changed rows deleted
    /// instead of rewriting their files.
    deletion_vectors: bool,
    /// `sink.soft_deletes`: a deleted key keeps a row, flagged.
    soft_deletes: bool,
    /// Vacuum the current table after the merge's commit, with this
    /// retention (the sink's vacuum policy, when its interval is due).
    vacuum: Option<Duration>,
}

impl MergeJob {
    /// Merges the log rows after the current table's mark into it.
    pub(super) async fn run(self) -> Result<MergeReport, LakeError> {
        let none = MergeReport::default();
        let table = &self.table;
        let state = &self.state;
        let keys = &self.keys;
        let current_schema = &self.current_schema;
        let mut current = self.open_current().await?;
        let merged = merged_mark(&current).await;
        if state.mark <= merged {
            return Ok(none);
        }
        debug!(table = %table, from = %merged, to = %state.mark, "merging the current-state table");
        // 1. The latest change per key after the merged mark, from the log
        //    files that may hold rows after it (their `_tw_seq` statistics)
        //    and only their key and mark columns.
        let log_store = self.log.log_store().object_store(None);
        let mut log_files = ranged::data_files_sized(&self.log, table)?;
        log_files.retain(|f| {
            prune::file_may_pass(f.stats.as_deref(), merged.seq as i64, merged.ord as i64)
        });
        let mut narrow: Vec<&str> = keys.iter().map(String::as_str).collect();
        narrow.extend(["_tw_op", "_tw_seq", "_tw_ord"]);
        let fetched = Arc::default();
        let mut latest: HashMap<String, Latest> = HashMap::new();
        let mut truncated = Mark::ZERO;
        // Files of snapshot rows only (`_tw_op` statistics): after the last
        // truncate a table's log holds each key's snapshot row at most once
        // (a copy that starts over begins with a truncate; a resumed one goes
        // on after its committed chunks).
        let (copied, mixed): (Vec<usize>, Vec<usize>) = (0..log_files.len())
            .partition(|&i| prune::only_snapshot_rows(log_files[i].stats.as_deref()));
        let scan = Scan {
            store: log_store.clone(),
            table,
            files: &log_files,
            narrow: &narrow,
            keys,
            merged,
            fetched: &fetched,
        };
        scan.latest(&mixed, &mut latest, &mut truncated).await?;
        let current_files: Vec<CurrentFile> = current
            .snapshot()
            .map_err(|source| LakeError::delta(table, "merging", source))?
            .log_data()
            .iter()
            .map(|f| CurrentFile {
                data: ranged::DataFile {
                    path: f.object_store_path(),
                    size: u64::try_from(f.size()).ok(),
                    stats: f.stats(),
                },
                // The removal names the file's DV: a file is its path and
                // its DV, and a removal without it would leave it live.
                remove: f.remove_action(true),
                // Re-added with a new DV (the API is marked as going away
                // once delta-rs handles DVs itself).
                #[allow(deprecated)]
                add: f.add_action(),
                dv: f.deletion_vector_descriptor(),
                records: f.num_records().and_then(|n| u64::try_from(n).ok()),
            })
            .collect();
        // Into an empty current table (the first merge, or all of it gone
        // after a truncate) snapshot rows are copied as they are read, with
        // no per-key state: memory stays bounded by a batch, not the table.
        let stream_copied = !copied.is_empty() && (current_files.is_empty() || truncated > merged);
        if !stream_copied {
            scan.latest(&copied, &mut latest, &mut truncated).await?;
        }
        latest.retain(|_, l| l.mark > truncated);
        let current_store = current.log_store().object_store(None);
        let mut actions = Vec::new();
        // Deletion vectors turned on for a table created without: this
        // merge's commit upgrades its protocol and sets the property.
        let mut metadata_change = None;
        if self.deletion_vectors {
            let snapshot = current
                .snapshot()
                .map_err(|source| LakeError::delta(table, "merging", source))?;
            if !dv::protocol_has_dvs(snapshot.protocol()) {
                let upgrade = |source| {
                    LakeError::delta(
                        table,
                        "turning deletion vectors on for the current state of",
                        source,
                    )
                };
                actions.push(Action::Protocol(
                    dv::with_dvs(snapshot.protocol()).map_err(upgrade)?,
                ));
                metadata_change = Some(
                    MetadataExt::add_config_key(
                        snapshot.metadata().clone(),
                        dv::ENABLE_PROPERTY.to_string(),
                        "true".to_string(),
                    )
                    .map_err(|source| upgrade(source.into()))?,
                );
            }
        }
        let mut report = MergeReport {
            changed_keys: latest.len(),
            log_files_read: log_files.len(),
            keys_held: latest.len(),
            ..MergeReport::default()
        };
        let key_names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut writer = RecordBatchWriter::for_table(&current)
            .map_err(|source| LakeError::delta(table, "merging", source))?
            .with_target_file_size(self.target_file_bytes)
            .with_writer_properties(
                crate::stats::lookup_pages(
                    deltalake::parquet::file::properties::WriterProperties::builder()
                        .set_compression(deltalake::parquet::basic::Compression::SNAPPY),
                    &key_names,
                )
                .build(),
            );
        let before = writer.arrow_schema();
        // Written in the log's columns: the current table grows with it.
        let target = current_schema.clone();
        if stream_copied {
            // A later change of a key (in `latest`) wins over its snapshot
            // row; a snapshot row wins over an earlier change (which is then
            // not written).
            let after = merged.max(truncated);
            for &i in &copied {
                let file = &log_files[i];
                let (mut reader, _) = ranged::read_parts(
                    log_store.clone(),
                    file,
                    table,
                    None,
                    ranged::Rows::All,
                    &fetched,
                )
                .await?;
                while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                    let marks = marks_of(table, &batch)?;
                    let keep: BooleanArray = marks
                        .iter()
                        .enumerate()
                        .map(|(row, (mark, _))| {
                            if *mark <= after {
                                return Some(false);
                            }
                            Some(match latest.get_mut(&key_of(&batch, keys, row)) {
                                Some(later) if later.mark > *mark => false,
                                Some(earlier) => {
                                    earlier.superseded = true;
                                    true
                                }
                                None => true,
                            })
                        })
                        .collect();
                    let batch = self.flagged(table, batch)?;
                    let written = write_kept(&mut writer, table, &batch, &keep, &target).await?;
                    report.changed_keys += written;
                    report.rows_written += written;
                }
            }
        }
        // 2. Current files that may hold a changed key (their key
        //    statistics), rewritten without them one at a time; all go after
        //    a truncate.
        let changed: HashSet<&String> = latest.keys().collect();
        let probe = prune::Probe::of_points(
            keys.clone(),
            latest.values().map(|l| l.points.clone()).collect(),
        );
        // Small files (each merge adds one) are folded into this merge's
        // output once there are enough of them, the smallest first, up to
        // about one target file: the current table does not crumble.
        let small = |f: &ranged::DataFile| f.size.is_some_and(|b| b < self.target_file_bytes / 2);
        let mut folded: HashSet<deltalake::Path> = HashSet::new();
        if truncated <= merged
            && current_files.iter().filter(|f| small(&f.data)).count() >= FOLD_SMALL_FILES
        {
            let mut sizes: Vec<(u64, &deltalake::Path)> = current_files
                .iter()
                .filter(|f| small(&f.data))
                .map(|f| (f.data.size.unwrap_or(0), &f.data.path))
                .collect();
            sizes.sort();
            let mut total = 0;
            for (size, path) in sizes {
                if total + size > self.target_file_bytes && folded.len() >= 2 {
                    break;
                }
                total += size;
                folded.insert(path.clone());
            }
        }
        // With deletion vectors a file holding changed keys is not
        // rewritten: its rows of them are marked deleted in a DV (all DVs of
        // the merge in one DV file) and the file re-added with it. Whatever
        // DV a file already has is applied to every read of it.
        let mut dvs = dv::DeletionVectors::new(current_store.clone(), current.table_url());
        let mut dv_file = dv::DvFile::default();
        let mut marked: Vec<CurrentFile> = Vec::new();
        for file in current_files {
            if truncated > merged {
                actions.push(Action::Remove(file.remove));
                report.files_rewritten += 1;
                continue;
            }
            let fold = folded.contains(&file.data.path);
            // Rewritten or marked only when it holds a changed key: its key
            // statistics, then the key column of its candidate pages (rows
            // its DV deleted already do not count).
            if !fold && (latest.is_empty() || !probe.file_may_hold(file.data.stats.as_deref())) {
                continue;
            }
            let deleted = match &file.dv {
                Some(descriptor) => dvs.deleted(descriptor).await.map_err(|source| {
                    LakeError::delta(
                        table,
                        "reading a deletion vector of the current state of",
                        source,
                    )
                })?,
                None => dv::RoaringTreemap::new(),
            };
            if !fold {
                let (mut reader, selection) = ranged::read_parts(
                    current_store.clone(),
                    &file.data,
                    table,
                    Some(&key_names),
                    ranged::Rows::Pages(&probe),
                    &fetched,
                )
                .await?;
                let mut rows = selected_rows(selection.as_ref());
                let mut hits = dv::RoaringTreemap::new();
                while let Some(batch) =
                    ranged::next_batch(&mut reader, table, &file.data.path).await?
                {
                    for r in 0..batch.num_rows() {
                        let at = rows.next().unwrap_or(u64::MAX);
                        if !deleted.contains(at) && changed.contains(&key_of(&batch, keys, r)) {
                            hits.insert(at);
                        }
                    }
                    // A rewrite needs to know only that there is one.
                    if !self.deletion_vectors && !hits.is_empty() {
                        break;
                    }
                }
                if hits.is_empty() {
                    continue;
                }
                if self.deletion_vectors {
                    let all = &deleted | &hits;
                    // A file more than half deleted is rewritten instead,
                    // so that DVs do not pile up.
                    if file.records.is_some_and(|records| all.len() * 2 <= records) {
                        dv_file.push(all);
                        marked.push(file);
                        continue;
                    }
                }
            }
            // Streamed through, without the changed keys and its deleted rows.
            let (mut reader, _) = ranged::read_parts(
                current_store.clone(),
                &file.data,
                table,
                None,
                ranged::Rows::All,
                &fetched,
            )
            .await?;
            let mut at = 0u64;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.data.path).await? {
                let keep: BooleanArray = (0..batch.num_rows())
                    .map(|r| {
                        Some(
                            !deleted.contains(at + r as u64)
                                && !changed.contains(&key_of(&batch, keys, r)),
                        )
                    })
                    .collect();
                at += batch.num_rows() as u64;
                report.rows_written +=
                    write_kept(&mut writer, table, &batch, &keep, &target).await?;
            }
            actions.push(Action::Remove(file.remove));
            report.files_rewritten += 1;
        }
        if !dv_file.is_empty() {
            let descriptors = dv_file
                .write(current_store.as_ref())
                .await
                .map_err(|source| {
                    LakeError::delta(
                        table,
                        "writing deletion vectors of the current state of",
                        source,
                    )
                })?;
            for (file, descriptor) in marked.into_iter().zip(descriptors) {
                let add = Add {
                    deletion_vector: Some(descriptor),
                    stats: dv::loose_stats(file.add.stats.as_deref()).or(file.add.stats.clone()),
                    data_change: true,
                    ..file.add
                };
                actions.push(Action::Remove(file.remove));
                actions.push(Action::Add(add));
                report.files_marked += 1;
            }
        }
        // 3. The latest images that are not deletes: only their rows (the
        //    pages holding them) of the log files that hold them.
        let mut wanted: HashMap<usize, Vec<usize>> = HashMap::new();
        for l in latest
            .values()
            .filter(|l| (self.soft_deletes || !l.delete) && !l.superseded)
        {
            wanted.entry(l.file).or_default().push(l.row);
        }
        for (i, file) in log_files.iter().enumerate() {
            let Some(rows) = wanted.get_mut(&i) else {
                continue;
            };
            rows.sort_unstable();
            let (mut reader, _) = ranged::read_parts(
                log_store.clone(),
                file,
                table,
                None,
                ranged::Rows::These(rows),
                &fetched,
            )
            .await?;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                report.rows_written += batch.num_rows();
                let batch = self.flagged(table, batch)?;
                let picked = align_batch(table, &batch, &target)?;
                writer
                    .write_with_mode(picked, WriteMode::MergeSchema)
                    .await
                    .map_err(|source| LakeError::delta(table, "merging", source))?;
            }
        }
        for add in writer
            .flush()
            .await
            .map_err(|source| LakeError::delta(table, "merging", source))?
        {
            actions.push(Action::Add(add));
        }
        let after = writer.arrow_schema();
        if after != before {
            let kernel: StructType = after.as_ref().try_into_kernel().map_err(|source| {
                LakeError::delta(table, "evolving the current state of", source.into())
            })?;
            let snapshot = current
                .snapshot()
                .map_err(|source| LakeError::delta(table, "merging", source))?;
            let base = metadata_change
                .take()
                .unwrap_or_else(|| snapshot.metadata().clone());
            let metadata = MetadataExt::with_schema(base, &kernel).map_err(|source| {
                LakeError::delta(table, "evolving the current state of", source.into())
            })?;
            metadata_change = Some(metadata);
        }
        if let Some(metadata) = metadata_change {
            actions.push(Action::Metadata(metadata));
        }
        // 4. One commit, with the mark merged up to.
        let commits = current
            .snapshot()
            .map_err(|source| LakeError::delta(table, "merging", source))?
            .transaction_version(current.log_store().as_ref(), &self.app_id())
            .await
            .map_err(|source| LakeError::delta(table, "merging", source))?
            .unwrap_or(0)
            + 1;
        let metadata: HashMap<String, Value> = HashMap::from([
            (KEY_PIPELINE.to_string(), Value::from(self.pipeline.clone())),
            (
                KEY_MERGED_SEQ.to_string(),
                Value::from(state.mark.seq.to_string()),
            ),
            (
                KEY_MERGED_ORD.to_string(),
                Value::from(state.mark.ord.to_string()),
            ),
            (
                KEY_POSITION.to_string(),
                Value::from(state.position.clone()),
            ),
        ]);
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(self.app_id(), commits))
            .with_metadata(metadata)
            .with_max_retries(0);
        let snapshot = current
            .snapshot()
            .map_err(|source| LakeError::delta(table, "merging", source))?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(
                Some(snapshot),
                current.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .map_err(|source| LakeError::delta(table, "committing the current state of", source))?;
        current.state = Some(finalized.snapshot());
        if let Some(retention) = self.vacuum {
            // The files this and earlier merges replaced, once older than
            // the retention (this job is the table's only writer).
            let now = std::time::SystemTime::now();
            let vacuumed =
                match super::maintenance::plan_vacuum(table, &current, retention, now, now) {
                    Ok(job) => job.run().await,
                    Err(error) => Err(error),
                };
            if let Err(error) = vacuumed {
                warn!(table = %table, error = %tidewater_core::error_chain(&error), "vacuuming the current-state table failed; trying again later");
            }
        }
        debug!(table = %table, changed = report.changed_keys, log_files = report.log_files_read, files = report.files_rewritten, marked = report.files_marked, rows = report.rows_written, "current state merged");
        Ok(report)
    }

    /// `batch` of log rows with the soft-delete flags, when they are kept.
    fn flagged(&self, table: &TableId, batch: RecordBatch) -> Result<RecordBatch, LakeError> {
        if !self.soft_deletes {
            return Ok(batch);
        }
        crate::with_soft_delete_flags(&batch).map_err(|source| LakeError::Arrow {
            table: table.clone(),
            source,
        })
    }

    fn app_id(&self) -> String {
        format!("tidewater:{}:current", self.pipeline)
    }

    /// Opens the current-state table, creating it with the log's columns.
    async fn open_current(&self) -> Result<DeltaTable, LakeError> {
        let (table, schema) = (&self.table, &self.current_schema);
        let rel = self.rel.clone();
        let url = self.store.table_url(&rel)?;
        if self.store.is_table(&rel).await? {
            let current =
                deltalake::open_table_with_storage_options(url, self.store.storage_options())
                    .await
                    .map_err(|source| {
                        LakeError::delta(table, "opening the current state of", source)
                    })?;
            return Ok(current);
        }
        if let Some(path) = self.store.local_path(&rel) {
            crate::store::create_dirs(&path)
                .map_err(|source| LakeError::io(path.clone(), source))?;
        }
        let kernel: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|source| LakeError::delta(table, "mapping the schema of", source.into()))?;
        // Created as ever; with deletion vectors on, the first merge's
        // commit turns them on (its own protocol and metadata actions: the
        // builder's table property would also name the legacy writer
        // features, `invariants` among them, which this build cannot write).
        let create =
            DeltaTable::try_from_url_with_storage_options(url, self.store.storage_options())
                .await
                .map_err(|source| LakeError::delta(table, "opening the current state of", source))?
                .create();
        let created = create
            .with_columns(kernel.fields().cloned())
            .with_table_name(format!("{}_current", table.table))
            .with_comment(format!(
                "current state of {table} (one row per key), merged from its change log by tidewater pipeline {}",
                self.pipeline
            ))
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|source| LakeError::delta(table, "creating the current state of", source))?;
        info!(table = %table, path = %self.store.describe(&rel), "created current-state table");
        Ok(created)
    }
}

/// Commits an erasure's `actions` to a current-state table, keeping the
/// mark it was merged up to (the next merge goes on from there) and
/// counting one more of its commits.
pub(super) async fn commit_erasure(
    current: &mut DeltaTable,
    table: &TableId,
    pipeline: &str,
    actions: Vec<Action>,
) -> Result<(), LakeError> {
    let mut history = current.history(Some(1));
    let latest = match history.try_next().await {
        Ok(Some(info)) => info.info,
        _ => Default::default(),
    };
    drop(history);
    let app_id = format!("tidewater:{pipeline}:current");
    let commits = current
        .snapshot()
        .map_err(|source| LakeError::delta(table, "erasing keys of", source))?
        .transaction_version(current.log_store().as_ref(), &app_id)
        .await
        .map_err(|source| LakeError::delta(table, "erasing keys of", source))?
        .unwrap_or(0)
        + 1;
    // The merge's own keys (pipeline, merged mark, position) as they are.
    let metadata: HashMap<String, Value> = latest
        .into_iter()
        .filter(|(k, _)| k.starts_with("tidewater."))
        .collect();
    let properties = CommitProperties::default()
        .with_application_transaction(Transaction::new(app_id, commits))
        .with_metadata(metadata)
        .with_max_retries(0);
    let snapshot = current
        .snapshot()
        .map_err(|source| LakeError::delta(table, "erasing keys of", source))?;
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(
            Some(snapshot),
            current.log_store(),
            DeltaOperation::Delete {
                predicate: Some("the keys of an erasure (tidewater forget)".into()),
            },
        )
        .await
        .map_err(|source| LakeError::delta(table, "committing an erasure to", source))?;
    current.state = Some(finalized.snapshot());
    Ok(())
}

/// The log mark the current table was merged up to.
async fn merged_mark(current: &DeltaTable) -> Mark {
    let mut history = current.history(Some(1));
    let Ok(Some(info)) = history.try_next().await else {
        return Mark::ZERO;
    };
    super::info_mark(&info.info, KEY_MERGED_SEQ, KEY_MERGED_ORD).unwrap_or(Mark::ZERO)
}

/// The row numbers in the file of the rows a read with `selection` returns,
/// in order.
fn selected_rows(selection: Option<&RowSelection>) -> Box<dyn Iterator<Item = u64> + Send> {
    let Some(selection) = selection else {
        return Box::new(0..);
    };
    let mut at = 0u64;
    let ranges: Vec<std::ops::Range<u64>> = selection
        .iter()
        .filter_map(|s| {
            let start = at;
            at += s.row_count as u64;
            (!s.skip).then_some(start..at)
        })
        .collect();
    Box::new(ranges.into_iter().flatten())
}

/// Writes the rows of `batch` that `keep` selects, in the current table's
/// columns; how many.
async fn write_kept(
    writer: &mut RecordBatchWriter,
    table: &TableId,
    batch: &RecordBatch,
    keep: &BooleanArray,
    target: &SchemaRef,
) -> Result<usize, LakeError> {
    let kept = filter_record_batch(batch, keep).map_err(|source| LakeError::Arrow {
        table: table.clone(),
        source,
    })?;
    if kept.num_rows() == 0 {
        return Ok(0);
    }
    let rows = kept.num_rows();
    writer
        .write_with_mode(align_batch(table, &kept, target)?, WriteMode::MergeSchema)
        .await
        .map_err(|source| LakeError::delta(table, "merging", source))?;
    Ok(rows)
}

/// (`_tw_seq`, `_tw_ord`) and `_tw_op` of every row of a log batch.
pub(crate) fn marks_of(
    table: &TableId,
    batch: &RecordBatch,
) -> Result<Vec<(Mark, String)>, LakeError> {
    let column = |name: &str| batch.column_by_name(name).cloned();
    let (Some(ops), Some(seqs), Some(ords)) =
        (column("_tw_op"), column("_tw_seq"), column("_tw_ord"))
    else {
        return Err(LakeError::Arrow {
            table: table.clone(),
            source: ArrowError::SchemaError("a log file without _tw_op/_tw_seq/_tw_ord".into()),
        });
    };
    let (Some(ops), Some(seqs), Some(ords)) = (
        ops.as_string_opt::<i32>(),
        seqs.as_primitive_opt::<Int64Type>(),
        ords.as_primitive_opt::<Int64Type>(),
    ) else {
        return Err(LakeError::Arrow {
            table: table.clone(),
            source: ArrowError::SchemaError("unexpected types for _tw_op/_tw_seq/_tw_ord".into()),
        });
    };
    Ok((0..batch.num_rows())
        .map(|i| {
            (
                Mark::new(seqs.value(i) as u64, ords.value(i) as u64),
                ops.value(i).to_string(),
            )
        })
        .collect())
}

/// A row's key as one string: its key columns' values as text (`∅` for a
/// missing column or NULL).
pub(crate) fn key_of(batch: &RecordBatch, keys: &[String], row: usize) -> String {
    let mut key = String::new();
    for name in keys {
        match batch.column_by_name(name) {
            Some(column) if !column.is_null(row) => {
                key.push_str(&array_value_to_string(column, row).unwrap_or_default())
            }
            _ => key.push('∅'),
        }
        key.push('\u{1f}');
    }
    key
}
