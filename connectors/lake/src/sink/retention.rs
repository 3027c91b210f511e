//! `changelog_retention`: change-log rows older than a table's retention
//! are dropped, except each key's latest row, so the log's current state —
//! and every current-state table and reverse-ETL view built on it — stays
//! exactly what it was.
//!
//! ```text
//!  maintain(), when a table's retention pass is due (the compaction slot:
//!  one rewrite at a time):
//!   plan: live files whose `_tw_commit_ts` maximum (Delta statistics) is
//!         before now − retention, oldest first, about 4 target files
//!   run (a task of its own):
//!     1. the group's keys and marks: each key's latest row in the group,
//!        the group's last truncate
//!     2. the other live files that may hold those keys (key statistics,
//!        then key pages): each key's latest row outside the group
//!     3. the group rewritten without the rows before the cut-off that a
//!        later row of their key (or a later truncate) supersedes
//!   commit (the sink, like a compaction): remove(group) + add(new files),
//!         dataChange=true, with the table's current mark and position
//! ```
//!
//! Rows are never dropped by their age alone: a key's latest row stays
//! however old (a key deleted long ago keeps its delete), and so does every
//! truncate row. Files that straddle the cut-off are left to a later pass,
//! once all their rows are past it (compaction folds small ones together).
//! Memory holds the group's keys (about four target files of rows).
//! The old files go with vacuum, after its retention.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use deltalake::arrow::array::{Array, AsArray, BooleanArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};

use super::current::{key_of, marks_of};
use super::maintenance::{
    align_batch, merged_properties, with_partition_values, CompactionJob, CompactionOutput,
    Partition,
};
use super::*;

/// A retention rewrite reads about this many target files at once.
const GROUP_TARGET_FILES: u64 = 4;

/// What a retention rewrite needs beyond a compaction's plan.
pub(super) struct Retention {
    /// Rows committed before this (µs since the epoch) may go.
    cutoff_us: i64,
    cutoff_text: String,
    /// The table's other live files, for later rows of the group's keys.
    others: Vec<ranged::DataFile>,
    /// The largest first `_tw_seq` of the group's files.
    pass_seq: i64,
}

/// The largest `_tw_commit_ts` a file's Delta statistics give, in µs.
fn max_commit_us(stats: Option<&str>) -> Option<i64> {
    let stats: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let text = stats.get("maxValues")?.get("_tw_commit_ts")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

fn min_seq(stats: Option<&str>) -> i64 {
    stats
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|s| s.get("minValues")?.get("_tw_seq")?.as_i64())
        .unwrap_or(i64::MAX)
}

impl LakeSink {
    /// `sink.changelog_retention`: per table pattern, how long change-log
    /// rows are kept, None for ever (the first pattern matching a table
    /// counts), and how often a table's pass runs.
    pub fn set_changelog_retention(
        &mut self,
        rules: Vec<(String, Option<Duration>)>,
        every: Duration,
    ) {
        self.retention_rules = rules;
        self.retention_every = every;
    }

    /// The retention of `table`'s change log, if it has one.
    pub(super) fn retention_of(&self, table: &TableId) -> Option<Duration> {
        let name = table.to_string();
        self.retention_rules
            .iter()
            .find(|(pattern, _)| {
                tidewater_core::TableFilter {
                    include: vec![pattern.clone()],
                    exclude: Vec::new(),
                }
                .matches(table)
                    || *pattern == name
            })
            .and_then(|(_, keep)| *keep)
    }

