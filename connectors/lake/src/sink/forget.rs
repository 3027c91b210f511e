//! `tidewater forget`: every row of some keys erased from a table's change
//! log and its current-state table, and from every file and log version
//! that held them.
//!
//! ```text
//!  forget(table, key hashes), between the pipeline's commits, with no
//!  maintenance running (this process is the tables' only writer):
//!   change log: each live file's key column(s) read; the files holding a
//!               key rewritten without its rows ─▶ one commit: remove + add,
//!               with the table's current mark and position (a DELETE)
//!   current-state table: the same, its commit keeping the mark it was
//!               merged up to
//!   then, for each table: the replaced files deleted at once (they are
//!   no version's any more than the old log's), a checkpoint at the new
//!   version, and every older log entry and checkpoint deleted — their
//!   statistics may quote a key's values. Time travel to a version before
//!   the erasure stops working.
//! ```
//!
//! Keys arrive as digests ([`crate::digest::RowDigests::key`] of the lake's
//! key columns), so the request that carries them names no value. A crash
//! before a commit leaves the table as it was (the request stays and runs
//! again); after it, the rows are gone and a rerun deletes what is left
//! (the replaced files and old log entries are found again: files no
//! longer live, logs older than the newest checkpoint).

use std::collections::HashSet;

use deltalake::arrow::array::BooleanArray;
use deltalake::arrow::compute::filter_record_batch;
use deltalake::logstore::object_store::ObjectStoreExt;

use super::maintenance::{align_batch, merged_properties, with_partition_values, Partition};
use super::*;
use crate::digest::RowDigests;
use tidewater_core::Erased;

/// A live file of a Delta table, with what its removal and rewrite need.
struct LiveFile {
    data: ranged::DataFile,
    partition: Partition,
    remove: deltalake::kernel::Remove,
    /// Rows a deletion vector removes (current-state tables).
    dv: Option<deltalake::kernel::DeletionVectorDescriptor>,
}

fn live_files(delta: &DeltaTable, table: &TableId) -> Result<Vec<LiveFile>, LakeError> {
    let snapshot = delta
        .snapshot()
        .map_err(|source| LakeError::delta(table, "erasing keys of", source))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| {
            let mut partition: Partition = f.partition_values_map().into_iter().collect();
            partition.sort();
            // The removal names the file's DV: a file is its path and its DV.
            let mut remove = f.remove_action(true);
            // A tombstone outlives the file in checkpoints: it must not
            // carry the file's statistics (bounds quote values).
            remove.extended_file_metadata = Some(false);
            remove.tags = None;
            LiveFile {
                data: ranged::DataFile {
                    path: f.object_store_path(),
                    size: u64::try_from(f.size()).ok(),
                    stats: None,
                },
                partition,
                remove,
                dv: f.deletion_vector_descriptor(),
            }
        })
        .collect())
}

