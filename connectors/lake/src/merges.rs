//! The current-state merges a lake sink runs beside its stream, for both
//! lake formats: one task per table at a time, each merging and committing
//! on its own (a merge never holds the stream: the log goes on committing
//! while one runs). Dropped — the sink closed — a merge is cancelled: it is
//! idempotent, its files are uncommitted until its one commit, and the next
//! run starts it again.

use std::collections::BTreeMap;
use std::future::Future;

use tidewater_core::TableId;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::sink::MergeReport;
use crate::LakeError;

#[derive(Debug, Default)]
pub(crate) struct Merges {
    running: BTreeMap<TableId, JoinHandle<Result<MergeReport, LakeError>>>,
}

impl Drop for Merges {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

impl Merges {
    /// Whether a merge of `table` runs.
    pub(crate) fn runs(&self, table: &TableId) -> bool {
        self.running.contains_key(table)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts `merge` of `table` on a task of its own.
    pub(crate) fn start(
        &mut self,
        table: TableId,
        merge: impl Future<Output = Result<MergeReport, LakeError>> + Send + 'static,
    ) {
        if let Some(earlier) = self.running.insert(table, tokio::spawn(merge)) {
            earlier.abort();
        }
    }

    /// Cancels the merge of `table` (the table is going away).
    pub(crate) fn forget(&mut self, table: &TableId) {
        if let Some(task) = self.running.remove(table) {
            task.abort();
        }
    }

    /// Logs the outcome of the merges that ended (`format`: "" or
    /// "Iceberg ", as the log line names the table kind).
    pub(crate) async fn reap(&mut self, format: &str) {
        let ended: Vec<TableId> = self
            .running
            .iter()
            .filter(|(_, task)| task.is_finished())
            .map(|(table, _)| table.clone())
            .collect();
        for table in ended {
            let Some(task) = self.running.remove(&table) else {
                continue;
            };
            match task.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    warn!(table = %table, error = %tidewater_core::error_chain(&error), "merging the {format}current-state table failed; it stays as it was, trying again later")
                }
                Err(join) => {
                    warn!(table = %table, error = %join, "the {format}current-state merge task died; the table stays as it was, trying again later")
                }
            }
        }
    }
}