    /// The next group of `table`'s files past its retention, after the
    /// files of the pass so far (`after_seq`), if there is one and nothing
    /// of the table is pending. Reads nothing.
    pub(super) fn retention_job(
        &self,
        table: &TableId,
        retention: Duration,
        after_seq: i64,
        now: SystemTime,
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
        let keys: Vec<String> = open.key_columns();
        if keys.is_empty() {
            // Without a key no row supersedes another: all are kept.
            return Ok(None);
        }
        let cutoff = chrono::DateTime::<chrono::Utc>::from(now)
            - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
        let cutoff_us = cutoff.timestamp_micros();
        let snapshot = open
            .table
            .snapshot()
            .map_err(|source| LakeError::delta(table, "applying the retention of", source))?;
        let mut old: Vec<(
            i64,
            Partition,
            deltalake::Path,
            i64,
            deltalake::kernel::Remove,
        )> = Vec::new();
        let mut others = Vec::new();
        for f in snapshot.log_data().iter() {
            let stats = f.stats();
            let seq = min_seq(stats.as_deref());
            let past = max_commit_us(stats.as_deref()).is_some_and(|max| max < cutoff_us);
            if past && seq > after_seq {
                let mut partition: Partition = f.partition_values_map().into_iter().collect();
                partition.sort();
                old.push((
                    seq,
                    partition,
                    f.object_store_path(),
                    f.size(),
                    f.remove_action(false),
                ));
            } else {
                others.push(ranged::DataFile {
                    path: f.object_store_path(),
                    size: u64::try_from(f.size()).ok(),
                    stats,
                });
            }
        }
        if old.is_empty() {
            return Ok(None);
        }
        old.sort_by_key(|o| o.0);
        let partition = old[0].1.clone();
        let budget = self.target_file_bytes.saturating_mul(GROUP_TARGET_FILES);
        let mut group = Vec::new();
        let mut bytes = 0u64;
        let mut pass_seq = after_seq;
        for (seq, p, path, size, remove) in old {
            let fits = p == partition && (group.is_empty() || bytes < budget);
            if fits {
                bytes += size.max(0) as u64;
                pass_seq = pass_seq.max(seq);
                group.push((path, remove));
            } else {
                others.push(ranged::DataFile {
                    path,
                    size: u64::try_from(size).ok(),
                    stats: None,
                });
            }
        }
        Ok(Some(CompactionJob {
            table: table.clone(),
            delta: open.table.clone(),
            partition,
            group,
            keys,
            schema_version: open.schema_version,
            schema: snapshot.schema().as_ref().clone(),
            target_file_bytes: self.target_file_bytes,
            retention: Some(Retention {
                cutoff_us,
                cutoff_text: cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                others,
                pass_seq,
            }),
        }))
    }
}

impl CompactionJob {
    /// The largest first `_tw_seq` of the group's files: the pass goes on
    /// after it.
    pub(super) fn retention_pass_seq(&self) -> Option<i64> {
        self.retention.as_ref().map(|r| r.pass_seq)
    }

    /// Steps 1–3 of the module doc: the group rewritten without the rows
    /// past the cut-off that a later row of their key supersedes.
    pub(super) async fn run_retention(self) -> Result<CompactionOutput, LakeError> {
        let table = &self.table;
        let retention = self.retention.as_ref().expect("a retention job");
        let delta = |what: &'static str| move |source| LakeError::delta(table, what, source);
        let store = self.delta.log_store().object_store(None);
        let fetched = Arc::default();
        let files: Vec<ranged::DataFile> = self
            .group
            .iter()
            .map(|(path, remove)| ranged::DataFile {
                path: path.clone(),
                size: remove.size.and_then(|s| u64::try_from(s).ok()),
                stats: None,
            })
            .collect();
        let mut narrow: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        narrow.extend(["_tw_op", "_tw_seq", "_tw_ord"]);

        // 1. Each key's latest row in the group; the group's last truncate.
        let mut latest: HashMap<String, Mark> = HashMap::new();
        let mut points: HashMap<String, Vec<Option<prune::Point>>> = HashMap::new();
        let mut truncated = Mark::ZERO;
        for file in &files {
            let (mut reader, _) = ranged::read_parts(
                store.clone(),
                file,
                table,
                Some(&narrow),
                ranged::Rows::All,
                &fetched,
            )
            .await?;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                for (row, (mark, op)) in marks_of(table, &batch)?.into_iter().enumerate() {
                    if op == "t" {
                        truncated = truncated.max(mark);
                        continue;
                    }
                    let key = key_of(&batch, &self.keys, row);
                    if !points.contains_key(&key) {
                        let point = self
                            .keys
                            .iter()
                            .map(|k| {
                                batch
                                    .column_by_name(k)
                                    .and_then(|c| prune::Point::from_array(c.as_ref(), row))
                            })
                            .collect();
                        points.insert(key.clone(), point);
                    }
                    let at = latest.entry(key).or_insert(mark);
                    *at = (*at).max(mark);
                }
            }
        }