/// Rewrites the files of `delta` holding a key of `keys` (digests of the
/// `key` columns) without those rows: the actions of the commit, the rows
/// removed, the paths replaced. A file's deletion vector is applied (its
/// rows are left out of the rewrite, which has none).
async fn rewrite_without(
    delta: &DeltaTable,
    table: &TableId,
    key: &[String],
    keys: &HashSet<u128>,
) -> Result<(Vec<Action>, u64, Vec<deltalake::Path>), LakeError> {
    let store = delta.log_store().object_store(None);
    let fetched = Arc::default();
    let names: Vec<&str> = key.iter().map(String::as_str).collect();
    let mut actions = Vec::new();
    let mut removed_rows = 0u64;
    let mut replaced = Vec::new();
    let arrow = |source| LakeError::Arrow {
        table: table.clone(),
        source,
    };
    let matches = |batch: &RecordBatch| -> Result<BooleanArray, LakeError> {
        let digests = RowDigests::new(batch, key, key).map_err(arrow)?;
        Ok((0..batch.num_rows())
            .map(|row| Some(!keys.contains(&digests.key(row))))
            .collect())
    };
    let mut dvs = dv::DeletionVectors::of(delta);
    for file in live_files(delta, table)? {
        let deleted = match &file.dv {
            Some(descriptor) => dvs.deleted(descriptor).await.map_err(|source| {
                LakeError::delta(table, "reading a deletion vector of", source)
            })?,
            None => dv::RoaringTreemap::new(),
        };
        // 1. Does it hold a key? Its key columns only.
        let (mut reader, _) = ranged::read_parts(
            store.clone(),
            &file.data,
            table,
            Some(&names),
            ranged::Rows::All,
            &fetched,
        )
        .await?;
        // Rows a DV deleted still hold their bytes: they count for the
        // rewrite, not for the rows removed.
        let (mut hits, mut live_hits, mut at) = (0u64, 0u64, 0u64);
        while let Some(batch) = ranged::next_batch(&mut reader, table, &file.data.path).await? {
            let keep = matches(&batch)?;
            for (row, kept) in keep.iter().enumerate() {
                if kept == Some(false) {
                    hits += 1;
                    if !deleted.contains(at + row as u64) {
                        live_hits += 1;
                    }
                }
            }
            at += batch.num_rows() as u64;
        }
        if hits == 0 {
            continue;
        }
        // 2. The file again, whole, through a writer, without those rows.
        let footer = ranged::footer(store.clone(), &file.data, table).await?;
        let mut writer = RecordBatchWriter::for_table(delta)
            .map_err(|source| LakeError::delta(table, "erasing keys of", source))?
            .with_writer_properties(merged_properties(&[footer], &names));
        let schema = writer.arrow_schema();
        let (mut reader, _) = ranged::read_parts(
            store.clone(),
            &file.data,
            table,
            None,
            ranged::Rows::All,
            &fetched,
        )
        .await?;
        let mut at = 0u64;
        while let Some(batch) = ranged::next_batch(&mut reader, table, &file.data.path).await? {
            let unmatched = matches(&batch)?;
            let keep: BooleanArray = unmatched
                .iter()
                .enumerate()
                .map(|(row, kept)| Some(kept == Some(true) && !deleted.contains(at + row as u64)))
                .collect();
            at += batch.num_rows() as u64;
            if keep.true_count() == 0 {
                continue;
            }
            let batch = filter_record_batch(&batch, &keep).map_err(arrow)?;
            let batch = with_partition_values(table, &batch, &file.partition)?;
            let batch = align_batch(table, &batch, &schema)?;
            writer
                .write_with_mode(batch, WriteMode::Default)
                .await
                .map_err(|source| LakeError::delta(table, "erasing keys of", source))?;
        }
        for add in writer
            .flush()
            .await
            .map_err(|source| LakeError::delta(table, "erasing keys of", source))?
        {
            actions.push(Action::Add(add));
        }
        let mut remove = file.remove;
        remove.deletion_timestamp = Some(chrono::Utc::now().timestamp_millis());
        remove.data_change = true;
        actions.push(Action::Remove(remove));
        replaced.push(file.data.path);
        removed_rows += live_hits;
    }
    Ok((actions, removed_rows, replaced))
}