        // 2. Each key's latest row outside the group, from the files that
        //    may hold it.
        let mut outside: HashMap<String, Mark> = HashMap::new();
        if !latest.is_empty() {
            let probe = prune::Probe::of_points(self.keys.clone(), points.into_values().collect());
            for file in &retention.others {
                if !probe.file_may_hold(file.stats.as_deref()) {
                    continue;
                }
                let (mut reader, _) = ranged::read_parts(
                    store.clone(),
                    file,
                    table,
                    Some(&narrow),
                    ranged::Rows::Pages(&probe),
                    &fetched,
                )
                .await?;
                while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                    for (row, (mark, op)) in marks_of(table, &batch)?.into_iter().enumerate() {
                        if op == "t" {
                            truncated = truncated.max(mark);
                            continue;
                        }
                        let key = key_of(&batch, &self.keys, row);
                        if latest.contains_key(&key) {
                            let at = outside.entry(key).or_insert(mark);
                            *at = (*at).max(mark);
                        }
                    }
                }
            }
        }

        // 3. The rewrite, when it drops anything: counted on the narrow
        //    columns first, then the files streamed through the writer.
        let superseded = |key: &str, mark: Mark| {
            mark < truncated
                || latest.get(key).is_some_and(|l| *l > mark)
                || outside.get(key).is_some_and(|o| *o > mark)
        };
        let keep_rows = |batch: &RecordBatch| -> Result<BooleanArray, LakeError> {
            let marks = marks_of(table, batch)?;
            let commit_ts = batch
                .column_by_name("_tw_commit_ts")
                .map(|c| {
                    deltalake::arrow::compute::cast(
                        c,
                        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    )
                })
                .transpose()
                .map_err(|source| LakeError::Arrow {
                    table: table.clone(),
                    source,
                })?;
            Ok(marks
                .iter()
                .enumerate()
                .map(|(row, (mark, op))| {
                    let past = commit_ts.as_ref().is_some_and(|ts| {
                        let ts = ts.as_primitive::<TimestampMicrosecondType>();
                        ts.is_valid(row) && ts.value(row) < retention.cutoff_us
                    });
                    let drop =
                        op != "t" && past && superseded(&key_of(batch, &self.keys, row), *mark);
                    Some(!drop)
                })
                .collect())
        };
        narrow.push("_tw_commit_ts");
        let mut dropped = 0usize;
        for file in &files {
            let (mut reader, _) = ranged::read_parts(
                store.clone(),
                file,
                table,
                Some(&narrow),
                ranged::Rows::All,
                &fetched,
            )
            .await?;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                dropped += batch.num_rows() - keep_rows(&batch)?.true_count();
            }
        }
        let cutoff = retention.cutoff_text.clone();
        if dropped == 0 {
            return Ok(CompactionOutput {
                table: self.table,
                adds: Vec::new(),
                removes: Vec::new(),
                schema_version: self.schema_version,
                schema: self.schema,
                target_file_bytes: self.target_file_bytes,
                rows: 0,
                dropped: Some((0, cutoff)),
            });
        }
        let mut footers = Vec::with_capacity(files.len());
        for file in &files {
            footers.push(ranged::footer(store.clone(), file, table).await?);
        }
        let key_names: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let mut writer = RecordBatchWriter::for_table(&self.delta)
            .map_err(delta("applying the retention of"))?
            .with_writer_properties(merged_properties(&footers, &key_names));
        let schema = writer.arrow_schema();
        let mut kept = 0usize;
        for file in &files {
            let (mut reader, _) = ranged::read_parts(
                store.clone(),
                file,
                table,
                None,
                ranged::Rows::All,
                &fetched,
            )
            .await?;
            while let Some(batch) = ranged::next_batch(&mut reader, table, &file.path).await? {
                let keep = keep_rows(&batch)?;
                kept += keep.true_count();
                if keep.true_count() == 0 {
                    continue;
                }
                let batch =
                    filter_record_batch(&batch, &keep).map_err(|source| LakeError::Arrow {
                        table: table.clone(),
                        source,
                    })?;
                let batch = with_partition_values(table, &batch, &self.partition)?;
                let batch = align_batch(table, &batch, &schema)?;
                writer
                    .write_with_mode(batch, WriteMode::Default)
                    .await
                    .map_err(delta("applying the retention of"))?;
            }
        }
        let adds = writer
            .flush()
            .await
            .map_err(delta("applying the retention of"))?;
        Ok(CompactionOutput {
            table: self.table,
            adds,
            removes: self.group,
            schema_version: self.schema_version,
            schema: self.schema,
            target_file_bytes: self.target_file_bytes,
            rows: kept,
            dropped: Some((dropped, cutoff)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_time_maxima_come_from_the_statistics() {
        let stats = r#"{"numRecords":2,"minValues":{"_tw_seq":5},"maxValues":{"_tw_commit_ts":"2026-01-02T03:04:05.000006Z"}}"#;
        assert_eq!(
            max_commit_us(Some(stats)),
            Some(
                chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000006Z")
                    .unwrap()
                    .timestamp_micros()
            )
        );
        assert_eq!(min_seq(Some(stats)), 5);
        assert_eq!(max_commit_us(None), None);
    }
}