/// Deletes `replaced` and every file an earlier commit removed that is
/// still in the store (a compaction's or a merge's inputs, waiting for
/// vacuum: they may hold the keys too), checkpoints `delta` at its version
/// and deletes every log entry before it: how many log entries went.
/// Never a file no commit named (one being written is not a tombstone).
async fn scrub(
    delta: &mut DeltaTable,
    table: &TableId,
    replaced: &[deltalake::Path],
) -> Result<usize, LakeError> {
    let store = delta.log_store().object_store(None);
    let delta_error = |source| LakeError::delta(table, "erasing keys of", source);
    delta.update_state().await.map_err(delta_error)?;
    let snapshot = delta.snapshot().map_err(delta_error)?;
    let live: HashSet<String> = snapshot
        .log_data()
        .iter()
        .map(|f| f.object_store_path().to_string())
        .collect();
    let mut doomed: Vec<deltalake::Path> = replaced.to_vec();
    let log_store = delta.log_store();
    let mut tombstones = snapshot.all_tombstones(log_store.as_ref());
    while let Some(tombstone) = tombstones.try_next().await.map_err(delta_error)? {
        let path = tombstone.path();
        let path = deltalake::Path::parse(path.as_ref())
            .unwrap_or_else(|_| deltalake::Path::from(path.as_ref()));
        if !live.contains(path.as_ref()) {
            doomed.push(path);
        }
    }
    drop(tombstones);
    for path in &doomed {
        match store.delete(path).await {
            Ok(()) | Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
            Err(source) => {
                return Err(LakeError::Remote {
                    location: format!("{table}: {path}"),
                    source: Box::new(source),
                })
            }
        }
    }
    delta
        .update_state()
        .await
        .map_err(|source| LakeError::delta(table, "reloading", source))?;
    deltalake::checkpoints::create_checkpoint(delta, None)
        .await
        .map_err(|source| LakeError::delta(table, "checkpointing after an erasure of", source))?;
    let version = delta.version().unwrap_or_default();
    // Every entry before the checkpoint, however recent.
    let cutoff = chrono::Utc::now().timestamp_millis() + 60_000;
    deltalake::checkpoints::cleanup_expired_logs_for(
        version,
        delta.log_store().as_ref(),
        cutoff,
        None,
    )
    .await
    .map_err(|source| LakeError::delta(table, "deleting old log entries of", source))
}

impl LakeSink {
    /// Erases every row of the keys whose digests are `keys` from `table`'s
    /// change log and current-state table (see the module doc). Call it
    /// between commits; it waits for running maintenance first.
    pub async fn forget(
        &mut self,
        table: &TableId,
        keys: &HashSet<u128>,
    ) -> Result<Erased, LakeError> {
        self.finish_maintenance().await;
        let mut report = Erased::default();
        if self.table_state(table).await?.is_none() {
            return Ok(report);
        }
        let app_id = self.app_id();
        let pipeline = self.pipeline.clone();
        let open = self.tables.get_mut(table).expect("opened above");
        if !open.adds.is_empty() || open.pending.is_some() || open.evolved.is_some() {
            return Err(LakeError::Erasure {
                table: table.clone(),
                what: "the table has a commit pending (an erasure runs between commits)".into(),
            });
        }
        let key = open.key_columns();
        if key.is_empty() {
            return Err(LakeError::Erasure {
                table: table.clone(),
                what: "the table has no primary key: rows cannot be found by key".into(),
            });
        }
        // The change log.
        let (actions, rows, replaced) = rewrite_without(&open.table, table, &key, keys).await?;
        if !actions.is_empty() {
            let state = open.state.clone().expect("a table with a state");
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
            let operation = DeltaOperation::Delete {
                predicate: Some("the keys of an erasure (tidewater forget)".into()),
            };
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
            report.log_rows = rows;
            report.files_rewritten += replaced.len();
        }
        report.log_entries_deleted += scrub(&mut open.table, table, &replaced).await?;

        // The current-state table.
        let rel = self.current_rel(table);
        if self.store.is_table(&rel).await? {
            let url = self.store.table_url(&rel)?;
            let mut current =
                deltalake::open_table_with_storage_options(url, self.store.storage_options())
                    .await
                    .map_err(|source| {
                        LakeError::delta(table, "opening the current state of", source)
                    })?;
            let (actions, rows, replaced) = rewrite_without(&current, table, &key, keys).await?;
            if !actions.is_empty() {
                current::commit_erasure(&mut current, table, &pipeline, actions).await?;
                report.current_rows = rows;
                report.files_rewritten += replaced.len();
            }
            report.log_entries_deleted += scrub(&mut current, table, &replaced).await?;
        }
        info!(
            table = %table,
            keys = keys.len(),
            log_rows = report.log_rows,
            current_rows = report.current_rows,
            files_rewritten = report.files_rewritten,
            log_entries_deleted = report.log_entries_deleted,
            "erased keys (tidewater forget)"
        );
        Ok(report)
    }
}
